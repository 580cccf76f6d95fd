"""Copy and hash jobs in the C core (core/copy.c): long reads of a whole
namespace that never run Python per block.

* ``copy(src, dst, blocks)`` writes a namespace of one attached controller
  onto another's: a snapshot onto a replica being rebuilt, a snapshot of
  another volume onto a new replica (a clone). ``compare=True`` reads the
  destination too and writes only the chunks that differ (the destination
  already holds an older version: thin lvols stay thin);
  ``skip_zero=True`` never writes an all-zero chunk (the destination reads
  zeroes).
* ``hash(src, blocks)`` computes the SHA-256 of the namespace's whole
  logical content (SHA-512 with ``algorithm="sha512"``: a backing image's
  checksum, as Longhorn computes it); with ``base`` (the parent snapshot) it
  also counts the chunks that differ from it, which is what the snapshot
  holds of its own.

A job runs in the poller, one chunk at a time, capped at
``rate_bytes_per_s``, and ``cancel()`` stops it within one chunk. Its handle
resolves ``done`` with a ``JobResult`` (never raises for an error or a
cancel: look at ``state``), and frees the C job once it has read the final
figures. ``Jobs`` describes the surface the daemon codes against, so that it
can be tested with a fake where SPDK is absent.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Protocol

import msgspec

from spdk_ffi.errors import InvalidOptions, NvmeError
from spdk_ffi.mirror import RebuildState
from spdk_ffi.native import NativeBackend, NativeController

try:
    from spdk_ffi._core import ffi, lib  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised where the core is absent
    ffi = lib = None

_STATE = {1: RebuildState.IN_PROGRESS, 2: RebuildState.COMPLETE, 3: RebuildState.ERROR, 4: RebuildState.CANCELLED}
MAX_CHUNK = 16 << 20
HASH_ALGORITHMS = ("sha256", "sha512")


class JobResult(msgspec.Struct, frozen=True):
    state: RebuildState
    bytes_done: int
    bytes_total: int
    chunk_bytes: int = 0
    chunks_written: int = 0  # copy
    chunks_skipped: int = 0  # copy: chunks the destination needed no write for
    chunks_differ: int = 0  # hash: chunks that differ from the base (no base: that are not all zero)
    digest: str = ""  # hash: SHA-256 (or SHA-512), hex, once complete
    error: str = ""


class JobHandle(Protocol):
    done: asyncio.Future[JobResult]

    def status(self) -> JobResult: ...

    async def cancel(self) -> None: ...


class Jobs(Protocol):
    def copy(
        self,
        src: Any,
        dst: Any,
        blocks: int,
        *,
        compare: bool = False,
        skip_zero: bool = False,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        nsid: int = 1,
    ) -> JobHandle: ...

    def hash(
        self,
        src: Any,
        blocks: int,
        *,
        base: Any = None,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        nsid: int = 1,
        algorithm: str = "sha256",
    ) -> JobHandle: ...


def _reason(err: int) -> str:
    name = errno.errorcode.get(-err, f"errno {-err}")
    if -err == errno.ENXIO:
        return f"{name}: no live path to the source or destination"
    return f"{name}: the job failed"


class NativeJob:
    """One job in the core (see the module doc)."""

    def __init__(self, jobs: NativeJobs, what: str) -> None:
        self._jobs = jobs
        self.what = what
        self.done: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._ptr: Any = None  # struct imdn_job * once started
        self._start: asyncio.Future[Any] | None = None
        self._cookie = 0
        self._final: JobResult | None = None

    def status(self) -> JobResult:
        if self._final is not None:
            return self._final
        if self._ptr is None:
            return JobResult(RebuildState.IN_PROGRESS, 0, 0)
        return self._read()

    def _read(self) -> JobResult:
        out = ffi.new("struct imdn_job_stats *")
        lib.imdn_job_stats(self._ptr, out)
        state = _STATE.get(out.state, RebuildState.ERROR)
        done = state is RebuildState.COMPLETE
        digest = bytes(ffi.buffer(out.digest, out.digest_len)).hex() if done and out.digest_len else ""
        return JobResult(
            state=state,
            bytes_done=out.bytes_done,
            bytes_total=out.bytes_total,
            chunk_bytes=out.chunk_bytes,
            chunks_written=out.chunks_written,
            chunks_skipped=out.chunks_skipped,
            chunks_differ=out.chunks_differ,
            digest=digest,
            error=_reason(out.error) if state is RebuildState.ERROR else "",
        )

    async def cancel(self) -> None:
        """Stop the job (within one chunk); returns once it stopped."""
        if self._start is not None:
            await asyncio.shield(self._start)
        if self.done.done() or self._ptr is None:
            return
        req = self._jobs._backend.core.new_request(lib.IMDN_JOB_CANCEL)
        req.job = self._ptr
        await self._jobs._backend.core.call(req, f"cannot cancel {self.what}")
        await asyncio.shield(self.done)

    def _started(self, req: Any) -> None:
        if req.status != 0:
            self._jobs._backend.core.unlisten(self._cookie)
            detail = ffi.string(req.errmsg).decode(errors="replace")
            if not self.done.done():
                self.done.set_exception(NvmeError(req.status, f"cannot start {self.what}: {detail}"))
            return
        self._ptr = req.job
        # A short job may have ended in the poller turn that started it, and
        # its event, reaped before this completion, found no job to end.
        if self._read().state is not RebuildState.IN_PROGRESS:
            self._finish()

    def _on_event(self, event: Any) -> None:
        if event.type == lib.IMDN_EV_JOB_DONE and self._ptr is not None:
            self._finish()

    def _finish(self) -> None:
        if self._final is not None:
            return
        self._final = self._read()
        core = self._jobs._backend.core
        core.unlisten(self._cookie)
        free = core.new_request(lib.IMDN_JOB_FREE)
        free.job, self._ptr = self._ptr, None
        core.submit(free)
        if not self.done.done():
            self.done.set_result(self._final)


class NativeJobs:
    """``Jobs`` over a NativeBackend's core."""

    def __init__(self, backend: NativeBackend) -> None:
        self._backend = backend

    def copy(
        self,
        src: NativeController,
        dst: NativeController,
        blocks: int,
        *,
        compare: bool = False,
        skip_zero: bool = False,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        nsid: int = 1,
    ) -> NativeJob:
        flags = (lib.IMDN_COPY_COMPARE if compare else 0) | (lib.IMDN_COPY_SKIP_ZERO if skip_zero else 0)
        return self._start(lib.IMDN_JOB_COPY, src, dst, blocks, flags, chunk_bytes, rate_bytes_per_s, nsid, "a copy")

    def hash(
        self,
        src: NativeController,
        blocks: int,
        *,
        base: NativeController | None = None,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        nsid: int = 1,
        algorithm: str = "sha256",
    ) -> NativeJob:
        if algorithm not in HASH_ALGORITHMS:
            raise InvalidOptions(f"a hash: algorithm one of {', '.join(HASH_ALGORITHMS)}, not {algorithm!r}")
        flags = lib.IMDN_HASH_SHA512 if algorithm == "sha512" else 0
        return self._start(lib.IMDN_JOB_HASH, src, base, blocks, flags, chunk_bytes, rate_bytes_per_s, nsid, "a hash")

    def _start(
        self,
        kind: int,
        src: NativeController,
        dst: NativeController | None,
        blocks: int,
        flags: int,
        chunk_bytes: int,
        rate: int,
        nsid: int,
        what: str,
    ) -> NativeJob:
        if blocks <= 0 or not 0 < chunk_bytes <= MAX_CHUNK or rate < 0:
            raise InvalidOptions(f"{what}: blocks > 0, 0 < chunk_bytes <= {MAX_CHUNK} and rate >= 0")
        for name, controller in (("source", src), ("destination", dst)):
            if controller is not None and (not isinstance(controller, NativeController) or controller.mpath is None):
                raise NvmeError(-errno.ENODEV, f"{what}: the {name}'s controller is not attached")
        core = self._backend.core
        job = NativeJob(self, what)
        req = core.new_request(lib.IMDN_JOB_START)
        job._cookie = core.listen(job._on_event)
        req.cookie = job._cookie
        req.job_kind, req.copy_flags, req.job_blocks = kind, flags, blocks
        req.chunk_bytes, req.rate_bytes_per_s = chunk_bytes, rate
        req.job_src.mpath, req.job_src.nsid = src.mpath, nsid
        if dst is not None:
            req.job_dst.mpath, req.job_dst.nsid = dst.mpath, nsid
        fut = core.submit(req)
        fut.add_done_callback(lambda _: job._started(req))
        job._start = fut
        return job
