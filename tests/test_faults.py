"""Faults injected into a real daemon: a full state dir (a small tmpfs), a
read-only one (the tmpfs remounted ro under the running daemon), a low
RLIMIT_NOFILE, a pids cgroup limit, a port range of two ports.

For each: the status code and a message that names the cause; the daemon
keeps serving what it can; nothing half-made (no stray child, no ports
held); and recovery, without a restart, once the fault is removed.
Mounting needs root (CI runs as root); where it is not allowed the test is
skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from imd.api.gen.imrpc import imrpc_pb2 as pm
from tests.helpers import (
    BLOCKER,
    PY,
    SH,
    SLEEP,
    RunningDaemon,
    children_of,
    health_spec,
    make_daemon,
    pending_signals,
    pid_alive,
    registry_state,
    spec,
    until_event,
    wait_gone,
    wait_log,
    wait_state,
    watching,
)
from tests.test_sdnotify import NotifyListener

pytestmark = pytest.mark.asyncio

TICKER = "while :; do echo tick; sleep 0.1; done"
# The state journal appends small records, and an append that fits in the
# last page the journal already has succeeds on a full file system (as it
# would on a real disk). A process whose entry is bigger than a page (this
# becomes the shell's $0) cannot be written there: its change needs space.
BIG = "x" * 5000
FULL = "state dir: no space left on device (writing "
READ_ONLY = "state dir: read-only file system (writing "


# -- fault machinery ---------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``path``, or the test skipped."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system is full."""
    ballast = directory / "ballast"
    with ballast.open("wb", buffering=0) as out:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
    assert os.statvfs(directory).f_bavail == 0
    return ballast


@contextlib.asynccontextmanager
async def daemon_on_tmpfs(root: Path, size: str = "64k", env: dict[str, str] | None = None, **overrides: Any):  # type: ignore[no-untyped-def]
    daemon = make_daemon(root, **overrides)
    with tmpfs(daemon.state_dir, size):
        await daemon.start(env=env)
        try:
            yield daemon
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                await daemon.stop()


# -- observation ---------------------------------------------------------------------


async def health(daemon: RunningDaemon, transport: str = "unix") -> int | None:
    """The overall health status over a new connection, None if none."""
    ch = Channel(path=str(daemon.socket)) if transport == "unix" else Channel("127.0.0.1", daemon.base_port)
    try:
        reply = await HealthStub(ch).Check(HealthCheckRequest(service=""), timeout=3)
        return int(reply.status)
    except Exception:
        return None
    finally:
        ch.close()


