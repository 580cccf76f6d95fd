"""The blobstore metadata reader against what SPDK itself wrote: a real
nvmf_tgt with an AIO bdev on a sparse file and an lvstore of 1 MiB clusters
(as imd's disks), thin and thick lvols written through NVMe-oF/TCP from
this process (spdk_ffi), snapshots, a clone, a snapshot deleted into its
clone. Every count read from the file is checked against what SPDK must
have allocated and against the target's own reports (the lvstore's free
clusters, each lvol bdev's size, UUID, thin flag and base snapshot), while
the target runs (dirty super block: the md region is scanned), after it
stopped (clean: the masks), and after it was killed. Plus: images written by
tests/edges/blobstore_image.py are loaded by SPDK (so the synthetic images
of test_blobstore_md are the real format), and reads racing a writer.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import spdk_ffi
from imd.edges.blobstore_md import LvstoreAllocation, allocated_bytes, read_allocation
from spdk_ffi import Initiator
from tests.edges.blobstore_image import Blob, Image
from tests.helpers import free_port_block
from tests.spdk.target import HOST_NQN, Target, skip_reason

MIB = 1 << 20
BLOCK = 4096
LVS = "disk"
NQN = "nqn.2016-06.io.imd:blobmd"

# name -> (allocated clusters, clusters, thin, read-only, parent's name)
Expect = dict[str, tuple[int, int, bool, bool, str | None]]


@pytest.fixture
def spdk() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


class Node:
    """An nvmf_tgt with an AIO bdev on ``image`` and an lvstore on it, and a
    host (this process) that writes into its lvols over NVMe-oF/TCP."""

    def __init__(self, workdir: Path, image: Path, port: int, *, create: bool = True) -> None:
        self.workdir = workdir
        self.image = image
        self.port = port
        self.target = Target(workdir, layout=[])
        try:
            self.rpc("bdev_aio_create", name=LVS, filename=str(image), block_size=BLOCK)
            if create:
                self.rpc("bdev_lvol_create_lvstore", bdev_name=LVS, lvs_name=LVS, cluster_sz=MIB)
            self.rpc("bdev_wait_for_examine")
            self.rpc("nvmf_create_subsystem", nqn=NQN, allow_any_host=True, serial_number="IMD0BLOBMD")
            self.target.add_listener(NQN, port)
        except BaseException:
            self.target.close()
            raise
        self._ini: Initiator | None = None

    @property
    def ini(self) -> Initiator:
        """This process's initiator, started on first use."""
        if self._ini is None:
            self._ini = Initiator(spdk_ffi.native_backend(core_mask="0x2", mem_size_mb=512, no_huge=True))
        return self._ini

    def rpc(self, method: str, **params: Any) -> Any:
        return self.target.rpc.call(method, **params)

    def lvol(self, name: str, mib: int, *, thin: bool = True) -> None:
        self.rpc("bdev_lvol_create", lvol_name=name, size_in_mib=mib, lvs_name=LVS, thin_provision=thin)

    def snapshot(self, lvol: str, snapshot: str) -> None:
        self.rpc("bdev_lvol_snapshot", lvol_name=f"{LVS}/{lvol}", snapshot_name=snapshot)

    async def write(self, lvol: str, clusters: list[int], *, batch: int = 8) -> None:
        """4 KiB at the start of each of ``clusters`` of ``lvol``: each makes
        a thin lvol allocate that cluster. ``batch`` I/Os at a time."""
        from spdk_ffi.native import DmaBuffer, Io, IoKind

        ini = self.ini  # starts this process's SPDK environment: DMA memory comes from it
        nsid = self.rpc("nvmf_subsystem_add_ns", nqn=NQN, namespace={"bdev_name": f"{LVS}/{lvol}"})
        buf = DmaBuffer(BLOCK)
        buf.view[:BLOCK] = b"imd-blobmd".ljust(BLOCK, b"x")
        try:
            await ini.attach("w", [f"TCP/IPv4/127.0.0.1/{self.port}/{NQN}"], HOST_NQN)
            try:
                for i in range(0, len(clusters), batch):
                    ios = [
                        Io(IoKind.WRITE, nsid, lba=c * (MIB // BLOCK), nblocks=1, buf=buf)
                        for c in clusters[i : i + batch]
                    ]
                    await ini.io("w", ios)
            finally:
                await ini.detach("w")
        finally:
            buf.free()
            self.rpc("nvmf_subsystem_remove_ns", nqn=NQN, nsid=nsid)

    def stop(self) -> None:
        """SIGTERM: the app unloads its lvstores (the super block goes clean)."""
        self.target.close()

    def kill(self) -> None:
        self.target.proc.send_signal(signal.SIGKILL)
        self.target.proc.wait()


@pytest_asyncio.fixture
async def node(spdk: None, tmp_path: Path) -> AsyncIterator[Node]:
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(256 * MIB)  # sparse, as a Longhorn disk file
    (tmp_path / "t1").mkdir()
    n = Node(tmp_path / "t1", image, free_port_block(1))
    try:
        yield n
    finally:
        if n._ini is not None:
            for info in n._ini.controllers():
                await n._ini.detach(info.name)
        n.target.close()


def check(result: LvstoreAllocation, expect: Expect, node: Node | None) -> None:
    """``result`` holds exactly the lvols of ``expect``; with the target
    running, SPDK's own reports agree."""
    found = result.by_name()
    assert set(found) == set(expect)
    names = {b.blob_id: name for name, b in found.items()}
    for name, (allocated, clusters, thin, read_only, parent) in expect.items():
        b = found[name]
        assert b.error is None, (name, b.error)
        got = (b.allocated_clusters, b.num_clusters, b.thin, b.read_only, names.get(b.parent_id or -1))
        assert got == (allocated, clusters, thin, read_only, parent), name
        assert b.cluster_size == MIB and b.extent_table  # lvols of v24.01 use extent tables
    assert result.lvstore_name == LVS
    if node is None:
        return
    (lvs,) = node.rpc("bdev_lvol_get_lvstores", lvs_name=LVS)
    assert result.lvstore_uuid == lvs["uuid"]
    assert result.total_data_clusters == lvs["total_data_clusters"]
    # every data cluster SPDK counts as used is one of some lvol's
    assert lvs["total_data_clusters"] - lvs["free_clusters"] == sum(e[0] for e in expect.values())
    for name, b in found.items():
        (bdev,) = node.rpc("bdev_get_bdevs", name=f"{LVS}/{name}")
        lvol = bdev["driver_specific"]["lvol"]
        assert bdev["uuid"] == b.uuid
        assert bdev["num_blocks"] * bdev["block_size"] == b.size_bytes
        assert lvol["thin_provision"] is b.thin
        assert lvol.get("base_snapshot") == expect[name][4]


@pytest.mark.asyncio
async def test_counts_match_what_spdk_allocated_running_stopped_and_killed(node: Node, tmp_path: Path) -> None:
    expect: Expect = {}

    def look(*, clean: bool, running: Node | None) -> LvstoreAllocation:
        result = read_allocation(node.image)
        assert result.clean is clean and result.complete and result.direct_io
        check(result, expect, running)
        return result

    node.lvol("vol", 32)
    node.lvol("thick", 8, thin=False)
    await node.write("vol", [0, 3, 7])
    expect |= {"vol": (3, 32, True, False, None), "thick": (8, 8, False, False, None)}
    look(clean=False, running=node)  # a running target: the super block is dirty, the md region is scanned

    # A snapshot takes the clusters; writing the head again copies on write.
    node.snapshot("vol", "snap1")
    expect |= {"snap1": (3, 32, True, True, None), "vol": (0, 32, True, False, "snap1")}
    look(clean=False, running=node)
    await node.write("vol", [3, 10])
    expect["vol"] = (2, 32, True, False, "snap1")

    # A clone of the snapshot, written.
    node.rpc("bdev_lvol_clone", snapshot_name=f"{LVS}/snap1", clone_name="clone")
    await node.write("clone", [20])
    expect["clone"] = (1, 32, True, False, "snap1")

    # A second snapshot of the head, then the head written again...
    node.snapshot("vol", "snap2")
    await node.write("vol", [1])
    expect |= {"snap2": (2, 32, True, True, "snap1"), "vol": (1, 32, True, False, "snap2")}
    look(clean=False, running=node)
    # ...and that snapshot deleted: its clusters merge into its only clone.
    node.rpc("bdev_lvol_delete", name=f"{LVS}/snap2")
    del expect["snap2"]
    expect["vol"] = (3, 32, True, False, "snap1")

    # A thick lvol's snapshot keeps it thick; the lvol becomes thin.
    node.snapshot("thick", "thicksnap")
    await node.write("thick", [2])
    expect |= {"thicksnap": (8, 8, False, True, None), "thick": (1, 8, True, False, "thicksnap")}
    running = look(clean=False, running=node)
    assert allocated_bytes(node.image) == {b.uuid: b.allocated_bytes for b in running.blobs}

    # Stopped: the blobstore was unloaded cleanly and its masks are exact.
    node.stop()
    stopped = look(clean=True, running=None)
    assert stopped.blobs == running.blobs
    assert stopped.lvstore_uuid == running.lvstore_uuid
    assert stopped.used_data_clusters == sum(e[0] for e in expect.values()) == 16

    # Loaded again, written, killed: dirty again, and SPDK's recovery agrees.
    (tmp_path / "t2").mkdir()
    node2 = Node(tmp_path / "t2", node.image, node.port, create=False)
    try:
        check(read_allocation(node.image), expect, node2)  # loaded: still clean until a change
        await node2.write("vol", [30, 31])
        expect["vol"] = (5, 32, True, False, "snap1")
        node2.kill()
        killed = look(clean=False, running=None)
        assert killed.by_name()["vol"].allocated_clusters == 5
    finally:
        node2.target.close()
    (tmp_path / "t3").mkdir()
    node3 = Node(tmp_path / "t3", node.image, node.port, create=False)
    try:
        check(read_allocation(node.image), expect, node3)
    finally:
        node3.target.close()


@pytest.mark.asyncio
async def test_reads_racing_a_writer_never_see_a_wrong_count(node: Node) -> None:
    # A reader thread reads the file in a loop while the host allocates
    # clusters in batches of 16. After each batch the writer waits until two
    # more reads are done, so the second of them saw exactly that batch;
    # the others overlapped writes. No read may fail, go backwards or
    # exceed what was written.
    clusters, batch = 96, 16
    node.lvol("busy", clusters)
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    reads = threading.Condition()

    def reader() -> None:
        while not stop.is_set():
            blob = read_allocation(node.image).by_name()["busy"]
            with reads:
                if blob.allocated_clusters is None:
                    errors.append(blob.error or "?")
                else:
                    seen.append(blob.allocated_clusters)
                reads.notify_all()

    def wait_for_reads(count: int) -> None:
        with reads:
            target = len(seen) + len(errors) + count
            assert reads.wait_for(lambda: len(seen) + len(errors) >= target, timeout=30)

    thread = threading.Thread(target=reader, name="blobmd-reader")
    thread.start()
    try:
        for first in range(0, clusters, batch):
            await node.write("busy", list(range(first, first + batch)), batch=batch)
            await asyncio.to_thread(wait_for_reads, 2)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not errors
    assert seen == sorted(seen) and seen[-1] == clusters and all(0 <= v <= clusters for v in seen)
    assert set(range(batch, clusters + 1, batch)) <= set(seen)  # each batch's exact count was seen
    (lvs,) = node.rpc("bdev_lvol_get_lvstores", lvs_name=LVS)
    assert lvs["total_data_clusters"] - lvs["free_clusters"] == clusters


@pytest.mark.parametrize("clean", [True, False])
def test_spdk_loads_the_synthetic_images_and_agrees(spdk: None, tmp_path: Path, clean: bool) -> None:
    # The unit tests' images are the real format: SPDK loads one (from its
    # masks, or by its own recovery when dirty) and reports the same lvstore,
    # sizes, thin flags, clones and used clusters as the reader.
    img = Image(tmp_path / "synthetic.img", size=1 << 30, lvs_name=LVS)
    thin = img.add(Blob("thin-et", 1200, {0, 5, 511, 1024, 1199}))
    img.add(Blob("thick-et", 10, set(), thin=False))
    img.add(Blob("thin-rle", 30, {1, 2, 3, 9, 29}, extent_table=False))
    snap = img.add(Blob("snap", 7, set(), thin=False, read_only=True))
    img.add(Blob("clone", 20, {4, 19}, parent=snap.blob_id, padding_xattrs=3))
    img.add(Blob("fragmented", 300, set(range(0, 300, 2)), extent_table=False))
    img.write(clean=clean)
    ours = read_allocation(img.path)
    assert ours.clean is clean and ours.by_name()["thin-et"].uuid == thin.uuid
    (tmp_path / "t").mkdir()
    node = Node(tmp_path / "t", img.path, free_port_block(1), create=False)
    try:
        (lvs,) = node.rpc("bdev_lvol_get_lvstores", lvs_name=LVS)
        assert lvs["uuid"] == img.lvs_uuid == ours.lvstore_uuid
        assert lvs["total_data_clusters"] == ours.total_data_clusters
        assert lvs["total_data_clusters"] - lvs["free_clusters"] == sum(b.allocated_clusters or 0 for b in ours.blobs)
        for b in ours.blobs:
            (bdev,) = node.rpc("bdev_get_bdevs", name=f"{LVS}/{b.name}")
            lvol = bdev["driver_specific"]["lvol"]
            assert (bdev["uuid"], bdev["num_blocks"] * BLOCK) == (b.uuid, b.size_bytes), b.name
            assert lvol["thin_provision"] is b.thin, b.name
            assert lvol.get("base_snapshot") == ("snap" if b.name == "clone" else None)
            assert lvol["snapshot"] is (b.name == "snap")
    finally:
        node.target.close()
    # SPDK unloaded it cleanly: masks written by SPDK, the same answer
    after = read_allocation(img.path)
    assert after.clean and after.blobs == ours.blobs
    assert after.used_data_clusters == sum(b.allocated_clusters or 0 for b in ours.blobs)
