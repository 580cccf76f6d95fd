"""V2 snapshots over the fakes (issue 19): one fake node whose real
``Chains`` keep its replicas' chains on the fake SPDK target (snapshot,
clone, delete and rename with SPDK v24.01's rules), engines whose mirror is
the in-memory one, and jobs that move content tokens instead of bytes
(tests/v2/fakes.py ``link``): a "host write" gives every RW replica's head
the same new token, a hash is the SHA-256 of the token, a copy makes the
destination read as the source. What this checks is the orchestration:
quiesce, all or none, the chain carried by a rebuild, a snapshot during a
rebuild, revert, remove and purge, hash caching, limits, restart, clone,
and what preempts what. The bytes are checked against a real target in
tests/v2/test_v2_snapshots_spdk.py.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from imd.edges.spdk_target import TargetRpcError
from imd.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from imd.services.engines import EngineService
from imd.services.instances import InstanceService, V2Request
from imd.services.processes import Lifecycle, ProcessService
from imd.v2 import state as v2state
from imd.v2.chains import LocalReplicaNodes, lvol_name_of, revert_lvol_of
from imd.v2.copies import ancestry
from imd.v2.model import VOLUME_HEAD, ReplicaMode, SnapshotIntent
from tests.helpers import eventually
from tests.v2.fake_spdk import FakeSpdk, bury_the_dead
from tests.v2.fakes import link, node, progress


@pytest_asyncio.fixture(autouse=True)
async def _no_dead_daemon_left() -> Any:
    """A test that killed a daemon ends its parked tasks before its loop closes."""
    yield
    await bury_the_dead()


pytestmark = pytest.mark.asyncio

SIZE = 64 << 20
V2 = 1  # DATA_ENGINE_V2 (imrpc.DataEngine)


class World:
    """A started fake node with disk d1, its services, and helpers."""

    def __init__(self, tmp_path: Path, spdk: FakeSpdk | None = None, run: int = 0) -> None:
        self.tmp_path = tmp_path
        self.run = run
        self.v2, self.keeper, self.data, self.store = node(tmp_path / f"run{run}", spdk)
        self.spdk = self.keeper.spdk
        link(self.data, self.spdk)
        self.data.expander.nodes = LocalReplicaNodes({"127.0.0.1": self.v2.chains}, {"127.0.0.1": self.v2.engines})
        self.v2.chains._allocation = self.allocation
        self.instances = InstanceService(ProcessService(self.v2.supervisor, Lifecycle()), self.v2, "")
        self.engines = EngineService(self.instances)
        self.durable_at_crash = 0
        self.report: dict[str, int] = {}
        self.unanswered: list[asyncio.Future[Any]] = []
        self.keeper.fake_client.on_crash.append(self._crashed)

    def _crashed(self) -> None:
        self.durable_at_crash = len(self.store.snapshots)

    async def start(self) -> World:
        await self.v2.start(self.v2.load())
        path = self.tmp_path / "disk.img"
        with path.open("wb") as f:
            f.truncate(1 << 30)
        await self.v2.disks.create("d1", "", str(path), 4096)
        return self

    async def resynced(self, engine: str) -> None:
        """The resync a restart after a crash starts (one replica copied
        from another) done, every replica RW again."""
        record = self.v2.engines.engines[engine].record
        mirror = self.mirror(engine)
        async with asyncio.timeout(10):
            while ReplicaMode.WO in record.modes.values():
                if mirror._rebuild is not None and not mirror._rebuild.done.done():
                    mirror.finish_rebuild()
                await asyncio.sleep(0.01)

    async def dies_during(self, call: Coroutine[Any, Any, Any]) -> None:
        """Start ``call`` and return once the daemon died in it (``crash_at``);
        the call never answers."""
        task = asyncio.ensure_future(call)
        self.unanswered.append(task)
        await asyncio.wait(
            {task, asyncio.ensure_future(self.keeper.fake_client.crashed.wait())},
            timeout=10,
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert not task.done(), f"the call ended before the daemon died: {task}"
        assert self.keeper.fake_client.dead

    def crash_at(self, method: str, after: int = 0) -> None:
        """imd dies when it sends its ``after + 1``-th ``method`` from now."""
        self.keeper.fake_client.crash_at(method, after)

    async def restarted(self) -> World:
        """imd after a kill -9: a new daemon from what the dead one had made
        durable, over the same target (which outlived it)."""
        client = self.keeper.fake_client
        if not client.dead:
            client.crash()
        persisted = v2state.decode(self.store.snapshots[self.durable_at_crash - 1])
        again = World(self.tmp_path, self.spdk, self.run + 1)
        again.keeper.fresh = False
        again.data.expander.serving = False  # the daemon serves gRPC only once started
        again.report = await again.v2.start(persisted)
        again.data.expander.serving = True
        return again

    async def replica(self, name: str) -> str:
        view = await self.instances.create_v2(V2Request(name=name, type="replica", disk_name="d1", size=SIZE))
        return f"127.0.0.1:{view.port_start}"

    async def engine(self, name: str, replicas: list[str], frontend: str = "spdk-tcp-nvmf") -> None:
        addresses = {r: await self.replica(r) for r in replicas}
        await self.instances.create_v2(
            V2Request(
                name=name, type="engine", volume_name="vol", size=SIZE, replica_address_map=addresses, frontend=frontend
            )
        )

    async def allocation(self, disk_path: str) -> dict[str, int]:
        """The fake target's allocation, as imd reads the real one from the device."""
        return self.spdk.allocated_bytes(disk_path)

    def write(self, engine: str) -> str:
        """A host write through ``engine``: every RW replica's head reads the same new data."""
        token = f"data-{len(self.spdk.calls)}"
        for replica, mode in self.v2.engines.engines[engine].record.modes.items():
            if mode == ReplicaMode.RW:
                self.spdk.write(f"d1/{replica}", 1, token)
        return token

    def lvol(self, name: str) -> Any:
        return self.spdk.devices[next(iter(self.spdk.devices))].lvols[name]

    def snapshot_lvol(self, replica: str, snapshot: str) -> Any:
        return self.lvol(lvol_name_of(replica, snapshot))

    def mirror(self, engine: str) -> Any:
        return self.v2.engines.engines[engine].mirror

    async def names(self, engine: str) -> dict[str, Any]:
        return await self.engines.snapshot_list(engine, V2)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def world(tmp_path: Path) -> World:
    return await World(tmp_path).start()


