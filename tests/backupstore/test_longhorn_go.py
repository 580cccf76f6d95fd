"""Compatibility with Longhorn's own backupstore library, both ways, on vfs
and S3, with each compression: the library lists, inspects and restores
every backup imd writes, bit for bit; imd lists, inspects and restores
every backup the library writes; each continues the other's volumes,
deletes the other's backups (with block GC), and respects the other's
locks.

The library runs in a small Go driver built outside this repository (see
README: "Compatibility with Longhorn"), named by IMD_LONGHORN_BACKUP_TOOL;
without it these tests are skipped. Its commands: create, restore, ls,
inspect, delete; credentials from its environment, as the library reads
them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imd.backupstore import (
    BackupSpec,
    FileBlockSink,
    FileBlockSource,
    StoreOptions,
    create_backup,
    delete_backup,
    inspect_backup,
    list_target,
    open_driver,
    restore,
)
from imd.backupstore.locks import DELETION_LOCK, FileLock
from tests.backupstore.conftest import random_block, write_image
from tests.backupstore.seaweed import SeaweedS3

TOOL = os.environ.get("IMD_LONGHORN_BACKUP_TOOL", "")
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(
        not (TOOL and os.access(TOOL, os.X_OK)),
        reason="IMD_LONGHORN_BACKUP_TOOL does not name a Longhorn backupstore driver (Go, built outside the repo)",
    ),
]

BS = 64 * 1024
# imd keeps Longhorn's lock timings here: both tools share the target.
OPTIONS = StoreOptions()


class Peer:
    def __init__(self, target: str, envs: dict[str, str], tmp: Path) -> None:
        self.target = target
        self.envs = envs
        self.tmp = tmp

    def run(self, *args: str) -> Any:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp), **self.envs}
        done = subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=300, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"longhorn tool {args[0]} failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout)

    def create(self, volume: str, snapshot: str, image: Path, backup: str, compression: str, **extra: str) -> str:
        args = [
            "create",
            f"-dest={self.target}",
            f"-volume={volume}",
            f"-size={image.stat().st_size}",
            f"-snapshot-name={snapshot}",
            f"-snapshot={snapshot}={image}",
            f"-backup={backup}",
            f"-compression={compression}",
            "-concurrency=4",
            f"-block-size={BS}",
        ]
        args += [f"-{k}={v}" for k, v in extra.items() if k != "previous"]
        if "previous" in extra:
            args.append(f"-snapshot={extra['previous']}")
        return str(self.run(*args)["url"])

    def restore(self, url: str, out: Path) -> bytes:
        self.run("restore", f"-url={url}", f"-file={out}", "-concurrency=4")
        return out.read_bytes()


def snapshots(tmp: Path) -> tuple[Path, bytes, Path, bytes]:
    a = random_block(1, BS)
    first: list[bytes | None] = [a, None, a, random_block(2, BS)] + [random_block(10 + i, BS) for i in range(12)]
    second = list(first)
    second[0], second[1], second[15] = None, random_block(77, BS), random_block(78, BS)
    p1, p2 = tmp / "s1.img", tmp / "s2.img"
    return p1, write_image(p1, first, BS), p2, write_image(p2, second, BS)


@pytest.fixture(params=["vfs", "s3"])
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Peer:
    if request.param == "vfs":
        root = tmp_path / "target"
        root.mkdir()
        return Peer(f"vfs://{root}", {}, tmp_path)
    seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
    return Peer(request.getfixturevalue("s3_target"), seaweed.envs(), tmp_path)


async def imd_backup(peer: Peer, volume: str, snapshot: str, image: Path, backup: str, compression: str) -> str:
    with FileBlockSource(str(image)) as source:
        result = await create_backup(
            BackupSpec(
                target=peer.target,
                volume_name=volume,
                snapshot_name=snapshot,
                backup_name=backup,
                compression_method=compression,
                parameters={"backup-block-size": str(BS)},
                labels={"made-by": "imd", "quote": '"<&>"'},
            ),
            source,
            envs=peer.envs,
            options=OPTIONS,
        )
    return result.url


async def imd_restore(peer: Peer, url: str, out: Path, size: int, last: str = "") -> bytes:
    with FileBlockSink(str(out), size) as sink:
        await restore(url, sink, envs=peer.envs, options=OPTIONS, last_backup=last)
    return out.read_bytes()


def same_fields(go: dict[str, Any], ours: dict[str, Any]) -> None:
    """Longhorn's BackupInfo as the library and imd report it."""
    for key in ("Name", "URL", "SnapshotName", "SnapshotCreated", "Created", "Labels", "Parameters", "IsIncremental"):
        assert go[key] == ours[key], key
    for key in ("Size", "NewlyUploadedDataSize", "ReUploadedDataSize", "VolumeSize"):
        assert int(go[key]) == ours[key], key
    assert go["CompressionMethod"] == ours["CompressionMethod"]


