"""spdk_ffi's exception vocabulary.

Errors from the NVMe driver and from the controller registry carry an errno
and its symbolic name, because the same numbers mean precise things in
SPDK's world: EALREADY (114) is "a controller of that name already
exists", EEXIST (17) is "that path is already attached under another
name". Longhorn's endless attach/detach loop came from treating one as the
other; here each has its own class, and both keep the number.
"""

from __future__ import annotations

import errno as _errno


class SpdkUnavailable(RuntimeError):
    """The native core is not in this installation (raised on first use)."""


class NvmeError(Exception):
    """A failed controller operation, with ``errno`` and ``errno_name``."""

    def __init__(self, err: int, message: str) -> None:
        self.errno = abs(err)
        self.errno_name = _errno.errorcode.get(self.errno, f"errno {self.errno}")
        super().__init__(f"{message} ({self.errno_name}, {self.errno})")


class InvalidOptions(NvmeError):
    """Options or paths that bdev_nvme would refuse (EINVAL)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EINVAL, message)


class NameConflict(NvmeError):
    """The name is held for another subsystem or host NQN by a live owner (EINVAL)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EINVAL, message)


class PathInUse(NvmeError):
    """The path (trid + hostnqn) is attached under another name (EEXIST, 17)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EEXIST, message)


class AlreadyExists(NvmeError):
    """A controller of that name exists and may not be replaced (EALREADY, 114)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EALREADY, message)


class Busy(NvmeError):
    """Another operation on the same name is in progress (EBUSY)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EBUSY, message)


class AttachTimeout(NvmeError):
    """No path connected within the attach timeout (ETIMEDOUT)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ETIMEDOUT, message)


class Cancelled(NvmeError):
    """The operation was preempted by a detach of the same name (ECANCELED)."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ECANCELED, message)
