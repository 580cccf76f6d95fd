"""Opening a channel to a daemon: TCP (optionally mTLS) or its Unix socket."""

from __future__ import annotations

from grpclib.client import Channel

from imd.api.status import BoundedProtoCodec
from imd.api.tls import client_context


def open_channel(*, address: str | None, socket_path: str | None, tls_dir: str | None, port_offset: int = 0) -> Channel:
    """A socket path wins over an address; the instance API is at base port + 3."""
    if socket_path:
        return Channel(path=socket_path, codec=BoundedProtoCodec())
    host, _, port = (address or "127.0.0.1:8500").rpartition(":")
    ctx = client_context(tls_dir) if tls_dir else None
    return Channel(host.strip("[]") or "127.0.0.1", int(port) + port_offset, ssl=ctx, codec=BoundedProtoCodec())
