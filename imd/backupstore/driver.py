"""The one interface every backup target is reached through (Longhorn's
``BackupStoreDriver``, made async), and the opening of a driver for a
target URL.

Paths are relative to the target's root and use ``/`` (``backupstore/
volumes/...``). Errors are imd's: a missing file is ``NotFound``, a target
that cannot be reached ``Unavailable`` (with the reason), refused
credentials ``PermissionDenied``; messages never carry a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

import msgspec

from imd.backupstore.urls import NfsTarget, S3Target, VfsTarget, parse_target

Buffer = bytes | bytearray | memoryview


class FileInfo(msgspec.Struct, frozen=True):
    size: int
    mtime: datetime  # UTC; a lock's "server time"


class StoreOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How long to wait for a target, and Longhorn's lock timings (which
    must stay Longhorn's for the locks to mean the same to both)."""

    connect_timeout_s: float = 3.0  # a TCP/TLS connect; also bounds retries of a failing one
    request_timeout_s: float = 120.0  # one whole request (a block is 2 MiB)
    retry_window_s: float = 60.0  # how long a request failing for the server's reasons (5xx) is retried
    lock_wait_s: float = 2.0  # LOCK_CHECK_WAIT_TIME: between writing a lock and reading the others
    lock_refresh_s: float = 60.0  # LOCK_REFRESH_INTERVAL
    lock_expiry_s: float = 150.0  # LOCK_DURATION: a lock not refreshed for this long is ignored
    mount_timeout_s: float = 5.0  # one mount.nfs attempt


class Driver(Protocol):
    """A backup target's files."""

    @property
    def kind(self) -> str: ...

    @property
    def url(self) -> str:
        """The target as Longhorn's driver reports it (``GetURL``)."""
        ...

    async def read(self, path: str) -> Buffer:
        """The whole file (bytes, or a view of the client's buffer); NotFound
        if there is none."""
        ...

    async def write(self, path: str, data: Buffer) -> None:
        """Atomically: readers see the old file, or none, or all of the new."""
        ...

    async def listdir(self, path: str) -> list[str]:
        """Names directly under ``path`` (files and directories), like
        ``ls``; empty if ``path`` does not exist."""
        ...

    async def list_files(self, path: str) -> list[str]:
        """Every file below ``path``, relative to it, like ``find``."""
        ...

    async def remove(self, path: str) -> None:
        """``rm -rf``; nothing there is not an error."""
        ...

    async def remove_files(self, paths: list[str]) -> list[str]:
        """Remove these files (in batches where the target allows); returns
        the ones that could not be removed."""
        ...

    async def stat(self, path: str) -> FileInfo | None:
        """Size and modification time, or None if there is no such file."""
        ...

    async def close(self) -> None: ...


async def open_driver(
    target: str, envs: Mapping[str, str] | None = None, options: StoreOptions | None = None
) -> Driver:
    """A driver for ``target`` (a target or backup URL), checked: the target
    answers, with these credentials, before anything is written to it."""
    options = options or StoreOptions()
    parsed = parse_target(target)
    if isinstance(parsed, S3Target):
        from imd.backupstore.s3 import S3Driver

        return await S3Driver.open(parsed, envs or {}, options)
    if isinstance(parsed, VfsTarget):
        from imd.backupstore.vfs import VfsDriver

        return await VfsDriver.open(parsed)
    assert isinstance(parsed, NfsTarget)
    from imd.backupstore.nfs import open_nfs

    return await open_nfs(parsed, options)
