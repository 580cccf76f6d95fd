"""V2 backups and restores, engine side: Longhorn's SnapshotBackup,
SnapshotBackupStatus, BackupRestore, BackupRestoreStatus and
BackupRestoreFinish for the V2 engines this daemon hosts, over
``imd.backupstore`` (Longhorn's format, locks and targets).

* **Backup.** A snapshot of the engine is read from one RW replica that
  holds it, this node's own when there is one: the replica's node serves
  the snapshot read-only over NVMe-oF (``snapshot_expose``), this daemon's
  core attaches it, and the backupstore reads it one backup block (2 MiB)
  per call through ``DataPath.blocks`` (spdk_ffi.blockio: one request to
  the C core per block, all-zero blocks flagged there and never hashed).
  Checksums and compression run in the backupstore's worker threads, with
  ``concurrent_limit`` uploads in flight. The reads are capped at
  ``rate_bytes_per_s`` (the bytes that go on to be hashed and compressed;
  zero blocks are free), so that the host keeps its IOPS.
* **Restore.** A backup is written onto the engine's replicas through its
  mirror (every RW replica gets each block; one that fails leaves the
  mirror and the restore goes on with the others), only with no frontend,
  as Longhorn restores: a host writing meanwhile would leave the volume
  neither the backup nor its own. Ranges the backup does not cover are
  read and zeroed only where they are not zero already (thin replicas stay
  thin). The backup the volume holds is remembered (``last_restored``), and
  the next restore of the same volume writes only the blocks that changed.
  Once done, the volume is snapshotted as ``restore-<backup's snapshot>``
  (the previous restore snapshot goes), as Longhorn's V2 engine does.

Each backup and restore is a task the engine owns, beside its one long
operation: it never holds up VolumeSnapshot, ReplicaList, VolumeGet or
another engine. ``Engines.preempt`` stops it within one block: an engine
delete, a ReplicaRemove of the backup's source replica, a revert, an imd
shutdown. Its status then says what preempted it; nothing half-made is
listed on the target, and the blocks it uploaded are reused by the next
backup. Statuses live in the engine's record (``EngineRecord.backups``,
``EngineRecord.restore``) until the engine goes; one that was running when
imd died reads ``error: interrupted by restart`` afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imd.backupstore import BackupSpec, Driver, Progress, StoreOptions, create_backup, open_driver
from imd.backupstore import restore as restore_backup
from imd.backupstore.backup import generate_backup_name, load_backup, load_volume
from imd.backupstore.format import block_size_of, check_compression, check_name, is_full_mode
from imd.backupstore.seams import Buffer
from imd.backupstore.urls import parse_backup_url, parse_target
from imd.errors import AlreadyExists, Conflict, FailedPrecondition, ImdError, InvalidArgument, NotFound, Unavailable
from imd.eventlog import fields
from imd.v2.chains import now_rfc3339
from imd.v2.datapath import BlockIo, ReplicaNodes, datapath_error, export_path
from imd.v2.engines import Engine, Engines
from imd.v2.model import BackupRecord, ReplicaMode, RestoreRecord, host_nqn_of
from imd.v2.snapshots import Snapshots
from spdk_ffi import NvmeError

log = logging.getLogger("imd.v2.backups")

IN_PROGRESS, COMPLETE, ERROR = "in_progress", "complete", "error"
INTERRUPTED = "interrupted by restart"
KEEP_FINISHED = 64  # finished backups' statuses an engine keeps (the newest)
DEFAULT_RATE_BYTES_PER_S = 128 << 20
ZERO_CHUNK = 2 << 20  # what a restore reads (and zeroes if needed) at a time where no block lands
RESTORE_SNAPSHOT_PREFIX = "restore-"


def parse_envs(envs: Iterable[str], field: str = "envs") -> dict[str, str]:
    """Longhorn's ``KEY=VALUE`` strings; a malformed one is INVALID_ARGUMENT
    naming the field (never the value: it may be a secret)."""
    out: dict[str, str] = {}
    for i, entry in enumerate(envs):
        key, eq, value = entry.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"entry {i} is not KEY=VALUE", field=field)
        out[key] = value
    return out


class RateLimit:
    """A byte-rate cap: each ``take`` waits until its bytes fit the rate
    (the first passes at once). 0 is no cap."""

    def __init__(self, rate_bytes_per_s: int) -> None:
        self.rate = rate_bytes_per_s
        self._at = 0.0

    async def take(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(self._at, now)
        self._at = start + nbytes / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class SnapshotSource:
    """A ``BlockSource`` over a snapshot export this daemon's core attached."""

    def __init__(self, blocks: BlockIo, controller: Any, size: int, rate: RateLimit) -> None:
        self.blocks = blocks
        self.controller = controller
        self._size = size
        self.rate = rate

    @property
    def size(self) -> int:
        return self._size

    async def read(self, offset: int, length: int) -> Buffer | None:
        try:
            block = await self.blocks.read(self.controller, offset, length)
        except NvmeError as exc:
            raise Unavailable(f"reading the snapshot at offset {offset}: {exc}") from exc
        if block.zero:
            return None
        await self.rate.take(length)
        return block.data

    async def changed_blocks(self, since_snapshot: str, block_size: int) -> Iterable[int] | None:
        return None  # SPDK v24.01 cannot tell; unchanged blocks are found by checksum


