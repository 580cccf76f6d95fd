"""Snapshot chains on this node's replicas: the replica side of V2 snapshots.

A replica's data is a chain of lvols in its disk's lvstore: read-only
snapshots, oldest first, and the head (the lvol named after the replica,
the one its subsystem exports) on top. SPDK keeps the chain itself: a
clone names its parent snapshot and a snapshot its clones
(``bdev_get_bdevs``), so every answer here reads it from the target and no
second copy can disagree with it. What SPDK v24.01 cannot keep with an lvol
(no xattrs) lives in ``SnapshotMeta`` records in this node's V2 state: the
snapshot's name as Longhorn knows it (the lvol itself is named
``snap-<hash>``, since lvol names stop at 63 characters and Longhorn's
snapshot names do not), ``user_created``, the creation time, labels, the
removed mark and the checksum.

Crash safety, one rule per operation:

* create writes the record (``creating``) before ``bdev_lvol_snapshot``, so
  a snapshot never exists without its name; a record whose lvol never came
  is dropped at restart.
* delete removes the lvol, then the record; a record whose lvol is gone is
  dropped at restart, and a snapshot lvol with no record is listed as a
  system snapshot (user_created false, named after its lvol).
* revert records its intent on the replica (``reverting_to``) before it
  swaps the head for a clone of the snapshot, and a restart finishes it.

Engines reach these through imd's replica service (base + 4, imd/api/
replica.py) on the replica's node, or directly on their own node.

``Chains`` is the one owner of the records; each operation on a replica's
chain runs alone (a second one at the same time is refused, ABORTED, to be
retried), reading the chain (``chain``) never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import hashlib
import logging
import re
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from imd.edges.blobstore_md import allocated_bytes
from imd.edges.spdk_target import LvolBdev, SpdkTargetClient, TargetRpcError, TargetUnreachable
from imd.errors import (
    AlreadyExists,
    Conflict,
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
from imd.v2.bases import Bases
from imd.v2.datapath import DataPath, ReplicaNodes, export_path
from imd.v2.disks import Disks, target_failure
from imd.v2.hub import Hub
from imd.v2.model import (
    VOLUME_HEAD,
    HashStatus,
    ReplicaChain,
    ReplicaRecord,
    SnapshotExport,
    SnapshotInfo,
    SnapshotMeta,
    nguid_of,
    nqn_of,
)
from imd.v2.replicas import MIB, Replicas
from imd.v2.target import TargetKeeper
from spdk_ffi import NvmeError
from spdk_ffi.mirror import RebuildState

log = logging.getLogger("imd.v2.chains")

SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
SERIAL = "IMD0000000000002"
MODEL = "imd snapshot"
HASH_CHUNK = 1 << 20

# Allocated bytes per lvol UUID on one disk; an lvol it does not know is
# reported -1 (unknown).
Allocation = Callable[[str], Awaitable[dict[str, int]]]


async def read_allocation(disk_path: str) -> dict[str, int]:
    """What each lvol's own clusters hold, read from the disk's device: SPDK
    v24.01 reports no allocation per lvol, its lvstore's metadata on the
    device has it (imd.edges.blobstore_md; a blocking read of a few pages,
    off the loop)."""
    return await asyncio.to_thread(allocated_bytes, disk_path)


def validate_snapshot_name(name: str, field: str = "name") -> None:
    """Longhorn's snapshot names (UUIDs, ``snap-<hex>``, Kubernetes object
    names): letters, digits, ``.``, ``_``, ``-``, at most 255; never
    ``volume-head``, the name SnapshotList gives the head."""
    if name == VOLUME_HEAD:
        raise InvalidArgument(f"{VOLUME_HEAD} is reserved for the volume's head", field=field)
    if not SNAPSHOT_NAME.match(name):
        raise InvalidArgument(
            f"snapshot name {name!r} must be 1-255 characters of [A-Za-z0-9._-], starting with a letter or digit",
            field=field,
        )


def lvol_name_of(replica: str, snapshot: str) -> str:
    """The snapshot's lvol: short (SPDK stops lvol names at 63 characters)
    and the same on every try, so a retried create finds the one it made."""
    return "snap-" + hashlib.sha1(f"{replica}\0{snapshot}".encode()).hexdigest()[:24]


REVERT_PREFIX = "rv-"


def revert_lvol_of(replica: str) -> str:
    """The clone a revert of ``replica`` makes beside its head."""
    return REVERT_PREFIX + hashlib.sha1(replica.encode()).hexdigest()[:24]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Tree:
    """The lvstore's lvols of one disk, by lvol name, with parent and
    children links (what bdev_get_bdevs says). A chain stops below a
    backing image (``base_of`` names one: imd.v2.bases): the image is the
    base of every replica cloned from it, not a snapshot of any, so it is
    nobody's parent here and its other clones are no replica's branches."""

    def __init__(self, lvols: list[LvolBdev], base_of: Callable[[str], str] = lambda _: "") -> None:
        self.lvols = {lvol.lvol_name: lvol for lvol in lvols}
        self._base_of = base_of

    def _raw_parent(self, name: str) -> str:
        lvol = self.lvols.get(name)
        return lvol.details.base_snapshot if lvol is not None and lvol.details.clone else ""

    def parent(self, name: str) -> str:
        parent = self._raw_parent(name)
        return "" if parent and self._base_of(parent) else parent

    def base(self, head: str) -> str:
        """The backing image under ``head``'s chain (its name), or ``""``."""
        root = head
        while self.parent(root):
            root = self.parent(root)
        below = self._raw_parent(root)
        return self._base_of(below) if below else ""

    def children(self, name: str) -> list[str]:
        lvol = self.lvols.get(name)
        return list(lvol.details.clones) if lvol is not None and lvol.details.snapshot else []

    def component(self, head: str) -> Iterator[str]:
        """Every snapshot lvol linked to ``head``: its ancestors, and what
        branches off them (a revert leaves the later snapshots there)."""
        root = head
        while self.parent(root):
            root = self.parent(root)
        stack, seen = [root], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in self.lvols:
                continue
            seen.add(name)
            if self.lvols[name].details.snapshot:
                yield name
            stack.extend(self.children(name))


