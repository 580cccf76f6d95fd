"""Backing images on this node's disks: the one owner of them (issue 22).

A backing image is a read-only snapshot lvol on a disk (imd.v2.bases says
how it is named and recorded), which replicas of volumes that start from it
are clones of. ``BackingImages`` makes, serves, lists and deletes them, as
Longhorn's SPDK engine does (``pkg/spdk/backing_image.go``):

* **Create** answers at once and copies in the background. Before it
  answers, it checks what it can without side effects: the disk (by its
  lvstore's UUID), the size against the disk's block size and free space,
  and the source: the URL is opened (bounded connect and read timeouts) and
  its length compared with ``size``, or the other node is asked to serve
  its copy (whose size must be ``size`` too). Then the record is written
  (``pending``), and in the background a thin temporary head lvol is made,
  served to this node itself over NVMe-oF and filled, in this node's C
  core: from the URL through spdk_ffi's Python tier in 1 MiB writes
  (imd.v2.image_io), or from the other node's export by a copy job; either
  way chunks of zeroes are not written, so a sparse image stays thin (the
  head is as large as the disk, thin, for SPDK v24.01's sake: imd.v2.bases). Its
  SHA-512 is then read back from the lvol by a hash job (what Longhorn
  computes over the image's device: ``util.GetFileChecksum``) and compared
  with the expected checksum. A match snapshots the head into the image
  (``ready``) and deletes the head; anything else leaves the image
  ``failed`` with the reason (a mismatch names both checksums) and removes
  the temporary lvols. ``progress`` follows the copy (the hash and the
  snapshot are its last percent).
* **Delete** never waits on a copy: it cancels it (the copy stops within
  one chunk, its lvols go), and then deletes the image unless a replica is
  still a clone of it or is being made from it: that is FAILED_PRECONDITION
  listing them (decided: refused, not deferred; SPDK would otherwise fold
  the image into a single remaining clone, or refuse with several, and a
  deferred delete would keep a name the manager believes gone). Deleting an
  unknown image, or one already deleted, is OK, as Longhorn answers. The
  intent is written first; a delete that the target or the disk's absence
  interrupts is finished later (when the target or the disk is back, or at
  restart), never left half-done.
* **Restarts**: a copy that was in flight when the daemon stopped (a crash
  included) has its lvols removed at the next start and the image reported
  ``failed: interrupted by restart``, which the manager answers by deleting
  and re-creating it. Ready images are checked against the lvstore.
* **Watch**: every change (a state, a percent of progress, a delete) is a
  notice to each watcher, as Longhorn's SPDKBackingImageWatch sends.

Everything here runs on the event loop with one owner: creates, copies,
deletes and leases of one image (``<disk uuid>/<name>``) see each other's
marks synchronously, and no await sits between a check and the mark it
guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from imd.edges.http_download import Download, DownloadError, open_download
from imd.edges.spdk_target import LvolBdev, SpdkTargetClient, TargetRpcError, TargetUnreachable
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
from imd.eventlog import fields
from imd.supervisor.broadcast import Broadcaster, Subscription
from imd.supervisor.model import PortBlock
from imd.supervisor.ports import PortAllocator
from imd.v2.bases import (
    FAILED,
    IN_PROGRESS,
    INTERRUPTED,
    PENDING,
    READY,
    TEMP_SUFFIX,
    UNKNOWN,
    BackingImageRecord,
    BackingImageSpec,
    BackingImageView,
    BaseLease,
    ImagePeers,
    image_lvol_name,
    is_image_lvol,
    longhorn_key,
)
from imd.v2.datapath import DataPath, export_path
from imd.v2.disks import Disks, target_failure
from imd.v2.image_io import CHUNK, Alloc, StreamWriter, dma_alloc
from imd.v2.model import SnapshotExport, nguid_of, nqn_of
from imd.v2.replicas import lvol_mib
from imd.v2.target import TargetKeeper
from spdk_ffi import NvmeError
from spdk_ffi.jobs import JobHandle, JobResult
from spdk_ffi.mirror import RebuildState

log = logging.getLogger("imd.v2.backing_images")

MIB = 1 << 20
SERIAL = "IMD0000000000003"
MODEL = "imd backing image"
PROGRESS_POLL_S = 0.25

# Why a copy was stopped (its cancel handler reads this).
_DELETED = "deleted"
_CLOSING = "closing"
_DISK_REMOVED = "disk removed"


class _Failed(Exception):
    """A copy that cannot succeed: the image is failed, with this reason."""


class _Source:
    """What a create opened before answering: the download, or the other
    node's export of its copy."""

    def __init__(
        self,
        *,
        download: Download | None = None,
        export: SnapshotExport | None = None,
        peer: str = "",
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.download = download
        self.export = export
        self.peer = peer
        self._release = release

    async def close(self) -> None:
        if self.download is not None:
            await self.download.close()
        if self._release is not None:
            release, self._release = self._release, None
            with contextlib.suppress(ImdError):
                await release()


class _Export:
    """This node's copy of an image, served to other nodes for their copies;
    one export per image, counted."""

    def __init__(self, nqn: str, port: int, made: asyncio.Future[None]) -> None:
        self.nqn = nqn
        self.port = port
        self.made = made
        self.users = 1


def with_v2_query(url: str) -> str:
    """Longhorn's engine asks its backing-image manager for the V2 form of
    the file (``forV2Creation=true``); servers that do not know it ignore it."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "forV2Creation"]
    query.append(("forV2Creation", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


class BackingImages:
    def __init__(
        self,
        target: TargetKeeper,
        disks: Disks,
        ports: PortAllocator,
        address: str,
        *,
        changed: Callable[[], None],
        durable: Callable[[], Awaitable[None]],
        data: Callable[[], DataPath | None],
        peers: ImagePeers | None = None,
        watch_queue_limit: int = 1000,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        rate_bytes_per_s: int = 0,
        alloc: Alloc | None = None,
    ) -> None:
        self.target = target
        self.disks = disks
        self.ports = ports
        self.address = address
        self._changed = changed
        self._durable = durable
        self._data = data
        self.peers = peers
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.rate_bytes_per_s = rate_bytes_per_s
        self._alloc = alloc or dma_alloc  # DMA buffers for the writes (tests give memory of their own)
        self.records: dict[str, BackingImageRecord] = {}  # by <disk uuid>/<name>
        self.events: Broadcaster[int] = Broadcaster(watch_queue_limit)
        self._seq = 0
        self._opening: set[str] = set()  # creates checking their source, not yet recorded
        self._open_deleted: set[str] = set()  # of those, the ones a delete came for meanwhile
        self._copies: dict[str, asyncio.Task[None]] = {}
        self._deletes: dict[str, asyncio.Task[None]] = {}
        self._stop_reasons: dict[str, str] = {}
        self._leases: dict[str, int] = {}
        self._exports: dict[str, _Export] = {}
        self._leaving: set[str] = set()  # disks being removed
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- what others see ------------------------------------------------------------

    def _notify(self) -> None:
        self._seq += 1
        self.events.publish(self._seq)

    def watch(self) -> Subscription[int]:
        return self.events.subscribe()

    def view(self, record: BackingImageRecord) -> BackingImageView:
        state, error = record.state, record.error
        disk = self.disks.records.get(record.disk_name)
        if disk is None or disk.uuid != record.spec.disk_uuid:
            state, error = UNKNOWN, f"disk {record.disk_name} ({record.spec.disk_uuid}) is not on this node now"
        return BackingImageView(
            spec=record.spec,
            disk_name=record.disk_name,
            state=state,
            progress=record.progress,
            current_checksum=record.current_checksum,
            error=error,
            lvol_name=record.lvol_name,
        )

    def get(self, name: str, disk_uuid: str) -> BackingImageView:
        record = self.records.get(f"{disk_uuid}/{name}")
        if record is None or record.delete_requested:
            # Longhorn's words: its manager recognises a missing image by them.
            raise NotFound(f"cannot find backing image {name} in disk {disk_uuid}", field="name")
        return self.view(record)

    def listing(self) -> dict[str, BackingImageView]:
        return {
            longhorn_key(r.spec.name, r.spec.disk_uuid): self.view(r)
            for r in self.records.values()
            if not r.delete_requested
        }

    def persisted(self) -> list[BackingImageRecord]:
        return list(self.records.values())

    # -- the Bases interface (replicas and chains) -------------------------------------------

    def base_of(self, disk_name: str, lvol: str) -> str:
        if not is_image_lvol(lvol):
            return ""
        for record in self.records.values():
            if record.disk_name == disk_name and lvol in (record.lvol_name, record.temp_lvol):
                return record.spec.name
        return lvol  # one of ours whose record is gone: still nobody's snapshot

    def lease(self, name: str, disk_name: str, field: str) -> BaseLease:
        disk = self.disks.records.get(disk_name)
        key = f"{disk.uuid}/{name}" if disk is not None else ""
        record = self.records.get(key)
        if record is None or record.delete_requested:
            raise FailedPrecondition(
                f"backing image {name} is not on disk {disk_name}; create it there first", field=field
            )
        if key in self._deletes:
            raise FailedPrecondition(f"backing image {name} on disk {disk_name} is being deleted", field=field)
        if record.state != READY:
            why = f": {record.error}" if record.error else ""
            raise FailedPrecondition(
                f"backing image {name} on disk {disk_name} is {record.state} ({record.progress}%){why}", field=field
            )
        self._leases[key] = self._leases.get(key, 0) + 1

        def release() -> None:
            left = self._leases.get(key, 0) - 1
            if left > 0:
                self._leases[key] = left
            else:
                self._leases.pop(key, None)

        return BaseLease(name, disk_name, record.lvol_name, record.spec.size, self._lvol_mib(record), release)

    def clone_limit(self, name: str, disk_name: str) -> int:
        disk = self.disks.records.get(disk_name)
        record = self.records.get(f"{disk.uuid}/{name}") if disk is not None else None
        return self._lvol_mib(record) * MIB if record is not None else 0

    @staticmethod
    def _lvol_mib(record: BackingImageRecord) -> int:
        return record.lvol_mib or lvol_mib(record.spec.size)

    # -- create ------------------------------------------------------------------------------

    async def create(self, spec: BackingImageSpec) -> BackingImageView:
        """Record the image and start its copy (see the module doc); the
        view as it is then (``pending``)."""
        disk = self.disks.by_uuid(spec.disk_uuid)
        if disk is None:
            raise NotFound(f"no disk with UUID {spec.disk_uuid} on this node", field="disk_uuid")
        if disk.name in self._leaving:
            raise FailedPrecondition(f"disk {disk.name} is being removed", field="disk_uuid")
        if spec.size % disk.block_size:
            raise InvalidArgument(
                f"{spec.size} is not a multiple of disk {disk.name}'s block size {disk.block_size}", field="size"
            )
        if self._data() is None:
            raise FailedPrecondition("this node has no spdk_ffi core to copy a backing image with")
        self.target.require()
        key = f"{spec.disk_uuid}/{spec.name}"
        while (deleting := self._deletes.get(key)) is not None:
            await asyncio.wait({deleting})  # its outcome is its caller's; we look again
        if key in self._opening:
            raise AlreadyExists(f"backing image {spec.name} is being created on disk {disk.name}", field="name")
        existing = self.records.get(key)
        if existing is not None and not existing.delete_requested:
            if existing.spec.uuid == spec.uuid:
                raise AlreadyExists(
                    f"backing image {spec.name} already exists on disk {disk.name} ({existing.state})", field="name"
                )
            # Another image under the same name (Longhorn replaces it too).
            log.info("replacing backing image", extra=fields(name=spec.name, old=existing.spec.uuid, new=spec.uuid))
            await self.delete(spec.name, spec.disk_uuid)
            return await self.create(spec)
        self._opening.add(key)
        try:
            view = await self.disks.view(disk.name)
            if spec.size > view.free_size:
                raise ResourceExhausted(
                    f"{spec.size} bytes do not fit on disk {disk.name} ({view.free_size} bytes free)", field="size"
                )
            if existing is not None:  # a delete the disk's absence deferred: finish it first
                await self._finish_delete(self.target.require(), existing)
            source = await self._open(spec)
            try:
                if key in self._open_deleted:
                    raise Conflict(f"backing image {spec.name} was deleted while its create was starting", field="name")
                if self.disks.by_uuid(spec.disk_uuid) is None or disk.name in self._leaving:
                    raise FailedPrecondition(f"disk {disk.name} was removed meanwhile", field="disk_uuid")
                record = BackingImageRecord(
                    spec=spec, disk_name=disk.name, lvol_name=image_lvol_name(spec.name, spec.disk_uuid)
                )
                self.records[key] = record
                self._notify()
                self._changed()
                try:
                    await self._durable()  # the name before any lvol
                except BaseException:
                    if self.records.get(key) is record:
                        del self.records[key]
                        self._notify()
                        self._changed()
                    raise
            except BaseException:
                await source.close()
                raise
        finally:
            self._opening.discard(key)
            self._open_deleted.discard(key)
        task = asyncio.ensure_future(self._prepare(record, source))
        self._copies[key] = task
        task.add_done_callback(functools.partial(self._copy_done, record, source))
        log.info(
            "backing image copy started",
            extra=fields(name=spec.name, disk=disk.name, size=spec.size, source=spec.from_address),
        )
        return self.view(record)

    def _copy_done(self, record: BackingImageRecord, source: _Source, task: asyncio.Task[None]) -> None:
        if self._copies.get(record.key) is task:
            del self._copies[record.key]
        if task.cancelled() and record.state == PENDING:
            # Cancelled before it ran a step: its own handlers never ran, and
            # it made nothing but the open source.
            closing = asyncio.ensure_future(source.close())
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)
            reason = self._stop_reasons.pop(record.key, _CLOSING if self._closing else _DELETED)
            if reason != _DELETED:
                self._set(record, state=FAILED, error=_why_stopped(reason, record))

    async def _open(self, spec: BackingImageSpec) -> _Source:
        """The source, opened and checked against ``size`` (no side effect
        on this node yet)."""
        if spec.from_address.startswith(("http://", "https://")):
            try:
                download = await open_download(
                    with_v2_query(spec.from_address),
                    connect_timeout=self.connect_timeout_s,
                    read_timeout=self.read_timeout_s,
                )
            except DownloadError as exc:
                if exc.unreachable:
                    raise Unavailable(f"cannot download the image: {exc}", field="from_address") from exc
                if exc.status == 404:
                    raise NotFound(f"no image there: {exc}", field="from_address") from exc
                raise FailedPrecondition(f"cannot download the image: {exc}", field="from_address") from exc
            if download.length is not None and download.length != spec.size:
                await download.close()
                raise InvalidArgument(
                    f"the image at from_address is {download.length} bytes, not {spec.size}", field="size"
                )
            return _Source(download=download)
        if self.peers is None:
            raise FailedPrecondition("this node cannot reach other nodes' backing images", field="from_address")
        peers = self.peers
        try:
            export = await peers.image_expose(spec.from_address, spec.name, spec.src_lvs_uuid)
        except NotFound as exc:
            raise NotFound(f"the source: {exc}", field="src_lvs_uuid") from exc
        except ImdError as exc:
            raise type(exc)(f"the source at {spec.from_address}: {exc}", field="from_address") from exc

        async def release() -> None:
            await peers.image_unexpose(spec.from_address, spec.name, spec.src_lvs_uuid)

        source = _Source(export=export, peer=spec.from_address, release=release)
        if export.size != spec.size:
            await source.close()
            raise InvalidArgument(
                f"the source's copy of {spec.name} is {export.size} bytes, not {spec.size}", field="size"
            )
        return source

    # -- the copy -------------------------------------------------------------------------------

    def _set(self, record: BackingImageRecord, **changes: object) -> None:
        for name, value in changes.items():
            setattr(record, name, value)
        self._notify()
        self._changed()

    def _progress(self, record: BackingImageRecord, done: int) -> None:
        percent = min(99, done * 100 // record.spec.size) if record.spec.size else 99
        if percent != record.progress:
            self._set(record, progress=percent)

    async def _prepare(self, record: BackingImageRecord, source: _Source) -> None:
        key, spec = record.key, record.spec
        temp = f"{record.disk_name}/{record.temp_lvol}"
        try:
            client = self.target.require()
            data = self._data()
            if data is None:
                raise _Failed("this node's spdk_ffi core went away")
            self._set(record, state=IN_PROGRESS, progress=0, error="")
            # As large as the disk, so that any replica on it lies within (see imd.v2.bases).
            disk = await self.disks.view(record.disk_name)
            record.lvol_mib = max(lvol_mib(spec.size), disk.total_size // MIB)
            try:
                await client.lvol_create(record.disk_name, record.temp_lvol, record.lvol_mib)
                checksum = await self._fill(record, source, client, data, temp)
            finally:
                await source.close()
            record.current_checksum = checksum
            if checksum != spec.checksum:
                raise _Failed(f"checksum mismatch: expected {spec.checksum}, the content's SHA-512 is {checksum}")
            record.lvol_uuid = await client.lvol_snapshot(temp, record.lvol_name)
            await _gone_ok(client.lvol_delete(temp))  # the head has done its job: ready means nothing else is left
            self._set(record, state=READY, progress=100, error="")
            await self._durable()
        except asyncio.CancelledError:
            reason = self._stop_reasons.pop(key, _CLOSING if self._closing else _DELETED)
            if record.state != READY:
                await _settle(self._discard(record))
                if reason != _DELETED:
                    self._set(record, state=FAILED, error=_why_stopped(reason, record))
                    with contextlib.suppress(ImdError):
                        await self._durable()
            log.warning("backing image copy stopped", extra=fields(name=spec.name, disk=record.disk_name, why=reason))
            raise
        except (_Failed, ImdError, NvmeError, TargetRpcError, TargetUnreachable, DownloadError) as exc:
            why = _reason(exc)
            await _settle(self._discard(record))
            self._set(record, state=FAILED, error=why)
            with contextlib.suppress(ImdError):
                await self._durable()
            log.error("backing image failed", extra=fields(name=spec.name, disk=record.disk_name, error=why))
            return
        log.info("backing image ready", extra=fields(name=spec.name, disk=record.disk_name, lvol=record.lvol_name))

    async def _fill(
        self, record: BackingImageRecord, source: _Source, client: SpdkTargetClient, data: DataPath, temp: str
    ) -> str:
        """Copy the source onto the temporary head and read its SHA-512 back."""
        spec = record.spec
        owner = f"bi-{uuidlib.uuid4().hex[:12]}"
        hostnqn = f"nqn.2014-08.org.nvmexpress:uuid:{owner}"
        nqn = nqn_of(record.temp_lvol)
        port = self.ports.allocate(1).start
        names: list[str] = []
        try:
            await self._serve(client, nqn, temp, record.temp_lvol, port)
            local = SnapshotExport(address=self.address, port=port, nqn=nqn, size=spec.size)
            dst_name = f"{owner}-dst"
            names.append(dst_name)
            attached = await data.initiator.attach(dst_name, [export_path(local)], hostnqn, data.opts, owner=owner)
            dst = data.initiator.handle(dst_name)
            block = attached.info.namespaces[0].block_size
            blocks = spec.size // block
            if source.download is not None:
                await self._download(record, source.download, data, dst_name, block)
            else:
                assert source.export is not None
                src_name = f"{owner}-src"
                names.append(src_name)
                host = source.peer.rpartition(":")[0].strip("[]") if ":" in source.peer else source.peer
                await data.initiator.attach(
                    src_name, [export_path(source.export, host)], hostnqn, data.opts, owner=owner
                )
                job = data.jobs.copy(
                    data.initiator.handle(src_name),
                    dst,
                    blocks,
                    skip_zero=True,
                    chunk_bytes=CHUNK,
                    rate_bytes_per_s=self.rate_bytes_per_s,
                )
                result = await self._follow(record, job, track=True)
                if result.state is not RebuildState.COMPLETE:
                    raise _Failed(f"copying from {source.peer}: {result.error or result.state}")
            hashed = await self._follow(
                record, data.jobs.hash(dst, blocks, chunk_bytes=CHUNK, algorithm="sha512"), track=False
            )
            if hashed.state is not RebuildState.COMPLETE or not hashed.digest:
                raise _Failed(f"reading the image back for its checksum: {hashed.error or hashed.state}")
            return hashed.digest
        finally:
            await _settle(self._unserve(data, owner, names, client, nqn, port))

    async def _unserve(
        self, data: DataPath, owner: str, names: list[str], client: SpdkTargetClient, nqn: str, port: int
    ) -> None:
        for name in names:
            with contextlib.suppress(NvmeError):
                await data.initiator.detach(name, owner=owner)
        with contextlib.suppress(TargetRpcError, TargetUnreachable):
            await _gone_ok(client.subsystem_delete(nqn))
        self.ports.release(PortBlock(port, port))

    async def _download(
        self, record: BackingImageRecord, download: Download, data: DataPath, name: str, block: int
    ) -> None:
        size = record.spec.size
        writer = StreamWriter(lambda ios: data.initiator.io(name, ios), self._alloc, block_size=block)
        try:
            received = 0
            while piece := await download.read(CHUNK):
                received += len(piece)
                if received > size:
                    raise _Failed(f"the download is longer than size ({size} bytes)")
                await writer.write(piece)
                self._progress(record, received)
            if received != size:
                raise _Failed(f"the download ended after {received} bytes; size is {size}")
            await writer.finish()
        finally:
            await writer.close()

    async def _follow(self, record: BackingImageRecord, job: JobHandle, *, track: bool) -> JobResult:
        """Wait for a C-core job, showing its progress; a cancel stops it
        within one chunk."""
        try:
            while True:
                done, _ = await asyncio.wait({job.done}, timeout=PROGRESS_POLL_S)
                if track:
                    self._progress(record, job.status().bytes_done)
                if done:
                    return job.done.result()
        except asyncio.CancelledError:
            with contextlib.suppress(NvmeError):
                await job.cancel()
            raise

    async def _serve(self, client: SpdkTargetClient, nqn: str, alias: str, lvol: str, port: int) -> None:
        try:
            await client.subsystem_create(nqn, serial=SERIAL, model=MODEL)
            await client.subsystem_add_ns(nqn, alias, nguid_of(lvol))
            await client.subsystem_add_listener(nqn, self.address, port)
        except BaseException:
            with contextlib.suppress(TargetRpcError, TargetUnreachable):
                await _gone_ok(client.subsystem_delete(nqn))
            raise

    async def _discard(self, record: BackingImageRecord) -> None:
        """Remove what a copy that did not finish made: its temporary head,
        and the image's snapshot if it was made but not recorded ready."""
        try:
            client = self.target.require()
            await _gone_ok(client.lvol_delete(f"{record.disk_name}/{record.temp_lvol}"))
            if record.state != READY:
                await _gone_ok(client.lvol_delete(f"{record.disk_name}/{record.lvol_name}"))
        except (FailedPrecondition, TargetRpcError, TargetUnreachable) as exc:
            # The target is gone: swept when it is back (``sweep``).
            log.warning("backing image lvols not removed yet", extra=fields(name=record.spec.name, error=str(exc)))

    # -- serving this node's copy to another node ---------------------------------------------

    async def expose(self, name: str, disk_uuid: str) -> SnapshotExport:
        """Serve image ``name`` read-only over NVMe-oF on this node's
        replica address (for another node's copy); counted, so that two
        nodes copying at once each get it until their ``unexpose``."""
        key = f"{disk_uuid}/{name}"
        record = self.records.get(key)
        if record is None or record.delete_requested:
            raise NotFound(f"cannot find backing image {name} in disk {disk_uuid}", field="name")
        if record.state != READY or key in self._deletes:
            raise FailedPrecondition(f"backing image {name} is {record.state}, not ready", field="name")
        held = self._exports.get(key)
        if held is not None:
            held.users += 1
            try:
                await asyncio.shield(held.made)
            except BaseException:
                held.users -= 1
                raise
            return SnapshotExport(address=self.address, port=held.port, nqn=held.nqn, size=record.spec.size)
        client = self.target.require()
        port = self.ports.allocate(1).start
        made: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        export = self._exports[key] = _Export(nqn_of(record.lvol_name), port, made)
        try:
            await self._serve(client, export.nqn, f"{record.disk_name}/{record.lvol_name}", record.lvol_name, port)
        except BaseException as exc:
            if self._exports.get(key) is export:
                del self._exports[key]
            self.ports.release(PortBlock(port, port))
            made.set_exception(Unavailable(f"cannot serve backing image {name}: {exc}"))
            made.exception()  # retrieved: the waiters (if any) raise it
            if isinstance(exc, (TargetRpcError, TargetUnreachable)):
                raise target_failure(f"cannot serve backing image {name}", exc) from exc
            raise
        made.set_result(None)
        log.info("backing image served", extra=fields(name=name, disk=record.disk_name, port=port))
        return SnapshotExport(address=self.address, port=port, nqn=export.nqn, size=record.spec.size)

    async def unexpose(self, name: str, disk_uuid: str) -> None:
        key = f"{disk_uuid}/{name}"
        held = self._exports.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            await self._drop_export(key)

    async def _drop_export(self, key: str) -> None:
        held = self._exports.pop(key, None)
        if held is None:
            return
        with contextlib.suppress(BaseException):
            await asyncio.shield(held.made)
        with contextlib.suppress(TargetRpcError, TargetUnreachable, FailedPrecondition):
            await _gone_ok(self.target.require().subsystem_delete(held.nqn))
        self.ports.release(PortBlock(held.port, held.port))

    # -- delete ---------------------------------------------------------------------------------

    async def delete(self, name: str, disk_uuid: str) -> None:
        """SPDKBackingImageDelete (see the module doc). Concurrent deletes of
        one image share one outcome."""
        key = f"{disk_uuid}/{name}"
        running = self._deletes.get(key)
        if running is None:
            record = self.records.get(key)
            if record is None and key in self._opening:
                self._open_deleted.add(key)  # the create still checking its source gives up (ABORTED)
                return
            if record is None:
                await self._delete_orphan(name, disk_uuid)
                return  # unknown, or deleted already: Longhorn's OK
            if record.delete_requested and key not in self._copies and self._deferred(record):
                return  # deleted; what is left goes when its disk is back
            if self._leases.get(key):
                raise FailedPrecondition(
                    f"backing image {name} on disk {record.disk_name}: a replica is being made from it", field="name"
                )
            running = asyncio.ensure_future(self._delete(record))
            self._deletes[key] = running
            running.add_done_callback(lambda t: self._deletes.pop(key, None) if self._deletes.get(key) is t else None)
        await asyncio.shield(running)

    async def _delete_orphan(self, name: str, disk_uuid: str) -> None:
        """An image imd has no record of may still have lvols on the disk (a
        state file that was lost): they go too, unless replicas are built on
        them. Best effort: with no target to ask, the delete of an unknown
        image is still OK."""
        key = f"{disk_uuid}/{name}"
        disk = self.disks.by_uuid(disk_uuid)
        if disk is None or key in self._opening:
            return
        image = image_lvol_name(name, disk_uuid)
        temp = image + TEMP_SUFFIX
        try:
            client = self.target.require()
            users = await self._users(client, disk.name, image, temp)
            if users:
                raise FailedPrecondition(
                    f"backing image {name} on disk {disk.name} is the base of {', '.join(users)}; "
                    "delete those replicas first",
                    field="name",
                )
            if key in self.records or key in self._opening:
                return  # a create came meanwhile: not an orphan
            for lvol in (temp, image):
                await _gone_ok(client.lvol_delete(f"{disk.name}/{lvol}"))
        except (TargetRpcError, TargetUnreachable, Unavailable) as exc:
            log.warning("orphan backing image lvols not checked", extra=fields(name=name, error=str(exc)))

    def _deferred(self, record: BackingImageRecord) -> bool:
        disk = self.disks.records.get(record.disk_name)
        return disk is None or disk.uuid != record.spec.disk_uuid

    async def _delete(self, record: BackingImageRecord) -> None:
        key = record.key
        copy = self._copies.get(key)
        if copy is not None and not copy.done():
            self._stop_reasons[key] = _DELETED
            copy.cancel()
            with contextlib.suppress(BaseException):
                await copy
        if self._deferred(record):
            # The disk is not here: its lvols stay on its device until it is.
            if not record.delete_requested:
                record.delete_requested = True
                self._notify()
                self._changed()
                try:
                    await self._durable()
                except ImdError:
                    record.delete_requested = False
                    self._notify()
                    self._changed()
                    raise
            log.info("backing image delete deferred until its disk is back", extra=fields(name=record.spec.name))
            return
        await self._finish_delete(self.target.require(), record)

    async def _finish_delete(self, client: SpdkTargetClient, record: BackingImageRecord) -> None:
        key, name = record.key, record.spec.name
        users = await self._users(client, record.disk_name, record.lvol_name, record.temp_lvol)
        if users:
            if record.delete_requested:  # a deferred or interrupted delete that can no longer be done
                record.delete_requested = False
                self._notify()
                self._changed()
            raise FailedPrecondition(
                f"backing image {name} on disk {record.disk_name} is the base of {', '.join(users)}; "
                "delete those replicas first",
                field="name",
            )
        was = record.delete_requested
        record.delete_requested = True
        self._notify()
        self._changed()
        try:
            await self._durable()  # the intent, before the lvols go
        except ImdError:
            record.delete_requested = was
            self._notify()
            self._changed()
            raise
        await self._drop_export(key)
        try:
            await _gone_ok(client.lvol_delete(f"{record.disk_name}/{record.temp_lvol}"))
            await _gone_ok(client.lvol_delete(f"{record.disk_name}/{record.lvol_name}"))
        except (TargetRpcError, TargetUnreachable) as exc:
            # Nothing went (SPDK deletes an lvol whole or not at all); the
            # intent stays on disk and is finished when the target is back.
            raise target_failure(f"cannot delete backing image {name}", exc) from exc
        if self.records.get(key) is record:
            del self.records[key]
        self._notify()
        self._changed()
        with contextlib.suppress(ImdError):
            await self._durable()  # if this is lost, a restart finds the intent and no lvol: the same end
        log.info("backing image deleted", extra=fields(name=name, disk=record.disk_name))

    async def _users(self, client: SpdkTargetClient, disk_name: str, image_lvol: str, temp_lvol: str) -> list[str]:
        """What in the lvstore is built on the image: the heads (replicas,
        named by their lvols) and snapshots without clones under it (its
        own temporary head, a clone of it once snapshotted, is none)."""
        lvols = await _lvols(client)
        tree = {lvol.lvol_name: lvol for lvol in lvols if lvol.lvs_name == disk_name}
        image = tree.get(image_lvol)
        if image is None or not image.details.snapshot:
            return []
        users: list[str] = []
        stack = list(image.details.clones)
        while stack:
            name = stack.pop()
            lvol = tree.get(name)
            if lvol is None or name == temp_lvol:
                continue
            if lvol.details.snapshot and lvol.details.clones:
                stack.extend(lvol.details.clones)
            else:
                users.append(name)
        return sorted(users)

    # -- disks come and go; the target restarts; the daemon starts and stops --------------------

    async def disk_leaving(self, disk_name: str) -> None:
        """The disk is about to be removed: no new image on it, copies on it
        stop (within one chunk; their lvols go while the disk is still
        here, the images are failed saying why) and its images are no
        longer served. Ready images stay on the device with their records
        (shown ``unknown`` while the disk is away)."""
        self._leaving.add(disk_name)
        for record in [r for r in self.records.values() if r.disk_name == disk_name]:
            copy = self._copies.get(record.key)
            if copy is not None and not copy.done():
                self._stop_reasons[record.key] = _DISK_REMOVED
                copy.cancel()
                with contextlib.suppress(BaseException):
                    await copy
            await self._drop_export(record.key)

    def disk_left(self, disk_name: str) -> None:
        """The removal is over (done or refused): images may be made on a
        disk of that name again."""
        self._leaving.discard(disk_name)

    async def disk_arrived(self, disk_name: str) -> None:
        """A disk was (re)loaded: finish the deletes its absence deferred,
        and check its ready images against its lvstore."""
        await self._reconcile({disk_name})

    async def sweep(self) -> None:
        """The target is back (it restarted, disks reloaded): remove what
        copies it cut short left behind, finish deletes it interrupted."""
        await self._reconcile({d for d in self.disks.records})

    async def _reconcile(self, disks: set[str]) -> None:
        try:
            client = self.target.require()
            present = {lvol.alias: lvol for lvol in await _lvols(client)}
        except (FailedPrecondition, Unavailable) as exc:
            log.warning("backing images not reconciled", extra=fields(error=str(exc)))
            return
        for record in list(self.records.values()):
            if record.disk_name not in disks or self._deferred(record) or record.key in self._copies:
                continue
            try:
                if record.delete_requested:
                    await self._finish_delete(client, record)
                    continue
                temp = present.get(f"{record.disk_name}/{record.temp_lvol}")
                if temp is not None:
                    await _gone_ok(client.lvol_delete(temp.alias))
                image = present.get(f"{record.disk_name}/{record.lvol_name}")
                if record.state == READY and image is None:
                    self._set(record, state=FAILED, error=f"its lvol {record.disk_name}/{record.lvol_name} is gone")
                elif record.state != READY and image is not None and not image.details.clones:
                    await _gone_ok(client.lvol_delete(image.alias))  # made by a copy that never finished
            except (ImdError, TargetRpcError, TargetUnreachable) as exc:
                log.warning("backing image not reconciled", extra=fields(name=record.spec.name, error=str(exc)))

    def adopt_unserved(self, records: list[BackingImageRecord]) -> None:
        """Daemon start without a usable target: keep every record; a copy
        that was in flight is failed now (its lvols go once a target is back)."""
        for record in records:
            if record.state in (PENDING, IN_PROGRESS):
                record.state, record.error = FAILED, INTERRUPTED
            self.records[record.key] = record
        self._changed()

    async def recover(self, records: list[BackingImageRecord]) -> dict[str, int]:
        """Daemon start: join the records with the lvstores (see the module
        doc); temporary heads nobody claims are removed."""
        report = {"backing_images": 0, "backing_images_interrupted": 0, "backing_image_lvols_removed": 0}
        client = self.target.require()
        lvols = await _lvols(client)
        present = {lvol.alias: lvol for lvol in lvols}
        for record in records:
            self.records[record.key] = record
            report["backing_images"] += 1
            if record.state in (PENDING, IN_PROGRESS):
                record.state, record.error = FAILED, INTERRUPTED
                report["backing_images_interrupted"] += 1
                if not self._deferred(record):
                    for name in (record.temp_lvol, record.lvol_name):
                        lvol = present.get(f"{record.disk_name}/{name}")
                        if lvol is not None and not lvol.details.clones:
                            with contextlib.suppress(TargetRpcError, TargetUnreachable):
                                await _gone_ok(client.lvol_delete(lvol.alias))
                                report["backing_image_lvols_removed"] += 1
        await self._reconcile(set(self.disks.records))
        claimed = {(r.disk_name, r.temp_lvol) for r in self.records.values()}
        for lvol in lvols:
            name = lvol.lvol_name
            if is_image_lvol(name) and name.endswith(TEMP_SUFFIX) and (lvol.lvs_name, name) not in claimed:
                with contextlib.suppress(TargetRpcError, TargetUnreachable):
                    await _gone_ok(client.lvol_delete(lvol.alias))
                    report["backing_image_lvols_removed"] += 1
        self._changed()
        return report

    async def close(self) -> None:
        """Daemon shutdown: copies stop (within one chunk; the images are
        failed, interrupted), deletes in progress are left to finish at the
        next start (their intent is on disk)."""
        self._closing = True
        for key, task in list(self._copies.items()):
            self._stop_reasons[key] = _CLOSING
            task.cancel()
        for task in [*self._copies.values(), *self._deletes.values(), *self._background]:
            with contextlib.suppress(BaseException):
                await task
        for key in list(self._exports):
            await self._drop_export(key)
        self.events.close_all()


async def _settle(cleanup: Awaitable[None]) -> None:
    """Run a cleanup to its end even if the task running it is cancelled
    meanwhile (a delete preempting a copy that is already cleaning up after
    a failure): a cleanup cut in half would leave an export or an lvol
    behind. The cancel is raised once it is done. Cleanups are bounded (the
    target's RPC timeout, a detach's)."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _why_stopped(reason: str, record: BackingImageRecord) -> str:
    return INTERRUPTED if reason == _CLOSING else f"disk {record.disk_name} was removed while copying"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TargetRpcError) and exc.errno == errno.ENOSPC:
        return f"no room on the disk: {exc}"
    if isinstance(exc, (TargetRpcError, TargetUnreachable)):
        return f"the SPDK target: {exc}"
    if isinstance(exc, NvmeError):
        return f"writing the image: {exc}"
    return str(exc)


async def _lvols(client: SpdkTargetClient) -> list[LvolBdev]:
    try:
        return await client.lvol_bdevs()
    except (TargetRpcError, TargetUnreachable) as exc:
        raise target_failure("cannot read the lvstores", exc) from exc


async def _gone_ok(step: Awaitable[object]) -> None:
    """A removal that finds the object already gone has done its job."""
    try:
        await step
    except TargetRpcError as exc:
        if not exc.not_found:
            raise
