"""What a backup target holds, and deleting a backup: Longhorn's ``List``,
``InspectVolume``, ``InspectBackup`` and ``DeleteDeltaBlockBackup``.

Listings show complete backups only: a config without a creation time is
Longhorn's mark of a backup still being made (or that failed), and is
left out, with a message on its volume. ``BackupInfo`` and ``VolumeInfo``
have Longhorn's fields (and, in JSON, its names).

Deleting a backup is Longhorn's, step for step, under the volume's
deletion lock: remove the backup's config, move ``LastBackupName`` to the
newest remaining backup if it was this one, then collect the garbage:
count each block's references from every remaining backup and remove the
blocks nobody references, unless a backup is in progress, a config cannot
be read, or a backup appeared meanwhile (then nothing is removed, as
there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import msgspec

from imd.backupstore.backup import load_backup, load_volume
from imd.backupstore.driver import Driver, StoreOptions, open_driver
from imd.backupstore.format import (
    BACKUP_PREFIX,
    BLOCK_SUFFIX,
    CFG_SUFFIX,
    DEFAULT_BLOCK_SIZE,
    VOLUMES,
    BackupConfig,
    VolumeConfig,
    backup_cfg_path,
    backups_dir,
    block_path,
    blocks_dir,
    check_name,
    encode_volume,
    extract_names,
    is_checksum,
    parse_time,
    valid_name,
    volume_cfg_path,
)
from imd.backupstore.format import (
    BASE as BACKUPSTORE_BASE,
)
from imd.backupstore.locks import DELETION_LOCK, FileLock
from imd.backupstore.urls import format_backup_url, parse_backup_url
from imd.errors import ImdError, NotFound, Unavailable

LIST_CONCURRENCY = 16

T = TypeVar("T")

_SPECIAL_NAMES = {"url": "URL", "storage_class_name": "StorageClassname"}


def _longhorn_name(field: str) -> str:
    return _SPECIAL_NAMES.get(field) or "".join(part.capitalize() for part in field.split("_"))


class BackupInfo(msgspec.Struct, kw_only=True, rename=_longhorn_name):
    """Longhorn's ``BackupInfo`` (sizes as numbers), plus the block count."""

    name: str
    url: str
    snapshot_name: str
    snapshot_created: str
    created: str
    size: int
    labels: dict[str, str] | None
    parameters: dict[str, str] | None
    is_incremental: bool
    compression_method: str
    newly_uploaded_data_size: int
    re_uploaded_data_size: int
    volume_name: str = ""
    volume_size: int = 0
    volume_created: str = ""
    volume_backing_image_name: str = ""
    blocks: int = 0


class VolumeInfo(msgspec.Struct, kw_only=True, rename=_longhorn_name):
    """Longhorn's ``VolumeInfo``; ``backups`` filled by listings."""

    name: str
    size: int = 0
    labels: dict[str, str] | None = None
    created: str = ""
    last_backup_name: str = ""
    last_backup_at: str = ""
    data_stored: int = 0
    messages: dict[str, str] = msgspec.field(default_factory=dict)
    backups: dict[str, BackupInfo] = msgspec.field(default_factory=dict)
    backing_image_name: str = ""
    backing_image_checksum: str = ""
    storage_class_name: str = ""
    data_engine: str = ""


def backup_info(backup: BackupConfig, target_url: str, volume: VolumeConfig | None = None) -> BackupInfo:
    """``fillBackupInfo`` (and ``fillFullBackupInfo`` with the volume)."""
    info = BackupInfo(
        name=backup.name,
        url=format_backup_url(target_url, backup.volume_name, backup.name),
        snapshot_name=backup.snapshot_name,
        snapshot_created=backup.snapshot_created_at,
        created=backup.created_time,
        size=backup.size,
        labels=backup.labels,
        parameters=backup.parameters,
        is_incremental=backup.is_incremental,
        compression_method=backup.compression_method,
        newly_uploaded_data_size=backup.newly_uploaded_data_size,
        re_uploaded_data_size=backup.re_uploaded_data_size,
        blocks=len(backup.blocks),
    )
    if volume is not None:
        info.volume_name = volume.name
        info.volume_size = volume.size
        info.volume_created = volume.created_time
        info.volume_backing_image_name = volume.backing_image_name
    return info


