"""How many clusters each lvol of an lvstore really holds, read from the
blobstore's own metadata on the device, without SPDK.

SPDK v24.01 reports no allocated-cluster count per lvol, but its blobstore
keeps the allocation on the device the AIO bdev is built on, and writes it
there (the AIO bdev opens its file with O_DIRECT) before it completes the
write that needed it. This module opens that device read-only, with O_DIRECT
into page-aligned buffers where the device allows it (so it sees what the
target wrote, not a stale page cache), and parses the metadata.

The format facts relied on, from SPDK v24.01 (``lib/blob/blobstore.h`` is
"h", ``lib/blob/blobstore.c`` is "c", ``lib/lvol/lvol.c`` is "lvol.c"):

* Everything is little-endian and packed (h:249), in 4 KiB pages counted
  from the start of the device (h:386, h:469-487: a page is 4 KiB whatever
  the device's block size).
* Page 0 is the super block (h:398-427): "SPDKBLOB", version 1..3 (h:246),
  ``clean``, the lvstore's super blob id, cluster size, the used md page /
  used cluster / used blob id masks (start and length in pages), md_start /
  md_len (the metadata region, in pages), bstype, size in bytes, io unit
  size, and a CRC32C in its last 4 bytes. Validation as c:1743-1782.
* Every metadata page, and the super block, carries CRC32C (Castagnoli,
  init and final xor 0xFFFFFFFF) of its first 4092 bytes in its last 4
  (c:25, c:1355-1365).
* A mask (h:251-259) is a byte type, a 32-bit length in bits and the bits,
  bit i in byte i/8 at position i%8 (lib/util/bit_array.c:289-304).
* A metadata page (h:374-385): blob id (64 bits), sequence number, 4072
  bytes of descriptors, ``next`` md page (0xFFFFFFFF: none), CRC. A blob's
  id is 2**32 + the index of its first page in the md region (h:571-590),
  and its pages form a chain with sequence numbers 0, 1, 2, ...
  (c:877-928, c:1582-1668).
* Descriptors (h:261-345), each a type byte and a 32-bit length: padding
  (type 0 and length 0 ends a page), flags (invalid / data_ro / md_ro, 64
  bits each: THIN_PROV 1, INTERNAL_XATTR 2, EXTENT_TABLE 4,
  EXTERNAL_SNAPSHOT 8; data_ro READ_ONLY 1), xattrs and internal xattrs
  (name and value lengths, 16 bits each, then name, then value), EXTENT_RLE
  (pairs of 32-bit first cluster and run length; cluster 0 means not
  allocated), EXTENT_TABLE (64-bit cluster count, then pairs of 32-bit md
  page index and page count; page 0 means a run of unallocated extent
  pages) and EXTENT_PAGE (32-bit first cluster, then one 32-bit cluster
  number per cluster, 0 for not allocated). Parsing as c:606-860.
* An extent page covers 512 clusters (h:391-394); it is a single page
  with sequence number 0, no next, one EXTENT_PAGE descriptor whose first
  cluster is 512 x its slot (c:4361-4398, c:798-803); an unallocated one
  stands for min(512, clusters left) unallocated clusters (c:1555-1570).
  Its blob id is that of the blob that wrote it, not always its owner's: a
  snapshot takes over its origin's extent pages unchanged (c:6252-6264),
  and SPDK does not check that id. Blobs made by v24.01 use extent
  tables (c:253); blobs of older SPDK versions may use RLE: both are read.
* The lvol layer keeps the lvol's name (NUL-padded, up to 64 bytes:
  lvol.c:1126-1141) and UUID (a 36-character string and a NUL) as the
  blob's xattrs ``name`` and ``uuid`` (lvol.c:254, lvol.c:271); the
  lvstore's name and UUID are the same xattrs of the super blob
  (lvol.c:552-553). A clone's or snapshot child's parent is the internal
  xattr ``SNAP``, the parent's 64-bit blob id (h:232, c:6346, c:6438,
  c:7294); an external-snapshot clone has ``EXTSNAP`` instead (h:235).
  A snapshot is data read-only (c:7774-7782); snapshotting a blob moves
  its clusters to the new snapshot and leaves it thin (c:6252, c:6396).

Which blobs exist. The masks on the device are written only when the
blobstore is unloaded cleanly (c:5555-5620, then ``clean`` = 1); the first
metadata change after a load writes ``clean`` = 0 first (c:2445-2500), and
a new blobstore starts with ``clean`` = 0 (c:5337). So:

* ``clean`` (and a v3 blob id mask): the masks are exact, and the blob ids
  are the bits of the used blob id mask. Cheap.
* not clean (the target is running, or died): like SPDK's own recovery
  (c:4712-4734, c:4570-4609) the md region is scanned for first pages (id
  matching the page's index, sequence number 0). Md pages are handed out
  lowest free first (c:2301-2313, c:6009), so in practice they sit at the
  region's start; the scan stops at ``max_md_bytes / 2`` (an lvstore's
  region is one page per cluster, lvol.c:623 and lvol.c:671: 1/256 of the
  disk at 1 MiB clusters) and says so (``complete`` False).

Why reading while the target writes is safe. A blob's first page is
rewritten in place, after the rest of its new chain was written to pages
that were free; its old chain pages are zeroed only after that
(c:2039-2145). An extent page is rewritten in place (c:7910-7949). So a
blob is read as: its first page, its chain (each page's CRC, blob id and
sequence number checked), its extent pages (CRC, sequence number, first
cluster checked), then its first page again, which must be unchanged
(every change of a blob's chain or extent table rewrites it). A page with
a bad CRC (caught mid-write) is read again a few times; a chain that does
not hold together is read again from its first page; a blob that still
cannot be read consistently is reported with ``error`` set and no counts
(never a guess). A blob whose first page is gone by then was deleted
meanwhile and is left out. Counts are as of some moment during the read:
a thin blob's extent page is written before the write that allocated the
cluster completes (c:2549-2611, c:7952-7994). Each blob's counts hold
together; blobs are read one after another, so a sum over blobs taken
while a snapshot is being merged into its clone (c:7261-7330) may count a
moving cluster twice or not at all.

Not supported: blobstores on a device whose logical blocks are larger than
4 KiB, and counting what an external snapshot (esnap clone's parent) holds.

The reads block: run :func:`read_allocation` in a thread from the loop.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterator
from functools import cache

import msgspec

PAGE = 4096
SIGNATURE = b"SPDKBLOB"
VERSIONS = range(1, 4)
BLOBID_HIGH_BIT = 1 << 32
BLOBID_INVALID = (1 << 64) - 1
INVALID_MD_PAGE = 0xFFFFFFFF
EXTENTS_PER_EP = 512
DESCRIPTORS = 4072  # bytes of descriptors in a page: 16-byte header, next and crc after

MASK_USED_PAGES, MASK_USED_CLUSTERS, MASK_USED_BLOBIDS = 0, 1, 2

DESC_PADDING, DESC_EXTENT_RLE, DESC_XATTR, DESC_FLAGS, DESC_XATTR_INTERNAL = 0, 1, 2, 3, 4
DESC_EXTENT_TABLE, DESC_EXTENT_PAGE = 5, 6

THIN_PROV, INTERNAL_XATTR, EXTENT_TABLE, EXTERNAL_SNAPSHOT = 1, 2, 4, 8
KNOWN_INVALID_FLAGS = THIN_PROV | INTERNAL_XATTR | EXTENT_TABLE | EXTERNAL_SNAPSHOT
READ_ONLY = 1

PARENT_XATTR = "SNAP"
EXTERNAL_PARENT_XATTR = "EXTSNAP"

DEFAULT_MAX_MD_BYTES = 32 << 20
DEFAULT_RETRIES = 5
_SCAN_CHUNK = 1 << 20

# signature, version, length, clean, super_blob, cluster_size,
# used_page_mask_start/len, used_cluster_mask_start/len, md_start, md_len,
# bstype, used_blobid_mask_start/len, size, io_unit_size (h:398-427)
_SUPER = struct.Struct("<8sIIIQIIIIIII16sIIQI")
_PAGE_HEAD = struct.Struct("<QI")  # blob id, sequence number
_PAGE_TAIL = struct.Struct("<II")  # next, crc
_DESC = struct.Struct("<BI")
_FLAGS = struct.Struct("<QQQ")
_XATTR = struct.Struct("<HH")
_MASK_HEAD = struct.Struct("<BI")


class BlobstoreError(Exception):
    """The device could not be read as a blobstore (I/O error, a super block
    that stays inconsistent, geometry that does not fit the device)."""


class NotABlobstore(BlobstoreError):
    """The device holds no blobstore: no super block signature."""


class BlobAllocation(msgspec.Struct, frozen=True, kw_only=True):
    """One blob (an lvol, a snapshot or a clone). With ``error`` set the
    blob's metadata could not be read consistently and every count is None:
    unknown, not zero."""

    blob_id: int
    cluster_size: int
    name: str | None = None  # the lvol's name (xattr "name")
    uuid: str | None = None  # the lvol's UUID (xattr "uuid")
    thin: bool | None = None
    read_only: bool | None = None  # snapshots are
    parent_id: int | None = None  # blob id of the snapshot it is a clone/child of
    external_parent: str | None = None  # an esnap clone's external snapshot id
    extent_table: bool | None = None  # extent table + pages, else RLE extents
    num_clusters: int | None = None
    allocated_clusters: int | None = None
    error: str | None = None

    @property
    def allocated_bytes(self) -> int | None:
        return None if self.allocated_clusters is None else self.allocated_clusters * self.cluster_size

    @property
    def size_bytes(self) -> int | None:
        return None if self.num_clusters is None else self.num_clusters * self.cluster_size


class LvstoreAllocation(msgspec.Struct, frozen=True, kw_only=True):
    """Every blob found on the device, but the lvstore's own super blob
    (whose xattrs give ``lvstore_name`` / ``lvstore_uuid``).

    ``clean``: the super block says the blobstore was unloaded cleanly, so
    the blob id mask was used (exact). ``complete``: every place a blob can
    start was looked at; False when a dirty md region was larger than the
    scan's share of ``max_md_bytes`` (a blob whose first page lies past
    ``md_pages_scanned`` would be missing). ``used_data_clusters``: from the
    used cluster mask, only when ``clean`` (else the mask is stale); it
    equals the sum of every blob's allocated clusters."""

    device: str
    version: int
    bstype: str
    cluster_size: int
    total_data_clusters: int
    md_start: int
    md_len: int
    clean: bool
    complete: bool
    md_pages_scanned: int
    super_blob_id: int | None
    lvstore_name: str | None
    lvstore_uuid: str | None
    used_data_clusters: int | None
    direct_io: bool  # read with O_DIRECT (False: the device refused it)
    blobs: list[BlobAllocation]

    def by_uuid(self) -> dict[str, BlobAllocation]:
        return {b.uuid: b for b in self.blobs if b.uuid is not None}

    def by_name(self) -> dict[str, BlobAllocation]:
        return {b.name: b for b in self.blobs if b.name is not None}


