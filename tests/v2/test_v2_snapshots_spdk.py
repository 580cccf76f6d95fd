"""V2 snapshots through a real daemon and a real target (issue 19): a host
writes known data through the engine, snapshots are taken between the
writes, and each snapshot's content is checked by its SHA-256 against the
bytes the host wrote; a revert is checked by reading the volume, a rebuild
by the new replica's chain and hashes. Skipped, with the reason, without
SPDK and spdk_ffi's native core.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from tests.conftest import DaemonFactory
from tests.v2.host import pattern
from tests.v2.spdk_env import engine_skip_reason
from tests.v2.test_v2_engine_spdk import SIZE, Node, host, path, started, wait_for

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

V2 = common.DATA_ENGINE_V2
BLOCK = 4096
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Volume:
    """What the host has written: the expected content of the volume."""

    def __init__(self, size: int = SIZE) -> None:
        self.data = bytearray(size)

    def write(self, seed: int, lbas: list[int], nblocks: int = 1) -> None:
        for lba in lbas:
            self.data[lba * BLOCK : (lba + nblocks) * BLOCK] = pattern(seed, lba, nblocks)

    def sha256(self) -> str:
        return hashlib.sha256(bytes(self.data)).hexdigest()


async def write(node: Node, port: int, engine: str, volume: Volume, seed: int, lbas: list[int]) -> None:
    report = await host(cmd="write", path=path(port, engine), seed=seed, lbas=lbas, nblocks=4)
    assert report["mismatches"] == 0
    volume.write(seed, lbas, 4)


def req(engine: str) -> ppb.ProxyEngineRequest:
    return ppb.ProxyEngineRequest(engine_name=engine, data_engine=V2)


async def snapshot(node: Node, engine: str, name: str, **labels: str) -> str:
    reply = await node.proxy.VolumeSnapshot(
        ppb.EngineVolumeSnapshotRequest(
            proxy_engine_request=req(engine), snapshot_volume=ctl.VolumeSnapshotRequest(name=name, labels=labels)
        )
    )
    return str(reply.snapshot.name)


async def listing(node: Node, engine: str) -> dict[str, ppb.EngineSnapshotDiskInfo]:
    return dict((await node.proxy.SnapshotList(req(engine))).disks)


async def hashes(node: Node, engine: str, name: str) -> dict[str, str]:
    await node.proxy.SnapshotHash(ppb.EngineSnapshotHashRequest(proxy_engine_request=req(engine), snapshot_name=name))
    status_req = ppb.EngineSnapshotHashStatusRequest(proxy_engine_request=req(engine), snapshot_name=name)

    async def done() -> bool:
        status = (await node.proxy.SnapshotHashStatus(status_req)).status
        assert all(s.state != "error" for s in status.values()), status
        return bool(status) and all(s.state == "complete" for s in status.values())

    await wait_for(done, 120)
    return {a: s.checksum for a, s in (await node.proxy.SnapshotHashStatus(status_req)).status.items()}


def allocation(disk: Path, snapshots: list[str]) -> dict[str, int]:
    """Bytes each replica's lvols (its head and its snapshots) hold on the
    disk, read from the lvstore's metadata on the device."""
    from imd.edges.blobstore_md import read_allocation
    from imd.v2.chains import lvol_name_of

    blobs = read_allocation(disk).by_name()
    held = {}
    for replica in ("r1", "r2", "r3"):
        names = [replica, *(lvol_name_of(replica, s) for s in snapshots)]
        held[replica] = sum(blobs[n].allocated_bytes or 0 for n in names if n in blobs)
    return held


async def gone(node: Node, name: str) -> None:
    async def absent() -> bool:
        return name not in (await node.stub.InstanceList(Empty())).instances

    await wait_for(absent, 60)


