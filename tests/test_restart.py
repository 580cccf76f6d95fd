"""Re-adoption after a daemon restart: children survive kill -9 and clean
restarts, keep their UUIDs, ports, states and logs, and pids that were
recycled are never touched."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.exceptions import GRPCError, StreamTerminatedError

from imd.api.gen.imrpc import imrpc_pb2 as pm
from tests.helpers import (
    BLOCKER,
    PY,
    SH,
    RunningDaemon,
    eventually,
    health_spec,
    pending_signals,
    pid_alive,
    registry_state,
    spec,
    wait_gone,
    wait_state,
    write_registry_state,
)

pytestmark = pytest.mark.asyncio

TICKER = "while :; do echo tick; sleep 0.2; done"
CHILDREN = 50
WITH_PORTS = 5  # health servers (Python) are heavy on 2 cores; the rest are shells


async def start_fleet(daemon: RunningDaemon) -> dict[str, pm.ProcessResponse]:
    stub = daemon.pm()
    for i in range(CHILDREN - WITH_PORTS):
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(f"t{i}", SH, ["-c", TICKER])))
    for i in range(WITH_PORTS):
        s = health_spec(f"h{i}")
        s.port_count = 2
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=s))
    for i in range(WITH_PORTS):
        await wait_state(stub, f"h{i}", {"running"}, timeout=60)
    listing = await stub.ProcessList(pm.ProcessListRequest())
    assert len(listing.processes) == CHILDREN
    assert all(p.status.state == "running" for p in listing.processes.values())
    return dict(listing.processes)


def pids_by_name(daemon: RunningDaemon) -> dict[str, int]:
    state = registry_state(daemon.state_dir)
    return {entry["name"]: entry["pid"] for entry in state["processes"]}


def kill_all(pids: dict[str, int], daemon: RunningDaemon) -> None:
    """Children left running by a leave-running daemon: those of the first
    run and any created after re-adoption (still in the state file)."""
    for pid in {*pids.values(), *pids_by_name(daemon).values()}:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def check_readopted(daemon: RunningDaemon, before: dict[str, pm.ProcessResponse]) -> None:
    stub = daemon.pm()
    after = (await stub.ProcessList(pm.ProcessListRequest())).processes
    assert set(after) == set(before)
    for name, old in before.items():
        new = after[name]
        assert new.status.uuid == old.status.uuid, name
        assert (new.status.port_start, new.status.port_end) == (old.status.port_start, old.status.port_end), name
        assert new.status.state == "running", (name, new.status.error_msg)
        assert list(new.spec.args) == list(old.spec.args)
    # Logs keep growing: the children write straight to their files.
    log = daemon.logs_dir / "t0.log"
    size = log.stat().st_size
    await eventually(lambda: log.stat().st_size > size, f"{log} grows")
    # New creates never get an adopted child's ports.
    fresh = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("fresh", port_count=3)))
    taken = {
        p for r in after.values() if r.status.port_start for p in range(r.status.port_start, r.status.port_end + 1)
    }
    assert not taken & set(range(fresh.status.port_start, fresh.status.port_end + 1))
    # Adopted children are deletable through the API, and their exit is seen.
    pid = pids_by_name(daemon)["t1"]
    reply = await stub.ProcessDelete(pm.ProcessDeleteRequest(name="t1", uuid=before["t1"].status.uuid))
    assert reply.deleted
    await wait_gone(stub, "t1")
    assert not pid_alive(pid)


async def test_kill_9_and_restart_readopts_all_children(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(stop_children_on_exit=False)
    before = await start_fleet(daemon)
    pids = pids_by_name(daemon)
    await daemon.stop(signal.SIGKILL)
    assert all(pid_alive(pid) for pid in pids.values())
    await daemon.start()
    try:
        await check_readopted(daemon, before)
        assert '"adopted":50' in daemon.stderr().replace(" ", "")
    finally:
        await daemon.stop()  # stop_children_on_exit=False: clean up by hand
        kill_all(pids, daemon)


async def test_clean_restart_in_leave_running_mode(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(stop_children_on_exit=False)
    before = await start_fleet(daemon)
    pids = pids_by_name(daemon)
    assert await daemon.stop(signal.SIGTERM) == 0
    assert all(pid_alive(pid) for pid in pids.values())
    await daemon.start()
    try:
        await check_readopted(daemon, before)
    finally:
        await daemon.stop()
        kill_all(pids, daemon)


async def test_children_that_died_or_whose_pid_was_recycled(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(stop_children_on_exit=False)
    stub = daemon.pm()
    for name in ("alive", "killed", "recycled"):
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(name, SH, ["-c", TICKER])))
    await daemon.stop(signal.SIGKILL)
    pids = pids_by_name(daemon)
    os.kill(pids["killed"], signal.SIGKILL)
    os.kill(pids["recycled"], signal.SIGKILL)
    # Point "recycled" at an unrelated live program, as if its pid had been
    # reused: same pid field, different process (start time differs). It
    # blocks the signals a delete sends, so any sent would stay pending.
    unrelated = subprocess.Popen([PY, BLOCKER], stdout=subprocess.PIPE)
    assert unrelated.stdout is not None
    assert (await asyncio.to_thread(unrelated.stdout.readline)).startswith(b"blocking")
    state = registry_state(daemon.state_dir)
    for entry in state["processes"]:
        if entry["name"] == "recycled":
            entry["pid"] = unrelated.pid
    write_registry_state(daemon.state_dir, state)
    try:
        await daemon.start()
        listing = (await daemon.pm().ProcessList(pm.ProcessListRequest())).processes
        assert listing["alive"].status.state == "running"
        for name in ("killed", "recycled"):
            assert listing[name].status.state == "error"
            assert listing[name].status.error_msg == "exited while the daemon was down"
        # Deleting the stale entry never signals the unrelated program.
        await daemon.pm().ProcessDelete(pm.ProcessDeleteRequest(name="recycled"))
        await wait_gone(daemon.pm(), "recycled")
        assert unrelated.poll() is None and pending_signals(unrelated.pid) == 0
        # An adopted child that exits later is reported stopped, status unknown.
        os.kill(pids["alive"], signal.SIGKILL)
        gone = await wait_state(daemon.pm(), "alive", {"stopped", "error"})
        assert gone.status.state == "stopped"
        assert "status unknown" in gone.status.error_msg
    finally:
        unrelated.kill()
        unrelated.wait()


async def test_corrupt_state_file_is_set_aside(daemon_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory()
    await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("x")))
    await daemon.stop(signal.SIGKILL)
    state_path = daemon.state_dir / "registry.json"
    state_path.write_bytes(b'{"version": 1, "processes": [{"name": 3')
    await daemon.start()
    listing = (await daemon.pm().ProcessList(pm.ProcessListRequest())).processes
    assert dict(listing) == {}
    aside = [p for p in daemon.state_dir.iterdir() if p.name.startswith("registry.json.bad-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b'{"version": 1')
    assert "state file set aside" in daemon.stderr()
    # And it serves: a create works and is persisted.
    await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("y")))
    assert "y" in pids_by_name(daemon)


async def test_changes_are_persisted_before_the_rpc_returns(daemon: RunningDaemon) -> None:
    stub = daemon.pm()
    created = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("p1", port_count=2)))
    state = registry_state(daemon.state_dir)
    (entry,) = state["processes"]
    assert (entry["name"], entry["uuid"], entry["state"]) == ("p1", created.status.uuid, created.status.state)
    assert entry["ports"] == {"start": created.status.port_start, "end": created.status.port_end}
    assert entry["start_time"] > 0
    await stub.ProcessDelete(pm.ProcessDeleteRequest(name="p1"))
    state = registry_state(daemon.state_dir)
    assert state["processes"][0]["delete_requested"] is True


async def test_watchers_reconnecting_after_restart_see_a_consistent_list(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(stop_children_on_exit=False)
    stub = daemon.pm()
    for i in range(3):
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(f"c{i}", SH, ["-c", TICKER])))
    pids = pids_by_name(daemon)
    async with stub.ProcessWatch.open() as stream:
        await stream.send_message(Empty(), end=True)
        await stream.recv_initial_metadata()
        await daemon.stop(signal.SIGKILL)
        # The old stream must fail, not end as if all was well.
        with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
            async with asyncio.timeout(5):
                while await stream.recv_message() is not None:
                    pass
                await stream.recv_trailing_metadata()
    try:
        await daemon.start()
        stub = daemon.pm()
        async with stub.ProcessWatch.open() as stream:
            await stream.send_message(Empty(), end=True)
            await stream.recv_initial_metadata()
            listing = (await stub.ProcessList(pm.ProcessListRequest())).processes
            assert sorted(listing) == ["c0", "c1", "c2"]
            await stub.ProcessDelete(pm.ProcessDeleteRequest(name="c0"))
            event = await stream.recv_message()
            assert event is not None
            assert (event.spec.name, event.status.uuid) == ("c0", listing["c0"].status.uuid)
            await stream.cancel()
    finally:
        await daemon.stop()
        for pid in pids.values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_replacement_in_flight_at_crash_is_stopped(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = await daemon_factory(stop_children_on_exit=False)
    stub = daemon.pm()
    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=health_spec("r")))
    old = await wait_state(stub, "r", {"running"})
    never = str(daemon.root / "never")
    pending = asyncio.ensure_future(
        stub.ProcessReplace(
            pm.ProcessReplaceRequest(spec=health_spec("r", "--wait-for", never), terminate_signal="SIGHUP")
        )
    )

    def roles_on_disk() -> dict[str, int]:
        return {e["role"]: e["pid"] for e in registry_state(daemon.state_dir)["processes"]}

    # The replacement is recorded (role "replacing") before the crash.
    await eventually(lambda: set(roles_on_disk()) == {"current", "replacing"}, "the replacement on disk")
    roles = roles_on_disk()
    await daemon.stop(signal.SIGKILL)
    with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
        await pending  # the connection died with the daemon
    try:
        await daemon.start()
        got = await daemon.pm().ProcessGet(pm.ProcessGetRequest(name="r"))
        assert got.status.uuid == old.status.uuid and got.status.state == "running"
        async with asyncio.timeout(10):
            while pid_alive(roles["replacing"]):
                await asyncio.sleep(0.1)
    finally:
        await daemon.stop()
        if pid_alive(roles["current"]):
            os.kill(roles["current"], signal.SIGKILL)


async def test_child_spawned_but_never_recorded_is_killed(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """A crash between spawn and the state write leaves a child no entry
    knows (its ports are not reserved). The next daemon finds it by its
    IMD_OWNER/IMD_PROCESS_UUID tags and kills it; other daemons' children and
    unrelated programs are untouched."""
    daemon = await daemon_factory(stop_children_on_exit=False)
    stub = daemon.pm()
    for name in ("kept", "unrecorded"):
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(name, SH, ["-c", TICKER])))
    await daemon.stop(signal.SIGKILL)
    pids = pids_by_name(daemon)
    state = registry_state(daemon.state_dir)
    state["processes"] = [e for e in state["processes"] if e["name"] != "unrecorded"]
    write_registry_state(daemon.state_dir, state)
    other_owner = subprocess.Popen(
        ["/bin/sleep", "1000"],
        env={**os.environ, "IMD_OWNER": "/some/other/daemon", "IMD_PROCESS_UUID": "x"},
    )
    try:
        await daemon.start()
        async with asyncio.timeout(5):
            while pid_alive(pids["unrecorded"]):
                await asyncio.sleep(0.05)
        assert pid_alive(pids["kept"])
        assert other_owner.poll() is None
        assert "untracked child killed" in daemon.stderr()
        listing = (await daemon.pm().ProcessList(pm.ProcessListRequest())).processes
        assert list(listing) == ["kept"]
    finally:
        other_owner.kill()
        other_owner.wait()
        await daemon.stop()
        if pid_alive(pids["kept"]):
            os.kill(pids["kept"], signal.SIGKILL)
