"""V2 backups and restores over the fakes (issue 20): the fake world of
tests/v2/test_snapshots.py (real ``Chains`` on a fake SPDK target, the
in-memory mirror, fake jobs) plus ``FakeBlockIo`` (tests/v2/fakes.py),
whose lvols read bytes that follow their content tokens, and a real
backupstore on a ``vfs`` target (Longhorn's format, locks and all, on a
directory). What this checks is the orchestration: which replica is read,
status and its fields, incremental backups reusing blocks, restores through
the mirror and incremental restores, what preempts a backup or a restore
and what its status then says, restarts, and every bad input. The bytes
through real SPDK and a real S3 server are checked in
tests/v2/test_v2_backups_spdk.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from imd.backupstore import StoreOptions, list_target
from imd.errors import FailedPrecondition, ImdError, InvalidArgument, NotFound
from imd.services.engines import BackupRequest, EngineService
from imd.services.instances import InstanceService
from imd.services.processes import Lifecycle, ProcessService
from imd.v2 import state as v2state
from imd.v2.chains import LocalReplicaNodes
from imd.v2.model import ReplicaMode
from tests.helpers import eventually
from tests.v2.fakes import FakeBlockIo, link, node
from tests.v2.test_snapshots import V2, World

pytestmark = pytest.mark.asyncio

MIB2 = 2 << 20


class BackupWorld(World):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.target_dir = tmp_path / "target"
        self.target_dir.mkdir()
        self.target = f"vfs://{self.target_dir}"
        self.v2.backups.options = StoreOptions(lock_wait_s=0.01)

    @property
    def blocks(self) -> FakeBlockIo:
        blocks = self.data.blocks
        assert isinstance(blocks, FakeBlockIo)
        return blocks

    async def host_write(self, engine: str, offset: int, data: bytes) -> None:
        """What a host writes through the engine's export."""
        await self.blocks.mirror_write(self.mirror(engine), offset, data)

    def volume_bytes(self, engine: str) -> bytes:
        mirror = self.mirror(engine)
        leg = next(leg for leg in mirror._legs.values() if leg.mode == ReplicaMode.RW)
        assert self.blocks.lvol_of is not None
        return self.blocks.bytes_of(self.blocks.lvol_of(leg.controller).content, 0, mirror.num_blocks * 4096)

    def replica_bytes(self, replica: str) -> bytes:
        lvol = self.lvol(replica)
        return self.blocks.bytes_of(lvol.content, 0, lvol.size_mib << 20)

    async def backup(self, engine: str, snapshot: str, name: str = "", **extra: Any) -> Any:
        request = BackupRequest(snapshot_name=snapshot, backup_target=self.target, backup_name=name, **extra)
        return await self.engines.backup_create(engine, V2, request)

    async def backup_done(self, engine: str, name: str) -> Any:
        await eventually(lambda: self.engines.backup_status(engine, V2, name, "").state != "in_progress")
        return self.engines.backup_status(engine, V2, name, "")

    async def restore_done(self, engine: str) -> dict[str, Any]:
        await eventually(lambda: not any(s.is_restoring for _, s in self.engines.restore_status(engine, V2).values()))
        return {r: s for r, (_, s) in self.engines.restore_status(engine, V2).items()}

    def block_files(self) -> set[str]:
        return {p.name for p in self.target_dir.rglob("*.blk")}


async def bworld(tmp_path: Path) -> BackupWorld:
    w = BackupWorld(tmp_path)
    await w.start()
    return w


