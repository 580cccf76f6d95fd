"""Writing a byte stream onto an attached namespace from Python: how a
downloaded backing image reaches its temporary head lvol.

SPDK has no RPC that writes data into a bdev, so the node serves the lvol
to itself over NVMe-oF (as a snapshot hash does) and writes through
spdk_ffi's Python tier: the stream is cut into chunks (1 MiB, the lvstore's
cluster), each chunk is copied into a DMA buffer and written with one large
I/O, ``depth`` of them in flight. A chunk of zeroes is not written at all:
the fresh thin lvol reads zeroes already, so a sparse image stays thin.

Cancellation is safe for the memory the core holds: an I/O in flight is
never cancelled (the core would still read its buffer), ``close`` waits
for the ones in flight and only then frees the buffers; a close that is
itself cancelled frees them when the last I/O ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from spdk_ffi.native import Io, IoKind

CHUNK = 1 << 20
DEPTH = 4


class Buffer(Protocol):
    """DMA memory as spdk_ffi.native.DmaBuffer gives it."""

    view: memoryview

    def free(self) -> None: ...


Alloc = Callable[[int], Buffer]
IoRunner = Callable[[Sequence[Any]], Awaitable[None]]


def dma_alloc(size: int) -> Buffer:
    from spdk_ffi.native import DmaBuffer

    return DmaBuffer(size)


class StreamWriter:
    """Writes what ``write`` is given, in order from LBA 0, through ``io``
    (an attached controller's batch I/O). ``finish`` writes the last,
    partial chunk (whole blocks) and flushes; ``close`` must follow, always."""

    def __init__(
        self,
        io: IoRunner,
        alloc: Alloc,
        *,
        block_size: int,
        chunk_bytes: int = CHUNK,
        depth: int = DEPTH,
        nsid: int = 1,
    ) -> None:
        if chunk_bytes % block_size:
            raise ValueError(f"chunk {chunk_bytes} is not a multiple of the block size {block_size}")
        self._io = io
        self._block = block_size
        self._chunk = chunk_bytes
        self._nsid = nsid
        self._stage = bytearray(chunk_bytes)
        self._zero = bytes(chunk_bytes)
        self._fill = 0
        self._free: list[Buffer] = []
        self._all: list[Buffer] = []
        try:
            for _ in range(depth):
                self._all.append(alloc(chunk_bytes))
        except BaseException:
            for buf in self._all:
                buf.free()
            raise
        self._free = list(self._all)
        self._inflight: deque[tuple[asyncio.Task[None], Buffer]] = deque()
        self.offset = 0  # bytes of the stream placed on the namespace so far
        self.written = 0  # of which written (the rest were zero chunks, skipped)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            n = min(len(view) - pos, self._chunk - self._fill)
            self._stage[self._fill : self._fill + n] = view[pos : pos + n]
            self._fill += n
            pos += n
            if self._fill == self._chunk:
                await self._put()

    async def finish(self) -> None:
        """Write what is staged (a whole number of blocks), wait for every
        write, then flush the namespace's write cache."""
        if self._fill:
            if self._fill % self._block:
                raise ValueError(f"{self.offset + self._fill} bytes is not a whole number of {self._block}-byte blocks")
            await self._put()
        while self._inflight:
            task, buf = self._inflight.popleft()
            await asyncio.shield(task)
            self._free.append(buf)
        await self._io([Io(IoKind.FLUSH, self._nsid)])

    async def _put(self) -> None:
        n, lba = self._fill, self.offset // self._block
        zero = self._stage == self._zero if n == self._chunk else self._stage[:n] == self._zero[:n]
        if not zero:
            buf = await self._buffer()
            buf.view[:n] = self._stage[:n]
            task = asyncio.ensure_future(self._io([Io(IoKind.WRITE, self._nsid, lba, n // self._block, buf)]))
            self._inflight.append((task, buf))
            self.written += n
        self.offset += n
        self._fill = 0

    async def _buffer(self) -> Buffer:
        if self._free:
            return self._free.pop()
        task, buf = self._inflight.popleft()
        try:
            await asyncio.shield(task)  # a failed write fails the stream here
        finally:
            if task.done():
                self._free.append(buf)
            else:
                self._inflight.appendleft((task, buf))  # we were cancelled: it is still the core's
        return self._free.pop()

    async def close(self) -> None:
        """Wait for the writes in flight (their errors are the stream's, seen
        already or not wanted), then free the buffers."""
        tasks = [task for task, _ in self._inflight]
        buffers = list(self._all)
        self._all.clear()
        self._inflight.clear()

        def free(_: object = None) -> None:
            for buf in buffers:
                buf.free()

        if not tasks:
            free()
            return
        waiting = asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            waiting.add_done_callback(free)
            raise
        free()
