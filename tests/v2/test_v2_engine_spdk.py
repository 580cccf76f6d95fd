"""V2 engines through a real daemon on a real node: the daemon supervises an
SPDK target holding the replicas, hosts the engine in its own C core, and
exports the volume; a separate host process (tests/v2/host.py) reads and
writes it over NVMe-oF/TCP and reads each replica directly to compare.
Skipped, with the reason, without SPDK and spdk_ffi's native core.

Three pollers share two cores here (target, engine, host), so the host
naps between polls; volumes are small and loads modest.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_grpc
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.v2.model import host_nqn_of, nqn_of
from tests.conftest import DaemonFactory
from tests.helpers import RunningDaemon
from tests.v2.spdk_env import engine_skip_reason, rpc, sparse_file, v2_config

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

V2 = common.DATA_ENGINE_V2
MIB = 1 << 20
SIZE = 32 * MIB
ROOT = Path(__file__).resolve().parent.parent.parent


class Node:
    """A daemon with a disk, its replicas and engines, and a host."""

    def __init__(self, daemon: RunningDaemon, config: dict[str, Any]) -> None:
        self.daemon = daemon
        self.config = config
        self.ports: dict[str, int] = {}

    @property
    def stub(self) -> Any:
        return self.daemon.instances()

    @property
    def proxy(self) -> proxy_grpc.ProxyEngineServiceStub:
        return proxy_grpc.ProxyEngineServiceStub(self.daemon.channel(offset=1))

    async def replica(self, name: str, size: int = SIZE) -> int:
        spec = inst.InstanceSpec(
            name=name,
            type="replica",
            volume_name="vol",
            data_engine=V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(disk_name="d1", size=size),
        )
        made = await self.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
        self.ports[name] = made.status.port_start
        return int(made.status.port_start)

    async def engine(
        self, name: str, replicas: list[str], size: int = SIZE, frontend: str = "spdk-tcp-nvmf"
    ) -> inst.InstanceResponse:
        spec = inst.InstanceSpec(
            name=name,
            type="engine",
            volume_name="vol",
            data_engine=V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(
                size=size,
                replica_address_map={r: f"127.0.0.1:{self.ports[r]}" for r in replicas},
                frontend=frontend,
            ),
        )
        return await self.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))

    def target(self, proxy_name: str) -> ppb.ProxyEngineRequest:
        return ppb.ProxyEngineRequest(engine_name=proxy_name, data_engine=V2)

    async def modes(self, engine: str) -> dict[str, str]:
        reply = await self.proxy.ReplicaList(self.target(engine))
        return {r.address.instanceName: ctl.ReplicaMode.Name(r.mode) for r in reply.replica_list.replicas}


async def host(**spec: Any) -> dict[str, Any]:
    """Run tests/v2/host.py in its own process; its JSON report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.v2.host",
        json.dumps(spec),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-2000:]
    return dict(json.loads(out))


def path(port: int, name: str) -> str:
    return f"TCP/IPv4/127.0.0.1/{port}/{nqn_of(name)}"


