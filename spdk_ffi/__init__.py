"""spdk_ffi: an NVMe-oF/TCP initiator for imd over SPDK's NVMe driver.

This release ships the controller registry (names, owners, idempotent
attach, stale-controller cleanup, sweep, multipath bookkeeping) above a
narrow backend interface. The native backend (a cffi core with its own
poller thread) is not part of this release, so ``available()`` is False
and ``native_backend()`` raises SpdkUnavailable saying so.
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


def native_backend() -> Backend[Any]:
    if not available():
        raise SpdkUnavailable(
            "spdk_ffi's native core is not installed: this build of imd has no SPDK backend, "
            "so only data engine V1 (processes) is available"
        )
    raise SpdkUnavailable("spdk_ffi._core is present but this release does not load it")  # pragma: no cover
