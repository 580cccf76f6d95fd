"""V2 disks and replicas: orchestration on the node's target, its undo and
recovery rules, against the in-memory target (tests/v2/fake_spdk.py).

The same behaviour against a real nvmf_tgt is in tests/v2/test_v2_spdk.py.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import msgspec
import pytest

from imd.edges.spdk_target import TargetRpcError
from imd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from imd.services.disks import DISK_TYPE_BLOCK, DiskService
from imd.services.instances import InstanceService, V2Request
from imd.services.processes import Lifecycle, ProcessService
from imd.supervisor.model import ProcessState
from imd.v2 import state as v2state
from imd.v2.model import nguid_of, nqn_of
from tests.v2.fake_spdk import FakeSpdk
from tests.v2.fakes import node

pytestmark = pytest.mark.asyncio

SIZE = 64 << 20


def disk_file(tmp_path: Path, name: str = "disk.img", size: int = 256 << 20) -> str:
    path = tmp_path / name
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def services(v2: object) -> tuple[DiskService, InstanceService]:
    processes = ProcessService(v2.supervisor, Lifecycle())  # type: ignore[attr-defined]
    return DiskService(v2, ""), InstanceService(processes, v2, "")  # type: ignore[arg-type]


def replica(name: str, disk: str = "disk-1", size: int = SIZE, **kw: object) -> V2Request:
    return V2Request(name=name, type="replica", disk_name=disk, size=size, **kw)  # type: ignore[arg-type]


async def started(tmp_path: Path, spdk: FakeSpdk | None = None):  # type: ignore[no-untyped-def]
    v2, keeper, _data, store = node(tmp_path, spdk)
    await v2.start(v2.load())
    disks, instances = services(v2)
    return v2, keeper, store, disks, instances


async def test_names_are_longhorns() -> None:
    """Literals computed by Longhorn's own code, not ours: go-spdk-helper's
    types.GetNQN and longhorn-spdk-engine's generateNGUID (a SHA-1
    name-based UUID in the OID namespace, as hex), built with Go from their
    sources for these names."""
    assert nqn_of("r1") == "nqn.2023-01.io.longhorn.spdk:r1"
    assert nqn_of("pvc-0a1b2c3d-r-0") == "nqn.2023-01.io.longhorn.spdk:pvc-0a1b2c3d-r-0"
    assert nguid_of("r1") == "d01a42ab5bfd532aa2bb240ba2e5bc12"
    assert nguid_of("e1") == "19f2bfd82a1a5e2d83d6541a3157afdb"
    assert nguid_of("pvc-0a1b2c3d-r-0") == "b466095020f150ccba664816fc2fab0e"


# -- disks ----------------------------------------------------------------------------


async def test_disk_create_makes_aio_bdev_and_lvstore_then_is_idempotent(tmp_path: Path) -> None:
    _v2, keeper, store, disks, _ = await started(tmp_path)
    path = disk_file(tmp_path)
    view = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", path, 4096, "")
    assert view.record.uuid and view.total_size > 0 and view.free_size == view.total_size
    assert keeper.spdk.called("bdev_aio_create") == [{"name": "disk-1", "filename": path, "block_size": 4096}]
    assert keeper.spdk.called("bdev_lvol_create_lvstore")[0]["cluster_sz"] == 1 << 20
    again = await disks.create(DISK_TYPE_BLOCK, "disk-1", view.record.uuid, path, 4096, "aio")
    assert again.record == view.record
    assert len(keeper.spdk.called("bdev_aio_create")) == 1
    saved = v2state.decode(store.snapshots[-1])
    assert [d.name for d in saved.disks] == ["disk-1"]


async def test_disk_create_conflicts_name_the_field(tmp_path: Path) -> None:
    _, _, _, disks, _ = await started(tmp_path)
    path, other = disk_file(tmp_path), disk_file(tmp_path, "other.img")
    first = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", path, 0, "")
    with pytest.raises(AlreadyExists, match=r"^disk_name: disk disk-1 exists with path"):
        await disks.create(DISK_TYPE_BLOCK, "disk-1", "", other, 0, "")
    with pytest.raises(AlreadyExists, match=r"^disk_path: path .* is already disk disk-1"):
        await disks.create(DISK_TYPE_BLOCK, "disk-2", "", path, 0, "")
    with pytest.raises(AlreadyExists, match=r"^disk_uuid:"):
        await disks.create(DISK_TYPE_BLOCK, "disk-1", "00000000-0000-0000-0000-000000000001", path, 0, "")
    assert (await disks.get(DISK_TYPE_BLOCK, "disk-1", "")).record == first.record


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Disk_1"}, "disk_name"),
        ({"path": "relative.img"}, "disk_path"),
        ({"path": "/nonexistent/disk.img"}, "disk_path"),
        ({"path": "/"}, "disk_path"),
        ({"block_size": 1000}, "block_size"),
        ({"block_size": 256}, "block_size"),
        ({"uuid": "not-a-uuid"}, "disk_uuid"),
        ({"driver": "nvme"}, "disk_driver"),
    ],
)
async def test_disk_create_bad_input_names_the_field_and_touches_nothing(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    _, keeper, _, disks, _ = await started(tmp_path)
    args: dict[str, object] = {"name": "disk-1", "uuid": "", "path": disk_file(tmp_path), "block_size": 4096}
    args["driver"] = ""
    args.update(kwargs)
    with pytest.raises(InvalidArgument, match=f"^{field}:"):
        await disks.create(DISK_TYPE_BLOCK, **args)  # type: ignore[arg-type]
    assert keeper.spdk.called("bdev_aio_create") == []


async def test_filesystem_disks_are_unimplemented(tmp_path: Path) -> None:
    from imd.errors import Unimplemented

    _, _, _, disks, _ = await started(tmp_path)
    with pytest.raises(Unimplemented, match=r"^disk_type:"):
        await disks.create(0, "disk-1", "", disk_file(tmp_path), 4096, "")


async def test_disk_with_an_lvstore_is_loaded_renamed_and_checked_by_uuid(tmp_path: Path) -> None:
    spdk = FakeSpdk()
    v2, _keeper, _, disks, _ = await started(tmp_path, spdk)
    path = disk_file(tmp_path)
    made = await disks.create(DISK_TYPE_BLOCK, "old-name", "", path, 4096, "")
    await disks.delete(DISK_TYPE_BLOCK, "old-name", made.record.uuid, "")
    assert spdk.devices[path].name == "old-name"  # the data stays on the device
    with pytest.raises(NotFound, match=r"^disk_uuid: no lvstore"):
        await disks.create(DISK_TYPE_BLOCK, "disk-1", "11111111-1111-1111-1111-111111111111", path, 4096, "")
    assert "disk-1" not in v2.disks.records and spdk.aio == {}  # undone
    loaded = await disks.create(DISK_TYPE_BLOCK, "disk-1", made.record.uuid, path, 4096, "")
    assert loaded.record.uuid == made.record.uuid
    assert spdk.devices[path].name == "disk-1"
    assert len(spdk.called("bdev_lvol_create_lvstore")) == 1


async def test_disk_delete_refuses_while_replicas_live_and_checks_uuid(tmp_path: Path) -> None:
    _, _, _, disks, instances = await started(tmp_path)
    made = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    await instances.create_v2(replica("r1"))
    with pytest.raises(FailedPrecondition, match=r"^disk_name: disk disk-1 still carries replica instances r1"):
        await disks.delete(DISK_TYPE_BLOCK, "disk-1", "", "")
    with pytest.raises(NotFound, match=r"^disk_uuid:"):
        await disks.delete(DISK_TYPE_BLOCK, "disk-1", "22222222-2222-2222-2222-222222222222", "")
    await instances.delete_v2("r1", "", "", cleanup=True)
    await _settled(instances)
    await disks.delete(DISK_TYPE_BLOCK, "disk-1", made.record.uuid, "")
    with pytest.raises(NotFound, match=r"^disk_name:"):
        await disks.get(DISK_TYPE_BLOCK, "disk-1", "")


async def test_v2_not_available_is_a_failed_precondition_after_validation(tmp_path: Path) -> None:
    v2, keeper, _, _ = node(tmp_path)
    keeper.refuse = "/opt/spdk/bin/nvmf_tgt is not an executable file"
    await v2.start(v2.load())
    disks, _instances = services(v2)
    with pytest.raises(InvalidArgument, match=r"^block_size:"):
        await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 3, "")
    with pytest.raises(FailedPrecondition, match=r"nvmf_tgt is not an executable file"):
        await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    with pytest.raises(FailedPrecondition, match=r"nvmf_tgt is not an executable file"):
        await disks.get(DISK_TYPE_BLOCK, "disk-1", "")


# -- replicas -------------------------------------------------------------------------------


async def _settled(instances: InstanceService) -> None:
    """Wait for background deletes to finish."""
    import asyncio

    assert instances.node is not None
    for _ in range(200):
        if not instances.node.replicas._tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("replica tasks did not settle")


async def test_replica_lifecycle_exports_lvol_on_a_port_of_the_range(tmp_path: Path) -> None:
    v2, keeper, store, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    view = await instances.create_v2(replica("r1", volume_name="vol-1"))
    assert view.state == ProcessState.RUNNING and view.type == "replica"
    assert 23000 <= view.port_start == view.port_end <= 23099
    subsystem = keeper.spdk.subsystems["nqn.2023-01.io.longhorn.spdk:r1"]  # Longhorn's (test_names_are_longhorns)
    assert subsystem["namespaces"][0]["bdev_name"] == "disk-1/r1"
    assert subsystem["namespaces"][0]["nguid"] == "d01a42ab5bfd532aa2bb240ba2e5bc12"
    assert subsystem["listen_addresses"][0]["trsvcid"] == str(view.port_start)
    assert v2state.decode(store.snapshots[-1]).replicas[0].state == ProcessState.RUNNING
    with pytest.raises(AlreadyExists, match=r"^spec.name:"):
        await instances.create_v2(replica("r1"))
    with pytest.raises(NotFound, match=r"^uuid:"):
        await instances.delete_v2("r1", "stale-uuid", "", cleanup=True)
    assert nqn_of("r1") in keeper.spdk.subsystems
    gone = await instances.delete_v2("r1", view.uuid, "replica", cleanup=True)
    assert gone.deleted
    await _settled(instances)
    assert keeper.spdk.subsystems == {} and keeper.spdk.called("bdev_lvol_delete")
    assert v2.supervisor.ports.in_use == 0


async def test_delete_without_cleanup_keeps_the_lvol_for_a_later_create(tmp_path: Path) -> None:
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    await instances.create_v2(replica("r1"))
    lvol_uuid = v2.replicas.records["r1"].lvol_uuid
    await instances.delete_v2("r1", "", "", cleanup=False)
    await _settled(instances)
    assert [lvol.name for lvol in await disks.replicas(DISK_TYPE_BLOCK, "disk-1", "")] == ["r1"]
    again = await instances.create_v2(replica("r1"))
    assert again.state == ProcessState.RUNNING
    assert v2.replicas.records["r1"].lvol_uuid == lvol_uuid and not v2.replicas.records["r1"].lvol_created
    (made,) = keeper.spdk.called("bdev_lvol_create")
    # Its delete zeroes its clusters (an AIO disk ignores unmap; the real
    # target's test: tests/v2/test_v2_stale_clusters_spdk.py).
    assert made["clear_method"] == "write_zeroes" and made["thin_provision"]


async def test_a_create_preempted_by_a_delete_answers_and_leaves_nothing(tmp_path: Path) -> None:
    """Field report 3 and 4: the delete wins at once, and the create it
    preempted still gets an answer (a CancelledError out of the create's
    handler left the stress test's client waiting forever)."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    keeper.spdk.delay["bdev_lvol_create"] = 0.5
    creating = asyncio.ensure_future(instances.create_v2(replica("x0")))
    while "x0" not in v2.replicas.records or not keeper.spdk.called("bdev_get_bdevs"):
        await asyncio.sleep(0.01)
    gone = await asyncio.wait_for(instances.delete_v2("x0", "", "", cleanup=True), 5)
    assert gone.deleted
    with pytest.raises(Unavailable, match=r"^spec.name: create of replica x0 was preempted by a delete"):
        await asyncio.wait_for(creating, 5)
    await _settled(instances)
    assert "x0" not in v2.replicas.records and keeper.spdk.subsystems == {}
    assert v2.supervisor.ports.in_use == 0
    assert [lvol.name for lvol in await disks.replicas(DISK_TYPE_BLOCK, "disk-1", "")] == []
    keeper.spdk.delay.clear()
    again = await instances.create_v2(replica("x0"))
    assert again.state == ProcessState.RUNNING


async def test_concurrent_creates_of_one_name_build_it_once(tmp_path: Path) -> None:
    """Field report 4: both creates passed the name check while the disk was
    looked at, both built, and one's undo removed the other's export."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    keeper.spdk.delay["bdev_lvol_get_lvstores"] = 0.2
    results = await asyncio.gather(*(instances.create_v2(replica("x0")) for _ in range(3)), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 1 and made[0].state == ProcessState.RUNNING
    assert len(refused) == 2 and all(isinstance(r, AlreadyExists) for r in refused)
    assert v2.replicas.records["x0"].uuid == made[0].uuid
    assert list(keeper.spdk.subsystems) == [nqn_of("x0")]
    assert len(keeper.spdk.called("nvmf_create_subsystem")) == 1


async def test_a_delete_at_the_last_step_of_a_create_undoes_the_export(tmp_path: Path) -> None:
    """The create's last step is the state write after the export: a delete
    that preempts it there must not leave a running, exported replica that
    is marked deleted (no later delete would tear it down)."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    creating = asyncio.ensure_future(instances.create_v2(replica("x0")))
    while not keeper.spdk.called("nvmf_subsystem_add_listener"):
        await asyncio.sleep(0)
    while v2.replicas.records["x0"].state != ProcessState.RUNNING:
        await asyncio.sleep(0)  # the build now waits for its last state write
    await instances.delete_v2("x0", "", "", cleanup=True)
    with pytest.raises(Unavailable, match="preempted by a delete"):
        await creating
    await _settled(instances)
    assert "x0" not in v2.replicas.records and keeper.spdk.subsystems == {}
    assert [lvol.name for lvol in await disks.replicas(DISK_TYPE_BLOCK, "disk-1", "")] == []


@pytest.mark.parametrize(
    ("request_kwargs", "error", "field"),
    [
        ({"size": 0}, InvalidArgument, "spec.spdk_instance_spec.size"),
        ({"size": 4097}, InvalidArgument, "spec.spdk_instance_spec.size"),
        ({"size": 1 << 40}, ResourceExhausted, "spec.spdk_instance_spec.size"),
        ({"disk": "no-such-disk"}, NotFound, "spec.spdk_instance_spec.disk_name"),
        ({"disk": ""}, InvalidArgument, "spec.spdk_instance_spec.disk_name"),
        ({"name": "R_1"}, InvalidArgument, "spec.name"),
        ({"disk_uuid": "33333333-3333-3333-3333-333333333333"}, NotFound, "spec.spdk_instance_spec.disk_uuid"),
        ({"lvs_uuid": "33333333-3333-3333-3333-333333333333"}, NotFound, "spec.spdk_instance_spec.lvs_uuid"),
        ({"lvs_name": "disk-2"}, InvalidArgument, "spec.spdk_instance_spec.lvs_name"),
        ({"disk": "", "lvs_name": "Disk_2"}, InvalidArgument, "spec.spdk_instance_spec.lvs_name"),
    ],
)
async def test_replica_bad_input_names_the_field_and_leaves_nothing(
    tmp_path: Path, request_kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    kwargs: dict[str, object] = {"name": "r1", "disk": "disk-1", "size": SIZE}
    kwargs.update(request_kwargs)
    name, disk, size = kwargs.pop("name"), kwargs.pop("disk"), kwargs.pop("size")
    with pytest.raises(error, match=f"^{field}:"):
        await instances.create_v2(replica(str(name), str(disk), int(size), **kwargs))  # type: ignore[call-overload]
    assert v2.replicas.records == {} and keeper.spdk.subsystems == {}
    assert keeper.spdk.called("bdev_lvol_create") == [] and v2.supervisor.ports.in_use == 0


async def test_a_failed_export_undoes_the_lvol_and_the_port(tmp_path: Path) -> None:
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    keeper.spdk.fail["nvmf_subsystem_add_listener"] = TargetRpcError(
        "nvmf_subsystem_add_listener", -errno.EADDRINUSE, "Address already in use"
    )
    with pytest.raises(Unavailable, match=r"cannot create replica r1.*Address already in use"):
        await instances.create_v2(replica("r1"))
    assert v2.replicas.records == {} and keeper.spdk.subsystems == {}
    assert keeper.spdk.devices[str(tmp_path / "disk.img")].lvols == {}
    assert v2.supervisor.ports.in_use == 0


async def test_replica_create_that_cannot_be_persisted_is_undone(tmp_path: Path) -> None:
    v2, keeper, store, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    store.failing = ResourceExhausted("state dir: no space left on device")
    with pytest.raises(ResourceExhausted, match=r"no space left"):
        await instances.create_v2(replica("r1"))
    assert v2.replicas.records == {} and keeper.spdk.subsystems == {}
    assert keeper.spdk.called("bdev_lvol_create") == []  # the intent never reached the disk
    assert v2.supervisor.ports.in_use == 0


# -- recovery --------------------------------------------------------------------------------


async def test_recovery_undoes_unacknowledged_creates_and_orphan_exports(tmp_path: Path) -> None:
    spdk = FakeSpdk()
    _v2, _keeper, store, disks, instances = await started(tmp_path, spdk)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    await instances.create_v2(replica("kept"))
    await instances.create_v2(replica("half"))
    # A crash after the lvol and export of "half" were made, before its
    # "running" reached the disk: the file says starting.
    saved = v2state.decode(store.snapshots[-1])
    for record in saved.replicas:
        if record.name == "half":
            record.state = ProcessState.STARTING
    spdk.subsystems[nqn_of("stray")] = {"namespaces": [], "listen_addresses": []}
    (tmp_path / "v2.json").write_bytes(v2state.encode(saved))
    again, keeper2, _, _ = node(tmp_path / "again", spdk)
    keeper2.fresh = False  # the target lived on
    again.state_path = tmp_path / "v2.json"
    report = await again.start(again.load())
    assert report["v2_undone"] == 1 and report["v2_orphan_exports"] == 1
    assert set(again.replicas.records) == {"kept"}
    assert again.replicas.records["kept"].state == ProcessState.RUNNING
    assert set(spdk.subsystems) == {nqn_of("kept")}
    assert set(spdk.devices[str(tmp_path / "disk.img")].lvols) == {"kept"}


async def test_a_fresh_target_fails_the_replicas_it_lost_and_finishes_deletes(tmp_path: Path) -> None:
    spdk = FakeSpdk()
    _v2, _keeper, store, disks, instances = await started(tmp_path, spdk)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    await instances.create_v2(replica("r1"))
    await instances.create_v2(replica("r2"))
    saved = v2state.decode(store.snapshots[-1])
    saved.replicas[1].delete_requested = saved.replicas[1].cleanup_requested = True
    (tmp_path / "v2.json").write_bytes(v2state.encode(saved))
    spdk.restart()  # the target went down with the daemon
    again, _, _, _ = node(tmp_path / "again", spdk)
    again.state_path = tmp_path / "v2.json"
    await again.start(again.load())
    assert spdk.aio == {"disk-1": (str(tmp_path / "disk.img"), 4096)}  # the disk is loaded back
    r1 = again.replicas.records["r1"]
    assert r1.state == ProcessState.ERROR and "restarted" in r1.error_msg
    for _ in range(100):
        if "r2" not in again.replicas.records:
            break
        import asyncio

        await asyncio.sleep(0.01)
    assert "r2" not in again.replicas.records
    assert set(spdk.devices[str(tmp_path / "disk.img")].lvols) == {"r1"}


async def test_target_loss_fails_replicas_and_deletes_finish_when_it_is_back(tmp_path: Path) -> None:
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    await instances.create_v2(replica("r1"))
    events = v2.watch()
    keeper.crash()
    assert v2.replicas.records["r1"].state == ProcessState.ERROR
    assert "exited" in v2.replicas.records["r1"].error_msg
    assert (await events.get()).view.state == ProcessState.ERROR
    with pytest.raises(FailedPrecondition, match=r"exited"):
        await instances.create_v2(replica("r2"))
    await instances.delete_v2("r1", "", "", cleanup=True)
    await _settled(instances)
    assert "r1" in v2.replicas.records and "delete not finished" in v2.replicas.records["r1"].error_msg
    await keeper.come_back()
    await _settled(instances)
    assert "r1" not in v2.replicas.records
    assert keeper.spdk.aio  # disks loaded back onto the new target
    assert keeper.spdk.devices[str(tmp_path / "disk.img")].lvols == {}


async def test_corrupt_v2_state_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "v2.json").write_bytes(b"{not json")
    v2, _, _, _ = node(tmp_path)
    assert v2.load() == v2state.V2StateFile()
    assert list(tmp_path.glob("v2.json.bad-*"))
    with pytest.raises(msgspec.DecodeError):
        v2state.decode(b"{not json")


# -- acknowledged means durable (issue 12, V2 side) ------------------------------------------


async def test_v2_changes_that_cannot_be_written_are_refused_and_undone(tmp_path: Path) -> None:
    v2, keeper, store, disks, instances = await started(tmp_path)
    full = ResourceExhausted("no space left on device", resource="state dir")
    path = disk_file(tmp_path)
    store.failing = full
    with pytest.raises(ResourceExhausted, match="state dir"):
        await disks.create(DISK_TYPE_BLOCK, "disk-1", "", path, 4096, "")
    assert v2.disks.records == {} and keeper.spdk.aio == {}  # the bdev it made is gone
    store.failing = None
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", path, 4096, "")
    await instances.create_v2(replica("r1"))
    store.failing = full
    with pytest.raises(ResourceExhausted, match="state dir"):
        await instances.delete_v2("r1", "", "", cleanup=True)
    record = v2.replicas.records["r1"]
    assert (record.state, record.delete_requested) == (ProcessState.RUNNING, False)
    assert nqn_of("r1") in keeper.spdk.subsystems  # never touched
    store.failing = None
    await instances.delete_v2("r1", "", "", cleanup=True)
    await _settled(instances)
    store.failing = full
    with pytest.raises(ResourceExhausted, match="state dir"):
        await disks.delete(DISK_TYPE_BLOCK, "disk-1", "", "")
    assert "disk-1" in v2.disks.records and "disk-1" in keeper.spdk.aio


async def test_disk_metrics_are_rates_over_the_interval_between_calls(tmp_path: Path) -> None:
    _, keeper, _, disks, _ = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    io = keeper.spdk.io.setdefault("disk-1", {})
    io.update(bytes_written=8 << 20, num_write_ops=2048, write_latency_ticks=2048 * 50)
    first = await disks.metrics(DISK_TYPE_BLOCK, "disk-1", "")  # since the target's start: 1 s on its clock
    assert (first.write_iops, first.write_throughput, first.write_latency_ns) == (2048, 8 << 20, 50_000)
    io.update(bytes_written=(8 << 20) + 4096 * 100, num_write_ops=2148, write_latency_ticks=2048 * 50 + 100 * 20)
    second = await disks.metrics(DISK_TYPE_BLOCK, "disk-1", "")
    assert (second.write_iops, second.write_throughput, second.write_latency_ns) == (100, 409_600, 20_000)
    with pytest.raises(NotFound, match=r"^disk_name:"):
        await disks.metrics(DISK_TYPE_BLOCK, "disk-9", "")


async def test_lvs_name_and_lvs_uuid_name_the_disk_as_well(tmp_path: Path) -> None:
    """A disk's lvstore is named after it and has its UUID: a replica may
    name its disk by either, and the UUIDs given must both be the disk's."""
    v2, _, _, disks, instances = await started(tmp_path)
    disk = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    uuid = disk.record.uuid
    made = await instances.create_v2(replica("r1", disk="", lvs_name="disk-1", lvs_uuid=uuid, disk_uuid=uuid))
    assert made.disk_name == "disk-1" and made.disk_uuid == uuid
    with pytest.raises(NotFound, match=r"^spec.spdk_instance_spec.lvs_uuid: disk disk-1 has UUID"):
        await instances.create_v2(replica("r2", lvs_uuid="33333333-3333-3333-3333-333333333333", disk_uuid=uuid))
    assert set(v2.replicas.records) == {"r1"}


# -- running out of room, as a real lvstore does --------------------------------------------


async def test_a_create_when_the_lvstore_has_no_metadata_page_left_is_resource_exhausted(tmp_path: Path) -> None:
    """Thin lvols never run out of clusters when made; an lvstore runs out
    of metadata pages instead (one per lvol, as many as the disk's
    clusters). The target answers that, and the create is undone."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path, size=16 << 20), 4096, "")
    spdk = keeper.spdk
    filler = 0
    while True:  # what another tool made on the disk, until the lvstore refuses
        try:
            spdk.rpc_bdev_lvol_create("bdev_lvol_create", "disk-1", f"other{filler}", 1, thin_provision=True)
        except TargetRpcError as exc:
            assert (exc.code, exc.message) == (-32602, "Cannot allocate memory")
            break
        filler += 1
    assert filler == 15  # 16 pages: the lvstore's, then fifteen lvols (as nvmf_tgt v24.01 on 16 MiB)
    with pytest.raises(
        ResourceExhausted, match=r"^spec.spdk_instance_spec.disk_name: disk disk-1 has no room for another lvol"
    ):
        await instances.create_v2(replica("r1", size=1 << 20))
    assert v2.replicas.records == {} and spdk.subsystems == {} and v2.supervisor.ports.in_use == 0
    spdk.rpc_bdev_lvol_delete("bdev_lvol_delete", "disk-1/other0")  # room again
    assert (await instances.create_v2(replica("r1", size=1 << 20))).state == ProcessState.RUNNING


async def test_a_create_reusing_a_thick_lvol_with_no_clusters_left_is_resource_exhausted(tmp_path: Path) -> None:
    """A create reuses an lvol of its name left on the disk, growing it to
    the size asked; a thick one needs clusters for that, and the target
    answers ENOSPC when there are none. The reused lvol is kept as it was."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    view = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path, size=64 << 20), 4096, "")
    spdk = keeper.spdk
    spdk.rpc_bdev_lvol_create("bdev_lvol_create", "disk-1", "r1", 8, thin_provision=False)
    spdk.rpc_bdev_lvol_create("bdev_lvol_create", "disk-1", "big", view.total_size // (1 << 20) - 8)
    with pytest.raises(
        ResourceExhausted,
        match=r"^spec.spdk_instance_spec.size: disk disk-1 has no room for 16777216 bytes: .*No space",
    ):
        await instances.create_v2(replica("r1", size=16 << 20))
    assert v2.replicas.records == {} and spdk.subsystems == {} and v2.supervisor.ports.in_use == 0
    lvs = spdk.devices[str(tmp_path / "disk.img")]
    assert lvs.lvols["r1"].size_mib == 8  # the reused lvol is still there, as it was


async def test_replica_expand_grows_the_lvol_within_the_disk(tmp_path: Path) -> None:
    """``Replicas.expand`` (ReplicaExpand on base + 4): "hold at least this
    much". No room is RESOURCE_EXHAUSTED naming the size: more than the disk
    holds in all (the lvol is thin, so the target alone would grow it past
    the disk), or, for a thick lvol, clusters the target does not have."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    view = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path, size=64 << 20), 4096, "")
    await instances.create_v2(replica("r1", size=8 << 20))
    spdk = keeper.spdk
    lvs = spdk.devices[str(tmp_path / "disk.img")]
    assert await v2.replicas.expand("r1", 16 << 20) == 16 << 20
    assert lvs.lvols["r1"].size_mib == 16 and v2.replicas.records["r1"].spec.size == 16 << 20
    assert await v2.replicas.expand("r1", 12 << 20) == 16 << 20  # holds that much already: left as it is
    # Thin: the whole disk is fine even when other lvols hold most clusters...
    spdk.rpc_bdev_lvol_create("bdev_lvol_create", "disk-1", "big", view.total_size // (1 << 20) - 4)
    assert await v2.replicas.expand("r1", view.total_size) == view.total_size
    # ...more than the disk is not.
    with pytest.raises(ResourceExhausted, match=r"^size: disk disk-1 has no room to grow r1 to \d+ bytes"):
        await v2.replicas.expand("r1", view.total_size + (1 << 20))
    assert lvs.lvols["r1"].size_mib == view.total_size >> 20
    with pytest.raises(InvalidArgument, match=r"^size:"):
        await v2.replicas.expand("r1", view.total_size + 512)
    with pytest.raises(NotFound, match=r"^name:"):
        await v2.replicas.expand("r9", 16 << 20)


async def test_replica_expand_of_a_thick_lvol_the_target_cannot_grow(tmp_path: Path) -> None:
    v2, keeper, _, disks, instances = await started(tmp_path)
    view = await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path, size=64 << 20), 4096, "")
    spdk = keeper.spdk
    spdk.rpc_bdev_lvol_create("bdev_lvol_create", "disk-1", "r1", 8, thin_provision=False)
    await instances.create_v2(replica("r1", size=8 << 20))  # reuses it, as it is
    spdk.rpc_bdev_lvol_create("bdev_lvol_create", "disk-1", "big", view.total_size // (1 << 20) - 12)
    with pytest.raises(ResourceExhausted, match=r"^size: disk disk-1 has no room to grow r1: .*No space left"):
        await v2.replicas.expand("r1", 16 << 20)
    assert v2.replicas.records["r1"].spec.size == 8 << 20  # unchanged
    assert await v2.replicas.expand("r1", 12 << 20) == 12 << 20  # what fits, fits


async def test_replica_lvols_report_their_size_and_no_allocation(tmp_path: Path) -> None:
    """DiskReplicaInstanceList: SPDK v24.01 reports no allocated clusters per
    lvol, so actual_size is 0 (README says so), even once clusters were
    written; spec_size is the lvol's size as the target reports it."""
    v2, keeper, _, disks, instances = await started(tmp_path)
    await disks.create(DISK_TYPE_BLOCK, "disk-1", "", disk_file(tmp_path), 4096, "")
    await instances.create_v2(replica("r1", size=SIZE))
    keeper.spdk.write("disk-1/r1", 10)  # a host wrote 10 MiB
    (lvol,) = await disks.replicas(DISK_TYPE_BLOCK, "disk-1", "")
    assert (lvol.name, lvol.spec_size, lvol.actual_size) == ("r1", SIZE, 0)
    assert lvol.uuid == v2.replicas.records["r1"].lvol_uuid and lvol.disk_name == "disk-1"
    view = await disks.get(DISK_TYPE_BLOCK, "disk-1", "")
    assert view.total_size - view.free_size == 10 << 20  # the disk shows the writes
