"""V2 snapshots, engine side: what Longhorn's manager asks of a volume
(ProxyEngineService: VolumeSnapshot, SnapshotList, SnapshotRemove,
SnapshotPurge, SnapshotRevert, SnapshotHash, SnapshotClone and the limits)
over the chains its replicas' nodes keep (imd.v2.chains, reached through
``ReplicaNodes``).

* **Take** (VolumeSnapshot): the engine's mirror holds new host writes and
  waits for the ones in flight (``quiesce``), every RW replica snapshots its
  head at once, then the writes go (``resume``): every replica's snapshot
  holds the same bytes, and the host sees a pause, never an error. All or
  none: a replica that fails makes the others' snapshots go again, and the
  error names it. The pause is bounded (``hold_timeout_s``): a node that
  does not answer in time fails the snapshot, it never holds the host.
* **List** reads every RW replica's chain. Replicas that disagree (a
  snapshot missing on one) are not hidden: the snapshot is listed with the
  label ``imd/missing-on`` naming the replicas that lack it.
* **Remove** deletes, or marks removed (more than one child), on every
  replica; **purge** deletes what is removed and the system snapshots.
* **Revert** needs an engine with no frontend (Longhorn's rule): the
  replicas are taken out of the mirror, each reverts, and the mirror is
  rebuilt over them.
* **Hash** runs on each replica's node (its C core reads its own lvstore);
  **clone** copies a snapshot of another volume onto this engine's
  replicas, in this daemon's C core.

Every operation that changes a chain is the engine's one long operation
(``Engines._run``): another one at the same time is ABORTED, to be retried,
and an engine delete preempts it. The exception is a snapshot during a
rebuild, which the rebuild makes room for (imd.v2.engines, ``_rebuild``).

The engine lives in the daemon, so a daemon that dies part way through an
operation that changes several replicas would leave them disagreeing. Take,
remove, revert and clone therefore write their intent in the engine's
record before the first replica changes and clear it after the last
(``_intent``); the restore after a restart (``finish_intent``) finishes or
undoes what the intent names before the engine attaches its replicas. A
cancelled operation (a daemon shutdown) keeps its intent for the same
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from imd.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    ImdError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from imd.eventlog import fields
from imd.v2.chains import now_rfc3339, validate_snapshot_name
from imd.v2.copies import copy_snapshot
from imd.v2.datapath import ReplicaNodes, datapath_error
from imd.v2.engines import Engine, Engines
from imd.v2.model import (
    VOLUME_HEAD,
    HashStatus,
    ReplicaChain,
    ReplicaMode,
    SnapshotInfo,
    SnapshotIntent,
    host_nqn_of,
)
from spdk_ffi import NvmeError

log = logging.getLogger("imd.v2.snapshots")
T = TypeVar("T")

MISSING_ON = "imd/missing-on"
LABEL_KEY_MAX = 317  # a Kubernetes qualified name: a 253-character prefix, "/", 63 characters


class SnapshotEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One snapshot as SnapshotList shows it (Longhorn's
    EngineSnapshotDiskInfo; ``volume-head`` is one too)."""

    name: str
    parent: str
    children: tuple[str, ...]
    removed: bool
    user_created: bool
    created: str
    size: int  # bytes allocated; 0 where a node cannot tell
    labels: dict[str, str]


class PurgeStatus(msgspec.Struct, frozen=True, kw_only=True):
    is_purging: bool
    progress: int
    state: str
    error: str = ""


class CloneStatus(msgspec.Struct, frozen=True, kw_only=True):
    is_cloning: bool
    progress: int
    state: str
    error: str
    from_address: str
    snapshot: str


def validate_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not key or len(key) > LABEL_KEY_MAX or "=" in key or "=" in value:
            raise InvalidArgument(
                f"label {key!r}: keys are 1-{LABEL_KEY_MAX} characters, and neither keys nor values hold '='",
                field="snapshot_volume.labels",
            )
        if key == MISSING_ON:
            raise InvalidArgument(f"label {MISSING_ON} is imd's own", field="snapshot_volume.labels")


def _info(chain: ReplicaChain, snapshot: str) -> SnapshotInfo:
    return next(s for s in chain.snapshots if s.name == snapshot)


