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
    """A resource of the node ran out (ports, space, descriptors, memory);
    the message names it. Not the caller's fault, and worth a retry later."""


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


class Unavailable(ImdError):
    """The daemon is shutting down, or a subsystem (e.g. SPDK) is not available."""