def pattern(seed: int, length: int = MIB2) -> bytes:
    return (seed.to_bytes(4, "big") * (length // 4))[:length]


async def test_backup_incremental_and_restores_of_each_byte_for_byte(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.host_write("e1", 0, pattern(1))
    await w.host_write("e1", 3 * MIB2, pattern(2))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    at_s1 = w.volume_bytes("e1")
    started = await w.backup("e1", "s1", "b1", labels={"app": "db"})
    assert (started.backup, started.is_incremental) == ("b1", False)
    assert started.replica_address == w.v2.engines.engines["e1"].record.spec.replicas["r1"][0]
    s = await w.backup_done("e1", "b1")
    assert (s.state, s.progress, s.error, s.snapshot) == ("complete", 100, "", "s1")
    assert s.url == f"{w.target}?backup=b1&volume=vol"
    assert len(w.block_files()) == 2  # two blocks of data, the zeros not stored
    assert w.blocks.zeroed == 0

    await w.host_write("e1", 3 * MIB2, pattern(3))  # one block changes
    await w.engines.snapshot_create("e1", V2, "s2", {})
    at_s2 = w.volume_bytes("e1")
    started = await w.backup("e1", "s2", "b2")
    assert started.is_incremental
    assert (await w.backup_done("e1", "b2")).state == "complete"
    assert len(w.block_files()) == 3  # only the changed block was uploaded
    listing = await list_target(w.target, volume="vol")
    assert set(listing["vol"].backups) == {"b1", "b2"}

    await w.engine("e2", ["r3", "r4"], frontend="")
    await w.engines.restore("e2", V2, s.url, [], 0)
    statuses = await w.restore_done("e2")
    assert set(statuses) == {"r3", "r4"}
    for st in statuses.values():
        assert (st.state, st.last_restored, st.progress, st.error) == ("complete", "b1", 100, "")
    assert w.volume_bytes("e2") == at_s1
    assert w.replica_bytes("r3")[: len(at_s1)] == w.replica_bytes("r4")[: len(at_s1)] == at_s1
    names = await w.engines.snapshot_list("e2", V2)
    assert "restore-s1" in names

    writes_before = w.blocks.writes
    await w.engines.restore("e2", V2, f"{w.target}?backup=b2&volume=vol", [], 0)
    statuses = await w.restore_done("e2")
    assert all(st.state == "complete" and st.last_restored == "b2" for st in statuses.values())
    assert w.volume_bytes("e2") == at_s2
    assert w.blocks.writes - writes_before == 1  # incremental: the one block that changed
    names = await w.engines.snapshot_list("e2", V2)
    assert "restore-s2" in names and "restore-s1" not in names
    w.engines.restore_finish("e2", V2)


async def test_the_local_replica_is_read_and_a_restore_skips_what_is_zero(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.host_write("e1", MIB2, pattern(7))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.backup("e1", "s1", "b1")
    url = (await w.backup_done("e1", "b1")).url
    await w.engine("e2", ["r2"], frontend="")
    await w.host_write("e2", 5 * MIB2, pattern(9))  # older data the restore must clear
    await w.engines.restore("e2", V2, url, [], 0)
    await w.restore_done("e2")
    assert w.volume_bytes("e2") == w.volume_bytes("e1")
    assert w.blocks.zeroed == MIB2  # only the one range that was not zero


async def test_a_backup_holds_up_nothing_and_a_snapshot_is_taken_meanwhile(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.host_write("e1", 0, pattern(1))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.blocks.gate = asyncio.Event()
    await w.backup("e1", "s1", "b1")
    await asyncio.wait_for(w.blocks.read_started.wait(), 10)
    assert await w.engines.snapshot_create("e1", V2, "s2", {}) == "s2"
    assert [r.name for r in w.engines.replicas("e1", V2)] == ["r1"]
    assert w.engines.volume("e1", V2).name == "vol"
    assert w.engines.backup_status("e1", V2, "b1", "").state == "in_progress"
    w.blocks.gate.set()
    assert (await w.backup_done("e1", "b1")).state == "complete"


async def test_an_engine_delete_preempts_a_backup_at_once_and_nothing_is_listed(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.host_write("e1", 0, pattern(1))
    await w.host_write("e1", MIB2, pattern(2))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    record = None
    w.blocks.gate = asyncio.Event()
    await w.backup("e1", "s1", "b1")
    record = w.v2.engines.engines["e1"].record.backups["b1"]
    await asyncio.wait_for(w.blocks.read_started.wait(), 10)
    uuid = w.v2.engines.engines["e1"].uuid
    await asyncio.wait_for(w.v2.delete("e1", uuid, cleanup=False), 1)  # answers at once
    await eventually(lambda: "e1" not in w.v2.engines.engines)
    assert record.state == "error" and record.error == "preempted: the engine was deleted"
    assert w.data.path.initiator.controllers() == []  # the snapshot's controller detached too
    assert not [nqn for nqn in w.spdk.subsystems if "-snap-" in nqn]  # and its export withdrawn
    listing = await list_target(w.target)
    assert "b1" not in (listing["vol"].backups if "vol" in listing else {})


async def test_removing_the_source_replica_preempts_naming_it(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1", "r2"])
    await w.host_write("e1", 0, pattern(1))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.blocks.gate = asyncio.Event()
    started = await w.backup("e1", "s1", "b1")
    by_address = {a[0]: r for r, a in w.v2.engines.engines["e1"].record.spec.replicas.items()}
    source = by_address[started.replica_address]
    other = ({"r1", "r2"} - {source}).pop()
    await asyncio.wait_for(w.blocks.read_started.wait(), 10)
    await w.engines.remove_replica("e1", V2, other, "")  # not its source: goes on
    assert w.engines.backup_status("e1", V2, "b1", "").state == "in_progress"
    await w.engine("e2", ["r3", "r4"])
    await w.host_write("e2", 0, pattern(2))
    await w.engines.snapshot_create("e2", V2, "s1", {})
    started = await w.backup("e2", "s1", "b1")
    by_address = {a[0]: r for r, a in w.v2.engines.engines["e2"].record.spec.replicas.items()}
    await w.engines.remove_replica("e2", V2, by_address[started.replica_address], "")
    s = await w.backup_done("e2", "b1")
    assert (s.state, s.error) == ("error", f"preempted: replica {by_address[started.replica_address]} was removed")
    assert w.engines.backup_status("e1", V2, "b1", "").state == "in_progress"  # another engine's: untouched
    w.blocks.gate.set()
    assert (await w.backup_done("e1", "b1")).state == "complete"


async def test_a_revert_preempts_a_backup_caught_reading(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"], frontend="")
    await w.host_write("e1", 0, pattern(1))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.blocks.gate = asyncio.Event()
    await w.backup("e1", "s1", "b1")
    await asyncio.wait_for(w.blocks.read_started.wait(), 10)
    await w.engines.snapshot_revert("e1", V2, "s1")
    s = await w.backup_done("e1", "b1")
    assert (s.state, s.error) == ("error", "preempted: a revert to snapshot s1")


async def test_blocks_of_a_preempted_backup_are_reused_by_the_next(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"], frontend="")
    for i in range(4):
        await w.host_write("e1", i * MIB2, pattern(10 + i))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    reads = 0
    original = w.blocks.read

    async def read_then_hold(controller: Any, offset: int, length: int) -> Any:
        nonlocal reads
        reads += 1
        if reads > 2:
            await asyncio.Event().wait()  # the third block never comes
        return await original(controller, offset, length)

    w.blocks.read = read_then_hold  # type: ignore[method-assign]
    await w.backup("e1", "s1", "b1", concurrent_limit=1)
    await eventually(lambda: len(w.block_files()) >= 2)
    await w.engines.snapshot_revert("e1", V2, "s1")
    assert (await w.backup_done("e1", "b1")).state == "error"
    uploaded = w.block_files()
    w.blocks.read = original  # type: ignore[method-assign]
    await w.backup("e1", "s1", "b2")
    assert (await w.backup_done("e1", "b2")).state == "complete"
    assert uploaded <= w.block_files() and len(w.block_files()) == 4


async def test_shutdown_preempts_and_a_crash_reads_interrupted_by_restart(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.host_write("e1", 0, pattern(1))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    w.blocks.gate = asyncio.Event()
    await w.backup("e1", "s1", "b1")
    await asyncio.wait_for(w.blocks.read_started.wait(), 10)
    crashed = v2state.decode(w.v2.snapshot())  # what a crash leaves on disk: b1 in progress
    assert crashed.engines[0].backups["b1"].state == "in_progress"
    await w.v2.backups.close()
    s = w.engines.backup_status("e1", V2, "b1", "")
    assert (s.state, s.error) == ("error", "preempted: imd shut down")

    again, keeper, data, _ = node(tmp_path / "again", w.spdk)
    link(data, w.spdk)
    data.expander.nodes = LocalReplicaNodes({"127.0.0.1": again.chains}, {"127.0.0.1": again.engines})
    keeper.fresh = False
    report = await again.start(crashed)
    assert report["v2_backups_interrupted"] == 1
    services = EngineService(InstanceService(ProcessService(again.supervisor, Lifecycle()), again, ""))
    s = services.backup_status("e1", V2, "b1", "")
    assert (s.state, s.error, s.snapshot) == ("error", "interrupted by restart", "s1")


async def test_a_restore_is_preempted_by_a_delete_and_a_corrupt_block_is_named(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.host_write("e1", 0, pattern(1))
    await w.host_write("e1", MIB2, pattern(2))
    await w.engines.snapshot_create("e1", V2, "s1", {})
    await w.backup("e1", "s1", "b1")
    url = (await w.backup_done("e1", "b1")).url
    victim = sorted(w.target_dir.rglob("*.blk"))[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:-8] + bytes(8))
    await w.engine("e2", ["r2"], frontend="")
    await w.engines.restore("e2", V2, url, [], 0)
    statuses = await w.restore_done("e2")
    st = statuses["r2"]
    assert st.state == "error" and victim.name in st.error and "corrupt" in st.error
    assert st.last_restored == ""
    with pytest.raises(FailedPrecondition):
        w.engines.restore_finish("e2", V2)

    victim.write_bytes(good)
    original = w.blocks.mirror_write
    gate = asyncio.Event()

    async def held(mirror: Any, offset: int, data: Any) -> None:
        await gate.wait()
        await original(mirror, offset, data)

    w.blocks.mirror_write = held  # type: ignore[method-assign]
    await w.engines.restore("e2", V2, url, [], 0)
    record = w.v2.engines.engines["e2"].record.restore
    assert record is not None and record.is_restoring
    await asyncio.wait_for(w.v2.delete("e2", "", cleanup=False), 1)
    await eventually(lambda: "e2" not in w.v2.engines.engines)
    assert (record.state, record.error, record.is_restoring) == ("error", "preempted: the engine was deleted", False)


async def test_bad_requests_are_refused_naming_the_field(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_create("e1", V2, "s1", {})

    async def refused(kind: type[ImdError], field: str, **request: Any) -> None:
        fields = {"snapshot_name": "s1", "backup_target": w.target, **request}
        with pytest.raises(kind) as caught:
            await w.engines.backup_create("e1", V2, BackupRequest(**fields))
        assert caught.value.field == field, caught.value

    await refused(NotFound, "snapshot_name", snapshot_name="nope")
    await refused(InvalidArgument, "snapshot_name", snapshot_name="")
    await refused(InvalidArgument, "compression_method", compression_method="zstd")
    await refused(InvalidArgument, "backup_name", backup_name="-bad")
    await refused(InvalidArgument, "backup_name", backup_name="has/slash")
    await refused(InvalidArgument, "backup_target", backup_target="ftp://x/y")
    await refused(InvalidArgument, "backup_target", backup_target="")
    await refused(InvalidArgument, "envs", envs=["NOEQUALS"])
    await refused(InvalidArgument, "concurrent_limit", concurrent_limit=-1)
    await refused(InvalidArgument, "parameters[backup-block-size]", parameters={"backup-block-size": "3000"})
    with pytest.raises(NotFound) as caught:
        await w.engines.backup_create("nope", V2, BackupRequest(snapshot_name="s1", backup_target=w.target))
    assert caught.value.field == "engine_name"
    with pytest.raises(NotFound) as caught:
        w.engines.backup_status("e1", V2, "unknown", "")
    assert caught.value.field == "backup_name"
    assert not w.block_files() and not list(w.target_dir.iterdir())

    await w.backup("e1", "s1", "b1")
    s = await w.backup_done("e1", "b1")
    with pytest.raises(NotFound) as caught:
        w.engines.backup_status("e1", V2, "b1", "tcp://10.9.9.9:1")
    assert caught.value.field == "replica_address"
    assert w.engines.backup_status("e1", V2, "b1", f"tcp://{s.replica_address}") is s

    with pytest.raises(FailedPrecondition) as precondition:
        await w.engines.restore("e1", V2, s.url, [], 0)  # e1 has a frontend
    assert precondition.value.field == "frontend"
    await w.engine("e2", ["r2"], frontend="")
    for url, kind, field in (
        ("", InvalidArgument, "url"),
        (w.target, InvalidArgument, "url"),
        (f"{w.target}?backup=nope&volume=vol", NotFound, "url"),
    ):
        with pytest.raises(kind) as bad:
            await w.engines.restore("e2", V2, url, [], 0)
        assert bad.value.field == field, (url, bad.value)
    with pytest.raises(InvalidArgument) as negative:
        await w.engines.restore("e2", V2, s.url, [], -1)
    assert negative.value.field == "concurrent_limit"


async def test_a_target_that_is_missing_fails_the_call_and_nothing_starts(tmp_path: Path) -> None:
    w = await bworld(tmp_path)
    await w.engine("e1", ["r1"])
    await w.engines.snapshot_create("e1", V2, "s1", {})
    with pytest.raises(FailedPrecondition) as caught:
        await w.engines.backup_create(
            "e1", V2, BackupRequest(snapshot_name="s1", backup_target=f"vfs://{tmp_path}/nowhere")
        )
    assert caught.value.field == "backup_target"
    assert w.v2.engines.engines["e1"].record.backups == {}
    assert not any(os.scandir(w.target_dir))
