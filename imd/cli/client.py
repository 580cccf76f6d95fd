"""Opening a channel to a daemon: TCP (optionally mTLS) or its Unix socket."""

from __future__ import annotations

import ssl
from pathlib import Path

from grpclib.client import Channel

from imd.api.status import BoundedProtoCodec


def client_tls(tls_dir: str) -> ssl.SSLContext:
    directory = Path(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(directory / "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    ctx.set_alpn_protocols(["h2"])
    return ctx


def open_channel(*, address: str | None, socket_path: str | None, tls_dir: str | None, port_offset: int = 0) -> Channel:
    """A socket path wins over an address; the instance API is at base port + 3."""
    if socket_path:
        return Channel(path=socket_path, codec=BoundedProtoCodec())
    host, _, port = (address or "127.0.0.1:8500").rpartition(":")
    ctx = client_tls(tls_dir) if tls_dir else None
    return Channel(host.strip("[]") or "127.0.0.1", int(port) + port_offset, ssl=ctx, codec=BoundedProtoCodec())
