"""systemd integration: READY=1 only when serving, STATUS=, watchdog pings
from the event loop (and only from it), and a clean child environment."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.config import Config
from imd.daemon import Daemon
from imd.edges.sdnotify import Notifier
from tests.helpers import SH, eventually, free_base_port, health_serving, make_daemon, spec, wait_log

pytestmark = pytest.mark.asyncio


class NotifyListener:
    """A stand-in for systemd's notify socket. Datagrams wait in the
    kernel's queue until read, and every look reads them all first: nothing
    sent before a look is missed, and a test that freezes its own event loop
    can tell exactly which datagrams were sent before and during the freeze."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self._read: list[str] = []

    def drain(self) -> list[str]:
        """The datagrams that arrived since the last look."""
        new = []
        while True:
            try:
                new.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self._read.extend(new)
        return new

    @property
    def messages(self) -> list[str]:
        self.drain()
        return list(self._read)

    def close(self) -> None:
        self.sock.close()

    def with_key(self, key: str) -> list[str]:
        return [m for m in self.messages if key in m.split("\n")]


async def wait_for(listener: NotifyListener, key: str, count: int = 1, timeout: float = 20) -> list[str]:
    """The first ``count`` messages carrying ``key``, once they have come."""
    await eventually(lambda: len(listener.with_key(key)) >= count, f"{count} x {key}", timeout, interval=0.01)
    return listener.with_key(key)[:count]


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
        (ready,) = await wait_for(listener, "READY=1")
        # READY=1 came after every listener accepted connections.
        assert await health_serving(daemon.socket)
        with socket.create_connection(("127.0.0.1", daemon.base_port + 3), timeout=2):
            pass
        assert "STATUS=no processes; 0 watchers" in ready
        assert f"MAINPID={daemon.pid}" in ready
        # The watchdog pings keep coming (every 0.1 s here; the period is
        # the daemon's business, not asserted on a loaded machine).
        await wait_for(listener, "WATCHDOG=1", count=5)
        # STATUS follows the registry.
        await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("s1")))
        await eventually(lambda: any("STATUS=1 running" in m for m in listener.messages), "STATUS=1 running")
        # The child does not inherit the daemon's notify socket.
        dump = spec("envdump", SH, ["-c", "env; echo env-done; sleep 100"])
        await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=dump))
        env_lines = (await wait_log(daemon, "envdump", "env-done\n")).splitlines()
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
        await wait_for(listener, "WATCHDOG=1", count=5)  # pinging while the loop runs
        listener.drain()  # everything sent before the freeze, read
        # The loop is stuck for ten watchdog periods, no task can run. A
        # fixed sleep by design: this is the stall being tested, not a wait.
        time.sleep(1.0)  # noqa: ASYNC251
        during = [m for m in listener.drain() if "WATCHDOG=1" in m.split("\n")]
        assert during == []  # no ping was sent while the loop was stuck
        # Thawed: the pings come back.
        await wait_for(listener, "WATCHDOG=1", count=len(listener.with_key("WATCHDOG=1")) + 3)
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
