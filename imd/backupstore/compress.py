"""Block compression as Longhorn's ``util.CompressData`` and
``util.DecompressAndVerify`` do it.

- ``lz4``: the LZ4 *frame* format, as pierrec/lz4/v4's ``NewWriter``
  writes it: independent blocks of up to 4 MiB, a content checksum, no
  block checksums, no content size. liblz4 (PyPI ``lz4``) writes the same
  header; its compressed bytes differ from the Go encoder's, and either
  reads the other's (blocks are named by the checksum of their
  *uncompressed* content, so the names agree).
- ``gzip``: a single gzip member, default level, mtime 0, OS byte 255 (the
  header Go's compress/gzip writes).
- ``none``: the block as it is.

These run in worker threads: liblz4, zlib and hashlib release the GIL.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import lz4.frame

from imd.backupstore.format import checksum

Buffer = bytes | bytearray | memoryview


# The frame descriptor pierrec/lz4 writes: FLG 0x64 (version 1, independent
# blocks, content checksum), BD 0x70 (4 MiB blocks), and its checksum.
_LZ4_DESCRIPTOR = b"\x64\x70\xb9"
# compress/gzip's header: no name, mtime 0, XFL 0 (default level), OS 255.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _lz4(data: Buffer) -> bytes:
    blob: bytes = lz4.frame.compress(
        data,
        compression_level=0,
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        content_checksum=True,
        block_checksum=False,
        store_size=False,
    )
    if blob[4:7] != _LZ4_DESCRIPTOR and blob[4] == _LZ4_DESCRIPTOR[0]:
        # liblz4 declares a smaller maximum block size for a small input
        # (its one-shot call is 6x faster than its streaming one, which
        # would not); its blocks fit the larger one, so say 4 MiB as Go does.
        blob = blob[:4] + _LZ4_DESCRIPTOR + blob[7:]
    return blob


def _gzip(data: Buffer) -> bytes:
    body = zlib.compress(data, 6, wbits=-15)  # raw deflate; releases the GIL
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + body + trailer


def compress(method: str, data: Buffer) -> Buffer:
    if method == "lz4":
        return _lz4(data)
    if method == "gzip":
        return _gzip(data)
    if method == "none":
        return data
    raise ValueError(f"unsupported compression method {method!r}")


class CorruptBlock(Exception):
    """A block that does not decompress, or whose content is not what its
    checksum says."""


def _decompress(method: str, blob: Buffer) -> bytes:
    if method == "lz4":
        return lz4.frame.decompress(blob)  # type: ignore[no-any-return]
    if method == "gzip":
        return gzip.decompress(blob)
    if method == "none":
        return bytes(blob)
    raise ValueError(f"unsupported compression method {method!r}")


def decompress_and_verify(method: str, blob: Buffer, expected: str, block_size: int) -> bytes:
    """The block's content, verified against its checksum. As
    ``DecompressAndVerifyWithFallback`` does, a block that is not in the
    stated format but in the other one (gzip for lz4 or back) is read as
    that one: the checksum still decides."""
    try:
        data = _decompress(method, blob)
    except (RuntimeError, OSError, EOFError, zlib.error) as exc:
        other = {"lz4": "gzip", "gzip": "lz4"}.get(method)
        if other is None:
            raise CorruptBlock(f"cannot decompress ({method}): {exc}") from None
        try:
            data = _decompress(other, blob)
        except (RuntimeError, OSError, EOFError, zlib.error):
            raise CorruptBlock(f"cannot decompress ({method}): {exc}") from None
    if len(data) != block_size:
        raise CorruptBlock(f"{len(data)} bytes after decompression, the block size is {block_size}")
    actual = checksum(data)
    if actual != expected:
        raise CorruptBlock(f"checksum mismatch: content hashes to {actual}")
    return data
