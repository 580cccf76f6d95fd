"""Large reads and writes from Python, for backups and restores: one call
per backup block (2 MiB by default), never per 4 KiB block.

* ``read(controller, offset, length)`` reads a namespace of an attached
  controller (a snapshot served by its replica's node) into DMA memory
  and hands back a copy (``bytes``), with ``zero`` set when every byte is
  zero (one memcmp against a zero block, so that the caller skips the
  block without looking at it again).
* ``mirror_read``/``mirror_write``/``mirror_write_zeroes``/``mirror_flush``
  go through an engine's mirror, as a host's I/O would: a write reaches
  every RW and WO replica, a failing replica leaves the mirror.

Each call is one request to the core's poller (the NVMe driver splits a
large command at the transport's limit); DMA buffers come from a small
pool, at most ``max_in_flight`` calls run at once (the others wait), and a
caller cancelled while its command runs returns at once: the buffer goes
back to the pool when the poller is done with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgspec

from spdk_ffi.errors import InvalidOptions
from spdk_ffi.native import DmaBuffer, Io, IoKind, NativeBackend, NativeController

try:
    from spdk_ffi._core import ffi  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised where the core is absent
    ffi = None

Buffer = bytes | bytearray | memoryview
DEFAULT_MAX_IN_FLIGHT = 8
MAX_IO_BYTES = 16 << 20


class Block(msgspec.Struct, frozen=True):
    """What a read found: the bytes, and whether they are all zero."""

    data: bytes
    zero: bool


class BlockIo(Protocol):
    async def read(self, controller: Any, offset: int, length: int) -> Block: ...

    async def mirror_read(self, mirror: Any, offset: int, length: int) -> Block: ...

    async def mirror_write(self, mirror: Any, offset: int, data: Buffer) -> None: ...

    async def mirror_write_zeroes(self, mirror: Any, offset: int, length: int) -> None: ...

    async def mirror_flush(self, mirror: Any) -> None: ...


_zeros: dict[int, bytes] = {}


def _zero_block(length: int) -> bytes:
    zero = _zeros.get(length)
    if zero is None:
        zero = _zeros[length] = bytes(length)
    return zero


class NativeBlockIo:
    """``BlockIo`` over a NativeBackend's core (and its NativeMirrors)."""

    def __init__(self, backend: NativeBackend, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._backend = backend
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight > 0 else None
        self._free: dict[int, list[DmaBuffer]] = {}
        self._keep = max_in_flight

    # -- buffers -----------------------------------------------------------------------------

    def _take(self, size: int) -> DmaBuffer:
        pool = self._free.get(size)
        if pool:
            return pool.pop()
        return DmaBuffer(size)

    def _give(self, buf: DmaBuffer) -> None:
        pool = self._free.setdefault(buf.size, [])
        if len(pool) < self._keep:
            pool.append(buf)
        else:
            buf.free()

    async def _run(self, buf: DmaBuffer | None, work: Coroutine[Any, Any, None], after: Callable[[], Any]) -> Any:
        """Run ``work`` (one request to the core); ``after()`` reads the
        buffer once it is back. A cancelled caller returns at once; the
        buffer returns to the pool when the poller is done with it."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if buf is not None:
                task.add_done_callback(lambda t: self._returned(t, buf))
            raise
        except BaseException:
            if buf is not None:
                self._give(buf)
            raise
        try:
            return after()
        finally:
            if buf is not None:
                self._give(buf)

    def _returned(self, task: asyncio.Future[None], buf: DmaBuffer) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: nobody waits for it any more
        self._give(buf)

    @staticmethod
    def _check(offset: int, length: int, block_size: int) -> tuple[int, int]:
        if offset % block_size or length % block_size or not 0 < length <= MAX_IO_BYTES:
            raise InvalidOptions(
                f"I/O at {offset}+{length}: multiples of the block size {block_size}, at most {MAX_IO_BYTES} bytes"
            )
        return offset // block_size, length // block_size

    @staticmethod
    def _block(buf: DmaBuffer, length: int) -> Block:
        data = bytes(buf.view[:length])
        return Block(data, data == _zero_block(length))

    # -- controllers ---------------------------------------------------------------------------

    async def read(self, controller: NativeController, offset: int, length: int, nsid: int = 1) -> Block:
        namespaces = self._backend.namespaces(controller)
        ns = next((n for n in namespaces if n.nsid == nsid), None)
        if ns is None:
            raise InvalidOptions(f"the controller has no namespace {nsid}")
        lba, nblocks = self._check(offset, length, ns.block_size)
        async with self._slot():
            buf = self._take(length)
            io = Io(IoKind.READ, nsid, lba, nblocks, buf)
            result: Block = await self._run(buf, self._backend.io(controller, [io]), lambda: self._block(buf, length))
            return result

    # -- mirrors -----------------------------------------------------------------------------

    async def mirror_read(self, mirror: Any, offset: int, length: int) -> Block:
        lba, nblocks = self._check(offset, length, mirror.block_size)
        async with self._slot():
            buf = self._take(length)
            io = Io(IoKind.READ, 1, lba, nblocks, buf)
            result: Block = await self._run(buf, mirror.io([io]), lambda: self._block(buf, length))
            return result

    async def mirror_write(self, mirror: Any, offset: int, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        length = view.nbytes
        lba, nblocks = self._check(offset, length, mirror.block_size)
        async with self._slot():
            buf = self._take(length)
            buf.view[:length] = view
            io = Io(IoKind.WRITE, 1, lba, nblocks, buf)
            await self._run(buf, mirror.io([io]), lambda: None)

    async def mirror_write_zeroes(self, mirror: Any, offset: int, length: int) -> None:
        lba, nblocks = self._check(offset, length, mirror.block_size)
        if nblocks > 65536:  # NVMe write zeroes: a 16-bit block count
            raise InvalidOptions(f"write zeroes of {nblocks} blocks: at most 65536 at once")
        async with self._slot():
            await self._run(None, mirror.io([Io(IoKind.WRITE_ZEROES, 1, lba, nblocks)]), lambda: None)

    async def mirror_flush(self, mirror: Any) -> None:
        async with self._slot():
            await self._run(None, mirror.io([Io(IoKind.FLUSH, 1)]), lambda: None)

    def _slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._slots if self._slots is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Free the pooled buffers (those still in flight return and are kept)."""
        for pool in self._free.values():
            for buf in pool:
                buf.free()
        self._free.clear()
