"""imd.buildinfo: the commit and build date recorded at build time, and the
fallbacks when nothing was recorded."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from imd import _buildstamp, buildinfo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_stamp_records_the_checkouts_commit_and_marks_a_dirty_tree(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    package = repo / "imd"
    package.mkdir(parents=True)
    (package / "f.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD")

    _buildstamp.stamp(package)
    recorded = buildinfo.load(package / _buildstamp.FILE_NAME)
    assert recorded.git_commit == head
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", recorded.build_date)

    (package / "f.py").write_text("x = 2\n")
    assert _buildstamp.git_commit(repo) == f"{head}-dirty"


def test_no_checkout_and_no_file_leaves_the_commit_empty_not_made_up(tmp_path: Path) -> None:
    assert _buildstamp.git_commit(tmp_path) == ""
    _buildstamp.stamp(tmp_path / "imd")  # outside a checkout: nothing written
    assert not (tmp_path / "imd" / _buildstamp.FILE_NAME).exists()
