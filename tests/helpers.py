"""Shared test machinery: a real daemon in a child process, and clients."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from imd.api.gen.imrpc import disk_grpc, imrpc_grpc, instance_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.supervisor.state import REGISTRY_FILE, encode_registry, journal_path, read_registry

PY = sys.executable
CHILDREN = Path(__file__).parent / "children"
HEALTH_SERVER = str(CHILDREN / "health_server.py")
STUBBORN = str(CHILDREN / "stubborn.py")
BLOCKER = str(CHILDREN / "blocker.py")
WRITER = str(CHILDREN / "writer.py")
SLEEP = "/bin/sleep"
SH = "/bin/sh"
# Children's ports: below the kernel's ephemeral range, so they never clash
# with the daemon's own listeners (bound to ephemeral ports).
CHILD_PORTS = 200  # each daemon's port range: a block of free ports, so that concurrent suites never collide

TEST_CONFIG: dict[str, Any] = {
    # An ephemeral port: daemons of concurrent tests never collide on it
    # (RunningDaemon.metrics_port() reads the bound one from the log).
    "metrics_listen": "127.0.0.1:0",
    "stop_grace_s": 2.0,
    "health_timeout_s": 15.0,
    "health_interval_s": 0.05,
    "drain_timeout_s": 3.0,
    "log_check_s": 0.3,
}


# Ports the tests pick for listeners: above the children's ranges and below
# the kernel's ephemeral ones, so no outgoing connection (of this suite or of
# anything else on the machine) is ever given one between the pick and the bind.
_LISTEN_LOW = 30000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(count: int) -> int:
    """A port P with P to P + count - 1 free, below the ephemeral range when
    there is room there (else anywhere the kernel offers)."""
    high = _ephemeral_low()
    for _ in range(200):
        if high - _LISTEN_LOW > 4 * count:
            base = random.randrange(_LISTEN_LOW, high - count)
        else:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        if all(_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError(f"no free block of {count} ports")


def free_base_port() -> int:
    """A base port for a daemon: it listens on P (process manager), P+1
    (proxy), P+2 (disk), P+3 (instance) and P+4 (replica)."""
    return free_port_block(5)


def _free(port: int) -> bool:
    with socket.socket() as other:
        try:
            other.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class RunningDaemon:
    root: Path
    base_port: int
    socket: Path
    logs_dir: Path
    state_dir: Path
    stderr_path: Path
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None
    channels: list[Channel] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def channel(self, transport: str = "tcp", offset: int = 0) -> Channel:
        ch = Channel(path=str(self.socket)) if transport == "unix" else Channel("127.0.0.1", self.base_port + offset)
        self.channels.append(ch)
        return ch

    def pm(self, transport: str = "tcp") -> imrpc_grpc.ProcessManagerServiceStub:
        return imrpc_grpc.ProcessManagerServiceStub(self.channel(transport))

    def instances(self, transport: str = "tcp") -> instance_grpc.InstanceServiceStub:
        return instance_grpc.InstanceServiceStub(self.channel(transport, offset=3))

    def disks(self, transport: str = "tcp") -> disk_grpc.DiskServiceStub:
        return disk_grpc.DiskServiceStub(self.channel(transport, offset=2))

    def metrics_port(self) -> int:
        """The port /metrics is served on, from the daemon's "serving" line."""
        for line in self.stderr().splitlines():
            if '"event":"serving"' in line:
                return int(msgspec.json.decode(line)["metrics_port"])
        raise AssertionError("the daemon has not logged its ports")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close_channels(self) -> None:
        for ch in self.channels:
            ch.close()
        self.channels.clear()

    async def start(self, env: dict[str, str] | None = None, *, serving: bool = True) -> None:
        """Start the daemon and wait until health says SERVING (or, with
        ``serving=False``, until health answers at all: a degraded daemon)."""
        for attempt in range(3):
            logged = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
            err = self.stderr_path.open("ab")
            self.proc = subprocess.Popen(
                [PY, "-m", "imd", "serve", "--config", str(self.config_path)],
                cwd=self.root,
                stdout=err,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
            err.close()
            if not await self._lost_its_ports(logged) or attempt == 2:
                break
        assert self.proc is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.stderr()}")
            if await health_serving(self.socket) if serving else await health_answers(self.socket):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"daemon not ready:\n{self.stderr()}")

    async def _lost_its_ports(self, logged: int) -> bool:
        """Whether the daemon just started exited because another program
        (a concurrent suite) bound one of its ports after the pick; if so,
        it moves to a new block. Not a retry of the daemon's own failure: the
        ports were free when picked, and nothing here can reserve them."""
        assert self.proc is not None
        listen = f'listen = "127.0.0.1:{self.base_port}"'
        config = self.config_path.read_text()
        if listen not in config:
            return False  # ports given some other way: the test owns them
        deadline = time.monotonic() + 20
        while self.proc.poll() is None:
            if time.monotonic() > deadline or await health_answers(self.socket):
                return False  # serving (or hung: start() reports that)
            await asyncio.sleep(0.05)
        with self.stderr_path.open("rb") as err:
            err.seek(logged)
            if b"address already in use" not in err.read():
                return False
        self.base_port = free_base_port()
        self.config_path.write_text(config.replace(listen, f'listen = "127.0.0.1:{self.base_port}"'))
        return True

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.close_channels()
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("daemon did not stop in time")
        return self.proc.returncode


