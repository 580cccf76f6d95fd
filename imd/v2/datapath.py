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

from collections.abc import Sequence
from typing import Any, Protocol

from imd.errors import Conflict, FailedPrecondition, ImdError, InvalidArgument, Unavailable
from imd.v2.model import HashStatus, ReplicaChain, SnapshotExport, SnapshotInfo, nqn_of
from spdk_ffi import ControllerOpts, Initiator, Path
from spdk_ffi.blockio import Block, BlockIo
from spdk_ffi.errors import Busy, InvalidOptions, NameConflict, NvmeError, PathInUse
from spdk_ffi.jobs import JobHandle, JobResult, Jobs
from spdk_ffi.mirror import LegMode, Mirror, MirrorFactory, RebuildHandle

__all__ = [
    "Block",
    "BlockIo",
    "DataPath",
    "JobHandle",
    "JobResult",
    "Jobs",
    "LegMode",
    "Mirror",
    "MirrorFactory",
    "NvmeError",
    "RebuildHandle",
    "ReplicaExpander",
    "ReplicaNodes",
    "datapath_error",
    "export_path",
    "native_data_path",
    "replica_paths",
]


def replica_paths(name: str, addresses: Sequence[str]) -> list[Path]:
    """``ip:port`` addresses (``[v6]:port`` too) of replica ``name`` as
    NVMe-oF paths to its subsystem."""
    return [_path(address, nqn_of(name)) for address in addresses]


def export_path(export: SnapshotExport, host: str = "") -> Path:
    """The path to a snapshot export, through ``host`` (default: the address
    it listens on; a wildcard listener is reached on loopback)."""
    host = host or export.address
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return _path(f"{host}:{export.port}", export.nqn)


def _path(address: str, nqn: str) -> Path:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return Path("TCP", "IPv6" if ":" in host else "IPv4", host, port, nqn)


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


class ReplicaNodes(ReplicaExpander, Protocol):
    """What an engine asks of its replicas' nodes: each call goes to the imd
    of the node at ``address`` (the replica's ``ip:port``; imd/api/replica.py
    over the wire, imd.v2.chains.LocalReplicaNodes in process), which keeps
    the replica's chain of snapshots (imd.v2.chains)."""

    async def snapshot_create(
        self, address: str, replica: str, name: str, *, user_created: bool, created: str, labels: dict[str, str]
    ) -> SnapshotInfo: ...

    async def snapshot_delete(self, address: str, replica: str, name: str, *, mark_only: bool = False) -> bool: ...

    async def snapshot_chain(self, address: str, replica: str) -> ReplicaChain: ...

    async def snapshot_purge(self, address: str, replica: str) -> list[str]: ...

    async def snapshot_revert(self, address: str, replica: str, name: str) -> None: ...

    async def snapshot_expose(self, address: str, replica: str, name: str) -> SnapshotExport: ...

    async def snapshot_unexpose(self, address: str, replica: str, name: str) -> None: ...

    async def snapshot_hash(self, address: str, replica: str, name: str, rehash: bool) -> HashStatus: ...

    async def snapshot_hash_status(self, address: str, replica: str, name: str) -> HashStatus: ...

    async def snapshot_hash_cancel(self, address: str, replica: str) -> None: ...

    async def engine_replicas(self, address: str, engine: str) -> list[tuple[str, str]]:
        """The RW replicas (name, ``ip:port``) of V2 engine ``engine`` on the
        imd at ``address`` (a SnapshotClone's source)."""
        ...


class DataPath:
    """Controllers and mirrors for the engines of this daemon."""

    def __init__(
        self,
        initiator: Initiator,
        mirrors: MirrorFactory,
        opts: ControllerOpts,
        jobs: Jobs,
        backend: Any = None,
        blocks: BlockIo | None = None,
    ) -> None:
        self.initiator = initiator
        self.mirrors = mirrors
        self.opts = opts
        self.jobs = jobs  # copies and hashes in the core (snapshots, rebuilds, clones)
        self.backend = backend  # for its counters (reconnects_total), where it has them
        self.blocks = blocks  # backup-block-sized reads and writes (backups, restores), where it has them


def native_data_path(
    *, core_mask: str, mem_size_mb: int, no_huge: bool, opts: ControllerOpts, idle_spin_us: int | None = None
) -> DataPath:
    """The real one: spdk_ffi's native core (its poller starts here). Raises
    SpdkUnavailable where spdk_ffi was installed without its core."""
    from spdk_ffi import UNAVAILABLE, SpdkUnavailable, available
    from spdk_ffi.blockio import NativeBlockIo
    from spdk_ffi.jobs import NativeJobs
    from spdk_ffi.mirror import NativeMirrorFactory
    from spdk_ffi.native import NativeBackend, NativeCore

    if not available():
        raise SpdkUnavailable(UNAVAILABLE)
    env: dict[str, Any] = {"core_mask": core_mask, "mem_size_mb": mem_size_mb, "no_huge": no_huge}
    if idle_spin_us is not None:
        env["idle_spin_us"] = idle_spin_us
    backend = NativeBackend(NativeCore.start(**env))
    return DataPath(
        Initiator(backend), NativeMirrorFactory(backend), opts, NativeJobs(backend), backend, NativeBlockIo(backend)
    )
