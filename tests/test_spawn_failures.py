"""Spawn failures a real fault cannot produce on demand, injected into a
daemon running in this process (clients still go through real gRPC):
pidfd_open or the start-time read failing after the child started, and
posix_spawn failing with ENOMEM or EIO. Plus a real ENOEXEC, which must
stay the caller's fault, and log streams at the descriptor limit."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiofiles
import pytest
import pytest_asyncio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.config import Config
from imd.daemon import Daemon
from imd.edges import spawn as os_spawn
from tests.helpers import SLEEP, children_of, free_base_port, pid_alive, spec

pytestmark = pytest.mark.asyncio


class InProcess:
    def __init__(self, daemon: Daemon, stub: imrpc_grpc.ProcessManagerServiceStub) -> None:
        self.daemon = daemon
        self.stub = stub

    async def create(self, s: pm.ProcessSpec) -> pm.ProcessResponse:
        return await self.stub.ProcessCreate(pm.ProcessCreateRequest(spec=s))

    async def refused(self, s: pm.ProcessSpec) -> GRPCError:
        with pytest.raises(GRPCError) as err:
            await self.create(s)
        return err.value


@pytest_asyncio.fixture
async def local(tmp_path: Path) -> AsyncIterator[InProcess]:
    base = free_base_port()
    config = Config(
        listen=f"127.0.0.1:{base}",
        socket=str(tmp_path / "imd.sock"),
        state_dir=str(tmp_path / "state"),
        logs_dir=str(tmp_path / "logs"),
        port_range="23100-23103",
        stop_grace_s=1.0,
    )
    daemon = Daemon(config)
    await daemon.start()
    channel = Channel(path=config.socket)
    try:
        yield InProcess(daemon, imrpc_grpc.ProcessManagerServiceStub(channel))
    finally:
        channel.close()
        await daemon.stop()


def live_children() -> set[int]:
    return {pid for pid in children_of(os.getpid()) if pid_alive(pid)}


def fail_once(real: Callable[..., Any], code: int, calls: list[int]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        calls.append(args[0])
        if len(calls) == 1:
            raise OSError(code, os.strerror(code))
        return real(*args)

    return wrapper


@pytest.mark.parametrize("step", ["open_pidfd", "process_start_time"])
async def test_a_child_that_cannot_be_watched_is_killed_and_its_ports_freed(
    local: InProcess, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    pids: list[int] = []
    monkeypatch.setattr(os_spawn, step, fail_once(getattr(os_spawn, step), errno.EMFILE, pids))
    before = live_children()
    err = await local.refused(spec("w", port_count=4))
    assert err.status == Status.RESOURCE_EXHAUSTED
    assert (err.message or "").startswith(f"file descriptors: cannot start {SLEEP}: too many open files (limit ")
    # The child had started: it was killed and reaped, not left behind.
    assert pids and not pid_alive(pids[0]) and not os.path.exists(f"/proc/{pids[0]}")
    assert live_children() == before
    assert "w" not in (await local.stub.ProcessList(pm.ProcessListRequest())).processes
    # The reserve was spent; with descriptors to spare it is refilled and
    # the next create (needing all four ports: they were freed) goes through.
    assert local.daemon.descriptors.short
    assert local.daemon.status_line().startswith("file descriptors exhausted, refusing new processes; ")
    again = await local.create(spec("w", port_count=4))
    assert (again.status.port_start, again.status.port_end) == (23100, 23103)
    assert not local.daemon.descriptors.short and local.daemon.descriptors.reserve_held == 16
    assert local.daemon.status_line() == "1 starting; 0 watchers"


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (errno.ENOMEM, Status.RESOURCE_EXHAUSTED, f"memory: cannot start {SLEEP}: cannot allocate memory"),
        (errno.EAGAIN, Status.RESOURCE_EXHAUSTED, f"processes: cannot start {SLEEP}: resource temporarily unavailable"),
        (errno.EIO, Status.UNAVAILABLE, f"cannot start {SLEEP}: input/output error"),
    ],
)
async def test_spawn_errors_that_are_not_the_callers_fault(
    local: InProcess, monkeypatch: pytest.MonkeyPatch, code: int, status: Status, message: str
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os_spawn, "spawn", fail_once(os_spawn.spawn, code, calls))
    err = await local.refused(spec("s", port_count=4))
    assert (err.status, err.message) == (status, message)
    assert not local.daemon.descriptors.short  # only descriptor errors spend the reserve
    # Nothing was half-made: the ports are all free for the next create.
    ok = await local.create(spec("s", port_count=4))
    assert ok.status.port_start == 23100


async def test_a_binary_that_is_not_a_program_is_the_callers_fault(local: InProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF but not really\n")
    garbage.chmod(0o755)
    err = await local.refused(spec("g", binary=str(garbage)))
    assert err.status == Status.INVALID_ARGUMENT
    assert err.message == f"spec.binary: cannot execute {garbage}: Exec format error"
    assert not local.daemon.descriptors.short


async def test_a_log_stream_at_the_descriptor_limit_is_resource_exhausted(
    local: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    await local.create(spec("talker", "/bin/sh", ["-c", "echo hello; sleep 100"]))
    log = local.daemon.logs.path_for("talker")
    async with asyncio.timeout(5):
        while not log.read_bytes():
            await asyncio.sleep(0.02)
    real_open = aiofiles.open

    def no_descriptors(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("talker.log"):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(aiofiles, "open", no_descriptors)
    with pytest.raises(GRPCError) as err:
        async with local.stub.ProcessLog.open() as stream:
            await stream.send_message(pm.LogRequest(name="talker"), end=True)
            await stream.recv_message()
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    assert err.value.message == "file descriptors: cannot open the log of talker: Too many open files"
    monkeypatch.setattr(aiofiles, "open", real_open)
    async with asyncio.timeout(5), local.stub.ProcessLog.open() as stream:
        await stream.send_message(pm.LogRequest(name="talker"), end=True)
        first = await stream.recv_message()
    assert first is not None and first.line == "hello"