async def health_serving(sock: Path) -> bool:
    if not sock.exists():
        return False
    ch = Channel(path=str(sock))
    try:
        reply = await HealthStub(ch).Check(HealthCheckRequest(service=""), timeout=1)
        return bool(reply.status == HealthCheckResponse.SERVING)
    except Exception:
        return False
    finally:
        ch.close()


async def health_answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    ch = Channel(path=str(sock))
    try:
        await HealthStub(ch).Check(HealthCheckRequest(service=""), timeout=1)
        return True
    except Exception:
        return False
    finally:
        ch.close()


def to_toml(values: dict[str, Any]) -> str:
    """Flat TOML (plus one level of tables), enough for daemon configs.
    JSON string and number syntax is valid TOML for these values."""
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]\n{to_toml(value)}")
        else:
            lines.append(f"{key} = {msgspec.json.encode(value).decode()}")
    return "\n".join(lines + tables) + "\n"


def _child_ports() -> str:
    """A range of ports free now, below the kernel's ephemeral ones where it
    can (the daemon warns about an overlap), for one daemon's children."""
    for _ in range(50):
        low = random.randrange(20000, 30000 - CHILD_PORTS)
        if all(_free(port) for port in range(low, low + CHILD_PORTS, 7)):
            return f"{low}-{low + CHILD_PORTS - 1}"
    raise RuntimeError("no free range of child ports")


def make_daemon(root: Path, **overrides: Any) -> RunningDaemon:
    root.mkdir(parents=True, exist_ok=True)
    base = free_base_port()
    daemon = RunningDaemon(
        root=root,
        base_port=base,
        socket=root / "imd.sock",
        logs_dir=root / "logs",
        state_dir=root / "state",
        stderr_path=root / "daemon.stderr",
        config_path=root / "imd.toml",
    )
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{base}",
        "socket": str(daemon.socket),
        "state_dir": str(daemon.state_dir),
        "logs_dir": str(daemon.logs_dir),
        "port_range": _child_ports(),
        **TEST_CONFIG,
        **overrides,
    }
    daemon.config_path.write_text(to_toml(config))
    return daemon


def spec(
    name: str,
    binary: str = SLEEP,
    args: list[str] | None = None,
    port_count: int = 0,
    port_args: list[str] | None = None,
) -> pm.ProcessSpec:
    return pm.ProcessSpec(
        name=name,
        binary=binary,
        args=["1000"] if args is None and binary == SLEEP else (args or []),
        port_count=port_count,
        port_args=port_args or [],
    )


def health_spec(name: str, *extra: str) -> pm.ProcessSpec:
    return pm.ProcessSpec(
        name=name,
        binary=PY,
        args=[HEALTH_SERVER, *extra],
        port_count=1,
        port_args=["--listen,127.0.0.1:"],
    )