@pytest.mark.parametrize("compression", ["lz4", "gzip", "none"])
async def test_longhorn_reads_and_restores_what_imd_writes(peer: Peer, tmp_path: Path, compression: str) -> None:
    p1, img1, p2, img2 = snapshots(tmp_path)
    url1 = await imd_backup(peer, "vol-imd", "s1", p1, "backup-imd-1", compression)
    url2 = await imd_backup(peer, "vol-imd", "s2", p2, "backup-imd-2", compression)
    listing = peer.run("ls", f"-dest={peer.target}")
    assert sorted(listing["vol-imd"]["Backups"]) == ["backup-imd-1", "backup-imd-2"]
    go_info = peer.run("inspect", f"-url={url2}")
    ours = await inspect_backup(url2, envs=peer.envs, options=OPTIONS)
    import msgspec

    same_fields(go_info, msgspec.to_builtins(ours))
    assert go_info["IsIncremental"] is True and go_info["Labels"] == {"made-by": "imd", "quote": '"<&>"'}
    volume = peer.run("inspect", f"-url={peer.target}?volume=vol-imd")
    assert (volume["LastBackupName"], int(volume["Size"])) == ("backup-imd-2", len(img1))
    assert peer.restore(url1, tmp_path / "go-r1") == img1
    assert peer.restore(url2, tmp_path / "go-r2") == img2


@pytest.mark.parametrize("compression", ["lz4", "gzip", "none"])
async def test_imd_reads_and_restores_what_longhorn_writes(peer: Peer, tmp_path: Path, compression: str) -> None:
    p1, img1, p2, img2 = snapshots(tmp_path)
    url1 = peer.create("vol-lh", "s1", p1, "backup-lh-1", compression, labels="made-by=longhorn")
    url2 = peer.create("vol-lh", "s2", p2, "backup-lh-2", compression, previous=f"s1={p1}")
    listing = await list_target(peer.target, envs=peer.envs, options=OPTIONS)
    assert sorted(listing["vol-lh"].backups) == ["backup-lh-1", "backup-lh-2"]
    import msgspec

    for url in (url1, url2):
        same_fields(peer.run("inspect", f"-url={url}"), msgspec.to_builtins(await inspect_backup(url, envs=peer.envs)))
    assert await imd_restore(peer, url1, tmp_path / "r1", len(img1)) == img1
    assert await imd_restore(peer, url2, tmp_path / "r2", len(img2)) == img2
    (tmp_path / "r12").write_bytes(img1)
    assert await imd_restore(peer, url2, tmp_path / "r12", len(img2), last="backup-lh-1") == img2


async def test_each_continues_the_others_volume_and_deletes_its_backups(peer: Peer, tmp_path: Path) -> None:
    p1, img1, p2, img2 = snapshots(tmp_path)
    # Longhorn starts, imd continues incrementally, Longhorn restores it.
    peer.create("vol-mix", "s1", p1, "backup-1", "lz4")
    url2 = await imd_backup(peer, "vol-mix", "s2", p2, "backup-2", "lz4")
    assert (await inspect_backup(url2, envs=peer.envs)).is_incremental
    assert peer.restore(url2, tmp_path / "go-r2") == img2
    # Longhorn deletes imd's backup (its GC); imd restores what remains, then
    # deletes Longhorn's backup; Longhorn sees an empty volume.
    peer.run("delete", f"-url={url2}")
    url1 = f"{peer.target}?backup=backup-1&volume=vol-mix"
    assert await imd_restore(peer, url1, tmp_path / "r1", len(img1)) == img1
    url3 = peer.create("vol-mix", "s3", p2, "backup-3", "lz4")
    result = await delete_backup(url1, envs=peer.envs, options=OPTIONS)
    assert result.gc_skipped == ""
    assert peer.restore(url3, tmp_path / "go-r3") == img2
    assert sorted(peer.run("ls", f"-dest={peer.target}")["vol-mix"]["Backups"]) == ["backup-3"]


async def test_longhorn_respects_imds_locks(peer: Peer, tmp_path: Path) -> None:
    p1, *_ = snapshots(tmp_path)
    await imd_backup(peer, "vol-lock", "s1", p1, "backup-1", "lz4")
    driver = await open_driver(peer.target, peer.envs, OPTIONS)
    async with FileLock(driver, "vol-lock", DELETION_LOCK, OPTIONS):
        with pytest.raises(RuntimeError, match="failed to acquire lock"):
            peer.create("vol-lock", "s2", p1, "backup-2", "lz4")
    peer.create("vol-lock", "s2", p1, "backup-2", "lz4")  # and goes on once it is released


async def test_default_block_size_both_ways(peer: Peer, tmp_path: Path) -> None:
    mib2 = 2 * 1024 * 1024
    image = tmp_path / "big.img"
    data = write_image(image, [random_block(5, mib2), None, random_block(6, mib2), None], mib2)
    with FileBlockSource(str(image)) as source:
        ours = await create_backup(
            BackupSpec(target=peer.target, volume_name="vol-2m", snapshot_name="s1", backup_name="backup-imd"),
            source,
            envs=peer.envs,
            options=OPTIONS,
        )
    assert peer.restore(ours.url, tmp_path / "go") == data
    args = ["create", f"-dest={peer.target}", "-volume=vol-2m-lh", f"-size={len(data)}", "-snapshot-name=s1"]
    args += [f"-snapshot=s1={image}", "-backup=backup-lh", "-compression=lz4"]
    theirs = peer.run(*args)["url"]
    assert await imd_restore(peer, theirs, tmp_path / "ours", len(data)) == data
