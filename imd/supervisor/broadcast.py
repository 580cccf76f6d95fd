"""Fan-out of events to watchers, each with its own bounded queue.

Publishing never waits: a watcher whose queue is full is marked overflowed
and dropped, so one stuck client can neither slow the others nor make the
daemon buffer without bound. The Go original drops such a watcher too, but
silently, ending its stream with OK; here the watcher learns it was dropped
(``WatcherOverflow``), which the wire layer turns into RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class WatcherOverflow(Exception):
    """Raised by ``Subscription.get`` once the watcher fell too far behind."""


class StreamClosed(Exception):
    """Raised by ``Subscription.get`` when the broadcaster shut down."""


class Subscription(Generic[T]):
    def __init__(self, owner: Broadcaster[T], limit: int, wakeup: asyncio.Event | None = None) -> None:
        self._owner = owner
        self._limit = limit
        self._items: deque[T] = deque()
        self._wakeup = wakeup if wakeup is not None else asyncio.Event()
        self.overflowed = False
        self.closed = False

    def _offer(self, item: T) -> bool:
        if len(self._items) >= self._limit:
            self.overflowed = True
            self._items.clear()
            self._wakeup.set()
            return False
        self._items.append(item)
        self._wakeup.set()
        return True

    @property
    def limit(self) -> int:
        return self._limit

    async def get(self) -> T:
        while not self._items:
            if self.overflowed:
                raise WatcherOverflow(f"watcher fell more than {self._limit} events behind")
            if self.closed:
                raise StreamClosed()
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()

    async def get_batch(self, limit: int) -> list[T]:
        """Wait for at least one item, then take up to ``limit`` queued ones:
        a watcher that fell a little behind catches up in one write."""
        batch = [await self.get()]
        while self._items and len(batch) < limit:
            batch.append(self._items.popleft())
        return batch

    def take_ready(self, limit: int) -> list[T]:
        """Up to ``limit`` queued items, without waiting; WatcherOverflow if
        this watcher was dropped."""
        if self.overflowed and not self._items:
            raise WatcherOverflow(f"watcher fell more than {self._limit} events behind")
        taken: list[T] = []
        while self._items and len(taken) < limit:
            taken.append(self._items.popleft())
        return taken

    def close(self) -> None:
        self._owner._subscribers.discard(self)
        self.closed = True
        self._wakeup.set()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Broadcaster(Generic[T]):
    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self._subscribers: set[Subscription[T]] = set()

    def subscribe(self, wakeup: asyncio.Event | None = None) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self, self.queue_limit, wakeup)
        self._subscribers.add(sub)
        return sub

    @property
    def watcher_count(self) -> int:
        return len(self._subscribers)

    def publish(self, item: T) -> None:
        dropped = [sub for sub in self._subscribers if not sub._offer(item)]
        for sub in dropped:
            self._subscribers.discard(sub)

    def close_all(self) -> None:
        """End every watcher cleanly (daemon shutdown): after draining what
        is queued, ``get`` raises StreamClosed."""
        for sub in list(self._subscribers):
            sub.close()


class MergedSubscription:
    """One watcher over several broadcasters (the instance API watches V1
    processes and V2 instances as one stream). Each source keeps its own
    bounded queue and order; one wakeup event serves them all, so waiting
    costs no task per source. Overflow of any source drops the watcher;
    the stream ends cleanly once every source has closed."""

    def __init__(self, sources: Sequence[Broadcaster[Any]]) -> None:
        self._wakeup = asyncio.Event()
        self._subs = [source.subscribe(self._wakeup) for source in sources]

    async def get_batch(self, limit: int) -> list[Any]:
        while True:
            batch: list[Any] = []
            for sub in self._subs:
                batch.extend(sub.take_ready(limit - len(batch)))
            if batch:
                return batch
            if all(sub.closed for sub in self._subs):
                raise StreamClosed()
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