# -- take and list ---------------------------------------------------------------------


async def test_a_snapshot_is_taken_on_every_replica_while_writes_are_held(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    a = w.write("e1")
    calls_before = list(w.mirror("e1").calls)
    assert await w.engines.snapshot_create("e1", V2, "s1", {"app": "db"}) == "s1"
    assert w.mirror("e1").calls[len(calls_before) :] == ["quiesce", "resume"]
    for replica in ("r1", "r2"):
        lvol = w.snapshot_lvol(replica, "s1")
        assert lvol.snapshot and lvol.content == a
        assert w.lvol(replica).parent == lvol.name  # the head is its clone now
    w.write("e1")
    generated = await w.engines.snapshot_create("e1", V2, "", {})
    assert re.match(r"^[0-9a-f-]{36}$", generated)
    listing = await w.names("e1")
    assert set(listing) == {"s1", generated, VOLUME_HEAD}
    assert (listing["s1"].parent, listing["s1"].children) == ("", (generated,))
    assert (listing[generated].parent, listing[generated].children) == ("s1", (VOLUME_HEAD,))
    assert listing[VOLUME_HEAD].parent == generated and not listing[VOLUME_HEAD].user_created
    assert listing["s1"].labels == {"app": "db"} and listing["s1"].user_created
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", listing["s1"].created)
    assert (listing["s1"].size, listing[generated].size, listing[VOLUME_HEAD].size) == (1 << 20, 1 << 20, 0)
    # The names and metadata are on disk before the snapshot is acknowledged.
    saved = v2state.decode(w.store.snapshots[-1]).snapshots
    assert {(m.replica, m.name, m.labels.get("app", "")) for m in saved} == {
        ("r1", "s1", "db"),
        ("r2", "s1", "db"),
        ("r1", generated, ""),
        ("r2", generated, ""),
    }


@pytest.mark.parametrize(
    ("name", "labels", "error", "field"),
    [
        ("volume-head", {}, InvalidArgument, "snapshot_volume.name"),
        ("a/b", {}, InvalidArgument, "snapshot_volume.name"),
        ("x" * 256, {}, InvalidArgument, "snapshot_volume.name"),
        ("s2", {"a=b": "c"}, InvalidArgument, "snapshot_volume.labels"),
        ("s2", {"imd/missing-on": "r1"}, InvalidArgument, "snapshot_volume.labels"),
        ("s1", {}, AlreadyExists, "snapshot_volume.name"),
    ],
)
async def test_bad_snapshots_are_refused_naming_the_field(
    tmp_path: Path, name: str, labels: dict[str, str], error: type[Exception], field: str
) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    before = len(w.spdk.called("bdev_lvol_snapshot"))
    with pytest.raises(error) as err:
        await w.engines.snapshot_create("e1", V2, name, labels)
    assert getattr(err.value, "field", None) == field
    assert len(w.spdk.called("bdev_lvol_snapshot")) == before  # nothing half-made


async def test_all_or_none_a_replica_that_fails_undoes_the_others(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    chains = w.v2.chains
    real = chains.create

    async def r2_fails(replica: str, name: str, **kw: Any) -> Any:
        if replica == "r2":
            raise Unavailable("disk d1 is not answering")
        return await real(replica, name, **kw)

    chains.create = r2_fails  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match=r"replica r2: disk d1 is not answering"):
        await w.engines.snapshot_create("e1", V2, "s1", {})
    chains.create = real  # type: ignore[method-assign]
    assert [n for n in w.spdk.devices[next(iter(w.spdk.devices))].lvols if n.startswith("snap-")] == []
    assert set(await w.names("e1")) == {VOLUME_HEAD}
    assert w.mirror("e1").quiesced is False  # the writes were let go


async def test_the_snapshot_limit_is_enforced_naming_it(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_max_count_set("e1", V2, 2)
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.engines.snapshot_create("e1", V2, "s2", {})
    with pytest.raises(FailedPrecondition) as err:
        await w.engines.snapshot_create("e1", V2, "s3", {})
    assert err.value.field == "snapshot_max_count" and "limit" in str(err.value)
    assert w.engines.volume("e1", V2).snapshot_max_count == 2
    with pytest.raises(InvalidArgument) as bad:
        await w.engines.snapshot_max_count_set("e1", V2, -1)
    assert bad.value.field == "count.count"


# -- remove, purge, revert -----------------------------------------------------------------


async def test_remove_folds_a_snapshot_into_its_child_and_the_data_stays(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    b = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})
    await w.engines.snapshot_remove("e1", V2, ["s1"])
    listing = await w.names("e1")
    assert set(listing) == {"s2", VOLUME_HEAD} and listing["s2"].parent == ""
    assert w.snapshot_lvol("r1", "s2").content == b  # what s2 reads did not change
    with pytest.raises(NotFound) as err:
        await w.engines.snapshot_remove("e1", V2, ["s1"])
    assert err.value.field == "names"
    with pytest.raises(InvalidArgument):
        await w.engines.snapshot_remove("e1", V2, [VOLUME_HEAD])


async def test_revert_needs_no_frontend_and_branches_the_chain(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"], frontend="")
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})
    w.write("e1")
    await w.engines.snapshot_revert("e1", V2, "s1")
    for replica in ("r1", "r2"):
        head = w.lvol(replica)
        assert head.parent == lvol_name_of(replica, "s1") and head.content == a
    listing = await w.names("e1")
    assert listing[VOLUME_HEAD].parent == "s1"
    assert set(listing["s1"].children) == {"s2", VOLUME_HEAD}  # the later snapshot stays
    assert w.v2.engines.engines["e1"].record.modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.RW}
    # s1 now has two children: a remove marks it, a purge leaves it until it has one.
    await w.engines.snapshot_remove("e1", V2, ["s1"])
    assert (await w.names("e1"))["s1"].removed
    await w.engines.snapshot_remove("e1", V2, ["s2"])
    await w.engines.snapshot_purge("e1", V2, False)
    assert set(await w.names("e1")) == {VOLUME_HEAD}
    statuses = w.engines.snapshot_purge_status("e1", V2)
    assert {s.state for s in statuses.values()} == {"complete"} and not any(s.is_purging for s in statuses.values())


