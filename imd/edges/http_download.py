"""A streaming HTTP(S) GET, for backing images (Longhorn's data source is a
URL its backing-image manager serves).

Small on purpose: one request, HTTP/1.1 with ``Connection: close``, the
body by ``Content-Length``, ``chunked`` or to the end of the connection,
redirects followed a few times, no content coding (``Accept-Encoding:
identity``: the bytes are the image). Every wait has a bound: connecting
(and TLS) within ``connect_timeout``, and every read of the status, the
headers and each piece of the body within ``read_timeout`` (an idle
timeout, as Longhorn's IdleTimeoutCopy: a slow but moving download goes
on, a silent server fails it). Failures are ``DownloadError`` with what
happened and the URL; ``DownloadError.status`` is the HTTP status when
the server answered one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 5
HEADER_LIMIT = 64 << 10
READ_BUFFER = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)


class DownloadError(Exception):
    def __init__(self, message: str, *, status: int = 0, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status the server answered, 0 if none
        self.unreachable = unreachable  # no connection, or no answer in time


def check_url(url: str) -> None:
    """Raise ValueError for what no download can come from."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None


class Download:
    """An answered GET: ``length`` is the body's size when the server said
    it (``Content-Length``), else None. ``read`` returns up to ``n`` bytes,
    ``b""`` at the end; a body cut short is a DownloadError, never a short
    image."""

    def __init__(
        self,
        url: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        length: int | None,
        chunked: bool,
        read_timeout: float,
    ) -> None:
        self.url = url
        self.length = length
        self._reader = reader
        self._writer = writer
        self._chunked = chunked
        self._timeout = read_timeout
        self._left = length  # of the body (Content-Length) or of the current chunk (chunked)
        self._done = length == 0
        self.received = 0
        if chunked:
            self._left = 0

    async def _wait(self, step: Awaitable[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(step, self._timeout)
        except TimeoutError:
            raise DownloadError(
                f"{self.url}: no data for {self._timeout:g} s after {self.received} bytes", unreachable=True
            ) from None
        except asyncio.IncompleteReadError:
            raise DownloadError(f"{self.url}: the connection closed after {self.received} bytes") from None
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            raise DownloadError(f"{self.url}: the connection failed after {self.received} bytes: {exc}") from exc

    async def read(self, n: int = READ_BUFFER) -> bytes:
        if self._done:
            return b""
        if self._chunked:
            if self._left == 0:
                line = await self._wait(self._reader.readuntil(b"\r\n"))
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise DownloadError(f"{self.url}: a malformed chunk size {line[:40]!r}") from None
                if size == 0:
                    await self._trailers()
                    self._done = True
                    return b""
                self._left = size
            assert self._left is not None
            data = await self._wait(self._reader.read(min(n, self._left)))
            if not data:
                raise DownloadError(f"{self.url}: the connection closed inside a chunk after {self.received} bytes")
            self._left -= len(data)
            if self._left == 0:
                await self._wait(self._reader.readexactly(2))  # the chunk's CRLF
            self.received += len(data)
            return data
        want = n if self._left is None else min(n, self._left)
        data = await self._wait(self._reader.read(want))
        if not data:
            if self._left is not None:
                raise DownloadError(f"{self.url}: the connection closed after {self.received} of {self.length} bytes")
            self._done = True
            return b""
        self.received += len(data)
        if self._left is not None:
            self._left -= len(data)
            self._done = self._left == 0
        return data

    async def _trailers(self) -> None:
        while (await self._wait(self._reader.readuntil(b"\r\n"))) != b"\r\n":
            pass

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


async def open_download(
    url: str,
    *,
    connect_timeout: float,
    read_timeout: float,
    tls: ssl.SSLContext | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> Download:
    """GET ``url`` and read the answer's head: a Download positioned at the
    body of a 200, or DownloadError. Redirects are followed up to
    ``max_redirects`` times."""
    for _ in range(max_redirects + 1):
        try:
            check_url(url)
        except ValueError as exc:
            raise DownloadError(str(exc)) from None
        parts = urlsplit(url)
        host = parts.hostname
        assert host is not None
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        context = (tls or ssl.create_default_context()) if https else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if https else None, limit=READ_BUFFER
                ),
                connect_timeout,
            )
        except TimeoutError:
            raise DownloadError(
                f"{url}: no connection to {host}:{port} within {connect_timeout:g} s", unreachable=True
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise DownloadError(f"{url}: cannot connect to {host}:{port}: {exc}", unreachable=True) from exc
        try:
            status, reason, headers = await _head(url, reader, writer, read_timeout)
        except BaseException:
            writer.close()
            raise
        if status in _REDIRECTS and "location" in headers:
            writer.close()
            url = urljoin(url, headers["location"])
            continue
        if status != 200:
            writer.close()
            raise DownloadError(f"{url}: the server answered {status} {reason}".rstrip(), status=status)
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            writer.close()
            raise DownloadError(f"{url}: the server sent content coded {encoding!r}, not the bytes themselves")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length: int | None = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                writer.close()
                raise DownloadError(f"{url}: a malformed Content-Length {headers['content-length']!r}") from None
        return Download(url, reader, writer, length, chunked, read_timeout)
    raise DownloadError(f"{url}: more than {max_redirects} redirects")


async def _head(
    url: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout: float,
) -> tuple[int, str, dict[str, str]]:
    split = urlsplit(url)
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    host = split.netloc.rpartition("@")[2]
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: imd\r\nAccept: */*\r\n"
        "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
    )
    try:
        writer.write(request.encode("latin-1"))
        await asyncio.wait_for(writer.drain(), timeout)
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except TimeoutError:
        raise DownloadError(f"{url}: no answer within {timeout:g} s", unreachable=True) from None
    except asyncio.LimitOverrunError:
        raise DownloadError(f"{url}: the answer's head is longer than {READ_BUFFER} bytes") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise DownloadError(f"{url}: the connection failed before an answer: {exc}", unreachable=True) from exc
    if len(raw) > HEADER_LIMIT:
        raise DownloadError(f"{url}: the answer's head is longer than {HEADER_LIMIT} bytes")
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise DownloadError(f"{url}: not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), reason, headers
