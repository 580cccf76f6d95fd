"""The native backend: SPDK's NVMe driver on the C core's poller thread.

``NativeCore`` is the process's one SPDK environment. It hands requests to
the poller through the submission ring and turns the completion eventfd
into asyncio: one ``add_reader`` callback reaps every finished request in a
batch and resolves its future. A request's memory (and the buffers it
points at) stay referenced here until the poller is done with them, even if
the coroutine that submitted it was cancelled.

``NativeBackend`` implements the registry's Backend interface on top of it,
including multipath: a controller is one driver connection per path. I/O
goes to a path chosen by the policy (failover: the first live path;
round_robin: each batch to the next). When a path dies, the I/Os it failed
with a path-level status are resubmitted on a live path, so the caller sees
no error while one is left. Dead paths are reconnected every
``reconnect_delay_sec``; when every path has been down for
``ctrlr_loss_timeout_sec`` the controller is failed (the registry then
frees the name on the next attach or sweep), and I/O waiting for a path
fails after ``fast_io_fail_timeout_sec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from spdk_ffi.errors import AttachTimeout, InvalidOptions, NvmeError
from spdk_ffi.model import ControllerOpts, MultipathPolicy, Namespace, Path, PathState

try:
    from spdk_ffi._core import ffi, lib  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised where the core is absent
    ffi = lib = None

log = logging.getLogger("spdk_ffi.native")

# Generic status codes that mean "this path failed", not "this I/O failed".
_SCT_GENERIC, _SCT_PATH = 0, 3
_SC_ABORTED_SQ_DELETION = 0x08
_PATH_ERRNOS = {errno.ENXIO, errno.ENODEV, errno.ECONNRESET, errno.EPIPE}
# Finished IMDN_IO requests kept for reuse, and the smallest I/O array one gets.
_IO_POOL_SIZE = 64
_IO_POOL_MIN_BATCH = 8


class IoError(NvmeError):
    """An I/O failed with an NVMe status (or a submission errno) on ``path``."""

    def __init__(self, index: int, sct: int, sc: int, err: int, path: Path | None) -> None:
        self.index, self.sct, self.sc, self.path = index, sct, sc, path
        self.err = err  # the submission errno; 0 when the NVMe status says it
        what = f"NVMe status sct={sct:#x} sc={sc:#x}" if err == 0 else "submission failed"
        super().__init__(err or errno.EIO, f"I/O {index} failed: {what} on {path}")


class IoKind(enum.IntEnum):
    READ = 0
    WRITE = 1
    FLUSH = 2
    WRITE_ZEROES = 3


class DmaBuffer:
    """DMA-able memory from SPDK's allocator, exposed as a memoryview."""

    def __init__(self, size: int, align: int = 4096) -> None:
        _require_core()
        self.size = size
        self.ptr = lib.imdn_dma_alloc(size, align)
        if self.ptr == ffi.NULL:
            raise MemoryError(f"cannot allocate {size} bytes of DMA memory")
        self.view = memoryview(ffi.buffer(self.ptr, size))

    def free(self) -> None:
        if self.ptr is not None:
            self.view.release()
            lib.imdn_dma_free(self.ptr)
            self.ptr = None


class Io(msgspec.Struct):
    kind: int
    nsid: int
    lba: int = 0
    nblocks: int = 0
    buf: Any = None  # a DmaBuffer for reads and writes
    offset: int = 0  # byte offset into buf


