"""``imd backup ls|inspect URL``: a backup target read directly, with no
daemon (like Longhorn's ``backup`` command). Credentials and the endpoint
come from ``--env KEY=VALUE`` (Longhorn's names: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINTS, ...), never from this process's
environment; ``--env-from-environment`` takes those names from it
instead, so that a secret need not appear in the command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from imd.cli.output import table

S3_ENV_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINTS",
    "AWS_CERT",
    "VIRTUAL_HOSTED_STYLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
BACKUP_COLUMNS = ("volume", "backup", "snapshot", "created", "size", "incremental", "compression")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def _envs(a: argparse.Namespace) -> dict[str, str]:
    import os

    envs: dict[str, str] = {}
    if a.env_from_environment:
        envs.update({k: os.environ[k] for k in S3_ENV_NAMES if k in os.environ})
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"imd: --env wants KEY=VALUE, got {item!r}")
        envs[key] = value
    return envs


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


async def backup_ls(a: argparse.Namespace) -> None:
    from imd.backupstore import list_target

    listing = await list_target(a.url, volume=a.volume or "", volume_only=a.volume_only, envs=_envs(a))
    if a.json:
        _print_json(listing)
        return
    rows = []
    for name in sorted(listing):
        volume = listing[name]
        if a.volume_only or not volume.backups:
            note = volume.messages.get("error", "") or ("" if a.volume_only else "no backups")
            rows.append({"volume": name, "size": _size(volume.size), "backup": "-", "snapshot": note})
        for backup in sorted(volume.backups.values(), key=lambda b: (b.created, b.name)):
            rows.append(
                {
                    "volume": name,
                    "backup": backup.name,
                    "snapshot": backup.snapshot_name,
                    "created": backup.created,
                    "size": _size(backup.size),
                    "incremental": "yes" if backup.is_incremental else "no",
                    "compression": backup.compression_method,
                }
            )
    sys.stdout.write(table(rows, BACKUP_COLUMNS) + "\n")


async def backup_inspect(a: argparse.Namespace) -> None:
    from imd.backupstore import inspect_backup, inspect_volume, parse_backup_url

    ref = parse_backup_url(a.url, need_backup=False)
    info: Any
    if ref.backup:
        info = await inspect_backup(a.url, envs=_envs(a))
    else:
        info = await inspect_volume(a.url, envs=_envs(a))
    if a.json:
        _print_json(info)
        return
    for key, value in msgspec.structs.asdict(info).items():
        if key == "backups":
            continue
        sized = key in ("size", "volume_size", "data_stored", "newly_uploaded_data_size", "re_uploaded_data_size")
        sys.stdout.write(f"{key}: {_size(value)} ({value})\n" if sized else f"{key}: {value}\n")


def add_commands(top: Any) -> None:
    group = top.add_parser("backup", help="read a backup target (no daemon needed)")
    sub = group.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="volumes and their backups on a target")
    ls.add_argument("url", help="backup target: s3://bucket@region/path/, vfs:///path, nfs://server:/export")
    ls.add_argument("--volume", help="only this volume")
    ls.add_argument("--volume-only", action="store_true", help="volumes without their backups")
    ls.set_defaults(backup_func=backup_ls)
    inspect = sub.add_parser("inspect", help="a backup (URL with backup=) or a volume (URL with volume= only)")
    inspect.add_argument("url")
    inspect.set_defaults(backup_func=backup_inspect)
    for p in (ls, inspect):
        p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="e.g. AWS_ENDPOINTS=...")
        p.add_argument(
            "--env-from-environment",
            action="store_true",
            help="take " + ", ".join(S3_ENV_NAMES) + " from this process's environment",
        )
        p.add_argument("--json", action="store_true", help="JSON output")


def run(a: argparse.Namespace) -> int:
    import uvloop

    from imd.api.status import grpc_error
    from imd.errors import ImdError

    try:
        uvloop.run(a.backup_func(a))
        return 0
    except ImdError as exc:
        error = grpc_error(exc)
        sys.stderr.write(f"imd: {error.status.name}: {error.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
