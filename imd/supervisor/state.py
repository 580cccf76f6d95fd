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
* **Journal** (optional). A store given ``changes`` as well writes the whole
  file only now and then; in between, each write appends one record to
  ``<file>.journal`` with what changed since the previous write (``changes()``
  says it, or returns None when only a whole snapshot can) and fdatasyncs
  it. ``load(decode, replay)`` replays the records on the snapshot. See
  "The journal" below.
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

The journal. Rewriting the registry whole on every commit cost, at a
thousand entries, ~300 KB written and three flushes to disk per commit
(file, rename, directory: 1 ms on this project's machine when it is quiet,
12 ms when its cores are busy) and a few milliseconds of encoding on the
event loop; under bench/compare that bounded creates and deletes per second
(16 concurrent callers share a commit, so throughput is at most 16 per
commit latency). Appending what changed is one small write and one flush
(0.2 ms quiet, 4 ms busy). The format:

* ``<file>.journal`` starts with a 16-byte header: ``imdjrnl1``, then the
  length and CRC-32 of the snapshot it extends. Records follow, each a
  4-byte length, the payload's CRC-32 and the payload (the owner's bytes).
* Records are replayed only onto the snapshot the header names; a record
  that is short or fails its CRC ends the replay (a torn append: its write
  never completed, so nothing waited on it was acknowledged).
* A snapshot is written whole (as without a journal: temp file, fsync,
  rename, directory fsync) first thing after start, after any failed write
  (a torn record may sit at the journal's end), when the journal has grown
  past twice the snapshot (and 256 KiB), when ``changes()`` returns None,
  and at ``close``. Only once the snapshot is durable is the journal reset
  to a header naming it, so a crash in between leaves the new snapshot and
  an old journal that names another: ignored.
* The journal file is created (empty, ignored) before the first snapshot
  is renamed into place, so the snapshot's directory fsync covers it too.

The registry format: one msgspec JSON document (``StateFile``); a journal
record (``RegistryChanges``) replaces every entry of the names it lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import logging
import os
import struct
import time
import zlib
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


def is_thread_limit(exc: BaseException) -> bool:
    """Whether ``exc`` is Python's answer to pthread_create's EAGAIN (a
    pids or RLIMIT_NPROC limit): the worker thread of a write could not start."""
    return isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)


def thread_error(exc: RuntimeError, path: Path) -> ImdError:
    """The domain error for a write whose worker thread could not start: out
    of tasks is exhaustion, like out of descriptors; anything else is a bug."""
    if is_thread_limit(exc):
        return ResourceExhausted(f"cannot start a thread (writing {path})", resource=STATE_DIR)
    return Unavailable(f"{STATE_DIR}: cannot write {path}: {exc!r}")