class _Export:
    """A snapshot served for copies and hashes. Several may read it at once
    (a backup and a rebuild carrying the same snapshot): it goes when the
    last of them is done. ``ready`` resolves once the target serves it, so
    a second user never attaches to a half-made export."""

    def __init__(self, replica: str, lvol: str, port: int) -> None:
        self.replica, self.lvol, self.port = replica, lvol, port
        self.users = 1
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _Hash:
    def __init__(self, task: asyncio.Task[None], previous: str) -> None:
        self.task = task
        self.previous = previous
        self.status = HashStatus(state="in_progress")


class Chains:
    def __init__(
        self,
        target: TargetKeeper,
        disks: Disks,
        replicas: Replicas,
        ports: PortAllocator,
        hub: Hub,
        address: str,
        *,
        data: Callable[[], DataPath | None],
        allocation: Allocation = read_allocation,
        hash_rate_bytes_per_s: int = 0,
    ) -> None:
        self.target = target
        self.disks = disks
        self.replicas = replicas
        self.ports = ports
        self.hub = hub
        self.address = address
        self._data = data
        self._allocation = allocation
        self.hash_rate_bytes_per_s = hash_rate_bytes_per_s
        self.meta: dict[str, SnapshotMeta] = {}  # by disk/lvol name
        self._busy: dict[str, str] = {}  # replica -> the operation running on its chain
        self._exports: dict[str, _Export] = {}  # by NQN
        self._hashes: dict[str, _Hash] = {}  # by disk/lvol name
        # Where chains stop: the backing images' owner (imd.v2.backing_images), set by the node.
        self.bases: Bases | None = None

    # -- reading the chain ----------------------------------------------------------

    def _replica(self, name: str) -> ReplicaRecord:
        record = self.replicas.get(name)
        if record.delete_requested or record.state != ProcessState.RUNNING:
            raise FailedPrecondition(f"replica {name} is {record.state.value}", field="replica")
        return record

    async def _tree(self, client: SpdkTargetClient, disk: str) -> _Tree:
        try:
            lvols = await client.lvol_bdevs()
        except (TargetRpcError, TargetUnreachable) as exc:
            raise target_failure("cannot read the lvstore's snapshots", exc) from exc
        bases = self.bases
        base_of = (lambda lvol: bases.base_of(disk, lvol)) if bases is not None else (lambda _: "")
        return _Tree([lvol for lvol in lvols if lvol.lvs_name == disk], base_of)

    def _meta_of(self, disk: str, lvol: str) -> SnapshotMeta | None:
        meta = self.meta.get(f"{disk}/{lvol}")
        return meta if meta is not None and not meta.creating else None

    def _name_of(self, disk: str, lvol: str) -> str:
        meta = self._meta_of(disk, lvol)
        return meta.name if meta is not None else lvol

    async def chain(self, replica: str) -> ReplicaChain:
        """The replica's snapshots as its lvstore holds them, with their
        metadata (a snapshot lvol without any is a system snapshot named
        after its lvol)."""
        record = self._replica(replica)
        disk = record.spec.disk_name
        client = self.target.require()
        tree = await self._tree(client, disk)
        if replica not in tree.lvols:
            raise Unavailable(f"replica {replica}: its lvol {disk}/{replica} is not on the target", field="replica")
        path = self.disks.records[disk].path if disk in self.disks.records else ""
        sizes = await self._sizes(path)
        names = {lvol: self._name_of(disk, lvol) for lvol in tree.component(replica)}
        infos = []
        for lvol in self._ordered(tree, replica, list(names)):
            meta = self._meta_of(disk, lvol)
            children = [names.get(c, c) for c in tree.children(lvol) if c in names]
            if replica in tree.children(lvol):
                children.append(VOLUME_HEAD)
            uuid = tree.lvols[lvol].uuid or tree.lvols[lvol].name
            infos.append(
                SnapshotInfo(
                    name=names[lvol],
                    parent=names.get(tree.parent(lvol), ""),
                    children=tuple(sorted(children)),
                    user_created=meta.user_created if meta is not None else False,
                    created=meta.created if meta is not None else "",
                    labels=dict(meta.labels) if meta is not None else {},
                    removed=meta.removed if meta is not None else False,
                    size=sizes.get(uuid, -1),
                    checksum=meta.checksum if meta is not None else "",
                    lvol_uuid=uuid,
                )
            )
        head = tree.lvols[replica]
        return ReplicaChain(
            replica=replica,
            head_parent=names.get(tree.parent(replica), ""),
            head_size=sizes.get(head.uuid or head.name, -1),
            snapshots=tuple(infos),
            backing_image=tree.base(replica),
        )

    @staticmethod
    def _ordered(tree: _Tree, head: str, lvols: list[str]) -> list[str]:
        """Oldest first: the head's ancestry root to parent, then the rest
        parent before child (the order a rebuild copies them in)."""
        ancestry = []
        cur = tree.parent(head)
        while cur:
            ancestry.append(cur)
            cur = tree.parent(cur)
        ancestry.reverse()
        rest = [lvol for lvol in lvols if lvol not in ancestry]

        def depth(name: str) -> int:
            d, cur = 0, tree.parent(name)
            while cur:
                d, cur = d + 1, tree.parent(cur)
            return d

        return ancestry + sorted(rest, key=lambda n: (depth(n), n))

    async def _sizes(self, path: str) -> dict[str, int]:
        if not path:
            return {}
        try:
            return await self._allocation(path)
        except Exception as exc:  # sizes are best effort: never fail a listing for them
            log.warning("cannot read allocated sizes", extra=fields(path=path, error=str(exc)))
            return {}

    # -- one operation per chain at a time ----------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, replica: str, what: str) -> Iterator[None]:
        running = self._busy.get(replica)
        if running is not None:
            raise Conflict(f"replica {replica}: {running} is in progress", field="replica")
        self._busy[replica] = what
        try:
            yield
        finally:
            self._busy.pop(replica, None)

    # -- create ----------------------------------------------------------------------------

    async def create(
        self,
        replica: str,
        name: str,
        *,
        user_created: bool = True,
        created: str = "",
        labels: dict[str, str] | None = None,
    ) -> SnapshotInfo:
        """Snapshot the replica's head as ``name``. The caller (an engine)
        has quiesced its writes. The same name again with the snapshot in
        place answers it (a retried call); a name taken is ALREADY_EXISTS."""
        validate_snapshot_name(name)
        record = self._replica(replica)
        disk = record.spec.disk_name
        lvol = lvol_name_of(replica, name)
        key = f"{disk}/{lvol}"
        with self._exclusive(replica, f"a snapshot ({name})"):
            client = self.target.require()
            tree = await self._tree(client, disk)
            component = set(tree.component(replica))
            taken = {self._name_of(disk, n) for n in component}
            existing = self.meta.get(key)
            if lvol in tree.lvols and existing is not None and not existing.creating:
                if tree.parent(replica) == lvol:
                    return await self._info(replica, name)  # this very snapshot, made by an earlier try
                raise AlreadyExists(f"replica {replica} has a snapshot {name} already", field="name")
            if name in taken:
                raise AlreadyExists(f"replica {replica} has a snapshot {name} already", field="name")
            meta = SnapshotMeta(
                disk_name=disk,
                lvol_name=lvol,
                replica=replica,
                name=name,
                user_created=user_created,
                created=created or now_rfc3339(),
                labels=dict(labels or {}),
                creating=True,
            )
            self.meta[key] = meta
            self.hub.changed()
            try:
                await self.hub.durable()  # the name before the lvol
                if lvol not in tree.lvols:
                    meta.lvol_uuid = await client.lvol_snapshot(f"{disk}/{replica}", lvol)
                else:
                    meta.lvol_uuid = tree.lvols[lvol].uuid or tree.lvols[lvol].name
                # Durable already: the record went to disk before the lvol
                # was made, and a restart completes a record whose lvol
                # exists (recover). Not waiting for a second write here
                # keeps it out of the engine's write hold (bench/snapshots).
                meta.creating = False
                self.hub.changed()
            except BaseException as exc:
                await self._undo_create(client, meta, made=lvol not in tree.lvols and bool(meta.lvol_uuid))
                if isinstance(exc, TargetRpcError) and exc.errno == errno.ENOSPC:
                    raise ResourceExhausted(f"disk {disk}: no room for a snapshot of {replica}: {exc}") from exc
                if isinstance(exc, (TargetRpcError, TargetUnreachable)):
                    raise target_failure(f"cannot snapshot replica {replica}", exc) from exc
                raise
        log.info("snapshot taken", extra=fields(replica=replica, snapshot=name, lvol=lvol))
        # What the tree read before says, rather than a second listing and a
        # read of the lvstore's metadata for its size (that read happened
        # inside the engine's hold): the new snapshot sits between the head
        # and the head's old parent; its size is for SnapshotList to read.
        parent = tree.parent(replica)
        return SnapshotInfo(
            name=name,
            parent=self._name_of(disk, parent) if parent in component else "",
            children=(VOLUME_HEAD,),
            user_created=meta.user_created,
            created=meta.created,
            labels=dict(meta.labels),
            removed=False,
            size=-1,
            checksum="",
            lvol_uuid=meta.lvol_uuid,
        )

    async def _undo_create(self, client: SpdkTargetClient, meta: SnapshotMeta, *, made: bool) -> None:
        if made:
            with contextlib.suppress(TargetRpcError, TargetUnreachable):
                await client.lvol_delete(meta.key)
        if self.meta.get(meta.key) is meta:
            del self.meta[meta.key]
            self.hub.changed()
            with contextlib.suppress(ImdError):
                await self.hub.durable()

    async def _info(self, replica: str, name: str) -> SnapshotInfo:
        chain = await self.chain(replica)
        found = next((s for s in chain.snapshots if s.name == name), None)
        if found is None:
            raise NotFound(f"replica {replica} has no snapshot {name}", field="name")
        return found

    # -- delete, purge ------------------------------------------------------------------------

    def _find(self, tree: _Tree, disk: str, replica: str, name: str) -> str:
        """The lvol of snapshot ``name`` in the replica's chain."""
        if name == VOLUME_HEAD:
            raise InvalidArgument(f"{VOLUME_HEAD} is the volume itself, not a snapshot", field="name")
        for lvol in tree.component(replica):
            if self._name_of(disk, lvol) == name:
                return lvol
        raise NotFound(f"replica {replica} has no snapshot {name}", field="name")

    async def delete(self, replica: str, name: str, *, mark_only: bool = False) -> bool:
        """Delete snapshot ``name`` if it has at most one child (SPDK folds
        its clusters into the child; no data the chain shows changes), or
        mark it removed (True: deleted; False: marked, for a purge).
        ``mark_only``: mark it whatever its children: an engine asks so when
        the snapshot cannot go on another of its replicas, whose chain has a
        branch this one lacks (a rebuild carries the head's ancestry only)."""
        record = self._replica(replica)
        disk = record.spec.disk_name
        with self._exclusive(replica, f"the removal of snapshot {name}"):
            client = self.target.require()
            tree = await self._tree(client, disk)
            lvol = self._find(tree, disk, replica, name)
            if mark_only or len(tree.children(lvol)) > 1:
                await self._mark_removed(disk, lvol, replica, name)
                return False
            await self._delete_lvol(client, disk, lvol)
        log.info("snapshot deleted", extra=fields(replica=replica, snapshot=name, lvol=lvol))
        return True

    async def _mark_removed(self, disk: str, lvol: str, replica: str, name: str) -> None:
        meta = self.meta.get(f"{disk}/{lvol}")
        if meta is None:
            meta = SnapshotMeta(disk_name=disk, lvol_name=lvol, replica=replica, name=name, user_created=False)
            self.meta[meta.key] = meta
        meta.removed = True
        self.hub.changed()
        await self.hub.durable()
        log.info("snapshot marked removed (more than one child)", extra=fields(replica=replica, snapshot=name))

    async def _delete_lvol(self, client: SpdkTargetClient, disk: str, lvol: str) -> None:
        key = f"{disk}/{lvol}"
        await self._stop_hash(key)
        try:
            await client.lvol_delete(key)
        except TargetRpcError as exc:
            if not exc.not_found:
                raise target_failure(f"cannot delete snapshot lvol {key}", exc) from exc
        except TargetUnreachable as exc:
            raise target_failure(f"cannot delete snapshot lvol {key}", exc) from exc
        if self.meta.pop(key, None) is not None:
            self.hub.changed()
            await self.hub.durable()

    async def purge(self, replica: str) -> list[str]:
        """Delete every snapshot marked removed, and every system snapshot
        (not user created), that has at most one child; again until none is
        left (deleting one may leave its parent with a single child)."""
        record = self._replica(replica)
        disk = record.spec.disk_name
        deleted: list[str] = []
        with self._exclusive(replica, "a purge"):
            client = self.target.require()
            while True:
                tree = await self._tree(client, disk)
                candidates = [
                    lvol
                    for lvol in tree.component(replica)
                    if len(tree.children(lvol)) <= 1
                    and (
                        (meta := self.meta.get(f"{disk}/{lvol}")) is None
                        or meta.removed
                        or (not meta.user_created and not meta.creating)
                    )
                ]
                if not candidates:
                    break
                lvol = candidates[0]
                name = self._name_of(disk, lvol)
                await self._delete_lvol(client, disk, lvol)
                deleted.append(name)
        if deleted:
            log.info("snapshots purged", extra=fields(replica=replica, snapshots=",".join(deleted)))
        return deleted

    # -- revert ------------------------------------------------------------------------------

    async def revert(self, replica: str, name: str) -> None:
        """Make the replica's head a new clone of snapshot ``name``; the old
        head goes, later snapshots stay (the chain branches). The engine has
        detached the replica's controller first. Two steps, so that a failure
        before the swap leaves the replica as it was: a clone of the snapshot
        is made beside the head, then (after the intent is on disk) the head
        leaves the export, is deleted, the clone takes its name and the
        export gets it back."""
        record = self._replica(replica)
        disk = record.spec.disk_name
        with self._exclusive(replica, f"a revert to {name}"):
            client = self.target.require()
            tree = await self._tree(client, disk)
            lvol = self._find(tree, disk, replica, name)
            temp = revert_lvol_of(replica)
            try:
                if temp in tree.lvols:
                    await client.lvol_delete(f"{disk}/{temp}")  # a failed earlier try's
                await client.lvol_clone(f"{disk}/{lvol}", temp)
                # A clone is its snapshot's size: one taken before the volume
                # grew makes a head smaller than the volume, which no engine
                # could attach again. It grows to the head's size first.
                head = tree.lvols.get(replica)
                snap = tree.lvols[lvol]
                if head is not None and head.num_blocks * head.block_size > snap.num_blocks * snap.block_size:
                    await client.lvol_resize(f"{disk}/{temp}", -(-head.num_blocks * head.block_size // MIB))
            except (TargetRpcError, TargetUnreachable) as exc:
                raise target_failure(f"cannot clone snapshot {name} of replica {replica}", exc) from exc
            record.reverting_to = temp
            self.hub.changed()
            try:
                await self.hub.durable()
            except ImdError:
                record.reverting_to = ""
                with contextlib.suppress(TargetRpcError, TargetUnreachable):
                    await client.lvol_delete(f"{disk}/{temp}")
                raise
            await self._swap_head(client, record)
        log.info("replica reverted", extra=fields(replica=replica, snapshot=name))

    async def _swap_head(self, client: SpdkTargetClient, record: ReplicaRecord) -> None:
        """The second step of a revert (and its finish after a crash)."""
        disk, name, temp = record.spec.disk_name, record.name, record.reverting_to
        nqn = nqn_of(name)
        try:
            subsystem = next((s for s in await client.subsystems() if s.nqn == nqn), None)
            if subsystem is not None:
                for ns in subsystem.namespaces:
                    await client.subsystem_remove_ns(nqn, ns.nsid)
            tree = await self._tree(client, disk)
            if temp in tree.lvols:
                if name in tree.lvols:
                    await client.lvol_delete(f"{disk}/{name}")
                await client.lvol_rename(f"{disk}/{temp}", name)
            if subsystem is not None:
                await client.subsystem_add_ns(nqn, f"{disk}/{name}", nguid_of(name))
        except (TargetRpcError, TargetUnreachable) as exc:
            record.state = ProcessState.ERROR
            record.error_msg = f"revert not finished: {exc}"
            self.hub.publish(self.replicas.view(record))
            raise target_failure(f"cannot swap the head of replica {name}", exc) from exc
        record.reverting_to = ""
        self.hub.changed()
        await self.hub.durable()

    # -- exposing a snapshot (for a copy or a hash) ---------------------------------------------

    async def expose(self, replica: str, name: str) -> SnapshotExport:
        """Serve snapshot ``name`` read-only over NVMe-oF/TCP on this node's
        replica address and a port of the range (idempotent)."""
        record = self._replica(replica)
        disk = record.spec.disk_name
        client = self.target.require()
        tree = await self._tree(client, disk)
        lvol = self._find(tree, disk, replica, name)
        nqn = nqn_of(f"{replica}-snap-{name}"[:200])
        size = tree.lvols[lvol].num_blocks * tree.lvols[lvol].block_size
        held = self._exports.get(nqn)
        if held is not None:
            held.users += 1
            try:
                await asyncio.shield(held.ready)
            except BaseException:
                await self._release(nqn, held)
                raise
            return SnapshotExport(address=record.address, port=held.port, nqn=nqn, size=size)
        port = self.ports.allocate(1).start
        export = self._exports[nqn] = _Export(replica, lvol, port)
        try:
            await client.subsystem_create(nqn, serial=SERIAL, model=MODEL)
            await client.subsystem_add_ns(nqn, f"{disk}/{lvol}", nguid_of(f"{replica}/{name}"))
            await client.subsystem_add_listener(nqn, record.address, port)
        except BaseException as exc:
            failure = (
                target_failure(f"cannot expose snapshot {name} of replica {replica}", exc)
                if isinstance(exc, (TargetRpcError, TargetUnreachable))
                else Unavailable(f"exposing snapshot {name} of replica {replica} was interrupted")
            )
            export.ready.set_exception(failure)
            export.ready.exception()  # retrieved: the other users see it through their own await
            await asyncio.shield(self._drop_export(nqn))
            if isinstance(exc, (TargetRpcError, TargetUnreachable)):
                raise failure from exc
            raise
        export.ready.set_result(None)
        return SnapshotExport(address=record.address, port=port, nqn=nqn, size=size)

    async def unexpose(self, replica: str, name: str) -> None:
        """One user of the export is done; the last one takes it down."""
        nqn = nqn_of(f"{replica}-snap-{name}"[:200])
        held = self._exports.get(nqn)
        if held is not None:
            await self._release(nqn, held)

    async def _release(self, nqn: str, held: _Export) -> None:
        if self._exports.get(nqn) is not held:
            return  # gone already (it failed, or its replica went); a new one is someone else's
        held.users -= 1
        if held.users <= 0:
            await asyncio.shield(self._drop_export(nqn))

    async def _drop_export(self, nqn: str) -> None:
        held = self._exports.pop(nqn, None)
        if held is None:
            return
        with contextlib.suppress(TargetRpcError, TargetUnreachable, FailedPrecondition):
            await self.target.require().subsystem_delete(nqn)
        self.ports.release(PortBlock(held.port, held.port))

    # -- hash --------------------------------------------------------------------------------------

    async def hash(self, replica: str, name: str, *, rehash: bool = False) -> HashStatus:
        """Start hashing snapshot ``name`` (SHA-256 of its whole content, in
        this node's C core), unless its checksum is known and ``rehash`` is
        not asked; answers at once with the status."""
        record = self._replica(replica)
        disk = record.spec.disk_name
        tree = await self._tree(self.target.require(), disk)
        lvol = self._find(tree, disk, replica, name)
        key = f"{disk}/{lvol}"
        running = self._hashes.get(key)
        if running is not None and not running.task.done():
            return running.status
        meta = self._meta_of(disk, lvol)
        if meta is not None and meta.checksum and not rehash:
            return HashStatus(state="complete", checksum=meta.checksum)
        if self._data() is None:
            raise FailedPrecondition("this node has no spdk_ffi core to hash with", field="replica")
        job = _Hash(asyncio.ensure_future(self._hash(record, name, lvol)), meta.checksum if meta else "")
        self._hashes[key] = job
        return job.status

    def hash_status(self, replica: str, name: str) -> HashStatus:
        record = self.replicas.get(replica)
        disk = record.spec.disk_name
        lvol = lvol_name_of(replica, name)
        key = next((k for k, m in self.meta.items() if m.replica == replica and m.name == name), f"{disk}/{lvol}")
        running = self._hashes.get(key)
        if running is not None:
            return running.status
        meta = self.meta.get(key)
        if meta is not None and meta.checksum:
            return HashStatus(state="complete", checksum=meta.checksum)
        return HashStatus(state="")

    async def _hash(self, record: ReplicaRecord, name: str, lvol: str) -> None:
        key = f"{record.spec.disk_name}/{lvol}"
        job = self._hashes.get(key)
        data = self._data()
        assert data is not None
        owner = f"hash-{uuidlib.uuid4().hex[:12]}"
        exposed = False
        try:
            export = await self.expose(record.name, name)
            exposed = True
            try:
                # Inside the try: an attach cancelled part way is detached too.
                attached = await data.initiator.attach(
                    owner, [export_path(export)], f"nqn.2014-08.org.nvmexpress:uuid:{owner}", data.opts, owner=owner
                )
                handle = data.initiator.handle(owner)
                ns = attached.info.namespaces[0]
                running = data.jobs.hash(
                    handle,
                    ns.size_bytes // ns.block_size,
                    chunk_bytes=HASH_CHUNK,
                    rate_bytes_per_s=self.hash_rate_bytes_per_s,
                )
                try:
                    result = await asyncio.shield(running.done)
                except asyncio.CancelledError:
                    await running.cancel()
                    raise
            finally:
                await asyncio.shield(data.initiator.detach(owner, owner=owner))  # done even if cancelled again
        except asyncio.CancelledError:
            if job is not None:
                job.status = HashStatus(state="error", error="preempted (the snapshot or its replica went)")
            raise
        except (ImdError, NvmeError) as exc:
            if job is not None:
                job.status = HashStatus(state="error", error=str(exc))
            log.warning("snapshot hash failed", extra=fields(replica=record.name, snapshot=name, error=str(exc)))
            return
        finally:
            if exposed:
                await asyncio.shield(self.unexpose(record.name, name))
        if result.state is not RebuildState.COMPLETE:
            if job is not None:
                job.status = HashStatus(state="error", error=result.error or f"hash {result.state}")
            return
        meta = self.meta.get(key)
        if meta is None:
            meta = SnapshotMeta(
                disk_name=record.spec.disk_name, lvol_name=lvol, replica=record.name, name=name, user_created=False
            )
            self.meta[key] = meta
        meta.checksum = result.digest
        self.hub.changed()
        with contextlib.suppress(ImdError):
            await self.hub.durable()
        if job is not None:
            job.status = HashStatus(state="complete", checksum=result.digest)
        log.info("snapshot hashed", extra=fields(replica=record.name, snapshot=name, checksum=result.digest[:16]))

    async def _stop_hash(self, key: str) -> None:
        job = self._hashes.pop(key, None)
        if job is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(BaseException):
                await job.task

    async def cancel_hashes(self, replica: str) -> None:
        """Stop every hash of the replica's snapshots (within one chunk)."""
        for key in [k for k, m in self.meta.items() if m.replica == replica]:
            await self._stop_hash(key)

    # -- a replica goes; start-up ------------------------------------------------------------------

    async def forget(self, record: ReplicaRecord, *, delete_lvols: bool) -> None:
        """The replica is being deleted (its export is gone, its head not
        yet): its hashes and snapshot exports stop, and with ``delete_lvols``
        (a cleanup) its snapshot lvols go too, with their records, leaves
        first (each then has at most one child: SPDK folds it into that
        child). Without, records stay beside their lvols: a later create of
        the replica reuses them, as it reuses the head."""
        replica, disk = record.name, record.spec.disk_name
        await self.cancel_hashes(replica)
        for nqn, export in list(self._exports.items()):
            if export.replica == replica:
                await self._drop_export(nqn)
        if not delete_lvols:
            return
        client = self.target.require()
        while True:
            tree = await self._tree(client, disk)
            if replica not in tree.lvols:
                break
            leaves = [lvol for lvol in tree.component(replica) if len(tree.children(lvol)) <= 1]
            if not leaves:
                break
            await self._delete_lvol(client, disk, leaves[-1])

    async def recover(self, records: list[SnapshotMeta]) -> dict[str, int]:
        """Join the records with the lvstores: a record whose lvol is not
        there (a create that never made it, a delete that did) is dropped;
        a replica left mid-revert is finished, and a revert's clone made
        before its intent was on disk is deleted."""
        report = {"snapshots": 0, "snapshot_records_dropped": 0, "reverts_finished": 0, "revert_clones_dropped": 0}
        client = self.target.require()
        try:
            lvols = await client.lvol_bdevs()
        except (TargetRpcError, TargetUnreachable) as exc:
            raise Unavailable(f"cannot read the lvstores' snapshots: {exc}") from exc
        present = {lvol.alias: lvol for lvol in lvols}
        for meta in records:
            lvol = present.get(meta.key)
            if lvol is None:
                report["snapshot_records_dropped"] += 1
                continue
            meta.creating = False
            meta.lvol_uuid = lvol.uuid or lvol.name
            self.meta[meta.key] = meta
            report["snapshots"] += 1
        reverting = {f"{r.spec.disk_name}/{r.reverting_to}" for r in self.replicas.records.values() if r.reverting_to}
        for lvol in lvols:
            if lvol.lvol_name.startswith(REVERT_PREFIX) and lvol.alias not in reverting:
                with contextlib.suppress(TargetRpcError, TargetUnreachable):
                    await client.lvol_delete(lvol.alias)
                    report["revert_clones_dropped"] += 1
        for record in list(self.replicas.records.values()):
            if record.reverting_to and not record.delete_requested:
                with contextlib.suppress(ImdError):
                    await self._swap_head(client, record)
                    report["reverts_finished"] += 1
        self.hub.changed()
        return report

    async def close(self) -> None:
        for key in list(self._hashes):
            await self._stop_hash(key)

    def records(self) -> list[SnapshotMeta]:
        return list(self.meta.values())


class LocalReplicaNodes:
    """``ReplicaNodes`` for replicas this daemon serves itself, without the
    wire: each call goes straight to this node's ``Chains`` (and
    ``Replicas.expand``). Tests of engines build clusters of nodes from
    these; the daemon reaches every node, its own included, through
    imd/api/replica.py's client."""

    def __init__(self, nodes: dict[str, Chains], engines: dict[str, Any] | None = None) -> None:
        self.nodes = nodes  # by host (the replica address's IP)
        self.engines = engines or {}  # each node's Engines, by host (a clone's source)

    def _chains(self, address: str) -> Chains:
        host = address.rpartition(":")[0].strip("[]") or address
        found = self.nodes.get(host)
        if found is None:
            raise Unavailable(f"no imd at {host}", field="replica_address")
        return found

    async def expand(self, address: str, replica: str, size: int) -> None:
        await self._chains(address).replicas.expand(replica, size)

    async def snapshot_create(
        self, address: str, replica: str, name: str, *, user_created: bool, created: str, labels: dict[str, str]
    ) -> SnapshotInfo:
        return await self._chains(address).create(
            replica, name, user_created=user_created, created=created, labels=labels
        )

    async def snapshot_delete(self, address: str, replica: str, name: str, *, mark_only: bool = False) -> bool:
        return await self._chains(address).delete(replica, name, mark_only=mark_only)

    async def snapshot_chain(self, address: str, replica: str) -> ReplicaChain:
        return await self._chains(address).chain(replica)

    async def snapshot_purge(self, address: str, replica: str) -> list[str]:
        return await self._chains(address).purge(replica)

    async def snapshot_revert(self, address: str, replica: str, name: str) -> None:
        await self._chains(address).revert(replica, name)

    async def snapshot_expose(self, address: str, replica: str, name: str) -> SnapshotExport:
        return await self._chains(address).expose(replica, name)

    async def snapshot_unexpose(self, address: str, replica: str, name: str) -> None:
        await self._chains(address).unexpose(replica, name)

    async def snapshot_hash(self, address: str, replica: str, name: str, rehash: bool) -> HashStatus:
        return await self._chains(address).hash(replica, name, rehash=rehash)

    async def snapshot_hash_status(self, address: str, replica: str, name: str) -> HashStatus:
        return self._chains(address).hash_status(replica, name)

    async def snapshot_hash_cancel(self, address: str, replica: str) -> None:
        await self._chains(address).cancel_hashes(replica)

    async def engine_replicas(self, address: str, engine: str) -> list[tuple[str, str]]:
        host = address.rpartition(":")[0].strip("[]") if ":" in address else address
        engines = self.engines.get(host)
        if engines is None:
            raise Unavailable(f"no imd at {host}", field="from_engine_address")
        found = engines.get(engine, "from_engine_name")
        return [
            (name, found.record.spec.replicas[name][0])
            for name, mode in sorted(found.record.modes.items())
            if mode == "RW"
        ]


class OwnReplicasFirst:
    """``ReplicaNodes`` for a daemon's start-up: the calls on replicas this
    daemon serves itself go to its own chains in process, the others to
    ``remote`` (imd/api/replica.py's client). A snapshot operation that the
    restart finishes (``Snapshots.finish_intent``) runs while the engines
    are restored, before the daemon serves gRPC: through the wire, a call
    on one of its own replicas would reach nobody."""

    def __init__(self, chains: Chains, remote: ReplicaNodes) -> None:
        self.chains = chains
        self.remote = remote

    def _pick(self, address: str, replica: str) -> ReplicaNodes:
        record = self.chains.replicas.records.get(replica)
        if record is not None and address == f"{record.address}:{record.port}":
            return LocalReplicaNodes({record.address: self.chains})
        return self.remote

    async def expand(self, address: str, replica: str, size: int) -> None:
        await self._pick(address, replica).expand(address, replica, size)

    async def snapshot_create(
        self, address: str, replica: str, name: str, *, user_created: bool, created: str, labels: dict[str, str]
    ) -> SnapshotInfo:
        return await self._pick(address, replica).snapshot_create(
            address, replica, name, user_created=user_created, created=created, labels=labels
        )

    async def snapshot_delete(self, address: str, replica: str, name: str, *, mark_only: bool = False) -> bool:
        return await self._pick(address, replica).snapshot_delete(address, replica, name, mark_only=mark_only)

    async def snapshot_chain(self, address: str, replica: str) -> ReplicaChain:
        return await self._pick(address, replica).snapshot_chain(address, replica)

    async def snapshot_purge(self, address: str, replica: str) -> list[str]:
        return await self._pick(address, replica).snapshot_purge(address, replica)

    async def snapshot_revert(self, address: str, replica: str, name: str) -> None:
        await self._pick(address, replica).snapshot_revert(address, replica, name)

    async def snapshot_expose(self, address: str, replica: str, name: str) -> SnapshotExport:
        return await self._pick(address, replica).snapshot_expose(address, replica, name)

    async def snapshot_unexpose(self, address: str, replica: str, name: str) -> None:
        await self._pick(address, replica).snapshot_unexpose(address, replica, name)

    async def snapshot_hash(self, address: str, replica: str, name: str, rehash: bool) -> HashStatus:
        return await self._pick(address, replica).snapshot_hash(address, replica, name, rehash)

    async def snapshot_hash_status(self, address: str, replica: str, name: str) -> HashStatus:
        return await self._pick(address, replica).snapshot_hash_status(address, replica, name)

    async def snapshot_hash_cancel(self, address: str, replica: str) -> None:
        await self._pick(address, replica).snapshot_hash_cancel(address, replica)

    async def engine_replicas(self, address: str, engine: str) -> list[tuple[str, str]]:
        return await self.remote.engine_replicas(address, engine)
