"""What goes wrong, and what is left after it: preemption, corrupt and
missing blocks, locks held by others, deletion and its block GC, and every
bad input."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from imd.backupstore import (
    BackupSpec,
    FileBlockSink,
    FileBlockSource,
    Progress,
    create_backup,
    delete_backup,
    inspect_backup,
    list_target,
    open_driver,
    restore,
)
from imd.backupstore.backup import BackupResult
from imd.backupstore.format import (
    BackupConfig,
    LockFile,
    backup_cfg_path,
    block_path,
    blocks_dir,
    encode_backup,
    encode_lock,
    lock_path,
    locks_dir,
)
from imd.backupstore.locks import BACKUP_LOCK, DELETION_LOCK, FileLock
from imd.backupstore.seams import Buffer
from imd.errors import Conflict, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from tests.backupstore.conftest import FAST, random_block, write_image
from tests.backupstore.seaweed import SeaweedS3

pytestmark = pytest.mark.asyncio

BS = 64 * 1024
PARAMS = {"backup-block-size": str(BS)}
BLOCKS = 48


def spec(target: str, name: str, snapshot: str = "snap1", volume: str = "vol-f", **kw: Any) -> BackupSpec:
    return BackupSpec(
        target=target, volume_name=volume, snapshot_name=snapshot, backup_name=name, parameters=PARAMS, **kw
    )


def image(tmp_path: Path, seed: int = 0, name: str = "snap.img") -> tuple[Path, bytes]:
    path = tmp_path / name
    return path, write_image(path, [random_block(seed * 1000 + i, BS) for i in range(BLOCKS)], BS)


class CountingSource(FileBlockSource):
    """A file source that counts its reads."""

    reads = 0

    async def read(self, offset: int, length: int) -> Buffer | None:
        self.reads += 1
        return await super().read(offset, length)


async def backup(target: str, path: Path, name: str, envs: dict[str, str] | None = None, **kw: Any) -> BackupResult:
    with FileBlockSource(str(path)) as source:
        return await create_backup(spec(target, name, **kw), source, envs=envs, options=FAST)


async def preempt_midway(target: str, envs: dict[str, str], path: Path) -> int:
    """Start a backup, cancel it once 10 blocks are stored; return how many
    reads the source saw by then."""
    task: asyncio.Task[BackupResult] | None = None
    cancelled_at = -1

    def on_progress(p: Progress) -> None:
        nonlocal cancelled_at
        if p.blocks_done >= 10 and cancelled_at < 0 and task is not None:
            cancelled_at = source.reads
            task.cancel()

    with CountingSource(str(path)) as source:
        task = asyncio.create_task(
            create_backup(spec(target, "backup-preempted"), source, envs=envs, options=FAST, progress=on_progress)
        )
        with pytest.raises(asyncio.CancelledError):
            await task
        reads_at_end = source.reads
    assert cancelled_at >= 10
    # Within one block: nothing more is read once the task has ended.
    await asyncio.sleep(0)
    assert source.reads == reads_at_end
    return reads_at_end


@pytest.mark.parametrize("kind", ["vfs", "s3"])
async def test_a_preempted_backup_is_not_listed_and_its_blocks_are_reused(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "s3":
        seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
        target, envs = request.getfixturevalue("s3_target"), seaweed.envs()
    else:
        target, envs = request.getfixturevalue("vfs_target"), {}
    path, data = image(tmp_path)
    await preempt_midway(target, envs, path)
    driver = await open_driver(target, envs, FAST)
    uploaded = len(await driver.list_files(blocks_dir("vol-f")))
    assert 10 <= uploaded < BLOCKS
    # Not listed, not inspectable, and its lock is gone.
    listing = await list_target(target, envs=envs, options=FAST)
    assert listing.get("vol-f") is None or listing["vol-f"].backups == {}
    with pytest.raises(NotFound):
        await inspect_backup(f"{target}?backup=backup-preempted&volume=vol-f", envs=envs, options=FAST)
    assert await driver.listdir(locks_dir("vol-f")) == []
    # The next backup uploads only what the preempted one had not.
    result = await backup(target, path, "backup-next", envs)
    assert result.blocks_uploaded == BLOCKS - uploaded
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink:
        await restore(result.url, sink, envs=envs, options=FAST)
    assert (tmp_path / "out").read_bytes() == data


async def test_a_corrupt_block_fails_the_restore_naming_it(vfs_target: str, tmp_path: Path) -> None:
    path, data = image(tmp_path)
    result = await backup(vfs_target, path, "backup-1")
    root = Path(vfs_target.removeprefix("vfs://"))
    digest = (await inspect_config(vfs_target, "backup-1")).blocks[5].block_checksum
    victim = root / block_path("vol-f", digest)
    victim.write_bytes(victim.read_bytes()[:-50] + bytes(50))
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink, pytest.raises(DataLoss) as err:
        await restore(result.url, sink, options=FAST)
    assert f"{digest}.blk (offset {5 * BS})" in str(err.value)
    assert "corrupt" in str(err.value)


async def test_a_block_replaced_by_another_blocks_content_fails_its_checksum(
    seaweed: SeaweedS3, s3_target: str, tmp_path: Path
) -> None:
    path, data = image(tmp_path)
    result = await backup(s3_target, path, "backup-1", seaweed.envs())
    config = await inspect_config(s3_target, "backup-1", seaweed.envs())
    one, other = config.blocks[3].block_checksum, config.blocks[4].block_checksum
    driver = await open_driver(s3_target, seaweed.envs(), FAST)
    # A well-formed lz4 frame, of the wrong content.
    await driver.write(block_path("vol-f", one), await driver.read(block_path("vol-f", other)))
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink, pytest.raises(DataLoss) as err:
        await restore(result.url, sink, envs=seaweed.envs(), options=FAST)
    assert f"{one}.blk (offset {3 * BS}) is corrupt: checksum mismatch" in str(err.value)


async def test_a_missing_block_fails_before_the_volume_is_touched(vfs_target: str, tmp_path: Path) -> None:
    path, data = image(tmp_path)
    result = await backup(vfs_target, path, "backup-1")
    digest = (await inspect_config(vfs_target, "backup-1")).blocks[7].block_checksum
    (Path(vfs_target.removeprefix("vfs://")) / block_path("vol-f", digest)).unlink()
    out = tmp_path / "out"
    out.write_bytes(b"\x5a" * len(data))
    with FileBlockSink(str(out), len(data)) as sink, pytest.raises(DataLoss) as err:
        await restore(result.url, sink, options=FAST)
    assert f"{digest}.blk (offset {7 * BS}) is missing" in str(err.value)
    assert out.read_bytes() == b"\x5a" * len(data)  # never silently zeroed


async def inspect_config(target: str, backup_name: str, envs: dict[str, str] | None = None) -> BackupConfig:
    from imd.backupstore.backup import load_backup

    driver = await open_driver(target, envs, FAST)
    return await load_backup(driver, "vol-f", backup_name)


async def test_a_deletion_lock_held_by_another_tool_refuses_backups_and_restores(
    vfs_target: str, tmp_path: Path
) -> None:
    path, data = image(tmp_path)
    first = await backup(vfs_target, path, "backup-1")
    driver = await open_driver(vfs_target, None, FAST)
    # A deletion in progress elsewhere (Longhorn's own tool), lock acquired.
    await driver.write(
        lock_path("vol-f", "lock-aaaaaaaaaaaaaaaa"), encode_lock(LockFile("lock-aaaaaaaaaaaaaaaa", 2, True))
    )
    with pytest.raises(Conflict, match="locked by a deletion"):
        await backup(vfs_target, path, "backup-2")
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink, pytest.raises(Conflict):
        await restore(first.url, sink, options=FAST)
    # Our own lock files are gone; the foreign one stays.
    assert await driver.listdir(locks_dir("vol-f")) == ["lock-aaaaaaaaaaaaaaaa.lck"]
    # A lock not refreshed for 150 s is dead and ignored.
    stale = Path(vfs_target.removeprefix("vfs://")) / lock_path("vol-f", "lock-aaaaaaaaaaaaaaaa")
    old = time.time() - 200
    os.utime(stale, (old, old))
    second = await backup(vfs_target, path, "backup-2", snapshot="snap2")
    assert second.is_incremental and second.blocks_uploaded == 0


async def test_backups_share_the_lock_and_deletions_wait_for_it(vfs_target: str, tmp_path: Path) -> None:
    path, _ = image(tmp_path)
    await backup(vfs_target, path, "backup-1")
    driver = await open_driver(vfs_target, None, FAST)
    async with FileLock(driver, "vol-f", BACKUP_LOCK, FAST):
        # A backup or a restore (same type) goes on; a deletion may not.
        await backup(vfs_target, path, "backup-2")
        with pytest.raises(Conflict, match="locked by a backup or restore"):
            await delete_backup(f"{vfs_target}?backup=backup-1&volume=vol-f", options=FAST)
    async with FileLock(driver, "vol-f", DELETION_LOCK, FAST) as lock:
        assert lock.acquired
    assert await driver.listdir(locks_dir("vol-f")) == []


async def test_delete_collects_the_blocks_no_backup_uses(vfs_target: str, tmp_path: Path) -> None:
    p1, _ = image(tmp_path, 1, "a.img")
    raw = bytearray(p1.read_bytes())
    raw[:BS] = random_block(555, BS)  # the second snapshot differs in block 0 only
    p2 = tmp_path / "b.img"
    p2.write_bytes(raw)
    await backup(vfs_target, p1, "backup-1", snapshot_created_at="2026-01-01T00:00:00Z")
    second = await backup(vfs_target, p2, "backup-2", snapshot="snap2", snapshot_created_at="2026-01-02T00:00:00Z")
    driver = await open_driver(vfs_target, None, FAST)
    assert len(await driver.list_files(blocks_dir("vol-f"))) == BLOCKS + 1

    result = await delete_backup(f"{vfs_target}?backup=backup-2&volume=vol-f", options=FAST)
    assert (result.blocks_removed, result.blocks_retained, result.gc_skipped) == (1, BLOCKS, "")
    volume = (await list_target(vfs_target, options=FAST))["vol-f"]
    assert (volume.last_backup_name, volume.last_backup_at) == ("backup-1", "2026-01-01T00:00:00Z")
    assert sorted(volume.backups) == ["backup-1"]
    assert volume.data_stored == BLOCKS * 2 * 1024 * 1024  # Longhorn counts blocks at 2 MiB

    # An in-progress backup (Longhorn's placeholder) stops the GC, as there.
    placeholder = BackupConfig(name="backup-busy", volume_name="vol-f", compression_method="lz4")
    await driver.write(backup_cfg_path("vol-f", "backup-busy"), encode_backup(placeholder))
    await backup(vfs_target, p2, "backup-3", snapshot="snap3")
    skipped = await delete_backup(f"{vfs_target}?backup=backup-3&volume=vol-f", options=FAST)
    assert skipped.blocks_removed == 0 and "in progress" in skipped.gc_skipped
    assert sorted((await list_target(vfs_target, options=FAST))["vol-f"].backups) == ["backup-1"]

    with FileBlockSink(str(tmp_path / "out"), len(raw)) as sink:
        await restore(second.url.replace("backup-2", "backup-1"), sink, options=FAST)
    assert (tmp_path / "out").read_bytes() == p1.read_bytes()


async def test_bad_input_names_the_field(vfs_target: str, tmp_path: Path) -> None:
    path, data = image(tmp_path)
    cases: list[tuple[dict[str, object], str]] = [
        ({"backup_name": "-x"}, "backup_name"),
        ({"volume_name": "v"}, "volume_name"),
        ({"snapshot_name": ""}, "snapshot_name"),
        ({"compression_method": "zstd"}, "compression_method"),
        ({"parameters": {"backup-block-size": "100"}}, "parameters[backup-block-size]"),
        ({"parameters": {"backup-block-size": "1Mi"}, "volume_size": 3 * BS}, "volume_size"),
        ({"concurrent_limit": -1}, "concurrent_limit"),
        ({"snapshot_created_at": "yesterday"}, "snapshot_created_at"),
        ({"target": "vfs://host/x"}, "backup_target"),
        ({"target": "gopher://x/y"}, "backup_target"),
    ]
    for change, field in cases:
        fields: dict[str, object] = {"target": vfs_target, "volume_name": "vol-f", "snapshot_name": "s1"}
        fields.update(backup_name="b-1", parameters=PARAMS)
        fields.update(change)
        with FileBlockSource(str(path)) as source, pytest.raises(InvalidArgument) as err:
            await create_backup(BackupSpec(**fields), source, options=FAST)  # type: ignore[arg-type]
        assert err.value.field == field, change
    assert list(Path(vfs_target.removeprefix("vfs://")).iterdir()) == []  # nothing was written

    good = await backup(vfs_target, path, "backup-1")
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink:
        for url, kw, error, field in [
            ("vfs:///x?volume=vol-f", {}, InvalidArgument, "backup_url"),
            (good.url, {"last_backup": "!"}, InvalidArgument, "last_backup"),
            (good.url, {"concurrent_limit": -2}, InvalidArgument, "concurrent_limit"),
            (good.url.replace("backup-1", "backup-9"), {}, NotFound, "backup_url"),
            (good.url.replace("vol-f", "vol-none"), {}, NotFound, "backup_url"),
            (good.url, {"last_backup": "backup-0"}, NotFound, "last_backup"),
        ]:
            with pytest.raises(error) as raised:
                await restore(url, sink, options=FAST, **kw)  # type: ignore[arg-type]
            assert raised.value.field == field, (url, kw)
    with FileBlockSink(str(tmp_path / "small"), len(data) - BS) as small, pytest.raises(FailedPrecondition) as short:
        await restore(good.url, small, options=FAST)
    assert short.value.field == "size"


async def test_a_vfs_target_that_is_not_there_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        await open_driver(f"vfs://{tmp_path}/not-mounted", None, FAST)
    assert err.value.field == "backup_target"


async def test_restore_of_a_backup_in_progress_is_refused(vfs_target: str) -> None:
    driver = await open_driver(vfs_target, None, FAST)
    from imd.backupstore.format import VolumeConfig, encode_volume, volume_cfg_path

    await driver.write(volume_cfg_path("vol-f"), encode_volume(VolumeConfig(name="vol-f", size=BS)))
    await driver.write(
        backup_cfg_path("vol-f", "backup-busy"), encode_backup(BackupConfig(name="backup-busy", volume_name="vol-f"))
    )
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(FileBlockSink(f"{vfs_target.removeprefix('vfs://')}-out", BS))
        with pytest.raises(FailedPrecondition, match="still in progress"):
            await restore(f"{vfs_target}?backup=backup-busy&volume=vol-f", sink, options=FAST)


class ViewSource(FileBlockSource):
    """A source that hands out memoryviews (as a DMA-buffer source would)."""

    async def read(self, offset: int, length: int) -> Buffer | None:
        data = await super().read(offset, length)
        return None if data is None else memoryview(bytearray(data))


async def test_a_source_of_memoryviews(vfs_target: str, tmp_path: Path) -> None:
    path = tmp_path / "img"
    data = write_image(path, [random_block(1, BS), None, random_block(2, BS), None], BS)
    with ViewSource(str(path)) as source:
        result = await create_backup(spec(vfs_target, "backup-views"), source, options=FAST)
    assert (result.blocks, result.blocks_read) == (2, 4)  # zeros seen as zeros in a view too
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink:
        await restore(result.url, sink, options=FAST)
    assert (tmp_path / "out").read_bytes() == data
