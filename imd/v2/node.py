"""Data engine V2 on this node: the registry that ties its owners together.

``V2Node`` owns nothing mutable itself but the event sequence: the target
keeper owns the SPDK target, ``Disks`` the disk records, ``Replicas`` the
replica records, ``Engines`` the engines. It gives them what they share
(persistence, events, per-instance logs) through the ``Hub`` interface,
routes a name to the owner that has it, and runs start-up recovery in the
one order that is safe:

1. load ``v2.json``;
2. adopt or start the target;
3. load the disks onto it (a fresh target has none);
4. recover replicas (undo unacknowledged creates, finish deletes, remove
   exports nobody claims, fail what a restarted target lost);
5. join the snapshot records with the lvstores (``Chains``: drop records
   whose lvol is gone, finish a revert a crash interrupted);
6. join the backing images with the lvstores (``BackingImages``: a copy a
   restart interrupted is removed and failed, deletes are finished);
7. re-create the engines that were running (they live in this process, so
   a restart took them down).

Names are one namespace across replicas and engines (and V1 instances,
which the instance service checks): InstanceList is one map by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

from imd.edges.spdk_target import TargetRpcError, TargetUnreachable
from imd.errors import AlreadyExists, ImdError, InvalidArgument, NotFound, Unavailable
from imd.eventlog import fields
from imd.metrics import Metrics
from imd.supervisor.broadcast import Broadcaster, Subscription
from imd.supervisor.model import ProcessState
from imd.supervisor.supervisor import Supervisor
from imd.v2 import state as v2state
from imd.v2.backing_images import BackingImages
from imd.v2.backups import DEFAULT_RATE_BYTES_PER_S as DEFAULT_BACKUP_RATE
from imd.v2.backups import Backups
from imd.v2.bases import ImagePeers
from imd.v2.chains import Allocation, Chains, OwnReplicasFirst
from imd.v2.datapath import DataPath, ReplicaNodes
from imd.v2.disks import Disks
from imd.v2.engines import Engines
from imd.v2.image_io import Alloc
from imd.v2.logs import InstanceLogHandler, instance_lines
from imd.v2.model import ENGINE, DiskView, EngineSpec, ReplicaSpec, V2Event, V2InstanceView
from imd.v2.replicas import Replicas
from imd.v2.snapshots import Snapshots
from imd.v2.target import TARGET_NAME, TargetKeeper

log = logging.getLogger("imd.v2")


T = TypeVar("T")

# logrus level names (what the manager sends) onto SPDK's print levels.
_SPDK_LEVEL = {
    "panic": "ERROR",
    "fatal": "ERROR",
    "error": "ERROR",
    "warn": "WARNING",
    "warning": "WARNING",
    "info": "NOTICE",
    "debug": "DEBUG",
    "trace": "DEBUG",
}
_FROM_SPDK_LEVEL = {"ERROR": "error", "WARNING": "warn", "NOTICE": "info", "INFO": "info", "DEBUG": "debug"}


class Store(Protocol):
    """Persistence as the V2 registry uses it (the daemon's StateStore):
    ``commit`` returns once every change marked so far is on disk, or
    raises the store's error (the change is then undone by its owner)."""

    def mark_dirty(self) -> None: ...

    async def commit(self) -> None: ...

    def load(self, decode: Callable[[bytes], T]) -> T | None: ...


class V2Node:
    def __init__(
        self,
        *,
        supervisor: Supervisor,
        target: TargetKeeper,
        data: DataPath | None,
        data_unavailable: str,
        replica_address: str,
        engine_address: str,
        state_dir: Path,
        watch_queue_limit: int,
        expander: ReplicaNodes | None = None,
        rebuild_chunk_bytes: int = 1 << 20,
        rebuild_rate_bytes_per_s: int = 0,
        replica_timeout_ms: int = 5000,
        hash_rate_bytes_per_s: int = 0,
        backup_rate_bytes_per_s: int = DEFAULT_BACKUP_RATE,
        allocation: Allocation | None = None,
        metrics: Metrics | None = None,
        image_peers: ImagePeers | None = None,
        image_connect_timeout_s: float = 10.0,
        image_read_timeout_s: float = 30.0,
        image_alloc: Alloc | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.metrics = metrics if metrics is not None else Metrics()
        self._last_state: dict[str, ProcessState] = {}  # by UUID: what the transition counter last saw
        self.target = target
        self.disks = Disks(self.target, self.changed, self.durable)
        self.replicas = Replicas(self.target, self.disks, supervisor.ports, self, replica_address)
        extra = {"allocation": allocation} if allocation is not None else {}
        self.chains = Chains(
            self.target,
            self.disks,
            self.replicas,
            supervisor.ports,
            self,
            replica_address,
            data=lambda: self.engines.data,
            hash_rate_bytes_per_s=hash_rate_bytes_per_s,
            **extra,
        )
        self.replicas.on_deleted = self.chains.forget
        self.engines = Engines(
            data,
            data_unavailable,
            supervisor.ports,
            self,
            engine_address,
            expander=expander,
            rebuild_chunk_bytes=rebuild_chunk_bytes,
            rebuild_rate_bytes_per_s=rebuild_rate_bytes_per_s,
            replica_timeout_ms=replica_timeout_ms,
            metrics=self.metrics,
        )
        if data is not None and hasattr(data.backend, "on_silent"):
            data.backend.on_silent = lambda _path, seconds: self.metrics.path_silence.observe(seconds)
        self.snapshots = Snapshots(self.engines)
        if expander is not None:
            self.snapshots.restore_nodes = OwnReplicasFirst(self.chains, expander)
        self.engines.finish_intent = self.snapshots.finish_intent
        self.backing_images = BackingImages(
            self.target,
            self.disks,
            supervisor.ports,
            replica_address,
            changed=self.changed,
            durable=self.durable,
            data=lambda: self.engines.data,
            peers=image_peers,
            watch_queue_limit=watch_queue_limit,
            connect_timeout_s=image_connect_timeout_s,
            read_timeout_s=image_read_timeout_s,
            alloc=image_alloc,
        )
        self.replicas.bases = self.backing_images
        self.chains.bases = self.backing_images
        self.backups = Backups(self.engines, self.snapshots, rate_bytes_per_s=backup_rate_bytes_per_s)
        self.engines.on_deleted = self._engine_gone
        self.events: Broadcaster[V2Event] = Broadcaster(watch_queue_limit)
        self.logs = InstanceLogHandler()
        self.state_path = state_dir / v2state.V2_STATE_FILE
        self.store: Store | None = None
        self._seq = 0
        self._removed: dict[str, asyncio.Future[None]] = {}
        logging.getLogger("imd.v2").addHandler(self.logs)

    def _engine_gone(self, name: str) -> None:
        self.snapshots.forget(name)
        self.backups.forget(name)

    # -- Hub ---------------------------------------------------------------------------

    def changed(self) -> None:
        if self.store is not None:
            self.store.mark_dirty()

    def publish(self, view: V2InstanceView) -> None:
        self._seq += 1
        self.events.publish(V2Event(self._seq, view))
        if self._last_state.get(view.uuid) is not view.state:
            self._last_state[view.uuid] = view.state
            self.metrics.transitions.labels("v2", view.type, view.state.value).inc()
        if view.deleted:
            self._last_state.pop(view.uuid, None)
        self.changed()
        if view.deleted:
            removed = self._removed.pop(view.name, None)
            if removed is not None and not removed.done():
                removed.set_result(None)

    async def durable(self) -> None:
        if self.store is not None:
            await self.store.commit()

    def snapshot(self) -> bytes:
        return v2state.encode(
            v2state.V2StateFile(
                disks=list(self.disks.records.values()),
                replicas=list(self.replicas.records.values()),
                engines=[e.record for e in self.engines.engines.values()],
                snapshots=self.chains.records(),
                backing_images=self.backing_images.persisted(),
            )
        )

    # -- start-up ----------------------------------------------------------------------

    def load(self) -> v2state.V2StateFile:
        """The persisted V2 state; empty if there is none. A corrupt file is
        set aside by the store (renamed, never deleted) and V2 starts empty."""
        if self.store is None:
            return v2state.V2StateFile()
        return self.store.load(v2state.decode) or v2state.V2StateFile()

    async def start(self, persisted: v2state.V2StateFile) -> dict[str, int]:
        for disk in persisted.disks:
            self.disks.records[disk.name] = disk
        self.target.on_lost(self.replicas.target_lost)
        self.target.on_ready(self._target_back)
        report: dict[str, int] = {"disks": len(persisted.disks)}
        if await self.target.start():
            await self.disks.load_all()
            report.update(await self.replicas.recover(persisted.replicas, target_fresh=self.target.started_fresh))
            report.update(await self.chains.recover(persisted.snapshots))
            report.update(await self.backing_images.recover(persisted.backing_images))
        else:
            self.replicas.adopt_unserved(persisted.replicas, self.target.reason)
            self.backing_images.adopt_unserved(persisted.backing_images)
            report["replicas_unserved"] = len(persisted.replicas)
        report.update(await self.engines.recover(persisted.engines))
        report["backups_interrupted"] = self.backups.recover()
        self.changed()
        with contextlib.suppress(ImdError):
            # A state dir that cannot be written leaves the daemon degraded
            # (health says so); recovery itself is done in memory.
            await self.durable()
        log.info("V2 ready" if self.target.available else "V2 not available", extra=fields(**report))
        # Prefixed: the daemon merges this with the process registry's report.
        return {f"v2_{key}": value for key, value in report.items()}

    async def _target_back(self) -> None:
        await self.disks.load_all()
        await self.replicas.finish_deletes()
        await self.backing_images.sweep()

    # -- instances ---------------------------------------------------------------------

    def views(self) -> list[V2InstanceView]:
        return [
            *(self.replicas.view(r) for r in self.replicas.records.values()),
            *(self.engines.view(e) for e in self.engines.engines.values()),
        ]

    def has(self, name: str) -> bool:
        return name in self.replicas.records or name in self.engines.engines

    def get(self, name: str) -> V2InstanceView:
        if name in self.replicas.records:
            return self.replicas.view(self.replicas.records[name])
        if name in self.engines.engines:
            return self.engines.view(self.engines.engines[name])
        raise NotFound(f"cannot find instance {name}", field="name")

    async def create_replica(self, spec: ReplicaSpec, field_prefix: str) -> V2InstanceView:
        self._name_free(spec.name)
        return await self.replicas.create(spec, field_prefix)

    async def create_engine(self, spec: EngineSpec) -> V2InstanceView:
        self._name_free(spec.name)
        return await self.engines.create(spec)

    def _name_free(self, name: str) -> None:
        if self.has(name):
            raise AlreadyExists(f"instance {name} already exists", field="spec.name")

    async def delete(self, name: str, uuid: str, *, cleanup: bool) -> V2InstanceView:
        if name in self.engines.engines:
            return await self.engines.delete(name, uuid)
        if name in self.replicas.records:
            return await self.replicas.delete(name, uuid, cleanup)
        raise NotFound(f"cannot find instance {name}", field="name")

    def watch(self) -> Subscription[V2Event]:
        return self.events.subscribe()

    def log_lines(self, name: str, *, follow: bool, draining: asyncio.Future[None]) -> AsyncIterator[str]:
        view = self.get(name)
        target_log = None if view.type == ENGINE else self.supervisor.logs.path_for(TARGET_NAME)
        until: tuple[asyncio.Future[None], ...] = ()
        if follow:
            removed = self._removed.get(name)
            if removed is None or removed.done():
                removed = self._removed[name] = asyncio.get_running_loop().create_future()
            until = (removed, draining)
        return instance_lines(self.logs, name, target_log=target_log, follow=follow, until=until)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for view in self.views():
            key = f"v2 {view.type} {view.state.value}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def delete_disk(self, name: str, uuid: str) -> None:
        """DiskDelete: refused while replica instances live on the disk; else
        copies of backing images onto it stop first (within one chunk, their
        lvols removed while the disk is still here), then the bdev goes."""
        users = self.live_replica_names(name)
        record = self.disks.records.get(name)
        if record is None or users or (uuid and uuid != record.uuid):
            await self.disks.delete(name, uuid, users)  # refuses, naming why
            return
        try:
            await self.backing_images.disk_leaving(name)
            await self.disks.delete(name, uuid, self.live_replica_names(name))
        finally:
            self.backing_images.disk_left(name)

    async def create_disk(self, name: str, uuid: str, path: str, block_size: int) -> DiskView:
        """DiskCreate; backing images on a disk that comes back are checked
        against it (and deletes its absence deferred are finished)."""
        view = await self.disks.create(name, uuid, path, block_size)
        await self.backing_images.disk_arrived(name)
        return view

    def live_replica_names(self, disk: str) -> list[str]:
        return [
            r.name
            for r in self.replicas.records.values()
            if r.spec.disk_name == disk and r.state not in (ProcessState.STOPPED,)
        ]

    # -- the target's log level and flags (LogSet/Get* for data engine V2) -------------

    async def log_level(self) -> str:
        return _FROM_SPDK_LEVEL.get(await self._call(self.target.require().log_print_level()), "info")

    async def set_log_level(self, level: str) -> None:
        spdk_level = _SPDK_LEVEL.get(level.strip().lower())
        if spdk_level is None:
            raise InvalidArgument(f"unknown level {level!r}; one of {', '.join(sorted(_SPDK_LEVEL))}", field="level")
        await self._call(self.target.require().set_log_print_level(spdk_level))

    async def log_flags(self) -> str:
        flags = await self._call(self.target.require().log_flags())
        return ",".join(sorted(name for name, enabled in flags.items() if enabled))

    async def set_log_flags(self, flags: str) -> None:
        """Enable exactly the comma-separated SPDK log flags given."""
        client = self.target.require()
        wanted = {f.strip() for f in flags.split(",") if f.strip()}
        known = await self._call(client.log_flags())
        unknown = sorted(wanted - set(known))
        if unknown:
            raise InvalidArgument(f"unknown SPDK log flags {', '.join(unknown)}", field="flags")
        for name, enabled in known.items():
            if enabled != (name in wanted):
                await self._call(client.set_log_flag(name, name in wanted))

    @staticmethod
    async def _call(step: Awaitable[T]) -> T:
        try:
            return await step
        except (TargetRpcError, TargetUnreachable) as exc:
            raise Unavailable(f"SPDK target: {exc}") from exc

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        self.events.close_all()
        await self.backing_images.close()
        await self.backups.close()
        await self.engines.close()
        await self.chains.close()
        await self.replicas.close()
        with contextlib.suppress(ImdError):
            await self.durable()
        await self.target.close()
        logging.getLogger("imd.v2").removeHandler(self.logs)
