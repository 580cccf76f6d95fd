"""The daemon's exception vocabulary.

Every failure a client can cause or observe is one of these. Each names the
request field at fault where there is one, so that the message a manager
logs points at its own input. ``imd.api.status`` maps each class to one gRPC
status code, in one place; nothing below the API layer knows about gRPC.
"""

from __future__ import annotations


class ImdError(Exception):
    """Base class. ``field`` is the request field at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(ImdError):
    """A request field fails validation (services layer, before any side effect)."""


class NotFound(ImdError):
    """No process by that name, or the given UUID is not the current one."""


class AlreadyExists(ImdError):
    """Create with a name the registry already holds."""


class ResourceExhausted(ImdError):
    """Something the node has a finite amount of ran out: file descriptors,
    memory, processes, ports, space in the state directory or on a disk.

    Not the caller's fault: the message starts with the resource
    (``"file descriptors: ..."``, ``"state dir: no space left on device
    ..."``), or with the request field whose value does not fit (a replica
    ``size`` too big for its disk), and a manager can retry once the
    resource is back.
    """

    def __init__(self, message: str, *, resource: str = "", field: str | None = None) -> None:
        super().__init__(f"{resource}: {message}" if resource and field is None else message, field=field)
        self.resource = resource or (field or "")


class PortsExhausted(ResourceExhausted):
    """The port range has no contiguous free block of the requested size."""


class Conflict(ImdError):
    """A concurrent operation on the same name won (e.g. a second replace)."""


class FailedPrecondition(ImdError):
    """The object is in a state that forbids the request (e.g. replace while stopping)."""


class Unimplemented(ImdError):
    """The request asks for something this daemon does not do (V1 suspend, unknown engine)."""


class StartFailed(ImdError):
    """A replacement process exited, or missed its health deadline, before running."""


class PermissionDenied(ImdError):
    """A peer refused the request's credentials (a backup target answering
    403: a wrong key pair, or one without the rights the operation needs)."""


class DataLoss(ImdError):
    """Stored data is missing or fails its checksum (a backup block that is
    gone, or whose content is not what the backup recorded): retrying does
    not help, and nothing was silently filled in instead."""


class Unavailable(ImdError):
    """The daemon is shutting down, a subsystem (e.g. SPDK) is not available,
    or the state cannot be written for a reason other than exhaustion (a
    read-only or failing disk): retrying later may succeed."""
