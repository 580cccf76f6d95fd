"""Drain on SIGTERM, the children policy at exit, and TLS that never falls
back to plaintext."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.tls import client_context
from tests.certs import write_tls_dir
from tests.helpers import (
    PY,
    health_serving,
    health_spec,
    make_daemon,
    pid_alive,
    spec,
    until_event,
    wait_state,
    watching,
)

pytestmark = pytest.mark.asyncio


async def child_pid(daemon, name: str) -> int:  # type: ignore[no-untyped-def]
    from tests.helpers import children_of

    for pid in children_of(daemon.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f"{name}".encode() in f.read():
                return pid
    raise AssertionError(f"no child for {name}")


async def test_sigterm_drains_then_stops_children(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(drain_timeout_s=10.0)
    stub = daemon.pm()
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("marker-child", args=["1001"])))
    pid = await child_pid(daemon, "1001")
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=health_spec("h")))
    await wait_state(stub, "h", {"running"})
    async with watching(daemon.pm("unix")) as events:
        # A replace is in flight when SIGTERM arrives: its replacement starts
        # serving only once the test has seen the drain begin.
        go = daemon.root / "go"
        pending = asyncio.ensure_future(
            daemon.pm().ProcessReplace(
                pm.ProcessReplaceRequest(spec=health_spec("h", "--wait-for", str(go)), terminate_signal="SIGHUP")
            )
        )
        await until_event(events, lambda e: e.status.state == "starting")
        daemon.proc.send_signal(signal.SIGTERM)
        # While draining: health says NOT_SERVING and new work is refused.
        async with asyncio.timeout(5):
            while await health_serving(daemon.socket):
                await asyncio.sleep(0.05)
        with pytest.raises(GRPCError) as err:
            await daemon.pm("unix").ProcessCreate(pm.ProcessCreateRequest(spec=spec("late")))
        assert err.value.status == Status.UNAVAILABLE
        assert not pending.done()
        go.touch()
        # The in-flight replace completes; the watch stream ends cleanly (OK).
        replaced = await asyncio.wait_for(pending, 10)
        assert replaced.status.state == "running"
        async with asyncio.timeout(10):
            while await events.recv_message() is not None:
                pass
        await events.recv_trailing_metadata()  # raises on any status but OK
    async with asyncio.timeout(15):
        while daemon.proc.poll() is None:
            await asyncio.sleep(0.05)
    assert daemon.proc.returncode == 0
    assert not pid_alive(pid)
    assert '"event":"stopped"' in daemon.stderr()


async def test_leave_children_running_on_exit(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(stop_children_on_exit=False)
    await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("stay", args=["1002"])))
    pid = await child_pid(daemon, "1002")
    assert await daemon.stop() == 0
    try:
        assert pid_alive(pid)
    finally:
        subprocess.run(["kill", "-9", str(pid)], check=False)


async def test_unloadable_tls_refuses_to_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(tmp_path / "d", tls={"dir": str(tmp_path / "no-such-dir")})
    proc = subprocess.run(
        [PY, "-m", "imd", "serve", "--config", str(daemon.config_path)],
        cwd=daemon.root,
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"tls.dir" in proc.stderr and b"cannot load" in proc.stderr
    assert not daemon.socket.exists()


async def test_mtls_serves_tls_clients_only(daemon_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = write_tls_dir(tmp_path / "server-tls")
    write_tls_dir(tmp_path / "client-tls", ca)
    daemon = await daemon_factory(tls={"dir": str(tmp_path / "server-tls")})
    secure = Channel("127.0.0.1", daemon.base_port, ssl=client_context(str(tmp_path / "client-tls")))
    try:
        version = await imrpc_grpc.ProcessManagerServiceStub(secure).VersionGet(Empty())
        assert version.instanceManagerAPIVersion == 7
    finally:
        secure.close()
    plain = Channel("127.0.0.1", daemon.base_port)
    try:
        with pytest.raises((ConnectionError, OSError, StreamTerminatedError, asyncio.TimeoutError)):
            await imrpc_grpc.ProcessManagerServiceStub(plain).VersionGet(Empty(), timeout=3)
    finally:
        plain.close()
    # A client without a certificate is refused by the handshake.
    no_cert = ssl.create_default_context(cafile=str(tmp_path / "server-tls" / "ca.crt"))
    no_cert.set_alpn_protocols(["h2"])
    anonymous = Channel("127.0.0.1", daemon.base_port, ssl=no_cert)
    try:
        with pytest.raises((ConnectionError, OSError, ssl.SSLError, StreamTerminatedError, asyncio.TimeoutError)):
            await imrpc_grpc.ProcessManagerServiceStub(anonymous).VersionGet(Empty(), timeout=3)
    finally:
        anonymous.close()
