"""Longhorn's backupstore, in Python: backups of volumes to S3, to a
mounted filesystem (``vfs``) or to NFS, in exactly the format and with the
locks of Longhorn's own library, so that either reads and restores what
the other writes.

Below data engine V2 and above the edges: nothing here knows SPDK. V2
reads a snapshot through a ``BlockSource`` and restores through a
``BlockSink`` (``imd.backupstore.seams``); ``imd.backupstore.files`` has
both over a raw file.

- ``create_backup(spec, source, envs=..., progress=...)``
- ``restore(backup_url, sink, envs=..., last_backup=...)``
- ``list_target``, ``inspect_volume``, ``inspect_backup``, ``delete_backup``
- ``cleanup_mount_points()`` (CleanupBackupMountPoints)
- ``parse_target``, ``parse_backup_url``, ``format_backup_url``
"""

from imd.backupstore.backup import BackupResult, BackupSpec, create_backup
from imd.backupstore.catalog import (
    BackupInfo,
    DeleteResult,
    VolumeInfo,
    delete_backup,
    inspect_backup,
    inspect_volume,
    list_target,
)
from imd.backupstore.driver import Driver, StoreOptions, open_driver
from imd.backupstore.files import FileBlockSink, FileBlockSource
from imd.backupstore.nfs import cleanup_mount_points
from imd.backupstore.restore import RestoreResult, restore
from imd.backupstore.seams import BlockSink, BlockSource, Progress, ProgressCallback
from imd.backupstore.urls import BackupRef, format_backup_url, parse_backup_url, parse_target

__all__ = [
    "BackupInfo",
    "BackupRef",
    "BackupResult",
    "BackupSpec",
    "BlockSink",
    "BlockSource",
    "DeleteResult",
    "Driver",
    "FileBlockSink",
    "FileBlockSource",
    "Progress",
    "ProgressCallback",
    "RestoreResult",
    "StoreOptions",
    "VolumeInfo",
    "cleanup_mount_points",
    "create_backup",
    "delete_backup",
    "format_backup_url",
    "inspect_backup",
    "inspect_volume",
    "list_target",
    "open_driver",
    "parse_backup_url",
    "parse_target",
    "restore",
]
