"""Server-streaming helpers: watch events and log lines onto a gRPC stream."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from google.protobuf.message import Message
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.metrics import Metrics
from imd.supervisor.broadcast import StreamClosed, WatcherOverflow
from imd.supervisor.model import ProcessEvent


class EventEncoder:
    """Encodes each event once, as a framed gRPC message, for all watchers.

    Building and serializing a protobuf message costs several microseconds;
    fifty watchers would otherwise pay it fifty times per event. Watchers
    move through the same events in the same order, so a small cache keyed
    by the event's sequence number serves them all.
    """

    def __init__(self, build: Callable[[ProcessEvent], Message], size: int = 4096) -> None:
        self._build = build
        self._size = size
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def __call__(self, event: ProcessEvent) -> bytes:
        framed = self._cache.get(event.seq)
        if framed is None:
            body = self._build(event).SerializeToString()
            framed = self._cache[event.seq] = b"\x00" + len(body).to_bytes(4, "big") + body
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return framed


async def send_framed(stream: Any, framed: bytes, count: int) -> None:
    """Write ``count`` already-framed gRPC messages in one HTTP/2 write.

    grpclib can only send one message per call, and at fifty watchers its
    per-message overhead was the daemon's largest cost (py-spy: ~40% of CPU
    under bench/control). A DATA frame may carry several gRPC messages, so
    this writes a watcher's whole backlog at once, doing what grpclib's
    ``Stream.send_message`` does per message. This is the one place that
    touches grpclib's internals; the watch tests exercise it.
    """
    await stream._stream.send_data(framed)
    stream._send_message_done = True
    stream._messages_sent += count
    connection = stream._stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()


BATCH_LIMIT = 256


class EventSource(Protocol):
    async def get_batch(self, limit: int) -> list[Any]: ...

    def close(self) -> None: ...


async def pump_events(
    stream: Any,
    sub: EventSource,
    encode: Callable[[Any], bytes],
    metrics: Metrics | None = None,
    api: str = "process",
) -> None:
    """Send the subscription's events until the daemon drains (clean end,
    OK) or the watcher falls behind (RESOURCE_EXHAUSTED).

    A watcher that stops reading leaves this task blocked on HTTP/2 flow
    control. It is not interrupted there: cancelling a half-sent message
    would corrupt the stream's framing and the client would see a protocol
    error instead of the status it is owed. The broadcaster has already
    dropped the subscription, so the blocked task holds no queue; as soon as
    the client reads again the next ``get`` raises WatcherOverflow and the
    stream ends with RESOURCE_EXHAUSTED. A client that never reads again is
    ended by its connection's keepalive.
    """
    try:
        # Headers go out once the subscription exists: a client that waits
        # for them knows it will see every change made after that point.
        await stream.send_initial_metadata()
        while True:
            try:
                batch = await sub.get_batch(BATCH_LIMIT)
            except StreamClosed:
                return
            await send_framed(stream, b"".join(encode(event) for event in batch), len(batch))
            if metrics is not None:
                metrics.watch_events.labels(api).inc(len(batch))
    except WatcherOverflow as exc:
        if metrics is not None:
            metrics.watchers_dropped.labels(api).inc()
        message = f"{exc}; watcher dropped, re-list and watch again"
        raise GRPCError(Status.RESOURCE_EXHAUSTED, message) from None
    finally:
        sub.close()


async def pump_lines(stream: Any, lines: AsyncIterator[str]) -> None:
    """Send log lines; a cancelled stream closes the file at once (aclosing
    runs the generator's cleanup in this task, not at garbage collection)."""
    async with contextlib.aclosing(lines) as closing:  # type: ignore[type-var]
        async for line in closing:
            await stream.send_message(pm.LogResponse(line=line))
