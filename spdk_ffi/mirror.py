"""Mirrors in the C core: data engine V2's data path.

A mirror spreads a volume over up to eight legs; each leg is a namespace of an
attached controller (its ``NativeController``, multipath included). The C
core does everything per I/O: writes go to every RW and WO leg, reads to the
RW leg with the fewest commands outstanding (ties round-robin; a failed read
is retried on another), a leg whose I/O fails goes ERR at once, a rebuild
copies a RW leg onto a WO leg under a per-chunk range lock while host I/O
goes on, and ``export`` serves the mirror to NVMe-oF/TCP hosts from the
core's embedded target. Python only configures, and hears about leg
failures and finished rebuilds through events.

Ownership: a ``NativeMirror`` is driven from one asyncio loop. Its methods
may be called concurrently; the core runs requests in submission order, and
every request is shielded, so a cancelled caller never leaves the core half
way (the request runs to its end; what it created is cleaned up).

``Mirror``/``MirrorFactory``/``RebuildHandle`` describe the surface the
daemon codes against, so that it can be tested with an in-memory fake where
SPDK is absent (tests/spdk/fake_mirror.py is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from spdk_ffi.errors import InvalidOptions, NvmeError
from spdk_ffi.native import BenchResult, Io, IoError, NativeBackend, NativeController

try:
    from spdk_ffi._core import ffi, lib  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised where the core is absent
    ffi = lib = None

MAX_LEGS = 8
_NGUID = re.compile(r"^[0-9a-fA-F]{32}$")


class LegMode(enum.StrEnum):
    RW = "RW"  # takes writes, serves reads
    WO = "WO"  # takes writes only: a rebuild destination
    ERR = "ERR"  # failed: takes nothing


_MODE_TO_C = {LegMode.RW: 0, LegMode.WO: 1, LegMode.ERR: 2}
_MODE_FROM_C = {v: k for k, v in _MODE_TO_C.items()}


class LegStatus(msgspec.Struct, frozen=True):
    name: str
    mode: LegMode
    reads: int
    writes: int
    bytes_read: int
    bytes_written: int
    errors: int
    error: str  # why the leg went ERR ("" while it works)
    silent_s: float = 0.0  # it went ERR for answering nothing this long (0.0: it did not)


class RebuildState(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"


_RB_FROM_C = {1: RebuildState.IN_PROGRESS, 2: RebuildState.COMPLETE, 3: RebuildState.ERROR, 4: RebuildState.CANCELLED}


class RebuildStatus(msgspec.Struct, frozen=True):
    dst: str
    src: str  # the source leg in use (it may change if a source fails)
    state: RebuildState
    bytes_done: int
    bytes_total: int
    error: str


class ExportInfo(msgspec.Struct, frozen=True):
    nqn: str
    address: str
    port: int
    nguid: str


class MirrorSettings(msgspec.Struct, frozen=True, kw_only=True):
    nsid: int = 1  # the namespace of every leg's controller
    model: str = "imd mirror"  # model number the export reports (at most 40 ASCII characters)


# -- the surface the daemon codes against ---------------------------------------------


class RebuildHandle(Protocol):
    done: asyncio.Future[RebuildStatus]

    def status(self) -> RebuildStatus: ...

    async def cancel(self) -> None: ...


DEFAULT_LEG_TIMEOUT_MS = 5000


class Mirror(Protocol):
    on_leg_failed: Callable[[str, str], None] | None

    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    def legs(self) -> list[LegStatus]: ...

    def counters(self) -> dict[str, int]: ...

    async def destroy(self) -> None: ...

    async def add_leg(self, name: str, controller: Any, mode: LegMode = LegMode.WO) -> None: ...

    async def remove_leg(self, name: str) -> None: ...

    async def set_mode(self, name: str, mode: LegMode) -> None: ...

    async def resize(self, num_blocks: int) -> None: ...

    def start_rebuild(
        self,
        dst: str,
        src: str | None = None,
        *,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        compare: bool = False,
    ) -> RebuildHandle: ...

    async def quiesce(self) -> None: ...

    async def resume(self) -> None: ...

    async def export(self, nqn: str, address: str, port: int, nguid: str) -> ExportInfo: ...

    async def unexport(self) -> None: ...


class MirrorFactory(Protocol):
    async def create_mirror(
        self,
        name: str,
        legs: Sequence[tuple[str, Any]],
        num_blocks: int,
        *,
        nsid: int = 1,
        leg_timeout_ms: int = DEFAULT_LEG_TIMEOUT_MS,
    ) -> Mirror: ...


# -- the native implementation ----------------------------------------------------------


def _reason(status: int, sct: int, sc: int, silent_us: int = 0) -> str:
    """Why a leg failed, from the core's (status, sct, sc) and how long it
    had answered nothing when the watchdog failed it."""
    if status == 1:
        return f"NVMe status sct={sct:#x} sc={sc:#x}"
    err = -status
    if silent_us:
        return f"silent for {silent_us / 1e6:.1f} s (its node answered nothing): failed"
    name = errno.errorcode.get(err, f"errno {err}")
    if err == errno.ENXIO:
        return f"{name}: no live path (every path failed, or the controller was lost or detached)"
    if err == errno.ETIMEDOUT:
        return f"{name}: no path came back within fast_io_fail_timeout_sec"
    return f"{name}: submission failed"


class NativeRebuild:
    """One rebuild; ``done`` resolves with its final status (never raises
    for an error or a cancel: look at ``state``), or with NvmeError if it
    could not start."""

    def __init__(self, mirror: NativeMirror, dst: str, src: str | None) -> None:
        self._mirror = mirror
        self.dst = dst
        self._src = src or ""
        self.done: asyncio.Future[RebuildStatus] = asyncio.get_running_loop().create_future()
        self._started = False
        self._start: asyncio.Future[Any] | None = None  # the start request

    def status(self) -> RebuildStatus:
        if self.done.done() and not self.done.cancelled() and self.done.exception() is None:
            return self.done.result()
        if not self._started:
            return RebuildStatus(self.dst, self._src, RebuildState.IN_PROGRESS, 0, 0, "")
        return self._mirror._rebuild_status(self.dst)

    async def cancel(self) -> None:
        """Stop the copy (within one chunk); returns once it stopped."""
        if self.done.done():
            return
        mirror = self._mirror
        if self._start is not None:
            await asyncio.shield(self._start)  # its start request may still be on its way
        if self.done.done() or mirror._ptr is None:
            return
        req = mirror._new(lib.IMDN_REBUILD_CANCEL)
        await mirror._call(req, f"mirror {mirror.name}: cancel the rebuild of {self.dst}")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.done), 5)

    def _finished(self, state: RebuildState, bytes_done: int, error: int) -> None:
        if self.done.done():
            return
        status = self._mirror._rebuild_status(self.dst)
        reason = ""
        if state is RebuildState.ERROR:
            name = errno.errorcode.get(-error, f"errno {-error}")
            reason = {
                errno.ENXIO: f"{name}: no RW source leg left",
                errno.EIO: f"{name}: the destination leg failed or left WO mode",
            }.get(-error, f"{name}: rebuild failed")
        self.done.set_result(RebuildStatus(self.dst, status.src, state, bytes_done, status.bytes_total, reason))


class NativeMirror:
    """A mirror in the C core (see the module doc)."""

    def __init__(self, backend: NativeBackend, name: str, settings: MirrorSettings) -> None:
        self._backend = backend
        self._core = backend.core
        self.name = name
        self.settings = settings
        self._ptr: Any = None  # struct imdn_mirror *
        self._slots: dict[str, int] = {}  # leg name -> C leg index
        self._controllers: dict[str, NativeController] = {}
        self._block_size = 0
        self._rebuild: NativeRebuild | None = None
        self._export: ExportInfo | None = None
        self._destroying = False
        self.on_leg_failed: Callable[[str, str], None] | None = None
        self._cookie = self._core.listen(self._on_event)

    # -- life cycle ---------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        backend: NativeBackend,
        name: str,
        legs: Sequence[tuple[str, NativeController]],
        num_blocks: int,
        *,
        nsid: int = 1,
        leg_timeout_ms: int = DEFAULT_LEG_TIMEOUT_MS,
    ) -> NativeMirror:
        """A mirror over ``legs`` (all RW) of ``num_blocks`` blocks of the
        legs' (equal) block size; every leg's namespace must be that large.
        ``leg_timeout_ms``: a leg that answers nothing this long while
        another RW leg works goes ERR and the writes waiting for it complete
        from the others (0: never; see core/mirror.c, "Silence")."""
        if not name or len(name) > 63 or not all(c.isalnum() or c in "-_." for c in name):
            raise InvalidOptions(f"mirror name {name!r} must be 1-63 characters of [A-Za-z0-9._-]")
        if not 1 <= len(legs) <= MAX_LEGS:
            raise InvalidOptions(f"mirror {name}: 1 to {MAX_LEGS} legs, not {len(legs)}")
        names = [leg for leg, _ in legs]
        if len(set(names)) != len(names) or not all(names):
            raise InvalidOptions(f"mirror {name}: leg names must be unique and non-empty")
        if num_blocks <= 0:
            raise InvalidOptions(f"mirror {name}: num_blocks must be positive")
        if leg_timeout_ms != 0 and not 100 <= leg_timeout_ms <= 3_600_000:
            raise InvalidOptions(f"mirror {name}: leg_timeout_ms must be 0 or 100..3600000, not {leg_timeout_ms}")
        mirror = cls(backend, name, MirrorSettings(nsid=nsid))
        req = mirror._new(lib.IMDN_MIRROR_CREATE)
        req.name = name.encode()
        req.cookie = mirror._cookie
        req.num_blocks = num_blocks
        req.leg_timeout_ms = leg_timeout_ms
        req.num_legs = len(legs)
        for i, (leg, controller) in enumerate(legs):
            req.legs[i].mpath = mirror._mpath_of(leg, controller)
            req.legs[i].nsid = nsid
            req.legs[i].mode = _MODE_TO_C[LegMode.RW]
        fut = mirror._core.submit(req)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The mirror may come to exist after all: destroy it then.
            fut.add_done_callback(lambda _: mirror._orphaned(req))
            raise
        if req.status != 0:
            mirror._core.unlisten(mirror._cookie)
            raise NvmeError(req.status, f"cannot create mirror {name}: {ffi.string(req.errmsg).decode()}")
        mirror._ptr = req.mirror
        mirror._block_size = req.block_size
        for i, (leg, controller) in enumerate(legs):
            mirror._slots[leg] = i
            mirror._controllers[leg] = controller
        return mirror

    def _orphaned(self, create_req: Any) -> None:
        self._core.unlisten(self._cookie)
        if create_req.status == 0:
            req = self._new(lib.IMDN_MIRROR_DESTROY)
            req.mirror = create_req.mirror
            self._core.submit(req)

    async def destroy(self) -> None:
        """Cancel a rebuild, unexport, let in-flight I/O finish, free. Never
        detaches the legs' controllers."""
        if self._ptr is None or self._destroying:
            return
        self._destroying = True

        def destroyed() -> None:
            self._ptr = None
            self._export = None
            self._core.unlisten(self._cookie)
            if self._rebuild is not None and not self._rebuild.done.done():
                self._rebuild._finished(RebuildState.CANCELLED, 0, 0)

        try:
            await self._call(self._new(lib.IMDN_MIRROR_DESTROY), f"cannot destroy mirror {self.name}", on_ok=destroyed)
        except NvmeError:
            self._destroying = False
            raise

    # -- queries (no request) ---------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_blocks(self) -> int:
        return int(self._stats().num_blocks)

    @property
    def exported(self) -> ExportInfo | None:
        return self._export

    def _stats(self) -> Any:
        if self._ptr is None:
            raise NvmeError(errno.ENODEV, f"mirror {self.name} is destroyed")
        out = ffi.new("struct imdn_mirror_stats *")
        lib.imdn_mirror_stats(self._ptr, out)
        return out

    def legs(self) -> list[LegStatus]:
        stats = self._stats()
        result = []
        for name, slot in self._slots.items():
            leg = stats.legs[slot]
            mode = _MODE_FROM_C[leg.mode]
            failed = mode is LegMode.ERR and leg.err_status
            error = _reason(leg.err_status, leg.err_sct, leg.err_sc, leg.silent_us) if failed else ""
            result.append(
                LegStatus(
                    name,
                    mode,
                    leg.reads,
                    leg.writes,
                    leg.bytes_read,
                    leg.bytes_written,
                    leg.errors,
                    error,
                    leg.silent_us / 1e6 if failed else 0.0,
                )
            )
        return result

    def counters(self) -> dict[str, int]:
        """Mirror-wide counters plus ``latency_lt_<N>us`` histogram buckets
        (I/Os that took less than N µs and at least N/2)."""
        s = self._stats()
        counters = {
            "reads": s.reads,
            "writes": s.writes,
            "other_ops": s.other_ops,
            "bytes_read": s.bytes_read,
            "bytes_written": s.bytes_written,
            "errors": s.errors,
            "outstanding": s.outstanding,
            "held_writes": s.held_writes,
            "rebuild_bytes_done": s.rb_bytes_done,
            "rebuild_chunks_zero": s.rb_chunks_zero,
            "rebuild_chunks_same": s.rb_chunks_same,
            "frontend_hosts": s.hosts,
            "read_latency_ns_total": s.read_lat_ticks * 1_000_000_000 // max(s.ticks_hz, 1),
            "write_latency_ns_total": s.write_lat_ticks * 1_000_000_000 // max(s.ticks_hz, 1),
        }
        for i in range(lib.IMDN_LAT_BUCKETS):
            counters[f"latency_lt_{1 << i}us"] = s.lat_hist[i]
        return counters

    def _rebuild_status(self, dst: str) -> RebuildStatus:
        if self._ptr is None:  # destroyed: the last rebuild was cancelled with it
            return RebuildStatus(dst, "", RebuildState.CANCELLED, 0, 0, "the mirror was destroyed")
        s = self._stats()
        names = {slot: name for name, slot in self._slots.items()}
        state = _RB_FROM_C.get(s.rb_state, RebuildState.IN_PROGRESS)
        return RebuildStatus(
            dst=names.get(s.rb_dst, dst),
            src=names.get(s.rb_src, "") if s.rb_src >= 0 else "",
            state=state,
            bytes_done=s.rb_bytes_done,
            bytes_total=s.rb_bytes_total,
            error="",
        )

    # -- legs -----------------------------------------------------------------------

    async def add_leg(self, name: str, controller: NativeController, mode: LegMode = LegMode.WO) -> None:
        if name in self._slots:
            raise InvalidOptions(f"mirror {self.name} has a leg {name} already")
        req = self._new(lib.IMDN_MIRROR_ADD_LEG)
        req.legs[0].mpath = self._mpath_of(name, controller)
        req.legs[0].nsid = self.settings.nsid
        req.legs[0].mode = _MODE_TO_C[LegMode(mode)]

        def added() -> None:
            self._slots[name] = req.leg
            self._controllers[name] = controller

        await self._call(req, f"mirror {self.name}: cannot add leg {name}", on_ok=added)

    async def remove_leg(self, name: str) -> None:
        """Remove a leg; a rebuild involving it is cancelled, and its
        in-flight I/O finishes (or fails over, or times out) first."""
        req = self._new(lib.IMDN_MIRROR_REMOVE_LEG)
        req.leg = self._slot(name)

        def removed() -> None:
            self._slots.pop(name, None)
            self._controllers.pop(name, None)

        await self._call(req, f"mirror {self.name}: cannot remove leg {name}", on_ok=removed)

    async def set_mode(self, name: str, mode: LegMode) -> None:
        req = self._new(lib.IMDN_MIRROR_SET_MODE)
        req.leg = self._slot(name)
        req.mode = _MODE_TO_C[LegMode(mode)]
        await self._call(req, f"mirror {self.name}: cannot set leg {name} to {mode}")

    async def resize(self, num_blocks: int, *, wait_s: float = 5.0) -> None:
        """Grow to ``num_blocks`` (grow the replicas first). A leg whose
        namespace looks too small is re-checked for up to ``wait_s``: the
        replica's namespace-changed notice may still be on its way."""
        deadline = time.monotonic() + wait_s
        while True:
            req = self._new(lib.IMDN_MIRROR_RESIZE)
            req.num_blocks = num_blocks
            try:
                await self._call(req, f"mirror {self.name}: cannot resize to {num_blocks} blocks")
                return
            except NvmeError as exc:
                if exc.errno != errno.ENOSPC or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)

    # -- rebuild ---------------------------------------------------------------------

    def start_rebuild(
        self,
        dst: str,
        src: str | None = None,
        *,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        compare: bool = False,
    ) -> NativeRebuild:
        """Copy ``src`` (default: any RW leg) onto the WO leg ``dst`` while
        I/O goes on. The destination stays WO when it completes: set it RW.
        ``compare``: read the destination too and write only the chunks
        that differ (it holds the volume's snapshots already)."""
        self._alive(f"cannot rebuild {dst}")
        slot = self._slot(dst)
        src_slot = self._slot(src) if src is not None else -1
        if self._rebuild is not None and not self._rebuild.done.done():
            raise NvmeError(errno.EBUSY, f"mirror {self.name}: a rebuild to {self._rebuild.dst} is in progress")
        if chunk_bytes <= 0 or chunk_bytes % max(self._block_size, 1) != 0 or rate_bytes_per_s < 0:
            raise InvalidOptions(f"chunk_bytes must be a positive multiple of {self._block_size}; rate >= 0")
        rebuild = NativeRebuild(self, dst, src)
        self._rebuild = rebuild
        req = self._new(lib.IMDN_REBUILD_START)
        req.leg, req.src_leg = slot, src_slot
        req.chunk_bytes, req.rate_bytes_per_s = chunk_bytes, rate_bytes_per_s
        req.copy_flags = lib.IMDN_COPY_COMPARE if compare else 0
        fut = self._core.submit(req)

        def started(_: Any) -> None:
            rebuild._started = True
            if req.status != 0 and not rebuild.done.done():
                detail = ffi.string(req.errmsg).decode()
                rebuild.done.set_exception(NvmeError(req.status, f"mirror {self.name}: cannot rebuild {dst}: {detail}"))

        fut.add_done_callback(started)
        rebuild._start = fut
        return rebuild

    # -- quiesce ---------------------------------------------------------------------

    async def quiesce(self) -> None:
        """Hold every new host write at the mirror and return once the writes
        in flight are done on every leg (reads go on): the legs then hold the
        same bytes and none changes until ``resume``. For a snapshot."""
        await self._call(self._new(lib.IMDN_MIRROR_QUIESCE), f"mirror {self.name}: cannot quiesce")

    async def resume(self) -> None:
        """Let the held writes go (a quiesce still waiting fails, ECANCELED)."""
        await self._call(self._new(lib.IMDN_MIRROR_RESUME), f"mirror {self.name}: cannot resume")

    # -- export ----------------------------------------------------------------------

    async def export(self, nqn: str, address: str, port: int, nguid: str) -> ExportInfo:
        """Serve the mirror as namespace 1 of subsystem ``nqn`` (any host)
        on NVMe-oF/TCP ``address:port``."""
        self._alive(f"cannot export on {address}:{port}")
        if not nqn.startswith("nqn.") or len(nqn) > 223:
            raise InvalidOptions(f"export of {self.name}: {nqn!r} is not an NQN of at most 223 bytes")
        hex_nguid = nguid.replace("-", "")
        if not _NGUID.match(hex_nguid):
            raise InvalidOptions(f"export of {self.name}: nguid {nguid!r} is not 16 bytes of hex")
        if not 0 < port < 65536 or not address or len(address) > 63:
            raise InvalidOptions(f"export of {self.name}: bad address {address!r} or port {port}")
        req = self._new(lib.IMDN_EXPORT)
        req.nqn = nqn.encode()
        req.traddr = address.encode()
        req.trsvcid = str(port).encode()
        raw = bytes.fromhex(hex_nguid)
        for i, b in enumerate(raw):
            req.nguid[i] = b
        req.serial = hex_nguid[:20].upper().encode()
        req.model = self.settings.model.encode()[:40]
        fut = self._core.submit(req)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Exported after all: take it down again, nobody knows about it.
            fut.add_done_callback(lambda _: self._unexport_orphan(req))
            raise
        if req.status != 0:
            raise NvmeError(req.status, f"cannot export mirror {self.name}: {ffi.string(req.errmsg).decode()}")
        self._export = ExportInfo(nqn, address, port, hex_nguid.lower())
        return self._export

    def _unexport_orphan(self, export_req: Any) -> None:
        if export_req.status == 0 and self._ptr is not None:
            self._core.submit(self._new(lib.IMDN_UNEXPORT))

    async def unexport(self) -> None:
        """Stop serving: hosts' connections close, the listener goes with
        its last subsystem, the bdev is unregistered. Idempotent."""

        def unexported() -> None:
            self._export = None

        await self._call(self._new(lib.IMDN_UNEXPORT), f"cannot unexport mirror {self.name}", on_ok=unexported)

    # -- I/O for tests and benchmarks ----------------------------------------------------

    async def io(self, ios: Sequence[Io]) -> None:
        """A batch of I/Os through the mirror (``Io.nsid`` is ignored); raise
        IoError for the first that failed."""
        req = self._new(lib.IMDN_MIRROR_IO)
        arr = ffi.new("struct imdn_io[]", max(len(ios), 1))
        for i, io in enumerate(ios):
            entry = arr[i]
            entry.kind, entry.lba, entry.nblocks = io.kind, io.lba, io.nblocks
            entry.buf = ffi.NULL if io.buf is None else io.buf.ptr + io.offset
        req.ios, req.num_ios = arr, len(ios)
        await self._call(req, f"mirror {self.name}: I/O", arr, [io.buf for io in ios])
        for i in range(len(ios)):
            entry = arr[i]
            if entry.status != 0:
                err = -entry.status if entry.status < 0 else 0
                raise IoError(i, entry.sct, entry.sc, err, None)

    async def bench(
        self,
        *,
        qd: int,
        io_size: int = 4096,
        write: bool = False,
        duration_s: float,
        warmup_s: float = 1.0,
        sequential: bool = False,
    ) -> BenchResult:
        """The C tier through the mirror: the poller keeps ``qd`` I/Os in
        flight (writes to every leg, reads balanced) and measures them."""
        if qd <= 0 or io_size <= 0 or duration_s <= 0:
            raise InvalidOptions("qd, io_size and duration_s must be positive")
        req = self._new(lib.IMDN_MIRROR_BENCH)
        hist = ffi.new("uint64_t[]", lib.IMDN_HIST_BUCKETS)
        req.bench_qd, req.bench_io_size, req.bench_write = qd, io_size, int(write)
        req.bench_sequential, req.bench_hist = int(sequential), hist
        req.bench_duration_ms, req.bench_warmup_ms = int(duration_s * 1000), int(warmup_s * 1000)
        await self._call(req, f"mirror {self.name}: benchmark", hist)
        counts = list(hist)
        return BenchResult(
            iops=req.bench_iops,
            avg_us=req.bench_avg_us,
            seconds=req.bench_seconds,
            histogram_100ns=[(i, n) for i, n in enumerate(counts) if n],
        )

    # -- plumbing -----------------------------------------------------------------------

    def _new(self, op: int) -> Any:
        req = self._core.new_request(op)
        if self._ptr is not None:
            req.mirror = self._ptr
        return req

    async def _call(self, req: Any, what: str, *keep: Any, on_ok: Callable[[], None] | None = None) -> Any:
        """Run ``req``; ``on_ok`` records its effect when the core is done
        with it, even if our caller was cancelled meanwhile."""
        if self._ptr is None:
            raise NvmeError(errno.ENODEV, f"{what}: the mirror is destroyed")
        fut = self._core.submit(req, *keep)
        if on_ok is not None:
            fut.add_done_callback(lambda _: on_ok() if req.status == 0 else None)
        await asyncio.shield(fut)
        if req.status != 0:
            detail = ffi.string(req.errmsg).decode(errors="replace")
            raise NvmeError(req.status, f"{what}: {detail}" if detail else what)
        return req

    def _alive(self, what: str) -> None:
        if self._ptr is None or self._destroying:
            raise NvmeError(errno.ENODEV, f"mirror {self.name}: {what}: the mirror is destroyed")

    def _slot(self, name: str) -> int:
        slot = self._slots.get(name)
        if slot is None:
            raise InvalidOptions(f"mirror {self.name} has no leg {name}")
        return slot

    def _mpath_of(self, leg: str, controller: NativeController) -> Any:
        if not isinstance(controller, NativeController) or controller.mpath is None:
            raise NvmeError(errno.ENODEV, f"mirror {self.name}: the controller of leg {leg} is not attached")
        if not any(ns.nsid == self.settings.nsid for ns in controller.namespaces):
            raise InvalidOptions(f"mirror {self.name}: leg {leg} has no namespace {self.settings.nsid}")
        return controller.mpath

    def _on_event(self, event: Any) -> None:
        names = {slot: name for name, slot in self._slots.items()}
        if event.type == lib.IMDN_EV_LEG_FAILED:
            name = names.get(event.leg)
            if name is not None and self.on_leg_failed is not None:
                self.on_leg_failed(name, _reason(event.status, event.sct, event.sc, int(event.value)))
        elif event.type == lib.IMDN_EV_REBUILD_DONE and self._rebuild is not None:
            state = _RB_FROM_C.get(event.status, RebuildState.ERROR)
            self._rebuild._finished(state, int(event.value), int(event.error))


class NativeMirrorFactory:
    """``MirrorFactory`` over a NativeBackend."""

    def __init__(self, backend: NativeBackend) -> None:
        self.backend = backend

    async def create_mirror(
        self,
        name: str,
        legs: Sequence[tuple[str, Any]],
        num_blocks: int,
        *,
        nsid: int = 1,
        leg_timeout_ms: int = DEFAULT_LEG_TIMEOUT_MS,
    ) -> NativeMirror:
        return await NativeMirror.create(self.backend, name, legs, num_blocks, nsid=nsid, leg_timeout_ms=leg_timeout_ms)
