"""Longhorn's backupstore file locks (``lock.go``), so that imd and
Longhorn's own tools never delete blocks a backup or restore is using.

A lock is a file ``locks/lock-<16 hex>.lck`` in the volume's directory
holding ``{"Name":...,"Type":N,"Acquired":bool}``. Backups and restores
take type 1, deletions type 2; locks of the same type share, of different
types exclude. To take one: write it, wait ``LOCK_CHECK_WAIT_TIME`` (2 s:
node clocks and the target's one-second file times may disagree), read
every lock of the volume, and give up (ABORTED) if one of another type,
not expired, ranks first: acquired before not acquired, then the older
file time, then the smaller name. Else mark it acquired, and rewrite it
every minute; a lock whose file is older than 150 s is dead.

imd keeps Longhorn's timings (``StoreOptions``): they are part of the
protocol, not tuning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime

from imd.backupstore.driver import Driver, StoreOptions
from imd.backupstore.format import LOCK_SUFFIX, LockFile, decode_lock, encode_lock, extract_names, lock_path, locks_dir
from imd.errors import Conflict, ImdError, NotFound

log = logging.getLogger("imd.backupstore")

BACKUP_LOCK = 1  # also RESTORE_LOCK
RESTORE_LOCK = 1
DELETION_LOCK = 2

_EPOCH = datetime(1, 1, 1, tzinfo=UTC)  # Go's zero time.Time


class _Seen:
    """A lock as read from the target, with its file time."""

    def __init__(self, lock: LockFile, server_time: datetime) -> None:
        self.name = lock.name
        self.type = lock.type
        self.acquired = lock.acquired
        self.server_time = server_time


def _ranks_first(a: _Seen, b: _Seen) -> bool:
    """``compareLocks(a, b) < 0``."""
    if a.acquired != b.acquired:
        return a.acquired
    if a.server_time != b.server_time:
        return a.server_time < b.server_time
    return a.name < b.name


def new_lock_name() -> str:
    """``util.GenerateName("lock")``."""
    return "lock-" + uuid.uuid4().hex[:16]


class FileLock:
    """One lock on one volume. ``async with`` takes and releases it."""

    def __init__(self, driver: Driver, volume: str, lock_type: int, options: StoreOptions | None = None) -> None:
        self.driver = driver
        self.volume = volume
        self.type = lock_type
        self.name = new_lock_name()
        self.options = options or StoreOptions()
        self.acquired = False
        self._refresher: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return lock_path(self.volume, self.name)

    async def _save(self) -> datetime:
        await self.driver.write(self.path, encode_lock(LockFile(self.name, self.type, self.acquired)))
        info = await self.driver.stat(self.path)
        return info.mtime if info is not None else _EPOCH

    async def _others(self) -> list[_Seen]:
        names = extract_names(await self.driver.listdir(locks_dir(self.volume)), "", LOCK_SUFFIX)
        seen = []
        for name in names:
            path = lock_path(self.volume, name)
            try:
                lock = decode_lock(await self.driver.read(path))
                info = await self.driver.stat(path)
            except NotFound:
                continue  # released meanwhile
            except (ValueError, ImdError) as exc:
                log.warning("unreadable lock %s on the backup target: %s", path, exc)
                continue
            seen.append(_Seen(lock, info.mtime if info is not None else _EPOCH))
        return seen

    async def acquire(self) -> None:
        """Take the lock, or raise Conflict naming the lock that holds it."""
        server_time = await self._save()
        try:
            await asyncio.sleep(self.options.lock_wait_s)
            me = _Seen(LockFile(self.name, self.type, False), server_time)
            now = datetime.now(UTC)
            for other in await self._others():
                expired = (now - other.server_time).total_seconds() > self.options.lock_expiry_s
                if other.type != self.type and _ranks_first(other, me) and not expired:
                    operation = "a deletion" if other.type == DELETION_LOCK else "a backup or restore"
                    raise Conflict(
                        f"volume {self.volume} on the backup target is locked by {operation} "
                        f"({other.name}); try again later"
                    )
            self.acquired = True
            await self._save()
        except BaseException:
            self.acquired = False
            await _shielded(self._remove())
            raise
        self._refresher = asyncio.create_task(self._refresh(), name=f"backupstore-lock-{self.name}")

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.options.lock_refresh_s)
            try:
                await self._save()
            except ImdError as exc:
                # Nothing else to do: the lock lives 2.5 refresh intervals.
                log.warning("cannot refresh lock %s on the backup target: %s", self.path, exc)

    async def _remove(self) -> None:
        try:
            await self.driver.remove(self.path)
        except ImdError as exc:
            log.warning("cannot remove lock %s from the backup target: %s", self.path, exc)

    async def release(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        self.acquired = False
        await self._remove()

    async def __aenter__(self) -> FileLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _shielded(self.release())


async def _shielded(coro: Awaitable[object], timeout: float = 30.0) -> None:
    """Run a clean-up to its end even if the caller is being cancelled
    (once more); bounded, so a dead target cannot hold a preemption."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        log.warning("backup target clean-up still running after %ss; left to finish", timeout)
    except asyncio.CancelledError:
        # Cancelled again while cleaning up: the clean-up goes on by itself.
        raise
