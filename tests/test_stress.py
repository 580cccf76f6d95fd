"""Concurrent create/delete/replace on shared names, with the supervisor's
invariants checked throughout. The daemon runs in this process (on this
uvloop) so the test can look at its registry; clients still go through
real gRPC over TCP and the Unix socket, and children are real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path

import msgspec
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.config import Config
from imd.daemon import Daemon
from imd.errors import ImdError
from imd.supervisor.state import read_registry
from imd.supervisor.supervisor import Supervisor
from tests.helpers import HEALTH_SERVER, PY, SLEEP, children_of, free_base_port, pid_alive

EXPECTED = {Status.NOT_FOUND, Status.ALREADY_EXISTS, Status.ABORTED, Status.FAILED_PRECONDITION}


def check_invariants(sup: Supervisor) -> None:
    procs = sup.all_processes()
    # A process being spawned (in a spawn thread) holds its ports and may
    # already have a child whose pid the registry learns when the spawn
    # returns: at most one such child each.
    spawning = sup.spawning
    # Ports: unique across every process that holds some, and accounted for.
    holders = [*procs, *spawning]
    held = [p for proc in holders if proc.ports for p in range(proc.ports.start, proc.ports.end + 1)]
    assert len(held) == len(set(held)), "a port is held twice"
    assert sup.ports.in_use == len(held), "allocator and registry disagree"
    # No entry without a child: anything not yet exited has a live pid.
    for proc in procs:
        if proc.alive:
            assert proc.pid > 0 and os.path.exists(f"/proc/{proc.pid}")
    # No child without an entry: every live child of ours is known.
    known = {proc.pid for proc in procs if proc.alive}
    strays = {pid for pid in children_of(os.getpid()) if pid_alive(pid)} - known
    assert len(strays) <= len(spawning), f"children without an entry: {strays}"
    names = [proc.name for proc in sup._current.values()]
    assert len(names) == len(set(names))


def check_disk(sup: Supervisor) -> bool:
    """With nothing left to write, the disk (state file and journal) says
    exactly what the registry does: no change escaped the journal. False if
    there was something left to write (nothing checked)."""
    store = sup.store
    if store is None or store.pending or store.failing:
        return False
    on_disk = sorted(msgspec.json.encode(e) for e in read_registry(store.path.parent))
    in_memory = sorted(msgspec.json.encode(e) for e in sup.snapshot())
    assert on_disk == in_memory, "the state on disk and the registry disagree"
    return True


@pytest.mark.asyncio
async def test_concurrent_operations_keep_invariants(tmp_path: Path) -> None:
    base = free_base_port()
    config = Config(
        listen=f"127.0.0.1:{base}",
        socket=str(tmp_path / "imd.sock"),
        state_dir=str(tmp_path / "state"),
        logs_dir=str(tmp_path / "logs"),
        port_range="23000-23063",
        stop_grace_s=1.0,
        health_interval_s=0.05,
        health_timeout_s=10.0,
    )
    daemon = Daemon(config)
    await daemon.start()
    channels = [Channel("127.0.0.1", base), Channel(path=config.socket)]
    stubs = [imrpc_grpc.ProcessManagerServiceStub(ch) for ch in channels]
    names = [f"n{i}" for i in range(6)]
    rng = random.Random(1234)
    counts: dict[str, int] = {}
    # The storm lasts until every kind of change has succeeded a number of
    # times (most attempts on shared names are refused), not for a duration:
    # a loaded machine takes longer over the same storm instead of running a
    # smaller one. The deadline only bounds a hang.
    wanted = {"create": 20, "replace": 5, "delete": 5}
    storm_over = asyncio.Event()

    def enough() -> bool:
        return all(counts.get(op, 0) >= n for op, n in wanted.items())

    def process_spec(name: str) -> pm.ProcessSpec:
        if rng.random() < 0.15:
            return pm.ProcessSpec(
                name=name, binary=PY, args=[HEALTH_SERVER], port_count=2, port_args=["--listen,127.0.0.1:"]
            )
        return pm.ProcessSpec(name=name, binary=SLEEP, args=["1000"], port_count=rng.choice([0, 1, 3]))

    async def worker(stub: imrpc_grpc.ProcessManagerServiceStub) -> None:
        while not enough():
            name = rng.choice(names)
            op = rng.choice(["create", "create", "delete", "delete_uuid", "replace", "get"])
            try:
                if op == "create":
                    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=process_spec(name)))
                elif op == "delete":
                    await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name))
                elif op == "delete_uuid":
                    got = await stub.ProcessGet(pm.ProcessGetRequest(name=name))
                    await asyncio.sleep(rng.random() * 0.05)  # the UUID may go stale meanwhile
                    await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name, uuid=got.status.uuid))
                elif op == "replace":
                    request = pm.ProcessReplaceRequest(spec=process_spec(name), terminate_signal="SIGHUP")
                    await stub.ProcessReplace(request)
                else:
                    await stub.ProcessGet(pm.ProcessGetRequest(name=name))
                counts[op] = counts.get(op, 0) + 1
            except GRPCError as exc:
                if exc.status == Status.UNAVAILABLE and "did not start" in (exc.message or ""):
                    counts["replace_failed"] = counts.get("replace_failed", 0) + 1
                    continue
                assert exc.status in EXPECTED, (op, exc.status, exc.message)
                counts[exc.status.name] = counts.get(exc.status.name, 0) + 1

    async def checker() -> None:
        # Polled while the storm lasts (how often is not the point).
        while not storm_over.is_set():
            check_invariants(daemon.supervisor)
            await asyncio.sleep(0.1)

    async def disk_checker() -> None:
        # Whenever nothing is left to write, the disk must match; under the
        # storm that moment may be rare, so the final check below is the one
        # that is certain to run.
        while not storm_over.is_set():
            with contextlib.suppress(ImdError):
                await daemon.supervisor.durable()
            check_disk(daemon.supervisor)
            await asyncio.sleep(0.01)

    async def storm() -> None:
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*(worker(stubs[i % 2]) for i in range(8)))
        except TimeoutError:
            raise AssertionError(f"the storm did not reach {wanted} in 120 s: {counts}") from None
        finally:
            storm_over.set()

    try:
        await asyncio.gather(storm(), disk_checker(), checker())
        # Drain everything and check that nothing is left behind.
        for name in names:
            try:
                await stubs[0].ProcessDelete(pm.ProcessDeleteRequest(name=name))
            except GRPCError as exc:
                assert exc.status == Status.NOT_FOUND
        async with asyncio.timeout(15):
            while daemon.supervisor.all_processes():
                check_invariants(daemon.supervisor)
                await asyncio.sleep(0.05)
        assert daemon.supervisor.ports.in_use == 0
        # Nothing left to change: the disk says exactly what the registry does.
        await daemon.supervisor.durable()
        assert check_disk(daemon.supervisor)
        assert not {pid for pid in children_of(os.getpid()) if pid_alive(pid)}
    finally:
        for ch in channels:
            ch.close()
        await daemon.stop()
