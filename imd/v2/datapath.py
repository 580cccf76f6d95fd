"""The seam between V2 engines and spdk_ffi.

An engine needs two things from below: controllers for its replicas, with
names, owners and idempotent attach (``spdk_ffi.Initiator``, whatever its
backend), and a mirror over them with an NVMe-oF frontend (spdk_ffi's
``NativeMirror`` in the C core). ``DataPath`` bundles both. The daemon
builds the real one over the native core when SPDK is there; tests on a
machine without SPDK build one over spdk_ffi's fake backend and an
in-memory mirror, so the orchestration above (who is attached, who is in
the mirror, what is cleaned up) is tested everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from spdk_ffi import ControllerOpts, Initiator


class RebuildProgress(Protocol):
    """A copy in progress (spdk_ffi.mirror.Rebuild)."""

    done: Any  # asyncio.Future[RebuildStatus]

    def status(self) -> Any: ...

    async def cancel(self) -> None: ...


class Mirror(Protocol):
    """What an engine does with its mirror (spdk_ffi.mirror.NativeMirror)."""

    block_size: int
    num_blocks: int
    on_leg_failed: Callable[[str, str], None] | None

    async def destroy(self) -> None: ...

    def legs(self) -> list[Any]: ...

    def counters(self) -> dict[str, int]: ...

    async def add_leg(self, name: str, controller: Any, mode: Any) -> None: ...

    async def remove_leg(self, name: str) -> None: ...

    async def set_mode(self, name: str, mode: Any) -> None: ...

    async def resize(self, num_blocks: int) -> None: ...

    def start_rebuild(
        self, dst: str, src: str | None = None, *, chunk_bytes: int = ..., rate_bytes_per_s: int = ...
    ) -> RebuildProgress: ...

    async def export(self, nqn: str, address: str, port: int, nguid: str) -> Any: ...

    async def unexport(self) -> None: ...


MirrorFactory = Callable[[str, Sequence[tuple[str, Any]], int], Awaitable[Mirror]]


class ReplicaExpander(Protocol):
    """Grows a replica's lvol on its node (through that node's imd), before
    an engine grows the volume over it."""

    async def expand(self, address: str, replica: str, size: int) -> None: ...


class DataPath:
    """Controllers and mirrors for the engines of this daemon."""

    def __init__(self, initiator: Initiator, make_mirror: MirrorFactory, opts: ControllerOpts) -> None:
        self.initiator = initiator
        self.make_mirror = make_mirror
        self.opts = opts


def native_data_path(
    *, core_mask: str, mem_size_mb: int, no_huge: bool, opts: ControllerOpts, idle_spin_us: int | None = None
) -> DataPath:
    """The real one: spdk_ffi's native core (its poller starts here)."""
    from spdk_ffi.mirror import NativeMirror

    import spdk_ffi

    env: dict[str, Any] = {"core_mask": core_mask, "mem_size_mb": mem_size_mb, "no_huge": no_huge}
    if idle_spin_us is not None:
        env["idle_spin_us"] = idle_spin_us
    backend = spdk_ffi.native_backend(**env)

    async def make_mirror(name: str, legs: Sequence[tuple[str, Any]], num_blocks: int) -> Mirror:
        mirror: Mirror = await NativeMirror.create(backend, name, legs, num_blocks)  # type: ignore[arg-type]
        return mirror

    return DataPath(Initiator(backend), make_mirror, opts)
