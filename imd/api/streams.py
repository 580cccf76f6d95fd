"""Server-streaming helpers: watch events and log lines onto a gRPC stream."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.supervisor.broadcast import StreamClosed, Subscription, WatcherOverflow
from imd.supervisor.model import ProcessEvent

M = TypeVar("M")


class EventEncoder(Generic[M]):
    """Builds each event's protobuf message once for all watchers.

    Building a protobuf object costs several microseconds; fifty watchers
    would otherwise build fifty copies of every event. Watchers move through
    the same events in the same order, so a small cache keyed by the event's
    sequence number serves them all.
    """

    def __init__(self, build: Callable[[ProcessEvent], M], size: int = 4096) -> None:
        self._build = build
        self._size = size
        self._cache: OrderedDict[int, M] = OrderedDict()

    def __call__(self, event: ProcessEvent) -> M:
        message = self._cache.get(event.seq)
        if message is None:
            message = self._cache[event.seq] = self._build(event)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return message


async def pump_events(stream: Any, sub: Subscription[ProcessEvent], encode: Callable[[ProcessEvent], Any]) -> None:
    """Send the subscription's events until the daemon drains (clean end,
    OK) or the watcher falls behind (RESOURCE_EXHAUSTED).

    A watcher that stops reading leaves this task blocked in
    ``send_message`` on HTTP/2 flow control. It is not interrupted there:
    cancelling a half-sent message would corrupt the stream's framing and
    the client would see a protocol error instead of the status it is owed.
    The broadcaster has already dropped the subscription, so the blocked
    task holds no queue; as soon as the client reads again the next ``get``
    raises WatcherOverflow and the stream ends with RESOURCE_EXHAUSTED. A
    client that never reads again is ended by its connection's keepalive.
    """
    try:
        # Headers go out once the subscription exists: a client that waits
        # for them knows it will see every change made after that point.
        await stream.send_initial_metadata()
        while True:
            try:
                event = await sub.get()
            except StreamClosed:
                return
            await stream.send_message(encode(event))
    except WatcherOverflow as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, f"{exc}; watcher dropped, re-list and watch again") from None
    finally:
        sub.close()


async def pump_lines(stream: Any, lines: AsyncIterator[str]) -> None:
    """Send log lines; a cancelled stream closes the file at once (aclosing
    runs the generator's cleanup in this task, not at garbage collection)."""
    async with contextlib.aclosing(lines) as closing:  # type: ignore[type-var]
        async for line in closing:
            await stream.send_message(pm.LogResponse(line=line))
