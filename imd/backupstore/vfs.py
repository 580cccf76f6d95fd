"""``vfs://``: a backup target on a mounted filesystem (and, under it, the
``nfs://`` driver's mount point).

As Longhorn's ``fsops``: a write goes to ``<file>.tmp.<nanoseconds>`` and
is renamed over the file, so a reader sees the old file or the whole new
one; a remove also removes the directories it leaves empty, up to the
``backupstore`` directory. Unlike Longhorn, a write is fsynced before the
rename, and a config file's directory after it: once a backup is listed,
its blocks are on the target's disk, not in a page cache a crash can
lose. Each operation is one trip to a worker thread (a block write is
open, write, fsync, rename: one hop rather than four).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import time
from datetime import UTC, datetime

from imd.backupstore.driver import Buffer, FileInfo
from imd.backupstore.format import BASE, CFG_SUFFIX
from imd.backupstore.urls import VfsTarget
from imd.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable

MAX_CLEANUP_LEVELS = 10


def _os_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{what}: {exc.strerror}", resource="backup target")
    return Unavailable(f"backup target: {what}: {exc.strerror or exc}")


class VfsDriver:
    def __init__(self, root: str, url: str, kind: str = "vfs") -> None:
        self.root = root
        self._url = url
        self._kind = kind

    @classmethod
    async def open(cls, target: VfsTarget) -> VfsDriver:
        # Longhorn would create the directory; imd refuses, so that a target
        # whose filesystem is not mounted is not silently filled in on the
        # node's root filesystem.
        if not await asyncio.to_thread(os.path.isdir, target.path):
            raise FailedPrecondition(f"{target.path} does not exist or is not a directory", field="backup_target")
        return cls(target.path, target.url)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def url(self) -> str:
        return self._url

    def local(self, path: str) -> str:
        return os.path.join(self.root, path)

    async def read(self, path: str) -> Buffer:
        try:
            return await asyncio.to_thread(_read, self.local(path))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{path}: no such file on the backup target") from None
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from None

    async def write(self, path: str, data: Buffer) -> None:
        try:
            await asyncio.to_thread(_write, self.local(path), data, path.endswith(CFG_SUFFIX))
        except OSError as exc:
            raise _os_error(exc, f"writing {path}") from None

    async def listdir(self, path: str) -> list[str]:
        try:
            return await asyncio.to_thread(_listdir, self.local(path))
        except OSError as exc:
            raise _os_error(exc, f"listing {path}") from None

    async def list_files(self, path: str) -> list[str]:
        try:
            return await asyncio.to_thread(_walk, self.local(path))
        except OSError as exc:
            raise _os_error(exc, f"listing {path}") from None

    async def remove(self, path: str) -> None:
        try:
            await asyncio.to_thread(_remove, self.local(path))
        except OSError as exc:
            raise _os_error(exc, f"removing {path}") from None

    async def remove_files(self, paths: list[str]) -> list[str]:
        return await asyncio.to_thread(_remove_all, [self.local(p) for p in paths], paths)

    async def stat(self, path: str) -> FileInfo | None:
        try:
            return await asyncio.to_thread(_stat, self.local(path))
        except OSError as exc:
            raise _os_error(exc, f"stat {path}") from None

    async def close(self) -> None:
        return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: Buffer, sync_dir: bool) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    while True:
        tmp = f"{path}.tmp.{time.time_ns()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        break
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if sync_dir:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _walk(path: str) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        for name in files:
            found.append(name if rel == "." else f"{rel}/{name}")
    return found


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    directory = path
    for _ in range(MAX_CLEANUP_LEVELS):
        directory = os.path.dirname(directory)
        if directory.endswith(BASE) or directory in ("", "/"):
            break
        try:
            os.rmdir(directory)
        except OSError:
            break


def _remove_all(local: list[str], paths: list[str]) -> list[str]:
    failed = []
    for path, name in zip(local, paths, strict=True):
        try:
            _remove(path)
        except OSError:
            failed.append(name)
    return failed


def _stat(path: str) -> FileInfo | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not os.path.isfile(path):
        return None
    return FileInfo(size=st.st_size, mtime=datetime.fromtimestamp(st.st_mtime, UTC))
