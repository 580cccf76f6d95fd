"""Data engine V2 disks and replicas through a real daemon, on a real SPDK
target that the daemon supervises (skipped, with the reason, without SPDK).

Hosts are real too: spdk_nvme_perf writes to a replica's export, and the
target's own JSON-RPC (our client, beside the daemon's) shows what is there.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.v2.model import nqn_of
from tests.conftest import DaemonFactory
from tests.helpers import RunningDaemon, pid_alive
from tests.v2.spdk_env import perf, rpc, sparse_file, target_pid, target_skip_reason, v2_config

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(target_skip_reason() is not None, reason=str(target_skip_reason())),
]

V2 = common.DATA_ENGINE_V2
BLOCK = dpb.block
MIB = 1 << 20


OTHER_UUID = "44444444-4444-4444-4444-444444444444"


def with_lvs(spec: inst.InstanceSpec, *, name: str = "", uuid: str = "") -> inst.InstanceSpec:
    spec.spdk_instance_spec.lvs_name = name
    spec.spdk_instance_spec.lvs_uuid = uuid
    return spec


def replica_spec(name: str, disk: str = "d1", size: int = 64 * MIB) -> inst.InstanceSpec:
    return inst.InstanceSpec(
        name=name,
        type="replica",
        volume_name="vol-1",
        data_engine=V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(disk_name=disk, size=size),
    )


async def with_disk(factory: DaemonFactory, tmp_path: Path, **extra: Any) -> tuple[RunningDaemon, dict[str, Any]]:
    config = v2_config()
    daemon = await factory(v2=config, **extra)
    path = sparse_file(tmp_path / "disk.img")
    disk = await daemon.disks().DiskCreate(
        dpb.DiskCreateRequest(disk_type=BLOCK, disk_name="d1", disk_path=path, block_size=4096)
    )
    assert disk.uuid and disk.total_size > 200 * MIB and disk.block_size == 4096 and disk.cluster_size == MIB
    return daemon, config


async def wait_for(predicate: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


async def test_replica_on_a_real_target_serves_a_real_host(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon, config = await with_disk(daemon_factory, tmp_path)
    stub = daemon.instances()
    made = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    assert made.status.state == "running" and made.status.port_start
    subsystems = {s["nqn"]: s for s in rpc(config).call("nvmf_get_subsystems")}
    # Longhorn's names: go-spdk-helper's GetNQN and longhorn-spdk-engine's
    # generateNGUID (SHA-1 name-based UUID, OID namespace), computed there.
    export = subsystems["nqn.2023-01.io.longhorn.spdk:r1"]
    assert export["listen_addresses"][0]["trsvcid"] == str(made.status.port_start)
    (lvol,) = rpc(config).call("bdev_get_bdevs", name="d1/r1")
    assert export["namespaces"][0]["bdev_name"] == lvol["name"]
    assert export["namespaces"][0]["nguid"].lower() == "d01a42ab5bfd532aa2bb240ba2e5bc12"
    out = perf("127.0.0.1", made.status.port_start, nqn_of("r1"))
    assert "Total" in out
    listing = await stub.InstanceList(Empty())
    assert listing.instances["r1"].spec.data_engine == V2
    assert listing.instances["r1"].spec.spdk_instance_spec.disk_name == "d1"
    lines = []
    async with stub.InstanceLog.open() as stream:
        await stream.send_message(inst.InstanceLogRequest(name="r1", data_engine=V2), end=True)
        lines = [reply.line async for reply in stream]
    assert any("replica running" in line for line in lines)


async def test_delete_keeps_or_removes_the_lvol_as_asked(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon, config = await with_disk(daemon_factory, tmp_path)
    stub, disks = daemon.instances(), daemon.disks()
    first = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    await stub.InstanceDelete(inst.InstanceDeleteRequest(name="r1", uuid=first.status.uuid, data_engine=V2))

    async def gone() -> bool:
        return "r1" not in (await stub.InstanceList(Empty())).instances

    await wait_for(gone)
    assert nqn_of("r1") not in {s["nqn"] for s in rpc(config).call("nvmf_get_subsystems")}
    lvols = await disks.DiskReplicaInstanceList(dpb.DiskReplicaInstanceListRequest(disk_type=BLOCK, disk_name="d1"))
    kept_uuid = lvols.replica_instances["r1"].uuid
    assert lvols.replica_instances["r1"].spec_size == 64 * MIB
    again = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    assert again.status.uuid != first.status.uuid
    lvols = await disks.DiskReplicaInstanceList(dpb.DiskReplicaInstanceListRequest(disk_type=BLOCK, disk_name="d1"))
    assert lvols.replica_instances["r1"].uuid == kept_uuid  # the same data
    with pytest.raises(GRPCError) as err:
        await disks.DiskDelete(dpb.DiskDeleteRequest(disk_type=BLOCK, disk_name="d1"))
    assert err.value.status == Status.FAILED_PRECONDITION and "r1" in (err.value.message or "")
    await stub.InstanceDelete(inst.InstanceDeleteRequest(name="r1", cleanup_required=True, data_engine=V2))
    await wait_for(gone)
    lvols = await disks.DiskReplicaInstanceList(dpb.DiskReplicaInstanceListRequest(disk_type=BLOCK, disk_name="d1"))
    assert dict(lvols.replica_instances) == {}
    await disks.DiskDelete(dpb.DiskDeleteRequest(disk_type=BLOCK, disk_name="d1"))
    assert [b["name"] for b in rpc(config).call("bdev_get_bdevs")] == []


async def test_errors_from_the_real_target_name_the_field(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon, config = await with_disk(daemon_factory, tmp_path)
    stub = daemon.instances()
    cases = [
        (replica_spec("r1", size=64 << 30), Status.RESOURCE_EXHAUSTED, "spec.spdk_instance_spec.size"),
        (replica_spec("r1", disk="no-disk"), Status.NOT_FOUND, "spec.spdk_instance_spec.disk_name"),
        (replica_spec("r1", size=MIB + 512), Status.INVALID_ARGUMENT, "spec.spdk_instance_spec.size"),
        (with_lvs(replica_spec("r1"), uuid=OTHER_UUID), Status.NOT_FOUND, "spec.spdk_instance_spec.lvs_uuid"),
        (with_lvs(replica_spec("r1"), name="d2"), Status.INVALID_ARGUMENT, "spec.spdk_instance_spec.lvs_name"),
    ]
    for spec, status, field in cases:
        with pytest.raises(GRPCError) as err:
            await stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
        assert (err.value.status, (err.value.message or "").split(":")[0]) == (status, field)
    with pytest.raises(GRPCError) as err:
        await daemon.disks().DiskCreate(
            dpb.DiskCreateRequest(
                disk_type=BLOCK,
                disk_name="d2",
                disk_uuid="44444444-4444-4444-4444-444444444444",
                disk_path=sparse_file(tmp_path / "other.img"),
            )
        )
    assert err.value.status == Status.NOT_FOUND and (err.value.message or "").startswith("disk_uuid:")
    # Nothing half-made: no lvol, no export, no stray bdev.
    assert [s["nqn"] for s in rpc(config).call("nvmf_get_subsystems") if s["nqn"].startswith(nqn_of(""))] == []
    assert {b["name"] for b in rpc(config).call("bdev_get_bdevs")} == {"d1"}
    assert (await stub.InstanceList(Empty())).instances == {}


async def test_the_target_outlives_a_daemon_kill_and_is_readopted(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon, config = await with_disk(daemon_factory, tmp_path, stop_children_on_exit=False)
    pid = target_pid(config)
    assert pid is not None
    try:  # from here on, the target outlives the daemon: killed in finally, whatever fails
        made = await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
        # A stray export under our prefix, as a crash could leave.
        rpc(config).call("nvmf_create_subsystem", nqn=nqn_of("stray"), allow_any_host=True)
        await daemon.stop(signal.SIGKILL)
        assert pid_alive(pid)
        perf("127.0.0.1", made.status.port_start, nqn_of("r1"), seconds=1)  # served while imd is down
        await daemon.start()
        assert target_pid(config) == pid
        again = await daemon.instances().InstanceGet(inst.InstanceGetRequest(name="r1", data_engine=V2))
        assert (again.status.state, again.status.uuid) == ("running", made.status.uuid)
        assert {s["nqn"] for s in rpc(config).call("nvmf_get_subsystems")} >= {nqn_of("r1")}
        assert nqn_of("stray") not in {s["nqn"] for s in rpc(config).call("nvmf_get_subsystems")}
        assert (await daemon.pm().ProcessList(_process_list())).processes == {}  # never listed
    finally:
        await daemon.stop()
        # The first target, and any other one the restarted daemon started
        # (if readopting failed): none outlives the test.
        for leftover in {pid, target_pid(config)}:
            if leftover is not None and pid_alive(leftover):
                os.kill(leftover, signal.SIGKILL)


def _process_list() -> Any:
    from imd.api.gen.imrpc import imrpc_pb2 as pm

    return pm.ProcessListRequest()


async def test_a_dead_target_fails_its_replicas_and_is_started_again(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon, config = await with_disk(daemon_factory, tmp_path)
    stub = daemon.instances()
    await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    old = target_pid(config)
    assert old is not None
    os.kill(old, signal.SIGKILL)

    async def failed() -> bool:
        got = await stub.InstanceGet(inst.InstanceGetRequest(name="r1", data_engine=V2))
        return bool(got.status.state == "error")

    await wait_for(failed)

    async def back() -> bool:
        try:
            await daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name="d1"))
            return True
        except GRPCError:
            return False

    await wait_for(back)
    assert target_pid(config) not in (None, old)
    await stub.InstanceDelete(inst.InstanceDeleteRequest(name="r1", data_engine=V2))

    async def gone() -> bool:
        return "r1" not in (await stub.InstanceList(Empty())).instances

    await wait_for(gone)
    again = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    assert again.status.state == "running"
    perf("127.0.0.1", again.status.port_start, nqn_of("r1"), workload="randread")


# -- running out of room, as the real target does ------------------------------------------------


async def test_replica_expand_on_base_plus_four(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """imd's own engine-to-replica call: "hold at least this much". No room
    is RESOURCE_EXHAUSTED naming the size: past what the disk holds in all
    (the thin lvol would grow past the disk on the target), and a thick lvol
    the target has no clusters for (the target's own ENOSPC)."""
    from imd.api.gen.imdrpc import replica_grpc
    from imd.api.gen.imdrpc import replica_pb2 as rpb

    daemon, config = await with_disk(daemon_factory, tmp_path)
    stub = daemon.instances()
    replicas = replica_grpc.ReplicaServiceStub(daemon.channel(offset=4))
    await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    grown = await replicas.ReplicaExpand(rpb.ReplicaExpandRequest(name="r1", size=128 * MIB))
    assert grown.size == 128 * MIB
    (lvol,) = rpc(config).call("bdev_get_bdevs", name="d1/r1")
    assert lvol["num_blocks"] * lvol["block_size"] == 128 * MIB
    disk = await daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name="d1"))
    too_big = disk.total_size + MIB
    with pytest.raises(GRPCError) as err:
        await replicas.ReplicaExpand(rpb.ReplicaExpandRequest(name="r1", size=too_big))
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    assert (err.value.message or "") == (
        f"size: disk d1 has no room to grow r1 to {too_big} bytes ({disk.total_size} bytes in all)"
    )
    with pytest.raises(GRPCError) as err:
        await replicas.ReplicaExpand(rpb.ReplicaExpandRequest(name="r9", size=too_big))
    assert err.value.status == Status.NOT_FOUND and (err.value.message or "").startswith("name:")
    # A thick lvol of the replica's name, made by another tool, reused by a
    # create; the rest of the disk's clusters taken by another thick lvol.
    target = rpc(config)
    target.call("bdev_lvol_create", lvs_name="d1", lvol_name="r2", size_in_mib=8, thin_provision=False)
    (lvs,) = [lvs for lvs in target.call("bdev_lvol_get_lvstores") if lvs["name"] == "d1"]
    target.call("bdev_lvol_create", lvs_name="d1", lvol_name="filler", size_in_mib=lvs["free_clusters"])
    await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r2", size=8 * MIB)))
    with pytest.raises(GRPCError) as err:
        await replicas.ReplicaExpand(rpb.ReplicaExpandRequest(name="r2", size=16 * MIB))
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    assert (err.value.message or "").startswith("size: disk d1 has no room to grow r2: bdev_lvol_resize: No space")
    (lvol,) = target.call("bdev_get_bdevs", name="d1/r2")
    assert lvol["num_blocks"] * lvol["block_size"] == 8 * MIB  # as it was


