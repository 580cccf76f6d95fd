"""The registry of supervised processes and the one owner of it.

Invariants, which tests/test_stress.py checks under concurrent load:

* one entry per name; an entry's UUID never changes (a replace makes a new
  entry with a new UUID under the same name);
* every entry has a live child or has exited and says so in its state, and
  every child we started has an entry (current, replacing or retiring)
  until it has exited;
* ports belong to exactly one process and are released only after that
  process exited.

Internal children (the daemon's own helpers, such as the node's SPDK
target) get the same spawn, pidfd, start-time and persistence treatment,
but live in a namespace of their own: they never appear in a list or an
event, so a manager can never judge one an orphan and delete it.

All mutation happens on the event loop thread between awaits, so no lock is
needed, and none is ever held across a wait on a child or the network. The
only long wait here, a replace waiting for its new process to become
ready, holds no lock either: it holds a slot in ``_replacing``, which a
concurrent replace sees (and is refused) and a delete cancels.

Durability: a create, delete or replace returns only once its change is in
the state file (``StateStore.commit``); if that write fails, the change is
undone and the RPC fails with the store's error. What can be undone
decides the order of each operation:

* create spawns first (the entry records the pid), then commits; if the
  commit fails, the child is stopped and its ports freed once it exited;
* delete commits the intent first (``delete_pending``) and signals only
  after; a failed commit leaves the process untouched, and a crash after
  the commit is finished by recovery (``delete_requested``);
* replace commits the takeover first (``promoting``: the file says the new
  process is current and the old one retiring) and signals the old process
  only after; a failed commit stops the new process and leaves the old one
  as it was.

While a change of a name is being made durable the name is *settling*: a
delete or replace of it waits for the outcome (one write, or an immediate
failure) and then looks again, so no change is made on top of one that may
still be undone. This is a wait on the disk, bounded, never on a client.

Children are spawned in worker threads (``posix_spawn`` suspends its caller
until the child has exec'd, which under load takes milliseconds): a create
or replace is settling while its child is spawned, too, so a second create
of the name is refused and a delete of it waits for the outcome. The spawn,
and everything a create does after it, runs in a task of its own that the
RPC cannot cancel half-way: a child is never left spawned without an entry.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import signal
import uuid as uuidlib
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from imd.edges.spawn import (
    TAG_OWNER,
    TAG_UUID,
    child_environment,
    kill_untracked,
    reattach,
    spawn_watched,
    tagged_processes,
)
from imd.errors import AlreadyExists, Conflict, FailedPrecondition, ImdError, NotFound, StartFailed
from imd.eventlog import fields
from imd.metrics import Metrics
from imd.supervisor.broadcast import Broadcaster
from imd.supervisor.durability import Durability
from imd.supervisor.logs import LogStore
from imd.supervisor.model import (
    NO_INSTANCE,
    InstanceInfo,
    ProcessEvent,
    ProcessSpec,
    ProcessState,
    ProcessView,
)
from imd.supervisor.ports import PortAllocator
from imd.supervisor.process import ManagedProcess, SupervisionSettings
from imd.supervisor.resources import DescriptorGuard, is_descriptor_limit, spawn_error
from imd.supervisor.state import (
    REGISTRY_FILE,
    NameEntries,
    PersistedProcess,
    Role,
    StateStore,
    encode_changes,
    encode_registry,
)

log = logging.getLogger("imd.supervisor")

R = TypeVar("R")

# Threads that spawn children. A spawn blocks its thread until the child
# has exec'd; a few let creates that arrive together spawn in parallel.
SPAWN_THREADS = 4


class Supervisor:
    def __init__(
        self,
        *,
        ports: PortAllocator,
        logs: LogStore,
        settings: SupervisionSettings,
        watch_queue_limit: int = 1024,
        env: dict[str, str] | None = None,
        descriptors: DescriptorGuard | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.ports = ports
        self.descriptors = descriptors if descriptors is not None else DescriptorGuard(0)
        self.metrics = metrics if metrics is not None else Metrics()
        self._last_state: dict[str, ProcessState] = {}  # by UUID: what the transition counter last saw
        self.logs = logs
        self.settings = settings
        self.events: Broadcaster[ProcessEvent] = Broadcaster(watch_queue_limit)
        self._env = child_environment(env)
        self._current: dict[str, ManagedProcess] = {}
        self._replacing: dict[str, ManagedProcess] = {}
        self._retiring: set[ManagedProcess] = set()
        self._internal: dict[str, ManagedProcess] = {}
        # Told when an internal child exits (its owner decides what next).
        self._internal_exit: dict[str, Callable[[ManagedProcess], None]] = {}
        # Futures resolved when a name's current process leaves the
        # registry: log followers of that name stop on it.
        self._removed: dict[str, asyncio.Future[None]] = {}
        # Names with a commit in flight, resolved when it succeeded or was undone.
        self._settling: dict[str, asyncio.Future[None]] = {}
        self._seq = 0
        self.store: StateStore | None = None
        self._owner = ""
        self._spawner = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="imd-spawn")
        # What changed since the last write, for the state journal: names
        # by (internal namespace?, name), or everything.
        self._dirty: set[tuple[bool, str]] = set()
        self._dirty_all = False
        # Processes whose child is being spawned: their ports are allocated,
        # their child may already run, and their entry is not made yet.
        self._spawning: set[ManagedProcess] = set()

    # -- persistence -----------------------------------------------------------

    def attach_store(self, state_dir: Path, durability: Durability) -> StateStore:
        self.store = StateStore(
            state_dir / REGISTRY_FILE,
            self._encode_snapshot,
            durability,
            changes=self._encode_changes,
            relieve=self.descriptors.limit_hit,
            metrics=self.metrics,
        )
        self._owner = str(state_dir.absolute())
        return self.store

    def _child_env(self, uuid: str) -> dict[str, str]:
        if not self._owner:
            return self._env
        return {**self._env, TAG_UUID: uuid, TAG_OWNER: self._owner}

    async def durable(self) -> None:
        """Wait until every change so far is on disk; raises the store's
        error if it cannot be written (see StateStore.commit)."""
        if self.store is not None:
            await self.store.commit()

    def snapshot(self) -> list[PersistedProcess]:
        """The registry as the state file must say it. Changes being
        committed are written as if done (a pending delete as requested, a
        promoting replacement as current and its predecessor as retiring):
        the file is what a crash leaves, and recovery finishes them."""
        promoting = {name for name, proc in self._replacing.items() if proc.promoting}
        entries = []
        for proc in self._current.values():
            entries.append(self._persisted(proc, Role.RETIRING if proc.name in promoting else Role.CURRENT))
        for proc in self._replacing.values():
            entries.append(self._persisted(proc, Role.CURRENT if proc.promoting else Role.REPLACING))
        for proc in self._retiring:
            entries.append(self._persisted(proc, Role.RETIRING))
        for proc in self._internal.values():
            entries.append(self._persisted(proc, Role.INTERNAL))
        return entries

    def _encode_snapshot(self) -> bytes:
        self._dirty.clear()
        self._dirty_all = False
        return encode_registry(self.snapshot())

    def _encode_changes(self) -> bytes | None:
        """The journal record for every name changed since the last write
        (b"" if none), or None when only a whole snapshot will do. Only the
        changed names' entries are encoded, however large the registry."""
        if self._dirty_all:
            self._dirty.clear()
            self._dirty_all = False
            return None
        if not self._dirty:
            return b""
        names = [NameEntries(internal, name, self._entries_of(internal, name)) for internal, name in self._dirty]
        self._dirty.clear()
        return encode_changes(names)

    def _entries_of(self, internal: bool, name: str) -> list[PersistedProcess]:
        """``name``'s entries as ``snapshot`` has them."""
        if internal:
            proc = self._internal.get(name)
            return [self._persisted(proc, Role.INTERNAL)] if proc is not None else []
        entries = []
        replacing = self._replacing.get(name)
        promoting = replacing is not None and replacing.promoting
        current = self._current.get(name)
        if current is not None:
            entries.append(self._persisted(current, Role.RETIRING if promoting else Role.CURRENT))
        if replacing is not None:
            entries.append(self._persisted(replacing, Role.CURRENT if promoting else Role.REPLACING))
        entries.extend(self._persisted(proc, Role.RETIRING) for proc in self._retiring if proc.name == name)
        return entries

    @staticmethod
    def _persisted(proc: ManagedProcess, role: Role) -> PersistedProcess:
        return PersistedProcess(
            name=proc.name,
            uuid=proc.uuid,
            spec=proc.spec,
            instance=proc.instance,
            pid=proc.pid,
            start_time=proc.start_time,
            ports=proc.ports,
            state=proc.state,
            error_msg=proc.error_msg,
            role=role,
            delete_requested=proc.delete_requested or proc.delete_pending,
        )

    def recover(self, entries: list[PersistedProcess]) -> dict[str, int]:
        """Rebuild the registry from disk before any request is served.

        Each live child (same pid *and* start time) is adopted with its
        UUID, ports, state and log file. One that is gone is reported in
        state error; one that was being deleted is simply removed. A
        replacement whose replace RPC died with the old daemon is stopped,
        since nobody is waiting for it any more. Ports of everything kept
        are reserved before the first create can allocate.
        """
        report = {"adopted": 0, "lost": 0, "kept": 0, "dropped": 0}
        for entry in entries:
            if entry.name in self._current and entry.role == Role.CURRENT:
                log.error("duplicate entry in state file", extra=fields(name=entry.name, uuid=entry.uuid))
                report["dropped"] += 1
                continue
            ports = entry.ports
            if ports is not None:
                try:
                    self.ports.reserve(ports)
                except ValueError as exc:
                    log.error("persisted ports unusable", extra=fields(name=entry.name, error=str(exc)))
                    ports = None
            proc = ManagedProcess(
                name=entry.name,
                uuid=entry.uuid,
                spec=entry.spec,
                instance=entry.instance,
                ports=ports,
                observer=self,
                settings=self.settings,
            )
            proc.delete_requested = entry.delete_requested
            proc.state = entry.state
            proc.error_msg = entry.error_msg
            proc.pid = entry.pid
            pidfd = None if entry.state.terminal else reattach(entry.pid, entry.start_time)
            if entry.role == Role.INTERNAL:
                self._recover_internal(proc, entry, pidfd)
                report["adopted" if pidfd is not None else "dropped"] += 1
                continue
            if pidfd is None:
                proc.mark_lost("exited while the daemon was down")
                if entry.role == Role.CURRENT and not proc.delete_requested:
                    self._current[proc.name] = proc
                    report["kept" if entry.state.terminal else "lost"] += 1
                else:
                    self._release_ports(proc)
                    report["dropped"] += 1
                continue
            report["adopted"] += 1
            if entry.role == Role.CURRENT:
                self._current[proc.name] = proc
                proc.adopt(entry.pid, pidfd, entry.start_time, entry.state)
                if proc.delete_requested:
                    proc.stop(signal.SIGINT)
            else:
                self._retiring.add(proc)
                proc.adopt(entry.pid, pidfd, entry.start_time, entry.state)
                proc.stop(signal.SIGHUP if entry.role == Role.RETIRING else signal.SIGINT)
            log.info("adopted", extra=fields(name=proc.name, uuid=proc.uuid, pid=entry.pid, state=proc.state.value))
        report["untracked_killed"] = self._kill_untracked({entry.uuid for entry in entries})
        self._changed()
        return report

    def _recover_internal(self, proc: ManagedProcess, entry: PersistedProcess, pidfd: int | None) -> None:
        """An internal child is kept only while it lives: its owner starts a
        new one when it finds none (``internal()`` returns None)."""
        if pidfd is None:
            self._release_ports(proc)
            log.warning("internal child gone", extra=fields(name=proc.name, uuid=proc.uuid, pid=entry.pid))
            return
        self._internal[proc.name] = proc
        proc.adopt(entry.pid, pidfd, entry.start_time, entry.state)
        log.info("adopted internal child", extra=fields(name=proc.name, uuid=proc.uuid, pid=entry.pid))

    def _kill_untracked(self, known: set[str]) -> int:
        """Children of ours that no entry knows: spawned just before a crash,
        before their entry reached the disk. No create ever returned for
        them and their ports are not reserved, so they cannot be adopted
        safely; they are killed (the manager re-creates what it wants)."""
        if not self._owner:
            return 0
        killed = 0
        for uuid, pids in tagged_processes(self._owner).items():
            if uuid in known:
                continue
            for pid in pids:
                if kill_untracked(pid):
                    killed += 1
                    log.warning("untracked child killed", extra=fields(uuid=uuid, pid=pid))
        return killed

    # -- queries ---------------------------------------------------------------

    def get(self, name: str) -> ProcessView:
        return self._lookup(name).view()

    def views(self) -> list[ProcessView]:
        return [proc.view() for proc in self._current.values()]

    def set_condition(self, name: str, uuid: str, condition: str, value: bool) -> bool:
        """Record an observed condition of ``name``'s current process (if it
        is still the one with ``uuid``); watchers see a change as an event.
        True if something changed."""
        proc = self._current.get(name)
        if proc is None or proc.uuid != uuid or proc.conditions.get(condition) is value:
            return False
        proc.conditions[condition] = value
        self._publish(proc)  # observed, not persisted: no state write
        return True

    def all_processes(self) -> list[ManagedProcess]:
        """Every process with a live or unreaped child: current, replacing,
        retiring and internal."""
        return [*self._current.values(), *self._replacing.values(), *self._retiring, *self._internal.values()]

    @property
    def spawning(self) -> frozenset[ManagedProcess]:
        """Processes being spawned (in a spawn thread): they hold ports, and
        may have a child, but are in no registry slot yet."""
        return frozenset(self._spawning)

    def removal_of(self, name: str) -> asyncio.Future[None]:
        """Completes when ``name``'s current process leaves the registry."""
        self._lookup(name)
        fut = self._removed.get(name)
        if fut is None or fut.done():
            fut = self._removed[name] = asyncio.get_running_loop().create_future()
        return fut

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for proc in self._current.values():
            counts[proc.state.value] = counts.get(proc.state.value, 0) + 1
        return counts

    # -- create ----------------------------------------------------------------

    async def create(self, spec: ProcessSpec, instance: InstanceInfo = NO_INSTANCE) -> ProcessView:
        """Spawn ``spec`` and return once its entry is on disk. If it cannot
        be written, the child is stopped (its ports freed when it exited)
        and the store's error raised: nothing was created."""
        name = spec.name
        if name in self._current or name in self._settling:
            raise AlreadyExists(f"process {name} already exists", field="spec.name")
        settled = self._begin_settling(name)
        return await _run_shielded(self._create(spec, instance, settled))

    async def _create(self, spec: ProcessSpec, instance: InstanceInfo, settled: asyncio.Future[None]) -> ProcessView:
        try:
            proc = await self._start(spec, instance)
        except BaseException:
            self._end_settling(spec.name, settled)
            raise
        self._current[spec.name] = proc
        self._emit(proc)
        log.info("created", extra=fields(name=proc.name, uuid=proc.uuid, pid=proc.pid))
        # The reply describes the process as created; what happens to it
        # while the entry is written (it may already have exited) is news
        # for the watchers, as before.
        created = proc.view()
        return await self._settle(spec.name, settled, lambda: created, functools.partial(self._undo_create, proc))

    def _undo_create(self, proc: ManagedProcess) -> None:
        log.warning("create undone: its entry could not be written", extra=fields(name=proc.name, uuid=proc.uuid))
        if self._current.get(proc.name) is proc:
            del self._current[proc.name]
            self.logs.mark_deleted(proc.name)
            self._resolve_removal(proc.name)
        proc.delete_requested = True
        self._changed(proc.name)
        self._retire(proc)

    def _prepare(self, spec: ProcessSpec, instance: InstanceInfo) -> ManagedProcess:
        """A process for ``spec``, with its ports, not spawned yet. Refused
        before anything is allocated while descriptors are short."""
        self.descriptors.admit()
        block = self.ports.allocate(spec.port_count) if spec.port_count > 0 else None
        return ManagedProcess(
            name=spec.name,
            uuid=str(uuidlib.uuid4()),
            spec=spec,
            instance=instance,
            ports=block,
            observer=self,
            settings=self.settings,
        )

    def _spawn_failed(self, proc: ManagedProcess, exc: OSError) -> ImdError:
        """Spawn failures are told apart (see imd.supervisor.resources): the
        caller's mistake, exhaustion, or the node being unable to."""
        self._release_ports(proc)
        self.metrics.spawn_failures.labels(errno.errorcode.get(exc.errno or 0, "unknown")).inc()
        if is_descriptor_limit(exc):
            self.descriptors.limit_hit(exc)
        return spawn_error(exc, proc.spec.binary)

    async def _start(self, spec: ProcessSpec, instance: InstanceInfo) -> ManagedProcess:
        """Spawn a child for ``spec`` in a spawn thread. Must not be
        cancelled once begun (run it in a shielded task): the thread would
        finish the spawn with nobody left to take the child."""
        proc = self._prepare(spec, instance)
        log_path = self.logs.prepare(spec.name)
        loop = asyncio.get_running_loop()
        self._spawning.add(proc)
        try:
            child = await loop.run_in_executor(
                self._spawner, spawn_watched, proc.argv, log_path, self._child_env(proc.uuid)
            )
        except OSError as exc:
            raise self._spawn_failed(proc, exc) from exc
        finally:
            self._spawning.discard(proc)
        proc.attach(child)
        return proc

    def _start_now(
        self, spec: ProcessSpec, instance: InstanceInfo, extra_env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Spawn a child for ``spec`` on the loop thread (internal children:
        rare, and their callers are not coroutines)."""
        proc = self._prepare(spec, instance)
        try:
            env = self._child_env(proc.uuid)
            proc.launch(self.logs.prepare(spec.name), {**env, **extra_env} if extra_env else env)
        except OSError as exc:
            raise self._spawn_failed(proc, exc) from exc
        return proc

    # -- internal children ----------------------------------------------------------

    def internal(self, name: str) -> ManagedProcess | None:
        """The live internal child ``name`` (adopted or started), if any."""
        proc = self._internal.get(name)
        return proc if proc is not None and not proc.state.terminal else None

    def start_internal(
        self,
        spec: ProcessSpec,
        on_exit: Callable[[ManagedProcess], None],
        *,
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """Spawn an internal child; ``on_exit`` is called when it exits.
        Raises InvalidArgument (naming ``spec.binary``) if it cannot be
        executed. A previous child of that name must have exited."""
        if self.internal(spec.name) is not None:
            raise AlreadyExists(f"internal process {spec.name} is running", field="spec.name")
        stale = self._internal.pop(spec.name, None)
        if stale is not None:
            self._release_ports(stale)
        proc = self._start_now(spec, NO_INSTANCE, extra_env)
        self._internal[spec.name] = proc
        self._internal_exit[spec.name] = on_exit
        self._changed(spec.name, internal=True)
        log.info("internal child started", extra=fields(name=proc.name, uuid=proc.uuid, pid=proc.pid))
        return proc

    def watch_internal(self, name: str, on_exit: Callable[[ManagedProcess], None]) -> None:
        """Be told when the (adopted) internal child ``name`` exits."""
        self._internal_exit[name] = on_exit

    def stop_internal(self, name: str) -> ManagedProcess | None:
        """Ask the internal child to stop (SIGINT, SIGKILL after the grace
        period); its ``exited`` future completes when it has."""
        proc = self._internal.get(name)
        if proc is not None:
            proc.delete_requested = True
            self._changed(name, internal=True)
            proc.stop(signal.SIGINT)
        return proc

    # -- delete ----------------------------------------------------------------

    async def delete(self, name: str, uuid: str = "") -> ProcessView:
        """Ask ``name`` to stop; return with ``deleted=true`` once the
        request is on disk, without waiting for the child to exit.

        With a UUID, only the process of that UUID is touched: a manager
        holding a stale UUID (the name was re-created or replaced since)
        gets NOT_FOUND and the current process lives on. That includes the
        UUID of a predecessor still exiting after a replace, as in the Go
        original: it is no longer this name's process. The intent is committed before the
        child is signalled, so a failed write leaves it untouched. The entry
        leaves the registry when the child has exited, with one final event
        carrying ``deleted=true``.
        """
        await self._settled(name)
        proc = self._current.get(name)
        if proc is None or (uuid and proc.uuid != uuid):
            raise NotFound(f"cannot find process {name} with UUID {uuid or '(any)'}", field="uuid" if proc else "name")
        if proc.delete_requested:
            return proc.view(deleted=True)  # already on disk and under way
        proc.delete_pending = True
        return await self._commit(
            name, functools.partial(self._delete_committed, proc), functools.partial(self._undo_delete, proc)
        )

    def _delete_committed(self, proc: ManagedProcess) -> ProcessView:
        proc.delete_pending = False
        proc.delete_requested = True
        self._changed(proc.name)
        log.info("delete requested", extra=fields(name=proc.name, uuid=proc.uuid))
        replacement = self._replacing.pop(proc.name, None)
        if replacement is not None:
            replacement.delete_requested = True
            self._retire(replacement)
        if proc.state.terminal:
            self._remove(proc)
        else:
            proc.stop(signal.SIGINT)
        return proc.view(deleted=True)

    def _undo_delete(self, proc: ManagedProcess) -> None:
        log.warning("delete undone: it could not be written", extra=fields(name=proc.name, uuid=proc.uuid))
        proc.delete_pending = False
        self._changed(proc.name)

    # -- replace ---------------------------------------------------------------

    async def replace(self, spec: ProcessSpec, sig: int, instance: InstanceInfo = NO_INSTANCE) -> ProcessView:
        """Start ``spec`` under a new UUID and ports; once it runs, make it
        the current process and send ``sig`` to the old one.

        The old process is untouched until the new one is ready and the
        takeover is on disk, and its ports are kept until it has exited. If
        the new process fails, the replace is cancelled while it starts
        (client gone, delete of the name), or the takeover cannot be
        written, the new process is stopped and the old one carries on as
        if nothing happened.
        """
        name = spec.name
        await self._settled(name)
        old = self._current.get(name)
        if old is None:
            raise NotFound(f"cannot find process {name}", field="spec.name")
        if name in self._replacing:
            raise Conflict(f"a replace of {name} is already in progress", field="spec.name")
        if old.state == ProcessState.STOPPING or old.delete_requested:
            raise FailedPrecondition(f"process {name} is stopping", field="spec.name")
        settled = self._begin_settling(name)
        starting = asyncio.ensure_future(self._start_replacement(spec, instance, settled))
        starting.add_done_callback(_retrieve)
        try:
            new = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The client went away while the replacement was spawned: stop
            # it as soon as it is there.
            starting.add_done_callback(self._abandon_started)
            raise
        log.info("replace started", extra=fields(name=new.name, uuid=new.uuid, old_uuid=old.uuid))
        try:
            ready = await asyncio.shield(new.started)
            if ready:
                # A delete of the name being committed decides first.
                await self._settled(name)
        except BaseException:
            self._abandon(new)
            raise
        if self._replacing.get(name) is not new:
            # A delete of the name took the replacement away while we waited.
            raise Conflict(f"replace of {name} aborted: the process was deleted", field="spec.name")
        if not ready:
            self._abandon(new)
            raise StartFailed(
                f"replacement for {name} did not start: {new.error_msg or new.state}",
                field="spec",
            )
        new.promoting = True
        return await self._commit(
            name, functools.partial(self._promote, new, sig), functools.partial(self._undo_promotion, new)
        )

    async def _start_replacement(
        self, spec: ProcessSpec, instance: InstanceInfo, settled: asyncio.Future[None]
    ) -> ManagedProcess:
        """Spawn the replacement and put it in the replacing slot. The name
        settles once it is there: a delete waiting for it then finds the
        replace in progress, and cancels it."""
        try:
            new = await self._start(spec, instance)
            self._replacing[spec.name] = new
            self._emit(new)
            return new
        finally:
            self._end_settling(spec.name, settled)

    def _abandon_started(self, starting: asyncio.Task[ManagedProcess]) -> None:
        if not starting.cancelled() and starting.exception() is None:
            self._abandon(starting.result())

    def _promote(self, new: ManagedProcess, sig: int) -> ProcessView:
        """The takeover is on disk: make it so in memory, and only now
        signal the old process."""
        new.promoting = False
        old = self._current[new.name]
        del self._replacing[new.name]
        self._current[new.name] = new
        self._retiring.add(old)
        if old.state.terminal:
            self._finish_retired(old)
        else:
            old.stop(sig)
        self._changed(new.name)
        log.info("replaced", extra=fields(name=new.name, uuid=new.uuid, old_uuid=old.uuid))
        return new.view()

    def _undo_promotion(self, new: ManagedProcess) -> None:
        log.warning("replace undone: the takeover could not be written", extra=fields(name=new.name, uuid=new.uuid))
        new.promoting = False
        self._abandon(new)

    def _abandon(self, new: ManagedProcess) -> None:
        if self._replacing.get(new.name) is new:
            del self._replacing[new.name]
        self._changed(new.name)
        self._retire(new)

    def _retire(self, proc: ManagedProcess) -> None:
        """Stop ``proc``, which is no longer in the registry's current or
        replacing slots; its ports go once it has exited."""
        if proc.state.terminal:
            self._finish_retired(proc)
        else:
            self._retiring.add(proc)
            self._changed(proc.name)
            proc.stop(signal.SIGINT)

    # -- commits -----------------------------------------------------------------

    async def _commit(self, name: str, apply: Callable[[], ProcessView], undo: Callable[[], None]) -> ProcessView:
        """Make the change just made to ``name`` durable, then ``apply`` what
        may only follow a durable change (signals, the in-memory swap); if
        the write fails, ``undo`` the change and raise the store's error.

        It runs as a task of its own, shielded from the RPC: a client that
        hangs up cannot leave the change half done; it is completed or
        undone all the same. Meanwhile ``name`` is settling (see the module
        docstring)."""
        self._changed(name)
        if self.store is None:
            return apply()
        settled = self._begin_settling(name)
        return await _run_shielded(self._settle(name, settled, apply, undo))

    async def _settle(
        self, name: str, settled: asyncio.Future[None], apply: Callable[[], ProcessView], undo: Callable[[], None]
    ) -> ProcessView:
        """The body of a commit, in a shielded task; ends ``name``'s settling."""
        try:
            store = self.store
            if store is not None:
                try:
                    await store.commit()
                except ImdError:
                    undo()
                    raise
            return apply()
        finally:
            self._end_settling(name, settled)

    def _begin_settling(self, name: str) -> asyncio.Future[None]:
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settling[name] = settled
        return settled

    def _end_settling(self, name: str, settled: asyncio.Future[None]) -> None:
        if self._settling.get(name) is settled:
            del self._settling[name]
        if not settled.done():
            settled.set_result(None)

    async def _settled(self, name: str) -> None:
        """Wait until no commit on ``name`` is in flight."""
        while (settling := self._settling.get(name)) is not None:
            await asyncio.wait({settling})

    # -- observer callbacks (from ManagedProcess) -------------------------------

    def process_changed(self, proc: ManagedProcess) -> None:
        if self._internal.get(proc.name) is proc:
            self._changed(proc.name, internal=True)
            return
        self._emit(proc)

    def process_exited(self, proc: ManagedProcess) -> None:
        log.info(
            "exited",
            extra=fields(
                name=proc.name,
                uuid=proc.uuid,
                state=proc.state.value,
                error=proc.error_msg,
            ),
        )
        if self._internal.get(proc.name) is proc:
            self._changed(proc.name, internal=True)
            hook = self._internal_exit.get(proc.name)
            if hook is not None:
                hook(proc)
        elif proc in self._retiring:
            self._finish_retired(proc)
        elif self._current.get(proc.name) is proc and proc.delete_requested:
            self._remove(proc)
        else:
            # Exited by itself (or a replacement that failed to start and is
            # still awaited by replace): it stays listed, in its final state.
            self._emit(proc)

    # -- internals -------------------------------------------------------------

    def _lookup(self, name: str) -> ManagedProcess:
        proc = self._current.get(name)
        if proc is None:
            raise NotFound(f"cannot find process {name}", field="name")
        return proc

    def _release_ports(self, proc: ManagedProcess) -> None:
        if proc.ports is not None:
            self.ports.release(proc.ports)

    def _remove(self, proc: ManagedProcess) -> None:
        del self._current[proc.name]
        self._release_ports(proc)
        self.logs.mark_deleted(proc.name)
        self._emit(proc, deleted=True)
        self._resolve_removal(proc.name)
        log.info("removed", extra=fields(name=proc.name, uuid=proc.uuid))

    def _resolve_removal(self, name: str) -> None:
        removed = self._removed.pop(name, None)
        if removed is not None and not removed.done():
            removed.set_result(None)

    def _finish_retired(self, proc: ManagedProcess) -> None:
        self._retiring.discard(proc)
        self._release_ports(proc)
        self._emit(proc, deleted=True)

    def _emit(self, proc: ManagedProcess, *, deleted: bool = False) -> None:
        """A change of ``proc`` that the registry records: to watchers and
        to the state file."""
        self._publish(proc, deleted=deleted)
        self._changed(proc.name)

    def _publish(self, proc: ManagedProcess, *, deleted: bool = False) -> None:
        """A change of ``proc`` to watchers only (what is observed, not
        recorded, like a condition, costs no state write)."""
        self._seq += 1
        view = proc.view(deleted=deleted)
        self.events.publish(ProcessEvent(self._seq, view))
        if self._last_state.get(proc.uuid) is not view.state:
            self._last_state[proc.uuid] = view.state
            self.metrics.transitions.labels("v1", view.instance.type or "process", view.state.value).inc()
        if deleted:
            self._last_state.pop(proc.uuid, None)

    def _changed(self, name: str | None = None, *, internal: bool = False) -> None:
        """The registry changed: ``name``'s entries (in the internal
        namespace or not), or, without a name, anything. Every change of
        what ``snapshot`` says must come through here: the state journal
        records only the names marked."""
        if name is None:
            self._dirty_all = True
        else:
            self._dirty.add((internal, name))
        if self.store is not None:
            self.store.mark_dirty()

    # -- shutdown --------------------------------------------------------------

    async def shutdown(self, *, stop_children: bool, timeout: float) -> None:
        """Stop every child (SIGINT, then SIGKILL after the grace period) and
        wait for them, or leave them all running for the next daemon."""
        procs = self.all_processes()
        if not stop_children:
            for proc in procs:
                proc.close_without_stopping()
            return
        for proc in procs:
            proc.delete_requested = True
            proc.stop(signal.SIGINT)
        waiting = [proc.exited for proc in procs if not proc.exited.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        self._spawner.shutdown(wait=False)


async def _run_shielded(work: Coroutine[Any, Any, R]) -> R:
    """Run ``work`` as a task the caller's cancellation cannot reach: it
    finishes (or fails) all the same, and its outcome is what the caller
    gets if it is still there."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A change whose RPC went away still ends with its error: mark it seen,
    so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