def volume_info(volume: VolumeConfig) -> VolumeInfo:
    """``fillVolumeInfo``: DataStored counts blocks at 2 MiB, as Longhorn does."""
    return VolumeInfo(
        name=volume.name,
        size=volume.size,
        labels=volume.labels,
        created=volume.created_time,
        last_backup_name=volume.last_backup_name,
        last_backup_at=volume.last_backup_at,
        data_stored=volume.block_count * DEFAULT_BLOCK_SIZE,
        backing_image_name=volume.backing_image_name,
        backing_image_checksum=volume.backing_image_checksum,
        storage_class_name=volume.storage_class_name,
        data_engine=volume.data_engine,
    )


async def _bounded(coros: list[Coroutine[Any, Any, T]], limit: int = LIST_CONCURRENCY) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def volume_names(driver: Driver) -> list[str]:
    """The volumes' folders (``getVolumeNames``): two levels of checksum
    prefixes, then the names."""
    base = f"{BACKUPSTORE_BASE}/{VOLUMES}"
    level1 = await driver.listdir(base)
    level2_lists = await _bounded([driver.listdir(f"{base}/{a}") for a in level1])
    level2 = [f"{base}/{a}/{b}" for a, names in zip(level1, level2_lists, strict=True) for b in names]
    name_lists = await _bounded([driver.listdir(p) for p in level2])
    return sorted({n for names in name_lists for n in names if valid_name(n)})


async def backup_names(driver: Driver, volume: str) -> list[str]:
    return extract_names(await driver.listdir(backups_dir(volume)), BACKUP_PREFIX, CFG_SUFFIX)


async def _volume_listing(driver: Driver, volume: str, volume_only: bool) -> VolumeInfo:
    try:
        info = volume_info(await load_volume(driver, volume))
    except NotFound:
        return VolumeInfo(name=volume, messages={"error": f"cannot find {volume_cfg_path(volume)} in backupstore"})
    except Unavailable as exc:
        return VolumeInfo(name=volume, messages={"error": str(exc)})
    if volume_only:
        return info
    names = await backup_names(driver, volume)
    loaded = await _bounded([_try_backup(driver, volume, n) for n in names])
    skipped = []
    for name, backup in zip(names, loaded, strict=True):
        if isinstance(backup, BackupConfig) and not backup.in_progress:
            info.backups[name] = backup_info(backup, driver.url)
        else:
            skipped.append(name)
    if skipped:
        info.messages["error"] = "not listed (in progress, failed or unreadable): " + ", ".join(skipped)
    return info


async def _try_backup(driver: Driver, volume: str, name: str) -> BackupConfig | None:
    try:
        return await load_backup(driver, volume, name)
    except ImdError:
        return None


async def list_target(
    target: str,
    *,
    volume: str = "",
    volume_only: bool = False,
    envs: Mapping[str, str] | None = None,
    options: StoreOptions | None = None,
) -> dict[str, VolumeInfo]:
    """Every volume on the target (or just ``volume``), each with its
    complete backups unless ``volume_only`` (``backupstore.List``)."""
    if volume:
        check_name(volume, "volume_name")
    driver = await open_driver(target, envs, options)
    try:
        names = [volume] if volume else await volume_names(driver)
        infos = await _bounded([_volume_listing(driver, n, volume_only) for n in names], 4)
        return dict(zip(names, infos, strict=True))
    finally:
        await driver.close()


async def inspect_volume(
    volume_url: str, *, envs: Mapping[str, str] | None = None, options: StoreOptions | None = None
) -> VolumeInfo:
    """``InspectVolume``: a volume URL (a backup URL without ``backup=``)."""
    ref = parse_backup_url(volume_url, field="volume_url", need_backup=False)
    driver = await open_driver(ref.target, envs, options)
    try:
        return volume_info(await load_volume(driver, ref.volume))
    finally:
        await driver.close()