@contextlib.asynccontextmanager
async def watching(stub: imrpc_grpc.ProcessManagerServiceStub) -> AsyncIterator[Any]:
    """An open ProcessWatch stream whose subscription is established."""
    async with stub.ProcessWatch.open() as stream:
        await stream.send_message(Empty(), end=True)
        await stream.recv_initial_metadata()
        yield stream
        # The test may have read the stream to its end; then there is
        # nothing left to cancel (h2 raises StreamClosedError).
        with contextlib.suppress(Exception):
            await stream.cancel()


async def next_events(stream: Any, count: int, timeout: float = 20) -> list[pm.ProcessResponse]:
    events: list[pm.ProcessResponse] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            event = await stream.recv_message()
            assert event is not None, f"stream ended after {events}"
            events.append(event)
    return events


async def until_event(stream: Any, predicate: Any, timeout: float = 20) -> list[pm.ProcessResponse]:
    """Events up to and including the first that matches."""
    events: list[pm.ProcessResponse] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.recv_message()
            assert event is not None, f"stream ended after {events}"
            events.append(event)
            if predicate(event):
                return events


async def wait_state(
    stub: imrpc_grpc.ProcessManagerServiceStub, name: str, states: set[str], timeout: float = 20
) -> pm.ProcessResponse:
    async with asyncio.timeout(timeout):
        while True:
            reply = await stub.ProcessGet(pm.ProcessGetRequest(name=name))
            if reply.status.state in states:
                return reply
            await asyncio.sleep(0.05)


async def eventually(
    check: Callable[[], object | Awaitable[object]], what: str = "", timeout: float = 20, interval: float = 0.05
) -> None:
    """Poll ``check`` (a predicate, sync or async; its result is taken as
    true or false) until it holds; fail naming ``what`` (by default the
    predicate's source line) if it has not within ``timeout`` seconds. The
    deadline is a bound on a hang, not a measurement: a loaded machine only
    polls longer."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                outcome = check()
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                if outcome:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g}s: {what or _source(check)}") from None


def _source(check: Callable[..., object]) -> str:
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return repr(check)


async def wait_log(daemon: RunningDaemon, name: str, text: str, timeout: float = 20) -> str:
    """The log of child ``name`` once it contains ``text`` (the child said
    it has done something: installed a handler, printed its argv)."""
    path = daemon.logs_dir / f"{name}.log"

    def logged() -> bool:
        return path.exists() and text in path.read_text(errors="replace")

    await eventually(logged, f"{text!r} in {path}", timeout)
    return path.read_text(errors="replace")


def pending_signals(pid: int) -> int:
    """The signals sent to ``pid`` and not yet delivered (thread and process
    pending sets of /proc/PID/status). A child that blocks a signal keeps it
    pending, so a test can see, at once and for certain, whether it was sent."""
    pending = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("SigPnd", "ShdPnd"):
                pending |= int(value.strip(), 16)
    return pending


async def wait_gone(stub: imrpc_grpc.ProcessManagerServiceStub, name: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while name in (await stub.ProcessList(pm.ProcessListRequest())).processes:
            await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone between the two looks: the open finds no entry, or the read
        # of an entry already open fails with ESRCH.
        return False


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def registry_state(state_dir: Path) -> dict[str, Any]:
    """The durable registry as JSON (``{"version": 1, "processes": [...]}``):
    the state file with its journal replayed, what a restart would recover."""
    return json.loads(encode_registry(read_registry(state_dir)))


def pid_of(daemon: RunningDaemon, name: str) -> int:
    """The pid of the current process ``name``, as the daemon recorded it."""
    state = registry_state(daemon.state_dir)
    (pid,) = [e["pid"] for e in state["processes"] if e["name"] == name and e.get("role", "current") == "current"]
    return int(pid)


def write_registry_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Replace the durable registry by ``state`` (a test tampering with what
    a restart will find): a whole state file, and no journal."""
    (state_dir / REGISTRY_FILE).write_text(json.dumps(state))
    journal_path(state_dir / REGISTRY_FILE).unlink(missing_ok=True)
