"""``nfs://server:/export[/path]``: mounted under
``/var/lib/longhorn-backupstore-mounts/<server>/<export>`` (Longhorn's
place for it) with ``mount.nfs``, then used as a ``vfs`` target.

As Longhorn's nfs driver: a mount point that is already an NFS mount is
reused; otherwise NFS 4.2, 4.1 and 4.0 are tried in turn with
``actimeo=1,soft,timeo=300,retry=2``, unless the URL's ``nfsOptions``
say what to use. A node without ``mount.nfs`` cannot reach such a target:
FAILED_PRECONDITION saying so, before anything is tried.

``cleanup_mount_points`` unmounts whatever is mounted under that root
(CleanupBackupMountPoints) and removes the directories left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import shutil
from pathlib import Path

from imd.backupstore.driver import StoreOptions
from imd.backupstore.urls import MOUNT_ROOT, NfsTarget
from imd.backupstore.vfs import VfsDriver
from imd.edges.mounts import MOUNTS, read_mount_points
from imd.errors import FailedPrecondition, Unavailable

MINOR_VERSIONS = ("4.2", "4.1", "4.0")
_SEARCH = "/usr/sbin:/sbin:/usr/bin:/bin"


def mount_nfs_binary() -> str | None:
    """Where ``mount.nfs`` is on this node, if it is."""
    return shutil.which("mount.nfs", path=_SEARCH + ":" + os.environ.get("PATH", ""))


async def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout:g}s"
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def _is_nfs_mount(path: str, mounts: Path) -> bool:
    return any(point == path and fstype.startswith("nfs") for _s, point, fstype in await read_mount_points(mounts))


async def open_nfs(target: NfsTarget, options: StoreOptions, *, mounts: Path = MOUNTS) -> VfsDriver:
    driver = VfsDriver(target.mount_dir, target.url, kind="nfs")
    if await _is_nfs_mount(target.mount_dir, mounts):
        return driver
    binary = mount_nfs_binary()
    if binary is None:
        raise FailedPrecondition(
            f"mount.nfs is not installed on this node, so {target.url} cannot be mounted (install nfs-common)",
            field="backup_target",
        )
    await asyncio.to_thread(os.makedirs, target.mount_dir, 0o700, True)
    attempts = (
        [list(target.options)]
        if target.options
        else [[f"nfsvers={v}", "actimeo=1", "soft", "timeo=300", "retry=2"] for v in MINOR_VERSIONS]
    )
    failures = []
    for opts in attempts:
        argv = ["mount", "-t", "nfs4", "-o", ",".join(opts), target.source, target.mount_dir]
        code, output = await _run(argv, options.mount_timeout_s)
        if code == 0:
            return driver
        failures.append(f"{opts[0]}: {output}")
    raise Unavailable(f"backup target: cannot mount {target.url}: " + "; ".join(failures))


async def cleanup_mount_points(root: str = MOUNT_ROOT, *, mounts: Path = MOUNTS, timeout: float = 30.0) -> list[str]:
    """Unmount everything mounted at or below ``root`` (deepest first; a
    mount that will not go is detached lazily), then remove the empty
    directories below ``root``. Returns the mount points unmounted."""
    root = posixpath.normpath(root)
    points = sorted(
        {point for _s, point, _t in await read_mount_points(mounts) if point == root or point.startswith(root + "/")},
        key=lambda p: p.count("/"),
        reverse=True,
    )
    failures = []
    for point in points:
        code, output = await _run(["umount", "-f", point], timeout)
        if code != 0:
            code, output = await _run(["umount", "-l", point], timeout)
        if code != 0:
            failures.append(f"{point}: {output}")
    if failures:
        raise Unavailable("cannot unmount backup target mounts: " + "; ".join(failures))
    await asyncio.to_thread(_remove_empty_dirs, root)
    return points


def _remove_empty_dirs(root: str) -> None:
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        if dirpath != root:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
