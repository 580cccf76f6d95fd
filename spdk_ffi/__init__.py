"""spdk_ffi: imd's NVMe-oF/TCP initiator and V2 data path over SPDK.

Three layers:

* ``Initiator`` (spdk_ffi.initiator): controller names, owners, idempotent
  attach with stale-controller cleanup, sweep, path bookkeeping. Pure
  asyncio above a narrow ``Backend`` interface.
* the native backend (spdk_ffi.native over the cffi core ``spdk_ffi._core``):
  one C poller thread owning every SPDK object, rings and an eventfd to
  asyncio, multipath failover, batched I/O and a C-tier benchmark.
* mirrors (spdk_ffi.mirror): N-way mirrors over attached controllers in the
  C core, with rebuild, resize and an NVMe-oF/TCP export from the core's
  embedded target; ``Mirror``/``MirrorFactory`` describe the surface.

The core is compiled at install time when SPDK is found (SPDK_DIR or
pkg-config); ``available()`` says whether it was.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from spdk_ffi.backend import Backend
from spdk_ffi.errors import (
    AlreadyExists,
    AttachTimeout,
    Busy,
    Cancelled,
    InvalidOptions,
    NameConflict,
    NvmeError,
    PathInUse,
    SpdkUnavailable,
)
from spdk_ffi.initiator import Initiator
from spdk_ffi.model import AttachResult, ControllerInfo, ControllerOpts, MultipathPolicy, Namespace, Path, PathState

__all__ = [
    "AlreadyExists",
    "AttachResult",
    "AttachTimeout",
    "Backend",
    "Busy",
    "Cancelled",
    "ControllerInfo",
    "ControllerOpts",
    "Initiator",
    "InvalidOptions",
    "MultipathPolicy",
    "NameConflict",
    "Namespace",
    "NvmeError",
    "Path",
    "PathInUse",
    "PathState",
    "SpdkUnavailable",
    "available",
    "native_backend",
]


def available() -> bool:
    """Whether the native core (``spdk_ffi._core``) is installed."""
    return importlib.util.find_spec("spdk_ffi._core") is not None


UNAVAILABLE = (
    "spdk_ffi was installed without its native core: set SPDK_DIR to an SPDK install prefix "
    "(bin/, lib/, include/, lib/pkgconfig/; SPDK built with --with-shared), or make spdk_nvme and "
    "spdk_env_dpdk visible to pkg-config, then reinstall imd"
)


def native_backend(**env_opts: Any) -> Backend[Any]:
    """The SPDK backend; starts the process's SPDK environment on first use
    (``core_mask``, ``mem_size_mb``, ``no_huge``)."""
    if not available():
        raise SpdkUnavailable(UNAVAILABLE)
    from spdk_ffi.native import NativeBackend, NativeCore

    return NativeBackend(NativeCore.start(**env_opts))
