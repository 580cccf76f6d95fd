"""The controller registry above the driver, against a fake backend."""

from __future__ import annotations

import asyncio
import errno
import pathlib
import random

import pytest

import spdk_ffi
from spdk_ffi import (
    AlreadyExists,
    AttachTimeout,
    Busy,
    Cancelled,
    ControllerOpts,
    Initiator,
    InvalidOptions,
    NameConflict,
    Path,
    PathInUse,
    SpdkUnavailable,
)
from tests.helpers import eventually
from tests.spdk.fake_backend import FakeBackend

HOST = "nqn.2014-08.org.nvmexpress:uuid:host-1"
SUB_A = "nqn.2023-01.io.imd:replica-a"
SUB_B = "nqn.2023-01.io.imd:replica-b"
PATH_A = f"TCP/IPv4/127.0.0.1/4420/{SUB_A}"
PATH_A2 = f"TCP/IPv4/127.0.0.2/4420/{SUB_A}"
PATH_B = f"TCP/IPv4/127.0.0.1/4421/{SUB_B}"
FAST = ControllerOpts(attach_timeout_sec=0.2)


def setup() -> tuple[FakeBackend, Initiator]:
    backend = FakeBackend()
    backend.add_target("127.0.0.1", "4420", SUB_A, [1 << 30])
    backend.add_target("127.0.0.2", "4420", SUB_A, [1 << 30])
    backend.add_target("127.0.0.1", "4421", SUB_B, [1 << 20, 1 << 21])
    return backend, Initiator(backend)


def refs_are_one(backend: FakeBackend) -> bool:
    return all(c.refs == 1 for c in backend.driver.values())


@pytest.mark.asyncio
async def test_attach_detach_and_namespaces() -> None:
    backend, ini = setup()
    result = await ini.attach("c1", [PATH_B], HOST, owner="e1")
    assert not result.reused and result.cleaned_up is None
    assert [(n.nsid, n.size_bytes) for n in result.info.namespaces] == [(1, 1 << 20), (2, 1 << 21)]
    assert [c.name for c in ini.controllers()] == ["c1"]
    assert await ini.detach("c1") is True
    assert backend.driver == {} and ini.controllers() == []
    assert backend.events == [("connect", PATH_B), ("disconnect", PATH_B)]


@pytest.mark.asyncio
async def test_same_owner_same_paths_is_idempotent() -> None:
    backend, ini = setup()
    first = await ini.attach("c1", [PATH_A], HOST, owner="e1")
    again = await ini.attach("c1", [PATH_A], HOST, owner="e1")
    assert again.reused and again.cleaned_up is None
    assert again.info.name == first.info.name
    assert backend.connects() == 1 and refs_are_one(backend)


@pytest.mark.asyncio
async def test_stale_controller_of_a_crashed_owner_is_cleaned_up_once() -> None:
    """Longhorn's loop: the engine died without detaching, its successor
    attaches the same name. Here that succeeds on the first call."""
    backend, ini = setup()
    await ini.attach("vol-r1", [PATH_A], HOST, owner="engine-old")
    # engine-old crashes: no detach. engine-new attaches the same name.
    result = await ini.attach("vol-r1", [PATH_A], HOST, owner="engine-new")
    assert not result.reused
    assert result.cleaned_up == "owner changed from engine-old to engine-new"
    assert result.info.owner == "engine-new"
    assert backend.events == [("connect", PATH_A), ("disconnect", PATH_A), ("connect", PATH_A)]
    assert refs_are_one(backend) and len(backend.driver) == 1


@pytest.mark.asyncio
async def test_failed_controller_and_changed_paths_are_replaced() -> None:
    backend, ini = setup()
    await ini.attach("c1", [PATH_A], HOST, owner="e1")
    next(iter(backend.driver.values())).failed = True
    result = await ini.attach("c1", [PATH_A], HOST, owner="e1")
    assert result.cleaned_up == "the controller had failed"
    result = await ini.attach("c1", [PATH_A, PATH_A2], HOST, owner="e1")
    assert result.cleaned_up == "the paths changed"
    assert backend.connects() == 3 and backend.disconnects() == 2
    assert refs_are_one(backend)


@pytest.mark.asyncio
async def test_same_owner_other_subsystem_is_a_name_conflict() -> None:
    backend, ini = setup()
    await ini.attach("c1", [PATH_A], HOST, owner="e1")
    with pytest.raises(NameConflict) as exc:
        await ini.attach("c1", [PATH_B], HOST, owner="e1")
    assert (exc.value.errno, exc.value.errno_name) == (errno.EINVAL, "EINVAL")
    assert backend.connects() == 1 and ini.controllers()[0].subnqn == SUB_A


@pytest.mark.asyncio
async def test_ealready_and_eexist_are_distinct() -> None:
    backend, ini = setup()
    await ini.attach("c1", [PATH_A], HOST, owner="e1")
    with pytest.raises(AlreadyExists) as already:
        await ini.attach("c1", [PATH_A], HOST, owner="e2", take_over=False)
    assert (already.value.errno, already.value.errno_name) == (114, "EALREADY")
    with pytest.raises(PathInUse) as exists:
        await ini.attach("c2", [PATH_A], HOST, owner="e2")
    assert (exists.value.errno, exists.value.errno_name) == (17, "EEXIST")
    assert backend.connects() == 1


