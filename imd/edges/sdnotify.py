"""systemd's notify protocol, written out: one datagram per message.

No dependency is needed: a notification is a datagram of ``KEY=VALUE``
lines sent to the Unix socket named by NOTIFY_SOCKET, where a leading ``@``
means Linux's abstract namespace. Outside systemd (no NOTIFY_SOCKET) every
call is a cheap no-op, so the daemon calls it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("imd.sdnotify")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if raw.startswith("@"):
            self.address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self.address = raw
        self.watchdog_usec = self._watchdog_usec(env)
        self._sock: socket.socket | None = None

    @staticmethod
    def _watchdog_usec(env: Mapping[str, str]) -> int:
        """WATCHDOG_USEC applies to us only if WATCHDOG_PID is unset or ours."""
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return 0
        try:
            return max(0, int(env.get("WATCHDOG_USEC", "0")))
        except ValueError:
            return 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            # A missed notification must never take the daemon down.
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
