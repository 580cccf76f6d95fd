"""V2 engines, hosted inside imd.

An engine attaches each of its replicas (remote NVMe-oF/TCP subsystems on
the nodes' SPDK targets) through ``spdk_ffi.Initiator``, owned by the
engine's UUID, builds a mirror over them in spdk_ffi's C core, and exports
the mirror as an NVMe-oF/TCP subsystem of its own (frontend
``spdk-tcp-nvmf``). No Python runs per I/O: the frontend, the mirror and
the replicas' queue pairs all live on the core's poller thread.

Field reports this module answers:

* **Stale controllers (2).** A replica's controller is named after the
  replica, as in Longhorn. A leftover under that name whose owner is not a
  live engine (an engine lost without detaching) is cleaned up by the
  Initiator's idempotent attach: one detach, one attach, never a loop. A
  controller held by a *live* engine is never taken away from it: that
  attach fails, naming the engine.
* **Long operations never block a delete (3).** Every long step of an
  engine (its create, an expansion, a rebuild) runs as the engine's one
  operation task. A delete cancels it, marks the engine stopping, answers
  at once, and tears down in the background: unexport, mirror, controllers
  (a detach preempts an attach in progress), then the final event.
* **Concurrency (4).** One owner (``Engines``) for the registry, one task
  per engine for its long work; no lock is held across an await, and every
  map is changed between awaits only.

Who owns what while an operation runs: the ``Engine`` object, always. The
operation task mutates the engine's record and mirror; the registry reads
them; a delete flips ``delete_requested`` and cancels the task, whose
cleanup then leaves nothing for the teardown but what was fully built.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec

from imd.errors import AlreadyExists, Conflict, FailedPrecondition, ImdError, InvalidArgument, NotFound, Unavailable
from imd.eventlog import fields
from imd.metrics import Metrics
from imd.supervisor.model import PortBlock, ProcessState
from imd.supervisor.ports import PortAllocator
from imd.v2.copies import carry_chain
from imd.v2.datapath import DataPath, LegMode, Mirror, RebuildHandle, ReplicaNodes, datapath_error, replica_paths
from imd.v2.hub import Hub
from imd.v2.model import (
    ENGINE,
    EngineRecord,
    EngineSpec,
    FrontendPath,
    ReplicaMode,
    V2InstanceView,
    host_nqn_of,
    nguid_of,
    nqn_of,
)
from spdk_ffi import NvmeError
from spdk_ffi.errors import AlreadyExists as ControllerHeld
from spdk_ffi.mirror import RebuildState, RebuildStatus

log = logging.getLogger("imd.v2.engines")
T = TypeVar("T")


class Engine:
    """One engine: its record, its mirror, its one long operation."""

    def __init__(self, record: EngineRecord) -> None:
        self.record = record
        self.mirror: Mirror | None = None
        self.attached: set[str] = set()  # controllers this engine attached, or is attaching
        self.errors: dict[str, str] = {}  # why a replica is ERR
        # Replicas a ReplicaRemove is taking out: no longer counted as healthy,
        # so two removes at once cannot both pass the last-healthy check.
        self.leaving: set[str] = set()
        self.op: asyncio.Task[Any] | None = None
        self.op_kind = ""
        self.teardown: asyncio.Task[None] | None = None
        self.expand_to = 0  # the size an expansion in progress is going to
        self.rebuild: RebuildHandle | None = None
        self.rebuild_dst = ""
        self.rebuild_rate = 0  # bytes/s cap for the next rebuild (0 = the default)
        self.rebuild_phase = ""  # "chain" (carrying snapshots) or "head" (the mirror's copy), while rebuilding
        self.chain_job: Any = None  # the chain phase's copy in progress (its status: progress)
        # A snapshot during a rebuild's head phase (imd.v2.snapshots): it sets
        # ``hold`` (ack, release) and ``hold_requested``; the rebuild steps back
        # out of the mirror, answers ``ack`` and waits for ``release``.
        self.hold: tuple[asyncio.Future[None], asyncio.Future[None]] | None = None
        self.hold_requested = asyncio.Event()
        self.snapshots_begun = 0  # snapshots taken during a rebuild, counted as they begin
        self.mirror_made_at = 0.0  # time.monotonic() when the mirror (and its counters) began

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def uuid(self) -> str:
        return self.record.uuid


class Engines:
    def __init__(
        self,
        data: DataPath | None,
        unavailable: str,
        ports: PortAllocator,
        hub: Hub,
        address: str,
        *,
        expander: ReplicaNodes | None = None,
        rebuild_chunk_bytes: int = 1 << 20,
        rebuild_rate_bytes_per_s: int = 0,
        replica_timeout_ms: int = 5000,
        metrics: Metrics | None = None,
    ) -> None:
        self.data = data
        self.unavailable = unavailable
        self.ports = ports
        self.hub = hub
        self.address = address
        self.expander = expander
        self.rebuild_chunk_bytes = rebuild_chunk_bytes
        self.rebuild_rate_bytes_per_s = rebuild_rate_bytes_per_s
        # A replica that answers nothing this long, while another works, is
        # failed and the host's writes complete from the others (the mirror's
        # watchdog, in the C core; Lesson 7: every wait on a peer has a bound).
        self.replica_timeout_ms = replica_timeout_ms
        self.metrics = metrics if metrics is not None else Metrics()
        self.engines: dict[str, Engine] = {}
        self.on_deleted: Callable[[str], None] | None = None  # what else goes with an engine (its statuses)
        # Finishes or undoes a snapshot operation a restart interrupted
        # (EngineRecord.intent), before the engine's replicas are attached.
        self.finish_intent: Callable[[Engine], Awaitable[None]] | None = None
        # Work an engine owns outside its one operation (backups, restores:
        # imd.v2.backups) is told here when something must stop it:
        # (engine, why, replica) with replica "" for the whole engine.
        self.preempters: list[Callable[[Engine, str, str], None]] = []

    # -- queries ------------------------------------------------------------------

    def require(self) -> DataPath:
        if self.data is None:
            raise FailedPrecondition(f"V2 engines not available: {self.unavailable}", field="data_engine")
        return self.data

    def get(self, name: str, field: str = "name") -> Engine:
        engine = self.engines.get(name)
        if engine is None:
            raise NotFound(f"cannot find engine {name}", field=field)
        return engine

    def live_uuids(self) -> set[str]:
        return {e.uuid for e in self.engines.values() if not e.record.delete_requested}

    def view(self, engine: Engine, *, deleted: bool = False) -> V2InstanceView:
        record = engine.record
        spec = record.spec
        exported = bool(record.port) and record.state == ProcessState.RUNNING
        nqn = nqn_of(record.name)
        return V2InstanceView(
            name=record.name,
            uuid=record.uuid,
            type=ENGINE,
            volume_name=spec.volume_name,
            state=record.state,
            error_msg=record.error_msg,
            port_start=record.port,
            port_end=record.port,
            deleted=deleted,
            size=record.size,
            replica_address_map={name: ",".join(addrs) for name, addrs in spec.replicas.items()},
            frontend=spec.frontend,
            endpoint=f"nvmf://{record.address}:{record.port}/{nqn}" if exported else "",
            paths=(FrontendPath(record.address, record.port, nqn, nguid_of(record.name)),) if exported else (),
        )

    # -- create --------------------------------------------------------------------

    async def create(self, spec: EngineSpec) -> V2InstanceView:
        if spec.name in self.engines:
            raise AlreadyExists(f"instance {spec.name} already exists", field="spec.name")
        data = self.require()
        port = self.ports.allocate(1).start if spec.frontend else 0
        record = EngineRecord(
            name=spec.name,
            uuid=str(uuidlib.uuid4()),
            spec=spec,
            address=self.address,
            port=port,
            size=spec.size,
            snapshot_max_count=spec.snapshot_max_count or 250,
            created=_now(),
        )
        engine = Engine(record)
        self.engines[spec.name] = engine
        op = engine.op = asyncio.ensure_future(self._build(data, engine))
        engine.op_kind = "create"
        try:
            # A caller that goes away leaves the build running; the
            # instance's state tells how it ended.
            await asyncio.shield(op)
        except asyncio.CancelledError:
            if op.cancelled() and record.delete_requested:
                raise Unavailable(
                    f"create of engine {spec.name} was preempted by a delete", field="spec.name"
                ) from None
            raise
        return self.view(engine)

    async def _build(self, data: DataPath, engine: Engine) -> None:
        record = engine.record
        try:
            self.hub.publish(self.view(engine))
            await self.hub.durable()
            legs, block_size = await self._attach_all(data, engine)
            if record.size % block_size:
                raise InvalidArgument(
                    f"{record.size} is not a multiple of the replicas' block size {block_size}",
                    field="spec.spdk_instance_spec.size",
                )
            mirror = await data.mirrors.create_mirror(
                record.name, legs, record.size // block_size, leg_timeout_ms=self.replica_timeout_ms
            )
            engine.mirror = mirror
            engine.mirror_made_at = time.monotonic()
            mirror.on_leg_failed = lambda leg, why: self._leg_failed(engine, leg, why)
            if record.spec.frontend:
                await mirror.export(nqn_of(record.name), record.address, record.port, nguid_of(record.name))
        except BaseException as exc:
            await self._dismantle(engine)
            self._forget(engine)
            with contextlib.suppress(ImdError):
                await self.hub.durable()
            if isinstance(exc, NvmeError):
                raise datapath_error(f"engine {record.name}", exc) from exc
            raise
        finally:
            engine.op = None
        record.state = ProcessState.RUNNING
        self.hub.publish(self.view(engine))
        await self.hub.durable()
        log.info("engine running", extra=fields(name=record.name, uuid=record.uuid, port=record.port))

    async def _attach_all(self, data: DataPath, engine: Engine) -> tuple[list[tuple[str, Any]], int]:
        """Attach every replica at once; the ones that fail are ERR. None
        attached is a failed create. Returns the legs and their block size."""
        record = engine.record
        names = sorted(record.spec.replicas)
        outcomes = await asyncio.gather(*(self._attach(data, engine, n) for n in names), return_exceptions=True)
        legs: list[tuple[str, Any]] = []
        block_sizes: set[int] = set()
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                engine.errors[name] = str(outcome)
                record.modes[name] = ReplicaMode.ERR
                log.warning("replica not attached", extra=fields(name=record.name, replica=name, error=str(outcome)))
            else:
                handle, block_size = outcome
                legs.append((name, handle))
                block_sizes.add(block_size)
                record.modes[name] = ReplicaMode.RW
        if not legs:
            why = "; ".join(f"{n}: {e}" for n, e in sorted(engine.errors.items()))
            raise Unavailable(f"engine {record.name}: no replica could be attached ({why})", field="spec")
        if len(block_sizes) > 1:
            raise InvalidArgument(
                f"the replicas' block sizes differ ({sorted(block_sizes)})", field="spec.spdk_instance_spec"
            )
        return legs, block_sizes.pop()

    async def _attach(
        self, data: DataPath, engine: Engine, replica: str, size_field: str = "spec.spdk_instance_spec.size"
    ) -> tuple[Any, int]:
        record = engine.record
        holder = next((c for c in data.initiator.controllers() if c.name == replica), None)
        take_over = holder is None or holder.owner not in self.live_uuids() or holder.owner == record.uuid
        # Counted as this engine's before the attach is awaited: if the engine
        # is preempted in the loop turn in which the attach completes, the
        # controller is registered under its UUID though this coroutine only
        # sees the cancellation, and the teardown must still detach it. A
        # detach by owner of a name the engine does not hold is a no-op.
        engine.attached.add(replica)
        try:
            result = await data.initiator.attach(
                replica,
                replica_paths(replica, record.spec.replicas[replica]),
                host_nqn_of(record.uuid),
                data.opts,
                owner=record.uuid,
                take_over=take_over,
            )
        except ControllerHeld:
            engine.attached.discard(replica)
            owner = holder.owner if holder else "?"
            engine_name = next((e.name for e in self.engines.values() if e.uuid == owner), owner)
            raise FailedPrecondition(f"replica {replica} is attached by live engine {engine_name}") from None
        except NvmeError as exc:
            engine.attached.discard(replica)
            raise datapath_error(f"replica {replica}", exc) from exc
        if result.cleaned_up:
            log.warning(
                "stale controller cleaned up", extra=fields(name=record.name, replica=replica, why=result.cleaned_up)
            )
        namespace = next(iter(result.info.namespaces), None)
        if namespace is None or namespace.size_bytes < record.size:
            have = namespace.size_bytes if namespace else 0
            raise InvalidArgument(
                f"replica {replica} holds {have} bytes, less than the volume's {record.size}", field=size_field
            )
        return data.initiator.handle(replica), namespace.block_size

    # -- operations on a running engine (ProxyEngineService) --------------------------------

    def running(self, name: str, field: str = "engine_name") -> Engine:
        engine = self.get(name, field)
        record = engine.record
        if record.delete_requested or record.state != ProcessState.RUNNING or engine.mirror is None:
            raise FailedPrecondition(f"engine {name} is {record.state.value}", field=field)
        return engine

    def preempt(self, engine: Engine, why: str, replica: str = "") -> None:
        """Stop the engine's side work (backups, restores) that ``why``
        makes impossible: everything for the engine, or what reads from
        ``replica``. Returns at once; each stops within one block."""
        for preempter in self.preempters:
            preempter(engine, why, replica)

    def _busy(self, engine: Engine) -> None:
        if engine.op is not None:
            what = f"an expansion to {engine.expand_to} bytes" if engine.op_kind == "expand" else engine.op_kind
            raise Conflict(f"engine {engine.name}: {what} is in progress", field="engine_name")

    async def _run(self, engine: Engine, kind: str, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` as the engine's one long operation and wait for it. A
        caller that goes away leaves it running; a delete cancels it."""
        op = asyncio.ensure_future(work)
        engine.op, engine.op_kind = op, kind
        op.add_done_callback(lambda _: self._op_done(engine, op))
        try:
            return await asyncio.shield(op)
        except asyncio.CancelledError:
            if op.cancelled():
                raise Unavailable(f"engine {engine.name}: the {kind} was preempted", field="engine_name") from None
            raise

    @staticmethod
    def _op_done(engine: Engine, op: asyncio.Task[Any]) -> None:
        if engine.op is op:
            engine.op, engine.op_kind, engine.expand_to = None, "", 0

    # -- expand ---------------------------------------------------------------------------

    async def expand(self, name: str, size: int) -> None:
        """Grow the volume: every healthy replica's lvol, then the mirror, then
        the frontend's namespace (hosts get a namespace-attribute notice).
        One expansion at a time per engine: the same size joins the one in
        progress, another size is ABORTED. A failure leaves the old size, the
        reason in the engine's status, and nothing "expanding"."""
        engine = self.running(name)
        record = engine.record
        assert engine.mirror is not None
        block = engine.mirror.block_size
        if size < record.size:
            raise InvalidArgument(f"cannot shrink the volume from {record.size} to {size} bytes", field="expand.size")
        if size % block:
            raise InvalidArgument(f"{size} is not a multiple of the block size {block}", field="expand.size")
        if engine.op is not None and engine.op_kind == "expand":
            if engine.expand_to != size:
                raise Conflict(
                    f"engine {name}: an expansion to {engine.expand_to} bytes is in progress", field="expand.size"
                )
            await asyncio.shield(engine.op)  # join it, and share its outcome
            return
        if size == record.size:
            return
        self._busy(engine)
        engine.expand_to = size
        await self._run(engine, "expand", self._expand(engine, size))

    async def _expand(self, engine: Engine, size: int) -> None:
        record = engine.record
        mirror = engine.mirror
        assert mirror is not None
        self.hub.publish(self.view(engine))
        try:
            if self.expander is None:
                raise FailedPrecondition("this daemon cannot reach replicas' nodes to grow them")
            for replica in sorted(n for n, mode in record.modes.items() if mode == ReplicaMode.RW):
                await self.expander.expand(record.spec.replicas[replica][0], replica, size)
            await mirror.resize(size // mirror.block_size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            record.last_expansion_error = f"expansion to {size} bytes failed: {exc}"
            record.last_expansion_failed_at = _now()
            self.hub.publish(self.view(engine))
            await self.hub.durable()
            log.error("expansion failed", extra=fields(name=record.name, size=size, error=str(exc)))
            if isinstance(exc, ImdError):
                raise
            raise Unavailable(record.last_expansion_error, field="expand.size") from exc
        record.size = size
        record.last_expansion_error = ""
        self.hub.publish(self.view(engine))
        await self.hub.durable()
        log.info("volume expanded", extra=fields(name=record.name, size=size))

    # -- replicas ---------------------------------------------------------------------------

    def replica_of(self, engine: Engine, name: str, address: str) -> str:
        """A replica of ``engine`` by name, or by address (``tcp://`` or not)."""
        if name:
            if name not in engine.record.spec.replicas:
                raise NotFound(f"engine {engine.name} has no replica {name}", field="replica_name")
            return name
        bare = address.removeprefix("tcp://")
        for replica, addresses in engine.record.spec.replicas.items():
            if bare in addresses:
                return replica
        raise NotFound(f"engine {engine.name} has no replica at {address}", field="replica_address")

    async def add_replica(self, name: str, replica: str, addresses: tuple[str, ...]) -> None:
        """Attach ``replica``, put it in write-only mode (new writes reach it)
        and copy the volume onto it in the background, in the C core, while
        host I/O goes on; it becomes RW when the copy is done. Returns once
        the copy has started."""
        engine = self.running(name)
        mode = engine.record.modes.get(replica)
        if mode is not None and mode != ReplicaMode.ERR:
            raise AlreadyExists(f"replica {replica} is already in engine {name} ({mode})", field="replica_name")
        self._busy(engine)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op = asyncio.ensure_future(self._rebuild(engine, replica, addresses, started))
        # Named from the start, not once attached: a ReplicaRemove that
        # preempts the rebuild while it attaches must know whose it was.
        engine.op, engine.op_kind, engine.rebuild_dst = op, "rebuild", replica
        op.add_done_callback(lambda _: self._op_done(engine, op))

        def ended(_: object) -> None:
            if not started.done():
                started.set_exception(_why_not_started(op, replica))

        op.add_done_callback(ended)
        await asyncio.shield(started)

    async def _rebuild(
        self, engine: Engine, replica: str, addresses: tuple[str, ...], started: asyncio.Future[None]
    ) -> None:
        """ReplicaAdd's work, in two phases. The chain: the new replica gets
        every snapshot of a RW replica's chain it lacks, oldest first
        (imd.v2.copies: each copied onto its head, then snapshotted there
        under the same name), while it is not yet in the mirror. The head:
        it joins the mirror write-only and the C core copies the volume's
        current data onto it, writing only what differs (its head already
        holds the newest snapshot), under the rebuild's range lock while
        host I/O goes on. A snapshot taken meanwhile (imd.v2.snapshots)
        asks the head phase to step back: the copy stops, the replica
        leaves the mirror, the snapshot is taken on the RW replicas, and the
        chain phase carries it over before the head phase starts again."""
        data = self.require()
        record = engine.record
        mirror = engine.mirror
        assert mirror is not None
        if replica in record.modes:  # an ERR replica being added again: out with the old leg first
            await self._drop_replica(engine, replica)
        record.spec = msgspec.structs.replace(record.spec, replicas={**record.spec.replicas, replica: addresses})
        record.modes[replica] = ReplicaMode.WO
        try:
            handle, _ = await self._attach(data, engine, replica, size_field="replica_name")
        except BaseException as exc:
            await self._drop_replica(engine, replica)
            self.hub.publish(self.view(engine))
            if isinstance(exc, NvmeError):
                raise datapath_error(f"replica {replica}", exc) from exc
            raise
        self.hub.publish(self.view(engine))
        await self.hub.durable()
        engine.rebuild_dst = replica
        started.set_result(None)
        log.info("rebuild started", extra=fields(name=record.name, replica=replica))
        try:
            while True:
                engine.rebuild_phase = "chain"
                taken = engine.snapshots_begun
                # A snapshot begun before this look (even before the phase
                # began) may end after the chain's last look at the source.
                pending = engine.hold is not None
                await self._carry_chain(engine, replica, handle)
                if engine.hold is not None:
                    await asyncio.shield(engine.hold[1])
                    continue  # it has ended now: carry it too
                if pending or engine.snapshots_begun != taken:
                    # A snapshot was taken while the chain was carried,
                    # perhaps after its last look at the source: carry it
                    # too. Checked and switched with no await between, so
                    # a later snapshot finds the head phase and asks it to
                    # step back.
                    continue
                engine.rebuild_phase = "head"
                if replica not in {leg.name for leg in mirror.legs()}:
                    await mirror.add_leg(replica, handle, LegMode.WO)
                rate = engine.rebuild_rate or self.rebuild_rate_bytes_per_s
                rebuild = mirror.start_rebuild(
                    replica, chunk_bytes=self.rebuild_chunk_bytes, rate_bytes_per_s=rate, compare=True
                )
                outcome = await self._copy(engine, replica, rebuild, "rebuild", yield_to_snapshots=True)
                if outcome is not None:
                    break
                # A snapshot asked for the chain: out of the mirror until it is taken.
                await mirror.remove_leg(replica)
                hold = engine.hold
                if hold is not None:  # None: the snapshot gave up waiting (hold_timeout_s) meanwhile
                    ack, release = hold
                    if not ack.done():
                        ack.set_result(None)
                    await asyncio.shield(release)
        except asyncio.CancelledError:
            raise
        except (ImdError, NvmeError) as exc:
            why = str(exc)
            record.modes[replica] = ReplicaMode.ERR
            engine.errors[replica] = f"rebuild failed: {why}"
            outcome = False
        finally:
            engine.rebuild_phase = ""
            engine.chain_job = None
            if engine.hold is not None and not engine.hold[0].done():
                engine.hold[0].set_result(None)  # a snapshot waiting for the step back: nothing runs now
        if outcome:
            log.info("rebuild complete", extra=fields(name=record.name, replica=replica))
        else:
            log.error("rebuild failed", extra=fields(name=record.name, replica=replica, error=engine.errors[replica]))
        self.hub.publish(self.view(engine))
        await self.hub.durable()

    async def _carry_chain(self, engine: Engine, replica: str, handle: Any) -> None:
        """The chain phase of a rebuild (see ``_rebuild``); nothing to do
        without a way to reach the replicas' nodes (a node of its own)."""
        data, nodes = self.require(), self.expander
        if nodes is None or engine.mirror is None:
            return
        record = engine.record
        source = next((n for n in sorted(record.modes) if record.modes[n] == ReplicaMode.RW), None)
        if source is None:
            raise Unavailable(f"engine {engine.name}: no RW replica to rebuild {replica} from")
        copied = await carry_chain(
            data,
            nodes,
            src_address=record.spec.replicas[source][0],
            src_replica=source,
            dst_address=record.spec.replicas[replica][0],
            dst_replica=replica,
            dst=handle,
            blocks=record.size // engine.mirror.block_size,
            hostnqn=host_nqn_of(record.uuid),
            owner=f"{record.uuid}-chain",
            rate_bytes_per_s=engine.rebuild_rate or self.rebuild_rate_bytes_per_s,
            on_job=lambda job: setattr(engine, "chain_job", job),
        )
        if copied:
            log.info("snapshots carried", extra=fields(name=record.name, replica=replica, count=copied))

    async def _copy(
        self, engine: Engine, replica: str, rebuild: RebuildHandle, what: str, *, yield_to_snapshots: bool = False
    ) -> bool | None:
        """Wait for ``rebuild`` to copy the volume onto ``replica``, then let
        the replica serve reads (True), or mark it ERR saying why (False).
        Preempted (engine delete, ReplicaRemove, shutdown): the copy stops
        within a chunk and the rest is left to whoever preempted it. With
        ``yield_to_snapshots``, a snapshot's request (``engine.hold``) stops
        the copy too, within a chunk, and the answer is None."""
        engine.rebuild, engine.rebuild_dst = rebuild, replica
        wake = asyncio.ensure_future(engine.hold_requested.wait()) if yield_to_snapshots else None
        try:
            waiting: set[asyncio.Future[Any]] = {rebuild.done} | ({wake} if wake is not None else set())
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not rebuild.done.done():
                await rebuild.cancel()
                return None
            status = rebuild.done.result()
        except asyncio.CancelledError:
            await rebuild.cancel()
            raise
        finally:
            engine.rebuild = None
            if wake is not None:
                wake.cancel()
        if status.state == RebuildState.COMPLETE:
            await self._promote(engine, replica)
            return engine.record.modes[replica] == ReplicaMode.RW
        engine.record.modes[replica] = ReplicaMode.ERR
        engine.errors[replica] = f"{what} {status.state}: {status.error}"
        return False

    async def _promote(self, engine: Engine, replica: str) -> None:
        """A rebuilt replica serves reads again (WO to RW). If the mirror
        refuses (the leg failed meanwhile), the replica is ERR, saying why."""
        assert engine.mirror is not None
        try:
            await engine.mirror.set_mode(replica, LegMode.RW)
        except NvmeError as exc:
            engine.record.modes[replica] = ReplicaMode.ERR
            engine.errors[replica] = f"rebuilt, but could not serve reads: {exc}"
            return
        engine.record.modes[replica] = ReplicaMode.RW
        engine.errors.pop(replica, None)

    async def remove_replica(self, name: str, replica: str, address: str) -> None:
        """Take a replica out of the engine: a rebuild that copies to or from
        it is preempted at once (the copy stops within one chunk)."""
        engine = self.get(name, "engine_name")
        if engine.record.delete_requested:
            raise FailedPrecondition(f"engine {name} is being deleted", field="engine_name")
        replica = self.replica_of(engine, replica, address)
        record = engine.record
        if record.modes.get(replica) == ReplicaMode.RW and not any(
            mode == ReplicaMode.RW
            for other, mode in record.modes.items()
            if other != replica and other not in engine.leaving
        ):
            raise FailedPrecondition(f"replica {replica} is engine {name}'s last healthy one", field="replica_name")
        op = engine.op
        if op is not None and engine.op_kind != "rebuild":
            self._busy(engine)
        rebuilding = engine.rebuild_dst if op is not None else ""
        self.preempt(engine, f"replica {replica} was removed", replica)
        engine.leaving.add(replica)
        try:
            if op is not None:
                op.cancel()
                with contextlib.suppress(BaseException):
                    await op
            await self._drop_replica(engine, replica)
            if rebuilding and rebuilding != replica:
                # The rebuild may have read from the replica that went; its
                # own replica cannot stay write-only with nothing copying to it.
                await self._abandon_rebuild(engine, rebuilding, f"rebuild stopped: replica {replica} was removed")
        finally:
            engine.leaving.discard(replica)
        self.hub.publish(self.view(engine))
        await self.hub.durable()
        log.info("replica removed", extra=fields(name=name, replica=replica))

    async def _abandon_rebuild(self, engine: Engine, replica: str, why: str) -> None:
        """A rebuild that stopped for another reason than its own replica's
        removal: the replica leaves the mirror and is ERR, saying why, for
        the manager to add again."""
        if engine.record.modes.get(replica) != ReplicaMode.WO:
            return
        if engine.mirror is not None and replica in {leg.name for leg in engine.mirror.legs()}:
            with contextlib.suppress(NvmeError):
                await engine.mirror.remove_leg(replica)
        engine.record.modes[replica] = ReplicaMode.ERR
        engine.errors[replica] = why
        log.error("rebuild abandoned", extra=fields(name=engine.name, replica=replica, error=why))

    async def _drop_replica(self, engine: Engine, replica: str) -> None:
        record = engine.record
        try:
            if engine.mirror is not None and replica in {leg.name for leg in engine.mirror.legs()}:
                await engine.mirror.remove_leg(replica)
            if replica in engine.attached and self.data is not None:
                await self.data.initiator.detach(replica, owner=engine.uuid)
        except NvmeError as exc:
            raise datapath_error(f"cannot take replica {replica} out of engine {engine.name}", exc) from exc
        engine.attached.discard(replica)
        record.modes.pop(replica, None)
        engine.errors.pop(replica, None)
        if replica in record.spec.replicas:
            rest = {n: a for n, a in record.spec.replicas.items() if n != replica}
            record.spec = msgspec.structs.replace(record.spec, replicas=rest)

    async def set_replica_mode(self, name: str, address: str, mode: ReplicaMode) -> None:
        """ReplicaModeUpdate: a healthy replica may be failed by hand (RW to
        ERR); coming back needs a rebuild (ReplicaAdd), never a mode change."""
        engine = self.running(name)
        replica = self.replica_of(engine, "", address)
        current = engine.record.modes.get(replica)
        if current == mode:
            return
        if mode != ReplicaMode.ERR:
            raise FailedPrecondition(
                f"replica {replica} is {current}; it can become {mode} only through a rebuild (ReplicaAdd)",
                field="mode",
            )
        if engine.rebuild is not None and engine.rebuild_dst == replica and engine.op is not None:
            engine.op.cancel()
            with contextlib.suppress(BaseException):
                await engine.op
        assert engine.mirror is not None
        try:
            await engine.mirror.set_mode(replica, LegMode.ERR)
        except NvmeError as exc:
            raise datapath_error(f"replica {replica}", exc) from exc
        self._leg_failed(engine, replica, "set to ERR by ReplicaModeUpdate")
        await self.hub.durable()

    def set_rebuild_rate(self, name: str, mbps: int) -> None:
        if mbps < 0:
            raise InvalidArgument(f"must be >= 0, got {mbps}", field="qos_limit_mbps")
        self.get(name, "engine_name").rebuild_rate = mbps * (1 << 20)

    def rebuild_statuses(self, name: str) -> dict[str, Any]:
        """The copy in progress, by destination replica (Longhorn reports only
        replicas in WO mode)."""
        engine = self.get(name, "engine_name")
        if engine.rebuild is not None:
            return {engine.rebuild_dst: engine.rebuild.status()}
        if engine.rebuild_phase:  # carrying the chain (or between the phases)
            job = engine.chain_job.status() if engine.chain_job is not None else None
            return {
                engine.rebuild_dst: RebuildStatus(
                    dst=engine.rebuild_dst,
                    src="",
                    state=RebuildState.IN_PROGRESS,
                    bytes_done=job.bytes_done if job is not None else 0,
                    bytes_total=job.bytes_total if job is not None else engine.record.size,
                    error="",
                )
            }
        return {}

    def leg_statuses(self, name: str) -> list[Any]:
        engine = self.get(name, "engine_name")
        return engine.mirror.legs() if engine.mirror is not None else []

    # -- the mirror down and up again (a revert) ---------------------------------------

    def leg_handles(self, engine: Engine) -> dict[str, Any]:
        """The attached controller of each replica in the engine's mirror."""
        data = self.require()
        legs = {leg.name for leg in engine.mirror.legs()} if engine.mirror is not None else set()
        return {name: data.initiator.handle(name) for name in sorted(legs & engine.attached)}

    async def take_down(self, engine: Engine) -> None:
        """The mirror goes and every replica is detached (an engine with no
        frontend: nothing was exported); ``bring_up`` makes them again."""
        await self._dismantle(engine)

    async def bring_up(self, engine: Engine, replicas: list[str]) -> None:
        """Attach ``replicas`` (RW) and make the mirror over them again; one
        that cannot be attached is ERR, saying why."""
        data = self.require()
        record = engine.record
        outcomes = await asyncio.gather(*(self._attach(data, engine, n) for n in replicas), return_exceptions=True)
        legs = []
        for name, outcome in zip(replicas, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                record.modes[name] = ReplicaMode.ERR
                engine.errors[name] = f"not attached again: {outcome}"
                continue
            legs.append((name, outcome[0], outcome[1]))
        if not legs:
            self._fail(engine, "no replica could be attached again")
            raise Unavailable(f"engine {engine.name}: no replica could be attached again")
        block_size = legs[0][2]
        mirror = await data.mirrors.create_mirror(
            record.name, [(n, h) for n, h, _ in legs], record.size // block_size, leg_timeout_ms=self.replica_timeout_ms
        )
        engine.mirror = mirror
        engine.mirror_made_at = time.monotonic()
        mirror.on_leg_failed = lambda leg, why: self._leg_failed(engine, leg, why)
        for name, _, _ in legs:
            record.modes[name] = ReplicaMode.RW
        if record.spec.frontend and record.port:
            await mirror.export(nqn_of(record.name), record.address, record.port, nguid_of(record.name))
        self.hub.publish(self.view(engine))
        await self.hub.durable()

    # -- replica failure ---------------------------------------------------------------

    def _leg_failed(self, engine: Engine, leg: str, why: str) -> None:
        record = engine.record
        if record.modes.get(leg) == ReplicaMode.ERR:
            return
        record.modes[leg] = ReplicaMode.ERR
        engine.errors[leg] = why
        silent = next((s.silent_s for s in engine.mirror.legs() if s.name == leg), 0.0) if engine.mirror else 0.0
        if silent:
            self.metrics.replica_silence.observe(silent)
            log.warning(
                "replica silent: failed; engine goes on without it",
                extra=fields(name=record.name, replica=leg, silent_s=round(silent, 1), why=why),
            )
        else:
            log.warning(
                "replica failed; engine goes on without it", extra=fields(name=record.name, replica=leg, why=why)
            )
        if not any(mode == ReplicaMode.RW for mode in record.modes.values()) and not record.state.terminal:
            record.state = ProcessState.ERROR
            record.error_msg = f"no healthy replica left (last: {leg}: {why})"
        self.hub.publish(self.view(engine))

    # -- delete ------------------------------------------------------------------------

    async def delete(self, name: str, uuid: str) -> V2InstanceView:
        engine = self.engines.get(name)
        if engine is None or (uuid and engine.uuid != uuid):
            raise NotFound(f"cannot find engine {name} with UUID {uuid or '(any)'}", field="uuid" if engine else "name")
        record = engine.record
        if record.delete_requested:
            return self.view(engine, deleted=True)
        before = record.state
        record.delete_requested = True
        if not record.state.terminal:
            record.state = ProcessState.STOPPING
        self.hub.publish(self.view(engine))
        try:
            await self.hub.durable()  # the intent first: a crash after it is finished at restart
        except ImdError:
            record.delete_requested = False
            record.state = before
            self.hub.publish(self.view(engine))
            raise
        if engine.op is not None:
            engine.op.cancel()  # preempt a create, expansion or rebuild at once
        self.preempt(engine, "the engine was deleted")
        engine.teardown = asyncio.ensure_future(self._teardown(engine))
        return self.view(engine, deleted=True)

    async def _teardown(self, engine: Engine) -> None:
        op = engine.op
        if op is not None:
            with contextlib.suppress(BaseException):
                await op
        if self.engines.get(engine.name) is not engine:
            return  # a create that failed or was preempted cleaned up itself
        await self._dismantle(engine)
        await self._stop_replicas_hashes(engine)
        self._forget(engine)
        with contextlib.suppress(ImdError):
            await self.hub.durable()
        log.info("engine deleted", extra=fields(name=engine.name, uuid=engine.uuid))

    async def _dismantle(self, engine: Engine) -> None:
        """Unexport, destroy the mirror, detach every controller this engine
        attached. Each step is tried even if an earlier one failed; none
        raises (a dead replica target must not keep an engine alive)."""
        mirror, engine.mirror = engine.mirror, None
        if mirror is not None:
            with contextlib.suppress(Exception):
                await mirror.unexport()
            try:
                await mirror.destroy()
            except Exception as exc:  # logged; the teardown goes on
                log.error("mirror destroy failed", extra=fields(name=engine.name, error=str(exc)))
        if self.data is not None:
            for replica in sorted(engine.attached):
                try:
                    # Only this engine's: another engine may already be
                    # taking the name over (its attach must not be preempted).
                    await self.data.initiator.detach(replica, owner=engine.uuid)
                except Exception as exc:  # logged; the teardown goes on
                    log.error("detach failed", extra=fields(name=engine.name, replica=replica, error=str(exc)))
        engine.attached.clear()

    async def _stop_replicas_hashes(self, engine: Engine) -> None:
        """Hashes of the engine's snapshots run on its replicas' nodes: they
        stop with it (each within a chunk). Best effort, bounded: a node that
        does not answer is not waited for."""
        if self.expander is None:
            return
        nodes = self.expander
        calls = [
            nodes.snapshot_hash_cancel(addresses[0], replica)
            for replica, addresses in engine.record.spec.replicas.items()
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*calls, return_exceptions=True)

    def _forget(self, engine: Engine) -> None:
        if self.on_deleted is not None and self.engines.get(engine.name) is engine:
            self.on_deleted(engine.name)
        if self.engines.get(engine.name) is engine:
            del self.engines[engine.name]
            if engine.record.port:
                self.ports.release(PortBlock(engine.record.port, engine.record.port))
            self.hub.publish(self.view(engine, deleted=True))

    # -- daemon restart ---------------------------------------------------------------------

    async def recover(self, records: list[EngineRecord]) -> dict[str, int]:
        """Bring back the engines this daemon ran before it stopped (they
        lived in its process), with their UUID, frontend NQN and port, before
        the daemon reports ready. An unacknowledged create (still starting)
        or an engine being deleted is dropped; an engine that cannot be
        brought back is listed in error, with the reason."""
        report = {"engines_restored": 0, "engines_failed": 0, "engines_dropped": 0}
        restoring = []
        for record in records:
            if record.delete_requested or record.state == ProcessState.STARTING:
                report["engines_dropped"] += 1
                continue
            if record.port:
                try:
                    self.ports.reserve(PortBlock(record.port, record.port))
                except ValueError:
                    log.error("engine's port unavailable at recovery", extra=fields(name=record.name))
                    record.port = 0
            engine = Engine(record)
            self.engines[record.name] = engine
            if record.state.terminal:
                continue
            if self.data is None:
                self._fail(engine, f"V2 engines not available: {self.unavailable}")
                report["engines_failed"] += 1
                continue
            restoring.append(engine)
        # Each restore is its engine's op until it ends (a resync may then
        # become the op), so the tasks are kept here to be awaited.
        tasks = []
        for engine in restoring:
            engine.op, engine.op_kind = asyncio.ensure_future(self._restore(engine)), "restore"
            tasks.append(engine.op)
        for engine, task in zip(restoring, tasks, strict=True):
            try:
                await asyncio.shield(task)
                report["engines_restored"] += 1
            except Exception as exc:  # the engine says why; the daemon goes on
                self._fail(engine, f"not restored after the daemon restarted: {exc}")
                report["engines_failed"] += 1
        return report

    async def _restore(self, engine: Engine) -> None:
        """Re-attach the replicas that were healthy (never one that was ERR
        or still rebuilding: its data may be stale), rebuild the mirror and
        export it on the same port and NQN.

        Mirror consistency: writes in flight when the daemon died may have
        reached some replicas and not others. After a clean stop there were
        none. After anything else, the mirror starts with one replica RW (the
        first by name that attached) and every other healthy replica WO, and
        each is copied from it before it serves a read again: reads never
        differ by replica. (A dirty-region log would bound the copy to the
        regions written just before the crash; see README.)"""
        data = self.require()
        record = engine.record
        try:
            if record.intent is not None and self.finish_intent is not None:
                await self.finish_intent(engine)
            names = sorted(n for n, mode in record.modes.items() if mode == ReplicaMode.RW)
            for name, mode in record.modes.items():
                if mode == ReplicaMode.WO:
                    record.modes[name] = ReplicaMode.ERR
                    engine.errors[name] = "its rebuild was interrupted by the daemon restart"
            outcomes = await asyncio.gather(*(self._attach(data, engine, n) for n in names), return_exceptions=True)
            legs = []
            for name, outcome in zip(names, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, asyncio.CancelledError):
                        raise outcome
                    record.modes[name] = ReplicaMode.ERR
                    engine.errors[name] = str(outcome)
                    why = fields(name=record.name, replica=name, error=str(outcome))
                    log.warning("replica not attached at restore", extra=why)
                else:
                    legs.append((name, outcome[0], outcome[1]))
            if not legs:
                raise Unavailable("no healthy replica could be attached")
            block_size = legs[0][2]
            resync = [] if record.clean_stop else [name for name, _, _ in legs[1:]]
            first = [(n, h) for n, h, _ in legs if n not in resync]
            mirror = await data.mirrors.create_mirror(
                record.name, first, record.size // block_size, leg_timeout_ms=self.replica_timeout_ms
            )
            engine.mirror = mirror
            engine.mirror_made_at = time.monotonic()
            mirror.on_leg_failed = lambda leg, why: self._leg_failed(engine, leg, why)
            for name, handle, _ in legs:
                if name in resync:
                    await mirror.add_leg(name, handle, LegMode.WO)
                    record.modes[name] = ReplicaMode.WO
            if record.spec.frontend and record.port:
                await mirror.export(nqn_of(record.name), record.address, record.port, nguid_of(record.name))
        except BaseException:
            await self._dismantle(engine)
            raise
        finally:
            engine.op = None
        record.clean_stop = False
        self.hub.publish(self.view(engine))
        log.info(
            "engine restored", extra=fields(name=record.name, uuid=record.uuid, port=record.port, resync=len(resync))
        )
        if resync:
            engine.op = asyncio.ensure_future(self._resync(engine, resync))
            engine.op_kind = "rebuild"
            op = engine.op
            op.add_done_callback(lambda _: self._op_done(engine, op))

    async def _resync(self, engine: Engine, replicas: list[str]) -> None:
        """Copy the volume onto each replica that may differ, one at a time
        (one rebuild per mirror), then let it serve reads again."""
        record = engine.record
        mirror = engine.mirror
        assert mirror is not None
        for replica in replicas:
            if record.modes.get(replica) != ReplicaMode.WO:
                continue
            rebuild = mirror.start_rebuild(replica, chunk_bytes=self.rebuild_chunk_bytes, compare=True)
            await self._copy(engine, replica, rebuild, "resync after an unclean stop")
            self.hub.publish(self.view(engine))
            await self.hub.durable()
        log.info("engine resynced", extra=fields(name=record.name, replicas=",".join(replicas)))

    def _fail(self, engine: Engine, why: str) -> None:
        record = engine.record
        if not record.state.terminal:
            record.state = ProcessState.ERROR
            record.error_msg = why
        self.hub.publish(self.view(engine))

    # -- shutdown -----------------------------------------------------------------------

    async def close(self) -> None:
        """Daemon shutdown: stop every engine's long work and take every
        engine down (its hosts see the controller go; a restarted daemon
        brings engines back from their records)."""
        for engine in list(self.engines.values()):
            if engine.op is not None:
                engine.op.cancel()
        for engine in list(self.engines.values()):
            if engine.op is not None:
                with contextlib.suppress(BaseException):
                    await engine.op
            if engine.teardown is not None:
                with contextlib.suppress(BaseException):
                    await engine.teardown
            clean = engine.mirror is not None
            await self._dismantle(engine)
            # The frontend went first and the mirror drained its writes: every
            # replica left RW holds the same bytes.
            engine.record.clean_stop = clean and engine.record.state == ProcessState.RUNNING
        self.hub.changed()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _why_not_started(op: asyncio.Task[Any], replica: str) -> BaseException:
    if op.cancelled():
        return Unavailable(f"adding replica {replica} was preempted", field="replica_name")
    exc = op.exception()
    return exc if exc is not None else Unavailable(f"replica {replica}: the rebuild did not start")
