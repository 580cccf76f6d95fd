"""The format, against golden values: bytes Longhorn's library (Go's
encoding/json on its structs) wrote for the same values, checksums and
paths it computed, the lz4 frame header pierrec/lz4 writes."""

from __future__ import annotations

import gzip
import hashlib

import lz4.frame
import pytest

from imd.backupstore import compress as bscompress
from imd.backupstore import format as fmt
from imd.errors import InvalidArgument

# Written by Longhorn's library (vfs driver) for volume "vol-1", labels
# {"a": "b", "k": "<v&>\u2028"}, blocks at 0 and 4 MiB.
GO_VOLUME_CFG = (
    b'{"Name":"vol-1","Size":"8388608","Labels":{"a":"b","k":"\\u003cv\\u0026\\u003e\\u2028"},'
    b'"CreatedTime":"2026-12-03T09:54:07Z","LastBackupName":"backup-aaaa","LastBackupAt":"2026-12-03T09:54:07Z",'
    b'"BlockCount":"2","BackingImageName":"\\"\\"","BackingImageChecksum":"\\"\\"","CompressionMethod":"\\"lz4\\"",'
    b'"StorageClassName":"\\"\\"","DataEngine":"\\"v2\\""}'
)
GO_BACKUP_CFG = (
    b'{"Name":"backup-aaaa","VolumeName":"vol-1","SnapshotName":"snap1","SnapshotCreatedAt":"2026-12-03T09:54:07Z",'
    b'"CreatedTime":"2026-12-03T09:54:09Z","Size":"4194304","Labels":{"a":"b","k":"\\u003cv\\u0026\\u003e\\u2028"},'
    b'"Parameters":null,"IsIncremental":false,"CompressionMethod":"lz4","NewlyUploadedDataSize":"16637",'
    b'"ReUploadedDataSize":"0","ProcessingBlocks":{},"Blocks":[{"Offset":0,"BlockChecksum":'
    b'"8730fca6932294c4c7ead08320f224bb4cba27bff8beac6cfc7bca397c1e9d9c"},{"Offset":4194304,"BlockChecksum":'
    b'"2dcb782880c5d7f0a4586a1f8a10475e3788344417204631e001aec047fe2ad9"}],"SingleFile":{"FilePath":""}}'
)
# An incremental backup with parameters (lh-made-lz4's second backup).
GO_INCREMENTAL_CFG = (
    b'{"Name":"backup-lz4-2","VolumeName":"lh-made-lz4","SnapshotName":"s2","SnapshotCreatedAt":"2026-12-02T10:00:00Z",'
    b'"CreatedTime":"2026-12-03T10:10:16Z","Size":"65536","Labels":null,"Parameters":{"backup-block-size":"16384"},'
    b'"IsIncremental":true,"CompressionMethod":"lz4","NewlyUploadedDataSize":"16625","ReUploadedDataSize":"0",'
    b'"ProcessingBlocks":null,"Blocks":[{"Offset":0,"BlockChecksum":'
    b'"6eb7f16cf7afcabe9bdea88bdab0469a7937eb715ada9dfd8f428d9d38d86133"},{"Offset":16384,"BlockChecksum":'
    b'"9da91ed11025ac4c0559de8679f9d75bebd4ee1efc07201aa510b21d122013bf"},{"Offset":32768,"BlockChecksum":'
    b'"65328fe50b34cc719febeb4a5c401ccf2531ee3b0bfdaa1b0750a4fc0433e64c"},{"Offset":49152,"BlockChecksum":'
    b'"fafd5f7ae8bae0cc8e2cb3bc096531c7a57f269642eb41c6ab4289af6260b3ef"}],"SingleFile":{"FilePath":""}}'
)
LABELS = {"k": "<v&>\u2028", "a": "b"}


def test_checksum_is_sha512_hex_truncated_to_64() -> None:
    assert fmt.checksum(b"vol-1") == hashlib.sha512(b"vol-1").hexdigest()[:64]
    assert len(fmt.checksum(b"")) == 64
    # A 16 KiB zero block, as the library named it.
    assert fmt.checksum(bytes(16384)) == "6eb7f16cf7afcabe9bdea88bdab0469a7937eb715ada9dfd8f428d9d38d86133"