async def wait_health(daemon: RunningDaemon, status: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while await health(daemon) != status:
            await asyncio.sleep(0.05)


async def wait_children(daemon: RunningDaemon, expected: set[int], timeout: float = 10) -> None:
    """Until the daemon's live children are exactly ``expected``."""
    async with asyncio.timeout(timeout):
        while {pid for pid in children_of(daemon.pid) if pid_alive(pid)} != expected:
            await asyncio.sleep(0.05)


async def refused(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call
    return err.value


def registry(daemon: RunningDaemon) -> dict[str, dict[str, Any]]:
    """The durable registry, current entries by name."""
    state = registry_state(daemon.state_dir)
    return {e["name"]: e for e in state["processes"] if e["role"] == "current"}


def events_logged(daemon: RunningDaemon, event: str) -> int:
    count = 0
    for line in daemon.stderr().splitlines():
        with contextlib.suppress(ValueError):
            count += json.loads(line).get("event") == event
    return count


async def next_line(stream: Any) -> str:
    async with asyncio.timeout(10):
        message = await stream.recv_message()
    assert message is not None
    return str(message.line)


# -- a full state dir ------------------------------------------------------------------


async def test_full_state_dir_undoes_and_refuses_changes_then_recovers(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    try:
        async with daemon_on_tmpfs(tmp_path / "d", env=env, port_range="22300-22303") as daemon:
            stub = daemon.pm()
            await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("keep", SH, ["-c", TICKER])))
            keep = registry(daemon)["keep"]
            async with watching(daemon.pm()) as events, stub.ProcessLog.open() as logs:
                await logs.send_message(pm.LogRequest(name="keep", follow=True), end=True)
                assert await next_line(logs) == "tick"
                ballast = fill(daemon.state_dir)

                # Spawned, but its entry cannot be written: undone, not acknowledged.
                lost = spec("lost", SH, ["-c", "sleep 1000", BIG], port_count=4)
                err = await refused(stub.ProcessCreate(pm.ProcessCreateRequest(spec=lost)))
                assert err.status == Status.RESOURCE_EXHAUSTED
                assert (err.message or "").startswith(FULL), err.message
                seen = await until_event(events, lambda e: e.spec.name == "lost" and e.deleted)
                assert seen[0].spec.name == "lost" and not seen[0].deleted  # watchers saw it come and go
                await wait_children(daemon, {keep["pid"]})
                assert await health(daemon) == HealthCheckResponse.NOT_SERVING

                # Degraded: every change fails fast, nothing is spawned or signalled.
                calls = [
                    stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("lost2", port_count=1))),
                    stub.ProcessDelete(pm.ProcessDeleteRequest(name="keep")),
                    stub.ProcessReplace(
                        pm.ProcessReplaceRequest(spec=spec("keep", SH, ["-c", TICKER]), terminate_signal="SIGHUP")
                    ),
                ]
                for call in calls:
                    err = await refused(call)
                    assert err.status == Status.RESOURCE_EXHAUSTED
                    assert (err.message or "").startswith(FULL), err.message
                assert not (daemon.logs_dir / "lost2.log").exists()
                assert children_of(daemon.pid) == {keep["pid"]}

                # Reads, watches and log streams go on.
                listing = (await stub.ProcessList(pm.ProcessListRequest())).processes
                assert list(listing) == ["keep"] and listing["keep"].status.state == "running"
                assert await next_line(logs) == "tick"
                # sd_notify says why.
                async with asyncio.timeout(5):
                    while not [m for m in listener.messages if "STATUS=degraded" in m and FULL in m]:
                        await asyncio.sleep(0.05)

                # Space comes back: the daemon recovers by itself.
                ballast.unlink()
                await wait_health(daemon, HealthCheckResponse.SERVING)
                await stub.ProcessDelete(pm.ProcessDeleteRequest(name="keep"))
                gone = await until_event(events, lambda e: e.spec.name == "keep" and e.deleted)
                assert gone[-1].status.uuid == listing["keep"].status.uuid

            # The undone create's ports were freed: all four fit again.
            after = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("after", port_count=4)))
            assert after.status.port_end - after.status.port_start == 3
            assert set(registry(daemon)) == {"after"}
            assert events_logged(daemon, "state not writable; refusing changes until it is") == 1
            assert events_logged(daemon, "state writable again; accepting changes") == 1
            statuses = [m for m in listener.messages if "STATUS=" in m]
            degraded_at = next(i for i, m in enumerate(statuses) if "STATUS=degraded" in m)
            assert any("STATUS=degraded" not in m for m in statuses[degraded_at:])
    finally:
        listener.close()


async def test_delete_whose_intent_cannot_be_written_leaves_the_process_alone(tmp_path: Path) -> None:
    async with daemon_on_tmpfs(tmp_path / "d") as daemon:
        stub = daemon.pm()
        # The victim blocks the signals a delete sends: one sent stays pending.
        created = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("victim", PY, [BLOCKER, BIG])))
        await wait_log(daemon, "victim", "blocking")
        pid = registry(daemon)["victim"]["pid"]
        ballast = fill(daemon.state_dir)
        err = await refused(stub.ProcessDelete(pm.ProcessDeleteRequest(name="victim")))
        assert err.status == Status.RESOURCE_EXHAUSTED and (err.message or "").startswith(FULL)
        # Not signalled, not stopping, same process.
        assert pending_signals(pid) == 0
        got = await stub.ProcessGet(pm.ProcessGetRequest(name="victim"))
        assert (got.status.uuid, got.status.state) == (created.status.uuid, "running")
        assert pid_alive(pid)
        ballast.unlink()
        await wait_health(daemon, HealthCheckResponse.SERVING)
        # What reached the disk once it could: the delete was not requested.
        assert registry(daemon)["victim"]["delete_requested"] is False
        await stub.ProcessDelete(pm.ProcessDeleteRequest(name="victim"))
        await wait_gone(stub, "victim")
        assert not pid_alive(pid)


async def test_replace_whose_takeover_cannot_be_written_keeps_the_old_process(tmp_path: Path) -> None:
    async with daemon_on_tmpfs(tmp_path / "d", port_range="22310-22311") as daemon:
        stub = daemon.pm()
        old = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("svc", SH, ["-c", TICKER, BIG])))
        old_pid = registry(daemon)["svc"]["pid"]
        ballast = fill(daemon.state_dir)
        replacement = health_spec("svc")
        replacement.port_count = 2
        err = await refused(
            stub.ProcessReplace(pm.ProcessReplaceRequest(spec=replacement, terminate_signal="SIGHUP"), timeout=30)
        )
        assert err.status == Status.RESOURCE_EXHAUSTED and (err.message or "").startswith(FULL)
        # The replacement is stopped; the old process was never signalled.
        await wait_children(daemon, {old_pid})
        got = await stub.ProcessGet(pm.ProcessGetRequest(name="svc"))
        assert (got.status.uuid, got.status.state) == (old.status.uuid, "running")
        ballast.unlink()
        await wait_health(daemon, HealthCheckResponse.SERVING)
        assert registry(daemon)["svc"]["uuid"] == old.status.uuid
        # The replacement's two ports were freed.
        both = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("both", port_count=2)))
        assert (both.status.port_start, both.status.port_end) == (22310, 22311)