async def test_a_create_when_the_lvstore_has_no_metadata_page_left(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A real lvstore runs out of metadata pages, one per lvol and as many as
    the disk has clusters, before a thin lvol ever runs out of clusters. The
    target answers ENOMEM; the create is RESOURCE_EXHAUSTED naming the disk
    and leaves nothing; with a page free again it works."""
    config = v2_config()
    daemon = await daemon_factory(v2=config)
    await daemon.disks().DiskCreate(
        dpb.DiskCreateRequest(disk_type=BLOCK, disk_name="d1", disk_path=sparse_file(tmp_path / "small.img", 16 * MIB))
    )
    target = rpc(config)
    made = 0
    while True:  # what another tool made on the disk, until the lvstore refuses
        try:
            target.call("bdev_lvol_create", lvs_name="d1", lvol_name=f"other{made}", size_in_mib=1, thin_provision=True)
        except RuntimeError as exc:
            assert "Cannot allocate memory" in str(exc), exc
            break
        made += 1
    assert made == 15  # 16 metadata pages on 16 clusters: one the lvstore's
    stub = daemon.instances()
    with pytest.raises(GRPCError) as err:
        await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1", size=MIB)))
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    assert (err.value.message or "").startswith(
        "spec.spdk_instance_spec.disk_name: disk d1 has no room for another lvol: bdev_lvol_create: "
        "Cannot allocate memory"
    )
    assert (await stub.InstanceList(Empty())).instances == {}
    assert [s["nqn"] for s in target.call("nvmf_get_subsystems") if s["nqn"].startswith(nqn_of(""))] == []
    target.call("bdev_lvol_delete", name="d1/other0")
    again = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1", size=MIB)))
    assert again.status.state == "running"


async def test_a_replica_named_by_its_lvstore(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon, _ = await with_disk(daemon_factory, tmp_path)
    disk = await daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name="d1"))
    spec = with_lvs(replica_spec("r1", disk=""), name="d1", uuid=disk.uuid)
    made = await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=spec))
    assert made.status.state == "running"
    assert (made.spec.spdk_instance_spec.disk_name, made.spec.spdk_instance_spec.lvs_uuid) == ("d1", disk.uuid)


# -- what DiskReplicaInstanceList reports --------------------------------------------------------


async def test_replica_lvols_report_their_size_and_no_allocation(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """SPDK v24.01 reports no allocated clusters per lvol (bdev_get_bdevs'
    driver_specific.lvol and bdev_lvol_get_lvols have none; they came in
    v24.05), so actual_size is 0 (README says so), even once a host wrote;
    the disk's free space shows the writes."""
    daemon, config = await with_disk(daemon_factory, tmp_path)
    made = await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    before = await daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name="d1"))
    perf("127.0.0.1", made.status.port_start, nqn_of("r1"), workload="randwrite", seconds=1)
    (lvol,) = rpc(config).call("bdev_get_bdevs", name="d1/r1")
    assert "num_allocated_clusters" not in lvol["driver_specific"]["lvol"]  # what would make it computable
    lvols = await daemon.disks().DiskReplicaInstanceList(
        dpb.DiskReplicaInstanceListRequest(disk_type=BLOCK, disk_name="d1")
    )
    r1 = lvols.replica_instances["r1"]
    assert (r1.spec_size, r1.actual_size, r1.disk_name, r1.uuid) == (64 * MIB, 0, "d1", lvol["uuid"])
    after = await daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name="d1"))
    assert after.free_size < before.free_size == before.total_size


