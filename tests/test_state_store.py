"""StateStore (commit or fail, group commit, retry, degraded mode),
Durability (one owner for every store) and the error classification, in
process, with faults injected through the store's write function."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from imd.api.status import grpc_error
from imd.edges.threads import prestarted_executor
from imd.errors import ImdError, ResourceExhausted, Unavailable
from imd.supervisor.durability import Durability
from imd.supervisor.state import (
    Journal,
    StateStore,
    decode_registry,
    encode_registry,
    journal_path,
    write_atomically,
)
from tests.helpers import eventually


class Disk:
    """A write function whose failures the test switches on and off. It runs
    in the store's worker thread, so it is guarded by a threading lock."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.attempts = 0
        self.gate: threading.Event | None = None  # when set, writes wait for it
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, path: Path, data: bytes) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        with self._lock:
            self.attempts += 1
            error = self.error
        if error is not None:
            raise OSError(error, os.strerror(error))
        write_atomically(path, data)


class Counter:
    """The in-memory state: a number, encoded as JSON."""

    def __init__(self) -> None:
        self.value = 0
        self.broken = False

    def encode(self) -> bytes:
        if self.broken:
            raise RuntimeError("encoder bug")
        return msgspec.json.encode({"value": self.value})


def make_store(tmp_path: Path, disk: Disk, state: Counter, durability: Durability, **kw) -> StateStore:
    return StateStore(
        tmp_path / "counter.json",
        state.encode,
        durability,
        write=disk,
        retry_initial_s=0.01,
        retry_max_s=0.04,
        **kw,
    )


def on_disk(store: StateStore) -> int:
    return int(msgspec.json.decode(store.path.read_bytes())["value"])


@pytest.mark.asyncio
async def test_a_burst_of_commits_is_one_write(tmp_path: Path) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    store = make_store(tmp_path, disk, state, durability)

    async def change(i: int) -> None:
        state.value = i
        store.mark_dirty()
        await store.commit()

    # All fifty changes are made before the writer first runs: one write covers them.
    await asyncio.gather(*(change(i) for i in range(1, 51)))
    assert disk.attempts == 1 and store.writes == 1
    assert on_disk(store) == 50
    # A change made while a write is under way needs (and waits for) the next one.
    disk.gate = threading.Event()
    disk.entered.clear()
    state.value = 60
    store.mark_dirty()
    first = asyncio.ensure_future(store.commit())
    await eventually(disk.entered.is_set)  # the writer is now blocked inside the write of 60
    state.value = 61
    store.mark_dirty()
    second = asyncio.ensure_future(store.commit())
    disk.gate.set()
    await first
    await second
    assert on_disk(store) == 61 and store.writes == 3
    await store.close()


@pytest.mark.asyncio
async def test_changes_nobody_waits_for_share_the_next_commits_write(tmp_path: Path) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    store = StateStore(tmp_path / "c.json", state.encode, durability, write=disk, linger_s=30)
    state.value = 1
    store.mark_dirty()  # say, a child exited: nobody waits for this one
    await asyncio.sleep(0)  # one loop turn: the writer task starts, and lingers
    assert store._writer is not None and not store._writer.done()
    assert disk.attempts == 0 and store.pending
    state.value = 2
    store.mark_dirty()
    await store.commit()  # does not wait out the linger, and takes the change along
    assert disk.attempts == 1 and on_disk(store) == 2 and not store.pending
    await store.close()


@pytest.mark.asyncio
async def test_failed_write_fails_every_waiter_then_recovers_by_itself(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="imd")
    disk, state, durability = Disk(), Counter(), Durability()
    changes: list[bool] = []
    durability.on_change(lambda: changes.append(durability.degraded))
    store = make_store(tmp_path, disk, state, durability)
    state.value = 1
    store.mark_dirty()
    await store.commit()

    disk.error = errno.ENOSPC
    state.value = 2
    store.mark_dirty()
    results = await asyncio.gather(store.commit(), store.commit(), store.commit(), return_exceptions=True)
    assert all(isinstance(r, ResourceExhausted) for r in results), results
    assert len({id(r) for r in results}) == 3  # one exception object per RPC
    message = str(results[0])
    assert message == f"state dir: no space left on device (writing {store.path})"
    assert durability.degraded and store.failing
    assert durability.reason == message
    # While failing, a commit fails at once, without waiting for a write.
    attempts = disk.attempts
    with pytest.raises(ResourceExhausted):
        await store.commit()
    with pytest.raises(ResourceExhausted):
        durability.check()
    # The writer keeps retrying on its own, logging nothing per attempt.
    await eventually(lambda: disk.attempts >= attempts + 3)
    assert on_disk(store) == 1
    disk.error = None
    await eventually(lambda: not durability.degraded)
    assert on_disk(store) == 2 and not store.failing
    durability.check()
    await store.commit()
    assert changes == [True, False]
    logged = [r.getMessage() for r in caplog.records]
    assert logged.count("state not writable; refusing changes until it is") == 1
    assert logged.count("state writable again; accepting changes") == 1
    await store.close()


