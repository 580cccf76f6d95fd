"""The node's mount table, for the one thing Longhorn's manager learns
from it through the instance manager: whether a volume's filesystem is
mounted read-only on this node (the engine condition
``FilesystemReadOnly``, which makes the manager remount the volume).

Kubelet stages a Longhorn volume at
``.../kubernetes.io/csi/driver.longhorn.io/<sha256 of the volume name>/globalmount``;
the Go original lists the mount table, keeps the mount points that end in
``/globalmount`` and keys them by that hash. A mount counts as read-only if
its options say ``ro``, or ``emergency_ro``: since Linux 6.12 an ext4 that
hit errors with ``errors=remount-ro`` keeps showing ``rw`` and reports only
that option (as go-common-libs' IsMountPointReadOnly notes).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import aiofiles

MOUNTS = Path("/proc/self/mounts")
READ_ONLY_OPTIONS = frozenset({"ro", "emergency_ro"})
_OCTAL = re.compile(r"\\([0-7]{3})")


def volume_key(volume_name: str) -> str:
    """How kubelet's staging path names a Longhorn volume."""
    return hashlib.sha256(volume_name.encode()).hexdigest()


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \ooo.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def staged_volumes(table: str) -> dict[str, bool]:
    """Volume key -> whether it is mounted read-only, from the text of a
    mounts file (``/proc/self/mounts`` format: source, mount point, type,
    options, ...). Malformed lines are skipped; a volume mounted twice takes
    its last line, as in the Go original."""
    staged: dict[str, bool] = {}
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        parts = _unescape(fields[1]).rstrip("/").split("/")
        if len(parts) >= 2 and parts[-1] == "globalmount":
            staged[parts[-2]] = not READ_ONLY_OPTIONS.isdisjoint(fields[3].split(","))
    return staged


async def read_staged_volumes(path: Path = MOUNTS) -> dict[str, bool]:
    """``staged_volumes`` of the mounts file at ``path``, read off the loop."""
    async with aiofiles.open(path) as f:
        return staged_volumes(await f.read())


def mount_points(table: str) -> list[tuple[str, str, str]]:
    """(source, mount point, filesystem type) of each line of a mounts
    file, in the kernel's order; malformed lines are skipped."""
    found = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            found.append((_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return found


async def read_mount_points(path: Path = MOUNTS) -> list[tuple[str, str, str]]:
    """``mount_points`` of the mounts file at ``path``, read off the loop."""
    async with aiofiles.open(path) as f:
        return mount_points(await f.read())
