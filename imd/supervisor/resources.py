"""Running out, told apart from getting it wrong.

An OSError while starting a child has three kinds of cause, and the client
must be able to tell them apart, because it must react differently:

* the caller's request is wrong (the binary is missing, not executable, not
  a program): INVALID_ARGUMENT naming the field; retrying is pointless;
* the node ran out of something (descriptors, memory, processes, disk
  space): RESOURCE_EXHAUSTED naming the resource; retrying later works;
* anything else (an I/O error, a read-only logs dir): UNAVAILABLE.

Descriptors get more than a status. Every child keeps one descriptor in the
daemon for good (its pidfd), so children are what fills the table. At the
limit the daemon must still accept the connection a health check comes on
and write its state file, so a ``DescriptorGuard`` holds a reserve (see
imd.edges.fdreserve) and spends it the moment any operation meets EMFILE or
ENFILE. From then on new processes are refused, before anything is
spawned, until the reserve can be refilled with as many descriptors again
free beside it: that margin keeps the daemon from flapping between spending
and refilling at the very edge, and leaves room for connections once
creates resume.

Why a reserve and not admission by counting descriptors before each
spawn: counting (/proc/self/fd) costs about half a millisecond at a
thousand children, on every create; the reserve costs nothing until the
limit is actually met, and it also covers descriptors that children do not
use (connections, log streams), which a count taken at create time cannot
foresee.
"""

from __future__ import annotations

import errno
import logging

from imd.edges.fdreserve import FdReserve, descriptor_limit
from imd.errors import ImdError, InvalidArgument, ResourceExhausted, Unavailable
from imd.eventlog import fields

log = logging.getLogger("imd.resources")

DESCRIPTORS = "file descriptors"

# What ran out, by errno, for errors while starting a child. EAGAIN from
# fork/clone is RLIMIT_NPROC, kernel.pid_max, threads-max or a pids cgroup.
# ENOSPC/EDQUOT can only come from creating the child's log file.
_SPAWN_EXHAUSTION = {
    errno.EMFILE: DESCRIPTORS,
    errno.ENFILE: f"{DESCRIPTORS} (system-wide)",
    errno.ENOMEM: "memory",
    errno.EAGAIN: "processes",
    errno.ENOSPC: "logs dir",
    errno.EDQUOT: "logs dir",
}

# What the caller got wrong: the binary cannot be executed as given.
_CALLER_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.ENOEXEC,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.ETXTBSY,
        errno.ELIBBAD,
    }
)


def describe(exc: OSError) -> str:
    """``No space left on device`` -> ``no space left on device``."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def is_descriptor_limit(exc: OSError) -> bool:
    return exc.errno in (errno.EMFILE, errno.ENFILE)


def spawn_error(exc: OSError, binary: str) -> ImdError:
    """The domain error for a child that could not be started."""
    resource = _SPAWN_EXHAUSTION.get(exc.errno or 0)
    if resource is not None:
        detail = describe(exc)
        if exc.errno == errno.EMFILE:
            detail += f" (limit {descriptor_limit()})"
        return ResourceExhausted(f"cannot start {binary}: {detail}", resource=resource)
    if exc.errno == errno.E2BIG:
        return InvalidArgument(f"cannot execute {binary}: {describe(exc)}", field="spec.args")
    if exc.errno in _CALLER_ERRNOS:
        return InvalidArgument(f"cannot execute {binary}: {exc.strerror or exc}", field="spec.binary")
    return Unavailable(f"cannot start {binary}: {describe(exc)}")


class DescriptorGuard:
    """Spends the descriptor reserve at the limit; refuses new processes
    until it can be refilled. Owned by the event loop."""

    def __init__(self, reserve_size: int) -> None:
        self._reserve = FdReserve(reserve_size)
        self._reserve.refill()
        self.short = False

    @property
    def reserve_held(self) -> int:
        return self._reserve.held

    def admit(self) -> None:
        """Before a spawn (each child keeps a descriptor for good). Raises
        ResourceExhausted while the reserve is spent and cannot be refilled
        with as many descriptors again to spare."""
        if not self.short:
            return
        if self._reserve.refill(margin=self._reserve.size):
            self.short = False
            log.info("file descriptors available again; accepting new processes")
            return
        raise ResourceExhausted(
            f"too many open files (limit {descriptor_limit()}); refusing new processes until some are freed",
            resource=DESCRIPTORS,
        )

    def limit_hit(self, exc: OSError) -> bool:
        """An operation failed with EMFILE/ENFILE: spend the reserve so that
        connections, health checks and state writes can go on, and refuse
        new processes from now on. True if descriptors were freed (so the
        operation is worth one more try at once)."""
        freed = self._reserve.release()
        if not self.short:
            self.short = True
            log.warning(
                "file descriptor limit reached; reserve spent, refusing new processes",
                extra=fields(error=describe(exc), limit=descriptor_limit(), released=freed),
            )
        return freed > 0

    def close(self) -> None:
        self._reserve.release()