class NoThreads(ThreadPoolExecutor):
    """An executor at a pids limit: submit fails as ThreadPoolExecutor's
    does when pthread_create answers EAGAIN."""

    def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("can't start new thread")


@pytest.mark.asyncio
async def test_a_write_whose_thread_cannot_start_is_resource_exhausted_and_retried(tmp_path: Path) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    store = make_store(tmp_path, disk, state, durability)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(NoThreads(max_workers=1))
    try:
        state.value = 1
        store.mark_dirty()
        with pytest.raises(ResourceExhausted) as failed:
            await store.commit()
        assert str(failed.value) == f"state dir: cannot start a thread (writing {store.path})"
        assert grpc_error(failed.value).status.name == "RESOURCE_EXHAUSTED"
        assert durability.degraded and disk.attempts == 0
    finally:
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
    await eventually(lambda: not durability.degraded)  # threads again: the retry writes it
    assert on_disk(store) == 1
    await store.close()


def test_the_prestarted_executor_runs_every_worker_before_it_is_used() -> None:
    before = {t.ident for t in threading.enumerate()}
    pool = prestarted_executor(5)
    try:
        started = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("imd-io")]
        assert len(started) == 5
        # Calls now reuse those threads: none is started for them.
        futures = [pool.submit(threading.get_ident) for _ in range(20)]
        assert {f.result() for f in futures} <= {t.ident for t in started}
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    ("code", "kind", "text"),
    [
        (errno.ENOSPC, ResourceExhausted, "no space left on device"),
        (errno.EDQUOT, ResourceExhausted, "disk quota exceeded"),
        (errno.EMFILE, ResourceExhausted, "too many open files"),
        (errno.ENFILE, ResourceExhausted, "too many open files in system"),
        (errno.ENOMEM, ResourceExhausted, "cannot allocate memory"),
        (errno.EROFS, Unavailable, "read-only file system"),
        (errno.EIO, Unavailable, "input/output error"),
    ],
)
@pytest.mark.asyncio
async def test_write_errors_name_their_cause(tmp_path: Path, code: int, kind: type[ImdError], text: str) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    store = make_store(tmp_path, disk, state, durability)
    disk.error = code
    store.mark_dirty()
    with pytest.raises(ImdError) as err:
        await store.commit()
    assert type(err.value) is kind
    assert str(err.value) == f"state dir: {text} (writing {store.path})"
    status = grpc_error(err.value).status.name
    assert status == ("RESOURCE_EXHAUSTED" if kind is ResourceExhausted else "UNAVAILABLE")
    await store.close(timeout=0.1)


@pytest.mark.asyncio
async def test_descriptor_limit_is_relieved_and_retried_at_once(tmp_path: Path) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    relieved: list[int] = []

    def relieve(exc: OSError) -> bool:
        relieved.append(exc.errno or 0)
        disk.error = None  # the freed descriptors are enough
        return True

    store = make_store(tmp_path, disk, state, durability, relieve=relieve)
    disk.error = errno.EMFILE
    state.value = 7
    store.mark_dirty()
    await store.commit()
    assert relieved == [errno.EMFILE] and disk.attempts == 2
    assert not durability.degraded and on_disk(store) == 7
    # Nothing left to free: the commit fails like any other.
    disk.error = errno.EMFILE
    nothing = make_store(tmp_path, disk, state, durability, relieve=lambda exc: False)
    nothing.mark_dirty()
    with pytest.raises(ResourceExhausted, match="too many open files"):
        await nothing.commit()
    await nothing.close(timeout=0.1)
    await store.close()


@pytest.mark.asyncio
async def test_an_encoder_bug_fails_commits_instead_of_hanging_them(tmp_path: Path) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    store = make_store(tmp_path, disk, state, durability)
    state.broken = True
    store.mark_dirty()
    with pytest.raises(Unavailable, match="encoder bug"):
        await store.commit()
    assert durability.degraded
    state.broken = False
    await eventually(lambda: not durability.degraded)
    await store.close()