@pytest.mark.asyncio
async def test_attach_timeout_leaves_nothing() -> None:
    backend, ini = setup()
    with pytest.raises(AttachTimeout) as exc:
        await ini.attach("dead", ["TCP/IPv4/127.0.0.9/4420/nqn.2023-01.io.imd:gone"], HOST, FAST)
    assert exc.value.errno_name == "ETIMEDOUT"
    assert ini.controllers() == [] and backend.driver == {}
    # The name is free again and a good attach works at once.
    assert not (await ini.attach("dead", [PATH_A], HOST)).reused


@pytest.mark.asyncio
async def test_sweep_detaches_controllers_of_dead_owners() -> None:
    backend, ini = setup()
    await ini.attach("a", [PATH_A], HOST, owner="o1")
    await ini.attach("b", [PATH_B], HOST, owner="o2")
    await ini.attach("c", [PATH_A2], HOST, owner="o3")
    assert sorted(await ini.sweep({"o2"})) == ["a", "c"]
    assert [c.name for c in ini.controllers()] == ["b"]
    assert backend.disconnects() == 2 and len(backend.driver) == 1


@pytest.mark.asyncio
async def test_detach_of_unknown_name_is_a_no_op_that_says_so() -> None:
    backend, ini = setup()
    assert await ini.detach("nobody") is False
    assert backend.events == []


@pytest.mark.asyncio
async def test_detach_preempts_an_attach_in_progress() -> None:
    backend, ini = setup()
    backend.connect_delay = 30.0  # never completes within the test
    attaching = asyncio.ensure_future(ini.attach("slow", [PATH_A], HOST, owner="e1"))
    await eventually(lambda: backend.connects() == 1, "the attach is connecting")
    async with asyncio.timeout(10):  # a bound on a hang: the detach must not wait for the connect
        assert await ini.detach("slow") is True
    with pytest.raises(Cancelled) as exc:
        await attaching
    assert exc.value.errno_name == "ECANCELED"
    assert ("connect-cancelled", PATH_A) in backend.events
    assert backend.driver == {} and ini.controllers() == []


@pytest.mark.asyncio
async def test_concurrent_attaches_join_or_are_refused() -> None:
    backend, ini = setup()
    backend.connect_delay = 0.1
    same = await asyncio.gather(
        ini.attach("c1", [PATH_A], HOST, owner="e1"),
        ini.attach("c1", [PATH_A], HOST, owner="e1"),
    )
    assert same[0] == same[1] and backend.connects() == 1
    first = asyncio.ensure_future(ini.attach("c2", [PATH_B], HOST, owner="e1"))
    await asyncio.sleep(0)
    with pytest.raises(Busy):
        await ini.attach("c2", [PATH_B], HOST, owner="e2")
    await first
    assert refs_are_one(backend)


@pytest.mark.asyncio
async def test_multipath_bookkeeping() -> None:
    backend, ini = setup()
    await ini.attach("mp", [PATH_A], HOST, owner="e1")
    await ini.add_path("mp", PATH_A2)
    info = ini.controllers()[0]
    assert [str(p.path) for p in info.paths] == [PATH_A, PATH_A2]
    with pytest.raises(InvalidOptions, match="another subsystem"):
        await ini.add_path("mp", PATH_B)
    with pytest.raises(PathInUse):
        await ini.attach("other", [PATH_A2], HOST)
    await ini.remove_path("mp", PATH_A)
    with pytest.raises(InvalidOptions, match="last path"):
        await ini.remove_path("mp", PATH_A2)
    # The removed path is free for another name.
    await ini.attach("other", [PATH_A], HOST)
    assert backend.events[-1] == ("connect", PATH_A)


@pytest.mark.asyncio
async def test_every_attach_has_exactly_one_detach_under_random_operations() -> None:
    backend, ini = setup()
    rng = random.Random(7)
    names, owners, paths = ["n1", "n2", "n3"], ["o1", "o2"], [[PATH_A], [PATH_B], [PATH_A, PATH_A2]]
    for _ in range(400):
        op = rng.choice(["attach", "attach", "detach", "sweep", "fail"])
        name = rng.choice(names)
        try:
            if op == "attach":
                await ini.attach(name, rng.choice(paths), HOST, owner=rng.choice(owners))
            elif op == "detach":
                await ini.detach(name)
            elif op == "sweep":
                await ini.sweep({rng.choice(owners)})
            elif backend.driver:
                rng.choice(list(backend.driver.values())).failed = True
        except (PathInUse, NameConflict):
            pass
        assert refs_are_one(backend)
        assert len(backend.driver) == len(ini.controllers())
    for info in ini.controllers():
        await ini.detach(info.name)
    assert backend.driver == {} and backend.connects() == backend.disconnects()


