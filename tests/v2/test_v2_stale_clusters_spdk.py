"""A fresh replica never shows a deleted one's bytes, on one real node (the
single-node form of tests/cluster/test_scenarios.py's scenario-5 finding).

SPDK v24.01 does not zero a cluster it allocates to a thin lvol without a
parent (only the block written goes to the disk), and an AIO disk ignores
unmap, so a replica deleted with the default clear method left its data for
the next lvol that got its clusters: imd.edges.spdk_target's
``lvol_create`` says how imd clears them instead. Skipped, with the reason,
without SPDK and spdk_ffi's native core.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import instance_pb2 as inst
from tests.conftest import DaemonFactory
from tests.v2.host import pattern
from tests.v2.spdk_env import engine_skip_reason
from tests.v2.test_v2_engine_spdk import Node, host, path, started, wait_for

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

V2 = common.DATA_ENGINE_V2
MIB = 1 << 20
BLOCK = 4096
SIZE = 4 * MIB  # four 1 MiB clusters
BLOCKS = SIZE // BLOCK
CHUNK = 256  # blocks per write: one cluster


async def drop(node: Node, name: str) -> None:
    await node.stub.InstanceDelete(
        inst.InstanceDeleteRequest(name=name, type="replica", data_engine=V2, cleanup_required=True)
    )

    async def gone() -> bool:
        return name not in (await node.stub.InstanceList(Empty())).instances

    await wait_for(gone)


async def test_a_new_replica_reads_zeros_where_a_deleted_one_wrote(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    node = await started(daemon_factory, tmp_path)
    await node.replica("ra", SIZE)
    wrote = await host(
        cmd="write", path=path(node.ports["ra"], "ra"), seed=7, lbas=list(range(0, BLOCKS, CHUNK)), nblocks=CHUNK
    )
    assert wrote["mismatches"] == 0  # every block of A holds the pattern
    await drop(node, "ra")

    await node.replica("rb", SIZE)
    first = await host(cmd="write", path=path(node.ports["rb"], "rb"), seed=9, lbas=[0])  # allocates one cluster
    assert first["mismatches"] == 0
    seen = await host(cmd="hash", path=path(node.ports["rb"], "rb"), first=0, count=BLOCKS, chunk=1)
    zero = hashlib.sha256(bytes(BLOCK)).hexdigest()
    assert seen["hashes"][0] == hashlib.sha256(pattern(9, 0)).hexdigest()
    stale = [lba for lba, digest in enumerate(seen["hashes"]) if lba and digest != zero]
    old = {hashlib.sha256(pattern(7, lba)).hexdigest(): lba for lba in range(BLOCKS)}
    shown = [old[seen["hashes"][lba]] for lba in stale if seen["hashes"][lba] in old]
    assert stale == [], f"{len(stale)} of {BLOCKS - 1} unwritten blocks are not zero ({len(shown)} hold A's pattern)"
    await drop(node, "rb")