def _purgeable(chains: dict[str, ReplicaChain], tried: set[str]) -> str | None:
    """The oldest snapshot a purge may delete on every replica that holds
    it: marked removed (or made by the system) and with at most one child
    on each, and not ``tried`` already; None when there is none."""
    verdicts: dict[str, bool] = {}
    order: list[str] = []
    for chain in chains.values():
        for s in chain.snapshots:
            if s.name in tried:
                continue
            ok = (s.removed or not s.user_created) and len(s.children) <= 1
            if s.name not in verdicts:
                order.append(s.name)
            verdicts[s.name] = verdicts.get(s.name, True) and ok
    return next((name for name in order if verdicts[name]), None)


class Snapshots:
    def __init__(self, engines: Engines, *, hold_timeout_s: float = 10.0) -> None:
        self.engines = engines
        self.hold_timeout_s = hold_timeout_s
        self._purges: dict[str, dict[str, PurgeStatus]] = {}  # engine -> replica address -> status
        self._clones: dict[str, dict[str, CloneStatus]] = {}  # engine -> replica address -> status
        self._clone_jobs: dict[str, dict[str, Any]] = {}  # engine -> replica -> the job copying onto it
        # What finish_intent calls the replicas' nodes through: it runs before
        # the daemon serves gRPC, so its own replicas must be reached in
        # process (imd.v2.chains.OwnReplicasFirst; set by the node).
        self.restore_nodes: ReplicaNodes | None = None

    # -- helpers --------------------------------------------------------------------------

    def _nodes(self) -> ReplicaNodes:
        if self.engines.expander is None:
            raise FailedPrecondition("this daemon cannot reach replicas' nodes", field="engine_name")
        return self.engines.expander

    @staticmethod
    def _address(engine: Engine, replica: str) -> str:
        return engine.record.spec.replicas[replica][0]

    @staticmethod
    def _rw(engine: Engine) -> list[str]:
        return sorted(n for n, mode in engine.record.modes.items() if mode == ReplicaMode.RW)

    async def _each(
        self, engine: Engine, replicas: list[str], call: Callable[[str, str], Awaitable[T]]
    ) -> dict[str, T | BaseException]:
        """``call(address, replica)`` on every replica at once; each outcome."""
        outcomes = await asyncio.gather(*(call(self._address(engine, r), r) for r in replicas), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        return dict(zip(replicas, outcomes, strict=True))

    async def _chains(self, engine: Engine, nodes: ReplicaNodes | None = None) -> dict[str, ReplicaChain]:
        rw = self._rw(engine)
        if not rw:
            raise FailedPrecondition(f"engine {engine.name} has no RW replica", field="engine_name")
        nodes = nodes or self._nodes()
        outcomes = await self._each(engine, rw, nodes.snapshot_chain)
        chains = {r: o for r, o in outcomes.items() if isinstance(o, ReplicaChain)}
        if not chains:
            why = "; ".join(f"{r}: {o}" for r, o in outcomes.items())
            raise Unavailable(f"engine {engine.name}: no replica's chain could be read ({why})", field="engine_name")
        return chains

    # -- intents: what a restart finishes or undoes ----------------------------------------

    @contextlib.asynccontextmanager
    async def _intent(self, engine: Engine, kind: str, snapshots: list[str], source: str = "") -> AsyncIterator[None]:
        """Keep ``kind`` on ``snapshots`` durable in the engine's record while
        the body changes replicas. Cleared when the body ends by itself (done,
        or failed and undone: its error says what is left); kept when it is
        cancelled part way, for the restore to resolve."""
        hub = self.engines.hub
        engine.record.intent = SnapshotIntent(kind=kind, snapshots=tuple(snapshots), source=source)
        hub.changed()
        try:
            await hub.durable()
        except BaseException:
            engine.record.intent = None
            hub.changed()
            raise
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException:
            await self._clear_intent(engine)
            raise
        await self._clear_intent(engine)

    async def _clear_intent(self, engine: Engine) -> None:
        engine.record.intent = None
        self.engines.hub.changed()
        with contextlib.suppress(ImdError):  # a stale intent is resolved again at restart: harmless
            await self.engines.hub.durable()

    async def finish_intent(self, engine: Engine) -> None:
        """At restore, before the replicas are attached: resolve the snapshot
        operation the daemon died in (see ``SnapshotIntent``). A replica that
        cannot be reached is left as it is: it cannot be attached either, so
        it goes to ERR and is rebuilt from the others."""
        intent = engine.record.intent
        if intent is None:
            return
        nodes = self.restore_nodes or self._nodes()
        rw = self._rw(engine)
        if intent.kind == "snapshot":
            (snapshot,) = intent.snapshots
            chains = await self._chains(engine, nodes)
            having = [r for r, c in chains.items() if snapshot in {s.name for s in c.snapshots}]
            if having and len(having) < len(rw):
                await self._each(engine, having, lambda a, r: nodes.snapshot_delete(a, r, snapshot))
                log.warning(
                    "snapshot undone: the daemon stopped before every replica took it",
                    extra=fields(name=engine.name, snapshot=snapshot, had=",".join(having)),
                )
        elif intent.kind == "remove":
            chains = await self._chains(engine, nodes)
            for snapshot in intent.snapshots:
                having = [r for r, c in chains.items() if snapshot in {s.name for s in c.snapshots}]

                def delete(address: str, replica: str, snapshot: str = snapshot) -> Awaitable[bool]:
                    return nodes.snapshot_delete(address, replica, snapshot)

                await self._each(engine, having, delete)
            log.info("snapshot removal finished after a restart", extra=fields(name=engine.name))
        elif intent.kind == "revert":
            (snapshot,) = intent.snapshots
            outcomes = await self._each(engine, rw, lambda a, r: nodes.snapshot_revert(a, r, snapshot))
            for replica, outcome in outcomes.items():
                if isinstance(outcome, BaseException):
                    engine.record.modes[replica] = ReplicaMode.ERR
                    engine.errors[replica] = f"revert to {snapshot} not finished after a restart: {outcome}"
                    log.warning(
                        "revert not finished after a restart",
                        extra=fields(name=engine.name, replica=replica, snapshot=snapshot, error=str(outcome)),
                    )
            log.info("revert finished after a restart", extra=fields(name=engine.name, snapshot=snapshot))
        elif intent.kind == "clone":
            (snapshot,) = intent.snapshots
            self._clones[engine.name] = {
                f"tcp://{self._address(engine, r)}": CloneStatus(
                    is_cloning=False,
                    progress=0,
                    state="error",
                    error="the daemon restarted during the clone: start it again",
                    from_address=intent.source,
                    snapshot=snapshot,
                )
                for r in rw
            }
        await self._clear_intent(engine)

    # -- take ---------------------------------------------------------------------------------

    async def create(self, name: str, snapshot: str, labels: dict[str, str]) -> str:
        """VolumeSnapshot; the snapshot's name (a new UUID for an empty one)."""
        engine = self.engines.running(name)
        snapshot = snapshot or str(uuidlib.uuid4())
        validate_snapshot_name(snapshot, "snapshot_volume.name")
        validate_labels(labels)
        if engine.op is not None and engine.op_kind != "rebuild":
            self.engines._busy(engine)
        chains = await self._chains(engine)
        if any(snapshot in {s.name for s in c.snapshots} for c in chains.values()):
            raise AlreadyExists(f"engine {name} has a snapshot {snapshot} already", field="snapshot_volume.name")
        limit = engine.record.snapshot_max_count
        count = max(len(c.snapshots) for c in chains.values())
        if limit and count >= limit:
            raise FailedPrecondition(
                f"engine {name} holds {count} snapshots, its limit (snapshot_max_count) is {limit}",
                field="snapshot_max_count",
            )
        size_limit = engine.record.snapshot_max_size
        if size_limit:
            used = max(sum(max(s.size, 0) for s in c.snapshots) + max(c.head_size, 0) for c in chains.values())
            if used >= size_limit:
                raise FailedPrecondition(
                    f"engine {name}'s snapshots and head hold {used} bytes, its limit (snapshot_max_size) is "
                    f"{size_limit}",
                    field="snapshot_max_size",
                )
        if engine.op is not None:  # a rebuild: its head phase steps back until the snapshot is taken
            await self._take_during_rebuild(engine, snapshot, labels)
        else:
            await self.engines._run(engine, "snapshot", self._take(engine, snapshot, labels))
        log.info("snapshot taken", extra=fields(name=name, snapshot=snapshot))
        return snapshot

    async def _take_during_rebuild(self, engine: Engine, snapshot: str, labels: dict[str, str]) -> None:
        if engine.hold is not None:
            raise Conflict(f"engine {engine.name}: another snapshot is being taken", field="engine_name")
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[None] = loop.create_future()
        release: asyncio.Future[None] = loop.create_future()
        engine.hold = (ack, release)
        engine.snapshots_begun += 1
        try:
            if engine.rebuild_phase == "head":
                engine.hold_requested.set()
                try:
                    async with asyncio.timeout(self.hold_timeout_s):
                        await asyncio.shield(ack)
                except TimeoutError:
                    raise Unavailable(
                        f"engine {engine.name}: the rebuild of {engine.rebuild_dst} did not step back for the "
                        f"snapshot within {self.hold_timeout_s:g} s",
                        field="engine_name",
                    ) from None
            await self._take(engine, snapshot, labels)
        finally:
            engine.hold_requested.clear()
            engine.hold = None
            if not release.done():
                release.set_result(None)

    async def _take(self, engine: Engine, snapshot: str, labels: dict[str, str]) -> None:
        async with self._intent(engine, "snapshot", [snapshot]):
            await self._take_everywhere(engine, snapshot, labels)

    async def _take_everywhere(self, engine: Engine, snapshot: str, labels: dict[str, str]) -> None:
        mirror = engine.mirror
        assert mirror is not None
        nodes = self._nodes()
        rw = self._rw(engine)
        created = now_rfc3339()

        async def one(address: str, replica: str) -> SnapshotInfo:
            return await nodes.snapshot_create(
                address, replica, snapshot, user_created=True, created=created, labels=labels
            )

        try:
            async with asyncio.timeout(self.hold_timeout_s):
                await mirror.quiesce()
                try:
                    outcomes = await self._each(engine, rw, one)
                finally:
                    await mirror.resume()
        except TimeoutError:
            outcomes = {}
            with contextlib.suppress(NvmeError):
                await mirror.resume()
            failed = {r: f"no answer within {self.hold_timeout_s:g}s" for r in rw}
        except NvmeError as exc:
            raise datapath_error(f"engine {engine.name}: cannot hold its writes for the snapshot", exc) from exc
        else:
            failed = {r: str(o) for r, o in outcomes.items() if isinstance(o, BaseException)}
        if failed:
            # All or none: the replicas that took it delete it again (a
            # replica that timed out may have taken it late: it is asked too).
            undo = [r for r in rw if r in failed or not isinstance(outcomes.get(r), BaseException)]
            await self._each(engine, undo, lambda a, r: nodes.snapshot_delete(a, r, snapshot))
            why = "; ".join(f"replica {r}: {e}" for r, e in sorted(failed.items()))
            kinds = {type(o) for o in outcomes.values() if isinstance(o, ImdError)}
            cls = kinds.pop() if len(kinds) == 1 and len(failed) == len(rw) else Unavailable
            raise cls(f"snapshot {snapshot} not taken: {why}", field="snapshot_volume.name")

    # -- list -----------------------------------------------------------------------------------

    async def entries(self, name: str) -> dict[str, SnapshotEntry]:
        """SnapshotList: every RW replica's snapshots, by name, and
        ``volume-head``; a snapshot some RW replicas lack says which."""
        engine = self.engines.running(name)
        chains = await self._chains(engine)
        first = chains[min(chains)]
        entries: dict[str, SnapshotEntry] = {}
        holders: dict[str, list[str]] = {}
        for replica in sorted(chains):
            for s in chains[replica].snapshots:
                holders.setdefault(s.name, []).append(replica)
                if s.name not in entries:
                    entries[s.name] = SnapshotEntry(
                        name=s.name,
                        parent=s.parent,
                        children=s.children,
                        removed=s.removed,
                        user_created=s.user_created,
                        created=s.created,
                        size=max(s.size, 0),
                        labels=dict(s.labels),
                    )
        for snap, have in holders.items():
            lacking = sorted(set(chains) - set(have))
            if lacking:
                entry = entries[snap]
                entries[snap] = msgspec.structs.replace(entry, labels={**entry.labels, MISSING_ON: ",".join(lacking)})
                log.warning(
                    "replicas disagree on a snapshot", extra=fields(name=name, snapshot=snap, missing_on=lacking)
                )
        entries[VOLUME_HEAD] = SnapshotEntry(
            name=VOLUME_HEAD,
            parent=first.head_parent,
            children=(),
            removed=False,
            user_created=False,
            created=engine.record.created or now_rfc3339(),
            size=max(first.head_size, 0),
            labels={},
        )
        return entries

    # -- remove, purge -------------------------------------------------------------------------

    async def remove(self, name: str, snapshots: list[str]) -> None:
        """SnapshotRemove: each is deleted on every replica (SPDK folds it
        into its one child), or marked removed where it has more."""
        engine = self.engines.running(name)
        for snapshot in snapshots:
            if snapshot == VOLUME_HEAD:
                raise InvalidArgument(f"{VOLUME_HEAD} is the volume itself, not a snapshot", field="names")
            validate_snapshot_name(snapshot, "names")
        self._no_wo(engine, "remove a snapshot")
        self.engines._busy(engine)
        await self.engines._run(engine, "snapshot removal", self._remove(engine, snapshots))

    async def _remove(self, engine: Engine, snapshots: list[str]) -> None:
        chains = await self._chains(engine)
        for snapshot in snapshots:
            if not any(snapshot in {s.name for s in c.snapshots} for c in chains.values()):
                raise NotFound(f"engine {engine.name} has no snapshot {snapshot}", field="names")
        async with self._intent(engine, "remove", snapshots):
            await self._remove_everywhere(engine, snapshots, chains)

    async def _remove_everywhere(self, engine: Engine, snapshots: list[str], chains: dict[str, ReplicaChain]) -> None:
        """Delete each snapshot on every replica that has it, or, where any
        of them must keep it (more than one child there: a branch a revert
        left, which a rebuilt replica lacks), mark it removed on all of
        them: deleted on some and kept on others, the replicas' chains
        would differ from then on."""
        nodes = self._nodes()
        rw = self._rw(engine)
        for snapshot in snapshots:
            having = [r for r in rw if r in chains and snapshot in {s.name for s in chains[r].snapshots}]
            mark_only = any(len(_info(chains[r], snapshot).children) > 1 for r in having)

            def delete(
                address: str, replica: str, snapshot: str = snapshot, mark_only: bool = mark_only
            ) -> Awaitable[bool]:
                return nodes.snapshot_delete(address, replica, snapshot, mark_only=mark_only)

            outcomes = await self._each(engine, having, delete)
            failed = {r: o for r, o in outcomes.items() if isinstance(o, BaseException)}
            if failed:
                why = "; ".join(f"replica {r}: {e}" for r, e in sorted(failed.items()))
                raise Unavailable(f"snapshot {snapshot} not removed everywhere: {why}", field="names")
            log.info("snapshot removed", extra=fields(name=engine.name, snapshot=snapshot))

    async def purge(self, name: str, skip_if_in_progress: bool) -> None:
        """SnapshotPurge: on every RW replica, delete what is marked removed
        and the system snapshots, where each has at most one child."""
        engine = self.engines.running(name)
        running = engine.op is not None and engine.op_kind == "purge"
        if running and skip_if_in_progress:
            return
        self._no_wo(engine, "purge snapshots")
        self.engines._busy(engine)
        await self.engines._run(engine, "purge", self._purge(engine))

    async def _purge(self, engine: Engine) -> None:
        """Delete, on every RW replica, each snapshot marked removed or made
        by the system that every replica holding it can delete (at most one
        child there), one at a time, until none is left (a deletion may
        leave a parent with one child). The engine decides for all of its
        replicas at once, as a removal does: a replica deciding alone would
        keep a snapshot that another, rebuilt without the branch beside it,
        deletes."""
        nodes = self._nodes()
        rw = self._rw(engine)
        addresses = {r: self._address(engine, r) for r in rw}  # a ReplicaRemove may take one meanwhile
        status = self._purges[engine.name] = {
            address: PurgeStatus(is_purging=True, progress=0, state="in_progress") for address in addresses.values()
        }
        failed: dict[str, BaseException] = {}
        tried: set[str] = set()  # each once: a snapshot that a delete only marked is not asked again
        try:
            while True:
                read = await self._chains(engine, nodes)
                rw_now = self._rw(engine)  # a ReplicaRemove may have taken one during the read
                unread = [r for r in rw_now if r not in read]
                if unread:  # deciding without its chain could make it differ from the others
                    failed.update({r: Unavailable(f"the chain of replica {r} could not be read") for r in unread})
                    break
                chains = {r: c for r, c in read.items() if r in rw_now}
                snapshot = _purgeable(chains, tried)
                if snapshot is None:
                    break
                tried.add(snapshot)
                having = [r for r, c in chains.items() if snapshot in {s.name for s in c.snapshots}]

                def delete(address: str, replica: str, snapshot: str = snapshot) -> Awaitable[bool]:
                    return nodes.snapshot_delete(address, replica, snapshot)

                outcomes = await self._each(engine, having, delete)
                failed.update({r: o for r, o in outcomes.items() if isinstance(o, BaseException)})
                if failed:
                    break
        except ImdError as exc:
            failed.update({r: exc for r in rw if r not in failed})
        for replica, address in addresses.items():
            error = failed.get(replica)
            status[address] = (
                PurgeStatus(is_purging=False, progress=100, state="complete")
                if error is None
                else PurgeStatus(is_purging=False, progress=0, state="error", error=str(error))
            )
        if failed:
            why = "; ".join(f"replica {r}: {e}" for r, e in sorted(failed.items()))
            raise Unavailable(f"purge of engine {engine.name} not finished: {why}")

    def purge_status(self, name: str) -> dict[str, PurgeStatus]:
        self.engines.get(name, "engine_name")
        return dict(self._purges.get(name, {}))

    @staticmethod
    def _no_wo(engine: Engine, what: str) -> None:
        wo = sorted(n for n, mode in engine.record.modes.items() if mode == ReplicaMode.WO)
        if wo:
            raise FailedPrecondition(
                f"engine {engine.name} is rebuilding {', '.join(wo)}: cannot {what} until it is done",
                field="engine_name",
            )

    # -- revert ---------------------------------------------------------------------------------

    async def revert(self, name: str, snapshot: str) -> None:
        """SnapshotRevert: every RW replica's head becomes a new clone of
        ``snapshot`` (later snapshots stay). Only on an engine with no
        frontend, as Longhorn's: no host may see the volume change."""
        engine = self.engines.running(name)
        if snapshot == VOLUME_HEAD:
            raise InvalidArgument(f"cannot revert to {VOLUME_HEAD}", field="name")
        validate_snapshot_name(snapshot, "name")
        if engine.record.spec.frontend:
            raise FailedPrecondition(
                f"engine {name} has frontend {engine.record.spec.frontend}: revert only an engine without one",
                field="frontend",
            )
        self._no_wo(engine, "revert")
        self.engines._busy(engine)
        await self.engines._run(engine, "revert", self._revert(engine, snapshot))

    async def _revert(self, engine: Engine, snapshot: str) -> None:
        nodes = self._nodes()
        chains = await self._chains(engine)
        rw = self._rw(engine)
        lacking = [r for r in rw if r not in chains or snapshot not in {s.name for s in chains[r].snapshots}]
        if len(lacking) == len(rw):
            raise NotFound(f"engine {engine.name} has no snapshot {snapshot}", field="name")
        if lacking:
            raise FailedPrecondition(
                f"replicas {', '.join(lacking)} lack snapshot {snapshot}: rebuild them first", field="name"
            )
        # The mirror goes and the replicas are detached: their heads are about
        # to be swapped, and no I/O may reach the old ones meanwhile. A backup
        # or restore of this volume stops first (within one block).
        self.engines.preempt(engine, f"a revert to snapshot {snapshot}")
        async with self._intent(engine, "revert", [snapshot]):
            await self.engines.take_down(engine)
            outcomes = await self._each(engine, rw, lambda a, r: nodes.snapshot_revert(a, r, snapshot))
            await self._bring_up_reverted(engine, snapshot, rw, outcomes)

    async def _bring_up_reverted(
        self, engine: Engine, snapshot: str, rw: list[str], outcomes: dict[str, BaseException | None]
    ) -> None:
        failed = {r: o for r, o in outcomes.items() if isinstance(o, BaseException)}
        reverted = [r for r in rw if r not in failed]
        for replica, exc in failed.items():
            engine.record.modes[replica] = ReplicaMode.ERR
            engine.errors[replica] = f"revert to {snapshot} failed: {exc}"
        await self.engines.bring_up(engine, reverted or rw)
        if not reverted:
            why = "; ".join(f"replica {r}: {e}" for r, e in sorted(failed.items()))
            raise Unavailable(f"revert of engine {engine.name} to {snapshot} failed: {why}", field="name")
        log.info("engine reverted", extra=fields(name=engine.name, snapshot=snapshot, replicas=",".join(reverted)))

    # -- hash ----------------------------------------------------------------------------------

    async def hash(self, name: str, snapshot: str, rehash: bool) -> None:
        """SnapshotHash: every RW replica's node starts hashing it (answers
        at once; a known checksum is kept unless ``rehash``)."""
        engine = self.engines.running(name)
        validate_snapshot_name(snapshot, "snapshot_name")
        self._no_wo(engine, "hash a snapshot")
        nodes = self._nodes()
        outcomes = await self._each(engine, self._rw(engine), lambda a, r: nodes.snapshot_hash(a, r, snapshot, rehash))
        failed = {r: o for r, o in outcomes.items() if isinstance(o, BaseException)}
        if failed and len(failed) == len(outcomes):
            first = next(iter(failed.values()))
            if isinstance(first, ImdError):
                raise type(first)(f"snapshot {snapshot}: {first}", field="snapshot_name")
        if failed:
            why = "; ".join(f"replica {r}: {e}" for r, e in sorted(failed.items()))
            raise Unavailable(f"hash of snapshot {snapshot} not started everywhere: {why}", field="snapshot_name")

    async def hash_status(self, name: str, snapshot: str) -> dict[str, HashStatus]:
        """SnapshotHashStatus, by replica address (``ip:port``, no prefix:
        Longhorn's V2 quirk)."""
        engine = self.engines.running(name)
        validate_snapshot_name(snapshot, "snapshot_name")
        nodes = self._nodes()
        rw = self._rw(engine)
        addresses = {r: self._address(engine, r) for r in rw}  # a replica may leave the engine meanwhile
        outcomes = await self._each(engine, rw, lambda a, r: nodes.snapshot_hash_status(a, r, snapshot))
        result: dict[str, HashStatus] = {}
        for replica, outcome in outcomes.items():
            address = addresses[replica]
            if isinstance(outcome, BaseException):
                result[address] = HashStatus(state="error", error=str(outcome))
            else:
                result[address] = outcome
        return result

    # -- clone ----------------------------------------------------------------------------------

    async def clone(self, name: str, snapshot: str, from_engine: str, from_address: str) -> None:
        """SnapshotClone (full copy): snapshot ``snapshot`` of engine
        ``from_engine`` (hosted by the imd at ``from_address``) is copied
        onto every replica of this engine, in this daemon's C core, from the
        source's first RW replica. Answers once the copy started;
        SnapshotCloneStatus follows it. The volume is not for use until it
        is complete (Longhorn's rule)."""
        engine = self.engines.running(name)
        validate_snapshot_name(snapshot, "snapshot_name")
        self.engines._busy(engine)
        sources = await self._nodes().engine_replicas(from_address, from_engine)
        if not sources:
            raise FailedPrecondition(f"engine {from_engine} has no RW replica to clone from", field="from_engine_name")
        self.engines._busy(engine)
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        task = asyncio.ensure_future(self._clone(engine, snapshot, sources[0], started))
        engine.op, engine.op_kind = task, "clone"
        task.add_done_callback(lambda _: self.engines._op_done(engine, task))

        def ended(_: object) -> None:
            if not started.done():
                started.set_exception(
                    Unavailable(f"clone of {snapshot} was preempted")
                    if task.cancelled()
                    else task.exception() or Unavailable("the clone did not start")
                )

        task.add_done_callback(ended)
        await asyncio.shield(started)

    async def _clone(
        self, engine: Engine, snapshot: str, source_replica: tuple[str, str], started: asyncio.Future[None]
    ) -> None:
        from_address = source_replica[1]
        status = self._clones[engine.name] = {}
        jobs = self._clone_jobs[engine.name] = {}
        replicas = self._rw(engine)
        for replica in replicas:
            status[f"tcp://{self._address(engine, replica)}"] = CloneStatus(
                is_cloning=True, progress=0, state="in_progress", error="", from_address=from_address, snapshot=snapshot
            )
        async with self._intent(engine, "clone", [snapshot], from_address):
            started.set_result(None)
            await self._copy_clone(engine, snapshot, source_replica, replicas, status, jobs)
        log.info("clone finished", extra=fields(name=engine.name, snapshot=snapshot))

    async def _copy_clone(
        self,
        engine: Engine,
        snapshot: str,
        source_replica: tuple[str, str],
        replicas: list[str],
        status: dict[str, CloneStatus],
        jobs: dict[str, Any],
    ) -> None:
        data = self.engines.require()
        nodes = self._nodes()
        mirror = engine.mirror
        assert mirror is not None
        source, from_address = source_replica
        handles = self.engines.leg_handles(engine)
        blocks = engine.record.size // mirror.block_size
        for replica in replicas:
            key = f"tcp://{self._address(engine, replica)}"
            try:
                await copy_snapshot(
                    data,
                    nodes,
                    src_address=from_address,
                    src_replica=source,
                    snapshot=snapshot,
                    dst=handles[replica],
                    blocks=blocks,
                    hostnqn=host_nqn_of(engine.uuid),
                    owner=f"{engine.uuid}-clone",
                    rate_bytes_per_s=0,
                    compare=False,
                    on_job=functools.partial(jobs.__setitem__, replica),
                )
            except (ImdError, NvmeError) as exc:
                status[key] = CloneStatus(
                    is_cloning=False,
                    progress=0,
                    state="error",
                    error=str(exc),
                    from_address=from_address,
                    snapshot=snapshot,
                )
                log.error("clone failed", extra=fields(name=engine.name, replica=replica, error=str(exc)))
                continue
            status[key] = CloneStatus(
                is_cloning=False, progress=100, state="complete", error="", from_address=from_address, snapshot=snapshot
            )

    def clone_status(self, name: str) -> dict[str, CloneStatus]:
        """SnapshotCloneStatus by ``tcp://`` replica address; before any
        clone, one entry with an empty state (what Longhorn's manager looks
        for to start one)."""
        engine = self.engines.get(name, "engine_name")
        status = dict(self._clones.get(name, {}))
        for replica, job in self._clone_jobs.get(name, {}).items():
            key = f"tcp://{self._address(engine, replica)}"
            current = status.get(key)
            if current is not None and current.is_cloning:
                s = job.status()
                progress = min(99, s.bytes_done * 100 // max(s.bytes_total, 1))
                status[key] = msgspec.structs.replace(current, progress=progress)
        if not status and engine.record.spec.replicas:
            first = min(engine.record.spec.replicas)
            status[f"tcp://{self._address(engine, first)}"] = CloneStatus(
                is_cloning=False, progress=0, state="", error="", from_address="", snapshot=""
            )
        return status

    # -- limits --------------------------------------------------------------------------------

    async def set_max_count(self, name: str, count: int) -> None:
        if count < 0:
            raise InvalidArgument(f"must be >= 0, got {count}", field="count.count")
        engine = self.engines.get(name, "engine_name")
        engine.record.snapshot_max_count = count
        self.engines.hub.changed()
        await self.engines.hub.durable()

    async def set_max_size(self, name: str, size: int) -> None:
        if size < 0:
            raise InvalidArgument(f"must be >= 0, got {size}", field="size.size")
        engine = self.engines.get(name, "engine_name")
        engine.record.snapshot_max_size = size
        self.engines.hub.changed()
        await self.engines.hub.durable()

    def forget(self, name: str) -> None:
        """The engine is gone: its statuses go with it."""
        self._purges.pop(name, None)
        self._clones.pop(name, None)
        self._clone_jobs.pop(name, None)