# -- CRC32C ---------------------------------------------------------------------------------
#
# Pure Python, as the stack has no CRC32C. Metadata pages are mostly zeros
# (a few hundred bytes of descriptors, then padding), so runs of zeros are
# skipped with the precomputed linear map "append 2**k zero bytes" instead
# of being fed byte by byte; the rest goes eight bytes at a time.

_POLY = 0x82F63B78


def _byte_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_T0 = _byte_table()
_SLICES = [_T0]
for _ in range(7):
    _prev = _SLICES[-1]
    _SLICES.append([(v >> 8) ^ _T0[v & 0xFF] for v in _prev])
_ZERO_RUN = re.compile(rb"\x00{64,}")
_Op = tuple[list[int], list[int], list[int], list[int]]


def _apply(op: _Op, crc: int) -> int:
    return op[0][crc & 0xFF] ^ op[1][(crc >> 8) & 0xFF] ^ op[2][(crc >> 16) & 0xFF] ^ op[3][crc >> 24]


def _one_zero_byte(crc: int) -> int:
    return _T0[crc & 0xFF] ^ (crc >> 8)


@cache
def _zeros_op(log2: int) -> _Op:
    """The (linear) map of the CRC register by 2**log2 zero bytes, as the
    images of each byte of the register."""
    if log2 == 0:
        return _op_from(_one_zero_byte)
    half = _zeros_op(log2 - 1)
    return _op_from(lambda crc: _apply(half, _apply(half, crc)))


