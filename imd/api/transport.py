"""One socket write per connection per event-loop iteration.

grpclib writes every HTTP/2 frame it produces at once: a unary call costs
four writes (the WINDOW_UPDATE acknowledging the request, then the
response's HEADERS, DATA and trailing HEADERS), each a ``send`` syscall
that on loopback also wakes the client, which then reads, and is woken,
four times. Under bench/compare that was about a tenth of the daemon's
time and more of the client's. ``CoalescingTransport`` holds what is
written during one iteration of the loop and sends it in one write at the
end of it (``call_soon``): the frames of every stream on the connection
that were produced together leave together, in the order they were
written, and nothing waits longer than the callbacks already queued.

This is the place that wraps grpclib's transport (``Server`` below); flow
control is untouched: pause/resume come from the real transport, whose
buffer the held bytes reach within the same iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.protocol import H2Protocol
from grpclib.server import Server as GrpclibServer


class CoalescingTransport:
    """A write-coalescing view of an asyncio transport (everything but
    ``write``, ``writelines``, ``close`` and ``abort`` passes through)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + sum(len(chunk) for chunk in self._held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CoalescingH2Protocol(H2Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]


class Server(GrpclibServer):
    """grpclib's server, its connections writing through CoalescingTransport."""

    def _protocol_factory(self) -> H2Protocol:
        base = super()._protocol_factory()
        return _CoalescingH2Protocol(base.handler, base.config, base.h2_config)