def test_paths_are_longhorns() -> None:
    assert fmt.volume_dir("vol-1") == "backupstore/volumes/5e/23/vol-1"
    assert fmt.volume_cfg_path("lh-made-lz4") == "backupstore/volumes/4f/1f/lh-made-lz4/volume.cfg"
    assert fmt.backup_cfg_path("vol-1", "backup-aaaa") == (
        "backupstore/volumes/5e/23/vol-1/backups/backup_backup-aaaa.cfg"
    )
    digest = "8730fca6932294c4c7ead08320f224bb4cba27bff8beac6cfc7bca397c1e9d9c"
    assert fmt.block_path("vol-1", digest) == f"backupstore/volumes/5e/23/vol-1/blocks/87/30/{digest}.blk"
    assert fmt.lock_path("vol-1", "lock-0123456789abcdef") == (
        "backupstore/volumes/5e/23/vol-1/locks/lock-0123456789abcdef.lck"
    )


def test_volume_cfg_is_byte_for_byte_gos() -> None:
    volume = fmt.VolumeConfig(
        name="vol-1",
        size=8388608,
        labels=LABELS,
        created_time="2026-12-03T09:54:07Z",
        last_backup_name="backup-aaaa",
        last_backup_at="2026-12-03T09:54:07Z",
        block_count=2,
        compression_method="lz4",
        data_engine="v2",
    )
    assert fmt.encode_volume(volume) == GO_VOLUME_CFG
    assert fmt.decode_volume(GO_VOLUME_CFG) == volume


def test_backup_cfg_is_byte_for_byte_gos() -> None:
    backup = fmt.BackupConfig(
        name="backup-aaaa",
        volume_name="vol-1",
        snapshot_name="snap1",
        snapshot_created_at="2026-12-03T09:54:07Z",
        created_time="2026-12-03T09:54:09Z",
        size=4194304,
        labels=LABELS,
        is_incremental=False,
        compression_method="lz4",
        newly_uploaded_data_size=16637,
        blocks=[
            fmt.BlockMapping(0, "8730fca6932294c4c7ead08320f224bb4cba27bff8beac6cfc7bca397c1e9d9c"),
            fmt.BlockMapping(4194304, "2dcb782880c5d7f0a4586a1f8a10475e3788344417204631e001aec047fe2ad9"),
        ],
    )
    assert fmt.encode_backup(backup) == GO_BACKUP_CFG
    assert fmt.decode_backup(GO_BACKUP_CFG) == backup


def test_incremental_backup_cfg_round_trips_byte_for_byte() -> None:
    decoded = fmt.decode_backup(GO_INCREMENTAL_CFG)
    assert decoded.is_incremental
    assert decoded.parameters == {"backup-block-size": "16384"}
    assert fmt.block_size_of(decoded.parameters) == 16384
    assert [b.offset for b in decoded.blocks] == [0, 16384, 32768, 49152]
    assert fmt.encode_backup(decoded) == GO_INCREMENTAL_CFG


def test_a_backup_without_blocks_omits_them_and_an_in_progress_one_has_no_time() -> None:
    backup = fmt.BackupConfig(name="backup-x", volume_name="vol-1", compression_method="lz4")
    encoded = fmt.encode_backup(backup)
    assert b'"Blocks"' not in encoded
    assert fmt.decode_backup(encoded).in_progress


def test_lock_file() -> None:
    lock = fmt.LockFile("lock-0123456789abcdef", 2, True)
    encoded = fmt.encode_lock(lock)
    assert encoded == b'{"Name":"lock-0123456789abcdef","Type":2,"Acquired":true}'
    assert fmt.decode_lock(encoded) == lock


def test_legacy_configs_read_as_longhorn_reads_them() -> None:
    # No compression method: gzip (the legacy default); no data engine: v1.
    volume = fmt.decode_volume(b'{"Name":"old","Size":"4096","BlockCount":"1"}')
    assert (volume.compression_method, volume.data_engine, volume.size) == ("gzip", "v1", 4096)
    assert fmt.decode_backup(b'{"Name":"b-1","VolumeName":"old"}').compression_method == "gzip"
    with pytest.raises(ValueError):
        fmt.decode_volume(b'{"Name":"old","Size":"lots"}')


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        # What Go's encoding/json wrote for these (golden, Go 1.27).
        (
            'k\x01\b\f\n\r\t"\\<>&\u2028\u2029\x7f é',
            '"k\\u0001\\b\\f\\n\\r\\t\\"\\\\\\u003c\\u003e\\u0026\\u2028\\u2029\x7f é"',
        ),
        ("plain", '"plain"'),
        ("", '""'),
    ],
)
def test_strings_are_escaped_as_go_escapes_them(value: str, encoded: str) -> None:
    assert fmt.go_string(value) == encoded