async def rebuilt(w: World, engine: str, replica: str) -> None:
    """``replica`` added to ``engine`` and rebuilt (chain, then head)."""
    address = await w.replica(replica)
    await w.engines.add_replica(engine, V2, replica, address, restore=False, linked=False)
    mirror = w.mirror(engine)

    def done() -> bool:
        if mirror._rebuild is not None and not mirror._rebuild.done.done():
            mirror.finish_rebuild()
        return w.v2.engines.engines[engine].record.modes.get(replica) == ReplicaMode.RW

    await eventually(done)


async def ancestries(w: World, *replicas: str) -> dict[str, list[tuple[str, str, bool]]]:
    return {r: [(s.name, s.parent, s.removed) for s in ancestry(await w.v2.chains.chain(r))] for r in replicas}


async def test_removes_and_purges_keep_a_rebuilt_replica_s_chain_like_the_others(tmp_path: Path) -> None:
    """A rebuild carries the head's ancestry, not a branch a revert left
    beside it: on the rebuilt replica a snapshot can have one child where
    the others' has two. Deciding per replica, a removal deleted it there
    and marked it elsewhere, and the chains differed from then on (found by
    the storm in test_snapshot_races)."""
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"], frontend="")
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})
    await w.engines.snapshot_revert("e1", V2, "s1")  # s1: children s2 (a branch) and the head
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s3", {})
    await rebuilt(w, "e1", "r3")
    assert [s.name for s in (await w.v2.chains.chain("r3")).snapshots] == ["s1", "s3"]  # no s2: no branch

    await w.engines.snapshot_remove("e1", V2, ["s1"])  # one child on r3, two on r1 and r2
    after = await ancestries(w, "r1", "r2", "r3")
    assert after["r1"] == after["r2"] == after["r3"] == [("s1", "", True), ("s3", "s1", False)]
    await w.engines.snapshot_purge("e1", V2, False)  # s1 cannot go on r1 and r2: it stays on r3 too
    assert await ancestries(w, "r1", "r2", "r3") == after

    await w.engines.snapshot_remove("e1", V2, ["s2"])  # the branch: now s1 has one child everywhere
    await w.engines.snapshot_purge("e1", V2, False)
    final = await ancestries(w, "r1", "r2", "r3")
    assert final["r1"] == final["r2"] == final["r3"] == [("s3", "", False)]
    statuses = w.engines.snapshot_purge_status("e1", V2)
    assert {s.state for s in statuses.values()} == {"complete"} and len(statuses) == 3


