"""nfs:// targets: refused with the reason where the node has no
mount.nfs (this machine), and the clean-up of the mount points."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imd.backupstore import cleanup_mount_points, open_driver
from imd.backupstore.nfs import mount_nfs_binary
from imd.errors import FailedPrecondition
from tests.backupstore.conftest import FAST

pytestmark = pytest.mark.asyncio


async def test_without_mount_nfs_an_nfs_target_is_a_failed_precondition() -> None:
    if mount_nfs_binary() is not None:
        pytest.skip("this node has mount.nfs: the refusal cannot be seen here")
    with pytest.raises(FailedPrecondition) as err:
        await open_driver("nfs://198.18.0.1:/export/backups", None, FAST)
    assert err.value.field == "backup_target"
    assert "mount.nfs is not installed" in str(err.value)


async def test_cleanup_unmounts_everything_below_the_root(tmp_path: Path) -> None:
    root = tmp_path / "mounts"
    deep = root / "10_0_0_5" / "export" / "a"
    other = root / "nfs_example" / "export"
    for point in (deep, other):
        point.mkdir(parents=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=False).returncode:
            pytest.skip("cannot mount a tmpfs here (not root, or no mount namespace rights)")
    (deep / "file").write_text("x")
    unmounted = await cleanup_mount_points(str(root))
    assert sorted(unmounted) == sorted([str(deep), str(other)])
    mounts = Path("/proc/self/mounts").read_text()
    assert str(root) not in mounts
    assert list(root.iterdir()) == []  # the empty directories went too
    assert await cleanup_mount_points(str(root)) == []
    assert await cleanup_mount_points(str(tmp_path / "never-made")) == []
