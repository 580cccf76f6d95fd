"""Engine operations over time (issue 9), over the fakes: expansions that
complete or fail visibly and are serialized, rebuilds that never block a
delete or a ReplicaRemove, and engines that come back after a restart
without serving reads that differ by replica."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imd.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from imd.services.engines import EngineService
from imd.services.instances import InstanceService, V2Request
from imd.services.processes import Lifecycle, ProcessService
from imd.supervisor.model import ProcessSpec, ProcessState
from imd.v2 import state as v2state
from imd.v2.model import ReplicaMode
from spdk_ffi.mirror import RebuildState
from tests.helpers import eventually
from tests.v2.fakes import FakeData, node, progress

pytestmark = pytest.mark.asyncio

SIZE = 64 << 20
V2 = 1


async def setup(tmp_path: Path, replicas: int = 2):  # type: ignore[no-untyped-def]
    v2, _, data, store = node(tmp_path)
    await v2.start(v2.load())
    instances = InstanceService(ProcessService(v2.supervisor, Lifecycle()), v2, "")
    engines = EngineService(instances)
    addresses = {f"r{i}": data.replica_target(f"r{i}", 4420 + i, size=1 << 30) for i in range(1, replicas + 1)}
    await instances.create_v2(
        V2Request(name="e1", type="engine", volume_name="vol-1", size=SIZE, replica_address_map=addresses)
    )
    return v2, data, store, instances, engines


# -- expand ---------------------------------------------------------------------------


async def test_expand_grows_each_replica_then_the_mirror(tmp_path: Path) -> None:
    _v2, data, store, _, engines = await setup(tmp_path)
    await engines.expand("e1", V2, 2 * SIZE)
    assert data.expander.calls == [("127.0.0.1:4421", "r1", 2 * SIZE), ("127.0.0.1:4422", "r2", 2 * SIZE)]
    assert data.mirrors[0].calls[-1] == f"resize {2 * SIZE // 4096}"
    volume = engines.volume("e1", V2)
    assert (volume.size, volume.is_expanding, volume.last_expansion_error) == (2 * SIZE, False, "")
    assert v2state.decode(store.snapshots[-1]).engines[0].size == 2 * SIZE
    await engines.expand("e1", V2, 2 * SIZE)  # already that size: nothing to do
    assert len(data.expander.calls) == 2


@pytest.mark.parametrize(("size", "match"), [(SIZE - 4096, "cannot shrink"), (SIZE + 512, "multiple of the block")])
async def test_bad_expansions_name_the_field(tmp_path: Path, size: int, match: str) -> None:
    _, data, _, _, engines = await setup(tmp_path)
    with pytest.raises(InvalidArgument, match=rf"^expand.size: .*{match}"):
        await engines.expand("e1", V2, size)
    assert data.expander.calls == []


async def test_one_expansion_at_a_time_same_size_joins_other_size_is_aborted(tmp_path: Path) -> None:
    _, data, _, _, engines = await setup(tmp_path)
    data.expander.hold()
    first = asyncio.ensure_future(engines.expand("e1", V2, 2 * SIZE))
    await eventually(lambda: bool(data.expander.calls), "the expansion reached a replica's node")
    assert engines.volume("e1", V2).is_expanding
    with pytest.raises(Conflict, match=r"an expansion to 134217728 bytes is in progress"):
        await engines.expand("e1", V2, 3 * SIZE)
    joined = asyncio.ensure_future(engines.expand("e1", V2, 2 * SIZE))  # joins the first
    await asyncio.sleep(0)
    assert not joined.done()  # it waits for the expansion in progress
    data.expander.release()
    await first
    await joined
    assert [size for _, _, size in data.expander.calls] == [2 * SIZE, 2 * SIZE]  # once per replica
    assert engines.volume("e1", V2).size == 2 * SIZE


async def test_a_failure_part_way_keeps_the_old_size_and_a_retry_works(tmp_path: Path) -> None:
    v2, data, _, _, engines = await setup(tmp_path)
    data.expander.fail["r2"] = ResourceExhausted("replica r2 at 127.0.0.1: size: disk d1 has no room to grow r2")
    with pytest.raises(ResourceExhausted, match=r"no room"):
        await engines.expand("e1", V2, 2 * SIZE)
    volume = engines.volume("e1", V2)
    assert volume.size == SIZE and not volume.is_expanding
    assert "no room" in volume.last_expansion_error and volume.last_expansion_failed_at
    assert data.mirrors[0].num_blocks == SIZE // 4096
    data.mirrors[0].resize_error = Unavailable("leg r1 still shows the old size")
    del data.expander.fail["r2"]
    with pytest.raises(Unavailable, match=r"old size"):
        await engines.expand("e1", V2, 2 * SIZE)
    assert engines.volume("e1", V2).size == SIZE
    data.mirrors[0].resize_error = None
    await engines.expand("e1", V2, 2 * SIZE)
    volume = engines.volume("e1", V2)
    assert (volume.size, volume.last_expansion_error) == (2 * SIZE, "")
    assert v2.get("e1").size == 2 * SIZE


async def test_a_delete_preempts_an_expansion(tmp_path: Path) -> None:
    v2, data, _, instances, engines = await setup(tmp_path)
    data.expander.hold()  # the replica's node never answers until released
    expanding = asyncio.ensure_future(engines.expand("e1", V2, 2 * SIZE))
    await eventually(lambda: bool(data.expander.calls), "the expansion reached a replica's node")
    async with asyncio.timeout(10):  # a bound on a hang: the delete must not wait for the node
        await instances.delete_v2("e1", "", "", cleanup=False)
        with pytest.raises(Unavailable, match=r"preempted"):
            await expanding
    assert len(data.expander.calls) == 1  # preempted while the first replica's node had not answered
    await _gone(v2, "e1")
    assert data.backend.driver == {}


async def test_expansions_of_different_engines_run_side_by_side(tmp_path: Path) -> None:
    v2, data, _, instances, engines = await setup(tmp_path)
    await instances.create_v2(
        V2Request(
            name="e2",
            type="engine",
            volume_name="vol-2",
            size=SIZE,
            replica_address_map={"r9": data.replica_target("r9", 4429)},
        )
    )
    data.expander.hold()
    both = asyncio.gather(engines.expand("e1", V2, 2 * SIZE), engines.expand("e2", V2, 2 * SIZE))
    # Side by side: e2's expansion reaches its replica's node while e1's
    # first replica has not answered (in series it would wait for e1's).
    await eventually(
        lambda: {replica for _, replica, _ in data.expander.calls} == {"r1", "r9"}, "both engines expanding at once"
    )
    data.expander.release()
    await both
    assert v2.get("e1").size == v2.get("e2").size == 2 * SIZE


# -- rebuild ------------------------------------------------------------------------------


async def test_replica_add_rebuilds_then_turns_rw(tmp_path: Path) -> None:
    v2, data, store, _, engines = await setup(tmp_path)
    address = data.replica_target("r3", 4433, size=1 << 30)
    await engines.add_replica("e1", V2, "r3", f"tcp://{address}", restore=False, linked=False)
    mirror = data.mirrors[0]
    assert mirror.modes["r3"] == "WO"
    modes = {r.name: r.mode for r in engines.replicas("e1", V2)}
    assert modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.RW, "r3": ReplicaMode.WO}
    (rebuild,) = mirror.rebuilds
    progress(rebuild, 0.25)
    (status,) = engines.rebuilds("e1", V2)
    assert (status.address, status.is_rebuilding, status.progress, status.state) == (
        f"tcp://{address}",
        True,
        25,
        "in_progress",
    )
    assert status.from_address == "tcp://127.0.0.1:4421"
    assert v2state.decode(store.snapshots[-1]).engines[0].modes["r3"] == ReplicaMode.WO
    rebuild.finish(RebuildState.COMPLETE)
    await _settled(v2, "e1")
    assert mirror.modes["r3"] == "RW" and engines.rebuilds("e1", V2) == []
    assert v2state.decode(store.snapshots[-1]).engines[0].modes["r3"] == ReplicaMode.RW
    with pytest.raises(AlreadyExists, match=r"^replica_name:"):
        await engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)


async def test_a_failed_rebuild_leaves_the_replica_err(tmp_path: Path) -> None:
    v2, data, _, _, engines = await setup(tmp_path)
    await engines.add_replica("e1", V2, "r3", data.replica_target("r3", 4433), restore=False, linked=False)
    data.mirrors[0].rebuilds[0].finish(RebuildState.ERROR, "source r1 failed mid-copy and no other RW leg")
    await _settled(v2, "e1")
    replicas = {r.name: r.mode for r in engines.replicas("e1", V2)}
    assert replicas["r3"] == ReplicaMode.ERR
    assert "no other RW leg" in v2.engines.engines["e1"].errors["r3"]
    assert v2.get("e1").state == ProcessState.RUNNING  # the volume stays up


async def test_replica_remove_preempts_the_rebuild_at_once(tmp_path: Path) -> None:
    v2, data, _, _, engines = await setup(tmp_path)
    await engines.add_replica("e1", V2, "r3", data.replica_target("r3", 4433), restore=False, linked=False)
    rebuild = data.mirrors[0].rebuilds[0]  # a fake copy: it never ends unless told to
    async with asyncio.timeout(10):  # a bound on a hang: the remove must not wait for the copy
        await engines.remove_replica("e1", V2, "", "tcp://127.0.0.1:4433")
    assert rebuild.status().state == RebuildState.CANCELLED
    assert "r3" not in data.mirrors[0].modes
    assert "r3" not in {c.name for c in data.path.initiator.controllers()}
    assert [r.name for r in engines.replicas("e1", V2)] == ["r1", "r2"]
    assert v2.engines.engines["e1"].op is None


async def test_a_replica_add_preempted_as_its_attach_completes_leaves_no_controller(tmp_path: Path) -> None:
    """Field reports 3 and 4: the ReplicaAdd's attach completes in the loop
    turn in which it is preempted; the controller it made is detached anyway
    and the engine goes on with the replicas it had."""
    v2, data, _, _, engines = await setup(tmp_path)
    address = data.replica_target("r3", 4433)
    data.cancel_when_connected(lambda: v2.engines.engines["e1"].op)
    with pytest.raises(Unavailable, match=r"adding replica r3 was preempted"):
        await engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    assert sorted(c.name for c in data.path.initiator.controllers()) == ["r1", "r2"]
    assert data.backend.connects() - data.backend.disconnects() == 2
    assert v2.engines.engines["e1"].record.modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.RW}
    assert "r3" not in data.mirrors[0].modes and v2.engines.engines["e1"].op is None


async def test_an_engine_delete_preempts_the_rebuild(tmp_path: Path) -> None:
    v2, data, _, instances, engines = await setup(tmp_path)
    await engines.add_replica("e1", V2, "r3", data.replica_target("r3", 4433), restore=False, linked=False)
    rebuild = data.mirrors[0].rebuilds[0]  # a fake copy: it never ends unless told to
    async with asyncio.timeout(10):  # a bound on a hang: the delete must not wait for the copy
        deleted = await instances.delete_v2("e1", "", "", cleanup=False)
    assert deleted.deleted  # at once; the teardown (and the copy's cancel) follows
    await _gone(v2, "e1")
    assert rebuild.status().state == RebuildState.CANCELLED
    assert data.backend.driver == {} and data.mirrors[0].destroyed


async def test_long_operations_are_serialized_on_one_engine(tmp_path: Path) -> None:
    _, data, _, _, engines = await setup(tmp_path)
    await engines.add_replica("e1", V2, "r3", data.replica_target("r3", 4433), restore=False, linked=False)
    with pytest.raises(Conflict, match=r"rebuild is in progress"):
        await engines.expand("e1", V2, 2 * SIZE)
    with pytest.raises(Conflict, match=r"rebuild is in progress"):
        await engines.add_replica("e1", V2, "r4", data.replica_target("r4", 4434), restore=False, linked=False)


async def test_the_last_healthy_replica_is_not_removed(tmp_path: Path) -> None:
    _, _, _, _, engines = await setup(tmp_path, replicas=1)
    with pytest.raises(FailedPrecondition, match=r"last healthy"):
        await engines.remove_replica("e1", V2, "r1", "")
    with pytest.raises(NotFound, match=r"^replica_name:"):
        await engines.remove_replica("e1", V2, "r7", "")


async def test_mode_update_fails_a_replica_but_never_revives_one(tmp_path: Path) -> None:
    v2, data, _, _, engines = await setup(tmp_path)
    await engines.set_mode("e1", V2, "tcp://127.0.0.1:4422", 2)
    assert data.mirrors[0].modes["r2"] == "ERR"
    assert {r.name: r.mode for r in engines.replicas("e1", V2)}["r2"] == ReplicaMode.ERR
    with pytest.raises(FailedPrecondition, match=r"^mode: .*only through a rebuild"):
        await engines.set_mode("e1", V2, "tcp://127.0.0.1:4422", 1)
    with pytest.raises(InvalidArgument, match=r"^mode:"):
        await engines.set_mode("e1", V2, "tcp://127.0.0.1:4422", 9)
    assert v2.get("e1").state == ProcessState.RUNNING


async def test_v1_and_unknown_engines_are_refused_naming_the_engine(tmp_path: Path) -> None:
    v2, _, _, instances, engines = await setup(tmp_path)
    await v2.supervisor.create(ProcessSpec(name="v1-engine", binary="/bin/sleep", args=("100",)))
    try:
        with pytest.raises(FailedPrecondition, match=r"^engine_name: engine v1-engine is a data engine V1"):
            engines.volume("v1-engine", V2)
        with pytest.raises(FailedPrecondition, match=r"^engine_name: engine e1 is a data engine V1"):
            engines.volume("e1", 0)
        with pytest.raises(Unimplemented, match=r"unknown data engine 5"):
            engines.volume("e1", 5)
        with pytest.raises(NotFound, match=r"^engine_name:"):
            engines.volume("nope", V2)
        with pytest.raises(Unimplemented, match=r"^restore:"):
            await engines.add_replica("e1", V2, "r3", "127.0.0.1:4433", restore=True, linked=False)
    finally:
        await v2.supervisor.delete("v1-engine")
    assert instances.node is v2


# -- restart consistency ---------------------------------------------------------------------


async def test_after_an_unclean_stop_one_replica_serves_and_the_others_resync(tmp_path: Path) -> None:
    _v2, _, store, _, _ = await setup(tmp_path)
    (tmp_path / "v2.json").write_bytes(store.snapshots[-1])  # a kill -9: no clean stop recorded
    fresh = FakeData()
    fresh.replica_target("r1", 4421, size=1 << 30)
    fresh.replica_target("r2", 4422, size=1 << 30)
    again, _, _, _ = node(tmp_path / "again", data=fresh)
    again.state_path = tmp_path / "v2.json"
    await again.start(again.load())
    mirror = fresh.mirrors[0]
    assert mirror.modes == {"r1": "RW", "r2": "WO"}  # reads only from r1
    (resync,) = mirror.rebuilds
    assert (resync.status().dst, resync.status().src) == ("r2", "r1")
    resync.finish(RebuildState.COMPLETE)
    await _settled(again, "e1")
    assert mirror.modes == {"r1": "RW", "r2": "RW"}


async def test_after_a_clean_stop_every_replica_serves_at_once(tmp_path: Path) -> None:
    v2, _, store, _, _ = await setup(tmp_path)
    await v2.close()
    saved = v2state.decode(store.snapshots[-1])
    assert saved.engines[0].clean_stop
    (tmp_path / "v2.json").write_bytes(store.snapshots[-1])
    fresh = FakeData()
    fresh.replica_target("r1", 4421, size=1 << 30)
    fresh.replica_target("r2", 4422, size=1 << 30)
    again, _, _, _ = node(tmp_path / "again", data=fresh)
    again.state_path = tmp_path / "v2.json"
    await again.start(again.load())
    assert fresh.mirrors[0].modes == {"r1": "RW", "r2": "RW"} and fresh.mirrors[0].rebuilds == []


async def _settled(v2: object, name: str) -> None:
    for _ in range(300):
        if v2.engines.engines[name].op is None:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine's operation did not finish")


async def _gone(v2: object, name: str) -> None:
    for _ in range(300):
        if name not in v2.engines.engines:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} was not removed")
