"""Making a backup: Longhorn's ``CreateDeltaBlockBackup``, as one
cancellable coroutine.

The order is Longhorn's, so that its tools see what they expect at every
instant: take the volume's backup lock; write ``volume.cfg`` if the volume
is new (its compression method is the volume's from then on); upload the
blocks the target lacks; write the backup's config; update
``volume.cfg``. A backup is listed once its config exists, and its config
is written last, after every block it names: a backup that is preempted or
fails is never listed. (Longhorn writes an "in progress" config first and
leaves it behind on failure; imd does not, and relies on the lock, which
keeps Longhorn's deletions and their block GC out until it is released.)
Blocks uploaded by a preempted backup stay on the target: the next backup
finds and reuses them, and Longhorn's GC reclaims them at the next
deletion if none does.

Blocks: every ``block_size`` bytes of the snapshot, skipped when all zero
(or when the source says the range is unallocated), named by their
checksum, uploaded once: a checksum the target already holds, or that an
earlier block of this backup had, is not uploaded again. An incremental
backup (the volume has a previous backup, of another snapshot) reuses the
previous backup's map: if the source can say which blocks changed since
that snapshot only those are read, else every block is read and the
unchanged ones are found by checksum.

The data path: ``concurrent_limit`` uploads in flight; each block is read
from the source and checksummed (and compressed, where it will be needed)
in worker threads while others upload. Longhorn's lock protocol waits 2 s
between writing the lock and checking it; the source is read, hashed and
compressed during that wait (up to ``prefetch_bytes`` ahead), but nothing
is written to the target or looked up there before the lock is held.

Cancelling the task stops the backup within one block: the uploads in
flight are abandoned, the lock is released, and nothing is listed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import msgspec

from imd.backupstore import workers
from imd.backupstore.compress import compress
from imd.backupstore.driver import Driver, StoreOptions, open_driver
from imd.backupstore.format import (
    BLOCK_SUFFIX,
    PROGRESS_BLOCKS,
    PROGRESS_DONE,
    BackupConfig,
    BlockMapping,
    VolumeConfig,
    backup_cfg_path,
    block_path,
    block_size_of,
    blocks_dir,
    check_compression,
    check_name,
    checksum,
    decode_backup,
    decode_volume,
    encode_backup,
    encode_volume,
    is_checksum,
    is_full_mode,
    now,
    parse_time,
    volume_cfg_path,
)
from imd.backupstore.locks import BACKUP_LOCK, FileLock, _shielded
from imd.backupstore.seams import BlockSource, Buffer, Progress, ProgressCallback
from imd.backupstore.urls import format_backup_url, parse_target
from imd.errors import ImdError, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("imd.backupstore")

DEFAULT_CONCURRENT_LIMIT = 5
DEFAULT_PREFETCH_BYTES = 64 * 1024 * 1024
MAX_PREFETCH_BLOCKS = 64


class BackupSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to back up and how: the fields of Longhorn's SnapshotBackup
    request that reach the backupstore (credentials travel apart, in
    ``envs``, so that a spec can be logged)."""

    target: str  # backup_target
    volume_name: str
    snapshot_name: str
    backup_name: str = ""  # "" → a generated backup-<16 hex>
    volume_size: int = 0  # 0 → the source's size
    compression_method: str = "lz4"
    concurrent_limit: int = DEFAULT_CONCURRENT_LIMIT
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    parameters: dict[str, str] = msgspec.field(default_factory=dict)  # backup-block-size, backup-mode
    backing_image_name: str = ""
    backing_image_checksum: str = ""
    storage_class_name: str = ""
    snapshot_created_at: str = ""  # RFC 3339; "" → now
    data_engine: str = "v2"