class StateStore:
    def __init__(
        self,
        path: Path,
        encode: Callable[[], bytes],
        durability: Durability,
        *,
        changes: Callable[[], bytes | None] | None = None,
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
        self._changes = changes
        # Only the writer task touches the journal, in its worker thread,
        # one call at a time.
        self._journal = Journal(journal_path(path)) if changes is not None else None
        self._need_snapshot = True
        self.snapshots = 0
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

    def load(self, decode: Callable[[bytes], T], replay: Callable[[T, bytes], T] | None = None) -> T | None:
        """The decoded file, with the journal's records replayed onto it by
        ``replay`` (given a store with a journal); None if there is no file.
        A file or record that cannot be read or decoded (msgspec.MsgspecError
        or ValueError) is set aside, with the journal (renamed, never
        deleted, so an operator can look at them), and None returned: the
        daemon starts empty. The next write is a whole snapshot."""
        self._need_snapshot = True
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._set_aside(f"unreadable: {exc}")
            return None
        try:
            value = decode(data)
            if replay is not None and self._journal is not None:
                for record in Journal.records(self._journal.path, data):
                    value = replay(value, record)
            return value
        except (msgspec.MsgspecError, ValueError) as exc:
            self._set_aside(f"corrupt: {exc}")
            return None
        except OSError as exc:
            self._set_aside(f"unreadable journal: {exc}")
            return None

    def _set_aside(self, why: str) -> None:
        suffix = f".bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        aside = self.path.with_name(self.path.name + suffix)
        try:
            self.path.replace(aside)
            if self._journal is not None and self._journal.path.exists():
                self._journal.path.replace(self._journal.path.with_name(self._journal.path.name + suffix))
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
                await self._write_once()
                self._metrics.commit_duration.labels(self.name).observe(time.perf_counter() - began)
                self._metrics.commits.labels(self.name, "ok").inc()
            except OSError as exc:
                self._metrics.commits.labels(self.name, "failed").inc()
                if not relieved and is_descriptor_limit(exc) and self._relieve is not None and self._relieve(exc):
                    relieved = True
                    continue  # descriptors were freed: try again at once
                self._failed(functools.partial(write_error, exc, self.path))
            except RuntimeError as exc:
                self._metrics.commits.labels(self.name, "failed").inc()
                if not is_thread_limit(exc):
                    log.exception("state write failed unexpectedly", extra=fields(path=str(self.path)))
                self._failed(functools.partial(thread_error, exc, self.path))
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

    async def _write_once(self) -> None:
        """One write: a journal record when it can, else a whole snapshot.
        Whatever fails, the next write is a snapshot (a torn record may sit
        at the journal's end)."""
        journal = self._journal
        record = None
        if journal is not None and self._changes is not None and not self._need_snapshot:
            record = self._changes()
        self._need_snapshot = True
        if journal is None:
            await asyncio.to_thread(self._write, self.path, self._encode())
        elif record is not None and journal.size < journal.compact_at:
            if record:
                await asyncio.to_thread(journal.append, record)
        else:
            data = self._encode()
            if self._changes is not None:
                self._changes()  # the snapshot says it all
            await asyncio.to_thread(self._write_snapshot, journal, data)
            self.snapshots += 1
        self._need_snapshot = False

    def _write_snapshot(self, journal: Journal, data: bytes) -> None:
        """In the worker thread: the snapshot, durable, then the journal
        reset to extend it (see "The journal")."""
        journal.ensure_exists()
        self._write(self.path, data)
        journal.reset(data)

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
        stop the writer. True if everything marked is on disk. A store
        with a journal ends with a whole snapshot (and an empty journal)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._journal is not None and self._journal.size > Journal.HEADER.size:
            self._need_snapshot = True
            self.mark_dirty()
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


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


class Journal:
    """``<file>.journal``: records appended after a snapshot (see "The
    journal" in the module docstring). Blocking: the store calls it from its
    worker thread, one call at a time.

    The file is opened for each write and closed after it, as the state file
    is: an open descriptor would keep the state dir's file system from being
    remounted read-only, and costs nothing next to the flush."""

    HEADER = struct.Struct(">8sII")  # magic, snapshot length, snapshot CRC-32
    RECORD = struct.Struct(">II")  # payload length, payload CRC-32
    MAGIC = b"imdjrnl1"
    MIN_COMPACT = 256 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0  # bytes written since the last reset; 0 before the first
        self.compact_at = 0  # a snapshot is due once size reaches this

    def ensure_exists(self) -> None:
        """Create the file (empty: it names no snapshot) if it is missing,
        before a snapshot whose directory fsync will cover it."""
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))

    def reset(self, snapshot: bytes) -> None:
        """Empty the journal and make it extend ``snapshot``, durably."""
        self.size = 0
        header = self.HEADER.pack(self.MAGIC, len(snapshot), zlib.crc32(snapshot))
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, header, 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.size = len(header)
        self.compact_at = max(self.MIN_COMPACT, 2 * len(snapshot))

    def append(self, payload: bytes) -> None:
        """One record, durable when this returns. On an error the record may
        be torn: the store's next write is a snapshot, which resets this."""
        record = self.RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            _write_all(fd, record, self.size)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.size += len(record)

    @classmethod
    def records(cls, path: Path, snapshot: bytes) -> list[bytes]:
        """The payloads of the intact records extending ``snapshot``: none
        if the journal is missing or names another snapshot; up to the first
        short or corrupt record (a torn append) otherwise."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        if len(data) < cls.HEADER.size:
            return []
        magic, length, crc = cls.HEADER.unpack_from(data)
        if magic != cls.MAGIC or length != len(snapshot) or crc != zlib.crc32(snapshot):
            return []
        payloads = []
        offset = cls.HEADER.size
        while offset + cls.RECORD.size <= len(data):
            length, crc = cls.RECORD.unpack_from(data, offset)
            start = offset + cls.RECORD.size
            payload = data[start : start + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            payloads.append(payload)
            offset = start + length
        return payloads


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


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


class NameEntries(msgspec.Struct, forbid_unknown_fields=True):
    """Every entry of one name, in one namespace (internal children have
    their own): an empty list means the name has none left."""

    internal: bool
    name: str
    entries: list[PersistedProcess]


class RegistryChanges(msgspec.Struct, forbid_unknown_fields=True):
    """A journal record: the names whose entries changed, as they are now."""

    version: int
    names: list[NameEntries]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StateFile)
_changes_decoder = msgspec.json.Decoder(RegistryChanges)

Registry = dict[tuple[bool, str], list[PersistedProcess]]


def encode_registry(processes: list[PersistedProcess]) -> bytes:
    return _encoder.encode(StateFile(STATE_VERSION, processes))


def decode_registry(data: bytes) -> list[PersistedProcess]:
    state = _decoder.decode(data)
    if state.version != STATE_VERSION:
        raise msgspec.ValidationError(f"unsupported version {state.version}")
    return state.processes


def encode_changes(names: list[NameEntries]) -> bytes:
    return _encoder.encode(RegistryChanges(STATE_VERSION, names))


def group_registry(data: bytes) -> Registry:
    """The snapshot, as entries by (internal, name): what records replace."""
    grouped: Registry = {}
    for entry in decode_registry(data):
        grouped.setdefault((entry.role == Role.INTERNAL, entry.name), []).append(entry)
    return grouped


def replay_changes(grouped: Registry, record: bytes) -> Registry:
    changes = _changes_decoder.decode(record)
    if changes.version != STATE_VERSION:
        raise msgspec.ValidationError(f"unsupported version {changes.version}")
    for item in changes.names:
        key = (item.internal, item.name)
        if item.entries:
            grouped[key] = item.entries
        else:
            grouped.pop(key, None)
    return grouped


def load_registry(store: StateStore) -> list[PersistedProcess] | None:
    """The registry as the last acknowledged write left it: the snapshot
    with the journal replayed (None if there is none, or it was set aside)."""
    grouped = store.load(group_registry, replay_changes)
    return None if grouped is None else [entry for entries in grouped.values() for entry in entries]


def read_registry(state_dir: Path) -> list[PersistedProcess]:
    """What a daemon starting on ``state_dir`` would recover, read-only (for
    tools and tests): nothing is set aside."""
    path = state_dir / REGISTRY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    grouped = group_registry(data)
    for record in Journal.records(journal_path(path), data):
        grouped = replay_changes(grouped, record)
    return [entry for entries in grouped.values() for entry in entries]
