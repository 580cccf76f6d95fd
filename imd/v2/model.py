"""Data engine V2's domain state, as msgspec Structs.

Disks, replicas and engines are not processes: replicas are lvols exported
by the node's SPDK target, and engines live inside imd (controllers and a
mirror in spdk_ffi's C core, exported by its embedded NVMe-oF target). They
still share the V1 instance rules on the wire: a UUID per instance, states
that only move forward (``ProcessState``), delete by name and optional UUID,
and a final event with ``deleted``.

Naming follows Longhorn (go-spdk-helper), so a Longhorn host or tool sees
what it expects: every exported subsystem is ``nqn.2023-01.io.longhorn.spdk:
<name>`` and its namespace's NGUID is the SHA-1 name-based UUID of the name
in the OID namespace.
"""

from __future__ import annotations

import enum
import uuid as uuidlib

import msgspec

from imd.supervisor.model import ProcessState

NQN_PREFIX = "nqn.2023-01.io.longhorn.spdk"
FRONTEND_NVMF = "spdk-tcp-nvmf"
# Longhorn's other frontends: known names, not served by imd.
FRONTENDS_ELSEWHERE = ("spdk-tcp-blockdev", "ublk")
REPLICA = "replica"
ENGINE = "engine"
VOLUME_HEAD = "volume-head"


def nqn_of(name: str) -> str:
    return f"{NQN_PREFIX}:{name}"


def nguid_of(name: str) -> str:
    return uuidlib.uuid5(uuidlib.NAMESPACE_OID, name).hex


def host_nqn_of(engine_uuid: str) -> str:
    """The host NQN an engine connects to its replicas with. One per engine
    (by UUID): SPDK's driver silently shares a controller between two
    connects with the same transport id and host NQN, which would tie two
    engines of the same replica to one controller."""
    return f"nqn.2014-08.org.nvmexpress:uuid:{engine_uuid}"


class ReplicaMode(enum.StrEnum):
    """A replica as an engine sees it (Longhorn's ptypes.ReplicaMode names)."""

    RW = "RW"
    WO = "WO"
    ERR = "ERR"


# -- disks -----------------------------------------------------------------------


class DiskRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A disk: an AIO bdev over ``path`` (named after the disk) carrying one
    lvstore (also named after the disk). ``uuid`` is the lvstore's."""

    name: str
    uuid: str
    path: str
    block_size: int
    cluster_size: int
    driver: str = "aio"


class DiskView(msgspec.Struct, frozen=True, kw_only=True):
    record: DiskRecord
    total_size: int
    free_size: int
    state: str = "ready"

    @property
    def total_blocks(self) -> int:
        return self.total_size // self.record.block_size

    @property
    def free_blocks(self) -> int:
        return self.free_size // self.record.block_size


class ReplicaLvol(msgspec.Struct, frozen=True, kw_only=True):
    """An lvol on a disk, as DiskReplicaInstanceList reports it."""

    name: str
    uuid: str
    disk_name: str
    disk_uuid: str
    spec_size: int
    actual_size: int


# -- replicas ----------------------------------------------------------------------


class ReplicaSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    disk_name: str
    size: int
    volume_name: str = ""
    backing_image: str = ""
    """A backing image on the same disk: the replica's head is a clone of it."""


class ReplicaRecord(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One replica: the lvol ``<disk>/<name>`` exported as ``nqn_of(name)``
    on ``address:port``. ``lvol_created`` says whether this replica's create
    made the lvol (rather than reusing one a delete without cleanup left):
    an unfinished create undoes only what it made."""

    name: str
    uuid: str
    spec: ReplicaSpec
    disk_uuid: str
    address: str
    port: int
    state: ProcessState = ProcessState.STARTING
    error_msg: str = ""
    lvol_uuid: str = ""
    lvol_created: bool = False
    delete_requested: bool = False
    cleanup_requested: bool = False
    reverting_to: str = ""
    """A revert's intent (the snapshot's lvol name), written before the head
    is swapped for the clone made of it: a crash part-way is finished at
    restart."""


# -- snapshots ------------------------------------------------------------------------


class SnapshotMeta(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What SPDK v24.01 cannot keep with a snapshot lvol (it has no lvol
    xattrs): the snapshot's name as Longhorn knows it, who made it and when,
    its labels, whether it is marked removed, its checksum. Kept in the
    replica node's V2 state beside the lvol it describes (``disk_name`` +
    ``lvol_name``, and ``lvol_uuid`` once made), written before the lvol is
    made and dropped with it. The chain itself (parents, children) is never
    kept here: it is read from the lvstore, so it cannot disagree."""

    disk_name: str
    lvol_name: str
    replica: str
    name: str
    lvol_uuid: str = ""
    user_created: bool = True
    created: str = ""
    labels: dict[str, str] = {}
    removed: bool = False
    checksum: str = ""
    creating: bool = False  # the intent, before bdev_lvol_snapshot answered

    @property
    def key(self) -> str:
        return f"{self.disk_name}/{self.lvol_name}"


class SnapshotInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One snapshot of one replica, as its node reads it: the lvstore's chain
    joined with the metadata. ``size`` is the bytes the snapshot's own
    clusters hold (-1: unknown)."""

    name: str
    parent: str
    children: tuple[str, ...]
    user_created: bool
    created: str
    labels: dict[str, str]
    removed: bool
    size: int
    checksum: str
    lvol_uuid: str


class ReplicaChain(msgspec.Struct, frozen=True, kw_only=True):
    """A replica's snapshots, oldest first along the head's ancestry, then
    any branch a revert left; ``head_parent`` is the head's (``""``: none).
    ``backing_image`` names the image the chain starts from (``""``: none);
    it is the chain's base, not one of its snapshots."""

    replica: str
    head_parent: str
    head_size: int
    snapshots: tuple[SnapshotInfo, ...]
    backing_image: str = ""


class HashStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot's hash on one replica (Longhorn's state names)."""

    state: str  # "" (never asked), "in_progress", "complete", "error"
    checksum: str = ""
    error: str = ""


class SnapshotExport(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot served read-only over NVMe-oF by its replica's node, for a
    copy (rebuild, clone) or a hash."""

    address: str
    port: int
    nqn: str
    size: int


# -- engines ------------------------------------------------------------------------


class EngineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``replicas`` maps each replica's name to its addresses (``ip:port``;
    several mean several paths to one replica)."""

    name: str
    volume_name: str
    size: int
    replicas: dict[str, tuple[str, ...]]
    frontend: str = FRONTEND_NVMF
    snapshot_max_count: int = 0
    """From the InstanceSpec (0: Longhorn's default, 250)."""


class SnapshotIntent(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """An engine-wide snapshot operation that changes several replicas,
    written before the first replica changes and cleared once the last has:
    if the daemon dies part way (the engine lives in it), the restore
    finishes it or undoes it before the engine serves again, so replicas
    never come back disagreeing. ``kind``: "snapshot" (undone unless every
    replica took it), "remove" (finished), "revert" (finished: the engine
    has no frontend, so reverting a replica again changes nothing a host
    saw), "clone" (reported failed: the copy has to start over)."""

    kind: str
    snapshots: tuple[str, ...]
    source: str = ""  # a clone's from_engine_address


class BackupRecord(msgspec.Struct, kw_only=True):
    """One backup an engine made or is making (imd.v2.backups), kept in the
    engine's record until the engine goes, so that a backup running when
    imd died reads "interrupted by restart" afterwards instead of being
    forgotten. No credentials: those travel with the request only."""

    name: str
    snapshot: str
    volume: str
    target: str
    replica: str = ""
    replica_address: str = ""
    state: str = "in_progress"  # Longhorn's: in_progress, complete, error
    progress: int = 0
    url: str = ""
    error: str = ""
    is_incremental: bool = False
    started: str = ""
    finished: str = ""


class RestoreRecord(msgspec.Struct, kw_only=True):
    """The engine's restore (imd.v2.backups): the one in progress or the
    last one, and ``last_restored``, the backup the volume holds (the base
    of the next, incremental, restore)."""

    backup_url: str = ""
    backup: str = ""  # the backup being (or last) restored
    last_restored: str = ""
    state: str = ""  # "", in_progress, complete, error
    is_restoring: bool = False
    progress: int = 0
    error: str = ""
    snapshot: str = ""  # the snapshot taken of the restored volume
    replica_errors: dict[str, str] = {}  # replicas that left the mirror during the restore
    started: str = ""


class EngineRecord(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One engine. ``port`` is its frontend's (0 with no frontend);
    ``modes`` is the engine's view of each replica; ``size`` the volume's
    current size (it grows with VolumeExpand)."""

    name: str
    uuid: str
    spec: EngineSpec
    address: str
    port: int
    size: int
    modes: dict[str, ReplicaMode] = {}
    state: ProcessState = ProcessState.STARTING
    error_msg: str = ""
    delete_requested: bool = False
    last_expansion_error: str = ""
    last_expansion_failed_at: str = ""
    snapshot_max_count: int = 250
    """Longhorn's default; VolumeSnapshotMaxCountSet changes it, 0: none."""
    snapshot_max_size: int = 0
    """Bytes the snapshots and the head may hold before a new snapshot is
    refused; 0: no limit."""
    created: str = ""
    """RFC 3339, when the engine was made: SnapshotList's volume-head."""
    clean_stop: bool = False
    """Set when the daemon took the engine down cleanly (no write in flight),
    so its replicas hold the same bytes; a restore after anything else
    resyncs them from one replica first."""
    intent: SnapshotIntent | None = None
    backups: dict[str, BackupRecord] = {}
    """By backup name: in progress, and the finished ones (the newest
    ``imd.v2.backups.KEEP_FINISHED``) until the engine goes."""
    restore: RestoreRecord | None = None


# -- what clients see ----------------------------------------------------------------


class FrontendPath(msgspec.Struct, frozen=True):
    target_ip: str
    target_port: int
    nqn: str
    nguid: str
    ana_state: str = "optimized"


class V2InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """A V2 replica or engine as InstanceGet/List show it, at one moment."""

    name: str
    uuid: str
    type: str
    volume_name: str
    state: ProcessState
    error_msg: str
    port_start: int
    port_end: int
    deleted: bool = False
    size: int = 0
    disk_name: str = ""
    disk_uuid: str = ""
    replica_address_map: dict[str, str] = {}
    frontend: str = ""
    endpoint: str = ""
    paths: tuple[FrontendPath, ...] = ()


class V2Event(msgspec.Struct, frozen=True):
    """A change of a V2 instance; ``seq`` orders V2 events."""

    seq: int
    view: V2InstanceView
