"""A small HTTP/1.1 file server on loopback, for the tests and benchmarks
that download a backing image: Longhorn's backing-image manager serves
images the same way (a GET of a URL, the bytes as the body).

Each file can misbehave on purpose: a chunked body, a redirect, an error
status, a body cut short, a server that accepts and never answers, a body
that stops after some bytes until the test releases it (``hold``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Served:
    data: bytes = b""
    chunked: bool = False
    status: int = 200
    redirect_to: str = ""
    silent: bool = False  # accept the request, never answer
    head_delay: float = 0.0  # answer only after this many seconds
    cut_after: int | None = None  # close the connection after this many body bytes
    hold_after: int | None = None  # stop after this many body bytes until ``release``
    declared_length: int | None = None  # a Content-Length that is not the body's
    released: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)  # set once the body reached hold_after
    gets: int = 0


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.server: asyncio.Server | None = None
        self.port = 0
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> FileServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes = b"", **how: object) -> Served:
        served = Served(data=data, **how)  # type: ignore[arg-type]
        self.files[path] = served
        return served

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(BaseException):
                await task
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            served = self.files.get(urlsplit(target).path)
            if served is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            served.gets += 1
            if served.silent:
                await asyncio.Event().wait()
            await asyncio.sleep(served.head_delay)
            if served.redirect_to:
                writer.write(
                    f"HTTP/1.1 302 Found\r\nLocation: {served.redirect_to}\r\nContent-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                return
            if served.status != 200:
                writer.write(f"HTTP/1.1 {served.status} Nope\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            length = served.declared_length if served.declared_length is not None else len(served.data)
            framing = "Transfer-Encoding: chunked" if served.chunked else f"Content-Length: {length}"
            writer.write(f"HTTP/1.1 200 OK\r\n{framing}\r\nConnection: close\r\n\r\n".encode())
            await self._body(served, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _body(self, served: Served, writer: asyncio.StreamWriter) -> None:
        data = memoryview(served.data)
        sent, piece = 0, 1 << 20
        while sent < len(data):
            end = min(len(data), sent + piece)
            if served.hold_after is not None and sent < served.hold_after <= end:
                end = served.hold_after
            if served.cut_after is not None and end > served.cut_after:
                end = served.cut_after
            if end > sent:
                chunk = data[sent:end]
                if served.chunked:
                    writer.write(f"{len(chunk):x}\r\n".encode())
                    writer.write(chunk)
                    writer.write(b"\r\n")
                else:
                    writer.write(chunk)
                await writer.drain()
                sent = end
            if served.cut_after is not None and sent >= served.cut_after:
                return  # the connection closes: a body cut short
            if served.hold_after is not None and sent == served.hold_after and not served.released.is_set():
                served.held.set()
                await served.released.wait()
        if served.chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
