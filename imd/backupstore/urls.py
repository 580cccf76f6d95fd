"""Backup targets and backup URLs, as Longhorn writes and reads them.

A *target* is where backups go (``backup_target``):

- ``s3://bucket@region/path/`` (or ``s3://bucket/path/``, region from the
  request or us-east-1),
- ``vfs:///path``: a directory already mounted on the node,
- ``nfs://server:/export[/path][?nfsOptions=...]``: mounted by imd under
  ``/var/lib/longhorn-backupstore-mounts``.

A *backup URL* is a target with ``backup=`` and ``volume=`` query
parameters, as ``EncodeBackupURL`` forms it
(``s3://bucket@region/path/?backup=backup-1&volume=vol``); without
``backup=`` it names a volume. Query parameters are sorted and escaped as
Go's ``url.Values.Encode`` does, so imd's URLs are the library's, byte for
byte.
"""

from __future__ import annotations

import posixpath
from urllib.parse import parse_qsl, quote_plus, urlsplit

import msgspec

from imd.backupstore.format import check_name, valid_name
from imd.errors import InvalidArgument

MOUNT_ROOT = "/var/lib/longhorn-backupstore-mounts"
FIELD = "backup_target"


class S3Target(msgspec.Struct, frozen=True):
    bucket: str
    region: str  # "" when the URL has none
    prefix: str  # the path inside the bucket, without a leading '/'
    url: str  # as Longhorn's driver reports it (GetURL)


class VfsTarget(msgspec.Struct, frozen=True):
    path: str
    url: str


class NfsTarget(msgspec.Struct, frozen=True):
    source: str  # server:/export/path, what mount.nfs is given
    mount_dir: str
    options: tuple[str, ...]  # from nfsOptions=, else imd picks them
    url: str


Target = S3Target | VfsTarget | NfsTarget


class _Parts(msgspec.Struct, frozen=True):
    scheme: str
    netloc: str
    path: str
    query: list[tuple[str, str]]


def _split(url: str, field: str) -> _Parts:
    if not url:
        raise InvalidArgument("empty URL", field=field)
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise InvalidArgument("control character in URL", field=field)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidArgument(f"{url!r}: {exc}", field=field) from None
    if not parts.scheme:
        raise InvalidArgument(f"{url!r} has no scheme (s3://, vfs://, nfs://)", field=field)
    query = parse_qsl(parts.query, keep_blank_values=True)
    return _Parts(parts.scheme, parts.netloc, parts.path, query)


def parse_target(url: str, *, field: str = FIELD) -> Target:
    """A target URL (any ``backup=``/``volume=`` parameters are ignored, so a
    backup URL names its target too). Malformed: InvalidArgument naming
    ``backup_target``."""
    p = _split(url, field)
    if p.scheme == "s3":
        user, at, host = p.netloc.rpartition("@")
        bucket, region = (user, host) if at else (host, "")
        if not bucket or not p.path:
            raise InvalidArgument(f"{url!r}: want s3://bucket@region/path/ or s3://bucket/path/", field=field)
        prefix = p.path.lstrip("/")
        normalized = f"s3://{bucket}" + (f"@{region}" if region else "") + f"/{prefix}"
        return S3Target(bucket=bucket, region=region, prefix=prefix, url=normalized)
    if p.scheme == "vfs":
        if p.netloc:
            raise InvalidArgument(f"{url!r}: want vfs:///path (no host)", field=field)
        if not p.path:
            raise InvalidArgument(f"{url!r}: no path", field=field)
        return VfsTarget(path=p.path, url=f"vfs://{p.path}")
    if p.scheme == "nfs":
        if not p.netloc:
            raise InvalidArgument(f"{url!r}: want nfs://server:/export/path", field=field)
        if not p.path:
            raise InvalidArgument(f"{url!r}: no export path", field=field)
        host_dir = p.netloc.replace(".", "_").rstrip(":")
        mount_dir = posixpath.normpath(posixpath.join(MOUNT_ROOT, host_dir + p.path))
        values = [v for k, v in p.query if k == "nfsOptions"]
        options = tuple(values) if len(values) > 1 else tuple(o for o in values[0].split(",") if o) if values else ()
        source = p.netloc + p.path
        return NfsTarget(source=source, mount_dir=mount_dir, options=options, url=f"nfs://{source}")
    raise InvalidArgument(f"{url!r}: scheme {p.scheme!r} is not one of s3, vfs, nfs", field=field)


def _encode_query(pairs: list[tuple[str, str]]) -> str:
    """Go's ``url.Values.Encode``: sorted by key (values of a key in order),
    each part escaped as ``url.QueryEscape`` does."""
    ordered = sorted(pairs, key=lambda kv: kv[0])
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in ordered)


def _join(p: _Parts, query: str) -> str:
    base = f"{p.scheme}://{p.netloc}{p.path}"
    return f"{base}?{query}" if query else base


def format_backup_url(target: str, volume: str, backup: str = "") -> str:
    """``EncodeBackupURL``: the target with ``volume=`` (and ``backup=``
    unless empty) added to its query."""
    p = _split(target, FIELD)
    pairs = [*p.query, ("volume", volume)]
    if backup:
        pairs.append(("backup", backup))
    return _join(p, _encode_query(pairs))


class BackupRef(msgspec.Struct, frozen=True):
    """What a backup URL names."""

    target: str  # the URL without volume= and backup=
    volume: str
    backup: str  # "" for a volume URL


def parse_backup_url(url: str, *, field: str = "backup_url", need_backup: bool = True) -> BackupRef:
    """``DecodeBackupURL``, with errors naming ``field``."""
    p = _split(url, field)
    values = dict(p.query)
    volume = values.get("volume", "")
    backup = values.get("backup", "")
    if not valid_name(volume):
        raise InvalidArgument(f"{url!r}: no valid volume= in it (got {volume!r})", field=field)
    if backup:
        check_name(backup, field)
    elif need_backup:
        raise InvalidArgument(f"{url!r}: no backup= in it", field=field)
    rest = [(k, v) for k, v in p.query if k not in ("volume", "backup")]
    target = _join(p, _encode_query(rest))
    parse_target(target, field=field)
    return BackupRef(target=target, volume=volume, backup=backup)
