"""What the V2 owners (disks, replicas, engines) need from their registry.

A narrow interface, so that each owner can be tested alone: tell the
registry that state changed (to be persisted), publish an instance's new
view (an event for watchers, and a change), and wait until everything so
far is durable (an acknowledged V2 change is on disk, as for V1).
"""

from __future__ import annotations

from typing import Protocol

from imd.v2.model import V2InstanceView


class Hub(Protocol):
    def changed(self) -> None: ...

    def publish(self, view: V2InstanceView) -> None: ...

    async def durable(self) -> None: ...
