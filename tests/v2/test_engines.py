"""V2 engines: who is attached, who is in the mirror, what is cleaned up,
and what a delete preempts, over spdk_ffi's fake backend and an in-memory
mirror (tests/v2/fakes.py). The data path itself (real controllers, the C
mirror, the NVMe-oF frontend) is tested in tests/v2/test_v2_spdk.py.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest

from imd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from imd.services.engines import EngineService
from imd.services.instances import InstanceService, V2Request
from imd.services.processes import Lifecycle, ProcessService
from imd.supervisor.model import ProcessSpec, ProcessState
from imd.v2 import state as v2state
from imd.v2.model import ReplicaMode, host_nqn_of, nguid_of, nqn_of
from spdk_ffi.mirror import ExportInfo
from tests.helpers import eventually
from tests.v2.fakes import FakeData, node

pytestmark = pytest.mark.asyncio

SIZE = 64 << 20


def engine(name: str, replicas: dict[str, str], *, size: int = SIZE, frontend: str = "spdk-tcp-nvmf") -> V2Request:
    return V2Request(
        name=name, type="engine", volume_name="vol-1", size=size, replica_address_map=replicas, frontend=frontend
    )


async def started(tmp_path: Path, data: FakeData | None = None):  # type: ignore[no-untyped-def]
    v2, _keeper, data, store = node(tmp_path, data=data)
    await v2.start(v2.load())
    instances = InstanceService(ProcessService(v2.supervisor, Lifecycle()), v2, "")
    return v2, data, store, instances


async def settled(v2: object) -> None:
    for _ in range(500):
        if not any(e.teardown and not e.teardown.done() for e in v2.engines.engines.values()):  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("engine teardowns did not finish")


async def test_engine_attaches_each_replica_mirrors_and_exports(tmp_path: Path) -> None:
    v2, data, store, instances = await started(tmp_path)
    replicas = {"r1": data.replica_target("r1", 4420), "r2": data.replica_target("r2", 4421)}
    view = await instances.create_v2(engine("e1", replicas))
    assert view.state == ProcessState.RUNNING and view.type == "engine"
    # Longhorn's names (tests/v2/test_disks_replicas.py::test_names_are_longhorns).
    assert view.endpoint == f"nvmf://127.0.0.1:{view.port_start}/nqn.2023-01.io.longhorn.spdk:e1"
    assert view.paths[0].nguid == "19f2bfd82a1a5e2d83d6541a3157afdb" and view.paths[0].target_port == view.port_start
    infos = {c.name: c for c in data.path.initiator.controllers()}
    assert set(infos) == {"r1", "r2"}
    assert {c.owner for c in infos.values()} == {view.uuid}
    assert {c.hostnqn for c in infos.values()} == {host_nqn_of(view.uuid)}
    (mirror,) = data.mirrors
    assert mirror.modes == {"r1": "RW", "r2": "RW"} and mirror.num_blocks == SIZE // 4096
    assert mirror.exported == ExportInfo(nqn_of("e1"), "127.0.0.1", view.port_start, nguid_of("e1"))
    saved = v2state.decode(store.snapshots[-1]).engines[0]
    assert saved.state == ProcessState.RUNNING and saved.modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.RW}
    await instances.delete_v2("e1", view.uuid, "engine", cleanup=False)
    await settled(v2)
    assert data.path.initiator.controllers() == [] and data.backend.driver == {}
    assert mirror.calls == ["export", "unexport", "destroy"]
    assert v2.supervisor.ports.in_use == 0 and "e1" not in v2.engines.engines


async def test_no_frontend_means_no_export(tmp_path: Path) -> None:
    _, data, _, instances = await started(tmp_path)
    view = await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}, frontend=""))
    assert view.port_start == 0 and view.endpoint == "" and data.mirrors[0].exported is None


async def test_an_unreachable_replica_is_err_and_the_engine_runs(tmp_path: Path) -> None:
    v2, data, _, instances = await started(tmp_path)
    replicas = {"r1": data.replica_target("r1", 4420), "r2": "127.0.0.9:4429"}
    view = await instances.create_v2(engine("e1", replicas))
    assert view.state == ProcessState.RUNNING
    record = v2.engines.engines["e1"].record
    assert record.modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.ERR}
    assert "no answer" in v2.engines.engines["e1"].errors["r2"]
    assert set(data.mirrors[0].modes) == {"r1"}


async def test_no_reachable_replica_fails_the_create_and_leaves_nothing(tmp_path: Path) -> None:
    v2, data, _, instances = await started(tmp_path)
    with pytest.raises(Unavailable, match=r"no replica could be attached \(r1: .*; r2: .*\)"):
        await instances.create_v2(engine("e1", {"r1": "127.0.0.9:4420", "r2": "127.0.0.9:4421"}))
    assert v2.engines.engines == {} and data.backend.driver == {} and data.mirrors == []
    assert v2.supervisor.ports.in_use == 0


async def test_a_stale_controller_is_cleaned_up_once_then_attached_once(tmp_path: Path) -> None:
    """Field report 2: an engine lost without detaching left controller r1;
    the new engine's create succeeds first time, one detach, one attach."""
    _v2, data, _, instances = await started(tmp_path)
    address = data.replica_target("r1", 4420)
    from imd.v2.datapath import replica_paths

    await data.path.initiator.attach("r1", replica_paths("r1", [address]), host_nqn_of("dead"), owner="dead-engine")
    connects, disconnects = data.backend.connects(), data.backend.disconnects()
    view = await instances.create_v2(engine("e1", {"r1": address}))
    assert view.state == ProcessState.RUNNING
    assert data.backend.connects() - connects == 1 and data.backend.disconnects() - disconnects == 1
    (info,) = data.path.initiator.controllers()
    assert info.owner == view.uuid and all(c.refs == 1 for c in data.backend.driver.values())