class MirrorSink:
    """A ``BlockSink`` over an engine's mirror (looked up at each call: a
    mirror that went is an error, never a write elsewhere)."""

    def __init__(self, blocks: BlockIo, engine: Engine) -> None:
        self.blocks = blocks
        self.engine = engine

    @property
    def size(self) -> int:
        return self.engine.record.size

    def _mirror(self) -> Any:
        mirror = self.engine.mirror
        if mirror is None:
            raise Unavailable(f"engine {self.engine.name} has no volume any more")
        return mirror

    async def write(self, offset: int, data: Buffer) -> None:
        try:
            await self.blocks.mirror_write(self._mirror(), offset, data)
        except NvmeError as exc:
            raise datapath_error(f"writing the volume at offset {offset}", exc) from exc

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Zero what is not zero already: a thin replica stays thin (a write
        of zeros would allocate its clusters)."""
        end = offset + length
        try:
            while offset < end:
                n = min(ZERO_CHUNK, end - offset)
                if not (await self.blocks.mirror_read(self._mirror(), offset, n)).zero:
                    await self.blocks.mirror_write_zeroes(self._mirror(), offset, n)
                offset += n
        except NvmeError as exc:
            raise datapath_error(f"zeroing the volume at offset {offset}", exc) from exc

    async def flush(self) -> None:
        try:
            await self.blocks.mirror_flush(self._mirror())
        except NvmeError as exc:
            raise datapath_error("flushing the volume", exc) from exc


class BackupStarted:
    """What SnapshotBackup answers."""

    def __init__(self, backup: str, replica_address: str, is_incremental: bool) -> None:
        self.backup = backup
        self.replica_address = replica_address
        self.is_incremental = is_incremental


class _Work:
    """A running backup or restore: its task and why it was stopped."""

    def __init__(self, engine: Engine, replica: str) -> None:
        self.engine = engine
        self.replica = replica  # a backup's source replica ("" for a restore)
        self.task: asyncio.Task[None] | None = None
        self.why = ""  # what stopped it (set once; the task is cancelled once)


class Backups:
    def __init__(
        self,
        engines: Engines,
        snapshots: Snapshots,
        *,
        rate_bytes_per_s: int = DEFAULT_RATE_BYTES_PER_S,
        options: StoreOptions | None = None,
    ) -> None:
        self.engines = engines
        self.snapshots = snapshots
        self.rate_bytes_per_s = rate_bytes_per_s
        self.options = options or StoreOptions()
        self._backups: dict[tuple[str, str], _Work] = {}  # (engine, backup) -> running
        self._restores: dict[str, _Work] = {}  # engine -> running
        self._closing: set[asyncio.Future[None]] = set()
        engines.preempters.append(self.preempt)

    # -- helpers -------------------------------------------------------------------------------

    def _nodes(self) -> ReplicaNodes:
        if self.engines.expander is None:
            raise FailedPrecondition("this daemon cannot reach replicas' nodes", field="engine_name")
        return self.engines.expander

    def _blocks(self) -> BlockIo:
        data = self.engines.require()
        if data.blocks is None:
            raise FailedPrecondition("this data path cannot read or write volumes' blocks", field="data_engine")
        return data.blocks

    @staticmethod
    def _host(address: str) -> str:
        return address.rpartition(":")[0].strip("[]") if ":" in address else address

    def _changed(self) -> None:
        self.engines.hub.changed()

    # -- backup ----------------------------------------------------------------------------------

    async def backup(
        self,
        name: str,
        *,
        snapshot: str,
        target: str,
        backup_name: str = "",
        volume: str = "",
        envs: Mapping[str, str] | None = None,
        compression: str = "",
        concurrent_limit: int = 0,
        labels: Mapping[str, str] | None = None,
        parameters: Mapping[str, str] | None = None,
        backing_image_name: str = "",
        backing_image_checksum: str = "",
        storage_class_name: str = "",
    ) -> BackupStarted:
        """SnapshotBackup: checks everything the request can get wrong and
        that the target answers (with these credentials), then starts the
        backup and answers at once."""
        engine = self.engines.running(name)
        if not snapshot:
            raise InvalidArgument("must not be empty", field="snapshot_name")
        parse_target(target)
        backup_name = backup_name or generate_backup_name()
        check_name(backup_name, "backup_name")
        volume = volume or engine.record.spec.volume_name
        check_name(volume, "volume_name")
        compression = check_compression(compression)
        block_size = block_size_of(parameters)
        if concurrent_limit < 0:
            raise InvalidArgument(f"{concurrent_limit} is negative", field="concurrent_limit")
        if engine.record.size % block_size:
            raise InvalidArgument(
                f"the volume's {engine.record.size} bytes are not a multiple of the block size {block_size}",
                field="parameters",
            )
        running = self._backups.get((name, backup_name))
        if running is not None:
            raise AlreadyExists(f"backup {backup_name} of engine {name} is in progress", field="backup_name")
        replica, address = await self._source(engine, snapshot)
        driver: Driver | None = await open_driver(target, envs, self.options)
        assert driver is not None
        try:
            incremental = await self._incremental(driver, volume, snapshot, parameters)
            if engine.record.delete_requested or self.engines.engines.get(name) is not engine:
                raise FailedPrecondition(f"engine {name} is being deleted", field="engine_name")
            if (name, backup_name) in self._backups:
                raise AlreadyExists(f"backup {backup_name} of engine {name} is in progress", field="backup_name")
            record = BackupRecord(
                name=backup_name,
                snapshot=snapshot,
                volume=volume,
                target=target,
                replica=replica,
                replica_address=address,
                is_incremental=incremental,
                started=now_rfc3339(),
            )
            self._keep(engine, record)
            spec = BackupSpec(
                target=target,
                volume_name=volume,
                snapshot_name=snapshot,
                backup_name=backup_name,
                volume_size=engine.record.size,
                compression_method=compression,
                concurrent_limit=concurrent_limit,
                labels=dict(labels or {}),
                parameters=dict(parameters or {}),
                backing_image_name=backing_image_name,
                backing_image_checksum=backing_image_checksum,
                storage_class_name=storage_class_name,
                snapshot_created_at=await self._snapshot_time(engine, address, replica, snapshot),
            )
            work = _Work(engine, replica)
            self._backups[(name, backup_name)] = work
            work.task = asyncio.create_task(
                self._run_backup(work, record, spec, dict(envs or {}), driver), name=f"backup-{name}-{backup_name}"
            )
            work.task.add_done_callback(self._never_ran(work, driver, record))
            driver = None  # the task owns it now
        finally:
            if driver is not None:
                await driver.close()
        self._changed()
        log.info(
            "backup started",
            extra=fields(name=name, backup=backup_name, snapshot=snapshot, replica=replica, incremental=incremental),
        )
        return BackupStarted(backup_name, address, incremental)

    def _keep(self, engine: Engine, record: BackupRecord) -> None:
        backups = engine.record.backups
        backups.pop(record.name, None)
        backups[record.name] = record
        finished = [n for n, b in backups.items() if b.state != IN_PROGRESS]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del backups[old]

    async def _source(self, engine: Engine, snapshot: str) -> tuple[str, str]:
        """The RW replica to read ``snapshot`` from: this node's if one has
        it, else the first by name; NOT_FOUND if none has it."""
        nodes = self._nodes()
        rw = sorted(n for n, mode in engine.record.modes.items() if mode == ReplicaMode.RW)
        if not rw:
            raise FailedPrecondition(f"engine {engine.name} has no RW replica", field="engine_name")
        addresses = {r: engine.record.spec.replicas[r][0] for r in rw}
        outcomes = await asyncio.gather(*(nodes.snapshot_chain(addresses[r], r) for r in rw), return_exceptions=True)
        having, errors = [], []
        for replica, outcome in zip(rw, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                errors.append(f"{replica}: {outcome}")
            elif snapshot in {s.name for s in outcome.snapshots}:
                having.append(replica)
        if not having:
            if errors and len(errors) == len(rw):
                raise Unavailable(f"engine {engine.name}: no replica's chain could be read ({'; '.join(errors)})")
            raise NotFound(f"engine {engine.name} has no snapshot {snapshot}", field="snapshot_name")
        local = self._host(engine.record.address)
        having.sort(key=lambda r: (self._host(addresses[r]) != local, r))
        return having[0], addresses[having[0]]

    async def _snapshot_time(self, engine: Engine, address: str, replica: str, snapshot: str) -> str:
        chain = await self._nodes().snapshot_chain(address, replica)
        found = next((s for s in chain.snapshots if s.name == snapshot), None)
        return found.created if found is not None and found.created else now_rfc3339()

    async def _incremental(
        self, driver: Driver, volume: str, snapshot: str, parameters: Mapping[str, str] | None
    ) -> bool:
        """Whether the backup will build on the volume's last one (as the
        backupstore decides it, under the lock)."""
        if is_full_mode(parameters):
            return False
        try:
            config = await load_volume(driver, volume)
        except NotFound:
            return False
        if not config.last_backup_name:
            return False
        try:
            last = await load_backup(driver, volume, config.last_backup_name)
        except ImdError:
            return False
        return (
            not last.in_progress
            and last.snapshot_name != snapshot
            and block_size_of(last.parameters) == block_size_of(parameters)
        )

    async def _run_backup(
        self, work: _Work, record: BackupRecord, spec: BackupSpec, envs: dict[str, str], driver: Driver
    ) -> None:
        engine = work.engine
        data = self.engines.require()
        nodes = self._nodes()
        owner = f"{engine.uuid}-backup"
        attach_name = f"{engine.uuid}-backup-{record.name}"
        exposed = attached = False

        def on_progress(p: Progress) -> None:
            record.progress = p.percent

        try:
            export = await nodes.snapshot_expose(record.replica_address, record.replica, record.snapshot)
            exposed = True
            host = self._host(record.replica_address)
            await data.initiator.attach(
                attach_name, [export_path(export, host)], host_nqn_of(engine.uuid), data.opts, owner=owner
            )
            attached = True
            source = SnapshotSource(
                self._blocks(),
                data.initiator.handle(attach_name),
                min(export.size, spec.volume_size) if export.size else spec.volume_size,
                RateLimit(self.rate_bytes_per_s),
            )
            result = await create_backup(spec, source, envs=envs, progress=on_progress, driver=driver)
            record.state, record.progress, record.url = COMPLETE, 100, result.url
            record.is_incremental = result.is_incremental
            log.info(
                "backup complete",
                extra=fields(
                    name=engine.name,
                    backup=record.name,
                    blocks=result.blocks,
                    uploaded=result.blocks_uploaded,
                    incremental=result.is_incremental,
                ),
            )
        except asyncio.CancelledError:
            _uncancel()
            record.state = ERROR
            record.error = f"preempted: {work.why or 'cancelled'}"
            log.warning("backup preempted", extra=fields(name=engine.name, backup=record.name, why=work.why))
        except (ImdError, NvmeError) as exc:
            error = exc if isinstance(exc, ImdError) else datapath_error("backup", exc)
            record.state, record.error = ERROR, str(error)
            log.warning("backup failed", extra=fields(name=engine.name, backup=record.name, error=str(error)))
        except Exception as exc:  # a bug must not take the daemon down; the status says it
            record.state, record.error = ERROR, f"{type(exc).__name__}: {exc}"
            log.exception("backup failed", extra=fields(name=engine.name, backup=record.name))
        finally:
            record.finished = now_rfc3339()
            await _cleanup(
                lambda: data.initiator.detach(attach_name, owner=owner) if attached else None,
                lambda: (
                    nodes.snapshot_unexpose(record.replica_address, record.replica, record.snapshot)
                    if exposed
                    else None
                ),
                driver.close,
            )
            if self._backups.get((engine.name, record.name)) is work:
                del self._backups[(engine.name, record.name)]
            self._changed()

    def _never_ran(
        self, work: _Work, driver: Driver, record: BackupRecord | None, state: RestoreRecord | None = None
    ) -> Callable[[asyncio.Task[None]], None]:
        """A task cancelled before its first step runs none of its code (its
        clean-up included): do that part here."""

        def ended(task: asyncio.Task[None]) -> None:
            if not task.cancelled():
                return
            why = f"preempted: {work.why or 'cancelled'}"
            if record is not None:
                record.state, record.error, record.finished = ERROR, why, now_rfc3339()
                self._backups.pop((work.engine.name, record.name), None)
            if state is not None:
                state.is_restoring = False
                self._restore_failed(state, why)
                if self._restores.get(work.engine.name) is work:
                    del self._restores[work.engine.name]
            closing = asyncio.ensure_future(_cleanup(driver.close))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            self._changed()

        return ended

    def backup_status(self, name: str, backup_name: str, replica_address: str = "") -> BackupRecord:
        """SnapshotBackupStatus."""
        engine = self.engines.get(name, "engine_name")
        if not backup_name:
            raise InvalidArgument("must not be empty", field="backup_name")
        record = engine.record.backups.get(backup_name)
        if record is None:
            raise NotFound(f"engine {name} has no backup {backup_name}", field="backup_name")
        asked = replica_address.removeprefix("tcp://")
        if asked and asked != record.replica_address:
            raise NotFound(
                f"backup {backup_name} of engine {name} reads from {record.replica_address}, not {asked}",
                field="replica_address",
            )
        return record

    def backups(self, name: str) -> list[BackupRecord]:
        return list(self.engines.get(name, "engine_name").record.backups.values())

    # -- restore ---------------------------------------------------------------------------------

    async def restore(
        self, name: str, url: str, *, envs: Mapping[str, str] | None = None, concurrent_limit: int = 0
    ) -> None:
        """BackupRestore: checks, then starts the restore and answers at
        once. Restoring the backup the volume holds already does nothing."""
        engine = self.engines.running(name)
        ref = parse_backup_url(url, field="url")
        if concurrent_limit < 0:
            raise InvalidArgument(f"{concurrent_limit} is negative", field="concurrent_limit")
        if engine.record.spec.frontend:
            raise FailedPrecondition(
                f"engine {name} has frontend {engine.record.spec.frontend}: restore onto an engine without one "
                "(a host writing meanwhile would leave the volume neither the backup nor its own)",
                field="frontend",
            )
        record = engine.record
        wo = sorted(n for n, mode in record.modes.items() if mode == ReplicaMode.WO)
        if wo:
            raise FailedPrecondition(f"engine {name}: replicas {', '.join(wo)} are rebuilding", field="engine_name")
        running = self._restores.get(name)
        if running is not None:
            if record.restore is not None and record.restore.backup_url == url:
                return  # the same restore, asked again
            raise Conflict(f"engine {name} is restoring {record.restore.backup if record.restore else '?'}")
        previous = record.restore
        if previous is not None and previous.state == COMPLETE and previous.backup_url == url:
            return  # restored already
        blocks = self._blocks()
        driver: Driver | None = await open_driver(ref.target, envs, self.options)
        assert driver is not None
        try:
            try:
                backup = await load_backup(driver, ref.volume, ref.backup)
                volume = await load_volume(driver, ref.volume)
            except NotFound as exc:
                raise NotFound(str(exc).split(": ", 1)[-1], field="url") from None
            if volume.size != record.size:
                raise FailedPrecondition(
                    f"backup volume {ref.volume} has {volume.size} bytes, the engine's volume {record.size}",
                    field="url",
                )
            last = ""
            if previous is not None and previous.last_restored:
                last_ref = parse_backup_url(previous.backup_url, field="url")
                if last_ref.volume == ref.volume and last_ref.target == ref.target:
                    last = previous.last_restored
            if self._restores.get(name) is not None or engine.record.delete_requested:
                raise Conflict(f"engine {name} changed meanwhile; retry", field="engine_name")
            state = RestoreRecord(
                backup_url=url,
                backup=ref.backup,
                last_restored=last,
                state=IN_PROGRESS,
                is_restoring=True,
                snapshot=previous.snapshot if previous is not None else "",
                replica_errors={
                    r: f"not restored: the replica is {mode.value}"
                    for r, mode in record.modes.items()
                    if mode != ReplicaMode.RW
                },
                started=now_rfc3339(),
            )
            record.restore = state
            work = _Work(engine, "")
            self._restores[name] = work
            work.task = asyncio.create_task(
                self._run_restore(
                    work, state, blocks, dict(envs or {}), concurrent_limit, driver, backup.snapshot_name
                ),
                name=f"restore-{name}",
            )
            work.task.add_done_callback(self._never_ran(work, driver, None, state))
            driver = None
        finally:
            if driver is not None:
                await driver.close()
        self._changed()
        log.info("restore started", extra=fields(name=name, backup=ref.backup, incremental_from=last))

    async def _run_restore(
        self,
        work: _Work,
        state: RestoreRecord,
        blocks: BlockIo,
        envs: dict[str, str],
        concurrent_limit: int,
        driver: Driver,
        backup_snapshot: str,
    ) -> None:
        engine = work.engine
        rw_before = {r for r, mode in engine.record.modes.items() if mode == ReplicaMode.RW}

        def on_progress(p: Progress) -> None:
            state.progress = min(p.percent, 99)  # 100 once the snapshot is taken too

        try:
            sink = MirrorSink(blocks, engine)
            kwargs: dict[str, Any] = {
                "envs": envs,
                "progress": on_progress,
                "driver": driver,
                "options": self.options,
            }
            if concurrent_limit:
                kwargs["concurrent_limit"] = concurrent_limit
            try:
                result = await restore_backup(state.backup_url, sink, last_backup=state.last_restored, **kwargs)
            except NotFound as exc:
                if exc.field != "last_backup":
                    raise
                # The backup the volume holds is gone from the target: restore in full.
                state.last_restored = ""
                result = await restore_backup(state.backup_url, sink, **kwargs)
            state.last_restored = state.backup
            await self._restore_snapshot(engine, state, backup_snapshot)
            state.state, state.progress = COMPLETE, 100
            log.info(
                "restore complete",
                extra=fields(
                    name=engine.name,
                    backup=state.backup,
                    written=result.blocks_written,
                    incremental=result.is_incremental,
                ),
            )
        except asyncio.CancelledError:
            _uncancel()
            self._restore_failed(state, f"preempted: {work.why or 'cancelled'}")
            log.warning("restore preempted", extra=fields(name=engine.name, backup=state.backup, why=work.why))
        except (ImdError, NvmeError) as exc:
            error = exc if isinstance(exc, ImdError) else datapath_error("restore", exc)
            self._restore_failed(state, str(error))
            log.warning("restore failed", extra=fields(name=engine.name, backup=state.backup, error=str(error)))
        except Exception as exc:  # a bug must not take the daemon down; the status says it
            self._restore_failed(state, f"{type(exc).__name__}: {exc}")
            log.exception("restore failed", extra=fields(name=engine.name, backup=state.backup))
        finally:
            state.is_restoring = False
            for replica in sorted(rw_before):
                if engine.record.modes.get(replica) != ReplicaMode.RW and replica not in state.replica_errors:
                    why = engine.errors.get(replica, "it left the mirror")
                    state.replica_errors[replica] = f"failed during the restore: {why}"
            await _cleanup(driver.close)
            if self._restores.get(engine.name) is work:
                del self._restores[engine.name]
            self._changed()

    @staticmethod
    def _restore_failed(state: RestoreRecord, error: str) -> None:
        state.state, state.error = ERROR, error
        # A full restore cut short leaves a volume that is no backup; an
        # incremental one only blocks that differ between the two backups,
        # which the next incremental restore rewrites: it may build on it.
        if state.last_restored == state.backup:
            state.last_restored = ""

    async def _restore_snapshot(self, engine: Engine, state: RestoreRecord, backup_snapshot: str) -> None:
        """``restore-<snapshot>`` of the restored volume (Longhorn's V2
        engine takes one); the previous restore snapshot goes. A failure
        here is logged: the volume holds the backup either way."""
        snapshots = self.snapshots
        try:
            listing = await snapshots.entries(engine.name)
            previous = state.snapshot
            if previous and previous in listing:
                await snapshots.remove(engine.name, [previous])
                listing.pop(previous, None)
            name = RESTORE_SNAPSHOT_PREFIX + (backup_snapshot or state.backup)
            if name in listing:
                name = f"{name}-{now_rfc3339().replace(':', '').lower()}"
            state.snapshot = await snapshots.create(engine.name, name, {})
        except ImdError as exc:
            log.warning("restore snapshot not taken", extra=fields(name=engine.name, error=str(exc)))

    def restore_status(self, name: str) -> dict[str, tuple[str, RestoreRecord]]:
        """BackupRestoreStatus: per replica (name -> (address, status)); the
        status shows a replica's own error where it has one."""
        engine = self.engines.get(name, "engine_name")
        state = engine.record.restore or RestoreRecord()
        out: dict[str, tuple[str, RestoreRecord]] = {}
        for replica, addresses in sorted(engine.record.spec.replicas.items()):
            own = state.replica_errors.get(replica, "")
            view = state
            if own:
                view = RestoreRecord(
                    backup_url=state.backup_url,
                    backup=state.backup,
                    last_restored=state.last_restored,
                    state=ERROR if state.state else "",
                    is_restoring=False,
                    progress=state.progress,
                    error=own,
                )
            out[replica] = (addresses[0], view)
        return out

    def restore_finish(self, name: str) -> None:
        """BackupRestoreFinish: the restore is over (the replicas hold what
        the mirror wrote; nothing is left to do), or FAILED_PRECONDITION."""
        engine = self.engines.get(name, "engine_name")
        state = engine.record.restore
        if name in self._restores or (state is not None and state.is_restoring):
            raise FailedPrecondition(f"engine {name} is still restoring {state.backup if state else ''}")
        if state is not None and state.state == ERROR:
            raise FailedPrecondition(f"engine {name}'s restore of {state.backup} failed: {state.error}")

    # -- preemption, restart, shutdown -----------------------------------------------------------

    def preempt(self, engine: Engine, why: str, replica: str = "") -> None:
        """Stop the engine's backups (those reading from ``replica``, if
        given) and, for the whole engine, its restore. Returns at once."""
        for (name, _), work in list(self._backups.items()):
            if name == engine.name and (not replica or work.replica == replica):
                self._stop(work, why)
        restoring = self._restores.get(engine.name)
        if restoring is not None and not replica:
            self._stop(restoring, why)

    @staticmethod
    def _stop(work: _Work, why: str) -> None:
        """Cancel once: a second cancel would cut the clean-up short."""
        if work.task is not None and not work.task.done() and not work.why:
            work.why = why
            work.task.cancel()

    def recover(self) -> int:
        """After a restart: what was running reads ``error: interrupted by
        restart``. Returns how many."""
        count = 0
        for engine in self.engines.engines.values():
            for record in engine.record.backups.values():
                if record.state == IN_PROGRESS:
                    record.state, record.error = ERROR, INTERRUPTED
                    count += 1
            state = engine.record.restore
            if state is not None and (state.is_restoring or state.state == IN_PROGRESS):
                state.is_restoring = False
                self._restore_failed(state, INTERRUPTED)
                count += 1
        if count:
            self._changed()
        return count

    def forget(self, name: str) -> None:
        """The engine is gone: anything of it still running stops."""
        for (engine, _), work in list(self._backups.items()):
            if engine == name:
                self._stop(work, "the engine was deleted")
        restoring = self._restores.get(name)
        if restoring is not None:
            self._stop(restoring, "the engine was deleted")

    async def close(self, why: str = "imd shut down") -> None:
        """Daemon shutdown: stop everything, wait for the clean-up (each
        stops within one block; detaches and unexposes are bounded)."""
        works = [*self._backups.values(), *self._restores.values()]
        for work in works:
            self._stop(work, why)
        tasks = [w.task for w in works if w.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _cleanup(*steps: Callable[[], Any]) -> None:
    """Each step, whatever the others did; each bounded, none raising (a
    node that does not answer must not keep a stopped backup around)."""
    for step in steps:
        try:
            async with asyncio.timeout(10):
                outcome = step()
                if outcome is not None:
                    await outcome
        except Exception as exc:  # logged; the clean-up goes on
            log.warning("backup clean-up step failed", extra=fields(error=str(exc) or type(exc).__name__))


def _uncancel() -> None:
    """The task took its cancel as a preemption and goes on to clean up:
    not cancelling any more (so the clean-up's own timeouts work)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


__all__ = [
    "BackupStarted",
    "Backups",
    "MirrorSink",
    "RateLimit",
    "SnapshotSource",
    "parse_envs",
]
