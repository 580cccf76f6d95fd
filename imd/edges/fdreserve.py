"""A few file descriptors held in reserve, to be spent when the limit is hit.

At RLIMIT_NOFILE every ``open``, ``accept`` and ``pidfd_open`` fails with
EMFILE: the daemon could neither write its state nor accept the connection
a health check arrives on. Descriptors held open on /dev/null keep slots
free for that moment: closing them makes room at once, in the same
process, without waiting for anything else to let go. (libuv keeps one such
descriptor for its own accept loop; this is the same trick, sized for more
than one customer.) The policy, when to spend and when to refill, is the
supervisor's (imd.supervisor.resources); this module only holds them.
"""

from __future__ import annotations

import contextlib
import os
import resource


class FdReserve:
    """Up to ``size`` descriptors on /dev/null (close-on-exec, so children
    never inherit them). Owned by the event loop thread."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self._fds: list[int] = []

    @property
    def held(self) -> int:
        return len(self._fds)

    def release(self) -> int:
        """Close every held descriptor; return how many were freed."""
        freed = len(self._fds)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        return freed

    def refill(self, margin: int = 0) -> bool:
        """Hold ``size`` descriptors again, but only if ``margin`` more are
        free beyond them (checked by opening them too, then closing those).
        All or nothing: on EMFILE/ENFILE nothing more is held and False is
        returned."""
        wanted = self.size - len(self._fds) + margin
        opened: list[int] = []
        try:
            for _ in range(wanted):
                opened.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            for fd in opened:
                os.close(fd)
            return False
        keep = self.size - len(self._fds)
        self._fds.extend(opened[:keep])
        for fd in opened[keep:]:
            os.close(fd)
        return True


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
