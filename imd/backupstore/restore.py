"""Restoring a backup into a volume: Longhorn's ``RestoreDeltaBlockBackup``
and, given the backup the volume already holds, its
``RestoreDeltaBlockBackupIncrementally``.

Every block is verified: decompressed and hashed against the checksum
that names it. A block that is missing or does not verify fails the
restore with DATA_LOSS naming the block and its offset; nothing is
written in its place. Before the volume is touched, every block the
restore needs is looked up in one listing of the volume's blocks, so a
backup with a missing block fails without writing anything. The ranges
no block covers are zeroed (the sink may hold older data).

An incremental restore (``last_backup``: the backup the sink holds now,
as Longhorn's DR volumes do) writes only the blocks whose checksum
differs between the two maps, and zeroes those the new backup no longer
has.

The volume's restore lock (type 1, shared with backups; it keeps
deletions out) is taken as Longhorn takes it, including its 2 s wait;
the blocks are read during that wait, because reading cannot harm
anything and each block is verified by its checksum. The restore only
succeeds once the lock is held: if a deletion holds the volume, the
restore fails with ABORTED, as Longhorn's would, even if its blocks were
all read.

Cancelling the task stops the restore within one block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import msgspec

from imd.backupstore import workers
from imd.backupstore.backup import DEFAULT_CONCURRENT_LIMIT, first_error, load_backup, load_volume
from imd.backupstore.compress import CorruptBlock, decompress_and_verify
from imd.backupstore.driver import Driver, StoreOptions, open_driver
from imd.backupstore.format import (
    BLOCK_SUFFIX,
    PROGRESS_BLOCKS,
    PROGRESS_DONE,
    BackupConfig,
    block_path,
    block_size_of,
    blocks_dir,
    check_name,
)
from imd.backupstore.locks import RESTORE_LOCK, FileLock, _shielded
from imd.backupstore.seams import BlockSink, Buffer, Progress, ProgressCallback
from imd.backupstore.urls import parse_backup_url
from imd.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("imd.backupstore")

# Longhorn retries a block read that failed for another reason than its
# checksum (retryWithBackoff); imd waits less: a restore preempted or
# failed is retried by the manager.
READ_RETRY_DELAYS = (1.0, 5.0)


class RestoreResult(msgspec.Struct, frozen=True, kw_only=True):
    backup_name: str
    volume_name: str
    volume_size: int
    is_incremental: bool
    blocks_written: int
    bytes_zeroed: int
    bytes_downloaded: int


class _Work(msgspec.Struct, frozen=True):
    writes: list[tuple[int, str]]  # (offset, checksum)
    zero_ranges: list[tuple[int, int]]  # (offset, length), coalesced


def _coalesce(offsets: list[int], size: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for offset in sorted(offsets):
        if ranges and ranges[-1][0] + ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + size)
        else:
            ranges.append((offset, size))
    return ranges


def _full_work(backup: BackupConfig, volume_size: int, block_size: int) -> _Work:
    covered = {b.offset for b in backup.blocks}
    gaps = [o for o in range(0, volume_size, block_size) if o not in covered]
    return _Work(writes=[(b.offset, b.block_checksum) for b in backup.blocks], zero_ranges=_coalesce(gaps, block_size))


def _incremental_work(last: BackupConfig, backup: BackupConfig, block_size: int) -> _Work:
    """``populateBlocksForIncrementalRestore``: the new backup's blocks that
    differ, and zeros where the last one had a block the new one does not."""
    before = {b.offset: b.block_checksum for b in last.blocks}
    after = {b.offset: b.block_checksum for b in backup.blocks}
    writes = [(o, c) for o, c in sorted(after.items()) if before.get(o) != c]
    gone = [o for o in before if o not in after]
    return _Work(writes=writes, zero_ranges=_coalesce(gone, block_size))


class _Run:
    def __init__(
        self,
        driver: Driver,
        sink: BlockSink,
        volume: str,
        backup: BackupConfig,
        work: _Work,
        block_size: int,
        concurrent_limit: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.driver = driver
        self.sink = sink
        self.volume = volume
        self.backup = backup
        self.work = work
        self.block_size = block_size
        self.limit = concurrent_limit
        self.on_progress = progress
        self.next = 0
        self.done = 0
        self.total = len(work.writes) + len(work.zero_ranges)
        self.downloaded = 0

    def _report(self, percent: int | None = None) -> None:
        if self.on_progress is None:
            return
        if percent is None:
            percent = min(PROGRESS_BLOCKS, self.done * PROGRESS_BLOCKS // max(self.total, 1))
        self.on_progress(
            Progress(percent=percent, blocks_done=self.done, blocks_total=self.total, bytes_transferred=self.downloaded)
        )

    async def _fetch(self, path: str) -> Buffer:
        for delay in (*READ_RETRY_DELAYS, None):
            try:
                return await self.driver.read(path)
            except Unavailable as exc:
                if delay is None:
                    raise
                log.warning("reading %s failed, retrying in %ss: %s", path, delay, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _restore_block(self, offset: int, digest: str) -> None:
        path = block_path(self.volume, digest)
        try:
            blob = await self._fetch(path)
        except NotFound:
            raise DataLoss(f"block {path} (offset {offset}) is missing from the backup target") from None
        self.downloaded += len(blob)
        try:
            data = await workers.run(
                decompress_and_verify, self.backup.compression_method, blob, digest, self.block_size
            )
        except CorruptBlock as exc:
            raise DataLoss(f"block {path} (offset {offset}) is corrupt: {exc}") from None
        del blob
        await self.sink.write(offset, data)

    async def _worker(self) -> None:
        writes = self.work.writes
        while self.next < len(writes):
            offset, digest = writes[self.next]
            self.next += 1
            await self._restore_block(offset, digest)
            self.done += 1
            self._report()

    async def run(self) -> None:
        for offset, length in self.work.zero_ranges:
            await self.sink.write_zeroes(offset, length)
            self.done += 1
        async with asyncio.TaskGroup() as group:
            for _ in range(self.limit):
                group.create_task(self._worker())


async def _check_blocks_present(driver: Driver, volume: str, work: _Work) -> None:
    names = await driver.list_files(blocks_dir(volume))
    present = {n.rsplit("/", 1)[-1].removesuffix(BLOCK_SUFFIX) for n in names if n.endswith(BLOCK_SUFFIX)}
    for offset, digest in work.writes:
        if digest not in present:
            raise DataLoss(f"block {block_path(volume, digest)} (offset {offset}) is missing from the backup target")


async def restore(
    backup_url: str,
    sink: BlockSink,
    *,
    envs: Mapping[str, str] | None = None,
    concurrent_limit: int = DEFAULT_CONCURRENT_LIMIT,
    last_backup: str = "",
    progress: ProgressCallback | None = None,
    options: StoreOptions | None = None,
    driver: Driver | None = None,
) -> RestoreResult:
    """Restore the backup ``backup_url`` names into ``sink`` (at least the
    volume's size). ``last_backup``: the name of the backup of the same
    volume that ``sink`` holds now, for an incremental restore."""
    ref = parse_backup_url(backup_url)
    if last_backup:
        check_name(last_backup, "last_backup")
    if concurrent_limit < 0:
        raise InvalidArgument(f"{concurrent_limit} is negative", field="concurrent_limit")
    limit = concurrent_limit or DEFAULT_CONCURRENT_LIMIT
    options = options or StoreOptions()
    own = driver is None
    if driver is None:
        driver = await open_driver(ref.target, envs, options)
    lock = FileLock(driver, ref.volume, RESTORE_LOCK, options)
    lock_task = asyncio.create_task(lock.acquire(), name=f"backupstore-restore-lock-{ref.volume}")
    try:
        try:
            result = await _restore(driver, ref.volume, ref.backup, sink, last_backup, limit, progress)
        except asyncio.CancelledError:
            lock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await _shielded(lock_task)
            raise
        except Exception:
            # A deletion holding the volume explains missing blocks better
            # than the blocks do: wait for the lock's answer (at most its wait).
            try:
                await lock_task
            except Exception as lock_error:
                raise lock_error from None
            raise
        await lock_task  # success counts only under the lock
        await sink.flush()
        if progress is not None:
            progress(
                Progress(
                    percent=PROGRESS_DONE,
                    blocks_done=result.blocks_written,
                    blocks_total=result.blocks_written,
                    bytes_transferred=result.bytes_downloaded,
                )
            )
        return result
    finally:
        if lock.acquired:
            await _shielded(lock.release())
        if own:
            await driver.close()


async def _restore(
    driver: Driver,
    volume_name: str,
    backup_name: str,
    sink: BlockSink,
    last_backup: str,
    limit: int,
    progress: ProgressCallback | None,
) -> RestoreResult:
    try:
        volume = await load_volume(driver, volume_name)
        backup = await load_backup(driver, volume_name, backup_name)
    except NotFound as exc:
        raise NotFound(str(exc).split(": ", 1)[-1], field="backup_url") from None
    if backup.in_progress:
        raise FailedPrecondition(f"backup {backup_name} is still in progress", field="backup_url")
    block_size = block_size_of(backup.parameters)
    if volume.size <= 0 or volume.size % block_size:
        raise DataLoss(f"volume {volume_name}: size {volume.size} is not a multiple of the block size {block_size}")
    if sink.size < volume.size:
        raise FailedPrecondition(
            f"the volume to restore into has {sink.size} bytes, the backup's volume {volume.size}", field="size"
        )
    if last_backup:
        try:
            last = await load_backup(driver, volume_name, last_backup)
        except NotFound as exc:
            raise NotFound(str(exc).split(": ", 1)[-1], field="last_backup") from None
        if block_size_of(last.parameters) != block_size:
            raise FailedPrecondition(
                f"backup {last_backup} has block size {block_size_of(last.parameters)}, {backup_name} {block_size}",
                field="last_backup",
            )
        work = _incremental_work(last, backup, block_size)
    else:
        work = _full_work(backup, volume.size, block_size)
    await _check_blocks_present(driver, volume_name, work)
    run = _Run(driver, sink, volume_name, backup, work, block_size, limit, progress)
    try:
        await run.run()
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return RestoreResult(
        backup_name=backup_name,
        volume_name=volume_name,
        volume_size=volume.size,
        is_incremental=bool(last_backup),
        blocks_written=len(work.writes),
        bytes_zeroed=sum(length for _o, length in work.zero_ranges),
        bytes_downloaded=run.downloaded,
    )
