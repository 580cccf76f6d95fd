"""An engine grows its replicas (and deletes or marks their snapshots)
through the imd of each replica's node:
``RemoteReplicas`` (the client engines use) calling
``/imdrpc.ReplicaService/ReplicaExpand`` on base + 4, over real gRPC on
loopback, with the replica's node on the in-memory target below the V2 seam
(tests/v2/fake_spdk.py). Without SPDK: the same path through a real daemon
and a real target is in tests/v2/test_v2_engine_spdk.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.server import Server

from imd.api.replica import RemoteReplicas, ReplicaServicer
from imd.api.status import BoundedProtoCodec, InFlight
from imd.errors import NotFound, ResourceExhausted, Unavailable
from imd.services.disks import DISK_TYPE_BLOCK, DiskService
from imd.services.engines import EngineService
from imd.services.instances import InstanceService, V2Request
from imd.services.processes import Lifecycle, ProcessService
from imd.v2.node import V2Node
from tests.helpers import free_base_port
from tests.v2.fake_spdk import FakeSpdk
from tests.v2.fakes import FakeData, node

pytestmark = pytest.mark.asyncio

MIB = 1 << 20
V2 = 1


@dataclass
class ReplicaNode:
    """A node whose imd serves ReplicaExpand on base + 4, holding replicas
    r1 and r2 (8 MiB each) on disk-1 (64 MiB), and an engine e1 over them
    whose expansions go through RemoteReplicas, as the daemon wires it."""

    v2: V2Node
    spdk: FakeSpdk
    data: FakeData
    instances: InstanceService
    remote: RemoteReplicas
    server: Server
    disk_total: int
    ports: dict[str, int]


@pytest_asyncio.fixture
async def replica_node(tmp_path: Path) -> AsyncIterator[ReplicaNode]:
    base = free_base_port()
    remote = RemoteReplicas(base, None, timeout=10)
    v2, keeper, data, _ = node(tmp_path, expander=remote)
    await v2.start(v2.load())
    instances = InstanceService(ProcessService(v2.supervisor, Lifecycle()), v2, "")
    disk_path = tmp_path / "disk.img"
    with disk_path.open("wb") as f:
        f.truncate(64 * MIB)
    disk = await DiskService(v2, "").create(DISK_TYPE_BLOCK, "disk-1", "", str(disk_path), 4096, "")
    ports = {}
    for name in ("r1", "r2"):
        made = await instances.create_v2(V2Request(name=name, type="replica", disk_name="disk-1", size=8 * MIB))
        ports[name] = made.port_start
        data.replica_target(name, made.port_start, size=8 * MIB)  # the engine's view of its export
    server = Server([ReplicaServicer(instances, InFlight())], codec=BoundedProtoCodec())
    await server.start("127.0.0.1", base + 4)
    try:
        yield ReplicaNode(v2, keeper.spdk, data, instances, remote, server, disk.total_size, ports)
    finally:
        server.close()
        await server.wait_closed()
        await v2.close()


def lvol_mib(n: ReplicaNode, name: str) -> int:
    (lvs,) = n.spdk.devices.values()
    return lvs.lvols[name].size_mib


async def test_remote_replicas_grows_a_replica_on_its_node(replica_node: ReplicaNode) -> None:
    n = replica_node
    await n.remote.expand(f"127.0.0.1:{n.ports['r1']}", "r1", 16 * MIB)
    assert lvol_mib(n, "r1") == 16 and n.v2.replicas.records["r1"].spec.size == 16 * MIB
    await n.remote.expand(f"127.0.0.1:{n.ports['r1']}", "r1", 12 * MIB)  # holds that much already
    assert lvol_mib(n, "r1") == 16


async def test_no_room_on_the_replicas_disk_is_resource_exhausted_naming_the_size(replica_node: ReplicaNode) -> None:
    n = replica_node
    too_big = n.disk_total + MIB
    with pytest.raises(ResourceExhausted) as err:
        await n.remote.expand(f"127.0.0.1:{n.ports['r1']}", "r1", too_big)
    assert str(err.value) == (
        f"expand.size: replica r1 at 127.0.0.1: disk disk-1 has no room to grow r1 to {too_big} bytes "
        f"({n.disk_total} bytes in all)"
    )
    assert lvol_mib(n, "r1") == 8


async def test_other_refusals_keep_their_meaning_across_the_wire(replica_node: ReplicaNode) -> None:
    n = replica_node
    with pytest.raises(NotFound, match=r"^replica r9 at 127.0.0.1: name: cannot find replica r9$"):
        await n.remote.expand("127.0.0.1:4420", "r9", 16 * MIB)
    n.server.close()
    await n.server.wait_closed()
    with pytest.raises(Unavailable, match=r"^replica r1: cannot reach imd at 127.0.0.1:\d+"):
        await n.remote.expand(f"127.0.0.1:{n.ports['r1']}", "r1", 16 * MIB)


async def test_an_engine_expansion_with_no_room_on_a_replicas_disk(replica_node: ReplicaNode) -> None:
    """VolumeExpand of an engine whose replica's disk cannot hold the new
    size: RESOURCE_EXHAUSTED naming expand.size and the replica, the volume
    at its old size with the reason in last_expansion_error; a size that
    fits then works, every replica grown on its node."""
    n = replica_node
    replicas = {r: f"127.0.0.1:{n.ports[r]}" for r in ("r1", "r2")}
    await n.instances.create_v2(
        V2Request(name="e1", type="engine", volume_name="vol-1", size=8 * MIB, replica_address_map=replicas)
    )
    engines = EngineService(n.instances)
    too_big = n.disk_total + MIB
    with pytest.raises(ResourceExhausted, match=r"^expand.size: replica r1 at 127.0.0.1: disk disk-1 has no room"):
        await engines.expand("e1", V2, too_big)
    volume = engines.volume("e1", V2)
    assert volume.size == 8 * MIB and not volume.is_expanding
    assert "disk disk-1 has no room to grow r1" in volume.last_expansion_error and volume.last_expansion_failed_at
    assert (lvol_mib(n, "r1"), lvol_mib(n, "r2")) == (8, 8)
    await engines.expand("e1", V2, 16 * MIB)
    assert (lvol_mib(n, "r1"), lvol_mib(n, "r2")) == (16, 16)
    volume = engines.volume("e1", V2)
    assert (volume.size, volume.last_expansion_error) == (16 * MIB, "")


async def test_snapshot_delete_over_the_wire_deletes_or_only_marks(replica_node: ReplicaNode) -> None:
    """SnapshotDelete on base + 4: without mark_only a snapshot with one
    child is deleted; with it (the engine's choice when another replica must
    keep the snapshot) it is kept and marked removed."""
    n = replica_node
    address = f"127.0.0.1:{n.ports['r1']}"
    for name in ("s1", "s2"):
        await n.remote.snapshot_create(address, "r1", name, user_created=True, created="", labels={})
    assert await n.remote.snapshot_delete(address, "r1", "s2", mark_only=True) is False
    chain = await n.remote.snapshot_chain(address, "r1")
    assert [(s.name, s.removed) for s in chain.snapshots] == [("s1", False), ("s2", True)]
    assert await n.remote.snapshot_delete(address, "r1", "s1") is True
    chain = await n.remote.snapshot_chain(address, "r1")
    assert [(s.name, s.removed) for s in chain.snapshots] == [("s2", True)]
    with pytest.raises(NotFound, match="replica r1 has no snapshot s1"):
        await n.remote.snapshot_delete(address, "r1", "s1", mark_only=True)