# -- V2 that could not start ---------------------------------------------------------------------


async def test_v2_becomes_available_once_the_target_can_start_without_a_restart(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The target binary is not there when the daemon starts: V2 calls are
    FAILED_PRECONDITION with the reason, V1 serves; once the binary is in
    place the keeper's retries start the target and V2 serves, with the
    same daemon process."""
    from tests.spdk.target import spdk_prefix

    binary = tmp_path / "bin" / "nvmf_tgt"
    config = v2_config(target_binary=str(binary))
    daemon = await daemon_factory(v2=config)
    pid = daemon.pid
    disk = dpb.DiskCreateRequest(disk_type=BLOCK, disk_name="d1", disk_path=sparse_file(tmp_path / "disk.img"))
    with pytest.raises(GRPCError) as err:
        await daemon.disks().DiskCreate(disk)
    assert err.value.status == Status.FAILED_PRECONDITION
    assert (err.value.message or "") == (
        f"data_engine: SPDK data engine not available: {binary} is not an executable file"
    )
    binary.parent.mkdir()
    binary.write_text(f'#!/bin/sh\nexec {spdk_prefix()}/bin/nvmf_tgt "$@"\n')
    binary.chmod(0o755)

    async def served() -> bool:
        try:
            await daemon.disks().DiskCreate(disk)
            return True
        except GRPCError as exc:
            assert exc.status == Status.FAILED_PRECONDITION, exc
            return False

    await wait_for(served, 90)  # retried at 1 s, doubling (a start takes a few seconds here)
    assert daemon.pid == pid and daemon.proc is not None and daemon.proc.poll() is None  # no restart
    made = await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    assert made.status.state == "running"
    assert "SPDK data engine available again" in daemon.stderr()
