"""systemd integration: READY=1 only when serving, STATUS=, watchdog pings
from the event loop (and only from it), and a clean child environment."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.config import Config
from imd.daemon import Daemon
from imd.edges.sdnotify import Notifier
from tests.helpers import SH, free_base_port, health_serving, make_daemon, spec

pytestmark = pytest.mark.asyncio


class NotifyListener:
    """A stand-in for systemd's notify socket that records every datagram
    with the time it arrived (on a thread, so a frozen loop cannot hide them)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()

    def with_key(self, key: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if key in m.split("\n")]


async def wait_for(listener: NotifyListener, key: str, timeout: float = 20) -> str:
    async with asyncio.timeout(timeout):
        while not listener.with_key(key):
            await asyncio.sleep(0.01)
    return listener.with_key(key)[0][1]


@pytest.mark.parametrize("abstract", [False, True])
async def test_ready_status_and_watchdog(tmp_path: Path, abstract: bool) -> None:
    daemon = make_daemon(tmp_path / "d")
    if abstract:
        name = f"imd-test-{time.monotonic_ns()}"
        listener = NotifyListener("\0" + name)
        notify_socket = "@" + name
    else:
        path = str(tmp_path / "notify.sock")
        listener = NotifyListener(path)
        notify_socket = path
    try:
        await daemon.start(env={"NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "200000"})
        ready = await wait_for(listener, "READY=1")
        # READY=1 came after every listener accepted connections.
        assert await health_serving(daemon.socket)
        with socket.create_connection(("127.0.0.1", daemon.base_port + 3), timeout=2):
            pass
        assert "STATUS=no processes; 0 watchers" in ready
        assert f"MAINPID={daemon.pid}" in ready
        await asyncio.sleep(1.2)
        pings = listener.with_key("WATCHDOG=1")
        assert len(pings) >= 5  # every 0.1 s
        # STATUS follows the registry.
        await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("s1")))
        async with asyncio.timeout(5):
            while not any("STATUS=1 running" in m for _, m in listener.messages):
                await asyncio.sleep(0.05)
        # The child does not inherit the daemon's notify socket.
        await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("envdump", SH, ["-c", "env; sleep 100"])))
        await asyncio.sleep(0.3)
        env_lines = (daemon.logs_dir / "envdump.log").read_text().splitlines()
        assert not [line for line in env_lines if line.startswith(("NOTIFY_SOCKET=", "WATCHDOG_USEC="))]
        assert any(line.startswith("PATH=") for line in env_lines)
        assert await daemon.stop() == 0
        assert listener.with_key("STOPPING=1")
    finally:
        listener.close()


async def test_a_frozen_event_loop_stops_the_pings(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    config = Config(
        listen=f"127.0.0.1:{free_base_port()}",
        socket=str(tmp_path / "imd.sock"),
        state_dir=str(tmp_path / "state"),
        logs_dir=str(tmp_path / "logs"),
    )
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "100000"})
    daemon = Daemon(config, notifier=notifier)
    await daemon.start()
    try:
        await wait_for(listener, "READY=1")
        await asyncio.sleep(0.5)
        before = len(listener.with_key("WATCHDOG=1"))
        assert before >= 5
        frozen_at = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 - the point: the loop is stuck, no task can run
        thawed_at = time.monotonic()
        await asyncio.sleep(0.5)
        pings = [t for t, _ in listener.with_key("WATCHDOG=1")]
        during = [t for t in pings if frozen_at + 0.05 < t < thawed_at - 0.05]
        after = [t for t in pings if t >= thawed_at]
        assert during == []
        assert len(after) >= 3
    finally:
        await daemon.stop()
        listener.close()


async def test_watchdog_for_another_pid_is_ignored_and_send_errors_are_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_usec == 0
    assert Notifier({"WATCHDOG_USEC": "nonsense"}).watchdog_usec == 0
    assert not Notifier({}).enabled
    assert Notifier({}).notify("READY=1") is False
    nobody = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert nobody.enabled and nobody.ready("x") is False
    nobody.close()
