"""``imd backup ls|inspect``: the real command, in a child process, on a
target with no daemon anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backupstore.seaweed import SeaweedS3

DATA = Path(__file__).parent / "data" / "longhorn-made"


def imd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imd", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_ls_shows_volumes_and_backups() -> None:
    done = imd("backup", "ls", f"vfs://{DATA}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["VOLUME", "BACKUP", "SNAPSHOT", "CREATED", "SIZE", "INCREMENTAL", "COMPRESSION"]
    assert [line.split()[1] for line in lines[1:]] == [
        f"backup-{m}-{n}" for m in ("gzip", "lz4", "none") for n in (1, 2)
    ]
    as_json = json.loads(imd("backup", "ls", "--json", "--volume", "lh-made-gzip", f"vfs://{DATA}").stdout)
    assert list(as_json) == ["lh-made-gzip"]
    assert sorted(as_json["lh-made-gzip"]["Backups"]) == ["backup-gzip-1", "backup-gzip-2"]
    only = imd("backup", "ls", "--volume-only", f"vfs://{DATA}")
    assert only.returncode == 0 and "backup-" not in only.stdout and "lh-made-none" in only.stdout


def test_inspect_a_backup_and_a_volume() -> None:
    done = imd("backup", "inspect", "--json", f"vfs://{DATA}?backup=backup-none-1&volume=lh-made-none")
    info = json.loads(done.stdout)
    assert (info["Name"], info["SnapshotName"], info["IsIncremental"], info["Labels"]) == (
        "backup-none-1",
        "s1",
        False,
        {"a": "<b>", "made-by": "longhorn"},
    )
    text = imd("backup", "inspect", f"vfs://{DATA}?volume=lh-made-none").stdout
    assert "last_backup_name: backup-none-2" in text


def test_errors_say_the_status_and_the_field() -> None:
    done = imd("backup", "ls", "ftp://nowhere/x")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("imd: INVALID_ARGUMENT: backup_target:")
    missing = imd("backup", "inspect", f"vfs://{DATA}?backup=backup-none-9&volume=lh-made-none")
    assert missing.returncode == 1 and missing.stderr.startswith("imd: NOT_FOUND:")


def test_s3_credentials_from_env_flags(seaweed: SeaweedS3, tmp_path: Path) -> None:
    envs = seaweed.envs()
    flags = [f"--env={k}={v}" for k, v in envs.items()]
    done = imd("backup", "ls", *flags, seaweed.target("cli-empty"))
    assert done.returncode == 0, done.stderr
    refused = imd("backup", "ls", *flags, "--env=AWS_SECRET_ACCESS_KEY=wrong", seaweed.target("cli-empty"))
    assert refused.returncode == 1 and refused.stderr.startswith("imd: PERMISSION_DENIED:")
    from_env = imd("backup", "ls", "--env-from-environment", seaweed.target("cli-empty"), env=envs | {"PATH": "/bin"})
    assert from_env.returncode == 0, from_env.stderr


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value"])
def test_a_malformed_env_flag(bad: str) -> None:
    done = imd("backup", "ls", "--env", bad, f"vfs://{DATA}")
    assert done.returncode != 0 and "KEY=VALUE" in done.stderr
