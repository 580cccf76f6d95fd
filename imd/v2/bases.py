"""Backing images as the rest of data engine V2 sees them: their records (in
the node's V2 state), their lvol names, and the small interface through
which replicas and chains ask about them.

A backing image on a disk is one read-only snapshot lvol in the disk's
lvstore, named ``bi-<24 hex>`` (a hash of the image's name and the disk's
UUID: SPDK v24.01 stops lvol names at 63 characters, and Longhorn's
``bi-<name>-disk-<lvs uuid>`` does not fit). While it is being copied, its
data goes into a temporary head ``bi-<24 hex>-tmp``, which is snapshotted
into the image once its checksum is right. SPDK v24.01 keeps no xattrs, so
what Longhorn keeps on the snapshot (the image's name and UUID, the
checksum, how far the copy got) lives in a ``BackingImageRecord`` in
``v2.json``, keyed by the disk and the image's name, written before the
first lvol is made and dropped after the last one went.

A replica made from an image is a clone of that snapshot
(``bdev_lvol_clone``), resized to the replica's size: it reads the image
where it has not written. The image's lvol is as large as its disk (thin:
only the image's data takes room), not as the image: SPDK v24.01 fails I/O
to the part of a clone that lies beyond its parent snapshot's end (fixed
upstream in v24.05, "blob: handle IO to a resized blob"), so every replica
the disk can hold must lie within the image's lvol; a clone is shrunk to
its replica's size, so only the image itself pays the disk-sized cluster
map in the target's memory (8 bytes per MiB of disk). The
image is the base of the replica's chain, never a snapshot in it
(``Bases.base_of``); a replica takes a ``lease`` on the image for the time
its clone is being made, so that a delete of the image cannot slip in
between the check and the clone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import msgspec

from imd.v2.model import SnapshotExport

PENDING = "pending"
IN_PROGRESS = "in-progress"
READY = "ready"
FAILED = "failed"
UNKNOWN = "unknown"  # its disk is not loaded on this node (Longhorn's BackingImageStateUnknown)

LVOL_PREFIX = "bi-"
TEMP_SUFFIX = "-tmp"
INTERRUPTED = "interrupted by restart"


def image_lvol_name(name: str, disk_uuid: str) -> str:
    return LVOL_PREFIX + hashlib.sha1(f"{name}\0{disk_uuid}".encode()).hexdigest()[:24]


def temp_lvol_name(name: str, disk_uuid: str) -> str:
    return image_lvol_name(name, disk_uuid) + TEMP_SUFFIX


def is_image_lvol(lvol: str) -> bool:
    """Whether an lvol name is one of ours: an image (``bi-<24 hex>``) or
    its temporary head (``bi-<24 hex>-tmp``)."""
    rest = lvol[len(LVOL_PREFIX) :].removesuffix(TEMP_SUFFIX)
    return lvol.startswith(LVOL_PREFIX) and len(rest) == 24 and all(c in "0123456789abcdef" for c in rest)


def longhorn_key(name: str, disk_uuid: str) -> str:
    """The key Longhorn's SPDKBackingImageList answers under (one instance
    manager serves several disks)."""
    return f"bi-{name}-disk-{disk_uuid}"


class BackingImageSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What SPDKBackingImageCreate asked for. ``checksum`` is the SHA-512 the
    content must have (lower-case hex); ``from_address`` an http(s) URL or
    another node's address (with ``src_lvs_uuid``, the disk there)."""

    name: str
    uuid: str
    disk_uuid: str
    size: int
    checksum: str
    from_address: str = ""
    src_lvs_uuid: str = ""


class BackingImageRecord(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One backing image on one disk of this node (see the module doc)."""

    spec: BackingImageSpec
    disk_name: str
    lvol_name: str
    lvol_uuid: str = ""
    lvol_mib: int = 0
    """The image lvol's size (the disk's, at the copy; see the module doc)."""
    state: str = PENDING
    progress: int = 0
    current_checksum: str = ""
    error: str = ""
    delete_requested: bool = False
    """The delete's intent, written before the lvols go: a delete that could
    not finish (the target or the disk went) is finished later."""

    @property
    def key(self) -> str:
        return f"{self.spec.disk_uuid}/{self.spec.name}"

    @property
    def temp_lvol(self) -> str:
        return self.lvol_name + TEMP_SUFFIX


class BackingImageView(msgspec.Struct, frozen=True, kw_only=True):
    """A backing image as Get/List/Watch show it, at one moment."""

    spec: BackingImageSpec
    disk_name: str
    state: str
    progress: int
    current_checksum: str
    error: str
    lvol_name: str


class BaseLease:
    """A replica's hold on an image while its clone is being made: the image
    cannot be deleted meanwhile. ``release`` is idempotent."""

    def __init__(
        self, name: str, disk_name: str, lvol_name: str, size: int, lvol_mib: int, release: Callable[[], None]
    ) -> None:
        self.name = name
        self.disk_name = disk_name
        self.lvol_name = lvol_name
        self.size = size  # the image's
        self.lvol_mib = lvol_mib  # its lvol's: what a clone of it starts as, and the most a clone may be
        self._release = release
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


class Bases(Protocol):
    """What replicas and chains ask of the backing images' owner."""

    def base_of(self, disk_name: str, lvol: str) -> str:
        """The name of the backing image whose lvol ``lvol`` (on disk
        ``disk_name``) is, or ``""``: the chain above it stops there."""
        ...

    def lease(self, name: str, disk_name: str, field: str) -> BaseLease:
        """Hold image ``name`` on disk ``disk_name`` for a clone; raises
        FailedPrecondition (naming ``field``) if it is not there and ready,
        or is being deleted."""
        ...

    def clone_limit(self, name: str, disk_name: str) -> int:
        """The most bytes a clone of image ``name`` may hold (its lvol's
        size), or 0 if the image is not known."""
        ...


class ImagePeers(Protocol):
    """Other nodes' backing images, through their imd (imdrpc, base + 4):
    served read-only over NVMe-oF for a copy, and withdrawn after."""

    async def image_expose(self, address: str, name: str, disk_uuid: str) -> SnapshotExport: ...

    async def image_unexpose(self, address: str, name: str, disk_uuid: str) -> None: ...
