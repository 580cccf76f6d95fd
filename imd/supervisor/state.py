"""State files, written so that a change is acknowledged only once it is on disk.

``StateStore`` is generic: it owns one file under the state dir and knows
nothing of what is in it. The process registry (``registry.json``, format
below) is one store; the SPDK data engine's disks, replicas and engines
will be another, in their own file, under the same rules:

    store = StateStore(state_dir / "registry.json", encode, durability)
    value = store.load(decode)   # at start: decoded, or None (no file, or set aside)
    ...change the in-memory state...
    store.mark_dirty()           # the state ``encode()`` would snapshot changed
    await store.commit()         # on disk now, or raises
    await store.close(timeout)   # at shutdown: flush, best effort

* ``encode()`` takes no arguments: the writer calls it when a write starts,
  so it always writes the newest state.
* **Group commit.** One writer task per store. ``commit()`` returns once a
  write that began after every change marked so far has reached the disk,
  so a burst of a hundred changes costs a handful of fsyncs, not a hundred.
  Changes nobody waits for (a child exited, a signal was sent after a
  commit) wait up to ``linger_s`` for a commit to share their write, rather
  than occupying the writer just as the next RPC's change arrives.
* **Commit or fail.** If that write fails, ``commit()`` raises the store's
  domain error, and so does every other commit waiting on the store at that
  moment: ENOSPC, EDQUOT, EMFILE, ENFILE and ENOMEM are ResourceExhausted
  with resource "state dir" (``state dir: no space left on device (writing
  ...)``); anything else (EROFS, EIO, ...) is Unavailable with the same
  text. The caller must then undo its change in memory (and mark the store
  dirty again), and answer the error: a change is acknowledged only if it is
  durable. While the store is failing, ``commit()`` raises at once.
* **Degraded mode.** A failure is reported to the daemon-wide
  ``Durability`` (health NOT_SERVING, mutating RPCs refused). The writer
  keeps retrying, 50 ms doubling to 2 s, for as long as anything is
  unwritten, which after a failure is always the case (what is on disk is
  unknown until a write succeeds); changes nobody waits for (a child that
  exited) are simply retried that way. The first write that succeeds
  clears the degraded state.
* **At the descriptor limit** the store asks ``relieve`` (the descriptor
  guard) to free some and tries again at once, before declaring failure.
* Writes are atomic (temp file, fsync, rename, fsync of the directory): a
  crash leaves the old file or the new one, never a torn one. A failed
  write removes its temp file, so a retry on a full disk does not find the
  space taken by its own leftovers. If the failure came after the rename
  (the directory fsync), the new content may survive a crash although its
  RPCs failed; like any RPC whose answer was an error or lost, the client
  re-reads to learn the outcome.

The registry format: one msgspec JSON document, rewritten whole on every
change. At a thousand entries that is ~300 KB and about a millisecond to
encode, so rewriting beats the complexity of a journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from imd.errors import ImdError, ResourceExhausted, Unavailable
from imd.eventlog import fields
from imd.metrics import Metrics
from imd.supervisor.durability import Durability
from imd.supervisor.model import InstanceInfo, PortBlock, ProcessSpec, ProcessState
from imd.supervisor.resources import describe, is_descriptor_limit

log = logging.getLogger("imd.state")

T = TypeVar("T")

STATE_VERSION = 1
REGISTRY_FILE = "registry.json"
STATE_DIR = "state dir"

# Errors that mean "ran out" rather than "broken".
_EXHAUSTION = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def write_error(exc: OSError, path: Path) -> ImdError:
    """The domain error for a failed write of ``path``."""
    detail = f"{describe(exc)} (writing {path})"
    if exc.errno in _EXHAUSTION:
        return ResourceExhausted(detail, resource=STATE_DIR)
    return Unavailable(f"{STATE_DIR}: {detail}")


class StateStore:
    def __init__(
        self,
        path: Path,
        encode: Callable[[], bytes],
        durability: Durability,
        *,
        relieve: Callable[[OSError], bool] | None = None,
        write: Callable[[Path, bytes], None] | None = None,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
        linger_s: float = 0.05,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = path
        self._metrics = metrics if metrics is not None else Metrics()
        self.name = path.name
        self._encode = encode
        self._durability = durability
        self._relieve = relieve
        self._write = write or write_atomically
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._linger_s = linger_s
        self._waiter_arrived = asyncio.Event()
        self._changed = 0  # generation of the newest change
        self._written = 0  # newest generation known to be on disk
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self._failure: Callable[[], ImdError] | None = None
        self.writes = 0
        self.failed_writes = 0

    # -- loading -----------------------------------------------------------------

    def load(self, decode: Callable[[bytes], T]) -> T | None:
        """The decoded file; None if there is none. A file that cannot be
        read or decoded (``decode`` raising msgspec.MsgspecError or
        ValueError) is set aside (renamed, never deleted, so an operator can
        look at it) and None returned: the daemon starts empty."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._set_aside(f"unreadable: {exc}")
            return None
        try:
            return decode(data)
        except (msgspec.MsgspecError, ValueError) as exc:
            self._set_aside(f"corrupt: {exc}")
            return None

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            self.path.replace(aside)
        except OSError as exc:
            log.error("cannot set aside state file", extra=fields(path=str(self.path), error=str(exc)))
        log.error("state file set aside; starting empty", extra=fields(reason=why, moved_to=str(aside)))

    # -- committing --------------------------------------------------------------

    @property
    def failing(self) -> bool:
        """The last write failed and none has succeeded since."""
        return self._failure is not None

    @property
    def pending(self) -> bool:
        """Some marked change is not known to be on disk yet."""
        return self._written < self._changed

    def mark_dirty(self) -> None:
        self._changed += 1
        self._kick()

    async def commit(self) -> None:
        """Return once every change marked so far is on disk. Raises the
        store's error (ResourceExhausted or Unavailable) if the write that
        was to cover it failed, or at once while the store is failing."""
        if self._failure is not None:
            raise self._failure()
        target = self._changed
        if self._written >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._waiter_arrived.set()
        self._kick()
        await waiter

    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_loop())

    async def _write_loop(self) -> None:
        delay = self._retry_initial_s
        relieved = False
        while self._written < self._changed:
            if not self._waiters and self._failure is None and self._linger_s > 0:
                self._waiter_arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._waiter_arrived.wait(), self._linger_s)
            generation = self._changed
            began = time.perf_counter()
            try:
                data = self._encode()
                await asyncio.to_thread(self._write, self.path, data)
                self._metrics.commit_duration.labels(self.name).observe(time.perf_counter() - began)
                self._metrics.commits.labels(self.name, "ok").inc()
            except OSError as exc:
                self._metrics.commits.labels(self.name, "failed").inc()
                if not relieved and is_descriptor_limit(exc) and self._relieve is not None and self._relieve(exc):
                    relieved = True
                    continue  # descriptors were freed: try again at once
                self._failed(functools.partial(write_error, exc, self.path))
            except Exception as exc:
                self._metrics.commits.labels(self.name, "failed").inc()
                # A bug (say, in encode) must not leave commits waiting forever.
                log.exception("state write failed unexpectedly", extra=fields(path=str(self.path)))
                self._failed(functools.partial(Unavailable, f"{STATE_DIR}: cannot write {self.path}: {exc!r}"))
            else:
                relieved = False
                self._succeeded(generation)
                delay = self._retry_initial_s
                continue
            relieved = False
            self._attempted.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    def _succeeded(self, generation: int) -> None:
        self.writes += 1
        self._written = generation
        still_waiting = []
        for target, waiter in self._waiters:
            if target > generation:
                still_waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._waiters = still_waiting
        if self._failure is not None:
            self._failure = None
            self._durability.succeeded(self.name)
        self._attempted.set()

    def _failed(self, error: Callable[[], ImdError]) -> None:
        """Every commit waiting now fails, not only those the failed write
        covered: the store is failing, and later ones would only wait for
        the next attempt to fail too."""
        self.failed_writes += 1
        self._failure = error
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error())
        self._durability.failed(self.name, error)

    async def close(self, timeout: float = 5.0) -> bool:
        """Write what is pending, trying for up to ``timeout`` seconds, then
        stop the writer. True if everything marked is on disk."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target = self._changed
        while self._written < target:
            self._kick()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._attempted.clear()
            try:
                await asyncio.wait_for(self._attempted.wait(), remaining)
            except TimeoutError:
                break
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return self._written >= target


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp file, fsync, rename, fsync of the
    directory. Blocking: run it in a worker thread."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the process registry's format ---------------------------------------------------


class Role(enum.StrEnum):
    """Where an entry sits in the registry."""

    CURRENT = "current"
    REPLACING = "replacing"  # a replacement that had not taken over yet
    RETIRING = "retiring"  # a replaced (or abandoned) process on its way out
    INTERNAL = "internal"  # the daemon's own helper (the SPDK target): never listed


class PersistedProcess(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    uuid: str
    spec: ProcessSpec
    instance: InstanceInfo
    pid: int
    start_time: int
    ports: PortBlock | None
    state: ProcessState
    error_msg: str
    role: Role
    delete_requested: bool


class StateFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    processes: list[PersistedProcess]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StateFile)


def encode_registry(processes: list[PersistedProcess]) -> bytes:
    return _encoder.encode(StateFile(STATE_VERSION, processes))


def decode_registry(data: bytes) -> list[PersistedProcess]:
    state = _decoder.decode(data)
    if state.version != STATE_VERSION:
        raise msgspec.ValidationError(f"unsupported version {state.version}")
    return state.processes