async def inspect_backup(
    backup_url: str, *, envs: Mapping[str, str] | None = None, options: StoreOptions | None = None
) -> BackupInfo:
    """``InspectBackup``: a complete backup, with its volume's fields; one
    still in progress is NOT_FOUND as a backup (Longhorn refuses it too)."""
    ref = parse_backup_url(backup_url)
    driver = await open_driver(ref.target, envs, options)
    try:
        volume = await load_volume(driver, ref.volume)
        backup = await load_backup(driver, ref.volume, ref.backup)
        if backup.in_progress:
            raise NotFound(f"backup {ref.backup} is still in progress (or failed)", field="backup_url")
        return backup_info(backup, driver.url, volume)
    finally:
        await driver.close()


class DeleteResult(msgspec.Struct, frozen=True, kw_only=True):
    backup_name: str
    volume_name: str
    blocks_removed: int
    blocks_retained: int
    gc_skipped: str  # why no block was removed, or ""


async def delete_backup(
    backup_url: str, *, envs: Mapping[str, str] | None = None, options: StoreOptions | None = None
) -> DeleteResult:
    ref = parse_backup_url(backup_url)
    options = options or StoreOptions()
    driver = await open_driver(ref.target, envs, options)
    try:
        async with FileLock(driver, ref.volume, DELETION_LOCK, options):
            return await _delete(driver, ref.volume, ref.backup)
    finally:
        await driver.close()


async def _delete(driver: Driver, volume_name: str, backup_name: str) -> DeleteResult:
    try:
        doomed = await load_backup(driver, volume_name, backup_name)
    except ImdError:
        doomed = BackupConfig(name=backup_name, volume_name=volume_name)
    await driver.remove(backup_cfg_path(volume_name, backup_name))
    try:
        volume = await load_volume(driver, volume_name)
    except NotFound:
        raise NotFound(f"volume {volume_name} is not on the backup target", field="backup_url") from None
    update_last = doomed.name == volume.last_backup_name
    if update_last:
        volume.last_backup_name = ""
        volume.last_backup_at = ""

    skipped = ""
    names = await backup_names(driver, volume_name)
    block_files = await driver.list_files(blocks_dir(volume_name))
    refcount = {
        n.rsplit("/", 1)[-1].removesuffix(BLOCK_SUFFIX): 0
        for n in block_files
        if n.endswith(BLOCK_SUFFIX) and is_checksum(n.rsplit("/", 1)[-1].removesuffix(BLOCK_SUFFIX))
    }
    present = set(refcount)
    latest: BackupConfig | None = None
    for name in names:
        try:
            backup = await load_backup(driver, volume_name, name)
        except ImdError as exc:
            skipped = f"backup {name} cannot be read ({exc})"
            break
        if backup.in_progress:
            skipped = f"backup {name} is in progress"
            break
        for block in backup.blocks:
            refcount[block.block_checksum] = refcount.get(block.block_checksum, 0) + 1
        if update_last:
            when = parse_time(backup.snapshot_created_at)
            if when is None:
                skipped = f"backup {name} has no valid snapshot time"
                break
            latest_when = parse_time(latest.snapshot_created_at) if latest is not None else None
            if latest_when is None or when > latest_when:
                latest = backup
    if update_last:
        if not skipped and latest is not None:
            volume.last_backup_name = latest.name
            volume.last_backup_at = latest.snapshot_created_at
        await driver.write(volume_cfg_path(volume_name), encode_volume(volume))
    if not skipped and sorted(await backup_names(driver, volume_name)) != sorted(names):
        skipped = "backups were created meanwhile"
    if skipped:
        return DeleteResult(
            backup_name=backup_name, volume_name=volume_name, blocks_removed=0, blocks_retained=0, gc_skipped=skipped
        )
    unused = [c for c, count in refcount.items() if count == 0]
    failed = await driver.remove_files([block_path(volume_name, c) for c in unused])
    if failed:
        raise Unavailable(f"backup target: cannot remove blocks {', '.join(failed)}")
    retained = sum(1 for c, count in refcount.items() if count > 0 and c in present)
    volume = await load_volume(driver, volume_name)
    volume.block_count = retained
    await driver.write(volume_cfg_path(volume_name), encode_volume(volume))
    return DeleteResult(
        backup_name=backup_name,
        volume_name=volume_name,
        blocks_removed=len(unused),
        blocks_retained=retained,
        gc_skipped="",
    )