@pytest.mark.asyncio
async def test_close_flushes_and_gives_up_on_a_failing_disk(tmp_path: Path) -> None:
    disk, state, durability = Disk(), Counter(), Durability()
    store = make_store(tmp_path, disk, state, durability)
    state.value = 3
    store.mark_dirty()
    assert await store.close(timeout=5)
    assert on_disk(store) == 3
    failing = make_store(tmp_path, disk, state, durability)
    disk.error = errno.EIO
    state.value = 4
    failing.mark_dirty()
    assert not await failing.close(timeout=0.2)
    assert on_disk(failing) == 3


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()  # rename onto a directory fails after the temp file was written
    with pytest.raises(IsADirectoryError):
        write_atomically(target, b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_load_sets_aside_what_it_cannot_decode(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "registry.json", lambda: b"", Durability())
    assert store.load(decode_registry) is None  # no file
    store.path.write_bytes(encode_registry([]).replace(b'"version":1', b'"version":9'))
    assert store.load(decode_registry) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("registry.json.bad-")]
    assert len(aside) == 1 and b'"version":9' in aside[0].read_bytes()
    store.path.write_bytes(encode_registry([]))
    assert store.load(decode_registry) == []


@pytest.mark.asyncio
async def test_durability_is_degraded_while_any_store_fails() -> None:
    durability = Durability()
    durability.failed("registry.json", lambda: Unavailable("state dir: read-only file system (writing r)"))
    durability.failed(
        "spdk.json", lambda: ResourceExhausted("no space left on device (writing s)", resource="state dir")
    )
    assert durability.reason == (
        "state dir: read-only file system (writing r); state dir: no space left on device (writing s)"
    )
    raised = []
    for _ in range(2):
        with pytest.raises(Unavailable) as err:
            durability.check()
        raised.append(err.value)
    assert raised[0] is not raised[1]  # a fresh exception for every RPC
    durability.succeeded("registry.json")
    assert durability.degraded
    with pytest.raises(ResourceExhausted):
        durability.check()
    durability.succeeded("spdk.json")
    assert not durability.degraded and durability.reason == ""
    durability.check()


# -- the journal ------------------------------------------------------------------------


