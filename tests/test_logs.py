"""ProcessLog: whole lines of any length, follow mode, no fd leaks,
rotation, and logs that outlive their process for a while."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_pb2 as pm
from tests.helpers import PY, SH, WRITER, RunningDaemon, eventually, spec, wait_gone

pytestmark = pytest.mark.asyncio


async def read_log(stub, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    lines = []
    async with stub.ProcessLog.open() as stream:
        await stream.send_message(pm.LogRequest(name=name), end=True)
        async for reply in stream:
            lines.append(reply.line)
    return lines


async def writer(daemon: RunningDaemon, name: str, length: int, count: int) -> None:
    stub = daemon.pm()
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(name, PY, [WRITER, str(length), str(count)])))
    log = daemon.logs_dir / f"{name}.log"
    async with asyncio.timeout(20):
        while not log.read_bytes().endswith(b"done\n"):
            await asyncio.sleep(0.05)


async def test_log_streams_lines_in_order(daemon: RunningDaemon) -> None:
    await writer(daemon, "lw", 20, 50)
    lines = await read_log(daemon.pm(), "lw")
    assert len(lines) == 51
    assert [line.split(":")[0] for line in lines[:50]] == [str(i) for i in range(50)]
    assert lines[-1] == "done"


async def test_100_kib_line_streams_intact(daemon: RunningDaemon) -> None:
    await writer(daemon, "big", 100 * 1024, 3)
    lines = await read_log(daemon.pm("unix"), "big")
    assert [len(line) for line in lines[:3]] == [100 * 1024] * 3
    assert lines[1] == "1:" + "x" * (100 * 1024 - 2)
    assert lines[3] == "done"


async def test_cancelled_log_stream_closes_its_file(daemon: RunningDaemon) -> None:
    await writer(daemon, "long", 200, 100_000)  # ~20 MB: far more than one read
    stub = daemon.pm()
    await stub.ProcessGet(pm.ProcessGetRequest(name="long"))  # connection is up
    baseline = daemon.fd_count()
    async with stub.ProcessLog.open() as stream:
        await stream.send_message(pm.LogRequest(name="long"), end=True)
        for _ in range(5):
            assert await stream.recv_message() is not None
        assert daemon.fd_count() > baseline  # the log file is open now
        await stream.cancel()
    async with asyncio.timeout(5):
        while daemon.fd_count() != baseline:
            await asyncio.sleep(0.05)
    # And the daemon still serves.
    assert (await stub.ProcessGet(pm.ProcessGetRequest(name="long"))).status.state == "running"


async def test_follow_streams_new_lines_and_ends_on_delete(daemon: RunningDaemon) -> None:
    stub = daemon.pm()
    script = 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("tail", SH, ["-c", script])))
    got: list[str] = []
    async with stub.ProcessLog.open() as stream:
        await stream.send_message(pm.LogRequest(name="tail", follow=True), end=True)
        async with asyncio.timeout(10):
            while len(got) < 15:
                reply = await stream.recv_message()
                assert reply is not None
                got.append(reply.line)
        await stub.ProcessDelete(pm.ProcessDeleteRequest(name="tail"))
        async with asyncio.timeout(10):
            while (reply := await stream.recv_message()) is not None:
                got.append(reply.line)
    assert got[:15] == [f"line {i}" for i in range(15)]


async def test_log_of_deleted_process_stays_readable_then_expires(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(deleted_log_retention_s=2.0)
    stub = daemon.pm()
    await writer(daemon, "gone", 10, 3)
    await stub.ProcessDelete(pm.ProcessDeleteRequest(name="gone"))
    await wait_gone(stub, "gone")
    lines = await read_log(stub, "gone")
    assert "done" in lines  # (followed by the child's KeyboardInterrupt traceback)

    async def expired() -> bool:
        try:
            await read_log(stub, "gone")
        except GRPCError as exc:
            assert exc.status == Status.NOT_FOUND, exc
            return True
        return False

    await eventually(expired, "the deleted process's log expires", interval=0.2)
    assert not (daemon.logs_dir / "gone.log").exists()


async def test_log_of_unknown_name_is_not_found(daemon: RunningDaemon) -> None:
    with pytest.raises(GRPCError) as err:
        await read_log(daemon.pm(), "nobody")
    assert err.value.status == Status.NOT_FOUND


async def test_log_with_bad_name_is_invalid(daemon: RunningDaemon) -> None:
    with pytest.raises(GRPCError) as err:
        await read_log(daemon.pm(), "../etc/passwd")
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "name" in (err.value.message or "")


async def test_logs_rotate_by_size_keeping_a_count(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(log_max_bytes=8192, log_keep=2)
    stub = daemon.pm()
    script = "i=0; while [ $i -lt 2000 ]; do echo line-$i-padding-padding; i=$((i+1)); done; sleep 1000"
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("rot", SH, ["-c", script])))
    first = daemon.logs_dir / "rot.log.1"
    async with asyncio.timeout(10):
        while not first.exists():
            await asyncio.sleep(0.1)
    assert first.stat().st_size > 8192
    assert (daemon.logs_dir / "rot.log").stat().st_size < first.stat().st_size
    assert not (daemon.logs_dir / "rot.log.3").exists()
    # Rotation kept a consistent stream: every rotated file starts at a line.
    assert first.read_text().splitlines()[0].startswith("line-")