async def test_a_live_engines_controller_is_never_taken(tmp_path: Path) -> None:
    """README: a controller held by a live engine is never taken. In a
    create, that replica is one that cannot be attached (none attached:
    UNAVAILABLE listing why for each, naming the engine that holds it); a
    ReplicaAdd of it answers FAILED_PRECONDITION naming that engine."""
    v2, data, _, instances = await started(tmp_path)
    shared = data.replica_target("r1", 4420)
    first = await instances.create_v2(engine("e1", {"r1": shared}))
    with pytest.raises(Unavailable, match=r"r1: replica r1 is attached by live engine e1"):
        await instances.create_v2(engine("e2", {"r1": shared}))
    (info,) = data.path.initiator.controllers()
    assert info.owner == first.uuid and "e2" not in v2.engines.engines
    await instances.create_v2(engine("e2", {"r2": data.replica_target("r2", 4421)}))
    with pytest.raises(FailedPrecondition, match=r"^replica r1 is attached by live engine e1$"):
        await EngineService(instances).add_replica("e2", 1, "r1", shared, restore=False, linked=False)
    owners = {c.name: c.owner for c in data.path.initiator.controllers()}
    assert owners == {"r1": first.uuid, "r2": v2.engines.engines["e2"].uuid}
    assert v2.engines.engines["e2"].record.modes == {"r2": ReplicaMode.RW}


async def test_delete_preempts_a_create_in_progress(tmp_path: Path) -> None:
    """Field report 3: the delete returns at once; the attach is cancelled."""
    v2, data, _, instances = await started(tmp_path)
    address = data.replica_target("r1", 4420)
    data.backend.connect_delay = 30  # the connect never completes within the test
    events = v2.watch()
    create = asyncio.ensure_future(instances.create_v2(engine("e1", {"r1": address})))
    await eventually(lambda: data.backend.connects() == 1, "the create is connecting to r1")
    uuid = v2.engines.engines["e1"].uuid
    async with asyncio.timeout(10):  # a bound on a hang: the delete must not wait for the connect
        deleted = await instances.delete_v2("e1", uuid, "", cleanup=False)
        assert deleted.deleted
        with pytest.raises(Unavailable, match=r"preempted by a delete"):
            await create
    await settled(v2)
    assert data.backend.driver == {} and ("connect-cancelled", f"TCP/IPv4/127.0.0.1/4420/{nqn_of('r1')}") in (
        data.backend.events
    )
    seen = []
    while True:
        event = await asyncio.wait_for(events.get(), 5)
        seen.append((event.view.state, event.view.deleted))
        if event.view.deleted:
            break
    assert seen[-1][1] and v2.supervisor.ports.in_use == 0


