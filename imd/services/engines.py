"""Engine operations (Longhorn's imrpc.ProxyEngineService), for the V2
engines this daemon hosts.

A request names its engine (``engine_name``) and data engine. A V1 engine
is a process with a proxy of its own, so it answers FAILED_PRECONDITION
naming the engine; an unknown data engine is UNIMPLEMENTED, as on every
other API. Everything the caller can get wrong is checked before the
engine is touched, and each error names the field as ``proxy.proto``
spells it.
"""

from __future__ import annotations

import time

import msgspec

from imd.backupstore import cleanup_mount_points
from imd.buildinfo import BUILD, BuildInfo
from imd.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from imd.services.instances import DataEngine, InstanceService, parse_addresses, route
from imd.services.rates import RateMeter, Rates, Sample
from imd.services.validation import validate_name
from imd.v2.backups import Backups, BackupStarted, parse_envs
from imd.v2.engines import Engine, Engines
from imd.v2.model import BackupRecord, HashStatus, ReplicaMode, RestoreRecord
from imd.v2.snapshots import CloneStatus, PurgeStatus, SnapshotEntry, Snapshots


class VolumeInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size: int
    replica_count: int
    endpoint: str
    frontend: str
    frontend_state: str
    is_expanding: bool
    last_expansion_error: str
    last_expansion_failed_at: str
    snapshot_max_count: int = 0
    snapshot_max_size: int = 0


class ReplicaInfo(msgspec.Struct, frozen=True):
    name: str
    address: str
    mode: ReplicaMode


class RebuildInfo(msgspec.Struct, frozen=True, kw_only=True):
    replica: str
    address: str
    is_rebuilding: bool
    progress: int
    state: str
    error: str
    from_address: str


def tcp(address: str) -> str:
    """Longhorn reports replica addresses with a ``tcp://`` prefix."""
    return address if address.startswith("tcp://") else f"tcp://{address}"