class BackupResult(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    backup_name: str
    is_incremental: bool
    blocks: int  # blocks the backup names
    blocks_read: int  # blocks read from the source
    blocks_uploaded: int
    newly_uploaded_bytes: int
    reuploaded_bytes: int


def generate_backup_name() -> str:
    import uuid

    return "backup-" + uuid.uuid4().hex[:16]


class _Checked(msgspec.Struct, frozen=True):
    backup_name: str
    block_size: int
    volume_size: int
    compression: str
    concurrent_limit: int
    snapshot_created_at: str
    full_mode: bool


def _check(spec: BackupSpec, source: BlockSource) -> _Checked:
    """Everything the request can get wrong, before any I/O."""
    parse_target(spec.target)
    check_name(spec.volume_name, "volume_name")
    if not spec.snapshot_name:
        raise InvalidArgument("empty", field="snapshot_name")
    backup_name = spec.backup_name or generate_backup_name()
    check_name(backup_name, "backup_name")
    compression = check_compression(spec.compression_method)
    block_size = block_size_of(spec.parameters)
    if spec.concurrent_limit < 0:
        raise InvalidArgument(f"{spec.concurrent_limit} is negative", field="concurrent_limit")
    volume_size = spec.volume_size or source.size
    if volume_size <= 0:
        raise InvalidArgument(f"{volume_size} bytes", field="volume_size")
    if volume_size % block_size:
        raise InvalidArgument(
            f"{volume_size} is not a multiple of the backup block size {block_size}", field="volume_size"
        )
    created = spec.snapshot_created_at or now()
    if parse_time(created) is None:
        raise InvalidArgument(f"{created!r} is not an RFC 3339 time", field="snapshot_created_at")
    return _Checked(
        backup_name=backup_name,
        block_size=block_size,
        volume_size=volume_size,
        compression=compression,
        concurrent_limit=spec.concurrent_limit or DEFAULT_CONCURRENT_LIMIT,
        snapshot_created_at=created,
        full_mode=is_full_mode(spec.parameters),
    )


async def load_volume(driver: Driver, volume: str) -> VolumeConfig:
    try:
        data = await driver.read(volume_cfg_path(volume))
    except NotFound:
        raise NotFound(f"volume {volume} is not on the backup target", field="volume_name") from None
    try:
        return decode_volume(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise Unavailable(f"backup target: {volume_cfg_path(volume)} is not a volume config: {exc}") from None


async def load_backup(driver: Driver, volume: str, backup: str) -> BackupConfig:
    path = backup_cfg_path(volume, backup)
    try:
        data = await driver.read(path)
    except NotFound:
        raise NotFound(f"backup {backup} of volume {volume} is not on the backup target", field="backup_name") from None
    try:
        return decode_backup(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise Unavailable(f"backup target: {path} is not a backup config: {exc}") from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a TaskGroup's failure stands for: an imd error if any
    task raised one, else the first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, ImdError):
            return exc
    return leaves[0]


class _Prepared(msgspec.Struct):
    """A block after the worker thread: its checksum (None: all zeros),
    its raw data if it still has to be compressed, or its compressed form."""

    checksum: str | None
    raw: Buffer | None = None
    payload: Buffer | None = None
    method: str = ""


def _is_zero(data: Buffer, zero: bytes) -> bool:
    if isinstance(data, memoryview):
        # A memoryview compares item by item; a copy compares with memcmp.
        return data.nbytes == len(zero) and data.tobytes() == zero
    return data == zero


def _prepare(data: Buffer, zero: bytes, method: str | None) -> _Prepared:
    if _is_zero(data, zero):
        return _Prepared(None)
    digest = checksum(data)
    if method is None:
        return _Prepared(digest, raw=data)
    return _Prepared(digest, payload=compress(method, data), method=method)


class _Plan(msgspec.Struct):
    volume: VolumeConfig
    compression: str
    last: BackupConfig | None  # the backup this one builds on (incremental)
    changed: set[int] | None  # the only blocks to read, if the source could tell


class _Run:
    def __init__(
        self,
        spec: BackupSpec,
        checked: _Checked,
        source: BlockSource,
        driver: Driver,
        options: StoreOptions,
        progress: ProgressCallback | None,
        prefetch_bytes: int,
    ) -> None:
        self.spec = spec
        self.c = checked
        self.source = source
        self.driver = driver
        self.options = options
        self.on_progress = progress
        self.volume = spec.volume_name
        self.block_count = checked.volume_size // checked.block_size
        self.zero = bytes(checked.block_size)
        # Before the gate opens (lock held, plan known): prefetch slots.
        self.workers = checked.concurrent_limit + min(MAX_PREFETCH_BLOCKS, max(1, prefetch_bytes // checked.block_size))
        self.upload_slots = asyncio.Semaphore(checked.concurrent_limit)
        self.gate = asyncio.Event()
        self.plan: _Plan | None = None
        self.known: set[str] = set()  # checksums on the target before this backup
        self.uploaded: set[str] = set()  # uploaded (or being uploaded) by this backup
        self.next_index = 0
        self.results: dict[int, str | None] = {}
        self.speculative_method: str | None = None
        self.blocks_read = 0
        self.blocks_done = 0
        self.blocks_total = self.block_count
        self.uploads = 0
        self.new_blocks = 0
        self.newly_uploaded = 0
        self.reuploaded = 0

    # -- progress ----------------------------------------------------------------

    def _report(self, percent: int | None = None) -> None:
        if self.on_progress is None:
            return
        total = max(self.blocks_total, 1)
        if percent is None:
            percent = min(PROGRESS_BLOCKS, self.blocks_done * PROGRESS_BLOCKS // total)
        self.on_progress(
            Progress(
                percent=percent,
                blocks_done=self.blocks_done,
                blocks_total=self.blocks_total,
                bytes_transferred=self.newly_uploaded + self.reuploaded,
            )
        )

    # -- planning (under the lock) ---------------------------------------------------

    async def _ensure_volume(self) -> None:
        """``addVolume``: a new volume's config, with this request's
        compression method (which the volume keeps)."""
        if await self.driver.stat(volume_cfg_path(self.volume)) is not None:
            return
        spec = self.spec
        config = VolumeConfig(
            name=self.volume,
            size=self.c.volume_size,
            labels=dict(spec.labels) or None,
            created_time=now(),
            backing_image_name=spec.backing_image_name,
            backing_image_checksum=spec.backing_image_checksum,
            compression_method=self.c.compression,
            storage_class_name=spec.storage_class_name,
            data_engine=spec.data_engine,
        )
        await self.driver.write(volume_cfg_path(self.volume), encode_volume(config))
        log.info("backupstore volume %s added on %s", self.volume, self.driver.url)

    async def _make_plan(self) -> _Plan:
        volume = await load_volume(self.driver, self.volume)
        last: BackupConfig | None = None
        if volume.last_backup_name and not self.c.full_mode:
            try:
                last = await load_backup(self.driver, self.volume, volume.last_backup_name)
            except ImdError as exc:
                log.info("previous backup %s not usable, backing up in full: %s", volume.last_backup_name, exc)
            if last is not None and (
                last.in_progress
                or last.snapshot_name == self.spec.snapshot_name
                or block_size_of(last.parameters) != self.c.block_size
            ):
                last = None
        changed: set[int] | None = None
        if last is not None and last.snapshot_name:
            found = await self.source.changed_blocks(last.snapshot_name, self.c.block_size)
            if found is not None:
                changed = {i for i in found if 0 <= i < self.block_count}
        return _Plan(volume=volume, compression=volume.compression_method, last=last, changed=changed)

    async def _open_gate(self, lock: FileLock) -> None:
        await lock.acquire()
        await self._ensure_volume()
        plan = await self._make_plan()
        names = await self.driver.list_files(blocks_dir(self.volume))
        self.known = {
            name.rsplit("/", 1)[-1].removesuffix(BLOCK_SUFFIX)
            for name in names
            if name.endswith(BLOCK_SUFFIX) and is_checksum(name.rsplit("/", 1)[-1].removesuffix(BLOCK_SUFFIX))
        }
        if plan.changed is not None:
            self.blocks_total = len(plan.changed)
        self.plan = plan
        self.gate.set()
        self._report()

    # -- the blocks ----------------------------------------------------------------

    def _take(self) -> int | None:
        """The next block to read: in order; once the plan is known, only
        the blocks it reads."""
        while self.next_index < self.block_count:
            index = self.next_index
            self.next_index += 1
            plan = self.plan
            if plan is None or plan.changed is None or index in plan.changed:
                return index
        return None

    async def _read(self, index: int) -> Buffer | None:
        offset = index * self.c.block_size
        if offset >= self.source.size:
            return None
        length = min(self.c.block_size, self.source.size - offset)
        try:
            data = await self.source.read(offset, length)
        except OSError as exc:
            raise Unavailable(f"reading snapshot {self.spec.snapshot_name} at offset {offset}: {exc}") from None
        if data is not None and len(data) < self.c.block_size:
            data = bytes(data) + bytes(self.c.block_size - len(data))
        return data

    async def _worker(self) -> None:
        if self.speculative_method is None:
            # Likely incremental: the plan (and the source's changed blocks)
            # decides what to read; nothing is read before it.
            await self.gate.wait()
        while (index := self._take()) is not None:
            data = await self._read(index)
            self.blocks_read += 1
            if data is None:
                prepared = _Prepared(None)
            else:
                # Compress ahead only where it will most likely be needed: a
                # first backup (no block of it is on the target yet).
                method = self.plan.compression if self.plan is not None else self.speculative_method
                prepared = await workers.run(_prepare, data, self.zero, method)
                del data
            await self.gate.wait()
            await self._store(index, prepared)

    async def _store(self, index: int, prepared: _Prepared) -> None:
        plan = self.plan
        assert plan is not None
        if plan.changed is not None and index not in plan.changed:
            return  # read speculatively before the plan said to skip it
        digest = prepared.checksum
        self.results[index] = digest
        if digest is not None and digest not in self.uploaded and (self.c.full_mode or digest not in self.known):
            self.uploaded.add(digest)
            payload = prepared.payload
            if payload is None or prepared.method != plan.compression:
                raw = prepared.raw
                if raw is None:  # compressed with another method: read again
                    raw = await self._read(index)
                    assert raw is not None
                payload = await workers.run(compress, plan.compression, raw)
            async with self.upload_slots:
                await self.driver.write(block_path(self.volume, digest), payload)
            self.uploads += 1
            if digest in self.known:
                self.reuploaded += len(payload)
            else:
                self.new_blocks += 1
                self.newly_uploaded += len(payload)
        self.blocks_done += 1
        self._report()

    # -- the end -------------------------------------------------------------------

    def _block_map(self) -> list[BlockMapping]:
        plan = self.plan
        assert plan is not None
        size = self.c.block_size
        by_offset: dict[int, str] = {}
        if plan.changed is not None and plan.last is not None:
            by_offset = {b.offset: b.block_checksum for b in plan.last.blocks if b.offset < self.c.volume_size}
        for index, digest in self.results.items():
            if digest is None:
                by_offset.pop(index * size, None)
            else:
                by_offset[index * size] = digest
        return [BlockMapping(offset, by_offset[offset]) for offset in sorted(by_offset)]

    async def _commit(self) -> BackupResult:
        plan = self.plan
        assert plan is not None
        spec, c = self.spec, self.c
        blocks = self._block_map()
        backup = BackupConfig(
            name=c.backup_name,
            volume_name=self.volume,
            snapshot_name=spec.snapshot_name,
            snapshot_created_at=c.snapshot_created_at,
            created_time=now(),
            size=len(blocks) * c.block_size,
            labels=dict(spec.labels) or None,
            parameters=dict(spec.parameters) or None,
            is_incremental=plan.last is not None,
            compression_method=plan.compression,
            newly_uploaded_data_size=self.newly_uploaded,
            re_uploaded_data_size=self.reuploaded,
            blocks=blocks,
        )
        await self.driver.write(backup_cfg_path(self.volume, c.backup_name), encode_backup(backup))
        volume = await load_volume(self.driver, self.volume)
        volume.last_backup_name = c.backup_name
        volume.last_backup_at = c.snapshot_created_at
        volume.block_count += self.new_blocks
        volume.size = c.volume_size
        volume.labels = dict(spec.labels) or None
        volume.backing_image_name = spec.backing_image_name
        volume.backing_image_checksum = spec.backing_image_checksum
        volume.storage_class_name = spec.storage_class_name
        await self.driver.write(volume_cfg_path(self.volume), encode_volume(volume))
        self._report(PROGRESS_DONE)
        return BackupResult(
            url=format_backup_url(spec.target, self.volume, c.backup_name),
            backup_name=c.backup_name,
            is_incremental=backup.is_incremental,
            blocks=len(blocks),
            blocks_read=self.blocks_read,
            blocks_uploaded=self.uploads,
            newly_uploaded_bytes=self.newly_uploaded,
            reuploaded_bytes=self.reuploaded,
        )

    async def _speculate(self) -> None:
        """Before the lock: is this the volume's first backup? Then blocks
        are compressed as soon as they are read. Only a hint (reads change
        nothing, and the plan made under the lock decides)."""
        try:
            volume = decode_volume(await self.driver.read(volume_cfg_path(self.volume)))
        except NotFound:
            self.speculative_method = self.c.compression
            return
        except (ImdError, msgspec.DecodeError, ValueError):
            return
        if not volume.last_backup_name or self.c.full_mode:
            self.speculative_method = volume.compression_method

    async def run(self) -> BackupResult:
        lock = FileLock(self.driver, self.volume, BACKUP_LOCK, self.options)
        try:
            await self._speculate()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._open_gate(lock))
                for _ in range(self.workers):
                    group.create_task(self._worker())
            return await self._commit()
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            if lock.acquired:
                await _shielded(lock.release())


async def create_backup(
    spec: BackupSpec,
    source: BlockSource,
    *,
    envs: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    options: StoreOptions | None = None,
    driver: Driver | None = None,
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
) -> BackupResult:
    """Back up ``source`` to ``spec.target``; returns the backup's URL and
    what it took. Bad input is InvalidArgument naming the field, before
    anything is read or written. ``driver`` (already open on the target)
    is for callers that hold one; it is not closed."""
    checked = _check(spec, source)
    options = options or StoreOptions()
    own = driver is None
    if driver is None:
        driver = await open_driver(spec.target, envs, options)
    try:
        return await _Run(spec, checked, source, driver, options, progress, prefetch_bytes).run()
    finally:
        if own:
            await driver.close()
