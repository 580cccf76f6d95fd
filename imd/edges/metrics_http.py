"""``GET /metrics`` over HTTP/1.1, on the event loop, for Prometheus.

The exposition itself is prometheus_client's (``choose_encoder`` picks the
text format or OpenMetrics from the scraper's Accept header); this edge
only carries it. It runs on the daemon's own loop rather than
prometheus_client's thread server: collectors read state that the loop
owns, and reading it from the loop's thread needs no lock. One request per
connection, bounded in size and time, so a slow or hostile client holds
nothing for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("imd.metrics_http")

READ_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 16384


class MetricsServer:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        response = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(response + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        if len(head) > MAX_HEADER_BYTES:
            return "431 Request Header Fields Too Large", "text/plain", b"headers too large\n"
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request line\n"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", "text/plain", b"metrics are at /metrics\n"
        accept = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("accept:")), "")
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        return "200 OK", content_type, b"" if method == "HEAD" else body
