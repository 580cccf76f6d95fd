"""Build stamping with the standard library only: ``setup.py`` loads this
file by path in pip's isolated build environment, where neither imd's
dependencies nor imd itself can be imported (hence ``json`` here, not
msgspec). imd.buildinfo reads what it writes."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

FILE_NAME = "_build_info.json"


def git_commit(checkout: Path) -> str:
    """HEAD of the git checkout rooted at ``checkout``, with ``-dirty`` if
    tracked files differ from it; empty if it is not a checkout or git is
    missing."""
    if not (checkout / ".git").exists():
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}-dirty" if head and dirty else head


def rfc3339(timestamp: float | None = None) -> str:
    """Longhorn's build dates are RFC 3339 in UTC."""
    if timestamp is None:
        moment = datetime.datetime.now(datetime.UTC)
    else:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(package_dir: Path) -> None:
    """Record the checkout's commit and now as the build date, beside the
    package's sources (for wheels and editable installs alike). Outside a
    checkout nothing is written: the runtime fallbacks apply."""
    commit = git_commit(package_dir.parent)
    if commit:
        text = json.dumps({"git_commit": commit, "build_date": rfc3339()})
        (package_dir / FILE_NAME).write_text(text + "\n")
