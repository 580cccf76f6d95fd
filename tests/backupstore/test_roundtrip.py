"""Backups and restores through both kinds of target: a directory (vfs) and
a real S3 server (SeaweedFS). Every restore is compared byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imd.backupstore import (
    BackupSpec,
    FileBlockSink,
    FileBlockSource,
    Progress,
    create_backup,
    inspect_backup,
    inspect_volume,
    list_target,
    open_driver,
    restore,
)
from imd.backupstore.format import blocks_dir
from tests.backupstore.conftest import FAST, random_block, write_image
from tests.backupstore.seaweed import SeaweedS3

pytestmark = pytest.mark.asyncio

BS = 64 * 1024
PARAMS = {"backup-block-size": str(BS)}


class Target:
    def __init__(self, url: str, envs: dict[str, str]) -> None:
        self.url = url
        self.envs = envs

    async def block_names(self, volume: str) -> list[str]:
        driver = await open_driver(self.url, self.envs, FAST)
        return sorted(await driver.list_files(blocks_dir(volume)))


@pytest.fixture(params=["vfs", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "vfs":
        root = tmp_path / "target"
        root.mkdir()
        yield Target(f"vfs://{root}", {})
    else:
        seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
        s3_target: str = request.getfixturevalue("s3_target")
        yield Target(s3_target, seaweed.envs())


def images(tmp_path: Path) -> tuple[Path, bytes, Path, bytes, set[int]]:
    """Two snapshots of a 2 MiB volume in 64 KiB blocks: random blocks,
    zero blocks, duplicated blocks; the second changes some of each."""
    a, b = random_block(1, BS), random_block(2, BS)
    first: list[bytes | None] = [a, None, a, b, None] + [random_block(10 + i, BS) for i in range(27)]
    second = list(first)
    second[0] = None  # was data, now zero
    second[1] = random_block(99, BS)  # was zero, now data
    second[3] = a  # now a duplicate of block 0's old content
    second[30] = random_block(100, BS)
    changed = {0, 1, 3, 30}
    p1, p2 = tmp_path / "snap1.img", tmp_path / "snap2.img"
    return p1, write_image(p1, first, BS), p2, write_image(p2, second, BS), changed


async def restored(url: str, target: Target, path: Path, size: int, **kw: object) -> bytes:
    with FileBlockSink(str(path), size) as sink:
        await restore(url, sink, envs=target.envs, options=FAST, **kw)  # type: ignore[arg-type]
    return path.read_bytes()


@pytest.mark.parametrize("compression", ["lz4", "gzip", "none"])
async def test_backup_change_incremental_restore(target: Target, tmp_path: Path, compression: str) -> None:
    p1, img1, p2, img2, changed = images(tmp_path)
    spec = BackupSpec(
        target=target.url,
        volume_name="vol-rt",
        snapshot_name="snap1",
        backup_name="backup-1",
        compression_method=compression,
        parameters=PARAMS,
        labels={"app": "db"},
    )
    seen: list[Progress] = []
    with FileBlockSource(str(p1)) as source:
        first = await create_backup(spec, source, envs=target.envs, options=FAST, progress=seen.append)
    assert not first.is_incremental
    assert first.url == f"{target.url}?backup=backup-1&volume=vol-rt"
    # 30 non-zero blocks, one of them a duplicate: 29 stored.
    assert (first.blocks, first.blocks_uploaded) == (30, 29)
    assert len(await target.block_names("vol-rt")) == 29
    assert [p.percent for p in seen] == sorted(p.percent for p in seen) and seen[-1].percent == 100

    with FileBlockSource(str(p2)) as source:
        second = await create_backup(
            BackupSpec(
                target=target.url,
                volume_name="vol-rt",
                snapshot_name="snap2",
                backup_name="backup-2",
                compression_method="gzip" if compression != "gzip" else "none",  # the volume's method wins
                parameters=PARAMS,
            ),
            source,
            envs=target.envs,
            options=FAST,
        )
    assert second.is_incremental
    assert second.blocks_read == 32  # the file source cannot tell what changed: all read
    assert second.blocks_uploaded == 2  # blocks 1 and 30; block 3 is block 0's old content
    assert len(await target.block_names("vol-rt")) == 31

    assert await restored(first.url, target, tmp_path / "r1", len(img1)) == img1
    assert await restored(second.url, target, tmp_path / "r2", len(img2)) == img2

    # Incremental restore onto a volume holding backup-1: only what changed.
    (tmp_path / "r12").write_bytes(img1)
    with FileBlockSink(str(tmp_path / "r12"), len(img1)) as sink:
        result = await restore(second.url, sink, envs=target.envs, options=FAST, last_backup="backup-1")
    assert (tmp_path / "r12").read_bytes() == img2
    assert result.is_incremental
    assert result.blocks_written == len(changed - {0})  # block 0 is zeroed, not written
    assert result.bytes_zeroed == BS

    info = await inspect_backup(second.url, envs=target.envs, options=FAST)
    assert (info.name, info.snapshot_name, info.is_incremental, info.compression_method) == (
        "backup-2",
        "snap2",
        True,
        compression,
    )
    assert (info.volume_name, info.volume_size, info.size) == ("vol-rt", len(img1), 30 * BS)
    volume = await inspect_volume(f"{target.url}?volume=vol-rt", envs=target.envs, options=FAST)
    assert (volume.last_backup_name, volume.size) == ("backup-2", len(img1))
    listing = await list_target(target.url, envs=target.envs, options=FAST)
    assert sorted(listing) == ["vol-rt"]
    assert sorted(listing["vol-rt"].backups) == ["backup-1", "backup-2"]
    assert listing["vol-rt"].backups["backup-1"].labels == {"app": "db"}


async def test_incremental_backup_reads_only_changed_blocks_when_the_source_knows(
    target: Target, tmp_path: Path
) -> None:
    p1, _img1, p2, img2, changed = images(tmp_path)
    base: dict[str, Any] = {"target": target.url, "volume_name": "vol-delta", "parameters": PARAMS}
    with FileBlockSource(str(p1)) as source:
        await create_backup(
            BackupSpec(**base, snapshot_name="snap1", backup_name="b-1"), source, envs=target.envs, options=FAST
        )  # type: ignore[arg-type]
    with FileBlockSource(str(p2), previous={"snap1": str(p1)}) as source:
        second = await create_backup(
            BackupSpec(**base, snapshot_name="snap2", backup_name="b-2"),
            source,
            envs=target.envs,
            options=FAST,
        )
    assert second.is_incremental
    assert second.blocks_read == len(changed)
    # Block 0 became zeros: dropped from the map, not stored as a zero block.
    assert second.blocks == 30 - 1 + 1
    assert await restored(second.url, target, tmp_path / "r2", len(img2)) == img2


async def test_default_block_size_and_full_mode(target: Target, tmp_path: Path) -> None:
    mib2 = 2 * 1024 * 1024
    img = tmp_path / "big.img"
    data = write_image(img, [random_block(7, mib2), None, random_block(8, mib2), random_block(7, mib2)], mib2)
    spec = BackupSpec(target=target.url, volume_name="vol-2m", snapshot_name="s1", backup_name="b-1")
    with FileBlockSource(str(img)) as source:
        first = await create_backup(spec, source, envs=target.envs, options=FAST)
        assert (first.blocks, first.blocks_uploaded) == (3, 2)
        full = await create_backup(
            BackupSpec(
                target=target.url,
                volume_name="vol-2m",
                snapshot_name="s2",
                backup_name="b-2",
                parameters={"backup-mode": "full"},
            ),
            source,
            envs=target.envs,
            options=FAST,
        )
    # Full mode uploads every block again, and says so.
    assert not full.is_incremental
    assert (full.blocks_uploaded, full.newly_uploaded_bytes) == (2, 0)
    assert full.reuploaded_bytes > 2 * mib2
    assert await restored(full.url, target, tmp_path / "r", len(data)) == data