class IoBatch:
    """I/Os laid out once in C memory, to be submitted again and again: the
    Python tier's fast path (``NativeBackend.run``).

    ``NativeBackend.io`` copies every I/O into a C array on every call, six
    cffi stores per I/O, which at a batch of 8 cost more than the rest of
    the submission together. A batch is built once from ``Io`` templates
    and changed in place between runs: ``batch.entries[i].lba = lba``
    (likewise ``kind``, ``nsid``, ``nblocks``). Buffers and offsets stay as
    built; the batch holds them. One run at a time: a batch whose run was
    cancelled is in flight until the poller is done with it.
    """

    def __init__(self, core: NativeCore, ios: Sequence[Io]) -> None:
        if not ios:
            raise InvalidOptions("an I/O batch needs at least one I/O")
        self.ios = list(ios)
        self.entries = ffi.new("struct imdn_io[]", len(self.ios))
        for entry, io in zip(self.entries, self.ios, strict=True):
            entry.kind, entry.nsid, entry.lba, entry.nblocks = io.kind, io.nsid, io.lba, io.nblocks
            entry.buf = ffi.NULL if io.buf is None else io.buf.ptr + io.offset
        self.req = core.new_request(lib.IMDN_IO)
        self.req.ios = self.entries
        self.req.num_ios = len(self.ios)

    def __len__(self) -> int:
        return len(self.ios)

    def as_ios(self, indexes: Sequence[int]) -> list[Io]:
        """The I/Os at ``indexes`` as they are now (for the general path)."""
        out = []
        for i in indexes:
            e, io = self.entries[i], self.ios[i]
            out.append(Io(e.kind, e.nsid, e.lba, e.nblocks, io.buf, io.offset))
        return out


def _require_core() -> None:
    if lib is None:
        from spdk_ffi import UNAVAILABLE
        from spdk_ffi.errors import SpdkUnavailable

        raise SpdkUnavailable(UNAVAILABLE)


