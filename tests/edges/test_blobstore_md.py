"""The blobstore metadata reader on synthetic images (no SPDK): every
descriptor kind, clean and dirty super blocks, a bounded scan, pages caught
mid-rewrite, blobs changed or deleted while read, damage, and devices that
are not blobstores. tests/edges/blobstore_image.py builds the images from
SPDK's documented layout, independently of the reader; test_blobstore_md_spdk
checks the reader against images SPDK itself wrote."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from imd.edges import blobstore_md
from imd.edges.blobstore_md import (
    BlobAllocation,
    BlobstoreError,
    LvstoreAllocation,
    NotABlobstore,
    allocated_bytes,
    crc32c,
    read_allocation,
)
from tests.edges.blobstore_image import PAGE, Blob, Image, seal
from tests.edges.blobstore_image import crc32c as plain_crc32c

MIB = 1 << 20


def by_name(result: LvstoreAllocation) -> dict[str, BlobAllocation]:
    return result.by_name()


def make_image(tmp_path: Path) -> tuple[Image, dict[str, Blob]]:
    """An lvstore with one blob of each kind."""
    img = Image(tmp_path / "disk.img", size=2 << 30)
    blobs = {
        # thin, extent table over 3 extent pages, the middle one unallocated
        "thin-et": img.add(Blob("thin-et", 1200, {0, 5, 511, 1024, 1199})),
        "thick-et": img.add(Blob("thick-et", 10, set(), thin=False)),
        "thin-rle": img.add(Blob("thin-rle", 30, {1, 2, 3, 9, 29}, extent_table=False)),
        "snap-rle": img.add(Blob("snap-rle", 7, set(), thin=False, extent_table=False, read_only=True)),
        "empty-rle": img.add(Blob("empty-rle", 0, set(), extent_table=False)),
        "empty-et": img.add(Blob("empty-et", 0, set())),
    }
    # a clone of the snapshot whose metadata spans three pages
    blobs["clone"] = img.add(Blob("clone", 20, {4, 19}, parent=blobs["snap-rle"].blob_id, padding_xattrs=3))
    blobs["esnap"] = img.add(Blob("esnap", 4, {2}, external_parent=b"0b7a5c4e-ext\0"))
    # fragmented: RLE extents over two chain pages
    blobs["fragmented"] = img.add(Blob("fragmented", 1000, set(range(0, 1000, 2)), extent_table=False))
    return img, blobs


def check_blobs(result: LvstoreAllocation, img: Image, blobs: dict[str, Blob]) -> None:
    found = by_name(result)
    assert set(found) == set(blobs)
    for name, blob in blobs.items():
        got = found[name]
        assert got.error is None, (name, got.error)
        assert got.blob_id == blob.blob_id
        assert got.uuid == blob.uuid
        assert got.thin is blob.thin
        assert got.read_only is blob.read_only
        assert got.extent_table is blob.extent_table
        assert got.num_clusters == blob.num_clusters
        assert got.allocated_clusters == blob.allocated_count, name
        assert got.allocated_bytes == blob.allocated_count * MIB
        assert got.size_bytes == blob.num_clusters * MIB
        assert got.cluster_size == MIB
        assert got.parent_id == blob.parent
    assert found["clone"].parent_id == blobs["snap-rle"].blob_id
    assert found["esnap"].external_parent == "0b7a5c4e-ext"
    assert found["thin-et"].allocated_clusters == 5
    assert found["fragmented"].allocated_clusters == 500
    assert result.lvstore_name == img.lvs_name
    assert result.lvstore_uuid == img.lvs_uuid
    assert result.super_blob_id == img.super_blob.blob_id
    assert result.cluster_size == MIB
    assert result.total_data_clusters == img.total_clusters - img.md_clusters
    assert (result.md_start, result.md_len, result.version, result.bstype) == (img.md_start, img.md_len, 3, "LVOLSTORE")


# -- CRC32C ---------------------------------------------------------------------------------


def test_crc32c_matches_the_reference_and_a_plain_implementation() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = random.Random(7)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 200, 4092):
        zeros_inside = rng.randbytes(n // 3) + bytes(n - n // 3 - n // 5) + rng.randbytes(n // 5)
        for data in (rng.randbytes(n), bytes(n), zeros_inside):
            assert crc32c(data) == plain_crc32c(data), n


# -- reading --------------------------------------------------------------------------------


def test_a_clean_blobstore_is_read_through_its_masks(tmp_path: Path) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=True)
    result = read_allocation(img.path)
    check_blobs(result, img, blobs)
    assert result.clean and result.complete
    assert result.md_pages_scanned == 0
    assert result.direct_io  # tmp_path is on a file system that takes O_DIRECT
    # the used cluster mask agrees with the blobs' own counts
    assert result.used_data_clusters == sum(b.allocated_count for b in blobs.values())


def test_a_dirty_blobstore_is_scanned_and_stale_masks_are_ignored(tmp_path: Path) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=True)  # masks as of now...
    blobs["late"] = img.add(Blob("late", 8, {7}))  # ...then a blob they do not list
    img.write(clean=False, masks=False)
    result = read_allocation(img.path)
    check_blobs(result, img, blobs)
    assert not result.clean and result.complete
    assert result.md_pages_scanned == img.md_len
    assert result.used_data_clusters is None  # the mask is stale


def test_the_scan_of_a_large_md_region_is_bounded_and_says_so(tmp_path: Path) -> None:
    # 16 GiB device: 16384 md pages (64 MiB); a blob made to start far out
    img = Image(tmp_path / "big.img", size=16 << 30)
    img.add(Blob("near", 100, {1}))
    pretend = set(range(img.md_len // 2)) - img.used_pages
    img.used_pages |= pretend  # as if the first half were taken when "far" was made
    img.add(Blob("far", 100, {2}))
    img.used_pages -= pretend
    img.write(clean=False)
    result = read_allocation(img.path, max_md_bytes=4 * MIB)
    assert not result.complete
    assert 0 < result.md_pages_scanned < img.md_len
    assert result.md_pages_scanned * PAGE <= 2 * MIB  # half the budget
    assert [b.name for b in result.blobs] == ["near"]
    # with room for it all, it is found
    whole = read_allocation(img.path, max_md_bytes=2 * img.md_len * PAGE + 4 * MIB)
    assert whole.complete and whole.md_pages_scanned == img.md_len
    assert {b.name for b in whole.blobs} == {"near", "far"}
    assert whole.by_name()["far"].allocated_clusters == 1


def test_allocated_bytes_by_lvol_uuid(tmp_path: Path) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=False)
    assert allocated_bytes(img.path) == {b.uuid: b.allocated_count * MIB for b in blobs.values()}
    assert allocated_bytes(str(img.path), block_size=512) == allocated_bytes(img.path)


@pytest.mark.parametrize("refuses", ["open", "read"])
def test_a_device_refusing_o_direct_is_read_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuses: str
) -> None:
    # Some file systems refuse O_DIRECT (EINVAL) at open, some only at the
    # first read; the kernel here takes it everywhere, so the refusal is
    # made at the two system calls.
    img, blobs = make_image(tmp_path)
    img.write(clean=True)
    real_open, real_preadv = os.open, os.preadv
    refused = []

    def open_(path: str, flags: int, *args: int) -> int:
        if refuses == "open" and flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if refuses == "read" and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(str(offset))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "preadv", preadv)
    result = read_allocation(img.path)
    assert refused
    assert not result.direct_io
    check_blobs(result, img, blobs)


# -- damage and races -----------------------------------------------------------------------


def flip(img: Image, page: int, at: int = 100) -> None:
    offset = img.md_offset(page) + at
    img.poke(offset, bytes([img.peek(offset, 1)[0] ^ 0xFF]))


@pytest.mark.parametrize("clean", [True, False])
@pytest.mark.parametrize("where", ["chain", "extent", "root"])
def test_a_damaged_page_makes_that_blob_unknown_and_only_that_one(tmp_path: Path, clean: bool, where: str) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=clean)
    victim = {"chain": "clone", "extent": "thin-et", "root": "thick-et"}[where]
    blob = blobs[victim]
    if where == "chain":
        page = blob.pages[-1]
    elif where == "extent":
        page = blob.extent_pages[2]
    else:
        page = blob.pages[0]
    flip(img, page, at=200 if where != "root" else 4000)
    result = read_allocation(img.path, retries=2)
    found = {b.blob_id: b for b in result.blobs}
    assert found.keys() == {b.blob_id for b in blobs.values()}
    bad = found[blob.blob_id]
    assert bad.error is not None and "CRC mismatch" in bad.error, bad.error
    assert bad.num_clusters is None and bad.allocated_clusters is None and bad.allocated_bytes is None
    assert bad.name is None  # nothing of it is trusted
    for name, other in blobs.items():
        if name != victim:
            assert found[other.blob_id].error is None
            assert found[other.blob_id].allocated_clusters == other.allocated_count
    assert blob.uuid not in allocated_bytes(img.path)  # unknown, not zero


def test_a_chain_leading_into_another_blobs_page_is_not_merged(tmp_path: Path) -> None:
    # The clone's first page, sealed, but its next page is the fragmented
    # blob's second page: a valid page (CRC, sequence number 1) of another blob.
    img, blobs = make_image(tmp_path)
    img.write(clean=False)
    root = bytearray(img.peek(img.md_offset(blobs["clone"].pages[0])))
    struct.pack_into("<I", root, PAGE - 8, blobs["fragmented"].pages[1])
    img.poke(img.md_offset(blobs["clone"].pages[0]), seal(root))
    found = {b.blob_id: b for b in read_allocation(img.path, retries=1).blobs}
    clone = found[blobs["clone"].blob_id]
    assert clone.error is not None and f"holds blob {blobs['fragmented'].blob_id:#x}" in clone.error
    assert clone.allocated_clusters is None
    assert found[blobs["fragmented"].blob_id].allocated_clusters == 500


def test_extent_pages_written_by_another_blob_count(tmp_path: Path) -> None:
    # A snapshot takes over its origin's extent pages as they are, with the
    # origin's blob id in them (blobstore.c:6252-6264): they are its own.
    img, blobs = make_image(tmp_path)
    snap = blobs["thin-et"]
    for index in snap.extent_pages.values():
        page = bytearray(img.pages[index])
        struct.pack_into("<Q", page, 0, blobs["thick-et"].blob_id)
        img.pages[index] = seal(page)
    img.write(clean=False)
    assert by_name(read_allocation(img.path))["thin-et"].allocated_clusters == 5


def test_an_extent_page_that_is_not_one_makes_the_blob_unknown(tmp_path: Path) -> None:
    # The table points at another blob's chain page (sequence number 1).
    img, blobs = make_image(tmp_path)
    blob = blobs["thin-et"]
    page = bytearray(img.pages[blob.extent_pages[0]])
    struct.pack_into("<I", page, 8, 1)
    img.pages[blob.extent_pages[0]] = seal(page)
    img.write(clean=False)
    found = {b.blob_id: b for b in read_allocation(img.path, retries=1).blobs}
    assert "extent page 0 (md page" in (found[blob.blob_id].error or "")
    assert found[blob.blob_id].allocated_clusters is None


def test_unsupported_blob_flags_make_that_blob_unknown(tmp_path: Path) -> None:
    img = Image(tmp_path / "disk.img", size=256 << 20)
    future = img.add(Blob("future", 4, {1}, extra_invalid_flags=1 << 9))
    img.add(Blob("fine", 4, {1}))
    img.write(clean=True)
    found = read_allocation(img.path).by_name()
    assert found["fine"].allocated_clusters == 1
    assert found["future"].error == "unsupported blob flags 0x200"  # SPDK would not open it either
    assert found["future"].uuid == future.uuid
    assert found["future"].allocated_clusters is None and found["future"].num_clusters is None


def patch_reads(monkeypatch: pytest.MonkeyPatch, hook: Callable[[int, bytes], bytes]) -> list[int]:
    """Every read through ``hook(offset, data)``; returns the offsets read."""
    real = blobstore_md._Device.read
    offsets: list[int] = []

    def read(self: blobstore_md._Device, offset: int, length: int, *, counted: bool = True) -> bytes:
        offsets.append(offset)
        return hook(offset, real(self, offset, length, counted=counted))

    monkeypatch.setattr(blobstore_md._Device, "read", read)
    return offsets


def test_a_page_caught_mid_write_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=True)
    torn_at = img.md_offset(blobs["clone"].pages[1])
    torn = 0

    def hook(offset: int, data: bytes) -> bytes:
        nonlocal torn
        if offset == torn_at and torn < 2:  # half old, half new: the CRC does not match
            torn += 1
            return data[:2048] + bytes(2048)
        return data

    patch_reads(monkeypatch, hook)
    check_blobs(read_allocation(img.path), img, blobs)
    assert torn == 2


def test_a_blob_rewritten_while_its_chain_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=False)
    clone = blobs["clone"]
    old_chain = clone.pages[1]
    update = img.update(clone, {4, 19, 7, 8})  # two more clusters: a new chain, then the first page
    assert old_chain not in clone.pages
    done = False

    def hook(offset: int, data: bytes) -> bytes:
        # The target persists the blob just after we read its old first page.
        nonlocal done
        if offset == img.md_offset(old_chain) and not done:
            done = True
            img.apply(update)
            return img.peek(offset)
        return data

    patch_reads(monkeypatch, hook)
    found = by_name(read_allocation(img.path))
    assert done
    assert found["clone"].error is None
    assert found["clone"].allocated_clusters == 4


def test_a_first_page_changed_under_a_consistent_chain_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The target persists the blob (a new extent page, then its first page)
    # between our first and our second look at the first page: what was
    # read in between is not trusted, the blob is read again.
    img, blobs = make_image(tmp_path)
    img.write(clean=False)
    blob = blobs["thin-et"]
    root_at = img.md_offset(blob.pages[0])
    update = img.update(blob, blob.allocated | {600})  # slot 1 gets an extent page: a new table
    reads_of_root = 0

    def hook(offset: int, data: bytes) -> bytes:
        nonlocal reads_of_root
        if offset == root_at:
            reads_of_root += 1
            if reads_of_root == 2:  # after the extent pages of the first look
                img.apply(update)
                return img.peek(offset)
        return data

    offsets = patch_reads(monkeypatch, hook)
    found = by_name(read_allocation(img.path))
    assert found["thin-et"].allocated_clusters == 6
    assert offsets.count(root_at) >= 3  # read, changed on the second look, read again


def test_a_blob_deleted_while_read_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=False)
    clone = blobs.pop("clone")
    delete = img.delete(clone)

    def hook(offset: int, data: bytes) -> bytes:
        if offset == img.md_offset(clone.pages[1]) and delete:
            img.apply(delete)
            delete.clear()
            return img.peek(offset)
        return data

    patch_reads(monkeypatch, hook)
    result = read_allocation(img.path)
    assert not delete  # it happened
    assert set(by_name(result)) == set(blobs)  # the clone is gone, not an error
    assert all(b.error is None for b in result.blobs)


def test_a_blob_in_a_clean_mask_without_a_first_page_is_unknown(tmp_path: Path) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=True)
    img.poke(img.md_offset(blobs["thick-et"].pages[0]), bytes(PAGE))
    result = read_allocation(img.path)
    (gone,) = [b for b in result.blobs if b.error is not None]
    assert gone.blob_id == blobs["thick-et"].blob_id
    assert "mask lists it" in (gone.error or "")


def test_a_super_block_that_goes_dirty_meanwhile_means_a_second_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img, blobs = make_image(tmp_path)
    img.write(clean=True)
    blobs["late"] = img.add(Blob("late", 8, {7}))  # in memory only, for now
    # The target marks the blobstore dirty and adds a blob while we read.
    changed = False

    def hook(offset: int, data: bytes) -> bytes:
        nonlocal changed
        if offset == img.md_offset(blobs["clone"].pages[0]) and not changed:
            changed = True
            img.write(clean=False, masks=False)
        return data

    patch_reads(monkeypatch, hook)
    result = read_allocation(img.path)
    assert changed
    assert not result.clean
    check_blobs(result, img, blobs)


def test_the_read_budget_bounds_the_blobs_too(tmp_path: Path) -> None:
    # 300 blobs of two page reads each (first page, then it again) do not
    # fit 2 MiB: those past it are unknown, never guessed.
    img = Image(tmp_path / "many.img", size=1 << 30)
    for i in range(300):
        img.add(Blob(f"lv{i}", 1, {0}, extent_table=False))
    img.write(clean=True)
    result = read_allocation(img.path, max_md_bytes=2 * MIB)
    known = [b for b in result.blobs if b.error is None]
    unknown = [b for b in result.blobs if b.error is not None]
    assert known and unknown and len(known) + len(unknown) == 300
    assert all(b.error == "metadata read budget exhausted" and b.allocated_clusters is None for b in unknown)
    assert all(b.allocated_clusters == 1 for b in known)


def test_masks_larger_than_the_budget_raise(tmp_path: Path) -> None:
    # 17 million md pages: the blob id mask alone is over 2 MiB.
    img = Image(tmp_path / "huge.img", size=80 << 30, md_len=17 << 20)
    img.add(Blob("a", 4, {1}))
    img.write(clean=True)
    with pytest.raises(BlobstoreError, match=f"more than {2 * MIB} bytes of metadata"):
        read_allocation(img.path, max_md_bytes=2 * MIB)
    assert read_allocation(img.path, max_md_bytes=16 * MIB).by_name()["a"].allocated_clusters == 1


# -- not a blobstore ------------------------------------------------------------------------


def test_a_device_without_a_blobstore_raises(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(1 << 20))
    noise = tmp_path / "noise.img"
    noise.write_bytes(random.Random(1).randbytes(1 << 20))
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"SPDKBLOB")
    for path in (zeros, noise):
        with pytest.raises(NotABlobstore, match="no SPDKBLOB signature"):
            read_allocation(path)
    with pytest.raises(NotABlobstore, match="smaller than a super block"):
        read_allocation(tiny)
    with pytest.raises(BlobstoreError, match=r"cannot open .*No such file"):
        read_allocation(tmp_path / "missing.img")
    with pytest.raises(BlobstoreError, match="neither a file nor a block device"):
        read_allocation(tmp_path)
    with pytest.raises(NotABlobstore):
        allocated_bytes(zeros)


def edit_super(img: Image, edit: Callable[[bytearray], None], *, reseal: bool = True) -> None:
    sb = bytearray(img.peek(0))
    edit(sb)
    img.poke(0, seal(sb) if reseal else bytes(sb))


@pytest.mark.parametrize(
    ("edit", "reseal", "message"),
    [
        (lambda sb: sb.__setitem__(slice(100, 101), b"\x01"), False, "super block's CRC does not match"),
        (lambda sb: struct.pack_into("<I", sb, 8, 9), True, "unsupported blobstore version 9"),
        (lambda sb: struct.pack_into("<I", sb, 28, 1000), True, "cluster size 1000"),
        (lambda sb: struct.pack_into("<I", sb, 52, 1 << 30), True, "md region .* does not fit"),
        (lambda sb: struct.pack_into("<Q", sb, 80, 1 << 40), True, "blobstore is .* bytes but the device"),
        (lambda sb: struct.pack_into("<I", sb, 76, 1 << 30), True, "a mask does not fit"),
    ],
)
def test_a_damaged_super_block_raises(
    tmp_path: Path, edit: Callable[[bytearray], None], reseal: bool, message: str
) -> None:
    img, _ = make_image(tmp_path)
    img.write(clean=True)
    edit_super(img, edit, reseal=reseal)
    with pytest.raises(BlobstoreError, match=message):
        read_allocation(img.path, retries=1)


def test_a_damaged_mask_raises(tmp_path: Path) -> None:
    img, _ = make_image(tmp_path)
    img.write(clean=True)
    img.poke(img.ubm[0] * PAGE, b"\x07")  # the blob id mask's type
    with pytest.raises(BlobstoreError, match="mask 2 is inconsistent"):
        read_allocation(img.path)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    img, _ = make_image(tmp_path)
    img.write(clean=True)
    with pytest.raises(ValueError, match="block_size"):
        read_allocation(img.path, block_size=1000)
    with pytest.raises(ValueError, match="max_md_bytes"):
        read_allocation(img.path, max_md_bytes=4096)
