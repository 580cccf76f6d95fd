"""TLS for every gRPC connection imd makes or takes: Longhorn's layout
(``ca.crt``, ``tls.crt``, ``tls.key`` in one directory), mutual, TLS 1.3,
ALPN h2 (grpc-go refuses servers without it)."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsError(Exception):
    """The TLS files cannot be loaded: a daemon told to use TLS must never
    fall back to plaintext."""


def server_context(tls_dir: str) -> ssl.SSLContext:
    directory = Path(tls_dir)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        ctx.load_verify_locations(directory / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"tls.dir {tls_dir}: cannot load ca.crt/tls.crt/tls.key: {exc}") from exc
    return ctx


def client_context(tls_dir: str) -> ssl.SSLContext:
    directory = Path(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(directory / "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    ctx.set_alpn_protocols(["h2"])
    return ctx
