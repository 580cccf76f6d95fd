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
from imd.v2.model import nguid_of, nqn_of
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
    export = subsystems[nqn_of("r1")]
    assert export["listen_addresses"][0]["trsvcid"] == str(made.status.port_start)
    (lvol,) = rpc(config).call("bdev_get_bdevs", name="d1/r1")
    assert export["namespaces"][0]["bdev_name"] == lvol["name"]
    assert export["namespaces"][0]["nguid"].lower() == nguid_of("r1")
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
    made = await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=replica_spec("r1")))
    pid = target_pid(config)
    assert pid is not None
    try:
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
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


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
