"""Backing images through a real daemon and a real target (issue 22): an
image served by an HTTP server in this test is downloaded onto a disk,
checked by its SHA-512 and snapshotted; volumes cloned from it read the
image where they have not written and their own writes where they have; a
wrong checksum, a delete during the download, a copy between two disks
through the node's own replica service, a kill -9 mid-download, and many
clients creating and deleting images and replicas at once (field report 4)
all end with nothing left behind. Skipped, with the reason, without SPDK
and spdk_ffi's native core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from tests.conftest import DaemonFactory
from tests.http_server import FileServer
from tests.test_cli import imd
from tests.v2.spdk_env import engine_skip_reason, rpc, sparse_file, target_pid
from tests.v2.test_v2_engine_spdk import Node, host, path, started, wait_for

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

V2 = common.DATA_ENGINE_V2
MIB = 1 << 20
BLOCK = 4096
IMAGE = 6 * MIB + 5 * BLOCK  # not whole clusters: the image is smaller than its lvol
VOLUME = 16 * MIB


def image_bytes(seed: int = 11, size: int = IMAGE) -> bytes:
    data = bytearray(random.Random(seed).randbytes(size))
    data[2 * MIB : 3 * MIB] = bytes(MIB)  # zeroes: never written, the image stays thin there
    return bytes(data)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FileServer]:
    s = await FileServer().start()
    yield s
    await s.close()


async def disk_uuid(node: Node, name: str = "d1") -> str:
    reply = await node.daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=dpb.block, disk_name=name))
    return str(reply.uuid)


async def create(node: Node, name: str, disk: str, data: bytes, source: str, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "name": name,
        "backing_image_uuid": f"uuid-{name}",
        "disk_uuid": disk,
        "size": len(data),
        "checksum": hashlib.sha512(data).hexdigest(),
        "from_address": source,
    }
    fields.update(overrides)
    return await node.proxy.SPDKBackingImageCreate(ppb.SPDKBackingImageCreateRequest(**fields))


async def get(node: Node, name: str, disk: str) -> ppb.SPDKBackingImageResponse:
    return await node.proxy.SPDKBackingImageGet(ppb.SPDKBackingImageGetRequest(name=name, disk_uuid=disk))


async def delete(node: Node, name: str, disk: str) -> None:
    await node.proxy.SPDKBackingImageDelete(ppb.SPDKBackingImageDeleteRequest(name=name, disk_uuid=disk))


async def state(node: Node, name: str, disk: str, *states: str, timeout: float = 120) -> ppb.SPDKBackingImageResponse:
    async with asyncio.timeout(timeout):
        while (reply := await get(node, name, disk)).status.state not in states:
            await asyncio.sleep(0.1)
    return reply


async def replica(node: Node, name: str, image: str = "", disk: str = "d1", size: int = VOLUME) -> int:
    spec = inst.InstanceSpec(
        name=name,
        type="replica",
        volume_name=f"vol-{name}",
        data_engine=V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(disk_name=disk, size=size, backing_image_name=image),
    )
    made = await node.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
    node.ports[name] = made.status.port_start
    return int(made.status.port_start)


async def drop(node: Node, name: str) -> None:
    try:
        await node.stub.InstanceDelete(
            inst.InstanceDeleteRequest(name=name, type="replica", data_engine=V2, cleanup_required=True)
        )
    except GRPCError as exc:
        if exc.status != Status.NOT_FOUND:  # gone already (a delete of its own finished meanwhile)
            raise

    async def gone() -> bool:
        return name not in (await node.stub.InstanceList(Empty())).instances

    await wait_for(gone, 60)


def lvols(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The target's lvols by name, as SPDK reports them (from outside imd)."""
    out = {}
    for bdev in rpc(config).call("bdev_get_bdevs"):
        lvol = bdev.get("driver_specific", {}).get("lvol")
        if lvol is not None:
            out[bdev["aliases"][0].split("/", 1)[1]] = lvol
    return out


