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
import logging
import uuid as uuidlib
from collections.abc import Sequence
from typing import Any

from imd.errors import AlreadyExists, FailedPrecondition, ImdError, InvalidArgument, NotFound, Unavailable
from imd.eventlog import fields
from imd.supervisor.model import PortBlock, ProcessState
from imd.supervisor.ports import PortAllocator
from imd.v2.datapath import DataPath, Mirror
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
from spdk_ffi import NvmeError, Path
from spdk_ffi.errors import AlreadyExists as ControllerHeld

log = logging.getLogger("imd.v2.engines")


def replica_paths(name: str, addresses: Sequence[str]) -> list[Path]:
    """``ip:port`` addresses (``[v6]:port`` too) of replica ``name`` as
    NVMe-oF paths to its subsystem."""
    paths = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = "IPv6" if ":" in host else "IPv4"
        paths.append(Path("TCP", family, host, port, nqn_of(name)))
    return paths


class Engine:
    """One engine: its record, its mirror, its one long operation."""

    def __init__(self, record: EngineRecord) -> None:
        self.record = record
        self.mirror: Mirror | None = None
        self.attached: set[str] = set()  # controllers this engine attached
        self.errors: dict[str, str] = {}  # why a replica is ERR
        self.op: asyncio.Task[Any] | None = None
        self.op_kind = ""
        self.teardown: asyncio.Task[None] | None = None

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
    ) -> None:
        self.data = data
        self.unavailable = unavailable
        self.ports = ports
        self.hub = hub
        self.address = address
        self.engines: dict[str, Engine] = {}

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
            name=spec.name, uuid=str(uuidlib.uuid4()), spec=spec, address=self.address, port=port, size=spec.size
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
            mirror = await data.make_mirror(record.name, legs, record.size // block_size)
            engine.mirror = mirror
            mirror.on_leg_failed = lambda leg, why: self._leg_failed(engine, leg, why)
            if record.spec.frontend:
                await mirror.export(nqn_of(record.name), record.address, record.port, nguid_of(record.name))
        except BaseException as exc:
            await self._dismantle(engine)
            self._forget(engine)
            with contextlib.suppress(ImdError):
                await self.hub.durable()
            if isinstance(exc, NvmeError):
                raise Unavailable(f"engine {record.name}: {exc}") from exc
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

    async def _attach(self, data: DataPath, engine: Engine, replica: str) -> tuple[Any, int]:
        record = engine.record
        holder = next((c for c in data.initiator.controllers() if c.name == replica), None)
        take_over = holder is None or holder.owner not in self.live_uuids() or holder.owner == record.uuid
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
            owner = holder.owner if holder else "?"
            engine_name = next((e.name for e in self.engines.values() if e.uuid == owner), owner)
            raise FailedPrecondition(f"replica {replica} is attached by live engine {engine_name}") from None
        engine.attached.add(replica)
        if result.cleaned_up:
            log.warning(
                "stale controller cleaned up", extra=fields(name=record.name, replica=replica, why=result.cleaned_up)
            )
        namespace = next(iter(result.info.namespaces), None)
        if namespace is None or namespace.size_bytes < record.size:
            have = namespace.size_bytes if namespace else 0
            raise InvalidArgument(
                f"replica {replica} holds {have} bytes, less than the volume's {record.size}",
                field="spec.spdk_instance_spec.size",
            )
        return data.initiator.handle(replica), namespace.block_size

    # -- replica failure ---------------------------------------------------------------

    def _leg_failed(self, engine: Engine, leg: str, why: str) -> None:
        record = engine.record
        if record.modes.get(leg) == ReplicaMode.ERR:
            return
        record.modes[leg] = ReplicaMode.ERR
        engine.errors[leg] = why
        log.warning("replica failed; engine goes on without it", extra=fields(name=record.name, replica=leg, why=why))
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
        record.delete_requested = True
        if not record.state.terminal:
            record.state = ProcessState.STOPPING
        self.hub.publish(self.view(engine))
        if engine.op is not None:
            engine.op.cancel()  # preempt a create, expansion or rebuild at once
        engine.teardown = asyncio.ensure_future(self._teardown(engine))
        await self.hub.durable()
        return self.view(engine, deleted=True)

    async def _teardown(self, engine: Engine) -> None:
        op = engine.op
        if op is not None:
            with contextlib.suppress(BaseException):
                await op
        if self.engines.get(engine.name) is not engine:
            return  # a create that failed or was preempted cleaned up itself
        await self._dismantle(engine)
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
                    await self.data.initiator.detach(replica)
                except Exception as exc:  # logged; the teardown goes on
                    log.error("detach failed", extra=fields(name=engine.name, replica=replica, error=str(exc)))
        engine.attached.clear()

    def _forget(self, engine: Engine) -> None:
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
        for engine in restoring:
            engine.op, engine.op_kind = asyncio.ensure_future(self._restore(engine)), "restore"
        for engine in restoring:
            assert engine.op is not None
            try:
                await asyncio.shield(engine.op)
                report["engines_restored"] += 1
            except Exception as exc:  # the engine says why; the daemon goes on
                self._fail(engine, f"not restored after the daemon restarted: {exc}")
                report["engines_failed"] += 1
        return report

    async def _restore(self, engine: Engine) -> None:
        """Re-attach the replicas that were healthy (never one that was ERR
        or still rebuilding: its data may be stale), rebuild the mirror and
        export it on the same port and NQN."""
        data = self.require()
        record = engine.record
        try:
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
                else:
                    legs.append((name, outcome[0], outcome[1]))
            if not legs:
                raise Unavailable("no healthy replica could be attached")
            block_size = legs[0][2]
            mirror = await data.make_mirror(record.name, [(n, h) for n, h, _ in legs], record.size // block_size)
            engine.mirror = mirror
            mirror.on_leg_failed = lambda leg, why: self._leg_failed(engine, leg, why)
            if record.spec.frontend and record.port:
                await mirror.export(nqn_of(record.name), record.address, record.port, nguid_of(record.name))
        except BaseException:
            await self._dismantle(engine)
            raise
        finally:
            engine.op = None
        self.hub.publish(self.view(engine))
        log.info("engine restored", extra=fields(name=record.name, uuid=record.uuid, port=record.port))

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
            await self._dismantle(engine)
