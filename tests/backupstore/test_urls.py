"""Targets and backup URLs, as Longhorn's library forms and reads them."""

from __future__ import annotations

import pytest

from imd.backupstore.urls import (
    NfsTarget,
    S3Target,
    VfsTarget,
    format_backup_url,
    parse_backup_url,
    parse_target,
)
from imd.errors import InvalidArgument


def test_s3_targets() -> None:
    assert parse_target("s3://backups@us-east-1/path/") == S3Target(
        bucket="backups", region="us-east-1", prefix="path/", url="s3://backups@us-east-1/path/"
    )
    assert parse_target("s3://backups/a/b") == S3Target(
        bucket="backups", region="", prefix="a/b", url="s3://backups/a/b"
    )
    # The bucket's root, as Longhorn allows it.
    assert parse_target("s3://backups@eu-west-1/") == S3Target(
        bucket="backups", region="eu-west-1", prefix="", url="s3://backups@eu-west-1/"
    )


def test_vfs_and_nfs_targets() -> None:
    assert parse_target("vfs:///var/backups") == VfsTarget(path="/var/backups", url="vfs:///var/backups")
    assert parse_target("nfs://10.0.0.5:/opt/backupstore") == NfsTarget(
        source="10.0.0.5:/opt/backupstore",
        mount_dir="/var/lib/longhorn-backupstore-mounts/10_0_0_5/opt/backupstore",
        options=(),
        url="nfs://10.0.0.5:/opt/backupstore",
    )
    with_options = parse_target("nfs://nfs.example:/export?nfsOptions=soft,timeo=450,retrans=3")
    assert isinstance(with_options, NfsTarget)
    assert with_options.options == ("soft", "timeo=450", "retrans=3")
    assert with_options.mount_dir == "/var/lib/longhorn-backupstore-mounts/nfs_example/export"
    repeated = parse_target("nfs://h:/e?nfsOptions=soft&nfsOptions=timeo=450")
    assert isinstance(repeated, NfsTarget)
    assert repeated.options == ("soft", "timeo=450")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "backups",
        "s3://backups",  # no path
        "s3://@region/path/",  # no bucket
        "vfs://host/path",  # vfs has no host
        "vfs://",
        "nfs:///export",  # no server
        "nfs://server:",  # no export
        "ftp://server/path",
        "s3://backups@us-east-1/pa\x00th/",
        "s3://[::1/path",
    ],
)
def test_malformed_targets_name_backup_target(url: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_target(url)
    assert err.value.field == "backup_target"


def test_backup_urls_are_encoded_as_longhorn_encodes_them() -> None:
    # EncodeBackupURL's output for these (golden, from the library).
    assert format_backup_url("vfs:///tmp/bs-scratch/vfs", "vol-1", "backup-aaaa") == (
        "vfs:///tmp/bs-scratch/vfs?backup=backup-aaaa&volume=vol-1"
    )
    assert format_backup_url("s3://backups@us-east-1/gobench/", "big-1", "backup-go1") == (
        "s3://backups@us-east-1/gobench/?backup=backup-go1&volume=big-1"
    )
    assert format_backup_url("s3://backups@us-east-1/x/", "vol-1") == "s3://backups@us-east-1/x/?volume=vol-1"
    # Existing parameters are kept, sorted and escaped as url.Values.Encode does.
    assert format_backup_url("nfs://h:/e?nfsOptions=soft,timeo=450", "v1", "b1") == (
        "nfs://h:/e?backup=b1&nfsOptions=soft%2Ctimeo%3D450&volume=v1"
    )


def test_backup_urls_parse_back() -> None:
    ref = parse_backup_url("s3://backups@us-east-1/x/?backup=backup-1&volume=vol-1")
    assert (ref.target, ref.volume, ref.backup) == ("s3://backups@us-east-1/x/", "vol-1", "backup-1")
    ref = parse_backup_url("nfs://h:/e?backup=b1&nfsOptions=soft%2Ctimeo%3D450&volume=v1")
    assert ref.target == "nfs://h:/e?nfsOptions=soft%2Ctimeo%3D450"
    volume_only = parse_backup_url("vfs:///t?volume=vol-1", need_backup=False)
    assert (volume_only.volume, volume_only.backup) == ("vol-1", "")


@pytest.mark.parametrize(
    "url",
    [
        "vfs:///t?backup=backup-1",  # no volume
        "vfs:///t?backup=backup-1&volume=-bad",
        "vfs:///t?backup=b%2Fad&volume=vol-1",
        "vfs:///t?volume=vol-1",  # no backup
        "ftp://x/y?backup=backup-1&volume=vol-1",
    ],
)
def test_malformed_backup_urls_name_the_field(url: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_backup_url(url)
    assert err.value.field == "backup_url"
