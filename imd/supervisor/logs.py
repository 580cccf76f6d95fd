"""Per-process log files: where they live, how they are read, rotated and
kept for a while after their process is gone.

Children write to ``<logs_dir>/<name>.log`` themselves (O_APPEND), so the
daemon never sits in the data path. That decides the rotation scheme:
rename-based rotation would leave the child writing into the renamed file,
so rotation is copy-then-truncate (logrotate's ``copytruncate``). Lines
written between the copy and the truncate can be lost; that window is one
file copy long and the price of never interrupting a child.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from imd.errors import NotFound, ResourceExhausted
from imd.supervisor.resources import DESCRIPTORS

_CHUNK = 256 * 1024


class LogStore:
    def __init__(
        self,
        logs_dir: Path,
        *,
        max_bytes: int,
        keep: int,
        retention_s: float,
        follow_poll_s: float = 0.2,
    ) -> None:
        self.logs_dir = logs_dir
        self.max_bytes = max_bytes
        self.keep = keep
        self.retention_s = retention_s
        self.follow_poll_s = follow_poll_s
        # name -> monotonic time its process was removed; their logs stay
        # readable until retention_s has passed.
        self._deleted: dict[str, float] = {}

    def path_for(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def prepare(self, name: str) -> Path:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._deleted.pop(name, None)
        return self.path_for(name)

    def mark_deleted(self, name: str) -> None:
        self._deleted[name] = time.monotonic()

    def readable_after_delete(self, name: str) -> Path:
        """The log of a process removed less than ``retention_s`` ago."""
        if name in self._deleted and self.path_for(name).exists():
            return self.path_for(name)
        raise NotFound(f"cannot find process {name}", field="name")

    async def lines(self, path: Path, *, follow: bool, until: Sequence[asyncio.Future[Any]] = ()) -> AsyncIterator[str]:
        """Yield the file's lines (without newline), from the start.

        Lines of any length come out whole: the file is read in chunks and
        split here rather than with readline, so a 100 KiB line costs one
        thread hop, not one per buffer. With ``follow``, keep going as the
        file grows (and start over if rotation truncated it) until one of
        ``until`` completes; then flush what is left and stop.
        """
        try:
            log = await aiofiles.open(path, "rb")
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise ResourceExhausted(
                    f"cannot open the log of {path.stem}: {exc.strerror}", resource=DESCRIPTORS
                ) from exc
            raise
        try:
            pending = b""
            offset = 0
            while True:
                chunk = await log.read(_CHUNK)
                if chunk:
                    offset += len(chunk)
                    *complete, pending = (pending + chunk).split(b"\n")
                    for line in complete:
                        yield line.decode("utf-8", "replace")
                    continue
                if not follow or any(f.done() for f in until):
                    break
                await _wait(until, self.follow_poll_s)
                size = await _size(path)
                if size < offset:  # truncated by rotation: start over
                    await log.seek(0)
                    offset = 0
                    pending = b""
            if pending:
                yield pending.decode("utf-8", "replace")
        finally:
            await log.close()

    def rotate_if_needed(self, name: str) -> bool:
        """Copy-truncate ``name``'s log if it outgrew ``max_bytes``. Blocking:
        call it in a worker thread."""
        path = self.path_for(name)
        try:
            if path.stat().st_size <= self.max_bytes:
                return False
        except FileNotFoundError:
            return False
        if self.keep <= 0:
            os.truncate(path, 0)
            return True
        for i in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{i + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
        return True

    def expire_deleted(self) -> list[str]:
        """Remove logs of processes deleted more than ``retention_s`` ago."""
        now = time.monotonic()
        expired = [n for n, t in self._deleted.items() if now - t >= self.retention_s]
        for name in expired:
            del self._deleted[name]
            path = self.path_for(name)
            for candidate in [path, *(path.with_name(f"{path.name}.{i}") for i in range(1, self.keep + 1))]:
                candidate.unlink(missing_ok=True)
        return expired


async def _size(path: Path) -> int:
    try:
        return (await aiofiles.os.stat(path)).st_size
    except FileNotFoundError:
        return 0


async def _wait(until: Sequence[asyncio.Future[Any]], timeout: float) -> None:
    if until:
        await asyncio.wait(until, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    else:
        await asyncio.sleep(timeout)