async def test_a_failed_leg_is_err_and_the_last_one_fails_the_engine(tmp_path: Path) -> None:
    v2, data, store, instances = await started(tmp_path)
    replicas = {"r1": data.replica_target("r1", 4420), "r2": data.replica_target("r2", 4421)}
    await instances.create_v2(engine("e1", replicas))
    mirror = data.mirrors[0]
    mirror.fail_leg("r2", "NVMe status sct=0x0 sc=0x6")
    record = v2.engines.engines["e1"].record
    assert record.modes["r2"] == ReplicaMode.ERR and record.state == ProcessState.RUNNING
    mirror.fail_leg("r1")
    assert record.state == ProcessState.ERROR and "no healthy replica" in record.error_msg
    await v2.durable()
    assert v2state.decode(store.snapshots[-1]).engines[0].modes["r2"] == ReplicaMode.ERR


async def test_a_silent_replica_is_failed_with_the_node_s_replica_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 25: the engine gives its mirror the node's replica timeout, and a
    replica the mirror's watchdog failed for silence is ERR, says so, and is
    counted in the time-to-detect metric."""
    v2, data, _, instances = await started(tmp_path)
    assert v2.engines.replica_timeout_ms == 5000  # the node's default
    v2.engines.replica_timeout_ms = 2000
    replicas = {"r1": data.replica_target("r1", 4420), "r2": data.replica_target("r2", 4421)}
    await instances.create_v2(engine("e1", replicas))
    mirror = data.mirrors[0]
    assert mirror.leg_timeout_ms == 2000
    with caplog.at_level("WARNING", logger="imd.v2.engines"):
        mirror.fall_silent("r2")
    engine_ = v2.engines.engines["e1"]
    assert engine_.record.modes["r2"] == ReplicaMode.ERR and engine_.record.state == ProcessState.RUNNING
    assert engine_.errors["r2"] == "silent for 2.0 s (its node answered nothing): failed"
    assert [r.getMessage() for r in caplog.records] == ["replica silent: failed; engine goes on without it"]
    histogram = v2.metrics.replica_silence.collect()[0]
    counts = {s.name: s.value for s in histogram.samples if not s.labels.get("le")}
    assert counts["imd_engine_replica_silence_seconds_count"] == 1
    assert counts["imd_engine_replica_silence_seconds_sum"] == 2.0
    mirror.fall_silent("r1")  # the last RW replica: the watchdog fails nothing
    assert engine_.record.modes["r1"] == ReplicaMode.RW


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"size": 0}, "spec.spdk_instance_spec.size"),
        ({"size": 4096 * 3 + 512}, "spec.spdk_instance_spec.size"),
        ({"replicas": {}}, "spec.spdk_instance_spec.replica_address_map"),
        ({"replicas": {"r1": "not-an-address"}}, "spec.spdk_instance_spec.replica_address_map[r1]"),
        ({"replicas": {"r1": "localhost:4420"}}, "spec.spdk_instance_spec.replica_address_map[r1]"),
        ({"replicas": {"r1": "127.0.0.1:70000"}}, "spec.spdk_instance_spec.replica_address_map[r1]"),
        ({"replicas": {"R1": "127.0.0.1:4420"}}, "spec.spdk_instance_spec.replica_address_map"),
        ({"frontend": "spdk-tcp-blockdev"}, "spec.spdk_instance_spec.frontend"),
        ({"frontend": "ublk"}, "spec.spdk_instance_spec.frontend"),
        ({"frontend": "iscsi"}, "spec.spdk_instance_spec.frontend"),
        ({"volume_name": ""}, "spec.volume_name"),
        ({"type": "shard"}, "spec.type"),
    ],
)
async def test_engine_bad_input_names_the_field_and_touches_nothing(
    tmp_path: Path, request_kwargs: dict[str, object], field: str
) -> None:
    v2, data, _, instances = await started(tmp_path)
    fields: dict[str, object] = {
        "name": "e1",
        "type": "engine",
        "volume_name": "vol-1",
        "size": SIZE,
        "replica_address_map": {"r1": data.replica_target("r1", 4420)},
        "frontend": "spdk-tcp-nvmf",
    }
    if "replicas" in request_kwargs:
        fields["replica_address_map"] = request_kwargs.pop("replicas")
    fields.update(request_kwargs)
    with pytest.raises(InvalidArgument, match=r"^" + re.escape(field) + ":"):
        await instances.create_v2(V2Request(**fields))  # type: ignore[arg-type]
    assert v2.engines.engines == {} and data.backend.events == [] and v2.supervisor.ports.in_use == 0


async def test_served_frontends_are_listed_in_the_refusal(tmp_path: Path) -> None:
    _, data, _, instances = await started(tmp_path)
    with pytest.raises(InvalidArgument, match=r"spdk-tcp-nvmf"):
        await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}, frontend="ublk"))


async def test_a_replica_smaller_than_the_volume_fails_the_create(tmp_path: Path) -> None:
    _v2, data, _, instances = await started(tmp_path)
    with pytest.raises(Unavailable, match=r"holds 1048576 bytes, less than the volume's"):
        await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420, size=1 << 20)}))
    assert data.backend.driver == {}


async def test_names_are_one_namespace_across_engines_replicas_and_processes(tmp_path: Path) -> None:
    v2, data, _, instances = await started(tmp_path)
    await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}))
    with pytest.raises(AlreadyExists, match=r"^spec.name:"):
        await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}))
    await v2.supervisor.create(ProcessSpec(name="p1", binary="/bin/sleep", args=("100",)))
    try:
        with pytest.raises(AlreadyExists, match=r"data engine V1"):
            await instances.create_v2(engine("p1", {"r1": data.replica_target("r1", 4420)}))
        with pytest.raises(AlreadyExists, match=r"data engine V2"):
            await instances.processes.create(ProcessSpec(name="e1", binary="/bin/sleep", args=("100",)))
    finally:
        await v2.supervisor.delete("p1")


async def test_delete_by_a_stale_uuid_touches_nothing(tmp_path: Path) -> None:
    v2, data, _, instances = await started(tmp_path)
    await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}))
    with pytest.raises(NotFound, match=r"^uuid:"):
        await instances.delete_v2("e1", "stale", "", cleanup=False)
    with pytest.raises(NotFound, match=r"^type:"):
        await instances.delete_v2("e1", "", "replica", cleanup=False)
    assert v2.engines.engines["e1"].record.state == ProcessState.RUNNING


async def test_engines_come_back_after_a_daemon_restart(tmp_path: Path) -> None:
    v2, data, store, instances = await started(tmp_path)
    replicas = {"r1": data.replica_target("r1", 4420), "r2": data.replica_target("r2", 4421)}
    before = await instances.create_v2(engine("e1", replicas))
    data.mirrors[0].fail_leg("r2")
    await v2.durable()
    (tmp_path / "v2.json").write_bytes(store.snapshots[-1])
    fresh = FakeData()  # a new process: nothing attached
    fresh.replica_target("r1", 4420)
    fresh.replica_target("r2", 4421)
    again, _, _, _ = node(tmp_path / "again", data=fresh)
    again.state_path = tmp_path / "v2.json"
    report = await again.start(again.load())
    assert report["v2_engines_restored"] == 1
    after = again.get("e1")
    assert (after.uuid, after.port_start, after.endpoint) == (before.uuid, before.port_start, before.endpoint)
    assert [c.name for c in fresh.path.initiator.controllers()] == ["r1"]  # never the ERR replica
    assert fresh.mirrors[0].exported == ExportInfo(nqn_of("e1"), "127.0.0.1", before.port_start, nguid_of("e1"))


async def test_an_engine_that_cannot_come_back_is_listed_in_error(tmp_path: Path) -> None:
    _v2, data, store, instances = await started(tmp_path)
    await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}))
    (tmp_path / "v2.json").write_bytes(store.snapshots[-1])
    again, _, _, _ = node(tmp_path / "again", data=FakeData())  # r1 unreachable now
    again.state_path = tmp_path / "v2.json"
    report = await again.start(again.load())
    assert report["v2_engines_failed"] == 1
    view = again.get("e1")
    assert view.state == ProcessState.ERROR and "not restored" in view.error_msg


async def test_engines_without_the_native_core_say_why(tmp_path: Path) -> None:
    v2, _data, _, _ = node(tmp_path)
    v2.engines.data = None
    v2.engines.unavailable = "spdk_ffi was installed without its native core"
    await v2.start(v2.load())
    instances = InstanceService(ProcessService(v2.supervisor, Lifecycle()), v2, "")
    with pytest.raises(FailedPrecondition, match=r"native core"):
        await instances.create_v2(engine("e1", {"r1": "127.0.0.1:4420"}))


async def test_a_create_preempted_as_an_attach_completes_leaves_no_controller(tmp_path: Path) -> None:
    """Field reports 3 and 4: the cancel of a delete (or a shutdown) reaches
    the create in the very loop turn in which a replica's attach completed. The controller is already
    registered under the engine's UUID while the create only sees the
    cancellation; the teardown must still detach it (found in CI by the
    concurrency test below, once in a few dozen runs)."""
    v2, data, _, instances = await started(tmp_path)
    address = data.replica_target("r1", 4420)
    data.cancel_when_connected(lambda: v2.engines.engines["e1"].op)
    create = asyncio.ensure_future(instances.create_v2(engine("e1", {"r1": address})))
    with pytest.raises(asyncio.CancelledError):
        await create
    await settled(v2)
    assert "e1" not in v2.engines.engines
    assert data.path.initiator.controllers() == [] and data.backend.driver == {}
    assert data.backend.connects() == data.backend.disconnects() == 1


async def test_concurrent_creates_and_deletes_keep_every_invariant(tmp_path: Path) -> None:
    """Field report 4, over the fakes: several clients create and delete
    engines on shared names and shared replicas for a while. Afterwards every
    controller belongs to a live engine, every mirror of a gone engine was
    destroyed, and no port is held by nobody."""
    v2, data, _, instances = await started(tmp_path)
    data.backend.connect_delay = 0.002
    data.mirror_delay = 0.002
    addresses = {f"r{i}": data.replica_target(f"r{i}", 4420 + i) for i in range(4)}
    rng = random.Random(7)
    allowed = (AlreadyExists, NotFound, Unavailable)
    done = {"created": 0, "deleted": 0}

    async def client(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(60):
            name = f"e{local.randrange(4)}"
            if local.random() < 0.55:
                chosen = dict(local.sample(sorted(addresses.items()), k=local.randint(1, 3)))
                try:
                    await instances.create_v2(engine(name, chosen))
                    done["created"] += 1
                except allowed:
                    pass
            else:
                try:
                    view = v2.get(name)
                    await instances.delete_v2(name, view.uuid if local.random() < 0.5 else "", "", cleanup=False)
                    done["deleted"] += 1
                except allowed:
                    pass
            await asyncio.sleep(local.random() * 0.005)  # jitter between a client's calls, not a wait

    await asyncio.gather(*(client(rng.randrange(1 << 30)) for _ in range(6)))
    await settled(v2)
    assert done["created"] > 10 and done["deleted"] > 10, done
    live = {e.uuid for e in v2.engines.engines.values()}
    for info in data.path.initiator.controllers():
        assert info.owner in live, info
    for controller in data.backend.driver.values():
        assert controller.refs == 1
    held_ports = {e.record.port for e in v2.engines.engines.values()}
    assert v2.supervisor.ports.in_use == len(held_ports)
    for mirror in data.mirrors:
        if mirror.name not in v2.engines.engines or v2.engines.engines[mirror.name].mirror is not mirror:
            assert mirror.destroyed


async def test_an_engine_delete_that_cannot_be_written_leaves_the_engine_running(tmp_path: Path) -> None:
    from imd.errors import ResourceExhausted

    v2, data, store, instances = await started(tmp_path)
    await instances.create_v2(engine("e1", {"r1": data.replica_target("r1", 4420)}))
    store.failing = ResourceExhausted("no space left on device", resource="state dir")
    with pytest.raises(ResourceExhausted, match="state dir"):
        await instances.delete_v2("e1", "", "", cleanup=False)
    record = v2.engines.engines["e1"].record
    assert (record.state, record.delete_requested) == (ProcessState.RUNNING, False)
    assert data.mirrors[0].exported is not None and len(data.backend.driver) == 1
