"""Field report 4 on a real node: several clients create and delete engines
and replicas on shared names and shared replicas, expand, add and remove
replicas and delete by (sometimes stale) UUID, all at once, for a while.
No crash, no hang, no status but the documented ones; afterwards every
controller on the target belongs to a live engine, every export to a live
replica or engine, every lvol to a replica that was not deleted with
cleanup. Skipped, with the reason, without SPDK."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.v2.model import NQN_PREFIX, host_nqn_of, nqn_of
from tests.conftest import DaemonFactory
from tests.v2.spdk_env import engine_skip_reason, rpc
from tests.v2.test_v2_engine_spdk import MIB, V2, Node, started

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

DOCUMENTED = {
    Status.INVALID_ARGUMENT,  # a random size below the volume's, or a shared replica too small for it
    Status.ALREADY_EXISTS,  # a name taken, a replica already in the engine
    Status.NOT_FOUND,  # a name gone, a stale UUID
    Status.ABORTED,  # another long operation of that engine is in progress
    Status.FAILED_PRECONDITION,  # engine stopping, replica held by a live engine, last healthy replica
    Status.UNAVAILABLE,  # preempted by a delete; no replica attachable
}
# The storm runs until this many calls succeeded (most are refused: shared
# names), not for a duration: a loaded machine takes longer over the same
# storm instead of running a smaller one. The bound is only against a hang.
WANTED_OK = 40
BOUND_S = 300


def describe(call: Any) -> str:
    """The RPC a pending coroutine makes (grpclib's method objects carry its
    path and the request), or the coroutine's name."""
    frame = getattr(call, "cr_frame", None)
    local = frame.f_locals if frame is not None else {}
    method = getattr(local.get("self"), "name", None)
    if method is not None:
        request = str(local.get("message", "")).replace("\n", " ")
        return f"{method} {request}"
    args = {k: v for k, v in local.items() if k != "self" and isinstance(v, (str, int, list))}
    return f"{getattr(call, '__qualname__', call)} {args}"


SIZE = 16 * MIB


async def test_concurrent_v2_operations_keep_every_invariant(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    node = await started(daemon_factory, tmp_path)
    shared = [f"r{i}" for i in range(4)]
    for name in shared:
        await node.replica(name, SIZE)
    cleaned: set[str] = set()  # replicas deleted with cleanup (their lvol must be gone)
    ports_seen: set[int] = set()
    counts = {"ok": 0, "refused": 0}
    unexpected: list[str] = []

    async def attempt(call: Any) -> Any:
        what = describe(call)  # before the call runs: a cancelled coroutine forgets
        started = time.strftime("%H:%M:%S")
        try:
            result = await asyncio.wait_for(call, 60)
            counts["ok"] += 1
            return result
        except TimeoutError:
            unexpected.append(f"hang: {what}, started {started}")
            return None
        except GRPCError as exc:
            counts["refused"] += 1
            message = exc.message or ""
            if exc.status not in DOCUMENTED or (
                exc.status == Status.INVALID_ARGUMENT
                and "less than the volume's" not in message
                and "cannot shrink the volume" not in message
            ):
                unexpected.append(f"{exc.status.name}: {exc.message}")
            return None

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while counts["ok"] < WANTED_OK:
            action = rng.random()
            engine = f"e{rng.randrange(3)}"
            if action < 0.3:
                made = await attempt(node.engine(engine, rng.sample(shared, rng.randint(1, 2)), size=SIZE))
                if made is not None:
                    ports_seen.add(made.status.port_start)
            elif action < 0.5:
                uuid = ""
                if rng.random() < 0.5:
                    got = await attempt(node.stub.InstanceGet(inst.InstanceGetRequest(name=engine, data_engine=V2)))
                    uuid = got.status.uuid if got is not None else ""
                    uuid = uuid if rng.random() < 0.7 else "stale-" + uuid
                request = inst.InstanceDeleteRequest(name=engine, uuid=uuid, data_engine=V2)
                await attempt(node.stub.InstanceDelete(request))
            elif action < 0.6:
                size = SIZE * rng.choice((2, 3))
                expand = ppb.EngineVolumeExpandRequest(
                    proxy_engine_request=node.target(engine), expand=ctl.VolumeExpandRequest(size=size)
                )
                await attempt(node.proxy.VolumeExpand(expand))
            elif action < 0.75:
                replica = rng.choice(shared)
                add = ppb.EngineReplicaAddRequest(
                    proxy_engine_request=node.target(engine),
                    replica_name=replica,
                    replica_address=f"127.0.0.1:{node.ports[replica]}",
                )
                await attempt(node.proxy.ReplicaAdd(add))
            elif action < 0.85:
                remove = ppb.EngineReplicaRemoveRequest(
                    proxy_engine_request=node.target(engine), replica_name=rng.choice(shared)
                )
                await attempt(node.proxy.ReplicaRemove(remove))
            else:
                # Churn on replicas nobody shares: create, then delete with or
                # without cleanup.
                name = f"x{rng.randrange(3)}"
                if await attempt(node.replica(name, SIZE)) is not None and rng.random() < 0.8:
                    cleanup = rng.random() < 0.5
                    done = await attempt(
                        node.stub.InstanceDelete(
                            inst.InstanceDeleteRequest(name=name, cleanup_required=cleanup, data_engine=V2)
                        )
                    )
                    if done is not None and cleanup:
                        cleaned.add(name)
                    elif done is not None:
                        cleaned.discard(name)
            await asyncio.sleep(rng.random() * 0.05)  # a client's think time: jitter, not a wait for anything

    await asyncio.wait_for(asyncio.gather(*(client(seed) for seed in range(4))), BOUND_S)
    assert unexpected == []
    await _settle(node)
    listing = (await node.stub.InstanceList(Empty())).instances
    engines = {name: r for name, r in listing.items() if r.spec.type == "engine"}
    replicas = {name for name, r in listing.items() if r.spec.type == "replica"}
    live_hosts = {host_nqn_of(r.status.uuid) for r in engines.values()}
    target = rpc(node.config)
    # Every export on the target is a live replica's, and every replica is exported.
    exports = {s["nqn"] for s in target.call("nvmf_get_subsystems") if s["nqn"].startswith(NQN_PREFIX)}
    states = {name: (listing[name].status.state, listing[name].status.error_msg) for name in replicas}
    assert exports == {nqn_of(name) for name in replicas}, states
    # Every controller on the replicas' target belongs to a live engine.
    for name in replicas:
        for controller in target.call("nvmf_subsystem_get_controllers", nqn=nqn_of(name)):
            assert controller["hostnqn"] in live_hosts, (name, controller["hostnqn"])
    # Every lvol belongs to a replica that was not deleted with cleanup.
    lvols = await node.daemon.disks().DiskReplicaInstanceList(
        dpb.DiskReplicaInstanceListRequest(disk_type=dpb.block, disk_name="d1")
    )
    assert not set(lvols.replica_instances) & (cleaned - replicas)
    # An engine's export lives only while the engine does.
    live_ports = {r.status.port_start for r in engines.values()}
    for port in ports_seen - live_ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still exported"
    print(f"stress: {counts}, engines left {sorted(engines)}")


async def _settle(node: Node) -> None:
    """Wait until no instance is still stopping (teardowns finish in the
    background after a delete answered)."""
    async with asyncio.timeout(60):
        while True:
            listing = (await node.stub.InstanceList(Empty())).instances
            if all(r.status.state != "stopping" for r in listing.values()):
                return
            await asyncio.sleep(0.2)