async def test_snapshots_hold_what_the_host_wrote_and_survive_revert_and_rebuild(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    port = e1.status.port_start
    volume = Volume()

    await write(node, port, "e1", volume, 1, [0, 100, 2000])
    at_s1 = volume.sha256()
    assert await snapshot(node, "e1", "s1", purpose="test") == "s1"
    await write(node, port, "e1", volume, 2, [100, 4000])
    at_s2 = volume.sha256()
    generated = await snapshot(node, "e1", "")
    assert re.match(r"^[0-9a-f-]{36}$", generated)  # an empty name gets a UUID, as Longhorn's
    await write(node, port, "e1", volume, 3, [0, 5000])

    disks = await listing(node, "e1")
    assert set(disks) == {"s1", generated, "volume-head"}
    assert (disks["s1"].parent, dict(disks["s1"].children)) == ("", {generated: True})
    assert (disks[generated].parent, dict(disks[generated].children)) == ("s1", {"volume-head": True})
    assert disks["volume-head"].parent == generated and not disks["volume-head"].user_created
    assert disks["s1"].user_created and dict(disks["s1"].labels) == {"purpose": "test"}
    assert all(RFC3339.match(d.created) and d.size.isdigit() for d in disks.values())

    # Each snapshot's content is what the host had written by then, on every replica.
    assert set((await hashes(node, "e1", "s1")).values()) == {at_s1}
    assert set((await hashes(node, "e1", generated)).values()) == {at_s2}

    # Errors name their field.
    for name, status in (
        ("s1", Status.ALREADY_EXISTS),
        ("volume-head", Status.INVALID_ARGUMENT),
        ("a/b", Status.INVALID_ARGUMENT),
    ):
        with pytest.raises(GRPCError) as err:
            await snapshot(node, "e1", name)
        assert err.value.status == status and (err.value.message or "").startswith("snapshot_volume.name:"), err.value
    with pytest.raises(GRPCError) as err:
        await node.proxy.SnapshotRevert(ppb.EngineSnapshotRevertRequest(proxy_engine_request=req("e1"), name="s1"))
    assert err.value.status == Status.FAILED_PRECONDITION and "frontend" in (err.value.message or "")
    with pytest.raises(GRPCError) as err:
        await node.proxy.SnapshotRemove(ppb.EngineSnapshotRemoveRequest(proxy_engine_request=req("e1"), names=["nope"]))
    assert err.value.status == Status.NOT_FOUND

    # A rebuild carries the chain: names, parents, labels, and the same content.
    await node.replica("r3")
    await node.proxy.ReplicaAdd(
        ppb.EngineReplicaAddRequest(
            proxy_engine_request=req("e1"), replica_name="r3", replica_address=f"127.0.0.1:{node.ports['r3']}"
        )
    )

    async def rebuilt() -> bool:
        return (await node.modes("e1"))["r3"] == "RW"

    await wait_for(rebuilt, 120)
    # Thin stays thin: the new replica holds about what the source holds.
    held = allocation(tmp_path / "disk.img", ["s1", generated])
    assert 0 < held["r3"] <= 1.25 * held["r1"], held
    after = await listing(node, "e1")
    assert int(after["s1"].size) > 0 and int(after[generated].size) > 0
    assert "imd/missing-on" not in dict(after["s1"].labels)
    assert dict(after["s1"].labels) == {"purpose": "test"}
    assert set((await hashes(node, "e1", "s1")).values()) == {at_s1}  # three replicas now, one checksum
    assert len(await hashes(node, "e1", "s1")) == 3

    # Revert: only without a frontend. e1 goes, e2 (no frontend) reverts to s1.
    await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", data_engine=V2))
    await gone(node, "e1")
    await node.engine("e2", ["r1", "r2", "r3"], size=SIZE, frontend="")
    await node.proxy.SnapshotRevert(ppb.EngineSnapshotRevertRequest(proxy_engine_request=req("e2"), name="s1"))
    reverted = await listing(node, "e2")
    assert reverted["volume-head"].parent == "s1"
    assert dict(reverted["s1"].children) == {generated: True, "volume-head": True}  # later snapshots stay
    await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e2", data_engine=V2))
    await gone(node, "e2")
    e3 = await node.engine("e3", ["r1", "r2", "r3"])
    check = await host(cmd="verify", path=path(e3.status.port_start, "e3"), seed=1, lbas=[0, 100, 2000], nblocks=4)
    assert check["mismatches"] == 0  # the volume reads s1's data again
    assert set((await hashes(node, "e3", "s1")).values()) == {at_s1}
