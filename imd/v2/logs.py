"""Per-instance log lines for V2 replicas and engines.

A V1 instance is a process with a log file of its own. A V2 engine lives
inside the daemon and a V2 replica inside the SPDK target, so InstanceLog
serves what concerns the instance from the two logs that exist: the
target's log file (lines that name the replica) and the daemon's own log
(events about the instance, kept in memory, the last ``keep`` per
instance). Following waits for new daemon-log lines until the instance is
gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from imd.eventlog import JsonLineFormatter


class InstanceLogHandler(logging.Handler):
    """Keeps the daemon's log records that name an instance (``fields``
    ``name=...``), per instance, formatted as the daemon logs them."""

    def __init__(self, keep: int = 2000) -> None:
        super().__init__()
        self.setFormatter(JsonLineFormatter())
        self._keep = keep
        self._lines: dict[str, deque[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[str]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "fields", {}).get("name")
        if not isinstance(name, str):
            return
        line = self.format(record)
        self._lines.setdefault(name, deque(maxlen=self._keep)).append(line)
        for queue in self._followers.get(name, ()):
            queue.put_nowait(line)

    def forget(self, name: str) -> None:
        self._lines.pop(name, None)

    def lines(self, name: str) -> list[str]:
        return list(self._lines.get(name, ()))

    def follow(self, name: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._followers.setdefault(name, set()).add(queue)
        return queue

    def unfollow(self, name: str, queue: asyncio.Queue[str]) -> None:
        self._followers.get(name, set()).discard(queue)


def target_lines(path: Path, needle: str) -> list[str]:
    """Lines of the target's log that mention ``needle`` (a replica name)."""
    try:
        with path.open("rb") as log_file:
            return [line.decode(errors="replace").rstrip("\n") for line in log_file if needle.encode() in line]
    except OSError:
        return []


async def instance_lines(
    handler: InstanceLogHandler,
    name: str,
    *,
    target_log: Path | None,
    follow: bool,
    until: Sequence[asyncio.Future[Any]] = (),
) -> AsyncIterator[str]:
    # Subscribe and snapshot with no await between: every later line goes to
    # the queue, every earlier one is in the snapshot, none in both.
    queue = handler.follow(name) if follow else None
    kept = handler.lines(name)
    try:
        if target_log is not None:
            for line in await asyncio.to_thread(target_lines, target_log, name):
                yield line
        for line in kept:
            yield line
        if queue is None:
            return
        while True:
            getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([getter, *until], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return
            yield getter.result()
    finally:
        if queue is not None:
            handler.unfollow(name, queue)
