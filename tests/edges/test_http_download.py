"""imd.edges.http_download against a real HTTP server on loopback
(tests/http_server.py): the body arrives whole however it is framed, and
every way a server can fail a download is a DownloadError saying what
happened, within the bounds given."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from imd.edges.http_download import DownloadError, check_url, open_download
from tests.http_server import FileServer

pytestmark = pytest.mark.asyncio

DATA = random.Random(7).randbytes(3 * (1 << 20) + 12345)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FileServer]:
    s = await FileServer().start()
    yield s
    await s.close()


async def fetch(url: str, read_timeout: float = 5.0) -> tuple[int | None, bytes]:
    download = await open_download(url, connect_timeout=2.0, read_timeout=read_timeout)
    try:
        out = bytearray()
        while piece := await download.read(1 << 18):
            out += piece
        return download.length, bytes(out)
    finally:
        await download.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_the_body_arrives_whole(server: FileServer, chunked: bool) -> None:
    server.add("/img", DATA, chunked=chunked)
    length, body = await fetch(server.url("/img") + "?forV2Creation=true")
    assert body == DATA
    assert length == (None if chunked else len(DATA))


async def test_an_empty_body_and_a_redirect(server: FileServer) -> None:
    server.add("/empty", b"")
    assert await fetch(server.url("/empty")) == (0, b"")
    server.add("/moved", redirect_to="/img")
    server.add("/img", DATA)
    assert (await fetch(server.url("/moved")))[1] == DATA
    server.add("/loop", redirect_to="/loop")
    with pytest.raises(DownloadError, match="redirects"):
        await fetch(server.url("/loop"))


async def test_an_error_status_is_named(server: FileServer) -> None:
    with pytest.raises(DownloadError) as err:
        await fetch(server.url("/missing"))
    assert err.value.status == 404 and "404" in str(err.value) and not err.value.unreachable
    server.add("/forbidden", status=403)
    with pytest.raises(DownloadError) as err:
        await fetch(server.url("/forbidden"))
    assert err.value.status == 403


async def test_a_body_cut_short_is_an_error_not_a_short_image(server: FileServer) -> None:
    server.add("/cut", DATA, cut_after=1 << 20)
    with pytest.raises(DownloadError, match=f"after {1 << 20} of {len(DATA)} bytes"):
        await fetch(server.url("/cut"))
    server.add("/cutchunked", DATA, chunked=True, cut_after=1 << 20)
    with pytest.raises(DownloadError, match="closed"):
        await fetch(server.url("/cutchunked"))


async def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(DownloadError) as err:
        await fetch(f"http://127.0.0.1:{port}/img")
    assert err.value.unreachable and "cannot connect" in str(err.value)


async def test_a_silent_server_fails_within_the_read_timeout(server: FileServer) -> None:
    server.add("/silent", silent=True)
    with pytest.raises(DownloadError) as err:
        await asyncio.wait_for(fetch(server.url("/silent"), read_timeout=0.3), 10)
    assert err.value.unreachable and "no answer within 0.3 s" in str(err.value)
    served = server.add("/stalls", DATA, hold_after=1 << 20)
    with pytest.raises(DownloadError, match=f"no data for 0.3 s after {1 << 20} bytes"):
        await asyncio.wait_for(fetch(server.url("/stalls"), read_timeout=0.3), 10)
    served.released.set()


async def test_a_listener_that_never_accepts_fails_within_the_connect_timeout() -> None:
    # A listening socket with a full backlog: the SYN is never answered.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                f = socket.socket()
                f.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    f.connect(("127.0.0.1", port))
                fillers.append(f)
            with pytest.raises(DownloadError) as err:
                await asyncio.wait_for(
                    open_download(f"http://127.0.0.1:{port}/x", connect_timeout=0.3, read_timeout=0.3), 10
                )
            assert err.value.unreachable
        finally:
            for f in fillers:
                f.close()


@pytest.mark.parametrize(
    "url", ["", "ftp://h/x", "http:///nohost", "file:///etc/passwd", "http://h:99999/x", "not a url"]
)
async def test_urls_no_download_can_come_from_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url)
    with pytest.raises(DownloadError):
        await open_download(url, connect_timeout=1, read_timeout=1)