async def probe_tcp(path: Path, timeout: float) -> None:
    """Fail unless ``path``'s address accepts a TCP connection within
    ``timeout`` seconds.

    Why: SPDK v24.01's posix sock layer connects with a blocking connect()
    (module/sock/posix, then O_NONBLOCK), and the core runs it on its one
    poller thread. To a peer that is gone silently (power loss, partition:
    no RST, no ICMP) that connect waits for the kernel's SYN retries, about
    two minutes, and every engine's I/O on this core waits with it: a
    reconnect to a partitioned replica froze the engine again after the
    replica had been failed. So an attach first proves, here on the loop,
    that the peer answers; only then does the poller connect. (A peer that
    goes silent between the two is still possible, in a window of
    milliseconds instead of every reconnect.)"""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(path.traddr, int(path.trsvcid))
    except TimeoutError:
        raise AttachTimeout(f"no controller at {path} within {timeout:g}s (no TCP answer)") from None
    except OSError as exc:
        err = exc.errno or errno.ECONNREFUSED
        raise NvmeError(-err, f"cannot connect to {path}: {exc.strerror or exc}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class NativeCore:
    """The process's SPDK environment and poller thread (once per process)."""

    _instance: NativeCore | None = None

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Any, asyncio.Future[Any], tuple[Any, ...]]] = {}
        self._out = ffi.new("struct imdn_req *[256]")
        self._events = ffi.new("struct imdn_event[64]")
        # Event receivers by cookie (a mirror's); called on the loop.
        self._listeners: dict[int, Callable[[Any], None]] = {}
        self._cookies = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io_pool: list[tuple[Any, Any]] = []  # finished IMDN_IO requests with their I/O arrays
        self.ticks = 0

    @classmethod
    def start(
        cls,
        *,
        core_mask: str = "0x2",
        mem_size_mb: int = 1024,
        no_huge: bool = True,
        name: str = "imd",
        idle_spin_us: int = 2000,
        poll_sleep_us: int = 0,
        yield_after: int = 8,
    ) -> NativeCore:
        """Start the poller once per process; later calls return it (their
        options are ignored). ``idle_spin_us``: how long the poller keeps
        busy-polling after its last work before it sleeps. ``poll_sleep_us``:
        0 busy-polls while I/O is outstanding (an engine); > 0 naps that
        long between polls instead (a host sharing a core with another busy
        poller). ``yield_after``: after that many polls in a row without
        progress the poller yields its core to any thread waiting for it
        (this process's asyncio loop, on a small machine); 0 never yields.
        See core/poller.c."""
        _require_core()
        # Checked before the "once per process" return: bad options are an
        # error on any call, not silently ignored after the first.
        for what, value in (
            ("idle_spin_us", idle_spin_us),
            ("poll_sleep_us", poll_sleep_us),
            ("yield_after", yield_after),
        ):
            if not 0 <= value <= 10_000_000:
                raise InvalidOptions(f"{what} must be 0..10000000, not {value}")
        if cls._instance is not None:
            return cls._instance
        err = ffi.new("char[256]")
        rc = lib.imdn_start(
            name.encode(),
            core_mask.encode(),
            mem_size_mb,
            int(no_huge),
            idle_spin_us,
            poll_sleep_us,
            yield_after,
            err,
            256,
        )
        if rc != 0:
            raise NvmeError(rc, ffi.string(err).decode())
        cls._instance = cls()
        return cls._instance

    def poller_stats(self) -> dict[str, int]:
        """The poller's own counters (iterations, sleeps, busy time), read
        without a request."""
        out = ffi.new("struct imdn_poller_stats *")
        lib.imdn_poller_stats(out)
        return {
            "iterations": out.iterations,
            "sleeps": out.sleeps,
            "spdk_threads": out.spdk_threads,
            "busy_us": out.busy_ticks * 1_000_000 // max(out.ticks_hz, 1),
            "exports": out.exports,
            "yields": out.yields,
            "poller_wakeups": out.poller_wakeups,
            "python_wakeups": out.python_wakeups,
        }

    def listen(self, receiver: Callable[[Any], None]) -> int:
        """Register an event receiver; returns the cookie the C object
        carries in its events."""
        cookie = next(self._cookies)
        self._listeners[cookie] = receiver
        return cookie

    def unlisten(self, cookie: int) -> None:
        self._listeners.pop(cookie, None)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            loop.add_reader(lib.imdn_completion_fd(), self._drain)
            self._loop = loop
        return loop

    def _drain(self) -> None:
        """The loop's reader on the core's doorbell: reap everything, then
        re-arm the doorbell, which looks once more (core/doorbell.h). Until
        it is re-armed the poller does not write the eventfd again, so a
        return without re-arming would leave later completions unseen."""
        while True:
            self._reap_events()
            while True:
                n = lib.imdn_reap(self._out, 256)
                for i in range(n):
                    req = self._out[i]
                    entry = self._pending.pop(req.id, None)
                    if entry is not None and not entry[1].done():
                        entry[1].set_result(None)
                if n < 256:
                    break
            if not lib.imdn_rearm():
                return

    def _reap_events(self) -> None:
        # Events before requests: a request that completes together with an
        # event (a rebuild cancel and its "cancelled") then finds the event
        # handled.
        while True:
            n = lib.imdn_reap_events(self._events, 64)
            for i in range(n):
                event = self._events[i]
                receiver = self._listeners.get(event.cookie)
                if receiver is not None:
                    try:
                        receiver(event)
                    except Exception:  # a receiver's bug must not stall the core's completions
                        log.exception("event receiver failed")
            if n < 64:
                return

    async def call(self, req: Any, what: str, *keep: Any) -> Any:
        """Submit ``req`` and wait for it; a cancelled caller leaves the
        request running (shielded) to its end. Raises NvmeError naming
        ``what`` with the core's own message."""
        await asyncio.shield(self.submit(req, *keep))
        if req.status != 0:
            detail = ffi.string(req.errmsg).decode(errors="replace")
            raise NvmeError(req.status, f"{what}: {detail}" if detail else what)
        return req

    def new_request(self, op: int) -> Any:
        req = ffi.new("struct imdn_req *")
        req.id = next(self._ids)
        req.op = op
        return req

    def io_request(self, num_ios: int) -> tuple[Any, Any]:
        """An IMDN_IO request with room for ``num_ios`` I/Os, from the pool
        of finished ones when it has one that fits. A request is about 2 KiB
        that cffi zeroes on allocation: with a batch of 8 I/Os, allocating it
        cost as much as submitting it (bench/README.md)."""
        for i in range(len(self._io_pool) - 1, -1, -1):
            req, arr = self._io_pool[i]
            if len(arr) >= num_ios:
                del self._io_pool[i]
                self.reissue(req)
                return req, arr
        req = self.new_request(lib.IMDN_IO)
        arr = ffi.new("struct imdn_io[]", max(num_ios, _IO_POOL_MIN_BATCH))
        req.ios = arr
        return req, arr

    def in_flight(self, req: Any) -> bool:
        """Whether the poller still has ``req`` (submitted, not yet reaped)."""
        return req.id in self._pending

    def reissue(self, req: Any) -> None:
        """Give a finished request a new id, to submit it again."""
        req.id = next(self._ids)

    def reuse_io_request(self, req: Any, arr: Any) -> None:
        """Give back a request the poller is done with (never one a
        cancelled caller left in flight)."""
        if len(self._io_pool) < _IO_POOL_SIZE:
            self._io_pool.append((req, arr))

    def submit(self, req: Any, *keep: Any) -> asyncio.Future[Any]:
        """Queue ``req``; the future completes when the poller is done with
        it. ``keep`` holds anything the request points at until then."""
        loop = self._bind_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[req.id] = (req, fut, keep)
        rc = lib.imdn_submit(req)
        if rc != 0:
            del self._pending[req.id]
            raise NvmeError(rc, "the poller's submission ring is full" if rc == -errno.EAGAIN else "poller down")
        return fut


