"""A daemon killed (kill -9, a real child process) in the middle of a
snapshot hash, a clone and a revert, against a real target that outlives
it, and started again (issue 19). After the restart nothing of the
interrupted operation is left behind: no snapshot export on the target, no
revert clone (``rv-``) without an intent, replicas that agree on their
chain; the operation asked again completes, and the volume reads back what
the host wrote. Skipped, with the reason, without SPDK and spdk_ffi's
native core.

The kill instant: for the hash (rate-capped, so that it runs for seconds)
once every replica reports it in progress; for the clone once it has
answered (it answers once started, its intent on disk); for the revert once
its intent is on disk (``v2.json``, polled). Each then waits a random few
milliseconds, so that runs hit different points of the operation; the
restart's own report (the clone's status, the revert's log line, the hash's
missing checksum) shows the operation was indeed cut short.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.exceptions import GRPCError, StreamTerminatedError

from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.v2 import state as v2state
from imd.v2.chains import REVERT_PREFIX
from tests.conftest import DaemonFactory
from tests.v2.spdk_env import engine_skip_reason, rpc, target_pid
from tests.v2.test_v2_engine_spdk import SIZE, Node, host, path, started, wait_for
from tests.v2.test_v2_snapshots_spdk import V2, Volume, gone, hashes, listing, req, snapshot, write

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

HASH_RATE_MIB_S = 8  # a 32 MiB snapshot hashes for about 4 s: the kill lands part way
LBAS = [0, 100, 2000, 7000]


async def kill_and_restart(node: Node, engines: list[str]) -> None:
    """kill -9, start again, and wait until the engines have resynced their
    replicas (a restart rebuilds a replica the engine may have written to
    alone while dying)."""
    await node.daemon.stop(signal.SIGKILL)
    await node.daemon.start()

    async def resynced() -> bool:
        for engine in engines:
            modes = await node.modes(engine)
            if "ERR" in modes.values():
                got = await node.stub.InstanceGet(inst.InstanceGetRequest(name=engine, data_engine=V2))
                raise AssertionError(f"{engine}: {modes}: {got.status.error_msg}")
            if set(modes.values()) != {"RW"}:
                return False
        return True

    await wait_for(resynced, 120)


def intent_on_disk(node: Node, engine: str) -> str:
    """The kind of the engine's snapshot intent in the daemon's durable
    state ("" without one): what a restart would find."""
    try:
        data = (node.daemon.state_dir / v2state.V2_STATE_FILE).read_bytes()
    except FileNotFoundError:
        return ""
    for record in v2state.decode(data).engines:
        if record.name == engine and record.intent is not None:
            return record.intent.kind
    return ""


async def check_invariants(node: Node, engines: list[str]) -> None:
    """What must hold after any restart: no snapshot export left on the
    target, no revert clone without its intent, replicas agreeing on every
    engine's chain."""
    subsystems = rpc(node.config).call("nvmf_get_subsystems")
    assert [s["nqn"] for s in subsystems if "-snap-" in s["nqn"]] == []
    data = (node.daemon.state_dir / v2state.V2_STATE_FILE).read_bytes()
    reverting = {r.reverting_to for r in v2state.decode(data).replicas if r.reverting_to}
    revert_clones = {
        lvol["name"] for lvol in rpc(node.config).call("bdev_lvol_get_lvols") if lvol["name"].startswith(REVERT_PREFIX)
    }
    assert revert_clones <= reverting, (revert_clones, reverting)
    for engine in engines:
        disks = await listing(node, engine)
        disagreeing = {n: dict(d.labels) for n, d in disks.items() if "imd/missing-on" in d.labels}
        assert disagreeing == {}, disagreeing


async def chain_of(node: Node, engine: str) -> dict[str, tuple[str, list[str]]]:
    return {n: (d.parent, sorted(d.children)) for n, d in (await listing(node, engine)).items()}


async def volume_with_snapshot(node: Node) -> tuple[Volume, str]:
    """e1 on r1 and r2; the host writes, s1 is taken, the host writes again.
    The SHA-256 of s1's content."""
    await node.replica("r1")
    await node.replica("r2")
    e1 = await node.engine("e1", ["r1", "r2"])
    volume = Volume()
    await write(node, e1.status.port_start, "e1", volume, 1, LBAS)
    at_s1 = volume.sha256()
    assert await snapshot(node, "e1", "s1") == "s1"
    await write(node, e1.status.port_start, "e1", volume, 2, LBAS[1:3])
    return volume, at_s1


@pytest_asyncio.fixture
async def node(daemon_factory: DaemonFactory, tmp_path: Path) -> Any:
    """A daemon whose target outlives it (so that a kill -9 leaves the
    target's state behind for the restart to face); the target is killed at
    the end, whatever fails."""
    made = await started(
        daemon_factory, tmp_path, v2={"snapshot_hash_rate_mib_s": HASH_RATE_MIB_S}, stop_children_on_exit=False
    )
    try:
        yield made
    finally:
        await made.daemon.stop()
        pid = target_pid(made.config)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


