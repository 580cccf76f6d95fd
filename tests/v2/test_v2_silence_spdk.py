"""Issue 25 through real daemons: a replica whose node goes silent leaves the
engine's mirror within the replica timeout, and the host writing through the
engine sees no error.

Two V2 nodes on loopback, each a daemon with its own SPDK target: node A
holds replica r1 and engine e1, node B holds replica r2. A host in a
separate process writes and verifies through e1's export. Then node B's
target is stopped with SIGSTOP: its TCP connections stay open and answer
nothing, as after a power loss, a kernel hang or a pulled cable (no RST, no
ICMP). Outcomes are asserted, not durations: r2 goes ERR while node B is
still silent, the host sees 0 errors and 0 mismatches, r1 holds what the
host wrote, the engine says why, and a delete of the engine while node B is
still silent finishes its teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import instance_pb2 as inst
from tests.conftest import DaemonFactory
from tests.helpers import free_port_block
from tests.test_observability import imd, samples, scrape, value
from tests.v2.spdk_env import engine_skip_reason, target_pid
from tests.v2.test_v2_engine_spdk import Node, host, path, started, wait_for

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

V2 = common.DATA_ENGINE_V2


async def engine_writes(node: Node, engine: str) -> float:
    return value(samples((await scrape(node.daemon))[1]), "imd_engine_writes_total", engine=engine)


async def test_a_silent_replica_node_leaves_the_mirror_and_the_host_sees_no_error(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    a = await started(daemon_factory, tmp_path / "a", v2={"replica_timeout_s": 3.0})
    first = free_port_block(64)
    b = await started(daemon_factory, tmp_path / "b", port_range=f"{first}-{first + 63}")
    await a.replica("r1")
    r2_port = await b.replica("r2")
    a.ports["r2"] = r2_port  # the engine on A reaches r2 on B's target
    e1 = await a.engine("e1", ["r1", "r2"])
    loop = asyncio.ensure_future(
        host(cmd="loop", path=path(e1.status.port_start, "e1"), seed=25, seconds=14, qd=2, span=4096)
    )
    b_target = target_pid(b.config)
    assert b_target is not None
    try:

        async def writing() -> bool:
            return await engine_writes(a, "e1") > 0

        await wait_for(writing, 30)
        os.kill(b_target, signal.SIGSTOP)

        async def r2_failed() -> bool:
            return (await a.modes("e1"))["r2"] == "ERR"

        await wait_for(r2_failed, 60)  # while node B is silent
        report = await loop
        assert (report["errors"], report["mismatches"]) == (0, 0), report["first_error"]
        assert report["writes"] > 0
        print(f"silent replica node: the host's longest pause {report['longest_gap_s']} s (replica timeout 3 s)")
        survivor = await host(cmd="check", path=path(a.ports["r1"], "r1"), written=report["written"])
        assert survivor["mismatches"] == 0

        shown = await asyncio.to_thread(imd, "--socket", str(a.daemon.socket), "--json", "status")
        assert shown.returncode == 0, shown.stderr
        (engine,) = json.loads(shown.stdout)["engines"]
        errors = {r["name"]: r["error"] for r in engine["replicas"]}
        assert "silent for" in errors["r2"] and errors["r1"] == "", errors
        scraped = samples((await scrape(a.daemon))[1])
        assert value(scraped, "imd_engine_replica_silence_seconds_count") == 1
        assert value(scraped, "imd_engine_replicas", engine="e1", mode="RW") == 1

        # A delete while node B is still silent: answered at once, and the
        # teardown (detaching r2's controller) is not held up by it.
        await a.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", data_engine=V2))

        async def gone() -> bool:
            return "e1" not in (await a.stub.InstanceList(Empty())).instances

        await wait_for(gone, 60)
        assert os.stat(f"/proc/{b_target}").st_ino  # node B's target was stopped throughout (still exists)
        assert _state(b_target) == "T"
    finally:
        os.kill(b_target, signal.SIGCONT)
        if not loop.done():
            loop.cancel()


def _state(pid: int) -> str:
    """The process state letter from /proc/PID/stat ("T": stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def test_a_silent_host_is_dropped_by_the_engine_s_frontend(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The other direction: a host that goes silent (SIGSTOP: its connection
    stays open, its keep-alives stop) does not hold the engine's frontend
    forever. The embedded target drops it once its keep-alive timeout (the
    host's own KATO, 2 s here) passes without one."""
    import sys

    from tests.v2.test_v2_engine_spdk import ROOT

    node = await started(daemon_factory, tmp_path)
    await node.replica("r1")
    e1 = await node.engine("e1", ["r1"])
    spec = {
        "cmd": "loop",
        "path": path(e1.status.port_start, "e1"),
        "seed": 7,
        "seconds": 600,
        "qd": 1,
        "span": 256,
        "opts": {"keep_alive_timeout_ms": 2000},
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.v2.host", json.dumps(spec), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
    )

    async def hosts() -> float:
        return value(samples((await scrape(node.daemon))[1]), "imd_engine_frontend_hosts", engine="e1")

    async def connected() -> bool:
        return await hosts() == 1

    async def dropped() -> bool:
        return await hosts() == 0

    try:
        await wait_for(connected, 60)
        proc.send_signal(signal.SIGSTOP)
        await wait_for(dropped, 60)
        assert _state(proc.pid) == "T"  # dropped while the host was still silent
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await proc.wait()
