"""An in-memory ``spdk_ffi.jobs.Jobs`` for testing orchestration where SPDK
is absent. It moves no data: each job is recorded (kind, source,
destination, flags), and ends after ``delay`` seconds, or when a test ends
it (``delay = None``, then ``finish``). A hash's digest is what
``digest_of`` says of its source (by default the SHA-256 of the source
controller's first path; ``sha512_of`` for ``algorithm="sha512"``), so that
two jobs on the same source agree and two sources differ; a completed copy
calls ``on_copied`` (tests/v2/fakes.py makes the destination's fake lvol
read as the source's; a LookupError from it, a source or destination gone
during the copy, ends the job in error, as the C core's copy ends when its
reads or writes fail). The C core's jobs are tested in tests/spdk/test_jobs.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spdk_ffi.errors import InvalidOptions
from spdk_ffi.jobs import JobResult
from spdk_ffi.mirror import RebuildState


def _default_digest(controller: Any) -> str:
    paths = getattr(controller, "paths", None)
    return hashlib.sha256(str(paths[0] if paths else controller).encode()).hexdigest()


def _default_sha512(controller: Any, blocks: int) -> str:
    paths = getattr(controller, "paths", None)
    return hashlib.sha512(str(paths[0] if paths else controller).encode()).hexdigest()


@dataclass(eq=False)
class FakeJob:
    kind: str
    src: Any
    dst: Any
    blocks: int
    flags: dict[str, Any]
    done: asyncio.Future[JobResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    digest: str = ""
    on_copied: Callable[[FakeJob], None] | None = None

    def status(self) -> JobResult:
        if self.done.done() and not self.done.cancelled() and self.done.exception() is None:
            return self.done.result()
        return JobResult(RebuildState.IN_PROGRESS, 0, self.blocks * 4096)

    async def cancel(self) -> None:
        self.finish(RebuildState.CANCELLED)

    def finish(self, state: RebuildState = RebuildState.COMPLETE, error: str = "") -> None:
        if self.done.done():
            return
        total = self.blocks * 4096
        done = total if state is RebuildState.COMPLETE else 0
        if self.kind == "copy" and state is RebuildState.COMPLETE and self.on_copied is not None:
            try:
                self.on_copied(self)
            except LookupError as exc:  # its source or destination went during the copy: its I/O failed
                state, error = RebuildState.ERROR, str(exc)
        digest = self.digest if state is RebuildState.COMPLETE and self.kind == "hash" else ""
        self.done.set_result(JobResult(state, done, total, digest=digest, error=error))


class FakeJobs:
    def __init__(self) -> None:
        self.jobs: list[FakeJob] = []
        self.delay: float | None = 0.0
        self.digest_of: Callable[[Any], str] = _default_digest
        self.sha512_of: Callable[[Any, int], str] = _default_sha512  # (source, blocks)
        self.on_copied: Callable[[FakeJob], None] | None = None  # a copy completed: make dst read as src

    def _start(self, kind: str, src: Any, dst: Any, blocks: int, **flags: Any) -> FakeJob:
        if blocks <= 0:
            raise InvalidOptions(f"a {kind}: blocks > 0")
        job = FakeJob(kind, src, dst, blocks, flags, on_copied=self.on_copied)
        if kind == "hash":
            job.digest = self.sha512_of(src, blocks) if flags.get("algorithm") == "sha512" else self.digest_of(src)
        self.jobs.append(job)
        if self.delay is not None:
            asyncio.get_running_loop().call_later(self.delay, job.finish)
        return job

    def copy(self, src: Any, dst: Any, blocks: int, **flags: Any) -> FakeJob:
        return self._start("copy", src, dst, blocks, **flags)

    def hash(self, src: Any, blocks: int, *, base: Any = None, **flags: Any) -> FakeJob:
        return self._start("hash", src, base, blocks, **flags)
