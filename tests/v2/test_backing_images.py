"""Backing images over the fakes (issue 22): real ``BackingImages`` on fake
nodes (the fake SPDK target keeps lvols, snapshots and clones with SPDK
v24.01's rules), a real HTTP server on loopback for the downloads, and a
fake data path that keeps the bytes written through it: each write through
spdk_ffi's Python tier lands in the fake lvol behind the controller (its
content token names the bytes), a copy job makes the destination read as
the source, and a SHA-512 hash job hashes the bytes the lvol holds. What
this checks is the orchestration: what is made, checked, refused, undone
and left (nothing), and what preempts what. The bytes themselves are
checked against a real target in tests/v2/test_v2_backing_images_spdk.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from imd.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    ImdError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from imd.services.backing_images import BackingImageService
from imd.services.disks import DISK_TYPE_BLOCK as BLOCK
from imd.services.disks import DiskService
from imd.services.engines import EngineService
from imd.services.instances import InstanceService, V2Request
from imd.services.processes import Lifecycle, ProcessService
from imd.v2 import state as v2state
from imd.v2.bases import (
    FAILED,
    IN_PROGRESS,
    INTERRUPTED,
    PENDING,
    READY,
    UNKNOWN,
    image_lvol_name,
    is_image_lvol,
    temp_lvol_name,
)
from imd.v2.chains import LocalReplicaNodes
from imd.v2.model import VOLUME_HEAD, ReplicaMode, SnapshotExport
from imd.v2.node import V2Node
from spdk_ffi.mirror import RebuildState
from spdk_ffi.native import IoKind
from tests.helpers import eventually
from tests.http_server import FileServer
from tests.v2.fake_spdk import FakeSpdk
from tests.v2.fakes import FakeData, link, node

pytestmark = pytest.mark.asyncio

MIB = 1 << 20
V2 = 1
SIZE = 3 * MIB + 8 * 4096  # not a whole number of clusters: the image is not its lvol's size


def image_bytes(seed: int = 1, size: int = SIZE) -> bytes:
    data = bytearray(random.Random(seed).randbytes(size))
    data[MIB : 2 * MIB] = bytes(MIB)  # a chunk of zeroes: never written, the image stays thin
    return bytes(data)


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


class MemBuffer:
    """Memory in place of DMA memory (the fake backend never touches it)."""

    def __init__(self, size: int) -> None:
        self.view = memoryview(bytearray(size))
        self.freed = False

    def free(self) -> None:
        self.freed = True


class Bytes:
    """What the fake lvols hold, by content token (snapshots and clones
    share their parent's token, as they share its data)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytearray] = {}
        self.writes: list[tuple[str, int, int]] = []  # (lvol, lba, blocks)

    def attach(self, data: FakeData, *spdks: FakeSpdk) -> None:
        link(data, *spdks)

        def lvol(controller: Any) -> Any:
            path = controller.key[0]
            for spdk in spdks:
                found = spdk.lvol_at(path.traddr, path.trsvcid, path.subnqn)
                if found is not None:
                    return found
            raise AssertionError(f"no fake lvol behind {path}")

        plain = data.backend.io

        async def io(handle: Any, ios: Any) -> None:
            await plain(handle, ios)
            for one in ios:
                if one.kind == IoKind.WRITE:
                    target = lvol(handle)
                    blob = bytearray(self.blobs.get(target.content, b""))
                    start, n = one.lba * 4096, one.nblocks * 4096
                    if len(blob) < start + n:
                        blob.extend(bytes(start + n - len(blob)))
                    blob[start : start + n] = one.buf.view[one.offset : one.offset + n]
                    target.content = f"bytes-{uuidlib.uuid4().hex}"
                    self.blobs[target.content] = blob
                    self.writes.append((target.name, one.lba, one.nblocks))

        def digest(controller: Any, blocks: int) -> str:
            blob = bytes(self.blobs.get(lvol(controller).content, b""))[: blocks * 4096]
            return sha512(blob.ljust(blocks * 4096, b"\0"))

        data.backend.io = io  # type: ignore[method-assign]
        data.jobs.sha512_of = digest


class Peers:
    """Other nodes' backing images, in process (``ImagePeers``)."""

    def __init__(self) -> None:
        self.nodes: dict[str, V2Node] = {}
        self.exposed: list[str] = []

    def _images(self, address: str) -> Any:
        host = address.rpartition(":")[0]
        if host not in self.nodes:
            raise Unavailable(f"no imd at {host}")
        return self.nodes[host].backing_images

    async def image_expose(self, address: str, name: str, disk_uuid: str) -> SnapshotExport:
        self.exposed.append(name)
        return await self._images(address).expose(name, disk_uuid)

    async def image_unexpose(self, address: str, name: str, disk_uuid: str) -> None:
        await self._images(address).unexpose(name, disk_uuid)


class Node:
    """A started fake node with disk d1 and its services."""

    def __init__(self, root: Path, address: str, peers: Peers, content: Bytes, spdk: FakeSpdk | None = None) -> None:
        self.root = root
        self.v2, self.keeper, self.data, self.store = node(root, spdk, address=address)
        self.spdk = self.keeper.spdk
        self.address = address
        self.content = content
        self.v2.backing_images.peers = peers
        self.v2.backing_images._alloc = MemBuffer
        self.v2.backing_images.read_timeout_s = 0.5
        self.v2.backing_images.connect_timeout_s = 0.5
        self.data.expander.nodes = LocalReplicaNodes({address: self.v2.chains}, {address: self.v2.engines})
        self.v2.chains._allocation = self.allocation
        self.instances = InstanceService(ProcessService(self.v2.supervisor, Lifecycle()), self.v2, "")
        self.images = BackingImageService(self.instances)
        self.engines = EngineService(self.instances)
        self.disks = DiskService(self.v2, "")
        peers.nodes[address] = self.v2

    async def start(self, persisted: v2state.V2StateFile | None = None, disk: bool = True) -> Node:
        await self.v2.start(persisted or self.v2.load())
        if disk:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / "disk.img"
            with path.open("wb") as f:
                f.truncate(1 << 30)
            await self.v2.disks.create("d1", "", str(path), 4096)
        return self

    async def allocation(self, disk_path: str) -> dict[str, int]:
        return self.spdk.allocated_bytes(disk_path)

    @property
    def disk_uuid(self) -> str:
        return self.v2.disks.records["d1"].uuid

    def lvols(self) -> dict[str, Any]:
        return dict(next(iter(self.spdk.devices.values())).lvols) if self.spdk.devices else {}

    def image_lvols(self) -> set[str]:
        return {name for name in self.lvols() if is_image_lvol(name)}

    async def create(self, image: str, url: str, data: bytes | None = None, **overrides: Any) -> Any:
        data = image_bytes() if data is None else data
        if "disk_uuid" not in overrides:  # (a disk that is gone has none)
            overrides["disk_uuid"] = self.disk_uuid
        args: dict[str, Any] = {
            "name": image,
            "backing_image_uuid": f"uuid-{image}",
            "size": len(data),
            "checksum": sha512(data),
            "from_address": url,
            "src_lvs_uuid": "",
        }
        args.update(overrides)
        return await self.images.create(**args)

    async def state(self, name: str, *states: str, timeout: float = 10) -> Any:
        async with asyncio.timeout(timeout):
            while (view := self.images.get(name, self.disk_uuid)).state not in states:
                await asyncio.sleep(0.01)
        return view

    async def replica(self, name: str, image: str = "", size: int = 64 * MIB) -> str:
        request = V2Request(name=name, type="replica", disk_name="d1", size=size, backing_image_name=image)
        view = await self.instances.create_v2(request)
        return f"{self.address}:{view.port_start}"

    def clean(self) -> None:
        """Nothing left of any copy: no lvol of ours but ready images'
        snapshots, no exports, no controllers, no leases, no task."""
        ready = {r.lvol_name for r in self.v2.backing_images.records.values() if r.state == READY}
        assert self.image_lvols() <= ready, (self.image_lvols(), ready)
        assert not [n for n in self.spdk.subsystems if "bi-" in n], self.spdk.subsystems
        assert not self.data.path.initiator.controllers()
        images = self.v2.backing_images
        assert not images._copies and not images._deletes and not images._leases and not images._exports
        assert not images._opening and not images._background


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FileServer]:
    s = await FileServer().start()
    yield s
    await s.close()


