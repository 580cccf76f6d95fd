"""Whether the daemon can make changes durable right now, and if not, why.

One owner for the whole daemon, however many state stores there are (the
process registry today; the SPDK data engine's store next). Each store
reports the outcome of its writes here; the daemon listens for changes and
turns them into grpc health (NOT_SERVING while degraded) and an sd_notify
STATUS= line; the services ask ``check()`` before a mutating RPC, so that
while any store cannot write, changes fail fast, before anything is
spawned or signalled, with the store's own error (RESOURCE_EXHAUSTED for a
full disk or descriptor table, UNAVAILABLE for a read-only or failing one).

Why one owner: a change of the daemon may touch several stores, and a
health check cannot say "half serving". If any store cannot write, the
daemon is degraded; it recovers when every store has written again.

It logs exactly one line when a store starts failing and one when it
writes again, however many attempts lie between. Owned by the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from imd.errors import ImdError
from imd.eventlog import fields

log = logging.getLogger("imd.durability")

ErrorFactory = Callable[[], ImdError]


class Durability:
    def __init__(self) -> None:
        # store name -> (a fresh copy of its error, when it started failing)
        self._failing: dict[str, tuple[ErrorFactory, float]] = {}
        self._listeners: list[Callable[[], None]] = []

    @property
    def degraded(self) -> bool:
        return bool(self._failing)

    @property
    def reason(self) -> str:
        """Why changes are refused, one clause per failing store; "" if none."""
        return "; ".join(str(error()) for error, _ in self._failing.values())

    def check(self) -> None:
        """Raise the first failing store's error, if any (fail fast)."""
        for error, _ in self._failing.values():
            raise error()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever ``degraded`` or ``reason`` changes."""
        self._listeners.append(listener)

    def failed(self, store: str, error: ErrorFactory) -> None:
        """``store``'s latest write failed; ``error`` builds the error the
        RPCs get (a new exception each time: one instance must not collect
        tracebacks from every RPC it is raised in)."""
        before = self._failing.get(store)
        self._failing[store] = (error, before[1] if before else time.monotonic())
        if before is None:
            log.error(
                "state not writable; refusing changes until it is",
                extra=fields(store=store, error=str(error())),
            )
            self._notify()
        elif str(before[0]()) != str(error()):
            self._notify()  # a new cause: health text and STATUS= follow it, the log does not

    def succeeded(self, store: str) -> None:
        """``store`` wrote everything it had; it is no longer degraded."""
        before = self._failing.pop(store, None)
        if before is None:
            return
        log.warning(
            "state writable again; accepting changes",
            extra=fields(store=store, degraded_s=round(time.monotonic() - before[1], 3)),
        )
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
