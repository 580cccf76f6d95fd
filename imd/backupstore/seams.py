"""The seams between the format and whatever holds the volume's data: a
snapshot to back up (``BlockSource``), a volume to restore into
(``BlockSink``), and the progress both report.

Data engine V2 implements them over spdk_ffi's C core (a snapshot lvol
read through a replica); ``imd.backupstore.files`` over a raw file, for
tests, the bench, and anything that backs up an image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec

Buffer = bytes | bytearray | memoryview


class BlockSource(Protocol):
    """A snapshot, read block by block. Reads may run concurrently (up to
    the backup's ``concurrent_limit``); a buffer returned belongs to the
    caller until it is dropped."""

    @property
    def size(self) -> int:
        """The snapshot's size in bytes (the volume's size)."""
        ...

    async def read(self, offset: int, length: int) -> Buffer | None:
        """``length`` bytes at ``offset``, or None when the source knows the
        range holds only zeros (not allocated): it is then not read, hashed
        or stored. Zeros returned as data are detected and skipped too."""
        ...

    async def changed_blocks(self, since_snapshot: str, block_size: int) -> Iterable[int] | None:
        """The indices of the blocks (of ``block_size``) that may differ
        from snapshot ``since_snapshot``, which the previous backup of this
        volume was made from; None if the source cannot tell (every block is
        then read, and only the blocks the target lacks are uploaded)."""
        ...


class BlockSink(Protocol):
    """A volume being restored. Writes may run concurrently, never to
    overlapping ranges."""

    @property
    def size(self) -> int: ...

    async def write(self, offset: int, data: Buffer) -> None: ...

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``length`` bytes at ``offset`` read as zeros (unmap, punch)."""
        ...

    async def flush(self) -> None:
        """Everything written is durable (called once, at the end)."""
        ...


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """Where an operation stands. ``percent`` is Longhorn's: blocks count
    up to 95, the final config writes make 100."""

    percent: int
    blocks_done: int
    blocks_total: int
    bytes_transferred: int  # uploaded (backup) or downloaded (restore), as stored


ProgressCallback = Callable[[Progress], None]