# -- a read-only state dir -------------------------------------------------------------


async def test_read_only_state_dir_is_unavailable_until_writable_again(tmp_path: Path) -> None:
    async with daemon_on_tmpfs(tmp_path / "d") as daemon:
        stub = daemon.pm()
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("a")))
        a_pid = registry(daemon)["a"]["pid"]
        remount(daemon.state_dir, "ro")
        try:
            err = await refused(stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("b"))))
            assert err.status == Status.UNAVAILABLE
            assert (err.message or "").startswith(READ_ONLY), err.message
            await wait_children(daemon, {a_pid})
            assert await health(daemon) == HealthCheckResponse.NOT_SERVING
            err = await refused(stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("c"))))
            assert err.status == Status.UNAVAILABLE and (err.message or "").startswith(READ_ONLY)
            assert not (daemon.logs_dir / "c.log").exists()
            assert list((await stub.ProcessList(pm.ProcessListRequest())).processes) == ["a"]
        finally:
            remount(daemon.state_dir, "rw")
        await wait_health(daemon, HealthCheckResponse.SERVING)
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("b")))
        assert set(registry(daemon)) == {"a", "b"}
        assert events_logged(daemon, "state not writable; refusing changes until it is") == 1
        assert events_logged(daemon, "state writable again; accepting changes") == 1


async def test_a_daemon_started_on_a_read_only_state_dir_comes_up_degraded(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    daemon = make_daemon(tmp_path / "d")
    try:
        with tmpfs(daemon.state_dir, "64k"):
            remount(daemon.state_dir, "ro")
            await daemon.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}, serving=False)
            try:
                assert await health(daemon) == HealthCheckResponse.NOT_SERVING
                ready = listener.with_key("READY=1")
                assert ready and "STATUS=degraded, refusing changes: " + READ_ONLY in ready[0]
                err = await refused(daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("a"))))
                assert err.status == Status.UNAVAILABLE and (err.message or "").startswith(READ_ONLY)
                assert children_of(daemon.pid) == set()
                remount(daemon.state_dir, "rw")
                await wait_health(daemon, HealthCheckResponse.SERVING)
                await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("a")))
                assert set(registry(daemon)) == {"a"}
            finally:
                await daemon.stop()
    finally:
        listener.close()


# -- descriptors ---------------------------------------------------------------------


def limit_descriptors(daemon: RunningDaemon, headroom: int) -> int:
    limit = daemon.fd_count() + headroom
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (limit, limit))
    return limit


async def test_descriptor_limit_refuses_processes_but_keeps_serving(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(fd_reserve=8)
    stub = daemon.pm()
    await stub.ProcessList(pm.ProcessListRequest())  # the test's connection is open
    limit = limit_descriptors(daemon, 20)
    acked: list[str] = []
    failure: GRPCError | None = None
    for i in range(40):
        try:
            await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(f"c{i}")))
        except GRPCError as exc:
            failure = exc
            break
        acked.append(f"c{i}")
    assert failure is not None, "never reached the descriptor limit"
    assert failure.status == Status.RESOURCE_EXHAUSTED, failure.message
    assert (failure.message or "").startswith("file descriptors: "), failure.message
    assert "too many open files" in (failure.message or "")
    assert len(acked) >= 5
    # Everything acknowledged is durable and running; nothing else runs.
    durable = registry(daemon)
    assert sorted(durable) == sorted(acked)
    await wait_children(daemon, {e["pid"] for e in durable.values()})
    # The reserve was spent: new connections are accepted and answered.
    assert await health(daemon, "tcp") == HealthCheckResponse.SERVING
    assert await health(daemon, "unix") == HealthCheckResponse.SERVING
    fresh = daemon.pm("unix")
    assert len((await fresh.ProcessList(pm.ProcessListRequest())).processes) == len(acked)
    # Refused before spawning while short of descriptors.
    err = await refused(stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("more"))))
    assert err.status == Status.RESOURCE_EXHAUSTED
    assert (err.message or "").startswith(f"file descriptors: too many open files (limit {limit})")
    assert not (daemon.logs_dir / "more.log").exists()
    # Deletes still work (they keep nothing open), and free room for creates.
    for name in acked:
        await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name))
    for name in acked:
        await wait_gone(stub, name)
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("more")))
    assert set(registry(daemon)) == {"more"}
    assert events_logged(daemon, "file descriptor limit reached; reserve spent, refusing new processes") == 1
    assert events_logged(daemon, "file descriptors available again; accepting new processes") == 1