async def hashes(node: Node, replica: str, blocks: int = SIZE // 4096) -> list[str]:
    report = await host(cmd="hash", path=path(node.ports[replica], replica), first=0, count=blocks, chunk=2048)
    return list(report["hashes"])


async def started(factory: DaemonFactory, tmp_path: Path, v2: dict[str, Any] | None = None, **extra: Any) -> Node:
    """A daemon with V2 (``v2``: overrides of its ``[v2]`` table) and a disk d1."""
    config = v2_config(**(v2 or {}))
    daemon = await factory(v2=config, **extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path_ = sparse_file(tmp_path / "disk.img", 512 * MIB)
    await daemon.disks().DiskCreate(dpb.DiskCreateRequest(disk_type=dpb.block, disk_name="d1", disk_path=path_))
    return Node(daemon, config)


async def wait_for(predicate: Any, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.2)


async def host_writing(node: Node, engine: str) -> None:
    """Until the engine has taken writes from a host: the host process is up
    and its loop running (it starts its own SPDK first, which takes a while
    on a busy machine)."""
    from tests.test_observability import samples, scrape, value

    async def writing() -> bool:
        return value(samples((await scrape(node.daemon))[1]), "imd_engine_writes_total", engine=engine) > 0

    await wait_for(writing)


# -- data --------------------------------------------------------------------------------


async def test_host_writes_reach_every_replica(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    # Longhorn's names: go-spdk-helper's GetNQN and longhorn-spdk-engine's
    # generateNGUID (SHA-1 name-based UUID, OID namespace), computed there.
    assert e1.status.endpoint == f"nvmf://127.0.0.1:{e1.status.port_start}/nqn.2023-01.io.longhorn.spdk:e1"
    assert [(p.nqn, p.nguid) for p in e1.status.paths] == [
        ("nqn.2023-01.io.longhorn.spdk:e1", "19f2bfd82a1a5e2d83d6541a3157afdb")
    ]
    lbas = [0, 1, 17, 4000, SIZE // 4096 - 4]
    wrote = await host(cmd="write", path=path(e1.status.port_start, "e1"), seed=11, lbas=lbas, nblocks=4)
    assert (wrote["mismatches"], wrote["size_bytes"]) == (0, SIZE)
    for replica in ("r1", "r2"):
        direct = await host(cmd="verify", path=path(node.ports[replica], replica), seed=11, lbas=lbas, nblocks=4)
        assert direct["mismatches"] == 0, replica
    assert await hashes(node, "r1") == await hashes(node, "r2")


async def test_a_replica_lost_under_load_leaves_the_mirror_not_the_host(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    loop = asyncio.ensure_future(
        host(cmd="loop", path=path(e1.status.port_start, "e1"), seed=5, seconds=8, qd=2, span=4096)
    )
    await host_writing(node, "e1")
    listener = {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(node.ports["r2"])}
    rpc(node.config).call("nvmf_subsystem_remove_listener", nqn=nqn_of("r2"), listen_address=listener)

    async def failed() -> bool:
        return (await node.modes("e1"))["r2"] == "ERR"

    await wait_for(failed, 30)
    report = await loop
    assert (report["errors"], report["mismatches"]) == (0, 0), report["first_error"]
    assert report["writes"] > 0
    survivor = await host(cmd="check", path=path(node.ports["r1"], "r1"), written=report["written"])
    assert survivor["mismatches"] == 0
    got = await node.stub.InstanceGet(inst.InstanceGetRequest(name="e1", data_engine=V2))
    assert got.status.state == "running"


# -- field report 2: a leftover controller -------------------------------------------------


async def test_an_engine_lost_with_its_controllers_is_created_again_first_time(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The daemon dies with e1's controllers attached (kill -9, mid-life);
    e1 is deleted and created again under a new UUID. It succeeds on the
    first call, and the replica's target sees exactly one controller, the
    new engine's."""
    node = await started(daemon_factory, tmp_path, stop_children_on_exit=False)
    try:  # from here on, the target outlives the daemon: killed in finally, whatever fails
        await node.replica("r1")
        first = await node.engine("e1", ["r1"])
        await node.daemon.stop(signal.SIGKILL)
        await node.daemon.start()
        await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", uuid=first.status.uuid, data_engine=V2))

        async def gone() -> bool:
            return "e1" not in (await node.stub.InstanceList(Empty())).instances

        await wait_for(gone)
        again = await node.engine("e1", ["r1"])
        assert again.status.state == "running" and again.status.uuid != first.status.uuid
        controllers = rpc(node.config).call("nvmf_subsystem_get_controllers", nqn=nqn_of("r1"))
        assert [c["hostnqn"] for c in controllers] == [host_nqn_of(again.status.uuid)]
    finally:
        await node.daemon.stop()
        from tests.v2.spdk_env import target_pid

        pid = target_pid(node.config)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


# -- expand and rebuild ---------------------------------------------------------------------


async def test_expand_then_rebuild_under_host_writes(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    expand = ppb.EngineVolumeExpandRequest(
        proxy_engine_request=node.target("e1"), expand=ctl.VolumeExpandRequest(size=2 * SIZE)
    )
    await node.proxy.VolumeExpand(expand)
    volume = (await node.proxy.VolumeGet(node.target("e1"))).volume
    assert (volume.size, volume.isExpanding, volume.last_expansion_error) == (2 * SIZE, False, "")
    seen = await host(cmd="write", path=path(e1.status.port_start, "e1"), seed=3, lbas=[2 * SIZE // 4096 - 1])
    assert (seen["size_bytes"], seen["mismatches"]) == (2 * SIZE, 0)  # a new host sees the new size
    with pytest.raises(GRPCError) as err:
        shrink = ppb.EngineVolumeExpandRequest(
            proxy_engine_request=node.target("e1"), expand=ctl.VolumeExpandRequest(size=SIZE)
        )
        await node.proxy.VolumeExpand(shrink)
    assert err.value.status == Status.INVALID_ARGUMENT and (err.value.message or "").startswith("expand.size:")

    await node.replica("r3", 2 * SIZE)
    loop = asyncio.ensure_future(
        host(cmd="loop", path=path(e1.status.port_start, "e1"), seed=9, seconds=6, qd=2, span=8192)
    )
    await host_writing(node, "e1")
    add = ppb.EngineReplicaAddRequest(
        proxy_engine_request=node.target("e1"), replica_name="r3", replica_address=f"127.0.0.1:{node.ports['r3']}"
    )
    await node.proxy.ReplicaAdd(add)

    async def rebuilt() -> bool:
        return (await node.modes("e1"))["r3"] == "RW"

    await wait_for(rebuilt)
    report = await loop
    assert (report["errors"], report["mismatches"]) == (0, 0), report["first_error"]
    blocks = 2 * SIZE // 4096
    r1 = await hashes(node, "r1", blocks)
    assert r1 == await hashes(node, "r2", blocks) == await hashes(node, "r3", blocks)


async def test_a_delete_preempts_a_rebuild_at_once(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    node = await started(daemon_factory, tmp_path)
    await node.replica("r1", 256 * MIB)
    await node.replica("r2", 256 * MIB)
    await node.engine("e1", ["r1"], size=256 * MIB)
    qos = ppb.EngineReplicaRebuildingQosSetRequest(proxy_engine_request=node.target("e1"), qos_limit_mbps=4)
    await node.proxy.ReplicaRebuildingQosSet(qos)  # 256 MiB at 4 MiB/s: a minute, unless preempted
    add = ppb.EngineReplicaAddRequest(
        proxy_engine_request=node.target("e1"), replica_name="r2", replica_address=f"127.0.0.1:{node.ports['r2']}"
    )
    await node.proxy.ReplicaAdd(add)
    status = await node.proxy.ReplicaRebuildingStatus(node.target("e1"))
    (rebuild,) = status.status.values()
    assert rebuild.is_rebuilding and rebuild.state == "in_progress"
    # A bound on a hang, well below the copy's minute: a delete that waited
    # for the copy could not answer within it.
    async with asyncio.timeout(30):
        await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", data_engine=V2))

    async def gone() -> bool:
        return "e1" not in (await node.stub.InstanceList(Empty())).instances

    await wait_for(gone, 10)
    for replica in ("r1", "r2"):
        assert rpc(node.config).call("nvmf_subsystem_get_controllers", nqn=nqn_of(replica)) == []


# -- restart ----------------------------------------------------------------------------------


async def test_a_host_rides_out_a_daemon_kill_and_the_replicas_resync(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    node = await started(daemon_factory, tmp_path, stop_children_on_exit=False)
    loop: asyncio.Future[dict[str, Any]] | None = None
    try:  # from here on, the target outlives the daemon: killed in finally, whatever fails
        await node.replica("r1")
        await node.replica("r2")
        e1 = await node.engine("e1", ["r1", "r2"])
        loop = asyncio.ensure_future(
            host(
                cmd="loop",
                path=path(e1.status.port_start, "e1"),
                seed=21,
                seconds=12,
                qd=2,
                span=4096,
                opts={"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1},
            )
        )
        await host_writing(node, "e1")
        await node.daemon.stop(signal.SIGKILL)  # writes in flight
        await node.daemon.start()
        after = await node.stub.InstanceGet(inst.InstanceGetRequest(name="e1", data_engine=V2))
        assert (after.status.uuid, after.status.port_start) == (e1.status.uuid, e1.status.port_start)
        report = await loop
        assert (report["errors"], report["mismatches"]) == (0, 0), report["first_error"]

        async def resynced() -> bool:
            return set((await node.modes("e1")).values()) == {"RW"}

        await wait_for(resynced)
        assert await hashes(node, "r1") == await hashes(node, "r2")
        print(f"restart pause seen by the host: {report['longest_gap_s']} s")
    finally:
        if loop is not None and not loop.done():
            loop.cancel()
        await node.daemon.stop()
        from tests.v2.spdk_env import target_pid

        pid = target_pid(node.config)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


# -- observability (issue 11) -------------------------------------------------------------


async def test_engine_metrics_move_with_host_io(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    from tests.test_observability import samples, scrape, value

    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    disks = node.daemon.disks()
    disk_request = dpb.DiskGetRequest(disk_type=dpb.block, disk_name="d1")
    await disks.MetricsGet(disk_request)  # the start of the disk's interval
    await node.proxy.MetricsGet(node.target("e1"))  # the start of the engine's
    loop = asyncio.ensure_future(
        host(cmd="loop", path=path(e1.status.port_start, "e1"), seed=2, seconds=5, qd=2, span=2048)
    )

    async def connected() -> bool:
        during = samples((await scrape(node.daemon))[1])
        return value(during, "imd_engine_frontend_hosts", engine="e1") == 1

    await wait_for(connected, 20)  # the host is one; the count follows it within 100 ms
    report = await loop
    after = samples((await scrape(node.daemon))[1])
    assert value(after, "imd_engine_writes_total", engine="e1") >= report["writes"]
    assert value(after, "imd_engine_written_bytes_total", engine="e1") >= 4096 * report["writes"]
    assert value(after, "imd_engine_io_latency_seconds_count", engine="e1") >= report["writes"] + report["reads"]
    assert value(after, "imd_engine_replicas", engine="e1", mode="RW") == 2
    assert value(after, "imd_spdk_target_up") == 1
    assert value(after, "imd_spdk_controllers", state="connected") == 2
    assert value(after, "imd_instances", data_engine="v2", type="engine", state="running") == 1
    engine_rates = (await node.proxy.MetricsGet(node.target("e1"))).metrics
    assert engine_rates.writeIOPS > 0 and engine_rates.writeThroughput >= 4096 * engine_rates.writeIOPS
    assert engine_rates.writeLatency > 0
    disk_rates = (await disks.MetricsGet(disk_request)).metrics
    assert disk_rates.writeIOPS > 0 and disk_rates.writeThroughput > 0  # both replicas' writes, on one disk
    from tests.test_observability import imd

    shown = await asyncio.to_thread(imd, "--socket", str(node.daemon.socket), "status")
    text = shown.stdout
    assert "SPDK target: pid" in text and "r1=RW r2=RW" in text, text
    assert any(line.split()[:1] == ["d1"] for line in text.splitlines()), text  # the disks table


# -- the engine proxy's error paths, over the wire ----------------------------------------------


async def test_server_version_and_replica_mode_update_on_the_proxy(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """ServerVersionGet reports the daemon's build (as the process manager's
    VersionGet does); ReplicaModeUpdate fails a replica by hand (RW to ERR)
    and the host goes on with the other; back to RW is only through a
    rebuild; bad input names its field."""
    from imd import __version__

    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    version = (await node.proxy.ServerVersionGet(node.target("e1"))).version
    daemon_version = await node.daemon.pm().VersionGet(Empty())
    assert (version.version, version.gitCommit, version.buildDate) == (
        __version__,
        daemon_version.gitCommit,
        daemon_version.buildDate,
    )
    assert (version.dataFormatVersion, version.dataFormatMinVersion) == (1, 1)
    r2 = f"tcp://127.0.0.1:{node.ports['r2']}"
    fail = ppb.EngineReplicaModeUpdateRequest(proxy_engine_request=node.target("e1"), replica_address=r2, mode=ctl.ERR)
    await node.proxy.ReplicaModeUpdate(fail)
    assert await node.modes("e1") == {"r1": "RW", "r2": "ERR"}
    wrote = await host(cmd="write", path=path(e1.status.port_start, "e1"), seed=13, lbas=[5], nblocks=1)
    assert wrote["mismatches"] == 0  # served by r1 alone
    direct = await host(cmd="verify", path=path(node.ports["r1"], "r1"), seed=13, lbas=[5], nblocks=1)
    assert direct["mismatches"] == 0
    cases = [
        (replace_mode(fail, ctl.RW), Status.FAILED_PRECONDITION, "mode: "),
        (replace_mode(fail, 9), Status.INVALID_ARGUMENT, "mode: "),
        (replace_address(fail, "tcp://127.0.0.1:1"), Status.NOT_FOUND, "replica_address: "),
        (replace_address(fail, ""), Status.INVALID_ARGUMENT, "replica_address: "),
    ]
    for request, status, field in cases:
        with pytest.raises(GRPCError) as err:
            await node.proxy.ReplicaModeUpdate(request)
        assert err.value.status == status and (err.value.message or "").startswith(field), err.value
    assert await node.modes("e1") == {"r1": "RW", "r2": "ERR"}


def replace_mode(request: ppb.EngineReplicaModeUpdateRequest, mode: int) -> ppb.EngineReplicaModeUpdateRequest:
    changed = ppb.EngineReplicaModeUpdateRequest()
    changed.CopyFrom(request)
    changed.mode = mode  # type: ignore[assignment]
    return changed


def replace_address(request: ppb.EngineReplicaModeUpdateRequest, address: str) -> ppb.EngineReplicaModeUpdateRequest:
    changed = ppb.EngineReplicaModeUpdateRequest()
    changed.CopyFrom(request)
    changed.replica_address = address
    return changed


async def test_an_expansion_with_no_room_on_a_replicas_disk_is_resource_exhausted(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """VolumeExpand past what a replica's disk holds: the engine asks the
    replica's imd (base + 4, here the same daemon) and gets
    RESOURCE_EXHAUSTED naming expand.size and the replica; the volume keeps
    its size, with the reason in VolumeGet; a size that fits then works."""
    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    await node.engine("e1", ["r1", "r2"])
    disk = await node.daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=dpb.block, disk_name="d1"))
    too_big = disk.total_size + MIB
    expand = ppb.EngineVolumeExpandRequest(
        proxy_engine_request=node.target("e1"), expand=ctl.VolumeExpandRequest(size=too_big)
    )
    with pytest.raises(GRPCError) as err:
        await node.proxy.VolumeExpand(expand)
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    assert (err.value.message or "") == (
        f"expand.size: replica r1 at 127.0.0.1: disk d1 has no room to grow r1 to {too_big} bytes "
        f"({disk.total_size} bytes in all)"
    )
    volume = (await node.proxy.VolumeGet(node.target("e1"))).volume
    assert (volume.size, volume.isExpanding) == (SIZE, False)
    assert "disk d1 has no room to grow r1" in volume.last_expansion_error and volume.last_expansion_failed_at
    for replica in ("r1", "r2"):
        (lvol,) = rpc(node.config).call("bdev_get_bdevs", name=f"d1/{replica}")
        assert lvol["num_blocks"] * lvol["block_size"] == SIZE, replica  # not grown
    expand.expand.size = 2 * SIZE
    await node.proxy.VolumeExpand(expand)
    volume = (await node.proxy.VolumeGet(node.target("e1"))).volume
    assert (volume.size, volume.last_expansion_error) == (2 * SIZE, "")
