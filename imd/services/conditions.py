"""Engine conditions observed on the node, as the Go original reports them
for V1: ``FilesystemReadOnly``, true when the volume an engine serves is
staged by kubelet on a read-only mount. Longhorn's manager remounts such a
volume; without the condition it never learns that it should.

Every ``interval`` the mount table is read (imd.edges.mounts) and each
running V1 engine whose volume is staged gets the condition set from its
mount. An engine whose volume is not staged keeps what it had, and a table
that cannot be read changes nothing: both as in the original.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from imd.edges.mounts import read_staged_volumes, volume_key
from imd.eventlog import fields
from imd.services.instances import v1_instance_type
from imd.supervisor.model import ProcessState, ProcessView
from imd.supervisor.supervisor import Supervisor
from imd.v2.model import ENGINE

log = logging.getLogger(__name__)

FILESYSTEM_READ_ONLY = "FilesystemReadOnly"


def volume_of(view: ProcessView) -> str:
    """The volume an engine serves: as created, else from Longhorn's process
    name (``<volume>-e-<n>``), as the Go original derives it."""
    if view.instance.volume_name:
        return view.instance.volume_name
    return "-".join(view.name.split("-")[:-2])


class MountConditions:
    def __init__(self, supervisor: Supervisor, mounts: Path, interval: float) -> None:
        self.supervisor = supervisor
        self.mounts = mounts
        self.interval = interval
        self._unreadable = False

    async def check(self) -> int:
        """One pass; how many engines' conditions changed."""
        try:
            staged = await read_staged_volumes(self.mounts)
        except OSError as exc:
            if not self._unreadable:  # once, not every interval
                log.warning("cannot read the mount table", extra=fields(path=str(self.mounts), error=str(exc)))
            self._unreadable = True
            return 0
        self._unreadable = False
        changed = 0
        for view in self.supervisor.views():
            if view.state != ProcessState.RUNNING or v1_instance_type(view.name, view.instance.type) != ENGINE:
                continue
            read_only = staged.get(volume_key(volume_of(view)))
            if read_only is not None:
                changed += self.supervisor.set_condition(view.name, view.uuid, FILESYSTEM_READ_ONLY, read_only)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()