@dataclass(eq=False)
class _PathConn:
    path: Path
    ctrlr: Any = None  # struct imdn_ctrlr * while connected
    down_since: float | None = None
    next_try: float = 0.0
    silence_reported: Any = None  # the controller whose silence was reported

    @property
    def connected(self) -> bool:
        return self.ctrlr is not None and not bool(lib.imdn_ctrlr_failed(self.ctrlr))

    def silent_for(self) -> float:
        """How long the peer had answered nothing when the core declared
        this path lost for silence (0.0: it was not)."""
        if self.ctrlr is None:
            return 0.0
        return int(lib.imdn_ctrlr_counter(self.ctrlr, lib.IMDN_C_SILENT_US)) / 1e6


@dataclass(eq=False)
class NativeController:
    hostnqn: str
    opts: ControllerOpts
    paths: list[_PathConn]
    namespaces: list[Namespace]
    lost: bool = False
    rr: int = 0
    path_changed: asyncio.Event = field(default_factory=asyncio.Event)
    keeper: asyncio.Task[None] | None = None
    # struct imdn_mpath *: the same paths, for I/O that C submits itself
    # (mirror legs, rebuilds) with failover and no Python in the loop.
    mpath: Any = None
    counters: dict[str, int] = field(
        default_factory=lambda: {
            "failovers": 0,
            "reconnects": 0,
            "reconnect_attempts": 0,
            "io_errors": 0,
            "silent_paths": 0,
        }
    )


