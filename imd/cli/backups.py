"""``imd engine backup create|status`` and ``imd engine restore|restore-status``:
a V2 engine's backups and restores from the command line, through Longhorn's
engine proxy (ProxyEngineService, base port + 1). Credentials for the
target go in the request (``--env KEY=VALUE``, Longhorn's names, or
``--env-from-environment``); the daemon never takes them from its own
environment."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from grpclib.client import Channel

from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.cli.backup import _envs
from imd.cli.output import emit
from imd.cli.snapshots import PROXY_OFFSET, _labels, _proxy, _target

BACKUP_COLUMNS = ("backup", "snapshot", "state", "progress", "replica", "url", "error")
RESTORE_COLUMNS = ("replica", "restoring", "state", "progress", "backup", "last_restored", "error")
DONE = ("complete", "error")


def _env_list(a: argparse.Namespace) -> list[str]:
    return [f"{k}={v}" for k, v in _envs(a).items()]


def _backup_row(name: str, s: Any) -> dict[str, Any]:
    return {
        "backup": name,
        "snapshot": s.snapshot_name,
        "state": s.state,
        "progress": f"{s.progress}%",
        "replica": s.replica_address,
        "url": s.backup_url,
        "error": s.error,
    }


async def backup_create(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineSnapshotBackupRequest(
        proxy_engine_request=_target(a),
        envs=_env_list(a),
        backup_name=a.backup_name or "",
        snapshot_name=a.snapshot,
        backup_target=a.target,
        labels=_labels(a.label),
        compression_method=a.compression,
        concurrent_limit=a.concurrency,
        parameters=_labels(a.parameter),
    )
    started = await _proxy(ch).SnapshotBackup(request)
    if not a.wait:
        row = {
            "backup": started.backup_id,
            "replica": started.replica,
            "incremental": "yes" if started.is_incremental else "no",
        }
        emit(started, as_json=a.json, rows=[row], columns=("backup", "replica", "incremental"))
        return
    a.backup = started.backup_id
    await backup_status(a, ch)


async def backup_status(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineSnapshotBackupStatusRequest(proxy_engine_request=_target(a), backup_name=a.backup)
    while True:
        reply = await _proxy(ch).SnapshotBackupStatus(request)
        if not getattr(a, "wait", False) or reply.state in DONE:
            break
        await asyncio.sleep(0.5)
    emit(reply, as_json=a.json, rows=[_backup_row(a.backup, reply)], columns=BACKUP_COLUMNS)
    if reply.state == "error" and getattr(a, "wait", False):
        raise SystemExit(1)


async def restore(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineBackupRestoreRequest(
        proxy_engine_request=_target(a), envs=_env_list(a), url=a.url, concurrent_limit=a.concurrency
    )
    await _proxy(ch).BackupRestore(request)
    await restore_status(a, ch)


async def restore_status(a: argparse.Namespace, ch: Channel) -> None:
    while True:
        reply = await _proxy(ch).BackupRestoreStatus(_target(a))
        if not getattr(a, "wait", False) or not any(s.is_restoring for s in reply.status.values()):
            break
        await asyncio.sleep(0.5)
    rows = [
        {
            "replica": address,
            "restoring": "yes" if s.is_restoring else "no",
            "state": s.state,
            "progress": f"{s.progress}%",
            "backup": s.current_restoring_backup or s.backup_url,
            "last_restored": s.last_restored,
            "error": s.error,
        }
        for address, s in sorted(reply.status.items())
    ]
    emit(reply, as_json=a.json, rows=rows, columns=RESTORE_COLUMNS)
    if getattr(a, "wait", False) and any(s.state == "error" for s in reply.status.values()):
        raise SystemExit(1)


def _credentials(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="e.g. AWS_ENDPOINTS=...")
    p.add_argument(
        "--env-from-environment", action="store_true", help="take the S3 variables from this process's environment"
    )


def add_commands(commands: Any) -> None:
    """``backup`` (create, status), ``restore`` and ``restore-status`` under ``imd engine``."""
    backup = commands.add_parser("backup", help="back up the volume's snapshots").add_subparsers(
        dest="action", required=True
    )
    p = backup.add_parser("create", help="back up a snapshot (answers at once; --wait for the end)")
    p.add_argument("engine")
    p.add_argument("snapshot")
    p.add_argument("target", help="s3://bucket@region/path/, vfs:///path or nfs://server:/export")
    p.add_argument("--backup-name", help="default: backup-<16 hex>")
    p.add_argument("--compression", default="lz4", choices=("lz4", "gzip", "none"))
    p.add_argument("--concurrency", type=int, default=0, help="uploads in flight (default 5)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE", help="e.g. backup-mode=full")
    p.add_argument("--wait", action="store_true", help="until the backup is complete (exit 1 on error)")
    _credentials(p)
    p.set_defaults(func=backup_create, port_offset=PROXY_OFFSET)
    p = backup.add_parser("status", help="a backup's progress, URL or error")
    p.add_argument("engine")
    p.add_argument("backup")
    p.add_argument("--wait", action="store_true", help="until it is complete or failed")
    p.set_defaults(func=backup_status, port_offset=PROXY_OFFSET)
    p = commands.add_parser("restore", help="fill the volume from a backup (engine without frontend)")
    p.add_argument("engine")
    p.add_argument("url", help="a backup URL: TARGET?backup=NAME&volume=VOLUME")
    p.add_argument("--concurrency", type=int, default=0, help="downloads in flight (default 5)")
    p.add_argument("--wait", action="store_true", help="until the restore is over (exit 1 on error)")
    _credentials(p)
    p.set_defaults(func=restore, port_offset=PROXY_OFFSET)
    p = commands.add_parser("restore-status", help="the restore's progress, per replica")
    p.add_argument("engine")
    p.add_argument("--wait", action="store_true", help="until no replica is restoring")
    p.set_defaults(func=restore_status, port_offset=PROXY_OFFSET)