async def test_connections_filling_the_table_do_not_stop_state_writes(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(fd_reserve=8)
    stub = daemon.pm()
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("x", SH, ["-c", TICKER])))
    x_pid = registry(daemon)["x"]["pid"]
    limit = limit_descriptors(daemon, 12)
    flood: list[socket.socket] = []
    try:
        async with asyncio.timeout(20):
            while daemon.fd_count() < limit:
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", daemon.base_port))
                flood.append(sock)
                await asyncio.sleep(0.02)
        # The table is full; the state write meets EMFILE, spends the
        # reserve and goes through: the delete is acknowledged, and durable.
        reply = await stub.ProcessDelete(pm.ProcessDeleteRequest(name="x"))
        assert reply.deleted
        async with asyncio.timeout(10):
            while "x" in registry(daemon):
                await asyncio.sleep(0.05)
        assert not pid_alive(x_pid)
        assert events_logged(daemon, "file descriptor limit reached; reserve spent, refusing new processes") == 1
        assert events_logged(daemon, "state not writable; refusing changes until it is") == 0
    finally:
        for sock in flood:
            sock.close()
    # The listeners survived the flood, and creates resume.
    await wait_health(daemon, HealthCheckResponse.SERVING)
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("y")))
    assert set(registry(daemon)) == {"y"}


# -- processes -----------------------------------------------------------------------


@contextlib.contextmanager
def pids_cgroup() -> Iterator[Path]:
    """A fresh pids cgroup (v1 or v2), or the test skipped."""
    candidates = [Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")]
    for base in candidates:
        if (base / "pids.max").exists() or (base / "cgroup.controllers").exists() or base.name == "pids":
            group = base / f"imd-test-{uuidlib.uuid4().hex[:8]}"
            try:
                group.mkdir()
            except OSError as exc:
                pytest.skip(f"cannot create a pids cgroup under {base}: {exc}")
            if not (group / "pids.max").exists():
                group.rmdir()
                continue
            try:
                yield group
            finally:
                with contextlib.suppress(OSError):
                    group.rmdir()
            return
    pytest.skip("no pids cgroup controller here")


async def test_process_count_limit_is_resource_exhausted(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory()
    stub = daemon.pm()
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("first")))
    with pids_cgroup() as group:
        (group / "cgroup.procs").write_text(str(daemon.pid))
        try:
            current = int((group / "pids.current").read_text())
            (group / "pids.max").write_text(str(current + 3))
            acked = []
            failure: GRPCError | None = None
            for i in range(10):
                try:
                    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(f"p{i}", port_count=1)))
                except GRPCError as exc:
                    failure = exc
                    break
                acked.append(f"p{i}")
            assert failure is not None
            assert failure.status == Status.RESOURCE_EXHAUSTED, failure.message
            assert failure.message == f"processes: cannot start {SLEEP}: resource temporarily unavailable"
            assert f"p{len(acked)}" not in (await stub.ProcessList(pm.ProcessListRequest())).processes
            assert await health(daemon) == HealthCheckResponse.SERVING
            await stub.ProcessDelete(pm.ProcessDeleteRequest(name="p0"))
            await wait_gone(stub, "p0")
            again = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("again", port_count=1)))
            assert again.status.state == "starting"
        finally:
            await daemon.stop()  # stops the children, so the cgroup can go


# -- ports -----------------------------------------------------------------------------


async def test_port_range_of_two_ports(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(port_range="22320-22321")
    stub = daemon.pm()
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("a", port_count=2)))
    a_pid = registry(daemon)["a"]["pid"]
    err = await refused(stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("b", port_count=1))))
    assert err.status == Status.RESOURCE_EXHAUSTED
    assert err.message == "port range 22320-22321: no 1 contiguous free ports (2 of 2 in use)"
    assert children_of(daemon.pid) == {a_pid}
    assert not (daemon.logs_dir / "b.log").exists()
    assert list((await stub.ProcessList(pm.ProcessListRequest())).processes) == ["a"]
    assert await health(daemon) == HealthCheckResponse.SERVING  # out of ports is not degraded
    err = await refused(
        stub.ProcessReplace(pm.ProcessReplaceRequest(spec=spec("a", port_count=2), terminate_signal="SIGHUP"))
    )
    assert err.status == Status.RESOURCE_EXHAUSTED and (err.message or "").startswith("port range 22320-22321:")
    got = await wait_state(stub, "a", {"starting"})
    assert got.status.port_start == 22320
    await stub.ProcessDelete(pm.ProcessDeleteRequest(name="a"))
    await wait_gone(stub, "a")
    b = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("b", port_count=2)))
    assert (b.status.port_start, b.status.port_end) == (22320, 22321)