class NativeBackend:
    def __init__(self, core: NativeCore | None = None) -> None:
        self.core = core if core is not None else NativeCore.start()
        self.on_lost: Callable[[NativeController], None] | None = None
        # Called on the loop when the core declares a path silent: the path
        # and how long its peer had answered nothing (for logs and metrics).
        self.on_silent: Callable[[Path, float], None] | None = None
        self.reconnects_total = 0

    # -- connections -----------------------------------------------------------

    async def _connect_path(self, path: Path, hostnqn: str, opts: ControllerOpts) -> tuple[Any, list[Namespace]]:
        await probe_tcp(path, opts.attach_timeout_sec)
        req = self.core.new_request(lib.IMDN_ATTACH)
        req.trid = path.trid().encode()
        req.hostnqn = hostnqn.encode()
        req.keep_alive_ms = opts.keep_alive_timeout_ms
        req.silence_timeout_ms = opts.silence_timeout_ms
        req.io_queue_size = opts.io_queue_size
        req.io_queue_requests = opts.io_queue_requests
        req.timeout_ms = int(opts.attach_timeout_sec * 1000)
        fut = self.core.submit(req)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Whatever the poller attaches for us now must not stay attached.
            fut.add_done_callback(lambda _: self._discard(req))
            raise
        if req.status == -errno.ETIMEDOUT:
            raise AttachTimeout(f"no controller at {path} within {opts.attach_timeout_sec:g}s")
        if req.status != 0:
            raise NvmeError(req.status, f"cannot connect to {path}")
        namespaces = [Namespace(req.ns[i].nsid, req.ns[i].size_bytes, req.ns[i].block_size) for i in range(req.num_ns)]
        return req.ctrlr, namespaces

    def _discard(self, attach_req: Any) -> None:
        if attach_req.status == 0 and attach_req.ctrlr != ffi.NULL:
            self._detach_ctrlr(attach_req.ctrlr)

    def _detach_ctrlr(self, ctrlr: Any) -> asyncio.Future[Any]:
        req = self.core.new_request(lib.IMDN_DETACH)
        req.ctrlr = ctrlr
        return self.core.submit(req)

    async def connect(self, paths: list[Path], hostnqn: str, opts: ControllerOpts) -> NativeController:
        ctrlr, namespaces = await self._connect_path(paths[0], hostnqn, opts)
        handle = NativeController(hostnqn, opts, [_PathConn(paths[0], ctrlr)], namespaces)
        try:
            req = self.core.new_request(lib.IMDN_MPATH_CREATE)
            req.policy = lib.IMDN_POLICY_ROUND_ROBIN if opts.policy is MultipathPolicy.ROUND_ROBIN else 0
            req.fast_io_fail_ms = opts.fast_io_fail_timeout_sec * 1000
            fut = self.core.submit(req)
            try:
                await asyncio.shield(fut)
            finally:
                # Even if we were cancelled: the mpath exists once the
                # request completed, and disconnect() below must free it.
                if fut.done() and req.status == 0:
                    handle.mpath = req.mpath
                elif not fut.done():
                    fut.add_done_callback(lambda _: self._mpath_orphan(req))
            if req.status != 0:
                raise NvmeError(req.status, "cannot create the multipath object")
            await self._mpath_add(handle, ctrlr)
            for path in paths[1:]:
                await self.add_path(handle, path)
        except BaseException:
            await self.disconnect(handle)
            raise
        handle.keeper = asyncio.ensure_future(self._keep_paths(handle))
        return handle

    def _mpath_orphan(self, req: Any) -> None:
        if req.status == 0:
            drop = self.core.new_request(lib.IMDN_MPATH_DESTROY)
            drop.mpath = req.mpath
            self.core.submit(drop)

    async def _mpath_add(self, handle: NativeController, ctrlr: Any) -> None:
        """Let C code (mirror legs) use this path too."""
        if handle.mpath is None:
            return
        req = self.core.new_request(lib.IMDN_MPATH_ADD)
        req.mpath, req.ctrlr = handle.mpath, ctrlr
        await self.core.call(req, "cannot add the path to the multipath object")

    async def _mpath_mark_lost(self, handle: NativeController) -> None:
        if handle.mpath is None:
            return
        req = self.core.new_request(lib.IMDN_MPATH_SET)
        req.mpath, req.lost = handle.mpath, 1
        req.policy = lib.IMDN_POLICY_ROUND_ROBIN if handle.opts.policy is MultipathPolicy.ROUND_ROBIN else 0
        req.fast_io_fail_ms = handle.opts.fast_io_fail_timeout_sec * 1000
        await self.core.call(req, "cannot mark the multipath object lost")

    async def disconnect(self, handle: NativeController) -> None:
        if handle.keeper is not None:
            handle.keeper.cancel()
        handle.lost = True
        handle.path_changed.set()
        if handle.mpath is not None:
            # C I/O queued for a path fails now; a mirror leg on this
            # controller goes ERR, and the object goes with its last user.
            req = self.core.new_request(lib.IMDN_MPATH_DESTROY)
            req.mpath, handle.mpath = handle.mpath, None
            await asyncio.shield(self.core.submit(req))
        conns = [c for c in handle.paths if c.ctrlr is not None]
        for conn in conns:
            ctrlr, conn.ctrlr = conn.ctrlr, None
            await asyncio.shield(self._detach_ctrlr(ctrlr))

    async def add_path(self, handle: NativeController, path: Path) -> None:
        conn = _PathConn(path)
        handle.paths.append(conn)
        try:
            conn.ctrlr, _ = await self._connect_path(path, handle.hostnqn, handle.opts)
            await self._mpath_add(handle, conn.ctrlr)
        except NvmeError:
            conn.down_since = time.monotonic()  # the keeper will retry it
        handle.path_changed.set()

    async def remove_path(self, handle: NativeController, path: Path) -> None:
        for conn in list(handle.paths):
            if conn.path == path:
                handle.paths.remove(conn)
                if conn.ctrlr is not None:
                    ctrlr, conn.ctrlr = conn.ctrlr, None
                    await asyncio.shield(self._detach_ctrlr(ctrlr))

    async def _keep_paths(self, handle: NativeController) -> None:
        """Reconnect dead paths every reconnect_delay_sec; fail the
        controller once every path has been down for ctrlr_loss_timeout_sec."""
        opts = handle.opts
        delay = opts.reconnect_delay_sec or 1
        while not handle.lost:
            await asyncio.sleep(min(delay, 0.5))
            now = time.monotonic()
            for conn in list(handle.paths):
                if conn.connected:
                    conn.down_since = None
                    continue
                self._report_silence(handle, conn)
                if conn.down_since is None:
                    conn.down_since, conn.next_try = now, now + delay
                if opts.ctrlr_loss_timeout_sec == 0 or now < conn.next_try:
                    continue
                conn.next_try = now + delay
                if conn.ctrlr is not None:
                    # The detach takes it out of the mpath first (in C).
                    ctrlr, conn.ctrlr = conn.ctrlr, None
                    await asyncio.shield(self._detach_ctrlr(ctrlr))
                handle.counters["reconnect_attempts"] += 1
                with contextlib.suppress(NvmeError):
                    conn.ctrlr, _ = await self._connect_path(conn.path, handle.hostnqn, opts)
                    await self._mpath_add(handle, conn.ctrlr)
                    conn.down_since = None
                    handle.counters["reconnects"] += 1
                    self.reconnects_total += 1  # monotonic, for metrics: controllers come and go
                    handle.path_changed.set()
            downs = [c.down_since for c in handle.paths if not c.connected]
            loss = opts.ctrlr_loss_timeout_sec
            if (
                handle.paths
                and len(downs) == len(handle.paths)
                and loss > 0
                and all(d is not None and now - d >= loss for d in downs)
            ):
                handle.lost = True
                handle.path_changed.set()
                with contextlib.suppress(NvmeError):
                    await self._mpath_mark_lost(handle)
                if self.on_lost is not None:
                    self.on_lost(handle)

    def _report_silence(self, handle: NativeController, conn: _PathConn) -> None:
        silent = conn.silent_for()
        if silent and conn.silence_reported is not conn.ctrlr:
            conn.silence_reported = conn.ctrlr
            handle.counters["silent_paths"] += 1
            log.warning("path %s silent for %.1f s: declared lost, reconnecting", conn.path, silent)
            if self.on_silent is not None:
                self.on_silent(conn.path, silent)

    # -- queries ---------------------------------------------------------------

    def failed(self, handle: NativeController) -> bool:
        if handle.lost:
            return True
        if handle.opts.ctrlr_loss_timeout_sec == 0:
            # No reconnects: the controller has failed as soon as no path works.
            return not any(c.connected for c in handle.paths)
        return False

    def namespaces(self, handle: NativeController) -> list[Namespace]:
        return list(handle.namespaces)

    def path_states(self, handle: NativeController) -> list[PathState]:
        active = self._pick(handle, advance=False)
        return [PathState(c.path, connected=c.connected, active=c is active) for c in handle.paths]

    def counters(self, handle: NativeController) -> dict[str, int]:
        totals = dict(handle.counters)
        for conn in handle.paths:
            if conn.ctrlr is not None:
                totals["reads"] = totals.get("reads", 0) + lib.imdn_ctrlr_counter(conn.ctrlr, lib.IMDN_C_READS)
                totals["writes"] = totals.get("writes", 0) + lib.imdn_ctrlr_counter(conn.ctrlr, lib.IMDN_C_WRITES)
        return totals

    # -- I/O ---------------------------------------------------------------------

    def _pick(self, handle: NativeController, *, advance: bool = True) -> _PathConn | None:
        live = [c for c in handle.paths if c.connected]
        if not live:
            return None
        if handle.opts.policy is MultipathPolicy.ROUND_ROBIN:
            conn = live[handle.rr % len(live)]
            if advance:
                handle.rr += 1
            return conn
        return live[0]

    async def io(self, handle: NativeController, ios: Sequence[Io]) -> None:
        """Run ``ios`` as one batch; raise IoError for the first I/O that
        failed for a reason other than its path. Path failures move the
        affected I/Os to another live path."""
        todo = list(range(len(ios)))
        waiting_since: float | None = None
        last_path: Path | None = None
        while todo:
            conn = self._pick(handle)
            if conn is None or handle.lost:
                if handle.lost:
                    raise IoError(todo[0], 0, 0, errno.ENODEV, last_path)
                if handle.opts.ctrlr_loss_timeout_sec == 0 and handle.paths:
                    # No reconnects: nothing brings a path back, so waiting
                    # would last as long as a silent peer stays silent. Fail
                    # at once, as the C core's multipath does (see failed()).
                    raise IoError(todo[0], 0, 0, errno.ENXIO, last_path)
                waiting_since = waiting_since or time.monotonic()
                fast_fail = handle.opts.fast_io_fail_timeout_sec
                if fast_fail and time.monotonic() - waiting_since >= fast_fail:
                    raise IoError(todo[0], 0, 0, errno.ETIMEDOUT, last_path)
                handle.path_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(handle.path_changed.wait(), 0.1)
                continue
            last_path = conn.path
            req, arr = self.core.io_request(len(todo))
            for slot, index in enumerate(todo):
                io = ios[index]
                entry = arr[slot]
                entry.kind, entry.nsid, entry.lba, entry.nblocks = io.kind, io.nsid, io.lba, io.nblocks
                entry.buf = ffi.NULL if io.buf is None else io.buf.ptr + io.offset
            req.ctrlr = conn.ctrlr
            req.num_ios = len(todo)
            # Not shielded: a cancelled caller cancels only this future; the
            # request stays in the core's pending map, holding ``ios`` (and so
            # their buffers), until the poller is done with it.
            await self.core.submit(req, arr, ios)
            if req.status == 0 and req.ios_failed == 0:
                self.core.reuse_io_request(req, arr)
                return
            todo = self._to_retry(handle, conn, req, zip(arr, todo, strict=False))

    def io_batch(self, ios: Sequence[Io]) -> IoBatch:
        """Lay ``ios`` out once for ``run`` (see IoBatch)."""
        return IoBatch(self.core, ios)

    async def run(self, handle: NativeController, batch: IoBatch) -> None:
        """Run ``batch`` as it is now, like ``io``: path failures move to
        another path, and the first other failure raises IoError with its
        index in the batch. The common case (a live path, no failure) does
        no per-I/O work in Python."""
        req = batch.req
        if self.core.in_flight(req):
            raise InvalidOptions("this I/O batch is still in flight (one run at a time)")
        conn = self._pick(handle)
        if conn is None or handle.lost:
            await self._run_indexes(handle, batch, range(len(batch)))  # waits for a path, or fails
            return
        self.core.reissue(req)
        req.ctrlr = conn.ctrlr
        await self.core.submit(req, batch)  # not shielded: see io()
        if req.status == 0 and req.ios_failed == 0:
            return
        retry = self._to_retry(handle, conn, req, zip(batch.entries, range(len(batch)), strict=True))
        await self._run_indexes(handle, batch, retry)

    def _to_retry(
        self, handle: NativeController, conn: _PathConn, req: Any, done: Iterable[tuple[Any, int]]
    ) -> list[int]:
        """Sort a finished request's I/Os (C entry, caller's index): the
        indexes of those that failed with their path, to move to another
        one; IoError for the first that failed for another reason."""
        retry = []
        for entry, index in done:
            if entry.status == 0 and req.status == 0:
                continue
            if self._path_failure(req.status, entry) or lib.imdn_ctrlr_failed(conn.ctrlr):
                retry.append(index)
                continue
            handle.counters["io_errors"] += 1
            raise IoError(index, entry.sct, entry.sc, -entry.status if entry.status < 0 else 0, conn.path)
        if retry:
            handle.counters["failovers"] += 1
            if conn.down_since is None:
                conn.down_since = time.monotonic()
        return retry

    async def _run_indexes(self, handle: NativeController, batch: IoBatch, indexes: Sequence[int]) -> None:
        """The general path for part of a batch, with IoError indexes
        mapped back to the batch's."""
        indexes = list(indexes)
        try:
            await self.io(handle, batch.as_ios(indexes))
        except IoError as e:
            raise IoError(indexes[e.index], e.sct, e.sc, e.err, e.path) from None

    @staticmethod
    def _path_failure(status: int, entry: Any) -> bool:
        if status != 0:
            return -status in _PATH_ERRNOS
        if entry.status < 0:
            return -entry.status in _PATH_ERRNOS
        return bool(entry.sct == _SCT_PATH or (entry.sct == _SCT_GENERIC and entry.sc == _SC_ABORTED_SQ_DELETION))

    # -- the C tier benchmark ------------------------------------------------------

    async def bench(
        self,
        handle: NativeController,
        *,
        nsid: int = 1,
        qd: int = 32,
        io_size: int = 4096,
        ios: int = 100_000,
        warmup: int = 10_000,
        write: bool = False,
        sequential: bool = False,
        duration_s: float = 0.0,
        warmup_s: float = 0.0,
    ) -> BenchResult:
        """The poller itself runs I/Os at queue depth ``qd`` on the active
        path (no Python per I/O) and measures them: ``ios`` after ``warmup``
        I/Os, or, with ``duration_s``, for that long after ``warmup_s``."""
        conn = self._pick(handle, advance=False)
        if conn is None:
            raise NvmeError(-errno.ENODEV, "no live path")
        if qd <= 0 or io_size <= 0:
            raise InvalidOptions("qd and io_size must be positive")
        req = self.core.new_request(lib.IMDN_BENCH)
        hist = ffi.new("uint64_t[]", lib.IMDN_HIST_BUCKETS)
        req.ctrlr = conn.ctrlr
        req.bench_nsid, req.bench_qd, req.bench_io_size, req.bench_write = nsid, qd, io_size, int(write)
        req.bench_ios, req.bench_warmup, req.bench_hist = ios, warmup, hist
        req.bench_sequential = int(sequential)
        req.bench_duration_ms, req.bench_warmup_ms = int(duration_s * 1000), int(warmup_s * 1000)
        await asyncio.shield(self.core.submit(req, hist))
        if req.status != 0:
            raise NvmeError(req.status, "benchmark failed")
        counts = list(hist)
        return BenchResult(
            iops=req.bench_iops,
            avg_us=req.bench_avg_us,
            seconds=req.bench_seconds,
            histogram_100ns=[(i, n) for i, n in enumerate(counts) if n],
        )


class BenchResult(msgspec.Struct, frozen=True):
    iops: float
    avg_us: float
    seconds: float
    histogram_100ns: list[tuple[int, int]]  # (bucket, count); bucket i = [i*0.1, (i+1)*0.1) µs

    def percentile_us(self, q: float) -> float:
        total = sum(n for _, n in self.histogram_100ns)
        rank, seen = q / 100 * total, 0
        for bucket, n in self.histogram_100ns:
            seen += n
            if seen >= rank:
                return (bucket + 0.5) / 10
        return float("nan")
