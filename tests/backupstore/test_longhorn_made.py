"""Backups imd did not write, checked without Go: a backup target written
by Longhorn's own library (tests/backupstore/data/longhorn-made, see its
README), and one written here by hand from the format README.md documents
(not with imd's encoder)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
from pathlib import Path

import lz4.frame
import pytest

from imd.backupstore import (
    BackupSpec,
    FileBlockSink,
    FileBlockSource,
    create_backup,
    delete_backup,
    inspect_backup,
    list_target,
    restore,
)
from tests.backupstore.conftest import FAST

pytestmark = pytest.mark.asyncio

DATA = Path(__file__).parent / "data" / "longhorn-made"
IMAGES = {
    "1": "f912ca820fb9c3bfb49e3ce7fe7a42105ea60c62365443f02dad785226a000e8",
    "2": "85093fa003b43e094599511a0917a76e43868abdb2ddd0ef2a935b3057ef2295",
}
METHODS = ["lz4", "gzip", "none"]


@pytest.fixture
def longhorn_target(tmp_path: Path) -> str:
    root = tmp_path / "target"
    shutil.copytree(DATA, root)
    return f"vfs://{root}"


async def test_imd_lists_and_inspects_what_longhorn_wrote(longhorn_target: str) -> None:
    listing = await list_target(longhorn_target, options=FAST)
    assert sorted(listing) == [f"lh-made-{m}" for m in sorted(METHODS)]
    for method in METHODS:
        volume = listing[f"lh-made-{method}"]
        assert (volume.size, volume.last_backup_name, volume.data_engine) == (65536, f"backup-{method}-2", "v2")
        assert sorted(volume.backups) == [f"backup-{method}-1", f"backup-{method}-2"]
        first = await inspect_backup(
            f"{longhorn_target}?backup=backup-{method}-1&volume=lh-made-{method}", options=FAST
        )
        assert (first.snapshot_name, first.snapshot_created, first.is_incremental) == (
            "s1",
            "2026-12-01T10:00:00Z",
            False,
        )
        assert first.labels == {"made-by": "longhorn", "a": "<b>"}
        assert (first.compression_method, first.size, first.blocks) == (method, 49152, 3)


@pytest.mark.parametrize("method", METHODS)
async def test_imd_restores_what_longhorn_wrote(longhorn_target: str, tmp_path: Path, method: str) -> None:
    for n in ("1", "2"):
        out = tmp_path / f"restored-{n}"
        with FileBlockSink(str(out), 65536) as sink:
            await restore(f"{longhorn_target}?backup=backup-{method}-{n}&volume=lh-made-{method}", sink, options=FAST)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == IMAGES[n]
    # And incrementally, 1 then 2, as a DR volume.
    out = tmp_path / "restored-1"
    with FileBlockSink(str(out), 65536) as sink:
        result = await restore(
            f"{longhorn_target}?backup=backup-{method}-2&volume=lh-made-{method}",
            sink,
            options=FAST,
            last_backup=f"backup-{method}-1",
        )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == IMAGES["2"]
    assert result.blocks_written == 3  # blocks 0 (now a stored zero block), 1 and 3


async def test_imd_continues_a_longhorn_volume_and_collects_its_garbage(longhorn_target: str, tmp_path: Path) -> None:
    # Restore Longhorn's second backup, change one block, back it up with imd.
    image = tmp_path / "img"
    with FileBlockSink(str(image), 65536) as sink:
        await restore(f"{longhorn_target}?backup=backup-lz4-2&volume=lh-made-lz4", sink, options=FAST)
    data = bytearray(image.read_bytes())
    data[16384:16394] = b"imd change"
    image.write_bytes(data)
    with FileBlockSource(str(image)) as source:
        result = await create_backup(
            BackupSpec(
                target=longhorn_target,
                volume_name="lh-made-lz4",
                snapshot_name="s3",
                backup_name="backup-imd-3",
                parameters={"backup-block-size": "16384"},
                snapshot_created_at="2026-12-03T10:00:00Z",
            ),
            source,
            options=FAST,
        )
    assert result.is_incremental and result.blocks_uploaded == 1
    deleted = await delete_backup(f"{longhorn_target}?backup=backup-lz4-2&volume=lh-made-lz4", options=FAST)
    # Backup 2's block 1 (changed since) and its stored zero block (imd
    # leaves zeros out of the map) were used by no other backup.
    assert (deleted.gc_skipped, deleted.blocks_removed, deleted.blocks_retained) == ("", 2, 4)
    out = tmp_path / "out"
    with FileBlockSink(str(out), 65536) as sink:
        await restore(result.url, sink, options=FAST)
    assert out.read_bytes() == bytes(data)


def _documented_backup(root: Path, method: str) -> bytes:
    """A backup written by hand from README's description of the format."""
    block_size = 4096
    rng = random.Random(7)
    blocks = [rng.randbytes(block_size), None, b"documented".ljust(block_size, b".")]
    volume = "doc-vol"
    vdigest = hashlib.sha512(volume.encode()).hexdigest()[:64]
    vdir = root / "backupstore" / "volumes" / vdigest[:2] / vdigest[2:4] / volume
    mappings = []
    for i, block in enumerate(blocks):
        if block is None:
            continue
        digest = hashlib.sha512(block).hexdigest()[:64]
        path = vdir / "blocks" / digest[:2] / digest[2:4] / f"{digest}.blk"
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {"none": block, "gzip": gzip.compress(block, mtime=0), "lz4": lz4.frame.compress(block)}[method]
        path.write_bytes(stored)
        mappings.append({"Offset": i * block_size, "BlockChecksum": digest})
    (vdir / "backups").mkdir(parents=True)
    backup = {
        "Name": "backup-doc",
        "VolumeName": volume,
        "SnapshotName": "snap",
        "SnapshotCreatedAt": "2026-12-01T00:00:00Z",
        "CreatedTime": "2026-12-01T00:00:01Z",
        "Size": str(len(mappings) * block_size),
        "Labels": None,
        "Parameters": {"backup-block-size": str(block_size)},
        "IsIncremental": False,
        "CompressionMethod": method,
        "NewlyUploadedDataSize": "0",
        "ReUploadedDataSize": "0",
        "ProcessingBlocks": {},
        "Blocks": mappings,
        "SingleFile": {"FilePath": ""},
    }
    (vdir / "backups" / "backup_backup-doc.cfg").write_text(json.dumps(backup, separators=(",", ":")))
    config = {
        "Name": volume,
        "Size": str(len(blocks) * block_size),
        "Labels": None,
        "CreatedTime": "2026-12-01T00:00:00Z",
        "LastBackupName": "backup-doc",
        "LastBackupAt": "2026-12-01T00:00:00Z",
        "BlockCount": str(len(mappings)),
        "BackingImageName": '""',
        "BackingImageChecksum": '""',
        "CompressionMethod": json.dumps(method),
        "StorageClassName": '""',
        "DataEngine": '"v2"',
    }
    (vdir / "volume.cfg").write_text(json.dumps(config, separators=(",", ":")))
    return b"".join(b if b is not None else bytes(block_size) for b in blocks)


@pytest.mark.parametrize("method", METHODS)
async def test_imd_restores_a_backup_written_from_the_documented_format(tmp_path: Path, method: str) -> None:
    root = tmp_path / "doc"
    expected = _documented_backup(root, method)
    out = tmp_path / "out"
    out.write_bytes(b"\xff" * len(expected))  # old data where the zero block goes
    with FileBlockSink(str(out), len(expected)) as sink:
        await restore(f"vfs://{root}?backup=backup-doc&volume=doc-vol", sink, options=FAST)
    assert out.read_bytes() == expected