def _op_from(f: Callable[[int], int]) -> _Op:
    return (
        [f(b) for b in range(256)],
        [f(b << 8) for b in range(256)],
        [f(b << 16) for b in range(256)],
        [f(b << 24) for b in range(256)],
    )


def _feed_zeros(crc: int, count: int) -> int:
    log2 = 0
    while count:
        if count & 1:
            crc = _apply(_zeros_op(log2), crc)
        count >>= 1
        log2 += 1
    return crc


def _feed(crc: int, data: bytes) -> int:
    n = len(data) // 8
    t0, t1, t2, t3, t4, t5, t6, t7 = _SLICES
    for word in struct.unpack_from(f"<{n}Q", data):
        w = word ^ crc
        crc = (
            t7[w & 0xFF]
            ^ t6[(w >> 8) & 0xFF]
            ^ t5[(w >> 16) & 0xFF]
            ^ t4[(w >> 24) & 0xFF]
            ^ t3[(w >> 32) & 0xFF]
            ^ t2[(w >> 40) & 0xFF]
            ^ t1[(w >> 48) & 0xFF]
            ^ t0[w >> 56]
        )
    for b in data[n * 8 :]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``, as SPDK's ``spdk_crc32c_update`` with
    the blobstore's initial and final 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    pos = 0
    for run in _ZERO_RUN.finditer(data):
        crc = _feed(crc, data[pos : run.start()])
        crc = _feed_zeros(crc, run.end() - run.start())
        pos = run.end()
    crc = _feed(crc, data[pos:])
    return crc ^ 0xFFFFFFFF


