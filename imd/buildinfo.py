"""Which build of imd this is: the git commit and build date that VersionGet
and ``imd version`` report, so that an operator can tell which build a node
runs.

``setup.py`` records both in ``imd/_build_info.json`` whenever the package
is built or installed from a git checkout (editable installs included).
Where that file is missing, the commit comes from git if the package still
sits in a checkout, and the date from the installed distribution's metadata
(when it was installed). What cannot be known stays empty, never made up.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import msgspec

from imd import __version__
from imd._buildstamp import FILE_NAME, git_commit, rfc3339

PACKAGE_DIR = Path(__file__).resolve().parent


class BuildInfo(msgspec.Struct, frozen=True):
    """What every version answer (process manager, disk service, engine
    proxy) says about the build."""

    git_commit: str = ""
    build_date: str = ""
    version: str = __version__


def installed_date() -> str:
    """When the ``imd`` distribution was installed: its METADATA's mtime.
    A source checkout may also hold a bare ``imd.egg-info`` (which lists no
    files) ahead of the installed one on ``sys.path``; it is passed over."""
    for dist in metadata.distributions(name="imd"):
        for file in dist.files or ():
            if file.name == "METADATA":
                try:
                    return rfc3339(Path(str(dist.locate_file(file))).stat().st_mtime)
                except OSError:
                    break
    return ""


def load(path: Path = PACKAGE_DIR / FILE_NAME) -> BuildInfo:
    """The recorded build info, else what git and the package metadata say."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=BuildInfo)
    except (OSError, msgspec.DecodeError):
        pass
    return BuildInfo(git_commit=git_commit(PACKAGE_DIR.parent), build_date=installed_date())


BUILD = load()