async def one(tmp_path: Path, address: str = "127.0.0.1", peers: Peers | None = None) -> Node:
    content = Bytes()
    n = Node(tmp_path / address, address, peers or Peers(), content)
    content.attach(n.data, n.spdk)
    return await n.start()


async def ready(n: Node, server: FileServer, name: str = "img", data: bytes | None = None) -> bytes:
    data = image_bytes() if data is None else data
    server.add(f"/{name}", data)
    await n.create(name, server.url(f"/{name}"), data)
    await n.state(name, READY)
    return data


def persisted(n: Node) -> v2state.V2StateFile:
    return v2state.decode(n.store.snapshots[-1])


def ports_free(n: Node) -> bool:
    """No port held but the replicas' own."""
    return n.v2.supervisor.ports.in_use == len(n.v2.replicas.records)


# -- create ---------------------------------------------------------------------------------


async def test_an_image_is_downloaded_checked_and_snapshotted(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    data = image_bytes()
    server.add("/img", data)
    watch = n.images.watch()
    view = await n.create("img", server.url("/img"), data)
    assert (view.state, view.progress, view.spec.size) == ("pending", 0, SIZE)
    assert "img" in [r.spec.name for r in persisted(n).backing_images]  # recorded before any lvol
    done = await n.state("img", READY)
    assert (done.progress, done.current_checksum, done.error) == (100, sha512(data), "")
    lvol = n.lvols()[image_lvol_name("img", n.disk_uuid)]
    disk = await n.v2.disks.view("d1")
    assert lvol.snapshot and lvol.size_mib == disk.total_size // MIB  # room for any replica (imd.v2.bases)
    assert temp_lvol_name("img", n.disk_uuid) not in n.lvols()
    assert bytes(n.content.blobs[lvol.content])[:SIZE] == data  # what the lvol holds is the image
    # The chunk of zeroes was never written: the image is as thin as its content.
    assert all(not (MIB // 4096 <= lba < 2 * MIB // 4096) for _, lba, _ in n.content.writes)
    assert server.files["/img"].gets == 1
    assert [r.state for r in persisted(n).backing_images] == [READY]
    seen = len(watch.take_ready(1000))
    assert seen >= 3  # pending, in progress, ready (and progress between)
    listing = n.images.listing()
    assert list(listing) == [f"bi-img-disk-{n.disk_uuid}"]  # Longhorn's key
    n.clean()
    assert ports_free(n)


async def test_a_checksum_mismatch_fails_naming_both_and_leaves_nothing(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    data = image_bytes()
    server.add("/img", data)
    wrong = sha512(b"something else")
    await n.create("img", server.url("/img"), data, checksum=wrong)
    view = await n.state("img", FAILED)
    assert wrong in view.error and sha512(data) in view.error and "checksum" in view.error
    assert view.current_checksum == sha512(data)
    n.clean()
    with pytest.raises(FailedPrecondition) as err:  # a failed image is nothing to clone
        await n.replica("r1", "img")
    assert err.value.field == "spec.spdk_instance_spec.backing_image_name" and "failed" in str(err.value)
    await n.images.delete("img", n.disk_uuid)  # the manager deletes it and tries again
    await ready(n, server)


async def test_a_download_that_does_not_match_size_fails(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    data = image_bytes()
    server.add("/longer", data + b"x" * 4096, chunked=True)  # no length said: found out while copying
    await n.create("longer", server.url("/longer"), data)
    assert "longer than size" in (await n.state("longer", FAILED)).error
    server.add("/shorter", data[:-4096], chunked=True)
    await n.create("shorter", server.url("/shorter"), data)
    assert f"ended after {SIZE - 4096} bytes" in (await n.state("shorter", FAILED)).error
    server.add("/cut", data, cut_after=2 * MIB)
    await n.create("cut", server.url("/cut"), data)
    assert "closed" in (await n.state("cut", FAILED)).error
    server.add("/stalls", data, hold_after=MIB)
    await n.create("stalls", server.url("/stalls"), data)
    assert "no data for 0.5 s" in (await n.state("stalls", FAILED)).error
    server.files["/stalls"].released.set()
    n.clean()


async def test_bad_input_is_refused_naming_the_field_and_leaves_nothing(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    data = image_bytes()
    server.add("/img", data)
    server.add("/silent", silent=True)
    url = server.url("/img")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    cases: list[tuple[dict[str, Any], type[ImdError], str]] = [
        ({"name": "Bad/Name"}, InvalidArgument, "name"),
        ({"name": ""}, InvalidArgument, "name"),
        ({"backing_image_uuid": ""}, InvalidArgument, "backing_image_uuid"),
        ({"disk_uuid": ""}, InvalidArgument, "disk_uuid"),
        ({"disk_uuid": "not-a-uuid"}, InvalidArgument, "disk_uuid"),
        ({"disk_uuid": str(uuidlib.uuid4())}, NotFound, "disk_uuid"),
        ({"size": 0}, InvalidArgument, "size"),
        ({"size": SIZE + 512}, InvalidArgument, "size"),  # not whole 4096-byte blocks
        ({"size": 2 << 30}, ResourceExhausted, "size"),  # more than the disk
        ({"size": SIZE + 4096}, InvalidArgument, "size"),  # the URL's Content-Length says otherwise
        ({"checksum": ""}, InvalidArgument, "checksum"),
        ({"checksum": "ab" * 32}, InvalidArgument, "checksum"),  # a SHA-256 is not a SHA-512
        ({"from_address": ""}, InvalidArgument, "from_address"),
        ({"from_address": "ftp://host/img"}, InvalidArgument, "from_address"),
        ({"from_address": "not an address"}, InvalidArgument, "from_address"),
        ({"from_address": "10.0.0.9:8504"}, InvalidArgument, "src_lvs_uuid"),
        ({"from_address": server.url("/missing")}, NotFound, "from_address"),
        ({"from_address": f"http://127.0.0.1:{closed_port}/img"}, Unavailable, "from_address"),
        ({"from_address": server.url("/silent")}, Unavailable, "from_address"),
        ({"from_address": "127.0.0.9:8504", "src_lvs_uuid": str(uuidlib.uuid4())}, Unavailable, "from_address"),
    ]
    for overrides, error, field in cases:
        with pytest.raises(error) as err:
            await asyncio.wait_for(n.create("img", url, data, **overrides), 10)
        assert err.value.field == field, (overrides, err.value)
        assert not n.images.listing() and not n.v2.backing_images.records
        n.clean()
        assert ports_free(n)
    assert server.files["/img"].gets == 1  # only the Content-Length check reached it
    with pytest.raises(InvalidArgument) as err:
        n.images.get("img", "")
    assert err.value.field == "disk_uuid"
    with pytest.raises(NotFound, match="cannot find backing image nope") as err:  # Longhorn's words
        n.images.get("nope", n.disk_uuid)
    await n.images.delete("nope", n.disk_uuid)  # an unknown image: OK, as Longhorn answers
    with pytest.raises(InvalidArgument):
        await n.images.delete("Bad/Name", n.disk_uuid)


async def test_a_second_create_of_one_image_is_already_exists_and_another_uuid_replaces_it(
    tmp_path: Path, server: FileServer
) -> None:
    n = await one(tmp_path)
    data = await ready(n, server)
    with pytest.raises(AlreadyExists) as err:
        await n.create("img", server.url("/img"), data)
    assert err.value.field == "name"
    other = image_bytes(2)
    server.add("/img2", other)
    await n.create("img", server.url("/img2"), other, backing_image_uuid="uuid-new")  # replaces the old one
    view = await n.state("img", READY)
    assert view.spec.uuid == "uuid-new" and view.current_checksum == sha512(other)
    assert len(n.image_lvols()) == 1


# -- replicas ---------------------------------------------------------------------------------


async def test_replicas_are_clones_of_the_image_and_their_chains_stop_there(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    await ready(n, server)
    image = image_lvol_name("img", n.disk_uuid)
    addresses = {r: await n.replica(r, "img") for r in ("r1", "r2")}
    for r in addresses:
        head = n.lvols()[r]
        assert head.parent == image and head.size_mib == 64  # a clone, cut to the replica's size
        assert head.content == n.lvols()[image].content  # reads the image where it did not write
    await n.instances.create_v2(
        V2Request(name="e1", type="engine", volume_name="vol", size=64 * MIB, replica_address_map=addresses)
    )
    assert set(await n.engines.snapshot_list("e1", V2)) == {VOLUME_HEAD}  # the image is no snapshot
    await n.engines.snapshot_create("e1", V2, "s1", {})
    listing = await n.engines.snapshot_list("e1", V2)
    assert set(listing) == {"s1", VOLUME_HEAD}
    assert listing["s1"].parent == "" and listing["s1"].children == (VOLUME_HEAD,)
    chain = await n.v2.chains.chain("r1")
    assert chain.backing_image == "img" and [s.name for s in chain.snapshots] == ["s1"]
    # Other replicas' chains on the same image are not this one's branches.
    await n.engines.snapshot_purge("e1", V2, False)
    assert set(await n.engines.snapshot_list("e1", V2)) == {"s1", VOLUME_HEAD}
    # A purge or snapshot delete never reaches the image.
    await n.engines.snapshot_remove("e1", V2, ["s1"])
    assert n.lvols()["r1"].parent == image and image in n.lvols()
    # A clone grows within the image's lvol (the disk's size), not beyond: SPDK v24.01 would fail its I/O there.
    assert await n.v2.replicas.expand("r1", 128 * MIB) == 128 * MIB and n.lvols()["r1"].size_mib == 128
    with pytest.raises(ResourceExhausted) as big:
        await n.v2.replicas.expand("r1", 2 << 30)
    assert big.value.field == "size" and "backing image img" in str(big.value)
    # DiskReplicaInstanceList shows replicas, not images' lvols; neither can be removed that way.
    assert {lvol.name for lvol in await n.v2.disks.lvols("d1")} == {"r1", "r2"}
    with pytest.raises(FailedPrecondition, match="SPDKBackingImageDelete"):
        await n.disks.delete_replica(BLOCK, "d1", n.disk_uuid, image, "aio")


async def test_a_replica_needs_a_ready_image_on_its_own_disk(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    field = "spec.spdk_instance_spec.backing_image_name"
    with pytest.raises(FailedPrecondition) as err:
        await n.replica("r1", "img")
    assert err.value.field == field and "not on disk d1" in str(err.value)
    served = server.add("/img", image_bytes(), hold_after=MIB)
    await n.create("img", server.url("/img"))
    await n.state("img", IN_PROGRESS)
    with pytest.raises(FailedPrecondition) as err:
        await n.replica("r1", "img")
    assert err.value.field == field and "in-progress" in str(err.value)
    served.released.set()
    await n.state("img", READY)
    with pytest.raises(InvalidArgument) as bad:
        await n.replica("r1", "img", size=MIB)
    assert bad.value.field == "spec.spdk_instance_spec.size" and "smaller than backing image img" in str(bad.value)
    with pytest.raises(InvalidArgument) as bad:
        await n.replica("r1", "Not/A/Name")
    assert bad.value.field == field
    assert "r1" not in n.v2.replicas.records and not n.v2.backing_images._leases
    await n.replica("r1", "img")


# -- delete ------------------------------------------------------------------------------------


async def test_delete_is_refused_while_replicas_are_clones_then_goes_and_twice_is_ok(
    tmp_path: Path, server: FileServer
) -> None:
    n = await one(tmp_path)
    await ready(n, server)
    await n.replica("r1", "img")
    await n.replica("r2", "img")
    await n.v2.chains.create("r2", "s1")  # r2's clone now sits under a snapshot
    with pytest.raises(FailedPrecondition) as err:
        await n.images.delete("img", n.disk_uuid)
    assert err.value.field == "name" and "r1, r2" in str(err.value)
    assert n.images.get("img", n.disk_uuid).state == READY  # refused, nothing changed
    await n.v2.delete("r1", "", cleanup=True)
    await n.v2.delete("r2", "", cleanup=True)
    await eventually(lambda: not n.v2.replicas.records)
    await n.images.delete("img", n.disk_uuid)
    with pytest.raises(NotFound):
        n.images.get("img", n.disk_uuid)
    await n.images.delete("img", n.disk_uuid)  # twice: OK
    assert not n.images.listing() and not persisted(n).backing_images
    n.clean()
    assert ports_free(n)


async def test_a_replica_kept_without_cleanup_still_holds_the_image(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    await ready(n, server)
    await n.replica("r1", "img")
    await n.v2.delete("r1", "", cleanup=False)  # the lvol stays for a later create
    await eventually(lambda: not n.v2.replicas.records)
    with pytest.raises(FailedPrecondition, match="base of r1"):
        await n.images.delete("img", n.disk_uuid)
    await n.replica("r1", "img")  # the kept lvol is reused, data and all
    assert n.lvols()["r1"].parent == image_lvol_name("img", n.disk_uuid)


async def test_a_delete_during_the_download_preempts_it_and_leaves_nothing(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    served = server.add("/img", image_bytes(), hold_after=2 * MIB)
    await n.create("img", server.url("/img"))
    await asyncio.wait_for(served.held.wait(), 10)
    assert temp_lvol_name("img", n.disk_uuid) in n.lvols()
    await asyncio.wait_for(n.images.delete("img", n.disk_uuid), 5)  # answers without the server
    with pytest.raises(NotFound):
        n.images.get("img", n.disk_uuid)
    n.clean()
    assert ports_free(n)
    assert not persisted(n).backing_images
    served.released.set()


async def test_a_delete_while_the_create_checks_its_source_makes_the_create_give_up(
    tmp_path: Path, server: FileServer
) -> None:
    n = await one(tmp_path)
    data = image_bytes()
    served = server.add("/img", data, head_delay=0.2)  # the create waits for the answer's head
    creating = asyncio.ensure_future(n.create("img", server.url("/img"), data))
    await eventually(lambda: served.gets == 1)
    await n.images.delete("img", n.disk_uuid)  # nothing recorded yet: OK, and the create will not record it
    with pytest.raises(Conflict) as err:
        await creating
    assert err.value.field == "name" and "deleted while its create was starting" in str(err.value)
    assert not n.v2.backing_images.records and not persisted(n).backing_images
    n.clean()


async def test_deletes_and_replica_creates_of_one_image_see_each_other(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    await ready(n, server)
    # A replica being cloned from the image holds it: a delete meanwhile is refused.
    n.spdk.delay["bdev_lvol_clone"] = 0.2
    making = asyncio.ensure_future(n.replica("r1", "img"))
    await eventually(lambda: n.v2.backing_images._leases)
    with pytest.raises(FailedPrecondition, match="being made from it"):
        await n.images.delete("img", n.disk_uuid)
    await making
    assert not n.v2.backing_images._leases
    await n.v2.delete("r1", "", cleanup=True)
    await eventually(lambda: not n.v2.replicas.records)
    # A delete in progress refuses new clones, and two deletes share one outcome.
    n.spdk.delay["bdev_lvol_delete"] = 0.2
    first = asyncio.ensure_future(n.images.delete("img", n.disk_uuid))
    await eventually(lambda: n.v2.backing_images._deletes)
    second = asyncio.ensure_future(n.images.delete("img", n.disk_uuid))
    with pytest.raises(FailedPrecondition) as err:
        await n.replica("r2", "img")
    assert "being deleted" in str(err.value) or "not on disk" in str(err.value)
    await asyncio.gather(first, second)
    n.clean()


async def test_a_replica_delete_at_the_same_instant_as_the_image_delete(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    for _ in range(5):
        await ready(n, server)
        await n.replica("r1", "img")
        await n.v2.delete("r1", "", cleanup=True)
        outcome = await asyncio.gather(n.images.delete("img", n.disk_uuid), return_exceptions=True)
        if outcome[0] is not None:  # it saw the clone still there: refused, and the image is intact
            assert isinstance(outcome[0], FailedPrecondition), outcome
            assert n.images.get("img", n.disk_uuid).state == READY
            await eventually(lambda: not n.v2.replicas.records)
            await n.images.delete("img", n.disk_uuid)
        await eventually(lambda: not n.v2.replicas.records)
        n.clean()


# -- another node ------------------------------------------------------------------------------


async def test_an_image_is_copied_from_another_node_in_the_core(tmp_path: Path, server: FileServer) -> None:
    peers = Peers()
    content = Bytes()
    a = Node(tmp_path / "a", "127.0.0.1", peers, content)
    b = Node(tmp_path / "b", "127.0.0.2", peers, content)
    content.attach(a.data, a.spdk, b.spdk)
    content.attach(b.data, a.spdk, b.spdk)
    await a.start()
    await b.start()
    data = await ready(a, server)
    source = f"{a.address}:8504"
    await b.create("img", source, data, src_lvs_uuid=a.disk_uuid)
    view = await b.state("img", READY)
    assert view.current_checksum == sha512(data)
    copies = [j for j in b.data.jobs.jobs if j.kind == "copy"]
    assert len(copies) == 1 and copies[0].flags["skip_zero"]  # zeroes never written: thin
    assert not a.v2.backing_images._exports and not [s for s in a.spdk.subsystems if "bi-" in s]  # withdrawn
    b.clean()
    # The source's own errors name the field.
    await b.images.delete("img", b.disk_uuid)
    with pytest.raises(NotFound) as err:
        await b.create("img", source, data, src_lvs_uuid=str(uuidlib.uuid4()))
    assert err.value.field == "src_lvs_uuid"
    with pytest.raises(InvalidArgument) as bad:
        await b.create("img", source, data, src_lvs_uuid=a.disk_uuid, size=SIZE + 4096)
    assert bad.value.field == "size" and f"is {SIZE} bytes" in str(bad.value)
    assert not a.v2.backing_images._exports  # each refusal withdrew what it asked for
    # A delete of the source while it is being copied: neither side hangs;
    # the copy fails (here the fake job is told so; a real one sees its reads fail).
    b.data.jobs.delay = None
    await b.create("img", source, data, src_lvs_uuid=a.disk_uuid)
    await eventually(lambda: [j for j in b.data.jobs.jobs if j.kind == "copy" and not j.done.done()])
    await asyncio.wait_for(a.images.delete("img", a.disk_uuid), 5)
    assert not a.image_lvols() and not a.v2.backing_images._exports
    for job in b.data.jobs.jobs:
        if job.kind == "copy" and not job.done.done():
            job.finish(RebuildState.ERROR, "EIO: the source went")
    b.data.jobs.delay = 0.0
    assert "the source went" in (await b.state("img", FAILED)).error
    b.clean()
    a.clean()


# -- restarts, disks, the target ----------------------------------------------------------------


async def test_a_copy_in_flight_at_a_crash_is_removed_and_failed_at_restart(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    good = await ready(n, server, "good")
    served = server.add("/img", image_bytes(3), hold_after=MIB)
    await n.create("img", server.url("/img"), image_bytes(3))
    await asyncio.wait_for(served.held.wait(), 10)
    await n.state("img", IN_PROGRESS)
    crashed = persisted(n)  # what was on disk when the daemon died
    assert {r.spec.name: r.state for r in crashed.backing_images if r.state != READY} == {"img": PENDING}
    assert temp_lvol_name("img", n.disk_uuid) in n.lvols()
    content = Bytes()
    again = Node(tmp_path / "again", "127.0.0.1", Peers(), content, spdk=n.spdk)
    content.blobs = n.content.blobs
    content.attach(again.data, n.spdk)
    again.keeper.fresh = False
    report = await again.v2.start(crashed)
    assert report["v2_backing_images_interrupted"] == 1
    view = again.images.get("img", n.disk_uuid)
    assert (view.state, view.error) == (FAILED, INTERRUPTED)
    assert temp_lvol_name("img", n.disk_uuid) not in n.lvols()  # the copy's lvol is gone
    assert again.images.get("good", n.disk_uuid).state == READY
    await again.replica("r1", "good")  # a ready image serves at once after a restart
    assert bytes(content.blobs[n.lvols()["r1"].content])[:SIZE] == good
    served.released.set()


async def test_a_clean_stop_fails_the_copy_as_interrupted(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    served = server.add("/img", image_bytes(), hold_after=MIB)
    await n.create("img", server.url("/img"))
    await asyncio.wait_for(served.held.wait(), 10)
    await n.v2.close()
    record = next(r for r in persisted(n).backing_images if r.spec.name == "img")
    assert (record.state, record.error) == (FAILED, INTERRUPTED)
    assert not n.image_lvols()
    served.released.set()


async def test_removing_a_disk_preempts_its_copies_and_its_images_come_back_with_it(
    tmp_path: Path, server: FileServer
) -> None:
    n = await one(tmp_path)
    await ready(n, server, "kept")
    served = server.add("/img", image_bytes(), hold_after=MIB)
    await n.create("img", server.url("/img"))
    await asyncio.wait_for(served.held.wait(), 10)
    uuid = n.disk_uuid
    path = n.v2.disks.records["d1"].path
    await asyncio.wait_for(n.disks.delete(BLOCK, "d1", "", "aio"), 5)
    view = n.images.get("img", uuid)
    assert view.state == UNKNOWN  # its disk is away
    record = n.v2.backing_images.records[f"{uuid}/img"]
    assert record.state == FAILED and "removed while copying" in record.error
    lvs = n.spdk.devices[path].lvols
    assert temp_lvol_name("img", uuid) not in lvs and image_lvol_name("kept", uuid) in lvs
    with pytest.raises(NotFound):
        await n.create("new", server.url("/img"), disk_uuid=uuid)  # no such disk now
    await n.images.delete("img", uuid)
    await n.images.delete("kept", uuid)  # its lvol is on the device: deleted when the disk is back
    assert not n.images.listing()
    await n.disks.create(BLOCK, "d1", uuid, path, 4096, "aio")
    assert image_lvol_name("kept", uuid) not in n.spdk.devices[path].lvols
    assert not n.v2.backing_images.records
    n.clean()
    served.released.set()


async def test_a_target_that_dies_mid_copy_fails_it_and_is_swept_when_back(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    served = server.add("/img", image_bytes(), hold_after=MIB)
    await n.create("img", server.url("/img"))
    await asyncio.wait_for(served.held.wait(), 10)
    n.spdk.up = False  # the target stops answering (its lvols stay on the device)
    served.released.set()
    view = await n.state("img", FAILED)
    assert "SPDK target" in view.error or "writing" in view.error or "target" in view.error
    n.spdk.up = True
    await n.keeper.come_back()
    assert not n.image_lvols()


# -- watch -----------------------------------------------------------------------------------


async def test_every_change_is_a_notice(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    watch = n.images.watch()

    async def notices() -> int:
        return len(watch.take_ready(1000))

    await ready(n, server)
    assert await notices() >= 3
    await n.images.delete("img", n.disk_uuid)
    assert await notices() >= 1
    await n.images.delete("img", n.disk_uuid)  # nothing changed
    assert await notices() == 0


# -- rebuilds ---------------------------------------------------------------------------------


async def test_a_rebuild_onto_a_replica_without_the_image_fails_visibly(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    await ready(n, server)
    r1 = await n.replica("r1", "img")
    await n.instances.create_v2(
        V2Request(name="e1", type="engine", volume_name="vol", size=64 * MIB, replica_address_map={"r1": r1})
    )
    await n.engines.snapshot_create("e1", V2, "s1", {})
    plain = await n.replica("r2")  # made without the image
    await n.engines.add_replica("e1", V2, "r2", plain, restore=False, linked=False)
    engine = n.v2.engines.engines["e1"]
    await eventually(lambda: engine.record.modes.get("r2") == ReplicaMode.ERR)
    assert "backing image img" in engine.errors["r2"] and "no backing image" in engine.errors["r2"]
    with_image = await n.replica("r3", "img")
    await n.engines.add_replica("e1", V2, "r3", with_image, restore=False, linked=False)
    await eventually(lambda: engine.rebuild_phase == "head" or engine.record.modes.get("r3") == ReplicaMode.RW)
    chain = await n.v2.chains.chain("r3")
    assert chain.backing_image == "img" and [s.name for s in chain.snapshots] == ["s1"]


# -- field report 4: many clients, one image ------------------------------------------------------


async def test_creates_deletes_and_replicas_of_one_image_from_many_clients(tmp_path: Path, server: FileServer) -> None:
    n = await one(tmp_path)
    data = image_bytes(5, 2 * MIB)
    server.add("/img", data)
    rng = random.Random(4)
    unexpected: list[BaseException] = []
    succeeded: dict[str, int] = {}

    def every_kind_got_through() -> bool:
        return all(succeeded.get(op, 0) >= 1 for op in ("create", "delete", "replica", "unreplica"))

    async def client(c: int) -> None:
        # 80 calls each, then on until every kind has got through once (a
        # loaded machine can refuse every replica of the first 80, while the
        # image is never ready between deletes); wait_for below bounds a hang.
        i = 0
        while i < 80 or not every_kind_got_through():
            i += 1
            op = rng.choices(["create", "delete", "replica", "unreplica", "get"], [3, 2, 3, 3, 1])[0]
            try:
                if op == "create":
                    await n.create("img", server.url("/img"), data)
                elif op == "delete":
                    await n.images.delete("img", n.disk_uuid)
                elif op == "replica":
                    await n.replica(f"r{c}-{i % 3}", "img")
                elif op == "unreplica":
                    for name in [r for r in n.v2.replicas.records if r.startswith(f"r{c}-")]:
                        await n.v2.delete(name, "", cleanup=True)
                else:
                    n.images.listing()
                    n.images.get("img", n.disk_uuid)
                succeeded[op] = succeeded.get(op, 0) + 1
            except ImdError as exc:
                if not isinstance(exc, (AlreadyExists, Conflict, FailedPrecondition, NotFound, Unavailable)):
                    unexpected.append(exc)
            except BaseException as exc:  # anything else is a crash in the daemon
                unexpected.append(exc)
            await asyncio.sleep(rng.random() * 0.01)

    await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(4))), 120)
    assert not unexpected, unexpected
    # Every kind of call got through some of the time (the rest were refused, as they should be).
    assert every_kind_got_through(), succeeded
    for name in list(n.v2.replicas.records):
        await n.v2.delete(name, "", cleanup=True)
    await eventually(lambda: not n.v2.replicas.records)
    await eventually(lambda: not n.v2.backing_images._copies)
    await n.images.delete("img", n.disk_uuid)
    assert {name for name in n.lvols()} == set()  # no leaked lvols
    n.clean()
    assert ports_free(n)
    record = persisted(n)
    assert not record.backing_images and not record.replicas


async def test_lvol_names_are_short_and_recognised() -> None:
    uuid = str(uuidlib.uuid4())
    name = "a-backing-image-with-a-rather-long-name-of-sixty-four-characters"
    assert len(image_lvol_name(name, uuid)) <= 27 and len(temp_lvol_name(name, uuid)) <= 63
    assert is_image_lvol(image_lvol_name(name, uuid)) and is_image_lvol(temp_lvol_name(name, uuid))
    assert not is_image_lvol("bi-disk") and not is_image_lvol("r1") and not is_image_lvol("snap-0123")
    assert image_lvol_name(name, uuid) != image_lvol_name(name, str(uuidlib.uuid4()))
