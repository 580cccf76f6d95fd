"""A small blobstore image written from SPDK v24.01's documented on-disk
layout (lib/blob/blobstore.h), for testing the metadata reader without SPDK.

Deliberately independent of imd.edges.blobstore_md: its own structs and
its own (plain, byte-at-a-time) CRC32C, laid out the way spdk_bs_init
(blobstore.c:5330-5420) and blob_serialize (blobstore.c:1288-1353) do: the
super block, the three masks, then the md region; a blob's first page at
its id's index, its other pages and its extent pages taken lowest free
first; data clusters after the md clusters.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 4096
EXTENTS_PER_EP = 512
INVALID = 0xFFFFFFFF
THIN, INTERNAL, EXTENT_TABLE, ESNAP = 1, 2, 4, 8


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_TABLE = _table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def seal(page: bytearray) -> bytes:
    """Set a 4 KiB page's CRC (its last 4 bytes) and return it."""
    struct.pack_into("<I", page, PAGE - 4, crc32c(bytes(page[: PAGE - 4])))
    return bytes(page)


def desc(kind: int, body: bytes) -> bytes:
    return struct.pack("<BI", kind, len(body)) + body


def xattr(name: str, value: bytes, internal: bool = False) -> bytes:
    n = name.encode()
    return desc(4 if internal else 2, struct.pack("<HH", len(n), len(value)) + n + value)


@dataclass
class Blob:
    name: str | None
    num_clusters: int
    allocated: set[int]  # cluster indexes (within the blob) that hold a cluster
    thin: bool = True
    extent_table: bool = True
    read_only: bool = False
    parent: int | None = None
    external_parent: bytes | None = None
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    padding_xattrs: int = 0  # big xattrs, to make a chain of several pages
    extra_invalid_flags: int = 0
    blob_id: int = 0
    pages: list[int] = field(default_factory=list)  # md pages of its chain
    extent_pages: dict[int, int] = field(default_factory=dict)  # slot -> md page
    clusters: dict[int, int] = field(default_factory=dict)  # blob cluster -> device cluster

    @property
    def allocated_count(self) -> int:
        return len(self.clusters) if self.thin else self.num_clusters


