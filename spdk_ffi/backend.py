"""The narrow interface between the controller registry and a driver.

The registry (``spdk_ffi.initiator``) decides *what* to do: names, owners,
leftovers, one attach per call. A backend only does what it is told with
one controller at a time. The native backend is SPDK's NVMe driver on the
C poller thread; tests use a fake backend that records every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from spdk_ffi.model import ControllerOpts, Namespace, Path, PathState

# An attached controller, as the backend knows it; opaque to the registry.
H = TypeVar("H")


class Backend(Protocol[H]):
    async def connect(self, paths: list[Path], hostnqn: str, opts: ControllerOpts) -> H:
        """Connect the first path (the others join as alternates); raise
        NvmeError subclasses, AttachTimeout after ``opts.attach_timeout_sec``.
        Cancellation must leave nothing attached."""
        ...

    async def disconnect(self, handle: H) -> None:
        """Abort or drain outstanding I/O, free queue pairs, detach."""
        ...

    async def add_path(self, handle: H, path: Path) -> None: ...

    async def remove_path(self, handle: H, path: Path) -> None: ...

    async def io(self, handle: H, ios: Sequence[Any]) -> None:
        """Run a batch of I/Os, awaited together; raise on the first that
        failed for a reason other than its path."""
        ...

    def failed(self, handle: H) -> bool: ...

    def namespaces(self, handle: H) -> list[Namespace]: ...

    def path_states(self, handle: H) -> list[PathState]: ...

    def counters(self, handle: H) -> dict[str, int]: ...
