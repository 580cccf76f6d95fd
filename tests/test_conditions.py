"""Engines' FilesystemReadOnly condition, from the node's mount table, as
the Go original reports it for V1 (issue 13): a real daemon reading a
mounts file of our own (the seam: imd reads whatever file `mounts_file`
names, /proc/self/mounts by default), over the wire."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.edges.mounts import staged_volumes, volume_key
from imd.services.conditions import MountConditions
from tests.helpers import SLEEP, RunningDaemon, eventually, spec, until_event, watching
from tests.v2.fakes import supervisor

pytestmark = pytest.mark.asyncio

CSI = "/var/lib/kubelet/plugins/kubernetes.io/csi/driver.longhorn.io"


def staging(volume: str, options: str) -> str:
    return f"/dev/longhorn/{volume} {CSI}/{volume_key(volume)}/globalmount ext4 {options} 0 0\n"


async def test_mount_table_parsing() -> None:
    table = (
        "proc /proc proc rw,nosuid 0 0\n"
        + staging("vol-a", "ro,relatime")
        + staging("vol-b", "rw,relatime,emergency_ro")
        + staging("vol-c", "rw,relatime")
        + "/dev/sdb /mnt/with\\040space/globalmount ext4 ro 0 0\n"
        + "short line\n"
    )
    staged = staged_volumes(table)
    assert staged == {
        volume_key("vol-a"): True,
        volume_key("vol-b"): True,
        volume_key("vol-c"): False,
        "with space": True,
    }
    assert volume_key("vol-a") == hashlib.sha256(b"vol-a").hexdigest()


def conditions_of(response: inst.InstanceResponse | pm.ProcessResponse) -> dict[str, bool]:
    return dict(response.status.conditions)


async def wait_conditions(daemon: RunningDaemon, name: str, expected: dict[str, bool]) -> None:
    async with asyncio.timeout(20):
        while True:
            got = await daemon.instances().InstanceGet(inst.InstanceGetRequest(name=name))
            if conditions_of(got) == expected:
                return
            await asyncio.sleep(0.05)


async def test_engines_report_a_read_only_staged_volume(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mounts = tmp_path / "mounts"
    mounts.write_text("")
    daemon = await daemon_factory(mounts_file=str(mounts), mount_check_interval_s=0.1)
    stub = daemon.instances()

    def v1(name: str, kind: str, volume: str) -> inst.InstanceCreateRequest:
        return inst.InstanceCreateRequest(
            spec=inst.InstanceSpec(
                name=name,
                type=kind,
                volume_name=volume,
                process_instance_spec=inst.ProcessInstanceSpec(binary=SLEEP, args=["1000"]),
            )
        )

    await stub.InstanceCreate(v1("pvc-1-e-0", "engine", "pvc-1"))
    await stub.InstanceCreate(v1("pvc-1-r-1a2b", "replica", "pvc-1"))
    await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("pvc-2-e-0")))  # volume from the name

    async with watching(daemon.pm()) as events:
        mounts.write_text(staging("pvc-1", "ro,relatime") + staging("pvc-2", "rw,relatime"))
        # Watchers hear of it: the manager lists again on any event.
        await until_event(
            events, lambda e: e.spec.name == "pvc-1-e-0" and dict(e.status.conditions) == {"FilesystemReadOnly": True}
        )
    await wait_conditions(daemon, "pvc-2-e-0", {"FilesystemReadOnly": False})
    listing = (await stub.InstanceList(Empty())).instances
    assert conditions_of(listing["pvc-1-r-1a2b"]) == {}  # replicas have no such condition
    got = await daemon.pm().ProcessGet(pm.ProcessGetRequest(name="pvc-1-e-0"))
    assert conditions_of(got) == {"FilesystemReadOnly": True}

    # The filesystem is remounted read-write: the condition follows.
    mounts.write_text(staging("pvc-1", "rw,relatime"))
    await wait_conditions(daemon, "pvc-1-e-0", {"FilesystemReadOnly": False})
    # No longer staged, or a table that cannot be read: nothing changes.
    mounts.unlink()
    await eventually(lambda: "cannot read the mount table" in daemon.stderr(), "the unreadable table logged")
    got = await stub.InstanceGet(inst.InstanceGetRequest(name="pvc-1-e-0"))
    assert conditions_of(got) == {"FilesystemReadOnly": False}
    # Readable again, with a change: the checks went on, and the failure was
    # said once (test_an_unreadable_table_is_logged_once checks "once" pass
    # by pass).
    mounts.write_text(staging("pvc-1", "ro,relatime"))
    await wait_conditions(daemon, "pvc-1-e-0", {"FilesystemReadOnly": True})
    assert daemon.stderr().count("cannot read the mount table") == 1


async def test_an_unreadable_table_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conditions = MountConditions(supervisor(tmp_path), tmp_path / "absent", interval=60)
    for _ in range(3):
        assert await conditions.check() == 0
    assert [r.getMessage() for r in caplog.records].count("cannot read the mount table") == 1
    (tmp_path / "absent").write_text("")
    assert await conditions.check() == 0  # readable again: a later failure is said again
    (tmp_path / "absent").unlink()
    await conditions.check()
    assert [r.getMessage() for r in caplog.records].count("cannot read the mount table") == 2
