"""Snapshot operations racing each other and the rest of an engine's life
(issue 19, field report 4), over the fakes of tests/v2/test_snapshots.py:
several clients at once take, remove, purge, revert, hash and list
snapshots, write, expand, add and remove replicas, on two engines. Every
call must end (no hang) with success or one of the statuses README's table
documents; afterwards the replicas of each engine hold the same chain, no
record, intent, revert clone or snapshot export is left over, and an engine
delete in the middle of a hash answers and takes everything with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from imd.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from imd.services.instances import V2Request
from imd.v2.chains import REVERT_PREFIX
from imd.v2.copies import ancestry
from imd.v2.model import ReplicaMode
from tests.helpers import eventually
from tests.v2.test_snapshots import SIZE, V2, World, world

pytestmark = pytest.mark.asyncio

# What README's table says a racing call may answer, besides success.
DOCUMENTED = (Conflict, FailedPrecondition, NotFound, AlreadyExists, Unavailable, ResourceExhausted)
NAMES = [f"s{i}" for i in range(6)]
CALL_BOUND_S = 20.0  # a hang bound only: a call that takes longer is a hang


class Storm:
    def __init__(self, w: World, seed: int) -> None:
        self.w = w
        self.rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.log: list[str] = []
        self.replicas = {"e1": ["r1", "r2"], "e2": ["r3", "r4"]}
        self.made = 4
        self.sizes = {"e1": SIZE, "e2": SIZE}

    async def one(self) -> None:
        w, rng = self.w, self.rng
        engine = rng.choice(["e1", "e2"])
        name = rng.choice(NAMES)
        kind = rng.choice(
            [
                "create",
                "create",
                "remove",
                "purge",
                "revert",
                "hash",
                "list",
                "write",
                "expand",
                "add",
                "remove_replica",
            ]
        )
        calls: dict[str, Any] = {
            "create": lambda: w.engines.snapshot_create(engine, V2, name, {"by": "storm"}),
            "remove": lambda: w.engines.snapshot_remove(engine, V2, [name]),
            "purge": lambda: w.engines.snapshot_purge(engine, V2, rng.random() < 0.5),
            "revert": lambda: w.engines.snapshot_revert(engine, V2, name),
            "hash": lambda: self.hash(engine, name),
            "list": lambda: w.names(engine),
            "write": lambda: self.write(engine),
            "expand": lambda: self.expand(engine),
            "add": lambda: self.add(engine),
            "remove_replica": lambda: self.remove_replica(engine),
        }
        try:
            async with asyncio.timeout(CALL_BOUND_S):
                await calls[kind]()
        except InvalidArgument as exc:
            # Only one call may be refused so: a replica made at the volume's
            # size just before another client grew the volume.
            assert kind == "add" and "less than the volume's" in str(exc), exc
            self.outcomes[f"{kind}: {type(exc).__name__}"] += 1
        except DOCUMENTED as exc:
            self.outcomes[f"{kind}: {type(exc).__name__}"] += 1
            self.log.append(f"{engine} {kind} {name}: {exc}")
        else:
            self.outcomes[f"{kind}: ok"] += 1

    async def hash(self, engine: str, name: str) -> None:
        await self.w.engines.snapshot_hash(engine, V2, name, self.rng.random() < 0.3)
        await self.w.engines.snapshot_hash_status(engine, V2, name)

    async def write(self, engine: str) -> None:
        if self.w.v2.engines.engines[engine].record.spec.frontend:  # no host reaches one without
            self.w.write(engine)

    async def expand(self, engine: str) -> None:
        self.sizes[engine] += 1 << 20
        await self.w.engines.expand(engine, V2, self.sizes[engine])

    async def add(self, engine: str) -> None:
        self.made += 1
        replica = f"r{self.made}"
        size = self.w.v2.engines.engines[engine].record.size
        view = await self.w.instances.create_v2(V2Request(name=replica, type="replica", disk_name="d1", size=size))
        self.replicas[engine].append(replica)
        await self.w.engines.add_replica(
            engine, V2, replica, f"127.0.0.1:{view.port_start}", restore=False, linked=False
        )

    async def remove_replica(self, engine: str) -> None:
        modes = self.w.v2.engines.engines[engine].record.modes
        if not modes:
            raise AssertionError(f"engine {engine} has no replica left: {self.outcomes}")
        replica = self.rng.choice(sorted(modes))
        address = self.w.v2.engines.engines[engine].record.spec.replicas[replica][0]
        await self.w.engines.remove_replica(engine, V2, replica, address)

    async def client(self, calls: int) -> None:
        for _ in range(calls):
            await self.one()
            await asyncio.sleep(self.rng.random() * 0.005)  # a client's think time, not a wait for anything


async def finish_rebuilds(w: World) -> None:
    """Rebuilds end soon after they start, as a real copy would."""
    while True:
        for mirror in w.data.mirrors:
            rebuild = mirror._rebuild
            if rebuild is not None and not rebuild.done.done():
                mirror.finish_rebuild()
        await asyncio.sleep(0.01)


async def settled(w: World) -> None:
    async def idle() -> bool:
        return all(e.op is None for e in w.v2.engines.engines.values())

    async with asyncio.timeout(30):
        while not await idle():
            await asyncio.sleep(0.02)
        while not all(h.task.done() for h in w.v2.chains._hashes.values()):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_snapshot_operations_racing_everything_end_documented_and_leave_the_chains_agreeing(
    tmp_path: Path, seed: int
) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.engine("e2", ["r3", "r4"], frontend="")
    finisher = asyncio.ensure_future(finish_rebuilds(w))
    storm = Storm(w, seed)
    try:
        await asyncio.gather(*(storm.client(40) for _ in range(4)))
        await settled(w)
    finally:
        finisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await finisher
    ok = {k for k, n in storm.outcomes.items() if k.endswith(": ok")}
    # The storm did race: snapshots were taken and most kinds of call went through, and some were refused.
    assert {"create: ok", "list: ok", "write: ok"} <= ok and len(ok) >= 6, (dict(storm.outcomes), storm.log)
    assert any(not k.endswith(": ok") for k in storm.outcomes), storm.outcomes

    for name, engine in w.v2.engines.engines.items():
        assert engine.record.intent is None
        # Nothing is left write-only with nothing copying to it.
        assert ReplicaMode.WO not in engine.record.modes.values(), (engine.record.modes, engine.errors, storm.log)
        rw = sorted(r for r, m in engine.record.modes.items() if m == ReplicaMode.RW)
        assert rw, f"{name} lost every replica: {engine.record.modes} {engine.errors} {storm.outcomes}"
        chains = {r: [(s.name, s.parent) for s in ancestry(await w.v2.chains.chain(r))] for r in rw}
        assert len({tuple(c) for c in chains.values()}) == 1, chains
    lvols = set(w.spdk.devices[next(iter(w.spdk.devices))].lvols)
    assert not [n for n in lvols if n.startswith(REVERT_PREFIX)]
    for meta in w.v2.chains.meta.values():
        assert meta.lvol_name in lvols and not meta.creating, meta
    assert not [nqn for nqn in w.spdk.subsystems if "-snap-" in nqn]  # no snapshot left exported

    # A delete in the middle of a hash answers, and takes the hash with it.
    await w.engines.snapshot_create("e1", V2, "last", {})
    w.data.jobs.delay = None
    await w.engines.snapshot_hash("e1", V2, "last", True)
    await eventually(lambda: any(j.kind == "hash" and not j.done.done() for j in w.data.jobs.jobs))
    view = w.v2.engines.engines["e1"]
    async with asyncio.timeout(CALL_BOUND_S):
        await w.instances.delete_v2("e1", view.uuid, "engine", cleanup=False)
    await eventually(lambda: "e1" not in w.v2.engines.engines)
    assert not [j for j in w.data.jobs.jobs if not j.done.done()]
