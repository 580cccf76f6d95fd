"""V2 disks: an AIO bdev over a file or block device, with one lvstore.

Longhorn's rules, kept: the bdev and the lvstore are both named after the
disk; an lvstore already on the device is loaded (and renamed to the disk's
name if it was created under another); a ``disk_uuid`` in the request names
the lvstore the caller expects, and a device without it is NOT_FOUND rather
than silently re-initialised (that would turn a wrong path into data loss).
Cluster size is 1 MiB, as Longhorn's.

Deleting a disk removes its bdev; the lvstore and every lvol stay on the
device, so a later DiskCreate of the same path loads them again. A disk
that still carries live replica instances is not deleted
(FAILED_PRECONDITION naming them): pulling it from under them would fail
their I/O with no way back.

``Disks`` is the one owner of the disk records. A create in progress is
visible to a concurrent create of the same name (which waits for it and
then sees the result) and to a delete (which waits for it too); no lock is
held across an await.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from imd.edges.spdk_target import Lvstore, SpdkTargetClient, TargetRpcError, TargetUnreachable
from imd.errors import AlreadyExists, FailedPrecondition, ImdError, NotFound, Unavailable
from imd.eventlog import fields
from imd.v2.bases import is_image_lvol
from imd.v2.model import DiskRecord, DiskView, ReplicaLvol
from imd.v2.target import TargetKeeper

log = logging.getLogger("imd.v2.disks")

CLUSTER_SIZE = 1 << 20


def target_failure(what: str, exc: Exception) -> Unavailable:
    """A call the target refused or could not answer, as the daemon's error:
    UNAVAILABLE with SPDK's own message (the caller's input was valid)."""
    return Unavailable(f"{what}: {exc}")


class Disks:
    def __init__(
        self, target: TargetKeeper, changed: Callable[[], None], durable: Callable[[], Awaitable[None]]
    ) -> None:
        self.target = target
        self._changed = changed
        self._durable = durable
        self.records: dict[str, DiskRecord] = {}
        self._busy: dict[str, asyncio.Task[DiskRecord | None]] = {}

    # -- queries --------------------------------------------------------------

    def record(self, name: str, field: str = "disk_name") -> DiskRecord:
        found = self.records.get(name)
        if found is None:
            raise NotFound(f"cannot find disk {name}", field=field)
        return found

    def by_uuid(self, uuid: str) -> DiskRecord | None:
        return next((d for d in self.records.values() if d.uuid == uuid), None)

    async def view(self, name: str) -> DiskView:
        client = self.target.require()
        record = self.record(name)
        lvs = await self._lvstore(client, record.name)
        if lvs is None:
            raise Unavailable(f"disk {name}: lvstore {record.name} is not loaded on the SPDK target")
        return _view(record, lvs)

    async def lvols(self, name: str) -> list[ReplicaLvol]:
        record = self.record(name)
        client = self.target.require()
        try:
            lvols = await client.lvols(record.name)
            result = []
            for lvol in lvols:
                if lvol.is_snapshot or is_image_lvol(lvol.name):
                    continue  # snapshots, and backing images' lvols (imd.v2.bases), are no replicas
                bdev = await client.bdev(lvol.alias)
                size = bdev.num_blocks * bdev.block_size if bdev else 0
                result.append(
                    ReplicaLvol(
                        name=lvol.name,
                        uuid=lvol.uuid,
                        disk_name=record.name,
                        disk_uuid=record.uuid,
                        spec_size=size,
                        # SPDK v24.01 does not report allocated clusters per lvol.
                        actual_size=0,
                    )
                )
            return result
        except (TargetRpcError, TargetUnreachable) as exc:
            raise target_failure(f"cannot list the lvols of disk {name}", exc) from exc

    # -- create ---------------------------------------------------------------

    async def create(self, name: str, uuid: str, path: str, block_size: int) -> DiskView:
        while (busy := self._busy.get(name)) is not None:
            await asyncio.wait({busy})  # its outcome is its caller's; we look again
        existing = self.records.get(name)
        if existing is not None:
            if existing.path != path:
                raise AlreadyExists(f"disk {name} exists with path {existing.path}", field="disk_name")
            if uuid and uuid != existing.uuid:
                raise AlreadyExists(f"disk {name} exists with UUID {existing.uuid}", field="disk_uuid")
            return await self.view(name)
        other = next((d for d in self.records.values() if d.path == path), None)
        if other is not None:
            raise AlreadyExists(f"path {path} is already disk {other.name}", field="disk_path")
        client = self.target.require()
        task = asyncio.ensure_future(self._create(client, name, uuid, path, block_size))
        self._busy[name] = task
        try:
            record = await asyncio.shield(task)
        finally:
            if self._busy.get(name) is task:
                del self._busy[name]
        assert record is not None
        return await self.view(name)

    async def _create(
        self, client: SpdkTargetClient, name: str, uuid: str, path: str, block_size: int
    ) -> DiskRecord | None:
        made_bdev = False
        try:
            existing = await client.bdev(name)
            if existing is None:
                await client.aio_create(name, path, block_size)
                made_bdev = True
            await client.wait_for_examine()
            lvs = await self._load_or_make_lvstore(client, name, uuid)
        except BaseException as exc:
            if made_bdev:
                await _undo(client.aio_delete(name), f"delete bdev {name}")
            if isinstance(exc, (TargetRpcError, TargetUnreachable)):
                raise target_failure(f"cannot create disk {name} on {path}", exc) from exc
            raise
        record = DiskRecord(
            name=name, uuid=lvs.uuid, path=path, block_size=lvs.block_size, cluster_size=lvs.cluster_size
        )
        self.records[name] = record
        self._changed()
        try:
            await self._durable()
        except ImdError:
            # Not acknowledged, so not made: the bdev goes (the lvstore, new
            # or loaded, stays on the device, where a retry finds it).
            del self.records[name]
            self._changed()
            await _undo(client.aio_delete(name), f"delete bdev {name}")
            raise
        log.info("disk ready", extra=fields(disk=name, uuid=lvs.uuid, path=path, loaded=bool(uuid)))
        return record

    async def _load_or_make_lvstore(self, client: SpdkTargetClient, name: str, uuid: str) -> Lvstore:
        for lvs in await client.lvstores():
            if lvs.base_bdev != name or (uuid and lvs.uuid != uuid):
                continue
            if lvs.name != name:
                log.info("renaming loaded lvstore", extra=fields(disk=name, old=lvs.name))
                await client.lvstore_rename(lvs.name, name)
            found = await self._lvstore(client, name)
            assert found is not None
            return found
        if uuid:
            raise NotFound(f"no lvstore with UUID {uuid} on the device", field="disk_uuid")
        await client.lvstore_create(name, name, CLUSTER_SIZE)
        made = await self._lvstore(client, name)
        if made is None:
            raise Unavailable(f"lvstore {name} was created but is not listed")
        return made

    @staticmethod
    async def _lvstore(client: SpdkTargetClient, name: str) -> Lvstore | None:
        try:
            return next((lvs for lvs in await client.lvstores() if lvs.name == name), None)
        except (TargetRpcError, TargetUnreachable) as exc:
            raise target_failure(f"cannot read lvstore {name}", exc) from exc

    # -- delete ----------------------------------------------------------------

    async def delete(self, name: str, uuid: str, users: list[str]) -> None:
        """Remove the disk's bdev (its data stays on the device). ``users``
        are the live replica instances on it; any makes this refuse."""
        while (busy := self._busy.get(name)) is not None:
            await asyncio.wait({busy})
        record = self.record(name)
        if uuid and uuid != record.uuid:
            raise NotFound(f"cannot find disk {name} with UUID {uuid}", field="disk_uuid")
        if users:
            raise FailedPrecondition(
                f"disk {name} still carries replica instances {', '.join(sorted(users))}", field="disk_name"
            )
        client = self.target.require()
        # Forgotten on disk first: if that cannot be written nothing was done;
        # if the bdev then cannot be removed, the record comes back.
        del self.records[name]
        self._changed()
        try:
            await self._durable()
        except ImdError:
            self.records[name] = record
            self._changed()
            raise
        try:
            await client.aio_delete(name)
        except (TargetRpcError, TargetUnreachable) as exc:
            if not (isinstance(exc, TargetRpcError) and exc.not_found):
                self.records[name] = record
                self._changed()
                raise target_failure(f"cannot delete disk {name}", exc) from exc
        log.info("disk deleted", extra=fields(disk=name, uuid=record.uuid))

    async def delete_lvol(self, name: str, uuid: str, lvol: str, users: list[str]) -> None:
        """DiskReplicaInstanceDelete: remove an lvol that no live replica uses."""
        record = self.record(name)
        if uuid and uuid != record.uuid:
            raise NotFound(f"cannot find disk {name} with UUID {uuid}", field="disk_uuid")
        if lvol in users:
            raise FailedPrecondition(f"replica {lvol} is a live instance; delete the instance", field="replica")
        if is_image_lvol(lvol):
            raise FailedPrecondition(
                f"lvol {lvol} belongs to a backing image; delete it with SPDKBackingImageDelete",
                field="replcia_instance_name",
            )
        client = self.target.require()
        try:
            await client.lvol_delete(f"{record.name}/{lvol}")
        except TargetRpcError as exc:
            if exc.not_found:
                raise NotFound(f"no lvol {lvol} on disk {name}", field="replcia_instance_name") from exc
            raise target_failure(f"cannot delete lvol {lvol}", exc) from exc
        except TargetUnreachable as exc:
            raise target_failure(f"cannot delete lvol {lvol}", exc) from exc
        log.info("lvol deleted", extra=fields(disk=name, lvol=lvol))

    # -- after the target (re)started --------------------------------------------------

    async def load_all(self) -> None:
        """Bring every known disk onto the target: its bdev and lvstore (an
        adopted target still has them; a fresh one loads them from the
        devices). A disk that cannot be loaded is logged and kept: its
        replicas fail visibly, and a DiskCreate retries it."""
        client = self.target.require()
        for record in list(self.records.values()):
            try:
                if await client.bdev(record.name) is None:
                    await client.aio_create(record.name, record.path, record.block_size)
                await client.wait_for_examine()
                lvs = await self._lvstore(client, record.name)
                if lvs is None or lvs.uuid != record.uuid:
                    log.error("disk's lvstore not found on reload", extra=fields(disk=record.name, uuid=record.uuid))
            except (TargetRpcError, TargetUnreachable, Unavailable) as exc:
                log.error("cannot load disk", extra=fields(disk=record.name, error=str(exc)))


async def _undo(step: Awaitable[None], what: str) -> None:
    try:
        await step
    except (TargetRpcError, TargetUnreachable) as exc:
        log.warning("undo failed", extra=fields(step=what, error=str(exc)))


def _view(record: DiskRecord, lvs: Lvstore) -> DiskView:
    return DiskView(
        record=record,
        total_size=lvs.total_data_clusters * lvs.cluster_size,
        free_size=lvs.free_clusters * lvs.cluster_size,
    )