OPTION_CASES = [
    ({}, None),
    ({"ctrlr_loss_timeout_sec": 15, "reconnect_delay_sec": 2, "fast_io_fail_timeout_sec": 10}, None),
    ({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 5}, None),
    ({"ctrlr_loss_timeout_sec": -2}, "can't be less than -1"),
    ({"ctrlr_loss_timeout_sec": -1}, "reconnect_delay_sec can't be 0"),
    ({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 5, "fast_io_fail_timeout_sec": 3}, "fast_io_fail"),
    ({"ctrlr_loss_timeout_sec": 10}, "reconnect_delay_sec can't be 0"),
    ({"ctrlr_loss_timeout_sec": 10, "reconnect_delay_sec": 11}, "more than ctrlr_loss_timeout_sec"),
    ({"ctrlr_loss_timeout_sec": 10, "reconnect_delay_sec": 2, "fast_io_fail_timeout_sec": 1}, "fast_io_fail"),
    ({"ctrlr_loss_timeout_sec": 10, "reconnect_delay_sec": 2, "fast_io_fail_timeout_sec": 11}, "more than ctrlr"),
    ({"reconnect_delay_sec": 1}, "must be 0 if ctrlr_loss_timeout_sec is 0"),
    ({"fast_io_fail_timeout_sec": 1}, "must be 0 if ctrlr_loss_timeout_sec is 0"),
    ({"keep_alive_timeout_ms": 0}, "keep_alive"),
    ({"io_queue_size": 1}, "io_queue_size"),
]


@pytest.mark.parametrize(("fields", "error"), OPTION_CASES)
def test_reconnect_options_follow_bdev_nvme_rules(fields: dict[str, int], error: str | None) -> None:
    opts = ControllerOpts(**fields)  # type: ignore[arg-type]
    if error is None:
        opts.validate()
    else:
        with pytest.raises(InvalidOptions, match=error):
            opts.validate()


@pytest.mark.parametrize(
    "bad",
    [
        "TCP/IPv4/127.0.0.1/4420",
        "RDMA/IPv4/127.0.0.1/4420/nqn.x",
        "TCP/IPv5/127.0.0.1/4420/nqn.x",
        "TCP/IPv4/127.0.0.1/port/nqn.x",
        "TCP/IPv4/127.0.0.1/70000/nqn.x",
        "TCP/IPv4/127.0.0.1/4420/not-an-nqn",
        "TCP/IPv4//4420/nqn.x",
    ],
)
def test_bad_paths_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidOptions):
        Path.parse(bad)


@pytest.mark.asyncio
async def test_bad_attach_arguments() -> None:
    backend, ini = setup()
    with pytest.raises(InvalidOptions, match="one subsystem"):
        await ini.attach("x", [PATH_A, PATH_B], HOST)
    with pytest.raises(InvalidOptions, match="duplicate"):
        await ini.attach("x", [PATH_A, PATH_A], HOST)
    with pytest.raises(InvalidOptions, match="at least one path"):
        await ini.attach("x", [], HOST)
    with pytest.raises(InvalidOptions, match="hostnqn"):
        await ini.attach("x", [PATH_A], "host")
    with pytest.raises(InvalidOptions, match="name"):
        await ini.attach("", [PATH_A], HOST)
    assert backend.events == []


def test_path_round_trips_to_a_transport_id() -> None:
    path = Path.parse(PATH_A)
    assert str(path) == PATH_A
    assert path.trid() == f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:{SUB_A}"


def test_availability_matches_the_installed_core() -> None:
    """available() is True exactly when the package holds a built core (an
    extension module _core*.so beside it), and then the core loads and
    answers; without one, the native backend refuses, saying how to get it."""
    import importlib

    built = sorted(pathlib.Path(spdk_ffi.__file__).parent.glob("_core*.so"))
    assert spdk_ffi.available() is bool(built)
    if built:
        core = importlib.import_module("spdk_ffi._core")
        assert core.__file__ == str(built[0])
        assert hasattr(core.lib, "imdn_poller_stats")  # the API of imdn.h, not just any module
    else:
        with pytest.raises(SpdkUnavailable, match="SPDK_DIR"):
            spdk_ffi.native_backend()


@pytest.mark.asyncio
async def test_an_owner_detaching_never_touches_another_owners_claim() -> None:
    """Engine A tears down while engine B takes the name over: A's detach
    neither preempts B's attach nor detaches B's controller."""
    backend, ini = setup()
    await ini.attach("c", [PATH_A], HOST, FAST, owner="A")
    backend.connect_delay = 0.2
    connects = backend.connects()
    taking_over = asyncio.ensure_future(ini.attach("c", [PATH_A], HOST, FAST, owner="B"))
    # B's attach is in progress: it has detached A's leftover and is connecting.
    await eventually(lambda: backend.connects() > connects, "B connecting")
    assert not taking_over.done()
    assert await ini.detach("c", owner="A") is False  # B's attach is in progress: left alone
    result = await taking_over
    assert result.info.owner == "B" and result.cleaned_up is not None
    assert await ini.detach("c", owner="A") is False  # B's controller: left alone
    assert [c.owner for c in ini.controllers()] == ["B"]
    assert await ini.detach("c", owner="B") is True
    assert backend.driver == {}
