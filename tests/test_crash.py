"""Crash consistency, the hard way: several clients storm a real daemon with
creates, deletes and replaces over real gRPC (Unix socket and TCP), and the
daemon is killed with SIGKILL at random instants, again and again, each
time restarted on the same state dir.

Each client owns its names and works on them one call at a time, so it
knows, for each name, what every acknowledged call left behind, plus at
most one call in flight when the daemon died, whose outcome is unknown.
After each kill and restart:

* the state file parses;
* every create or replace that was acknowledged is there with its UUID,
  unless an acknowledged delete removed it (such an entry is gone or still
  stopping); a call that was in flight either happened or did not, as a
  whole;
* no child of this daemon runs without an entry, and no entry that should
  have a live child points at a pid that is not that child;
* ports are unique across every entry.

The counts (acknowledged, found, killed as untracked, lost) are printed;
the assertions are on the invariants, never on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.supervisor.state import read_registry
from tests.helpers import RunningDaemon, make_daemon, pid_alive, spec

CRASHES = 50
CLIENTS = 4
NAMES_PER_CLIENT = 4
# Answers a live daemon may give in this storm; none changes anything.
NO_CHANGE = {Status.ALREADY_EXISTS, Status.FAILED_PRECONDITION, Status.ABORTED}


@dataclass
class Known:
    """What acknowledged calls left for one name: present with ``uuid``, or
    absent (``uuid`` is then the one last deleted, if any)."""

    present: bool
    uuid: str = ""


@dataclass
class InFlight:
    op: str  # create, delete or replace
    before: Known


@dataclass
class Tally:
    acknowledged: dict[str, int] = field(default_factory=lambda: {"create": 0, "replace": 0, "delete": 0})
    found: int = 0  # acknowledged entries found again after a restart
    deleted_gone: int = 0  # acknowledged deletes found done (or under way) after a restart
    in_flight_done: int = 0
    in_flight_not_done: int = 0
    lost: list[str] = field(default_factory=list)  # violations; must stay empty
    rounds: int = 0


class Storm:
    def __init__(self, daemon: RunningDaemon, seed: int) -> None:
        self.daemon = daemon
        self.rng = random.Random(seed)
        self.names = [[f"c{k}-{j}" for j in range(NAMES_PER_CLIENT)] for k in range(CLIENTS)]
        self.known = {name: Known(False) for names in self.names for name in names}
        self.in_flight: dict[str, InFlight] = {}
        self.tally = Tally()
        self.killed = False

    # -- one round: clients until the kill ---------------------------------------------

    async def round(self) -> None:
        self.killed = False
        stubs = [self.daemon.pm("unix" if k % 2 else "tcp") for k in range(CLIENTS)]
        clients = [asyncio.ensure_future(self.client(stubs[k], self.names[k])) for k in range(CLIENTS)]
        # The kill's random instant (the storm's point), not a wait for anything.
        await asyncio.sleep(self.rng.uniform(0.0, 0.4))
        self.killed = True
        os.kill(self.daemon.pid, signal.SIGKILL)
        await asyncio.gather(*clients)
        assert self.daemon.proc is not None
        self.daemon.proc.wait()
        self.daemon.close_channels()
        self.tally.rounds += 1

    async def client(self, stub: imrpc_grpc.ProcessManagerServiceStub, names: list[str]) -> None:
        rng = random.Random(self.rng.random())
        while not self.killed:
            name = rng.choice(names)
            before = self.known[name]
            op = rng.choice(["delete", "replace", "replace", "get"]) if before.present else "create"
            try:
                await self.call(stub, op, name, before, rng)
            except GRPCError as exc:
                if self.killed:
                    if op != "get":
                        self.in_flight[name] = InFlight(op, before)
                    return
                if exc.status == Status.NOT_FOUND and before.present:
                    self.tally.lost.append(f"{op} {name}: acknowledged {before.uuid} not found: {exc.message}")
                    continue
                assert exc.status in NO_CHANGE, (op, name, exc.status, exc.message)
            except Exception:
                if not self.killed:
                    raise
                if op != "get":
                    self.in_flight[name] = InFlight(op, before)
                return

    async def call(
        self, stub: imrpc_grpc.ProcessManagerServiceStub, op: str, name: str, before: Known, rng: random.Random
    ) -> None:
        if op == "create":
            s = spec(name, port_count=rng.choice([0, 0, 1, 3]))
            reply = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=s), timeout=30)
            self.known[name] = Known(True, reply.status.uuid)
        elif op == "delete":
            uuid = before.uuid if rng.random() < 0.5 else ""
            reply = await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name, uuid=uuid), timeout=30)
            assert reply.deleted and reply.status.uuid == before.uuid
            self.known[name] = Known(False, before.uuid)
        elif op == "replace":
            request = pm.ProcessReplaceRequest(spec=spec(name), terminate_signal="SIGHUP")
            reply = await stub.ProcessReplace(request, timeout=30)
            assert reply.status.uuid != before.uuid
            self.known[name] = Known(True, reply.status.uuid)
        else:
            reply = await stub.ProcessGet(pm.ProcessGetRequest(name=name), timeout=30)
            assert reply.status.uuid == before.uuid
            return
        self.tally.acknowledged[op] += 1

    # -- after the restart -----------------------------------------------------------

    async def check(self) -> None:
        listing = (await self.daemon.pm("unix").ProcessList(pm.ProcessListRequest(), timeout=30)).processes
        for name, known in self.known.items():
            entry = listing.get(name)
            uuid, state = (entry.status.uuid, entry.status.state) if entry is not None else ("", "")
            flight = self.in_flight.pop(name, None)
            if flight is None:
                self.expect(name, known, uuid, state)
            else:
                self.resolve(name, flight, uuid, state)
            # From now on the client knows what is there.
            self.known[name] = Known(True, uuid) if entry is not None and state != "stopping" else Known(False, uuid)
        await self.check_processes()

    def expect(self, name: str, known: Known, uuid: str, state: str) -> None:
        if known.present:
            if uuid == known.uuid:
                self.tally.found += 1
            else:
                self.tally.lost.append(f"{name}: acknowledged {known.uuid}, found {uuid or 'nothing'}")
        elif uuid and not (uuid == known.uuid and state == "stopping"):
            self.tally.lost.append(f"{name}: deleted {known.uuid or '(never created)'}, found {uuid} {state}")
        elif known.uuid:
            self.tally.deleted_gone += 1

    def resolve(self, name: str, flight: InFlight, uuid: str, state: str) -> None:
        """An interrupted call happened, or it did not: nothing in between."""
        before = flight.before.uuid
        if flight.op == "create":  # absent before (or a deleted ``before`` still stopping)
            allowed = uuid in ("", before) if state == "stopping" else uuid != before or uuid == ""
            done = uuid not in ("", before)
        elif flight.op == "delete":  # ``before`` was there
            allowed = uuid in ("", before)
            done = uuid == "" or state == "stopping"
        else:  # replace: ``before`` or its replacement, never nothing
            allowed = uuid != ""
            done = uuid != before
        if not allowed:
            self.tally.lost.append(
                f"{name}: interrupted {flight.op} of {before or '-'} left {uuid or 'nothing'} {state}"
            )
        elif done:
            self.tally.in_flight_done += 1
        else:
            self.tally.in_flight_not_done += 1

    async def check_processes(self) -> None:
        owner = str(self.daemon.state_dir.absolute())
        deadline = time.monotonic() + 15
        while True:
            entries = read_registry(self.daemon.state_dir)
            recorded = {e.uuid for e in entries}
            strays = {u: pids for u, pids in tagged(owner).items() if u not in recorded}
            if not strays:
                break
            # Untracked children were just sent SIGKILL; they go within moments.
            assert time.monotonic() < deadline, f"children of this daemon without an entry: {strays}"
            await asyncio.sleep(0.05)
        ports: list[int] = []
        for e in entries:
            if e.ports is not None:
                ports.extend(range(e.ports.start, e.ports.end + 1))
            if e.state.terminal:
                continue
            on_its_way_out = e.role != "current" or e.delete_requested or e.state == "stopping"
            if pid_alive(e.pid):
                tags = environ_tags(e.pid)
                assert tags == (owner, e.uuid), f"{e.name} {e.uuid} points at pid {e.pid} tagged {tags}"
            else:
                assert on_its_way_out, f"{e.name} {e.uuid}: pid {e.pid} is gone but the entry says {e.state}"
        assert len(ports) == len(set(ports)), f"a port is held twice: {sorted(ports)}"


def environ_tags(pid: int) -> tuple[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    except OSError:
        return None
    return env.get(b"IMD_OWNER", b"").decode(), env.get(b"IMD_PROCESS_UUID", b"").decode()


def tagged(owner: str) -> dict[str, list[int]]:
    """Live (not zombie) processes whose environment names ``owner``, by UUID."""
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_alive(int(entry)):
            tags = environ_tags(int(entry))
            if tags is not None and tags[0] == owner:
                found.setdefault(tags[1], []).append(int(entry))
    return found


def recovery_counts(daemon: RunningDaemon) -> dict[str, int]:
    totals: dict[str, int] = {}
    for line in daemon.stderr().splitlines():
        with contextlib.suppress(ValueError):
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == "serving":
                for key in ("adopted", "lost", "kept", "dropped", "untracked_killed"):
                    totals[key] = totals.get(key, 0) + int(event.get(key, 0))
    return totals


@pytest.mark.asyncio
async def test_kill_9_storm_never_loses_what_was_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_daemon(
        tmp_path / "d",
        port_range="24000-24199",
        health_interval_s=1.0,  # sleep never answers a health check; probe it rarely
        health_timeout_s=600.0,
        stop_grace_s=1.0,
    )
    storm = Storm(daemon, seed=int(os.environ.get("IMD_CRASH_SEED", "20261122")))
    started = time.monotonic()
    await daemon.start()
    try:
        for _ in range(CRASHES):
            await storm.round()
            # What the crash left must parse (recovery would set it aside otherwise).
            read_registry(daemon.state_dir)
            await daemon.start()
            await storm.check()
        assert "state file set aside" not in daemon.stderr()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            await daemon.stop()
        for pids in tagged(str(daemon.state_dir.absolute())).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    tally = storm.tally
    recovered = recovery_counts(daemon)
    with capsys.disabled():
        print(
            f"\ncrash storm: {tally.rounds} kill -9s in {time.monotonic() - started:.1f}s; "
            f"acknowledged {tally.acknowledged}; found {tally.found} acknowledged entries again, "
            f"{tally.deleted_gone} acknowledged deletes done; interrupted calls done {tally.in_flight_done}, "
            f"not done {tally.in_flight_not_done}; recovery adopted {recovered.get('adopted', 0)}, "
            f"killed as untracked {recovered.get('untracked_killed', 0)}, "
            f"reported lost {recovered.get('lost', 0)}; lost {len(tally.lost)}"
        )
    assert tally.rounds >= CRASHES
    assert tally.lost == []
    # Children were only killed or lost if nobody had been told they exist.
    assert recovered.get("lost", 0) == 0
    # The storm did real work on every side.
    assert min(tally.acknowledged.values()) >= CRASHES and tally.found >= CRASHES
    assert tally.in_flight_done + tally.in_flight_not_done >= CRASHES // 2