def ours(config: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Backing images' lvols, and their exports, on the target."""
    subsystems = {s["nqn"] for s in rpc(config).call("nvmf_get_subsystems") if ":bi-" in s["nqn"]}
    return {name for name in lvols(config) if name.startswith("bi-")}, subsystems


def chunk_hashes(data: bytes, first: int, count: int, chunk: int) -> list[str]:
    region = data[first * BLOCK : (first + count) * BLOCK].ljust(count * BLOCK, b"\0")
    return [hashlib.sha256(region[i : i + chunk * BLOCK]).hexdigest() for i in range(0, len(region), chunk * BLOCK)]


# -- two volumes from one image -------------------------------------------------------------------


async def test_two_volumes_from_one_downloaded_image_each_read_their_own_writes_and_the_image(
    daemon_factory: DaemonFactory, tmp_path: Path, server: FileServer
) -> None:
    node = await started(daemon_factory, tmp_path)
    disk = await disk_uuid(node)
    data = image_bytes()
    server.add("/base.raw", data)
    watch_notices: list[int] = []

    async def watch() -> None:
        async with node.proxy.SPDKBackingImageWatch.open() as stream:
            await stream.send_message(Empty(), end=True)
            async for _ in stream:
                watch_notices.append(1)

    watcher = asyncio.ensure_future(watch())
    try:
        made = await create(node, "base", disk, data, server.url("/base.raw"))
        assert made.status.state == "pending" and made.spec.disk_uuid == disk
        ready = await state(node, "base", disk, "ready", "failed")
        assert (ready.status.state, ready.status.progress) == ("ready", 100), ready.status.error_msg
        assert ready.status.checksum == hashlib.sha512(data).hexdigest() == ready.spec.checksum
        listed = await node.proxy.SPDKBackingImageList(Empty())
        assert list(listed.backing_images) == [f"bi-base-disk-{disk}"]
        assert len(watch_notices) >= 3  # pending, in progress (and its percents), ready
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
    images, exports = ours(node.config)
    assert len(images) == 1 and not exports  # the snapshot alone: no temporary head, no export left
    (image,) = images
    assert lvols(node.config)[image]["snapshot"]

    # Two volumes, each a clone of the image, each writing its own data.
    for r in ("ra", "rb"):
        await replica(node, r, "base")
        assert lvols(node.config)[r]["base_snapshot"] == image
    for e, r in (("ea", "ra"), ("eb", "rb")):
        await node.engine(e, [r], size=VOLUME)
    ports = {
        e: (await node.stub.InstanceGet(inst.InstanceGetRequest(name=e, data_engine=V2))).status.port_start
        for e in ("ea", "eb")
    }
    written = [0, 300, 1000, 1600, 3000]  # inside the image, and past its end (3000: beyond 6 MiB)
    for e, seed in (("ea", 1), ("eb", 2)):
        report = await host(cmd="write", path=path(ports[e], e), seed=seed, lbas=written, nblocks=4)
        assert report["mismatches"] == 0
    for e, seed in (("ea", 1), ("eb", 2)):
        check = await host(cmd="verify", path=path(ports[e], e), seed=seed, lbas=written, nblocks=4)
        assert check["mismatches"] == 0, (e, check)  # its own writes, not the other volume's
        # Elsewhere the image's bytes (and zeroes past its end).
        hashed = await host(cmd="hash", path=path(ports[e], e), first=1024, count=512, chunk=64)
        assert hashed["hashes"] == chunk_hashes(data, 1024, 512, 64)
        tail = await host(cmd="hash", path=path(ports[e], e), first=IMAGE // BLOCK, count=48, chunk=48)
        assert tail["hashes"] == chunk_hashes(data, IMAGE // BLOCK, 48, 48)  # past the image's end: zeroes
        assert tail["hashes"] == chunk_hashes(b"", 0, 48, 48)
    listing = await node.proxy.SnapshotList(ppb.ProxyEngineRequest(engine_name="ea", data_engine=V2))
    assert set(listing.disks) == {"volume-head"} and listing.disks["volume-head"].parent == ""

    # The image cannot go while volumes are built on it; it can once they are gone.
    with pytest.raises(GRPCError) as err:
        await delete(node, "base", disk)
    assert err.value.status == Status.FAILED_PRECONDITION and "ra, rb" in (err.value.message or "")
    for e in ("ea", "eb"):
        await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name=e, type="engine", data_engine=V2))
    for r in ("ra", "rb"):
        await drop(node, r)
    await delete(node, "base", disk)
    await delete(node, "base", disk)  # twice: OK, as Longhorn answers
    with pytest.raises(GRPCError) as err:
        await get(node, "base", disk)
    assert err.value.status == Status.NOT_FOUND and "cannot find" in (err.value.message or "")
    assert ours(node.config) == (set(), set())


# -- failures ---------------------------------------------------------------------------------------


async def test_a_checksum_mismatch_fails_naming_both_and_leaves_no_lvol(
    daemon_factory: DaemonFactory, tmp_path: Path, server: FileServer
) -> None:
    node = await started(daemon_factory, tmp_path)
    disk = await disk_uuid(node)
    data = image_bytes(12)
    server.add("/img", data)
    wrong = hashlib.sha512(b"another image").hexdigest()
    await create(node, "img", disk, data, server.url("/img"), checksum=wrong)
    failed = await state(node, "img", disk, "ready", "failed")
    actual = hashlib.sha512(data).hexdigest()
    assert failed.status.state == "failed" and wrong in failed.status.error_msg and actual in failed.status.error_msg
    assert failed.status.checksum == actual
    assert ours(node.config) == (set(), set())
    with pytest.raises(GRPCError) as err:  # nothing to clone from
        await replica(node, "r1", "img")
    assert err.value.status == Status.FAILED_PRECONDITION
    assert "spdk_instance_spec.backing_image_name" in (err.value.message or "")
    await delete(node, "img", disk)
    # Bad input answers at once, naming the field, and leaves nothing either.
    with pytest.raises(GRPCError) as err:
        await create(node, "img", disk, data, server.url("/img"), size=len(data) + BLOCK)
    assert err.value.status == Status.INVALID_ARGUMENT and (err.value.message or "").startswith("size:")
    with pytest.raises(GRPCError) as err:
        await create(node, "img", disk, data, server.url("/nowhere"))
    assert err.value.status == Status.NOT_FOUND and (err.value.message or "").startswith("from_address:")
    assert ours(node.config) == (set(), set())
    assert not dict((await node.proxy.SPDKBackingImageList(Empty())).backing_images)


async def test_a_delete_during_the_download_preempts_it_and_leaves_nothing(
    daemon_factory: DaemonFactory, tmp_path: Path, server: FileServer
) -> None:
    node = await started(daemon_factory, tmp_path)
    disk = await disk_uuid(node)
    data = image_bytes(13)
    served = server.add("/img", data, hold_after=3 * MIB)
    await create(node, "img", disk, data, server.url("/img"))
    await asyncio.wait_for(served.held.wait(), 60)

    async def moving() -> bool:
        return (await get(node, "img", disk)).status.progress > 0

    await wait_for(moving, 30)  # what the server sent has reached the lvol
    during = await get(node, "img", disk)
    assert during.status.state == "in-progress" and 0 < during.status.progress < 100
    assert any(name.endswith("-tmp") for name in ours(node.config)[0])
    await asyncio.wait_for(delete(node, "img", disk), 10)  # the server still holds the rest back
    with pytest.raises(GRPCError) as err:
        await get(node, "img", disk)
    assert err.value.status == Status.NOT_FOUND
    assert ours(node.config) == (set(), set())
    served.released.set()


# -- another node (here: another disk, through this node's own replica service) -----------------


async def test_an_image_copied_from_another_disk_through_the_replica_service(
    daemon_factory: DaemonFactory, tmp_path: Path, server: FileServer
) -> None:
    node = await started(daemon_factory, tmp_path)
    d2_path = sparse_file(tmp_path / "disk2.img", 256 * MIB)
    await node.daemon.disks().DiskCreate(dpb.DiskCreateRequest(disk_type=dpb.block, disk_name="d2", disk_path=d2_path))
    d1, d2 = await disk_uuid(node, "d1"), await disk_uuid(node, "d2")
    data = image_bytes(14)
    server.add("/img", data)
    await create(node, "img", d1, data, server.url("/img"))
    await state(node, "img", d1, "ready")
    source = f"127.0.0.1:{node.daemon.base_port + 4}"  # the other node's imd (its replica service)
    await create(node, "img", d2, data, source, src_lvs_uuid=d1)
    copied = await state(node, "img", d2, "ready", "failed")
    assert copied.status.state == "ready", copied.status.error_msg
    assert copied.status.checksum == hashlib.sha512(data).hexdigest()
    images, exports = ours(node.config)
    assert len(images) == 2 and not exports  # one image per disk; the source's export withdrawn
    await replica(node, "r2", "img", disk="d2")
    await node.engine("e2", ["r2"], size=VOLUME)
    e2 = (await node.stub.InstanceGet(inst.InstanceGetRequest(name="e2", data_engine=V2))).status.port_start
    hashed = await host(cmd="hash", path=path(e2, "e2"), first=0, count=IMAGE // BLOCK, chunk=256)
    assert hashed["hashes"] == chunk_hashes(data, 0, IMAGE // BLOCK, 256)


# -- restart ----------------------------------------------------------------------------------------


async def test_a_download_cut_by_kill_9_is_failed_and_removed_at_restart(
    daemon_factory: DaemonFactory, tmp_path: Path, server: FileServer
) -> None:
    node = await started(daemon_factory, tmp_path, stop_children_on_exit=False)
    try:
        disk = await disk_uuid(node)
        good = image_bytes(15)
        server.add("/good", good)
        await create(node, "good", disk, good, server.url("/good"))
        await state(node, "good", disk, "ready")
        data = image_bytes(16)
        served = server.add("/img", data, hold_after=2 * MIB)
        await create(node, "img", disk, data, server.url("/img"))
        await asyncio.wait_for(served.held.wait(), 60)
        await node.daemon.stop(signal.SIGKILL)
        await node.daemon.start()
        after = await get(node, "img", disk)
        assert (after.status.state, after.status.error_msg) == ("failed", "interrupted by restart")
        images, exports = ours(node.config)
        assert len(images) == 1 and not exports  # "good" alone: the cut copy's lvol and export are gone
        assert (await get(node, "good", disk)).status.state == "ready"
        await replica(node, "r1", "good")  # a ready image serves at once after a restart
        served.released.set()
        await delete(node, "img", disk)
    finally:
        await node.daemon.stop()
        pid = target_pid(node.config)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


# -- field report 4 -----------------------------------------------------------------------------------


async def test_many_clients_creating_and_deleting_images_and_replicas_leave_nothing(
    daemon_factory: DaemonFactory, tmp_path: Path, server: FileServer
) -> None:
    node = await started(daemon_factory, tmp_path)
    disk = await disk_uuid(node)
    data = image_bytes(17, 2 * MIB + 3 * BLOCK)
    server.add("/img", data)
    rng = random.Random(22)
    counts: dict[str, int] = {}
    unexpected: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 25

    async def client(c: int) -> None:
        while loop.time() < deadline:
            op = rng.choices(["create", "delete", "replica", "unreplica", "get"], [3, 1, 4, 2, 1])[0]
            name = f"r{c}-{rng.randrange(2)}"
            try:
                async with asyncio.timeout(60):  # no call hangs
                    if op == "create":
                        await create(node, "img", disk, data, server.url("/img"))
                    elif op == "delete":
                        await delete(node, "img", disk)
                    elif op == "replica":
                        await replica(node, name, "img", size=4 * MIB)
                    elif op == "unreplica":
                        await node.stub.InstanceDelete(
                            inst.InstanceDeleteRequest(name=name, data_engine=V2, cleanup_required=True)
                        )
                    else:
                        await node.proxy.SPDKBackingImageList(Empty())
                counts[op] = counts.get(op, 0) + 1
            except GRPCError as exc:
                expected = (Status.ALREADY_EXISTS, Status.FAILED_PRECONDITION, Status.NOT_FOUND, Status.ABORTED)
                if exc.status not in expected:
                    unexpected.append(f"{op}: {exc.status.name}: {exc.message}")
            await asyncio.sleep(rng.random() * 0.05)

    await asyncio.gather(*(client(c) for c in range(4)))
    assert not unexpected, unexpected
    assert all(counts.get(op, 0) >= 2 for op in ("create", "delete", "replica", "unreplica")), counts
    # The daemon is alive and answers; clean everything up, then nothing is left.
    instances = (await node.stub.InstanceList(Empty())).instances
    for name in instances:
        await drop(node, name)

    async def image_gone() -> bool:
        with contextlib.suppress(GRPCError):
            await delete(node, "img", disk)
        return not dict((await node.proxy.SPDKBackingImageList(Empty())).backing_images)

    await wait_for(image_gone, 60)
    assert ours(node.config) == (set(), set())
    assert not lvols(node.config)  # no replica's lvol either
    shown = await imd("--socket", str(node.daemon.socket), "backing-image", "list")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 1  # the header alone