async def test_a_rebuild_carries_the_removed_mark(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"], frontend="")
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.engines.snapshot_create("e1", V2, "s2", {})
    await w.engines.snapshot_revert("e1", V2, "s1")
    await w.engines.snapshot_create("e1", V2, "s3", {})
    await w.engines.snapshot_remove("e1", V2, ["s1"])  # marked: two children
    await rebuilt(w, "e1", "r3")
    carried = await ancestries(w, "r1", "r3")
    assert carried["r3"] == carried["r1"] == [("s1", "", True), ("s3", "s1", False)]
    await w.engines.snapshot_remove("e1", V2, ["s2"])
    await w.engines.snapshot_purge("e1", V2, False)  # without the mark r3 would keep s1
    final = await ancestries(w, "r1", "r2", "r3")
    assert final["r1"] == final["r2"] == final["r3"] == [("s3", "", False)]


async def test_a_purge_that_fails_on_a_replica_says_which_and_deletes_nothing_more(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"], frontend="")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.engines.snapshot_create("e1", V2, "s2", {})
    await w.engines.snapshot_revert("e1", V2, "s1")
    await w.engines.snapshot_remove("e1", V2, ["s1"])  # marked (two children)
    await w.engines.snapshot_remove("e1", V2, ["s2"])  # deleted: s1 now has one child
    w.spdk.fail["bdev_lvol_delete"] = TargetRpcError("bdev_lvol_delete", -errno.EIO, "Input/output error")
    with pytest.raises(Unavailable, match=r"purge of engine e1 not finished: replica r1: .*Input/output error"):
        await w.engines.snapshot_purge("e1", V2, False)
    statuses = w.engines.snapshot_purge_status("e1", V2)
    assert {s.state for s in statuses.values()} == {"error"}
    del w.spdk.fail["bdev_lvol_delete"]
    await w.engines.snapshot_purge("e1", V2, False)
    assert set(await w.names("e1")) == {VOLUME_HEAD}


async def test_a_revert_to_a_snapshot_from_before_an_expansion_keeps_the_volume_s_size(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"], frontend="")
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.engines.expand("e1", V2, 2 * SIZE)
    await w.engines.snapshot_revert("e1", V2, "s1")
    for replica in ("r1", "r2"):
        head = w.lvol(replica)
        assert (head.size_mib << 20, head.content) == (2 * SIZE, a)  # a clone of s1 grown to the volume's size
    engine = w.v2.engines.engines["e1"]
    assert engine.record.modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.RW} and engine.record.size == 2 * SIZE


async def test_revert_with_a_frontend_is_refused(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    with pytest.raises(FailedPrecondition) as err:
        await w.engines.snapshot_revert("e1", V2, "s1")
    assert err.value.field == "frontend"
    with pytest.raises(InvalidArgument):
        await w.engines.snapshot_revert("e1", V2, VOLUME_HEAD)


# -- hash ----------------------------------------------------------------------------------


async def test_hash_runs_on_each_replica_is_cached_and_rehashed_on_demand(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.data.jobs.delay = None  # jobs end when the test says
    await w.engines.snapshot_hash("e1", V2, "s1", False)
    status = await w.engines.snapshot_hash_status("e1", V2, "s1")
    assert {s.state for s in status.values()} == {"in_progress"} and len(status) == 2
    await eventually(lambda: len(w.data.jobs.jobs) == 2)  # each node attached its snapshot's export
    for job in w.data.jobs.jobs:
        job.finish()

    async def complete() -> bool:
        s = await w.engines.snapshot_hash_status("e1", V2, "s1")
        return {x.state for x in s.values()} == {"complete"}

    await eventually(complete)
    status = await w.engines.snapshot_hash_status("e1", V2, "s1")
    assert {s.checksum for s in status.values()} == {digest(a)}
    jobs = len(w.data.jobs.jobs)
    await w.engines.snapshot_hash("e1", V2, "s1", False)  # cached: no new job
    assert len(w.data.jobs.jobs) == jobs
    await w.engines.snapshot_hash("e1", V2, "s1", True)  # rehash: new jobs, in progress until done
    await eventually(lambda: len(w.data.jobs.jobs) == jobs + 2)
    assert {s.state for s in (await w.engines.snapshot_hash_status("e1", V2, "s1")).values()} == {"in_progress"}


async def test_an_engine_delete_preempts_its_replicas_hashes(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.data.jobs.delay = None
    await w.engines.snapshot_hash("e1", V2, "s1", False)
    view = w.v2.engines.engines["e1"]
    await w.instances.delete_v2("e1", view.uuid, "engine", cleanup=False)
    await eventually(lambda: "e1" not in w.v2.engines.engines)
    assert {j.status().state.value for j in w.data.jobs.jobs} == {"cancelled"}
    assert [c.name for c in w.data.path.initiator.controllers()] == []  # the hash exports' controllers too


# -- rebuild ------------------------------------------------------------------------------


async def test_a_rebuild_carries_the_chain_then_copies_the_head_comparing(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {"k": "v"})
    b = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})
    w.write("e1")
    address = await w.replica("r3")
    await w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    mirror = w.mirror("e1")
    await eventually(lambda: bool(mirror.rebuilds))  # the chain phase runs first; the head phase is the mirror's
    assert mirror.rebuild_compare
    assert (w.snapshot_lvol("r3", "s1").content, w.snapshot_lvol("r3", "s2").content) == (a, b)
    r3 = await w.v2.chains.chain("r3")
    assert [(s.name, s.parent, s.labels) for s in r3.snapshots] == [("s1", "", {"k": "v"}), ("s2", "s1", {})]
    progress(mirror.rebuilds[-1], 1.0)
    mirror.finish_rebuild()
    await eventually(lambda: w.v2.engines.engines["e1"].record.modes["r3"] == ReplicaMode.RW)
    assert w.v2.engines.engines["e1"].record.modes["r3"] == ReplicaMode.RW


async def test_a_snapshot_during_a_rebuild_ends_up_on_the_new_replica(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    address = await w.replica("r3")
    await w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    mirror = w.mirror("e1")
    await eventually(lambda: bool(mirror.rebuilds))
    head_copy = mirror.rebuilds[-1]
    c = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})  # the head phase steps back for it
    assert head_copy.status().state.value == "cancelled"
    await eventually(lambda: len(mirror.rebuilds) == 2)
    assert [s.name for s in (await w.v2.chains.chain("r3")).snapshots] == ["s1", "s2"]
    assert w.snapshot_lvol("r3", "s2").content == c
    mirror.finish_rebuild()
    await eventually(lambda: w.v2.engines.engines["e1"].record.modes["r3"] == ReplicaMode.RW)
    assert "imd/missing-on" not in (await w.names("e1"))["s2"].labels


async def test_a_replica_remove_while_an_added_replica_starts_leaves_it_err_not_write_only(tmp_path: Path) -> None:
    """ReplicaRemove of another replica preempts a rebuild; one that had
    attached its replica but not yet begun copying used to leave it
    write-only with nothing copying to it (the rebuild's replica was named
    only then; found by the storm in test_snapshot_races)."""
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    address = await w.replica("r3")
    engine = w.v2.engines.engines["e1"]
    hub = w.v2.engines.hub
    durable, gate, waiting = hub.durable, asyncio.Event(), asyncio.Event()

    async def slow_durable() -> None:  # the rebuild's first commit, with r3 attached and WO
        if engine.record.modes.get("r3") == ReplicaMode.WO and "r3" in engine.attached and not gate.is_set():
            waiting.set()
            await gate.wait()
        await durable()

    hub.durable = slow_durable  # type: ignore[method-assign]
    add = asyncio.ensure_future(w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False))
    await asyncio.wait_for(waiting.wait(), 10)
    remove = asyncio.ensure_future(w.engines.remove_replica("e1", V2, "r2", engine.record.spec.replicas["r2"][0]))
    await eventually(lambda: engine.op is None)  # preempted
    gate.set()
    await remove
    with pytest.raises(Unavailable, match="adding replica r3 was preempted"):
        await add
    assert engine.record.modes.get("r3") == ReplicaMode.ERR, (engine.record.modes, engine.errors)
    assert engine.errors["r3"] == "rebuild stopped: replica r2 was removed"


async def test_a_rebuild_that_does_not_step_back_in_time_fails_the_snapshot_and_goes_on(tmp_path: Path) -> None:
    """The snapshot's wait for the head copy to step back is bounded
    (hold_timeout_s): past it the snapshot is UNAVAILABLE naming the
    rebuild, and the rebuild, stepping back late and finding nobody
    waiting, goes on to complete (it used to assert a snapshot was there)."""
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    w.write("e1")
    address = await w.replica("r3")
    await w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    engine, mirror = w.v2.engines.engines["e1"], w.mirror("e1")
    await eventually(lambda: bool(mirror.rebuilds))  # the head phase
    gate = asyncio.Event()
    remove_leg = mirror.remove_leg

    async def slow_remove_leg(name: str) -> None:  # the step back, late
        await gate.wait()
        await remove_leg(name)

    mirror.remove_leg = slow_remove_leg
    w.v2.snapshots.hold_timeout_s = 0.2
    with pytest.raises(Unavailable) as err:
        await w.engines.snapshot_create("e1", V2, "s1", {})
    assert str(err.value) == (
        "engine_name: engine e1: the rebuild of r3 did not step back for the snapshot within 0.2 s"
    )
    assert engine.hold is None
    gate.set()
    await eventually(lambda: len(mirror.rebuilds) == 2)  # back through the chain phase, then the head again
    mirror.finish_rebuild()
    await eventually(lambda: engine.record.modes["r3"] == ReplicaMode.RW)
    assert engine.errors == {} and engine.op is None


async def test_a_snapshot_begun_before_the_chain_phase_and_ended_after_its_look_is_carried(tmp_path: Path) -> None:
    """A snapshot asked for while the rebuild still attaches its replica
    (before the chain phase), and taken slowly, ends after the chain's last
    look at the source. Counting snapshots only as they begin, the rebuild
    saw none begin during its chain phase and went on to the head without
    it (found by the storm in test_snapshot_races)."""
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    w.write("e1")
    address = await w.replica("r3")
    w.data.backend.connect_delay = 0.2  # the rebuild's attach of r3: the snapshot begins meanwhile
    w.spdk.delay["bdev_lvol_snapshot"] = 0.5  # and ends after the chain phase's first look
    engine = w.v2.engines.engines["e1"]
    add = asyncio.ensure_future(w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False))
    await eventually(lambda: engine.op is not None and engine.rebuild_phase == "")
    take = asyncio.ensure_future(w.engines.snapshot_create("e1", V2, "s1", {}))
    await eventually(lambda: engine.hold is not None)
    await add
    await take
    mirror = w.mirror("e1")
    await eventually(lambda: bool(mirror.rebuilds))
    mirror.finish_rebuild()
    await eventually(lambda: engine.record.modes["r3"] == ReplicaMode.RW)
    assert [s.name for s in (await w.v2.chains.chain("r3")).snapshots] == ["s1"]


