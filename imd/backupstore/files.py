"""A raw file as a ``BlockSource`` and as a ``BlockSink``.

The source skips holes of a sparse file without reading them
(``SEEK_DATA``), and, given the file the previous backup was made from,
tells which blocks changed (comparing the two, as Longhorn's test volume
does); the sink writes with ``pwrite``, punches holes for zeros, and
fsyncs at the end. Each call is one trip to a worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
from collections.abc import Iterable
from typing import Self

from imd.backupstore.seams import Buffer

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class _OpenFile:
    """A file descriptor held for the life of a source or sink, ``size``
    bytes long; closed by ``close`` or by leaving a ``with`` block."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileBlockSource(_OpenFile):
    """A snapshot that is a file. ``previous`` maps snapshot names to the
    files they were (for ``changed_blocks``)."""

    def __init__(self, path: str, *, previous: dict[str, str] | None = None) -> None:
        self.path = path
        self.previous = dict(previous or {})
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        super().__init__(fd, os.fstat(fd).st_size)

    def _read(self, offset: int, length: int) -> Buffer | None:
        try:
            data_at = os.lseek(self._fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                return None
            data_at = offset  # SEEK_DATA not supported: read
        if data_at >= offset + length:
            return None
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # past the end of the file: zeros, as in a volume
            data += bytes(length - len(data))
        return data

    async def read(self, offset: int, length: int) -> Buffer | None:
        return await asyncio.to_thread(self._read, offset, length)

    async def changed_blocks(self, since_snapshot: str, block_size: int) -> Iterable[int] | None:
        before = self.previous.get(since_snapshot)
        if before is None:
            return None
        return await asyncio.to_thread(_differing_blocks, self.path, before, block_size)


def _differing_blocks(path: str, before: str, block_size: int) -> list[int]:
    changed: list[int] = []
    with open(path, "rb") as a, open(before, "rb") as b:
        index = 0
        while True:
            x = a.read(block_size)
            y = b.read(block_size)
            if not x and not y:
                return changed
            if x != y:
                changed.append(index)
            index += 1


class FileBlockSink(_OpenFile):
    """A file to restore into, ``size`` bytes (created or truncated to it)."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            raise
        super().__init__(fd, size)

    def _write(self, offset: int, data: Buffer) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    async def write(self, offset: int, data: Buffer) -> None:
        await asyncio.to_thread(self._write, offset, data)

    def _zero(self, offset: int, length: int) -> None:
        try:
            _punch(self._fd, offset, length)  # a hole: reads as zeros, takes no space
        except OSError:
            self._write(offset, bytes(length))  # a filesystem that cannot punch

    async def write_zeroes(self, offset: int, length: int) -> None:
        await asyncio.to_thread(self._zero, offset, length)

    async def flush(self) -> None:
        await asyncio.to_thread(os.fsync, self._fd)


_fallocate = ctypes.CDLL(None, use_errno=True).fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def _punch(fd: int, offset: int, length: int) -> None:
    """fallocate(2) with FALLOC_FL_PUNCH_HOLE (os has no binding for it)."""
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
