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

from typing import Any, Protocol

from imd.errors import Conflict, FailedPrecondition, ImdError, InvalidArgument, Unavailable
from spdk_ffi import ControllerOpts, Initiator
from spdk_ffi.errors import Busy, InvalidOptions, NameConflict, NvmeError, PathInUse
from spdk_ffi.mirror import LegMode, Mirror, MirrorFactory, RebuildHandle

__all__ = [
    "DataPath",
    "LegMode",
    "Mirror",
    "MirrorFactory",
    "NvmeError",
    "RebuildHandle",
    "ReplicaExpander",
    "datapath_error",
    "native_data_path",
]


def datapath_error(what: str, exc: NvmeError) -> ImdError:
    """The one place a data-path failure becomes the daemon's error: the
    caller's mistakes stay theirs (INVALID_ARGUMENT), a race with another
    engine over the same replica is a conflict to retry (ABORTED), a name or
    path held by someone else is a precondition (FAILED_PRECONDITION), and
    everything the network or a target did is UNAVAILABLE."""
    message = f"{what}: {exc}"
    if isinstance(exc, InvalidOptions):
        return InvalidArgument(message)
    if isinstance(exc, Busy):
        return Conflict(message)
    if isinstance(exc, (NameConflict, PathInUse)):
        return FailedPrecondition(message)
    return Unavailable(message)


class ReplicaExpander(Protocol):
    """Grows a replica's lvol on its node (through that node's imd), before
    an engine grows the volume over it."""

    async def expand(self, address: str, replica: str, size: int) -> None: ...


class DataPath:
    """Controllers and mirrors for the engines of this daemon."""

    def __init__(self, initiator: Initiator, mirrors: MirrorFactory, opts: ControllerOpts, backend: Any = None) -> None:
        self.initiator = initiator
        self.mirrors = mirrors
        self.opts = opts
        self.backend = backend  # for its counters (reconnects_total), where it has them


def native_data_path(
    *, core_mask: str, mem_size_mb: int, no_huge: bool, opts: ControllerOpts, idle_spin_us: int | None = None
) -> DataPath:
    """The real one: spdk_ffi's native core (its poller starts here). Raises
    SpdkUnavailable where spdk_ffi was installed without its core."""
    from spdk_ffi import UNAVAILABLE, SpdkUnavailable, available
    from spdk_ffi.mirror import NativeMirrorFactory
    from spdk_ffi.native import NativeBackend, NativeCore

    if not available():
        raise SpdkUnavailable(UNAVAILABLE)
    env: dict[str, Any] = {"core_mask": core_mask, "mem_size_mb": mem_size_mb, "no_huge": no_huge}
    if idle_spin_us is not None:
        env["idle_spin_us"] = idle_spin_us
    backend = NativeBackend(NativeCore.start(**env))
    return DataPath(Initiator(backend), NativeMirrorFactory(backend), opts, backend)