async def test_a_snapshot_begun_as_the_chain_phase_ends_is_carried_before_the_head(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    chains = w.v2.chains
    real = chains.chain
    reads: list[str] = []
    paused, go = asyncio.Event(), asyncio.Event()

    async def chain(replica: str) -> Any:
        reads.append(replica)
        # The new replica's second read is the chain phase's last look at it
        # (the first found it empty; then s1 was carried).
        if replica == "r3" and reads.count("r3") == 2:
            paused.set()
            await go.wait()
        return await real(replica)

    chains.chain = chain  # type: ignore[method-assign]
    address = await w.replica("r3")
    await w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    await paused.wait()  # the source was read already: s2 is not in it
    taking = w.engines.snapshot_create("e1", V2, "s2", {})
    assert await taking == "s2"  # taken on r1 and r2 while the chain phase looked away
    go.set()
    mirror = w.mirror("e1")
    await eventually(lambda: bool(mirror.rebuilds))
    assert [s.name for s in (await real("r3")).snapshots] == ["s1", "s2"]  # carried before the head phase
    mirror.finish_rebuild()
    await eventually(lambda: w.v2.engines.engines["e1"].record.modes["r3"] == ReplicaMode.RW)


async def test_removing_another_replica_during_a_rebuild_fails_the_rebuild_visibly(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    address = await w.replica("r3")
    await w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    mirror = w.mirror("e1")
    await eventually(lambda: bool(mirror.rebuilds))
    await w.engines.remove_replica("e1", V2, "r2", "")
    engine = w.v2.engines.engines["e1"]
    assert engine.record.modes == {"r1": ReplicaMode.RW, "r3": ReplicaMode.ERR}  # never left write-only
    assert engine.errors["r3"] == "rebuild stopped: replica r2 was removed"
    assert "r3" not in {leg.name for leg in mirror.legs()}


async def test_two_removes_at_once_never_take_the_last_healthy_replica(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    outcomes = await asyncio.gather(
        w.engines.remove_replica("e1", V2, "r1", ""),
        w.engines.remove_replica("e1", V2, "r2", ""),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["FailedPrecondition", "NoneType"]
    assert list(w.v2.engines.engines["e1"].record.modes.values()) == [ReplicaMode.RW]


async def test_an_export_two_readers_share_goes_with_the_last(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    chains = w.v2.chains
    first, second = await asyncio.gather(chains.expose("r1", "s1"), chains.expose("r1", "s1"))
    assert first == second and first.nqn in w.spdk.subsystems
    await chains.unexpose("r1", "s1")  # a backup done while a rebuild still reads it
    assert first.nqn in w.spdk.subsystems
    await chains.unexpose("r1", "s1")
    assert first.nqn not in w.spdk.subsystems


async def test_a_rebuild_onto_a_replica_with_foreign_snapshots_fails_visibly(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    address = await w.replica("r3")
    await w.v2.chains.create("r3", "other", user_created=True)
    await w.engines.add_replica("e1", V2, "r3", address, restore=False, linked=False)
    await eventually(lambda: w.v2.engines.engines["e1"].record.modes["r3"] == ReplicaMode.ERR)
    engine = w.v2.engines.engines["e1"]
    assert engine.record.modes["r3"] == ReplicaMode.ERR and "rebuild onto an empty replica" in engine.errors["r3"]


# -- what preempts what --------------------------------------------------------------------


async def test_a_snapshot_while_an_expansion_runs_is_aborted_for_a_retry(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    w.data.expander.delay = 10  # the replica's node is slow to grow it
    expanding = asyncio.ensure_future(w.engines.expand("e1", V2, 2 * SIZE))
    await eventually(lambda: w.v2.engines.engines["e1"].op is not None)
    with pytest.raises(Conflict, match="expansion"):
        await w.engines.snapshot_create("e1", V2, "s1", {})
    expanding.cancel()


async def test_replicas_that_disagree_are_named_in_the_listing(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.v2.chains.create("r1", "only-r1", user_created=True)  # behind the engine's back
    listing = await w.names("e1")
    assert listing["only-r1"].labels == {"imd/missing-on": "r2"}
    assert "imd/missing-on" not in listing["s1"].labels


# -- restart ------------------------------------------------------------------------------


async def test_after_a_restart_the_chain_is_read_again_and_metadata_reconciled(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_create("e1", V2, "s1", {"keep": "me"})
    saved = v2state.decode(w.store.snapshots[-1])
    # A record whose lvol is gone (a delete that finished before the crash)
    # and an lvol with no record (a snapshot made outside imd).
    ghost = msgspec.structs.replace(saved.snapshots[0], lvol_name="snap-ghost", name="ghost")
    w.spdk.rpc_bdev_lvol_snapshot("bdev_lvol_snapshot", "d1/r1", "stray")
    persisted = msgspec.structs.replace(saved, snapshots=[*saved.snapshots, ghost])
    again, keeper, data, _ = node(tmp_path / "again", w.spdk)
    link(data, w.spdk)
    data.expander.nodes = LocalReplicaNodes({"127.0.0.1": again.chains}, {"127.0.0.1": again.engines})
    keeper.fresh = False
    report = await again.start(persisted)
    assert report["v2_snapshot_records_dropped"] == 1
    services = EngineService(InstanceService(ProcessService(again.supervisor, Lifecycle()), again, ""))
    listing = await services.snapshot_list("e1", V2)
    assert listing["s1"].labels == {"keep": "me"} and listing["s1"].user_created
    assert not listing["stray"].user_created  # a system snapshot, named after its lvol
    await services.snapshot_purge("e1", V2, False)
    assert set(await services.snapshot_list("e1", V2)) == {"s1", VOLUME_HEAD}


# -- a daemon that dies in the middle of an operation -----------------------------------------


def lvols(w: World) -> list[str]:
    """Every lvol on the fake target's lvstore, as it stands."""
    return sorted(w.spdk.devices[next(iter(w.spdk.devices))].lvols)


async def chains_of(w: World, *replicas: str) -> dict[str, list[tuple[str, str]]]:
    return {r: [(s.name, s.parent) for s in (await w.v2.chains.chain(r)).snapshots] for r in replicas}


async def test_a_snapshot_half_taken_when_imd_died_is_undone_at_restart(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.crash_at("bdev_lvol_snapshot", after=1)  # r1 takes s2, imd dies before r2 does
    await w.dies_during(w.engines.snapshot_create("e1", V2, "s2", {}))
    assert lvol_name_of("r1", "s2") in lvols(w) and lvol_name_of("r2", "s2") not in lvols(w)
    again = await w.restarted()
    assert again.v2.engines.engines["e1"].record.intent is None
    assert await chains_of(again, "r1", "r2") == {"r1": [("s1", "")], "r2": [("s1", "")]}
    assert set(await again.names("e1")) == {"s1", VOLUME_HEAD}
    await again.resynced("e1")
    assert await again.engines.snapshot_create("e1", V2, "s2", {}) == "s2"  # the retry succeeds


async def test_a_snapshot_every_replica_took_before_imd_died_is_kept(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.engines.snapshot_create("e1", V2, "s1", {"k": "v"})
    # The state as it was between the last replica's answer and the intent's clearing.
    engine = w.v2.engines.engines["e1"]
    engine.record.intent = SnapshotIntent(kind="snapshot", snapshots=("s1",))
    w.v2.engines.hub.changed()
    await w.v2.engines.hub.durable()
    again = await w.restarted()
    assert again.v2.engines.engines["e1"].record.intent is None
    listing = await again.names("e1")
    assert set(listing) == {"s1", VOLUME_HEAD} and listing["s1"].labels == {"k": "v"}


async def test_a_removal_half_done_when_imd_died_is_finished_at_restart(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    b = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})
    w.crash_at("bdev_lvol_delete", after=1)
    await w.dies_during(w.engines.snapshot_remove("e1", V2, ["s1"]))
    again = await w.restarted()
    assert await chains_of(again, "r1", "r2") == {"r1": [("s2", "")], "r2": [("s2", "")]}
    assert {again.snapshot_lvol(r, "s2").content for r in ("r1", "r2")} == {b}
    assert again.v2.engines.engines["e1"].record.intent is None


async def test_a_revert_half_done_when_imd_died_is_finished_at_restart(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"], frontend="")
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s2", {})
    w.write("e1")
    w.crash_at("bdev_lvol_rename", after=1)  # r1's head swapped, r2 has its clone made but not swapped
    await w.dies_during(w.engines.snapshot_revert("e1", V2, "s1"))
    assert w.lvol("r1").content == a
    assert "r2" not in lvols(w) and revert_lvol_of("r2") in lvols(w)  # r2's head is gone, its clone not yet renamed
    again = await w.restarted()
    for replica in ("r1", "r2"):
        head = again.lvol(replica)
        assert head.parent == lvol_name_of(replica, "s1") and head.content == a
    assert [n for n in lvols(again) if n.startswith("rv-")] == []
    engine = again.v2.engines.engines["e1"]
    assert engine.record.intent is None
    await again.resynced("e1")
    assert engine.record.modes == {"r1": ReplicaMode.RW, "r2": ReplicaMode.RW}
    assert (await again.names("e1"))[VOLUME_HEAD].parent == "s1"


async def test_a_revert_clone_made_before_its_intent_was_on_disk_is_dropped_at_restart(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"], frontend="")
    w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    head = w.lvol("r1").content
    # The replica's node cloned s1 beside the head; imd died before the
    # replica's intent (reverting_to) or the engine's was on disk.
    w.spdk.rpc_bdev_lvol_clone("bdev_lvol_clone", f"d1/{lvol_name_of('r1', 's1')}", revert_lvol_of("r1"))
    again = await w.restarted()
    assert again.report["v2_revert_clones_dropped"] == 1
    assert [n for n in lvols(again) if n.startswith("rv-")] == []
    assert again.lvol("r1").content == head  # no revert happened


async def test_a_purge_half_done_when_imd_died_is_done_by_the_next_one(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    for name in ("s1", "s2"):
        w.write("e1")
        await w.engines.snapshot_create("e1", V2, name, {})
    await w.v2.chains.create("r1", "sys", user_created=False)
    await w.v2.chains.create("r2", "sys", user_created=False)
    w.crash_at("bdev_lvol_delete", after=1)
    await w.dies_during(w.engines.snapshot_purge("e1", V2, False))
    again = await w.restarted()
    assert again.engines.snapshot_purge_status("e1", V2) == {}
    await again.resynced("e1")
    await again.engines.snapshot_purge("e1", V2, False)
    assert await chains_of(again, "r1", "r2") == {r: [("s1", ""), ("s2", "s1")] for r in ("r1", "r2")}


async def test_a_hash_running_when_imd_died_can_be_asked_again(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.data.jobs.delay = None
    await w.engines.snapshot_hash("e1", V2, "s1", False)
    await eventually(lambda: len(w.data.jobs.jobs) == 1)
    again = await w.restarted()
    exports = [nqn for nqn in again.spdk.subsystems if "snap" in nqn]
    assert exports == []  # the dead daemon's snapshot export went at start-up
    assert {s.state for s in (await again.engines.snapshot_hash_status("e1", V2, "s1")).values()} == {""}
    await again.engines.snapshot_hash("e1", V2, "s1", False)

    async def complete() -> bool:
        status = await again.engines.snapshot_hash_status("e1", V2, "s1")
        return {s.state for s in status.values()} == {"complete"}

    await eventually(complete)
    assert {s.checksum for s in (await again.engines.snapshot_hash_status("e1", V2, "s1")).values()} == {digest(a)}


async def test_a_clone_running_when_imd_died_is_reported_failed_and_can_start_again(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.engine("e2", ["r4"])
    w.data.jobs.delay = None  # the copy is in progress when imd dies
    await w.engines.snapshot_clone("e2", V2, "s1", "e1", "127.0.0.1:8501", 0)
    await eventually(lambda: len(w.data.jobs.jobs) == 1)
    again = await w.restarted()
    status = again.engines.snapshot_clone_status("e2", V2)
    assert [(s.state, s.snapshot) for s in status.values()] == [("error", "s1")]
    assert "restarted" in next(iter(status.values())).error
    assert again.v2.engines.engines["e2"].record.intent is None
    await again.engines.snapshot_clone("e2", V2, "s1", "e1", "127.0.0.1:8501", 0)
    await eventually(lambda: all(s.state == "complete" for s in again.engines.snapshot_clone_status("e2", V2).values()))
    assert again.lvol("r4").content == a


# -- clone ---------------------------------------------------------------------------------


async def test_a_clone_copies_another_volume_s_snapshot_onto_every_replica(tmp_path: Path) -> None:
    w = await world(tmp_path)
    await w.engine("e1", ["r1"])
    a = w.write("e1")
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.write("e1")
    await w.engine("e2", ["r4", "r5"])
    before = w.engines.snapshot_clone_status("e2", V2)
    assert [s.state for s in before.values()] == [""]  # what Longhorn's manager waits for to start one
    await w.engines.snapshot_clone("e2", V2, "s1", "e1", "127.0.0.1:8501", 0)
    await eventually(lambda: all(s.state == "complete" for s in w.engines.snapshot_clone_status("e2", V2).values()))
    status = w.engines.snapshot_clone_status("e2", V2)
    assert set(status) == {k for k in status if k.startswith("tcp://127.0.0.1:")} and len(status) == 2
    assert {(s.state, s.progress, s.snapshot) for s in status.values()} == {("complete", 100, "s1")}
    assert (w.lvol("r4").content, w.lvol("r5").content) == (a, a)
    with pytest.raises(Exception) as err:
        await w.engines.snapshot_clone("e2", V2, "s1", "e1", "127.0.0.1:8501", 1)
    assert getattr(err.value, "field", "") == "clone_mode"