class Image:
    """``md_len`` md pages on a device of ``size`` bytes. ``write`` lays it
    out; ``clean`` writes the masks and clean = 1, else clean = 0 and the
    masks are left as they were (stale, or zero)."""

    def __init__(
        self,
        path: Path,
        *,
        size: int = 64 << 20,
        cluster_size: int = 1 << 20,
        md_len: int | None = None,
        lvs_name: str = "disk-1",
        lvs_uuid: str | None = None,
        version: int = 3,
    ) -> None:
        self.path = path
        self.size = size
        self.cluster_size = cluster_size
        self.total_clusters = size // cluster_size
        self.md_len = md_len if md_len is not None else self.total_clusters
        self.version = version
        self.lvs_name = lvs_name
        self.lvs_uuid = lvs_uuid or str(uuidlib.uuid4())

        def mask_pages(bits: int) -> int:
            return -(-(5 + -(-bits // 8)) // PAGE)

        self.upm = (1, mask_pages(self.md_len))
        self.ucm = (self.upm[0] + self.upm[1], mask_pages(self.total_clusters))
        ucm_reserved = max(mask_pages(self.md_len), self.ucm[1])
        self.ubm = (self.ucm[0] + ucm_reserved, mask_pages(self.md_len))
        self.md_start = self.ubm[0] + self.ubm[1]
        md_clusters = -(-(self.md_start + self.md_len) * PAGE // cluster_size)
        self.md_clusters = md_clusters
        self.used_clusters: set[int] = set(range(md_clusters))
        self.used_pages: set[int] = set()
        self.pages: dict[int, bytes] = {}
        self.blobs: list[Blob] = []
        self._written: set[int] = set()
        self.super_blob = self._add(Blob(None, 0, set()), lvs=True)

    # -- allocation, lowest free first ------------------------------------------------

    def _page(self) -> int:
        i = next(i for i in range(self.md_len) if i not in self.used_pages)
        self.used_pages.add(i)
        return i

    def _cluster(self) -> int:
        c = self.md_clusters
        while c in self.used_clusters:
            c += 1
        assert c < self.total_clusters, "the image is full"
        self.used_clusters.add(c)
        return c

    def add(self, blob: Blob) -> Blob:
        self._add(blob, lvs=False)
        return blob

    def _add(self, blob: Blob, lvs: bool) -> Blob:
        blob.blob_id = (1 << 32) | self._page()
        blob.pages = [blob.blob_id & INVALID]
        wanted = set(blob.allocated) if blob.thin else set(range(blob.num_clusters))
        for c in sorted(wanted):
            assert c < blob.num_clusters
            blob.clusters[c] = self._cluster()
        self.blobs.append(blob)
        self._serialize(blob, lvs)
        return blob

    def update(self, blob: Blob, allocated: set[int]) -> list[tuple[int, bytes]]:
        """Give ``blob`` the clusters ``allocated``; the page writes, in the
        order SPDK makes them (blobstore.c:2039-2145, 2316-2354): extent
        pages, the new chain in pages that were free, the first page, then
        the old chain zeroed. The image itself changes only by ``apply``."""
        old_chain = blob.pages[1:]
        for c in sorted(allocated - set(blob.clusters)):
            blob.clusters[c] = self._cluster()
        blob.allocated = set(allocated)
        blob.pages = blob.pages[:1]
        self._serialize(blob, lvs=False)
        writes = [(ep, self.pages[ep]) for ep in blob.extent_pages.values()]
        writes += [(p, self.pages[p]) for p in blob.pages[1:]]
        writes.append((blob.pages[0], self.pages[blob.pages[0]]))
        for p in old_chain:
            self.used_pages.discard(p)
            self.pages.pop(p, None)
            writes.append((p, bytes(PAGE)))
        return writes

    def delete(self, blob: Blob) -> list[tuple[int, bytes]]:
        """Remove ``blob``: its pages zeroed, first page first
        (blobstore.c:2039-2080 zeroes the chain and the first page together)."""
        self.blobs.remove(blob)
        writes = []
        for p in [*blob.pages, *blob.extent_pages.values()]:
            self.used_pages.discard(p)
            self.pages.pop(p, None)
            writes.append((p, bytes(PAGE)))
        for c in blob.clusters.values():
            self.used_clusters.discard(c)
        return writes

    def apply(self, writes: list[tuple[int, bytes]]) -> None:
        with open(self.path, "r+b") as f:
            for index, data in writes:
                f.seek(self.md_offset(index))
                f.write(data)

    # -- serialization ----------------------------------------------------------------

    def _serialize(self, blob: Blob, lvs: bool) -> None:
        invalid = (THIN if blob.thin else 0) | blob.extra_invalid_flags
        descs = []
        xattrs = []
        if lvs:
            xattrs = [xattr("uuid", self.lvs_uuid.encode() + b"\0"), xattr("name", self.lvs_name.encode() + b"\0")]
        elif blob.name is not None:
            xattrs = [xattr("name", blob.name.encode().ljust(64, b"\0")), xattr("uuid", blob.uuid.encode() + b"\0")]
        xattrs += [xattr(f"pad{i}", bytes([i + 1]) * 3000) for i in range(blob.padding_xattrs)]
        internal = []
        if blob.parent is not None:
            internal.append(xattr("SNAP", struct.pack("<Q", blob.parent), internal=True))
        if blob.external_parent is not None:
            internal.append(xattr("EXTSNAP", blob.external_parent, internal=True))
            invalid |= ESNAP
        if internal:
            invalid |= INTERNAL
        if blob.extent_table:
            invalid |= EXTENT_TABLE
        data_ro = 1 if blob.read_only else 0
        descs.append(desc(3, struct.pack("<QQQ", invalid, data_ro, 0)))
        descs += xattrs + internal
        if blob.extent_table:
            descs += self._extent_table(blob)
        elif blob.num_clusters:
            descs += self._rle(blob)
        # Pack into pages: a descriptor that does not fit starts a new page.
        bodies: list[bytearray] = [bytearray()]
        for d in descs:
            if len(bodies[-1]) + len(d) > 4072:
                bodies.append(bytearray())
            bodies[-1] += d
        while len(blob.pages) < len(bodies):
            blob.pages.append(self._page())
        for seq, body in enumerate(bodies):
            page = bytearray(PAGE)
            struct.pack_into("<QI", page, 0, blob.blob_id, seq)
            page[16 : 16 + len(body)] = body
            nxt = blob.pages[seq + 1] if seq + 1 < len(bodies) else INVALID
            struct.pack_into("<I", page, PAGE - 8, nxt)
            self.pages[blob.pages[seq]] = seal(page)

    def _extent_table(self, blob: Blob) -> list[bytes]:
        slots = -(-blob.num_clusters // EXTENTS_PER_EP)
        entries: list[tuple[int, int]] = []
        for slot in range(slots):
            span = range(slot * EXTENTS_PER_EP, min((slot + 1) * EXTENTS_PER_EP, blob.num_clusters))
            if any(c in blob.clusters for c in span):
                if slot not in blob.extent_pages:
                    blob.extent_pages[slot] = self._page()
                ep = blob.extent_pages[slot]
                page = bytearray(PAGE)
                struct.pack_into("<QI", page, 0, blob.blob_id, 0)
                body = struct.pack("<I", span.start) + b"".join(
                    struct.pack("<I", blob.clusters.get(c, 0)) for c in span
                )
                page[16 : 16 + 5 + len(body)] = desc(6, body)
                struct.pack_into("<I", page, PAGE - 8, INVALID)
                self.pages[ep] = seal(page)
                entries.append((ep, 1))
            elif entries and entries[-1][0] == 0:
                entries[-1] = (0, entries[-1][1] + 1)
            else:
                entries.append((0, 1))
        body = struct.pack("<Q", blob.num_clusters) + b"".join(struct.pack("<II", *e) for e in entries)
        return [desc(5, body)]

    def _rle(self, blob: Blob) -> list[bytes]:
        runs: list[list[int]] = []
        for c in range(blob.num_clusters):
            dev = blob.clusters.get(c, 0)
            if runs and ((dev == 0 and runs[-1][0] == 0) or (dev and runs[-1][0] + runs[-1][1] == dev)):
                runs[-1][1] += 1
            else:
                runs.append([dev, 1])
        # At most 400 extents per descriptor, so a fragmented blob spans pages.
        return [desc(1, b"".join(struct.pack("<II", *r) for r in runs[i : i + 400])) for i in range(0, len(runs), 400)]

    # -- the device -------------------------------------------------------------------

    def super_block(self, clean: bool) -> bytearray:
        sb = bytearray(PAGE)
        struct.pack_into(
            "<8sIIIQIIIIIII16sIIQI",
            sb,
            0,
            b"SPDKBLOB",
            self.version,
            PAGE,
            1 if clean else 0,
            self.super_blob.blob_id,
            self.cluster_size,
            *self.upm,
            *self.ucm,
            self.md_start,
            self.md_len,
            b"LVOLSTORE",
            *self.ubm,
            self.size,
            PAGE,
        )
        return sb

    def _mask(self, kind: int, bits: int, members: set[int], pages: int) -> bytes:
        raw = bytearray(pages * PAGE)
        struct.pack_into("<BI", raw, 0, kind, bits)
        for m in members:
            raw[5 + m // 8] |= 1 << (m % 8)
        return bytes(raw)

    def write(self, *, clean: bool = True, masks: bool | None = None) -> None:
        """Lay the image out. ``masks`` (default: ``clean``) writes the
        three masks as they are now."""
        with open(self.path, "r+b" if self.path.exists() else "w+b") as f:
            f.truncate(self.size)
            f.seek(0)
            f.write(seal(self.super_block(clean)))
            if clean if masks is None else masks:
                roots = {b.blob_id & INVALID for b in self.blobs}
                for (start, pages), kind, bits, members in (
                    (self.upm, 0, self.md_len, self.used_pages),
                    (self.ucm, 1, self.total_clusters, self.used_clusters),
                    (self.ubm, 2, self.md_len, roots),
                ):
                    f.seek(start * PAGE)
                    f.write(self._mask(kind, bits, members, pages))
            for index in sorted(self._written - set(self.pages)):
                f.seek(self.md_offset(index))
                f.write(bytes(PAGE))
            for index, data in sorted(self.pages.items()):
                f.seek(self.md_offset(index))
                f.write(data)
            self._written |= set(self.pages)

    def md_offset(self, index: int) -> int:
        return (self.md_start + index) * PAGE

    def poke(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def peek(self, offset: int, length: int = PAGE) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)