def page_crc_ok(page: bytes) -> bool:
    """Whether a 4 KiB page's last 4 bytes are the CRC32C of the rest."""
    (stored,) = struct.unpack_from("<I", page, PAGE - 4)
    return crc32c(page[: PAGE - 4]) == int(stored)


# -- the device -----------------------------------------------------------------------------


class _ReadBudget(Exception):
    pass


class _Device:
    """The device, read-only: O_DIRECT into a page-aligned buffer where the
    device allows it, plain reads where it refuses (tmpfs, some FUSE file
    systems). Every read counts against ``budget`` bytes."""

    def __init__(self, path: str, budget: int) -> None:
        self.path = path
        self.budget = budget
        self.bytes_read = 0
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self.fd = self._open()
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise BlobstoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
            self.direct = False
            try:
                self.fd = self._open()
            except OSError as exc2:
                raise BlobstoreError(f"cannot open {path}: {exc2.strerror or exc2}") from exc2
        try:
            mode = os.fstat(self.fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise BlobstoreError(f"{path} is neither a file nor a block device")
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException as exc:
            os.close(self.fd)
            if isinstance(exc, OSError):
                raise BlobstoreError(f"cannot size {path}: {exc.strerror or exc}") from exc
            raise
        self._buf = mmap.mmap(-1, _SCAN_CHUNK)  # anonymous maps are page-aligned

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if self.direct else 0))

    def close(self) -> None:
        self._buf.close()
        os.close(self.fd)

    @property
    def remaining(self) -> int:
        return self.budget - self.bytes_read

    def read(self, offset: int, length: int, *, counted: bool = True) -> bytes:
        """``length`` bytes at ``offset``, both multiples of 4 KiB (so aligned
        for O_DIRECT on any logical block size up to 4 KiB). ``counted``
        False: outside the budget (the last look at the super block)."""
        assert offset % PAGE == 0 and length % PAGE == 0 and 0 < length <= _SCAN_CHUNK
        if offset + length > self.size:
            raise BlobstoreError(f"{self.path}: metadata at {offset} lies past the end of the device")
        if counted:
            if length > self.remaining:
                raise _ReadBudget
            self.bytes_read += length
        view = memoryview(self._buf)[:length]
        try:
            done = 0
            while done < length:
                try:
                    n = os.preadv(self.fd, [view[done:]], offset + done)
                except OSError as exc:
                    if not (self.direct and exc.errno == errno.EINVAL):
                        raise BlobstoreError(f"{self.path}: read at {offset}: {exc.strerror or exc}") from exc
                    # The file system took the O_DIRECT open but not the read.
                    os.close(self.fd)
                    self.direct = False
                    self.fd = self._open()
                    continue
                if n == 0:
                    raise BlobstoreError(f"{self.path}: short read at {offset}")
                done += n
            return bytes(view)
        finally:
            view.release()

    def page(self, index: int) -> bytes:
        return self.read(index * PAGE, PAGE)


# -- the super block ------------------------------------------------------------------------