class Keyed:
    """In-memory state for a journaled store: a dict, whose changed keys
    become a journal record."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.whole = False  # changes() says "only a snapshot will do"

    def set(self, key: str, value: int | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        self.dirty.add(key)

    def encode(self) -> bytes:
        self.dirty.clear()
        return msgspec.json.encode(self.values)

    def changes(self) -> bytes | None:
        if self.whole:
            self.whole = False
            return None
        record = msgspec.json.encode({key: self.values.get(key) for key in self.dirty}) if self.dirty else b""
        self.dirty.clear()
        return record


def decode_keyed(data: bytes) -> dict[str, int]:
    return dict(msgspec.json.decode(data))


def replay_keyed(values: dict[str, int], record: bytes) -> dict[str, int]:
    for key, value in msgspec.json.decode(record).items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def journaled(tmp_path: Path, state: Keyed, **kw) -> StateStore:
    return StateStore(tmp_path / "k.json", state.encode, Durability(), changes=state.changes, **kw)


def reload(tmp_path: Path) -> dict[str, int] | None:
    return journaled(tmp_path, Keyed()).load(decode_keyed, replay_keyed)


@pytest.mark.asyncio
async def test_journal_appends_what_changed_and_load_replays_it(tmp_path: Path) -> None:
    state = Keyed()
    store = journaled(tmp_path, state)
    assert store.load(decode_keyed, replay_keyed) is None
    state.set("a", 1)
    store.mark_dirty()
    await store.commit()  # the first write after load is a whole snapshot
    assert store.snapshots == 1 and decode_keyed(store.path.read_bytes()) == {"a": 1}
    for i in range(20):
        state.set(f"k{i % 3}", i)
        if i == 10:
            state.set("a", None)
        store.mark_dirty()
        await store.commit()
    assert store.snapshots == 1 and store.writes == 21  # 20 appends, the file untouched
    assert decode_keyed(store.path.read_bytes()) == {"a": 1}
    assert reload(tmp_path) == {"k0": 18, "k1": 19, "k2": 17}
    # Only a snapshot will do: the owner says so.
    state.whole = True
    state.set("z", 26)
    store.mark_dirty()
    await store.commit()
    assert store.snapshots == 2 and reload(tmp_path) == {"k0": 18, "k1": 19, "k2": 17, "z": 26}
    # A clean close leaves a whole file and a journal that adds nothing.
    state.set("y", 25)
    store.mark_dirty()
    await store.commit()
    assert await store.close()
    assert decode_keyed(store.path.read_bytes()) == reload(tmp_path) == {"k0": 18, "k1": 19, "k2": 17, "z": 26, "y": 25}
    assert journal_path(store.path).stat().st_size == Journal.HEADER.size


@pytest.mark.asyncio
async def test_journal_is_compacted_into_a_snapshot_when_it_grows(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(Journal, "MIN_COMPACT", 200)
    state = Keyed()
    store = journaled(tmp_path, state)
    for i in range(40):
        state.set(f"key-{i}", i)
        store.mark_dirty()
        await store.commit()
    assert 2 <= store.snapshots < 40
    journal = store._journal
    assert journal is not None and journal_path(store.path).stat().st_size < journal.compact_at + 100
    assert reload(tmp_path) == {f"key-{i}": i for i in range(40)}
    await store.close()


@pytest.mark.asyncio
async def test_a_torn_append_is_ignored_and_followed_by_a_snapshot(tmp_path: Path) -> None:
    state = Keyed()
    store = journaled(tmp_path, state)
    for i in range(3):
        state.set("n", i)
        store.mark_dirty()
        await store.commit()
    journal = journal_path(store.path)
    intact = journal.read_bytes()
    # A crash in the middle of an append: half a record at the end.
    record = msgspec.json.encode({"n": 99})
    torn = Journal.RECORD.pack(len(record), zlib.crc32(record)) + record[:4]
    journal.write_bytes(intact + torn)
    assert reload(tmp_path) == {"n": 2}
    # A record whose bytes were damaged ends the replay there too.
    journal.write_bytes(intact + Journal.RECORD.pack(len(record), zlib.crc32(record) ^ 1) + record)
    assert reload(tmp_path) == {"n": 2}
    # A daemon starting on it writes a snapshot first, then appends again.
    state2 = Keyed()
    store2 = journaled(tmp_path, state2)
    state2.values = store2.load(decode_keyed, replay_keyed) or {}
    state2.set("m", 7)
    store2.mark_dirty()
    await store2.commit()
    assert store2.snapshots == 1 and reload(tmp_path) == {"n": 2, "m": 7}
    state2.set("m", 8)
    store2.mark_dirty()
    await store2.commit()
    assert store2.snapshots == 1 and reload(tmp_path) == {"n": 2, "m": 8}
    await store.close()
    await store2.close()


@pytest.mark.asyncio
async def test_a_journal_that_names_another_snapshot_is_ignored(tmp_path: Path) -> None:
    state = Keyed()
    store = journaled(tmp_path, state)
    state.set("a", 1)
    store.mark_dirty()
    await store.commit()
    state.set("a", 2)
    store.mark_dirty()
    await store.commit()
    assert reload(tmp_path) == {"a": 2}
    # A crash after a new snapshot was renamed into place but before the
    # journal was reset: the old journal names the old snapshot.
    store.path.write_bytes(msgspec.json.encode({"a": 3}))
    assert reload(tmp_path) == {"a": 3}
    await store.close()


@pytest.mark.asyncio
async def test_a_failed_append_fails_its_commits_and_the_next_write_is_a_snapshot(tmp_path: Path) -> None:
    state = Keyed()
    store = journaled(tmp_path, state, retry_initial_s=0.01, retry_max_s=0.04)
    state.set("a", 1)
    store.mark_dirty()
    await store.commit()
    journal = store._journal
    assert journal is not None
    real_append = journal.append
    calls = []

    def failing_append(payload: bytes) -> None:
        calls.append(payload)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    journal.append = failing_append  # type: ignore[method-assign]
    state.set("a", 2)
    store.mark_dirty()
    with pytest.raises(ResourceExhausted):
        await store.commit()
    assert calls
    journal.append = real_append  # type: ignore[method-assign]
    # The owner undoes its change and marks it; the retry is a snapshot.
    state.set("a", 1)
    store.mark_dirty()
    await eventually(lambda: not store.failing)
    assert store.snapshots == 2 and reload(tmp_path) == {"a": 1}
    await store.close()