class EngineService:
    def __init__(self, instances: InstanceService) -> None:
        self.instances = instances
        self._rates = RateMeter()

    def engines(self, engine_name: str, data_engine: int) -> Engines:
        validate_name(engine_name, "engine_name")
        if route(data_engine) is DataEngine.V1 or self.instances.processes.exists(engine_name):
            raise FailedPrecondition(
                f"engine {engine_name} is a data engine V1 process, with a proxy of its own; "
                "this service operates the V2 engines imd hosts",
                field="engine_name",
            )
        node = self.instances.v2()
        if engine_name in node.replicas.records:
            raise NotFound(f"{engine_name} is a V2 replica, not an engine", field="engine_name")
        return node.engines

    def _engine(self, engine_name: str, data_engine: int) -> tuple[Engines, Engine]:
        engines = self.engines(engine_name, data_engine)
        return engines, engines.get(engine_name, "engine_name")

    def _may_change(self) -> None:
        """New long work is refused while draining or while the state cannot
        be written (a delete or a ReplicaRemove still goes through drain)."""
        self.instances.processes.lifecycle.check()
        self.instances.processes.durability.check()

    def version(self) -> BuildInfo:
        return BUILD

    def volume(self, engine_name: str, data_engine: int) -> VolumeInfo:
        engines, engine = self._engine(engine_name, data_engine)
        record = engine.record
        view = engines.view(engine)
        return VolumeInfo(
            name=record.spec.volume_name,
            size=record.size,
            replica_count=len(record.spec.replicas),
            endpoint=view.endpoint,
            frontend=record.spec.frontend,
            frontend_state="up" if view.endpoint else "down",
            is_expanding=engine.op_kind == "expand",
            last_expansion_error=record.last_expansion_error,
            last_expansion_failed_at=record.last_expansion_failed_at,
            snapshot_max_count=record.snapshot_max_count,
            snapshot_max_size=record.snapshot_max_size,
        )

    async def expand(self, engine_name: str, data_engine: int, size: int) -> None:
        if size <= 0:
            raise InvalidArgument(f"must be positive, got {size}", field="expand.size")
        engines = self.engines(engine_name, data_engine)
        self._may_change()
        await engines.expand(engine_name, size)

    def replicas(self, engine_name: str, data_engine: int) -> list[ReplicaInfo]:
        _, engine = self._engine(engine_name, data_engine)
        record = engine.record
        return [
            ReplicaInfo(name, tcp(record.spec.replicas[name][0]), record.modes.get(name, ReplicaMode.ERR))
            for name in sorted(record.spec.replicas)
        ]

    async def add_replica(
        self, engine_name: str, data_engine: int, replica: str, address: str, *, restore: bool, linked: bool
    ) -> None:
        validate_name(replica, "replica_name")
        if not address:
            raise InvalidArgument("must not be empty", field="replica_address")
        addresses = parse_addresses(replica, address.removeprefix("tcp://"))
        if restore:
            raise Unimplemented("adding a replica to restore a backup is not supported", field="restore")
        if linked:
            raise Unimplemented("linked clones are not supported", field="linked_clone_src_replica_name")
        engines = self.engines(engine_name, data_engine)
        self._may_change()
        await engines.add_replica(engine_name, replica, addresses)

    async def remove_replica(self, engine_name: str, data_engine: int, replica: str, address: str) -> None:
        if not replica and not address:
            raise InvalidArgument("name the replica (replica_name or replica_address)", field="replica_name")
        if replica:
            validate_name(replica, "replica_name")
        engines = self.engines(engine_name, data_engine)
        self.instances.processes.durability.check()
        await engines.remove_replica(engine_name, replica, address)

    def rebuilds(self, engine_name: str, data_engine: int) -> list[RebuildInfo]:
        engines, engine = self._engine(engine_name, data_engine)
        record = engine.record
        infos = []
        for replica, status in engines.rebuild_statuses(engine_name).items():
            total = max(int(status.bytes_total), 1)
            src = record.spec.replicas.get(str(status.src), ("",))[0]
            infos.append(
                RebuildInfo(
                    replica=replica,
                    address=tcp(record.spec.replicas[replica][0]),
                    is_rebuilding=str(status.state) == "in_progress",
                    progress=min(100, int(status.bytes_done) * 100 // total),
                    state=str(status.state),
                    error=str(status.error),
                    from_address=tcp(src) if src else "",
                )
            )
        return infos

    async def set_mode(self, engine_name: str, data_engine: int, address: str, mode: int) -> None:
        wire = {0: ReplicaMode.WO, 1: ReplicaMode.RW, 2: ReplicaMode.ERR}
        if mode not in wire:
            raise InvalidArgument(f"unknown replica mode {mode}", field="mode")
        if not address:
            raise InvalidArgument("must not be empty", field="replica_address")
        engines = self.engines(engine_name, data_engine)
        self.instances.processes.durability.check()
        await engines.set_replica_mode(engine_name, address, wire[mode])

    def metrics(self, engine_name: str, data_engine: int) -> Rates:
        """MetricsGet: the engine's host I/O since the previous call (from
        the C core's counters; a first call measures from the mirror's
        making)."""
        _, engine = self._engine(engine_name, data_engine)
        mirror = engine.mirror
        if mirror is None:
            raise FailedPrecondition(f"engine {engine_name} has no volume yet", field="engine_name")
        c = mirror.counters()
        now = Sample(
            at_s=time.monotonic(),
            reads=c.get("reads", 0),
            writes=c.get("writes", 0),
            bytes_read=c.get("bytes_read", 0),
            bytes_written=c.get("bytes_written", 0),
            read_latency_ns=c.get("read_latency_ns_total", 0),
            write_latency_ns=c.get("write_latency_ns_total", 0),
        )
        return self._rates.rates(f"{engine_name}/{engine.uuid}", now, engine.mirror_made_at)

    def set_rebuild_rate(self, engine_name: str, data_engine: int, mbps: int) -> None:
        self.engines(engine_name, data_engine).set_rebuild_rate(engine_name, mbps)

    # -- snapshots (imd.v2.snapshots) ---------------------------------------------------

    def snapshots(self, engine_name: str, data_engine: int) -> Snapshots:
        self.engines(engine_name, data_engine)
        return self.instances.v2().snapshots

    async def snapshot_create(self, engine_name: str, data_engine: int, name: str, labels: dict[str, str]) -> str:
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        return await snapshots.create(engine_name, name, labels)

    async def snapshot_list(self, engine_name: str, data_engine: int) -> dict[str, SnapshotEntry]:
        return await self.snapshots(engine_name, data_engine).entries(engine_name)

    async def snapshot_remove(self, engine_name: str, data_engine: int, names: list[str]) -> None:
        if not names:
            raise InvalidArgument("name at least one snapshot", field="names")
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        await snapshots.remove(engine_name, names)

    async def snapshot_purge(self, engine_name: str, data_engine: int, skip_if_in_progress: bool) -> None:
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        await snapshots.purge(engine_name, skip_if_in_progress)

    def snapshot_purge_status(self, engine_name: str, data_engine: int) -> dict[str, PurgeStatus]:
        return self.snapshots(engine_name, data_engine).purge_status(engine_name)

    async def snapshot_revert(self, engine_name: str, data_engine: int, name: str) -> None:
        if not name:
            raise InvalidArgument("must not be empty", field="name")
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        await snapshots.revert(engine_name, name)

    async def snapshot_hash(self, engine_name: str, data_engine: int, name: str, rehash: bool) -> None:
        if not name:
            raise InvalidArgument("must not be empty", field="snapshot_name")
        await self.snapshots(engine_name, data_engine).hash(engine_name, name, rehash)

    async def snapshot_hash_status(self, engine_name: str, data_engine: int, name: str) -> dict[str, HashStatus]:
        if not name:
            raise InvalidArgument("must not be empty", field="snapshot_name")
        return await self.snapshots(engine_name, data_engine).hash_status(engine_name, name)

    async def snapshot_clone(
        self, engine_name: str, data_engine: int, snapshot: str, from_engine: str, from_address: str, mode: int
    ) -> None:
        if not snapshot:
            raise InvalidArgument("must not be empty", field="snapshot_name")
        validate_name(from_engine, "from_engine_name")
        if not from_address:
            raise InvalidArgument("must not be empty", field="from_engine_address")
        if mode != 0:
            raise Unimplemented("only full-copy clones are served (CLONE_MODE_FULL_COPY)", field="clone_mode")
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        await snapshots.clone(engine_name, snapshot, from_engine, from_address)

    def snapshot_clone_status(self, engine_name: str, data_engine: int) -> dict[str, CloneStatus]:
        return self.snapshots(engine_name, data_engine).clone_status(engine_name)

    async def snapshot_max_count_set(self, engine_name: str, data_engine: int, count: int) -> None:
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        await snapshots.set_max_count(engine_name, count)

    async def snapshot_max_size_set(self, engine_name: str, data_engine: int, size: int) -> None:
        snapshots = self.snapshots(engine_name, data_engine)
        self._may_change()
        await snapshots.set_max_size(engine_name, size)

    # -- backups and restores (imd.v2.backups) --------------------------------------------

    def backups(self, engine_name: str, data_engine: int) -> Backups:
        self.engines(engine_name, data_engine)
        return self.instances.v2().backups

    async def backup_create(self, engine_name: str, data_engine: int, request: BackupRequest) -> BackupStarted:
        """SnapshotBackup: every field checked (errors name them as
        proxy.proto spells them), the target reached with the request's
        credentials, then the backup runs in the background."""
        backups = self.backups(engine_name, data_engine)
        envs = parse_envs(request.envs)
        if request.concurrent_limit < 0:
            raise InvalidArgument(f"{request.concurrent_limit} is negative", field="concurrent_limit")
        self._may_change()
        return await backups.backup(
            engine_name,
            snapshot=request.snapshot_name,
            target=request.backup_target,
            backup_name=request.backup_name,
            volume=request.volume_name,
            envs=envs,
            compression=request.compression_method,
            concurrent_limit=request.concurrent_limit,
            labels=request.labels,
            parameters=request.parameters,
            backing_image_name=request.backing_image_name,
            backing_image_checksum=request.backing_image_checksum,
            storage_class_name=request.storage_class_name,
        )

    def backup_status(self, engine_name: str, data_engine: int, backup_name: str, replica_address: str) -> BackupRecord:
        return self.backups(engine_name, data_engine).backup_status(engine_name, backup_name, replica_address)

    def backup_list(self, engine_name: str, data_engine: int) -> list[BackupRecord]:
        return self.backups(engine_name, data_engine).backups(engine_name)

    async def restore(
        self, engine_name: str, data_engine: int, url: str, envs: list[str], concurrent_limit: int
    ) -> None:
        if not url:
            raise InvalidArgument("must not be empty", field="url")
        backups = self.backups(engine_name, data_engine)
        parsed = parse_envs(envs)
        self._may_change()
        await backups.restore(engine_name, url, envs=parsed, concurrent_limit=concurrent_limit)

    def restore_status(self, engine_name: str, data_engine: int) -> dict[str, tuple[str, RestoreRecord]]:
        return self.backups(engine_name, data_engine).restore_status(engine_name)

    def restore_finish(self, engine_name: str, data_engine: int) -> None:
        self.backups(engine_name, data_engine).restore_finish(engine_name)

    async def cleanup_mount_points(self) -> None:
        """CleanupBackupMountPoints: every NFS target this node mounted."""
        await cleanup_mount_points()


class BackupRequest(msgspec.Struct, frozen=True, kw_only=True):
    """SnapshotBackup's fields, as the API edge hands them over."""

    snapshot_name: str
    backup_target: str
    backup_name: str = ""
    volume_name: str = ""
    envs: list[str] = []
    compression_method: str = ""
    concurrent_limit: int = 0
    labels: dict[str, str] = {}
    parameters: dict[str, str] = {}
    backing_image_name: str = ""
    backing_image_checksum: str = ""
    storage_class_name: str = ""