class _Super(msgspec.Struct, frozen=True):
    raw: bytes
    version: int
    clean: bool
    super_blob: int
    cluster_size: int
    used_page_mask: tuple[int, int]
    used_cluster_mask: tuple[int, int]
    used_blobid_mask: tuple[int, int]
    md_start: int
    md_len: int
    bstype: str
    size: int

    @property
    def pages_per_cluster(self) -> int:
        return self.cluster_size // PAGE

    @property
    def md_clusters(self) -> int:
        return -(-(self.md_start + self.md_len) // self.pages_per_cluster)

    @property
    def total_clusters(self) -> int:
        return self.size // self.cluster_size


def _read_super(dev: _Device, retries: int) -> _Super:
    if dev.size < PAGE:
        raise NotABlobstore(f"{dev.path} is not a blobstore: {dev.size} bytes, smaller than a super block")
    for attempt in range(retries + 1):
        raw = dev.page(0)
        if raw[:8] != SIGNATURE:
            raise NotABlobstore(f"{dev.path} is not a blobstore: no {SIGNATURE.decode()} signature")
        if page_crc_ok(raw):
            break
        _pause(attempt)  # the target may be rewriting it (clean -> dirty)
    else:
        raise BlobstoreError(f"{dev.path}: the blobstore super block's CRC does not match")
    (
        _sig,
        version,
        _length,
        clean,
        super_blob,
        cluster_size,
        upm_start,
        upm_len,
        ucm_start,
        ucm_len,
        md_start,
        md_len,
        bstype,
        ubm_start,
        ubm_len,
        size,
        _io_unit,
    ) = _SUPER.unpack_from(raw)
    if version not in VERSIONS:
        raise BlobstoreError(f"{dev.path}: unsupported blobstore version {version}")
    if size == 0:  # version 1 kept no size (c:4676-4678)
        size = dev.size
    sb = _Super(
        raw=raw,
        version=version,
        clean=clean == 1,
        super_blob=super_blob,
        cluster_size=cluster_size,
        used_page_mask=(upm_start, upm_len),
        used_cluster_mask=(ucm_start, ucm_len),
        used_blobid_mask=(ubm_start, ubm_len),
        md_start=md_start,
        md_len=md_len,
        bstype=bstype.split(b"\0")[0].decode("ascii", "replace"),
        size=size,
    )
    problem = None
    if cluster_size < PAGE or cluster_size % PAGE:
        problem = f"cluster size {cluster_size} is not a multiple of 4 KiB"
    elif size > dev.size:
        problem = f"the blobstore is {size} bytes but the device only {dev.size}"
    elif md_len == 0 or (md_start + md_len) * PAGE > dev.size:
        problem = f"md region (pages {md_start}+{md_len}) does not fit the device"
    elif any((s + n) * PAGE > dev.size for s, n in (sb.used_page_mask, sb.used_cluster_mask, sb.used_blobid_mask)):
        problem = "a mask does not fit the device"
    if problem:
        raise BlobstoreError(f"{dev.path}: corrupt blobstore super block: {problem}")
    return sb


def _pause(attempt: int) -> None:
    """Between re-reads of something the target is rewriting: a page write
    takes microseconds, so a millisecond or a few is plenty."""
    time.sleep(0.001 * (attempt + 1))


def _read_mask(dev: _Device, where: tuple[int, int], kind: int, bits: int) -> bytes:
    start, pages = where
    if pages == 0:
        raise BlobstoreError(f"{dev.path}: mask {kind} has no pages")
    raw = b"".join(dev.read((start + i) * PAGE, min(_SCAN_CHUNK, (pages - i) * PAGE)) for i in range(0, pages, 256))
    mask_type, length = _MASK_HEAD.unpack_from(raw)
    if mask_type != kind or length < bits or 5 + -(-length // 8) > len(raw):
        raise BlobstoreError(f"{dev.path}: mask {kind} is inconsistent (type {mask_type}, {length} bits)")
    return raw[5 : 5 + -(-bits // 8)]


def _bits(mask: bytes, limit: int) -> Iterator[int]:
    for i, byte in enumerate(mask):
        rest = byte
        while rest:
            low = rest & -rest
            bit = i * 8 + low.bit_length() - 1
            if bit >= limit:
                return
            yield bit
            rest ^= low


def _bit(mask: bytes, index: int) -> bool:
    return bool(mask[index // 8] >> (index % 8) & 1)


# -- one blob -------------------------------------------------------------------------------


class _Retry(Exception):
    """What was read does not hold together (the target changed it
    meanwhile, or it is corrupt): read the blob again from its first page."""


class _Gone(Exception):
    """The blob's first page is no longer a blob's first page: deleted."""


class _Parsed(msgspec.Struct):
    invalid_flags: int = 0
    data_ro_flags: int = 0
    xattrs: dict[str, bytes] = msgspec.field(default_factory=dict)
    internal: dict[str, bytes] = msgspec.field(default_factory=dict)
    rle_total: int = 0
    rle_allocated: int = 0
    rle_found: bool = False
    et_clusters: int | None = None
    et_slots: list[int] = msgspec.field(default_factory=list)  # md page index per 512 clusters, 0: none


def _descriptors(page: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each descriptor of a page, walked as c:606-860."""
    pos = 16
    end = 16 + DESCRIPTORS
    while pos + _DESC.size <= end:
        kind, length = _DESC.unpack_from(page, pos)
        if kind == DESC_PADDING and length == 0:
            return
        body_at = pos + _DESC.size
        if body_at + length > end:
            raise _Retry(f"descriptor of type {kind} overruns its page")
        yield kind, page[body_at : body_at + length]
        pos = body_at + length


def _parse_page(page: bytes, parsed: _Parsed) -> None:
    for kind, body in _descriptors(page):
        if kind == DESC_FLAGS:
            if len(body) != _FLAGS.size:
                raise _Retry("flags descriptor of the wrong length")
            parsed.invalid_flags, parsed.data_ro_flags, _ = _FLAGS.unpack(body)
        elif kind in (DESC_XATTR, DESC_XATTR_INTERNAL):
            if len(body) < _XATTR.size:
                raise _Retry("short xattr descriptor")
            name_len, value_len = _XATTR.unpack_from(body)
            if len(body) != _XATTR.size + name_len + value_len:
                raise _Retry("xattr descriptor of the wrong length")
            name = body[4 : 4 + name_len].decode("utf-8", "replace")
            (parsed.internal if kind == DESC_XATTR_INTERNAL else parsed.xattrs)[name] = body[4 + name_len :]
        elif kind == DESC_EXTENT_RLE:
            if parsed.et_clusters is not None or not body or len(body) % 8:
                raise _Retry("bad extent RLE descriptor")
            parsed.rle_found = True
            for first, run in struct.iter_unpack("<II", body):
                parsed.rle_total += run
                if first:
                    parsed.rle_allocated += run
        elif kind == DESC_EXTENT_TABLE:
            if parsed.rle_found or len(body) < 8 or (len(body) - 8) % 8:
                raise _Retry("bad extent table descriptor")
            (clusters,) = struct.unpack_from("<Q", body)
            if parsed.et_clusters is not None and parsed.et_clusters != clusters:
                raise _Retry("extent table descriptors disagree on the cluster count")
            parsed.et_clusters = clusters
            for page_idx, count in struct.iter_unpack("<II", body[8:]):
                if page_idx:
                    if count != 1:
                        raise _Retry("extent table entry of an allocated page with a count")
                    parsed.et_slots.append(page_idx)
                else:
                    parsed.et_slots.extend([0] * count)
        # EXTENT_PAGE belongs in extent pages only; unknown types are skipped,
        # as SPDK does (c:842-849): a feature that matters sets an invalid flag.


def _check_chain_page(page: bytes, blob_id: int, seq: int, what: str) -> int:
    page_id, page_seq = _PAGE_HEAD.unpack_from(page)
    if not page_crc_ok(page):
        raise _Retry(f"{what}: CRC mismatch")
    if page_id != blob_id or page_seq != seq:
        raise _Retry(f"{what}: holds blob {page_id:#x} sequence {page_seq}")
    next_page, _ = _PAGE_TAIL.unpack_from(page, PAGE - 8)
    return int(next_page)


class _BlobReader:
    def __init__(self, dev: _Device, sb: _Super, retries: int, used_pages: bytes | None) -> None:
        self.dev = dev
        self.sb = sb
        self.retries = retries
        self.used_pages = used_pages  # when clean: every page read must be marked used

    def md_page(self, index: int, what: str) -> bytes:
        if index >= self.sb.md_len:
            raise _Retry(f"{what}: md page {index} is past the md region")
        if self.used_pages is not None and not _bit(self.used_pages, index):
            raise _Retry(f"{what}: md page {index} is not marked used")
        return self.dev.page(self.sb.md_start + index)

    def stable_page(self, index: int, what: str) -> bytes:
        """A page whose CRC holds, re-read a few times if it does not (caught
        mid-write). A zero page is returned as it is (freed meanwhile)."""
        page = self.md_page(index, what)
        for attempt in range(self.retries):
            if page_crc_ok(page) or not any(page):
                break
            _pause(attempt)
            page = self.md_page(index, what)
        return page

    def read(self, blob_id: int) -> BlobAllocation | None:
        last = "unknown"
        for attempt in range(self.retries + 1):
            try:
                return self._read_once(blob_id)
            except _Gone:
                if self.used_pages is None:
                    return None  # deleted since the scan found it
                # Clean: the mask is exact, so this is damage (or the target
                # went dirty meanwhile, which the caller sees and reads again).
                return BlobAllocation(
                    blob_id=blob_id,
                    cluster_size=self.sb.cluster_size,
                    error="the used blob id mask lists it but its first page holds no blob",
                )
            except _Retry as exc:
                last = str(exc)
                _pause(attempt)
            except _ReadBudget:
                return BlobAllocation(
                    blob_id=blob_id, cluster_size=self.sb.cluster_size, error="metadata read budget exhausted"
                )
        return BlobAllocation(
            blob_id=blob_id,
            cluster_size=self.sb.cluster_size,
            error=f"metadata not consistent after {self.retries + 1} reads: {last}",
        )

    def _read_once(self, blob_id: int) -> BlobAllocation:
        first = blob_id & 0xFFFFFFFF
        root = self.stable_page(first, "first page")
        page_id, page_seq = _PAGE_HEAD.unpack_from(root)
        if page_id != blob_id or page_seq != 0:
            raise _Gone
        parsed = _Parsed()
        next_page = _check_chain_page(root, blob_id, 0, "first page")
        _parse_page(root, parsed)
        seen = {first}
        seq = 1
        while next_page != INVALID_MD_PAGE:
            if next_page in seen:
                raise _Retry(f"chain page {next_page} repeats")
            seen.add(next_page)
            page = self.stable_page(next_page, f"chain page {seq}")
            following = _check_chain_page(page, blob_id, seq, f"chain page {seq} (md page {next_page})")
            _parse_page(page, parsed)
            next_page, seq = following, seq + 1
        allocated, total = self._clusters(blob_id, parsed)
        if self.stable_page(first, "first page") != root:
            raise _Retry("first page changed while its chain was read")
        return self._result(blob_id, parsed, total, allocated)

    def _clusters(self, blob_id: int, parsed: _Parsed) -> tuple[int, int]:
        if parsed.et_clusters is None:
            return parsed.rle_allocated, parsed.rle_total
        total = parsed.et_clusters
        if len(parsed.et_slots) != -(-total // EXTENTS_PER_EP):
            raise _Retry(f"extent table has {len(parsed.et_slots)} pages for {total} clusters")
        allocated = 0
        for slot, index in enumerate(parsed.et_slots):
            if not index:
                continue
            what = f"extent page {slot} (md page {index})"
            page = self.stable_page(index, what)
            if not page_crc_ok(page):
                raise _Retry(f"{what}: CRC mismatch")
            # Its blob id is not checked: a snapshot takes over its origin's
            # extent pages as they are (c:6252-6264), so they keep the id
            # of the blob that wrote them; SPDK does not check it either.
            # An extent page freed and reused meanwhile shows as a changed
            # first page.
            _, ep_seq = _PAGE_HEAD.unpack_from(page)
            (ep_next,) = struct.unpack_from("<I", page, PAGE - 8)
            if ep_seq != 0 or ep_next != INVALID_MD_PAGE:
                raise _Retry(f"{what} is not an extent page (sequence {ep_seq}, next {ep_next})")
            descriptors = list(_descriptors(page))
            if len(descriptors) != 1 or descriptors[0][0] != DESC_EXTENT_PAGE:
                raise _Retry(f"{what} is not a single EXTENT_PAGE descriptor")
            body = descriptors[0][1]
            if len(body) <= 4 or len(body) % 4:
                raise _Retry(f"{what}: bad EXTENT_PAGE length")
            (start,) = struct.unpack_from("<I", body)
            if start != slot * EXTENTS_PER_EP:
                raise _Retry(f"{what} starts at cluster {start}")
            count = min((len(body) - 4) // 4, total - start)
            allocated += sum(1 for c in struct.unpack_from(f"<{count}I", body, 4) if c)
        return allocated, total

    def _result(self, blob_id: int, parsed: _Parsed, total: int, allocated: int) -> BlobAllocation:
        cluster_size = self.sb.cluster_size
        unknown = parsed.invalid_flags & ~KNOWN_INVALID_FLAGS
        if unknown:
            # SPDK itself will not open such a blob (c:629-632).
            return BlobAllocation(
                blob_id=blob_id,
                cluster_size=cluster_size,
                name=_text(parsed.xattrs.get("name")),
                uuid=_uuid(parsed.xattrs.get("uuid")),
                error=f"unsupported blob flags {unknown:#x}",
            )
        parent = parsed.internal.get(PARENT_XATTR)
        parent_id = struct.unpack("<Q", parent)[0] if parent is not None and len(parent) == 8 else None
        external = parsed.internal.get(EXTERNAL_PARENT_XATTR)
        return BlobAllocation(
            blob_id=blob_id,
            cluster_size=cluster_size,
            name=_text(parsed.xattrs.get("name")),
            uuid=_uuid(parsed.xattrs.get("uuid")),
            thin=bool(parsed.invalid_flags & THIN_PROV),
            read_only=bool(parsed.data_ro_flags & READ_ONLY),
            parent_id=parent_id,
            external_parent=_text(external),
            extent_table=parsed.et_clusters is not None,
            num_clusters=total,
            allocated_clusters=allocated,
        )


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.split(b"\0")[0].decode("utf-8", "replace")


def _uuid(value: bytes | None) -> str | None:
    text = _text(value)
    return text if text is not None and len(text) == 36 else None


# -- the lvstore ----------------------------------------------------------------------------


def _scan_first_pages(dev: _Device, sb: _Super, limit_bytes: int) -> tuple[list[int], int]:
    """Blob ids whose first page lies in the md region's first pages (all of
    them if ``limit_bytes`` allows), as SPDK's recovery finds them
    (c:4401-4419): id = 2**32 + the page's index, sequence number 0. The
    pages themselves are checked when each blob is read."""
    pages = min(sb.md_len, max(limit_bytes // PAGE, 1))
    found = []
    for first in range(0, pages, _SCAN_CHUNK // PAGE):
        count = min(_SCAN_CHUNK // PAGE, pages - first)
        chunk = dev.read((sb.md_start + first) * PAGE, count * PAGE)
        for i in range(count):
            page_id, seq = _PAGE_HEAD.unpack_from(chunk, i * PAGE)
            if page_id == BLOBID_HIGH_BIT | (first + i) and seq == 0:
                found.append(page_id)
    return found, pages


def read_allocation(
    device_path: str | os.PathLike[str],
    *,
    block_size: int = 4096,
    max_md_bytes: int = DEFAULT_MAX_MD_BYTES,
    retries: int = DEFAULT_RETRIES,
) -> LvstoreAllocation:
    """The allocation of every blob of the lvstore on ``device_path`` (a file
    or block device an AIO bdev is built on), read while the target runs or
    not. ``block_size``: the device's logical block size (512..4096; every
    read is whole 4 KiB pages, aligned for O_DIRECT). ``max_md_bytes``
    bounds what is read (a dirty md region is scanned up to half of it).
    ``retries``: re-reads of a page or a blob caught mid-rewrite.

    Raises NotABlobstore for a device without a blobstore, BlobstoreError
    for one that cannot be read; a blob that cannot be read consistently is
    returned with ``error`` set instead."""
    if block_size not in (512, 1024, 2048, 4096):
        raise ValueError(f"block_size must be 512, 1024, 2048 or 4096, not {block_size}")
    if max_md_bytes < 2 * _SCAN_CHUNK:
        raise ValueError(f"max_md_bytes must be at least {2 * _SCAN_CHUNK}")
    dev = _Device(os.fspath(device_path), max_md_bytes)
    try:
        for attempt in range(retries + 1):
            result = _read_lvstore(dev, retries)
            if result is not None:
                return result
            _pause(attempt)
        # The super block kept changing under us (a load/unload cycle per read).
        raise BlobstoreError(f"{dev.path}: the blobstore super block kept changing while it was read")
    except _ReadBudget:
        raise BlobstoreError(f"{dev.path}: more than {max_md_bytes} bytes of metadata") from None
    finally:
        dev.close()


def _read_lvstore(dev: _Device, retries: int) -> LvstoreAllocation | None:
    sb = _read_super(dev, retries)
    used_pages = None
    used_data_clusters = None
    scanned = 0
    if sb.clean and sb.version >= 3 and sb.used_blobid_mask[1]:
        blobids = _read_mask(dev, sb.used_blobid_mask, MASK_USED_BLOBIDS, sb.md_len)
        used_pages = _read_mask(dev, sb.used_page_mask, MASK_USED_PAGES, sb.md_len)
        used_clusters = _read_mask(dev, sb.used_cluster_mask, MASK_USED_CLUSTERS, sb.total_clusters)
        used_data_clusters = sum(1 for _ in _bits(used_clusters, sb.total_clusters)) - sb.md_clusters
        ids = [BLOBID_HIGH_BIT | i for i in _bits(blobids, sb.md_len)]
        complete = True
    else:
        ids, scanned = _scan_first_pages(dev, sb, dev.remaining // 2)
        complete = scanned == sb.md_len
    reader = _BlobReader(dev, sb, retries, used_pages)
    blobs = []
    lvs_name = lvs_uuid = None
    super_blob = sb.super_blob if sb.super_blob != BLOBID_INVALID else None
    for blob_id in ids:
        if blob_id == super_blob:
            lvs = reader.read(blob_id)
            if lvs is not None:
                lvs_name, lvs_uuid = lvs.name, lvs.uuid
            continue
        blob = reader.read(blob_id)
        if blob is not None:
            blobs.append(blob)
    # A super block that changed meanwhile (dirty after clean: the masks may
    # be stale; clean after dirty: unloaded) means: read again.
    if dev.read(0, PAGE, counted=False) != sb.raw:
        return None
    return LvstoreAllocation(
        device=dev.path,
        version=sb.version,
        bstype=sb.bstype,
        cluster_size=sb.cluster_size,
        total_data_clusters=sb.total_clusters - sb.md_clusters,
        md_start=sb.md_start,
        md_len=sb.md_len,
        clean=sb.clean,
        complete=complete,
        md_pages_scanned=scanned,
        super_blob_id=super_blob,
        lvstore_name=lvs_name,
        lvstore_uuid=lvs_uuid,
        used_data_clusters=used_data_clusters,
        direct_io=dev.direct,
        blobs=blobs,
    )


def allocated_bytes(device_path: str | os.PathLike[str], *, block_size: int = 4096) -> dict[str, int]:
    """Lvol UUID -> bytes it holds, for every lvol whose metadata was read
    consistently (one that could not be is absent: unknown, not zero)."""
    result = read_allocation(device_path, block_size=block_size)
    return {b.uuid: b.allocated_bytes for b in result.blobs if b.uuid is not None and b.allocated_bytes is not None}