@pytest.mark.parametrize(
    ("parameters", "size"),
    [
        (None, 2 * 1024 * 1024),
        ({}, 2 * 1024 * 1024),
        ({"backup-block-size": ""}, 2 * 1024 * 1024),
        ({"backup-block-size": "0"}, 2 * 1024 * 1024),
        ({"backup-block-size": "2Mi"}, 2 * 1024 * 1024),
        ({"backup-block-size": "16Mi"}, 16 * 1024 * 1024),
        ({"backup-block-size": "16384"}, 16384),
        ({"backup-block-size": "4096k"}, 4096000),
        ({"backup-block-size": "0.5Mi"}, 512 * 1024),
    ],
)
def test_block_size_from_parameters(parameters: dict[str, str] | None, size: int) -> None:
    assert fmt.block_size_of(parameters) == size


@pytest.mark.parametrize("value", ["2MB", "-2Mi", "lots", "1000"])
def test_a_bad_block_size_names_the_parameter(value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        fmt.block_size_of({"backup-block-size": value})
    assert err.value.field == "parameters[backup-block-size]"


@pytest.mark.parametrize("name", ["ab", "backup-0123456789abcdef", "a.b_c-d", "X9"])
def test_valid_names(name: str) -> None:
    assert fmt.check_name(name, "backup_name") == name


@pytest.mark.parametrize("name", ["", "a", "-ab", ".ab", "a/b", "a b", "ä1", "ab\n"])
def test_invalid_names_name_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        fmt.check_name(name, "backup_name")
    assert err.value.field == "backup_name"


def test_compression_methods() -> None:
    assert fmt.check_compression("") == "lz4"
    assert [fmt.check_compression(m) for m in ("none", "gzip", "lz4")] == ["none", "gzip", "lz4"]
    with pytest.raises(InvalidArgument) as err:
        fmt.check_compression("zstd")
    assert err.value.field == "compression_method"


def test_lz4_is_the_frame_format_pierrecs_writer_writes() -> None:
    data = bytes(range(256)) * 64
    blob = bscompress.compress("lz4", data)
    assert isinstance(blob, bytes)
    # Magic; FLG 0x64 (version 1, independent blocks, content checksum, no
    # content size); BD 0x70 (4 MiB blocks); the header checksum. The same
    # seven bytes pierrec/lz4 v4's NewWriter starts a frame with.
    assert blob[:7].hex() == "04224d186470b9"
    assert lz4.frame.decompress(blob) == data


def test_gzip_header_is_gos() -> None:
    blob = bscompress.compress("gzip", b"x" * 1000)
    assert isinstance(blob, bytes)
    # No name, mtime 0, XFL 0, OS 255: what compress/gzip writes by default.
    assert blob[:10].hex() == "1f8b08000000000000ff"
    assert gzip.decompress(blob) == b"x" * 1000


@pytest.mark.parametrize("method", ["none", "gzip", "lz4"])
def test_blocks_verify_on_the_way_back(method: str) -> None:
    data = bytes(range(256)) * 16
    blob = bscompress.compress(method, data)
    assert bscompress.decompress_and_verify(method, blob, fmt.checksum(data), len(data)) == data
    with pytest.raises(bscompress.CorruptBlock, match="checksum mismatch"):
        bscompress.decompress_and_verify(method, blob, fmt.checksum(b"other"), len(data))
    with pytest.raises(bscompress.CorruptBlock):
        bscompress.decompress_and_verify(method, blob, fmt.checksum(data), len(data) * 2)


def test_a_block_in_the_other_format_is_still_read_as_longhorn_falls_back() -> None:
    data = b"hello " * 100
    blob = bscompress.compress("gzip", data)
    assert bscompress.decompress_and_verify("lz4", blob, fmt.checksum(data), len(data)) == data
    with pytest.raises(bscompress.CorruptBlock, match="cannot decompress"):
        bscompress.decompress_and_verify("lz4", b"garbage" * 10, fmt.checksum(data), len(data))


def test_extract_names_skips_temporary_and_invalid_files() -> None:
    entries = ["backup_b-1.cfg", "backup_b-2.cfg.tmp.1700000000", "backup_x.cfg", "other", "/backup_b-3.cfg"]
    assert fmt.extract_names(entries, "backup_", ".cfg") == ["b-1", "b-3"]
