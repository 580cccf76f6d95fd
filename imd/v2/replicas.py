"""V2 replicas: a thin lvol on a disk, exported over NVMe-oF/TCP.

A replica named R on disk D is the lvol ``D/R``, exported as the subsystem
``nqn_of(R)`` with one namespace (NGUID ``nguid_of(R)``) and one TCP
listener on ``address:port``, the port taken from the daemon's range.

Nothing is left half-made, across a crash too. A create first records its
intent (state starting, the port, and whether the lvol already existed)
durably, then makes the lvol and the export, then records the replica as
running and answers. A failure undoes what this create made (never an lvol
it reused). A daemon that restarts and finds a replica still "starting"
knows the create was never acknowledged, and undoes it the same way;
exports under our NQN prefix that no replica claims are removed. A delete
is recorded (state stopping) before the export goes, so a crash part-way
is finished by the next daemon.

Delete keeps the lvol unless ``cleanup_required``; a later create of the
same name on the same disk reuses it, data and all (Longhorn's rule).

A replica with a backing image (``ReplicaSpec.backing_image``) is made as
a clone of the image's snapshot on the same disk (``bdev_lvol_clone``,
then grown to the replica's size): it reads the image wherever it has not
written. The image must be there and ready (FAILED_PRECONDITION naming it
otherwise); the create holds a lease on it (imd.v2.bases) until the clone
exists, so that a delete of the image cannot come in between.

``Replicas`` is the one owner of the replica records; all mutation happens
on the event loop, and long steps (target calls) never hold a lock: a
create in progress is a record in state starting, which a concurrent create
of the name sees (ALREADY_EXISTS) and a delete cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable

import msgspec

from imd.edges.spdk_target import SpdkTargetClient, TargetRpcError, TargetUnreachable
from imd.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImdError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from imd.eventlog import fields
from imd.supervisor.model import PortBlock, ProcessState
from imd.supervisor.ports import PortAllocator
from imd.v2.bases import BaseLease, Bases
from imd.v2.disks import Disks, target_failure
from imd.v2.hub import Hub
from imd.v2.model import REPLICA, ReplicaRecord, ReplicaSpec, V2InstanceView, nguid_of, nqn_of
from imd.v2.target import TargetKeeper

log = logging.getLogger("imd.v2.replicas")

MIB = 1 << 20
SERIAL = "IMD0000000000001"
MODEL = "imd replica"


def lvol_mib(size: int) -> int:
    return (size + MIB - 1) // MIB


class Replicas:
    def __init__(self, target: TargetKeeper, disks: Disks, ports: PortAllocator, hub: Hub, address: str) -> None:
        self.target = target
        self.disks = disks
        self.ports = ports
        self.hub = hub
        self.address = address
        self.records: dict[str, ReplicaRecord] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # What else goes with a replica (its snapshots: imd.v2.chains), told
        # before its lvol goes; ``delete_lvols`` with a cleanup.
        self.on_deleted: Callable[..., Awaitable[None]] | None = None
        # The backing images' owner (imd.v2.backing_images), set by the node.
        self.bases: Bases | None = None

    # -- queries --------------------------------------------------------------------

    def view(self, record: ReplicaRecord, *, deleted: bool = False) -> V2InstanceView:
        disk = self.disks.records.get(record.spec.disk_name)
        return V2InstanceView(
            name=record.name,
            uuid=record.uuid,
            type=REPLICA,
            volume_name=record.spec.volume_name,
            state=record.state,
            error_msg=record.error_msg,
            port_start=record.port,
            port_end=record.port,
            deleted=deleted,
            size=record.spec.size,
            disk_name=record.spec.disk_name,
            disk_uuid=disk.uuid if disk else record.disk_uuid,
        )

    def get(self, name: str) -> ReplicaRecord:
        record = self.records.get(name)
        if record is None:
            raise NotFound(f"cannot find replica {name}", field="name")
        return record

    def live_on(self, disk_name: str) -> list[str]:
        return [r.name for r in self.records.values() if r.spec.disk_name == disk_name]

    # -- create -----------------------------------------------------------------------

    async def create(self, spec: ReplicaSpec, field_prefix: str) -> V2InstanceView:
        self._check_free(spec.name)
        disk = self.disks.record(spec.disk_name, f"{field_prefix}.disk_name")
        if spec.size % disk.block_size:
            raise InvalidArgument(
                f"{spec.size} is not a multiple of disk {disk.name}'s block size {disk.block_size}",
                field=f"{field_prefix}.size",
            )
        client = self.target.require()
        view = await self.disks.view(disk.name)
        if spec.size > view.total_size:
            raise ResourceExhausted(
                f"{spec.size} bytes do not fit on disk {disk.name} ({view.total_size} bytes in all)",
                field=f"{field_prefix}.size",
            )
        # The name is checked again and taken with no await in between: two
        # creates of one name both passed the first check while the disk was
        # looked at, and both built, each undoing the other's export.
        self._check_free(spec.name)
        lease = self._lease(spec, field_prefix)
        try:
            port = self.ports.allocate(1).start
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        record = ReplicaRecord(
            name=spec.name, uuid=str(uuidlib.uuid4()), spec=spec, disk_uuid=disk.uuid, address=self.address, port=port
        )
        self.records[spec.name] = record
        task = asyncio.ensure_future(self._build(client, record, lease))
        if lease is not None:
            # Also when the build is cancelled before it ran a step (its own
            # handlers never run then).
            task.add_done_callback(lambda _: lease.release())
        self._tasks[spec.name] = task
        try:
            # If the caller goes away, the build goes on (or fails and undoes
            # itself) on its own, and the instance's state shows it.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The build was cancelled, not this call: a delete preempted it
            # (or the daemon is stopping). The caller is owed an answer; a
            # CancelledError out of a handler would leave its RPC unanswered.
            if task.cancelled() and not _cancelling():
                why = "a delete" if record.delete_requested else "the daemon stopping"
                raise Unavailable(
                    f"create of replica {spec.name} was preempted by {why}; nothing was left", field="spec.name"
                ) from None
            raise
        finally:
            if self._tasks.get(spec.name) is task and task.done():
                del self._tasks[spec.name]
        return self.view(record)

    def _check_free(self, name: str) -> None:
        if name in self.records:
            raise AlreadyExists(f"instance {name} already exists", field="spec.name")

    def _lease(self, spec: ReplicaSpec, field_prefix: str) -> BaseLease | None:
        """Hold the replica's backing image, if it has one (no await: the
        check and the hold are one step)."""
        if not spec.backing_image:
            return None
        field = f"{field_prefix}.backing_image_name"
        if self.bases is None:
            raise FailedPrecondition(f"backing image {spec.backing_image}: this node keeps none", field=field)
        lease = self.bases.lease(spec.backing_image, spec.disk_name, field)
        if spec.size < lease.size:
            lease.release()
            raise InvalidArgument(
                f"{spec.size} is smaller than backing image {spec.backing_image} ({lease.size} bytes)",
                field=f"{field_prefix}.size",
            )
        if lvol_mib(spec.size) > lease.lvol_mib:
            lease.release()
            raise ResourceExhausted(
                f"{spec.size} bytes are more than a clone of backing image {spec.backing_image} can hold "
                f"on disk {spec.disk_name} ({lease.lvol_mib * MIB} bytes, the disk's size)",
                field=f"{field_prefix}.size",
            )
        return lease

    async def _build(self, client: SpdkTargetClient, record: ReplicaRecord, lease: BaseLease | None = None) -> None:
        alias = f"{record.spec.disk_name}/{record.name}"
        try:
            existing = await client.bdev(alias)
            record.lvol_created = existing is None
            self.hub.publish(self.view(record))
            await self.hub.durable()  # the intent, before anything exists on the target
            if existing is None and lease is not None:
                # A clone of the image (as large as the image's lvol), cut to
                # the replica's size (imd.v2.bases says why the lvol is large).
                image = f"{lease.disk_name}/{lease.lvol_name}"
                record.lvol_uuid = await client.lvol_clone(image, record.name)
                lease.release()  # the clone exists: the image has a child now, which a delete sees
                if lvol_mib(record.spec.size) != lease.lvol_mib:
                    await client.lvol_resize(alias, lvol_mib(record.spec.size))
            elif existing is None:
                record.lvol_uuid = await client.lvol_create(
                    record.spec.disk_name, record.name, lvol_mib(record.spec.size)
                )
            else:
                record.lvol_uuid = existing.uuid
                if existing.num_blocks * existing.block_size < record.spec.size:
                    await client.lvol_resize(alias, lvol_mib(record.spec.size))
            await self._export(client, record, alias)
            # Still inside: a delete that cancels the build here, or a state
            # write that fails, must undo the export like any earlier step.
            record.state = ProcessState.RUNNING
            self.hub.publish(self.view(record))
            await self.hub.durable()
        except BaseException as exc:
            if lease is not None:
                lease.release()
            log.warning(
                "replica create undone",
                extra=fields(name=record.name, uuid=record.uuid, why=repr(exc) if str(exc) else type(exc).__name__),
            )
            await self._undo(client, record)
            if isinstance(exc, TargetRpcError) and exc.errno == errno.ENOSPC:
                # Out of clusters: growing a reused thick lvol (a thin one
                # never runs out at create; its clusters come with writes).
                raise ResourceExhausted(
                    f"disk {record.spec.disk_name} has no room for {record.spec.size} bytes: {exc}",
                    field="spec.spdk_instance_spec.size",
                ) from exc
            if isinstance(exc, TargetRpcError) and exc.errno == errno.ENOMEM and exc.method == "bdev_lvol_create":
                # The lvstore's metadata pages are used up (one per lvol, as
                # many as the disk has clusters): no further lvol fits,
                # whatever its size.
                raise ResourceExhausted(
                    f"disk {record.spec.disk_name} has no room for another lvol: {exc}",
                    field="spec.spdk_instance_spec.disk_name",
                ) from exc
            if isinstance(exc, (TargetRpcError, TargetUnreachable)):
                raise target_failure(f"cannot create replica {record.name}", exc) from exc
            raise
        if lease is not None:
            lease.release()  # a reused lvol: nothing was cloned
        log.info("replica running", extra=fields(name=record.name, uuid=record.uuid, port=record.port))

    async def _export(self, client: SpdkTargetClient, record: ReplicaRecord, alias: str) -> None:
        nqn = nqn_of(record.name)
        await client.subsystem_create(nqn, serial=SERIAL, model=MODEL)
        await client.subsystem_add_ns(nqn, alias, nguid_of(record.name))
        await client.subsystem_add_listener(nqn, record.address, record.port)

    async def _undo(self, client: SpdkTargetClient, record: ReplicaRecord) -> None:
        """Remove what an unacknowledged create made, then the record."""
        await _quietly(client.subsystem_delete(nqn_of(record.name)), "remove export")
        if record.lvol_created:
            await _quietly(client.lvol_delete(f"{record.spec.disk_name}/{record.name}"), "delete lvol")
        self._forget(record)
        with contextlib.suppress(ImdError):
            await self.hub.durable()

    # -- expand ------------------------------------------------------------------------

    async def expand(self, name: str, size: int) -> int:
        """Make replica ``name``'s lvol hold at least ``size`` bytes (an engine
        is about to grow its volume over it); its size after. A replica that
        already holds as much (an engine retrying a failed expansion, or
        another engine that grew it first) is left as it is: lvols never
        shrink."""
        record = self.get(name)
        if record.state != ProcessState.RUNNING or record.delete_requested:
            raise FailedPrecondition(f"replica {name} is {record.state.value}", field="name")
        disk = self.disks.record(record.spec.disk_name)
        if size % disk.block_size:
            raise InvalidArgument(f"{size} is not a multiple of the block size {disk.block_size}", field="size")
        if size <= record.spec.size:
            return record.spec.size
        bases = self.bases if record.spec.backing_image else None
        limit = bases.clone_limit(record.spec.backing_image, disk.name) if bases is not None else 0
        if limit and size > limit:
            # SPDK v24.01 fails I/O to a clone beyond its image's lvol (imd.v2.bases).
            raise ResourceExhausted(
                f"replica {name} is a clone of backing image {record.spec.backing_image}, which it "
                f"cannot outgrow on this SPDK ({limit} bytes, its disk's size)",
                field="size",
            )
        client = self.target.require()
        # The rule a create follows: no more than the disk holds in all. The
        # lvol is thin, so the target itself would grow it past the disk
        # (its clusters come with writes, and run out then).
        view = await self.disks.view(disk.name)
        if size > view.total_size:
            raise ResourceExhausted(
                f"disk {disk.name} has no room to grow {name} to {size} bytes ({view.total_size} bytes in all)",
                field="size",
            )
        try:
            await client.lvol_resize(f"{record.spec.disk_name}/{name}", lvol_mib(size))
        except TargetRpcError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(f"disk {disk.name} has no room to grow {name}: {exc}", field="size") from exc
            raise target_failure(f"cannot grow replica {name}", exc) from exc
        except TargetUnreachable as exc:
            raise target_failure(f"cannot grow replica {name}", exc) from exc
        record.spec = msgspec.structs.replace(record.spec, size=size)
        self.hub.publish(self.view(record))
        await self.hub.durable()
        log.info("replica grown", extra=fields(name=name, size=size))
        return size

    # -- delete --------------------------------------------------------------------------

    async def delete(self, name: str, uuid: str, cleanup: bool) -> V2InstanceView:
        record = self.records.get(name)
        if record is None or (uuid and record.uuid != uuid):
            raise NotFound(
                f"cannot find replica {name} with UUID {uuid or '(any)'}", field="uuid" if record else "name"
            )
        if record.delete_requested:
            record.cleanup_requested |= cleanup
            return self.view(record, deleted=True)
        building = self._tasks.get(name)
        if building is not None and not building.done():
            record.delete_requested = True  # what the preempted create answers
            building.cancel()  # a create in progress undoes itself; nothing to delete after
            with contextlib.suppress(BaseException):
                await building
            return self.view(record, deleted=True)
        before = (record.state, record.cleanup_requested)
        record.delete_requested = True
        record.cleanup_requested = cleanup
        if not record.state.terminal:
            record.state = ProcessState.STOPPING
        self.hub.publish(self.view(record))
        try:
            # The intent reaches the disk before the export goes: a crash
            # after this point is finished by the next daemon.
            await self.hub.durable()
        except ImdError:
            record.delete_requested = False
            record.state, record.cleanup_requested = before
            self.hub.publish(self.view(record))
            raise
        self._tasks[name] = asyncio.ensure_future(self._teardown(record))
        return self.view(record, deleted=True)

    async def _teardown(self, record: ReplicaRecord) -> None:
        try:
            client = self.target.require()
            await _gone_ok(client.subsystem_delete(nqn_of(record.name)))
            if self.on_deleted is not None:
                await self.on_deleted(record, delete_lvols=record.cleanup_requested)
            if record.cleanup_requested:
                await _gone_ok(client.lvol_delete(f"{record.spec.disk_name}/{record.name}"))
        except (FailedPrecondition, TargetRpcError, TargetUnreachable) as exc:
            # The target is down or refused: finish when it is back.
            record.state = ProcessState.ERROR
            record.error_msg = f"delete not finished: {exc}"
            self.hub.publish(self.view(record))
            log.error("replica delete not finished", extra=fields(name=record.name, error=str(exc)))
            return
        finally:
            self._tasks.pop(record.name, None)
        self._forget(record, deleted=True)
        log.info("replica deleted", extra=fields(name=record.name, uuid=record.uuid, cleanup=record.cleanup_requested))

    def _forget(self, record: ReplicaRecord, *, deleted: bool = True) -> None:
        if self.records.get(record.name) is record:
            del self.records[record.name]
            self.ports.release(PortBlock(record.port, record.port))
            self.hub.publish(self.view(record, deleted=deleted))

    # -- the target came and went ----------------------------------------------------------

    def target_lost(self, reason: str) -> None:
        """Every replica the target served is gone with it: error, for good
        (states only move forward; the manager deletes and re-creates, and a
        re-create finds the lvol's data again)."""
        for record in self.records.values():
            if not record.state.terminal:
                record.state = ProcessState.ERROR
                record.error_msg = reason
                self.hub.publish(self.view(record))

    def adopt_unserved(self, records: list[ReplicaRecord], reason: str) -> None:
        """Daemon start without a usable target: keep every record (and its
        port), fail what was running, and mark unfinished creates for undoing
        once a target is back (``finish_deletes``)."""
        for record in records:
            try:
                self.ports.reserve(PortBlock(record.port, record.port))
            except ValueError:
                log.error("replica's port unavailable at recovery", extra=fields(name=record.name, port=record.port))
            if record.state == ProcessState.STARTING:
                record.delete_requested = True
                record.cleanup_requested = record.lvol_created
            if not record.state.terminal:
                record.state = ProcessState.ERROR
                record.error_msg = f"SPDK target not available: {reason}"
            self.records[record.name] = record

    async def finish_deletes(self) -> None:
        for record in list(self.records.values()):
            if record.delete_requested and record.name not in self._tasks:
                self._tasks[record.name] = asyncio.ensure_future(self._teardown(record))

    async def recover(self, records: list[ReplicaRecord], *, target_fresh: bool) -> dict[str, int]:
        """Rebuild the registry from disk (daemon start, target usable)."""
        report = {"kept": 0, "undone": 0, "lost": 0, "orphan_exports": 0}
        client = self.target.require()
        try:
            exported = {s.nqn for s in await client.subsystems()}
        except (TargetRpcError, TargetUnreachable) as exc:
            raise Unavailable(f"cannot list the target's exports: {exc}") from exc
        for record in records:
            try:
                self.ports.reserve(PortBlock(record.port, record.port))
            except ValueError:
                log.error("replica's port unavailable at recovery", extra=fields(name=record.name, port=record.port))
            self.records[record.name] = record
            if record.state == ProcessState.STARTING and not record.delete_requested:
                await self._undo(client, record)
                report["undone"] += 1
                continue
            if record.state == ProcessState.RUNNING and (target_fresh or nqn_of(record.name) not in exported):
                record.state = ProcessState.ERROR
                record.error_msg = "the SPDK target was restarted" if target_fresh else "export missing after restart"
                report["lost"] += 1
            report["kept"] += 1
        claimed = {nqn_of(name) for name in self.records}
        try:
            exported = {s.nqn for s in await client.subsystems()}  # after the undos above
        except (TargetRpcError, TargetUnreachable) as exc:
            raise Unavailable(f"cannot list the target's exports: {exc}") from exc
        for nqn in exported:
            if nqn.startswith(nqn_of("")) and nqn not in claimed:
                await _quietly(client.subsystem_delete(nqn), f"remove orphan export {nqn}")
                report["orphan_exports"] += 1
        await self.finish_deletes()
        self.hub.changed()
        return report

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task


async def _quietly(step: Awaitable[object], what: str) -> None:
    try:
        await step
    except (TargetRpcError, TargetUnreachable) as exc:
        if not (isinstance(exc, TargetRpcError) and exc.not_found):
            log.warning("cleanup step failed", extra=fields(step=what, error=str(exc)))


async def _gone_ok(step: Awaitable[object]) -> None:
    """A removal that finds the object already gone has done its job."""
    try:
        await step
    except TargetRpcError as exc:
        if not exc.not_found:
            raise


def _cancelling() -> bool:
    """Whether the running task itself was asked to stop (its caller went
    away), as opposed to a task it awaits having been cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
