"""A fake NVMe driver below spdk_ffi's Backend seam, recording every call.

It keeps the real driver's awkward rule: connecting the same transport id
and host NQN again returns the same controller with its reference count
bumped. The registry must never rely on that, so tests check that every
controller's count is exactly 1 while attached and that the driver is empty
after the last detach.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spdk_ffi.errors import AttachTimeout
from spdk_ffi.model import ControllerOpts, Namespace, Path, PathState

_ids = itertools.count(1)


@dataclass(eq=False)
class FakeController:
    key: tuple[Path, str]
    paths: list[Path]
    refs: int = 1
    failed: bool = False
    id: int = field(default_factory=lambda: next(_ids))


class FakeBackend:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.reachable: set[tuple[str, str]] = set()
        self.namespaces_of: dict[str, list[Namespace]] = {}
        self.driver: dict[tuple[Path, str], FakeController] = {}
        self.connect_delay = 0.0
        # Targets the backend finds by asking (a fake SPDK target's listeners,
        # tests/v2/fakes.py): a path's namespaces, or None if nothing listens.
        self.resolvers: list[Callable[[Path], list[Namespace] | None]] = []

    def _resolve(self, path: Path) -> list[Namespace] | None:
        for resolver in self.resolvers:
            found = resolver(path)
            if found is not None:
                return found
        return None

    def add_target(self, traddr: str, trsvcid: str, subnqn: str, sizes: list[int]) -> None:
        self.reachable.add((traddr, trsvcid))
        self.namespaces_of[subnqn] = [Namespace(i + 1, size, 4096) for i, size in enumerate(sizes)]

    async def connect(self, paths: list[Path], hostnqn: str, opts: ControllerOpts) -> FakeController:
        first = paths[0]
        self.events.append(("connect", str(first)))
        try:
            await asyncio.sleep(self.connect_delay)
            resolved = self._resolve(first)
            if resolved is not None:
                self.namespaces_of[first.subnqn] = resolved
            elif (first.traddr, first.trsvcid) not in self.reachable:
                await asyncio.sleep(opts.attach_timeout_sec)
                raise AttachTimeout(f"no answer from {first}")
        except asyncio.CancelledError:
            self.events.append(("connect-cancelled", str(first)))
            raise
        key = (first, hostnqn)
        existing = self.driver.get(key)
        if existing is not None:  # the driver's silent refcount
            existing.refs += 1
            return existing
        controller = FakeController(key=key, paths=list(paths))
        self.driver[key] = controller
        return controller

    async def disconnect(self, handle: FakeController) -> None:
        self.events.append(("disconnect", str(handle.key[0])))
        await asyncio.sleep(0)
        handle.refs -= 1
        if handle.refs == 0:
            del self.driver[handle.key]

    async def add_path(self, handle: FakeController, path: Path) -> None:
        self.events.append(("add_path", str(path)))
        handle.paths.append(path)

    async def remove_path(self, handle: FakeController, path: Path) -> None:
        self.events.append(("remove_path", str(path)))
        handle.paths.remove(path)

    async def io(self, handle: FakeController, ios: Sequence[Any]) -> None:
        self.events.append(("io", str(len(ios))))
        await asyncio.sleep(0)

    def failed(self, handle: FakeController) -> bool:
        return handle.failed

    def namespaces(self, handle: FakeController) -> list[Namespace]:
        return self.namespaces_of.get(handle.key[0].subnqn, [])

    def path_states(self, handle: FakeController) -> list[PathState]:
        return [PathState(p, connected=True, active=i == 0) for i, p in enumerate(handle.paths)]

    def counters(self, handle: FakeController) -> dict[str, int]:
        return {"refs": handle.refs}

    def connects(self) -> int:
        return sum(1 for kind, _ in self.events if kind == "connect")

    def disconnects(self) -> int:
        return sum(1 for kind, _ in self.events if kind == "disconnect")