async def test_a_kill_during_a_snapshot_hash_leaves_nothing_and_the_hash_runs_again(node: Node) -> None:
    _, at_s1 = await volume_with_snapshot(node)
    before = await chain_of(node, "e1")
    await node.proxy.SnapshotHash(ppb.EngineSnapshotHashRequest(proxy_engine_request=req("e1"), snapshot_name="s1"))
    status_req = ppb.EngineSnapshotHashStatusRequest(proxy_engine_request=req("e1"), snapshot_name="s1")

    async def hashing() -> bool:
        status = (await node.proxy.SnapshotHashStatus(status_req)).status
        assert all(s.state != "complete" for s in status.values()), status  # the cap keeps it running
        return len(status) == 2 and all(s.state == "in_progress" for s in status.values())

    await wait_for(hashing, 30)
    await asyncio.sleep(random.uniform(0, 0.5))  # not a wait: a random kill instant within the hash
    await kill_and_restart(node, ["e1"])

    status = (await node.proxy.SnapshotHashStatus(status_req)).status
    assert {s.state for s in status.values()} == {""} and all(not s.checksum for s in status.values()), status
    await check_invariants(node, ["e1"])
    assert await chain_of(node, "e1") == before
    assert set((await hashes(node, "e1", "s1")).values()) == {at_s1}  # asked again, it completes, right
    e1 = await node.stub.InstanceGet(inst.InstanceGetRequest(name="e1", data_engine=V2))
    check = await host(cmd="verify", path=path(e1.status.port_start, "e1"), seed=2, lbas=LBAS[1:3], nblocks=4)
    assert check["mismatches"] == 0
    check = await host(cmd="verify", path=path(e1.status.port_start, "e1"), seed=1, lbas=[LBAS[0], LBAS[3]], nblocks=4)
    assert check["mismatches"] == 0


async def test_a_kill_during_a_clone_leaves_nothing_and_the_clone_runs_again(node: Node) -> None:
    _, at_s1 = await volume_with_snapshot(node)
    await node.replica("c1")
    await node.replica("c2")
    e2 = await node.engine("e2", ["c1", "c2"])
    clone = ppb.EngineSnapshotCloneRequest(
        proxy_engine_request=req("e2"),
        snapshot_name="s1",
        from_engine_name="e1",
        from_engine_address=f"127.0.0.1:{node.daemon.base_port}",
    )
    await node.proxy.SnapshotClone(clone)
    await asyncio.sleep(random.uniform(0, 0.02))  # not a wait: a random kill instant within the copy
    await kill_and_restart(node, ["e1"])

    status = (await node.proxy.SnapshotCloneStatus(req("e2"))).status
    assert len(status) == 2 and all(
        s.state == "error" and "restarted during the clone" in s.error for s in status.values()
    ), status  # the restart found the clone's intent: the kill came part way
    await check_invariants(node, ["e1", "e2"])

    await node.proxy.SnapshotClone(clone)

    async def cloned() -> bool:
        status = (await node.proxy.SnapshotCloneStatus(req("e2"))).status
        assert all(s.state != "error" for s in status.values()), status
        return len(status) == 2 and all(s.state == "complete" and s.progress == 100 for s in status.values())

    await wait_for(cloned, 120)
    await check_invariants(node, ["e1", "e2"])
    # e2 holds s1's content, on both replicas: a snapshot of it hashes as s1 does.
    assert await snapshot(node, "e2", "t1") == "t1"
    assert set((await hashes(node, "e2", "t1")).values()) == {at_s1}
    check = await host(cmd="verify", path=path(e2.status.port_start, "e2"), seed=1, lbas=LBAS, nblocks=4)
    assert check["mismatches"] == 0


async def test_a_kill_during_a_revert_finishes_it_at_restart(node: Node) -> None:
    _, at_s1 = await volume_with_snapshot(node)
    assert await snapshot(node, "e1", "s2") == "s2"
    await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", data_engine=V2))
    await gone(node, "e1")
    await node.engine("e3", ["r1", "r2"], size=SIZE, frontend="")
    revert = asyncio.ensure_future(
        node.proxy.SnapshotRevert(ppb.EngineSnapshotRevertRequest(proxy_engine_request=req("e3"), name="s1"))
    )

    async def intent_durable() -> bool:
        assert not revert.done() or revert.exception() is None
        return intent_on_disk(node, "e3") == "revert"

    async with asyncio.timeout(30):
        while not await intent_durable():
            await asyncio.sleep(0.002)
    await asyncio.sleep(random.uniform(0, 0.02))  # not a wait: a random kill instant within the revert
    await kill_and_restart(node, ["e3"])
    with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):  # the daemon died under the call
        await revert
    assert "revert finished after a restart" in node.daemon.stderr()  # the kill came part way

    assert intent_on_disk(node, "e3") == ""
    await check_invariants(node, ["e3"])
    reverted = await listing(node, "e3")
    assert reverted["volume-head"].parent == "s1"
    assert sorted(reverted["s1"].children) == ["s2", "volume-head"]  # later snapshots stay
    assert set((await hashes(node, "e3", "s1")).values()) == {at_s1}
    await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e3", data_engine=V2))
    await gone(node, "e3")
    e4 = await node.engine("e4", ["r1", "r2"])
    check = await host(cmd="verify", path=path(e4.status.port_start, "e4"), seed=1, lbas=LBAS, nblocks=4)
    assert check["mismatches"] == 0  # the volume reads s1's data again
    assert set((await node.modes("e4")).values()) == {"RW"}
