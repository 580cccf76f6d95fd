"""The cluster scenarios (issue 21): an engine on node A, replicas on B and
C, a verifying host in its own namespace, and a fault.

Each scenario runs on a cluster that is up (tests/cluster/harness.py),
makes its own volume, and returns a ``Record``: what the host saw (its
longest pause, errors, mismatches, IOPS), the times to ERR and to rebuild,
and the facts the tests assert. Scenarios observe and never assert, so
that bench/cluster.py can print the numbers of a run whose outcome is
wrong; tests/cluster/test_scenarios.py asserts. Every wait has a bound.

The host is bench/v2proc.py's loop: QD 4 over the first 16 MiB, each write
a pattern read back later and compared. Its ``written`` map holds each
block whose last write was acknowledged, so a replica read directly after
the run must hold exactly those bytes there; B and C are compared whole,
byte for byte (SHA-256 per 8 MiB).

Each volume's replicas live on a disk of their own on each node, made
for the scenario and deleted after it (a sparse file that reads zeros):
a fresh thin replica on a disk where another was deleted can show that
one's old bytes in the clusters it allocates (see test_scenarios.py's
test_a_fresh_replica_never_shows_a_deleted_ones_bytes), which would make
B and C differ where the host never wrote.

A rebuild is done as Longhorn does it: the failed replica is removed from
the engine, a fresh replica (a new name) is made on the same node, and
ReplicaAdd copies the volume onto it while the host writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from imd.v2.model import nqn_of
from tests.cluster.harness import MIB, Cluster, HostLoop, Node, path_of, wait_until

SIZE = 32 * MIB
SPAN = 4096  # blocks the host writes: 16 MiB
# A replica's controller is given up 10 s after its path went (imd's
# default replica_ctrlr_loss_timeout_s); a long partition outlasts it.
LOSS_TIMEOUT_S = 10
LONG_PARTITION_S = LOSS_TIMEOUT_S + 4
SHORT_PARTITION_S = 3
# The host rides out a pause of its engine (a restart, a stall) as a
# Linux host of a Longhorn volume does: it reconnects (every 1 s, for up to
# 30 s) instead of failing its I/O at once. spdk_ffi's own silence detection
# (10 s) applies to it too.
RECONNECTING = {"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1}


@dataclass
class Record:
    scenario: str
    longest_pause_s: float = 0.0
    errors: int = 0
    mismatches: int = 0
    ios: int = 0
    iops_before_fault: float = 0.0
    time_to_err_s: float | None = None
    time_to_rebuild_s: float | None = None
    first_error: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome()}

    def outcome(self) -> str:
        """What happened, in a few words, from the facts."""
        f = self.facts
        said = []
        if "replica_list" in f:
            modes = "/".join(mode for mode, _ in f["replica_list"].values())
            said.append(f"ReplicaList {modes}; expand {f.get('expand_s')} s to {f.get('size_after', 0) >> 20} MiB")
        if "lvol_kept" in f:
            said.append(f"C ERR, lvol {'kept' if f['lvol_kept'] else 'LOST'} after restart")
        if "endpoint_after" in f:
            same = f["endpoint_after"] == f["endpoint_before"]
            said.append(f"endpoint {'same' if same else 'CHANGED'}, target untouched: {f['target_untouched']}")
        if "modes_seen" in f:
            said.append(f"B seen {'/'.join(f['modes_seen'])}, {f['b_mode_at_end']} at the end")
        if "err_during_outage" in f:
            when = "during the outage" if f["err_during_outage"] else f"{f.get('err_after_heal_s')} s after the heal"
            said.append(f"B ERR {when}")
            if "host_ios_late_in_outage" in f:
                said.append(f"host I/Os in the outage's last 3 s: {f['host_ios_late_in_outage']}")
        if "engine_error_during_outage" in f:
            if f["engine_error_during_outage"]:
                said.append(f"engine error: {f.get('engine_error_msg', '')[:80]}")
            else:
                said.append(f"no engine error during the outage; after the heal {f.get('modes_after_heal')}")
            said.append(f"nothing corrupt: {f.get('nothing_corrupt')}")
        for key in ("b_equals_c", "rebuilt_equal"):
            if key in f:
                said.append("B = C" if f[key] else "B != C")
        return "; ".join(said)


@dataclass
class Volume:
    """An engine on A with one replica on each of ``nodes``."""

    cluster: Cluster
    name: str
    size: int
    replicas: dict[str, str]  # replica name -> ip:port
    homes: dict[str, str]  # replica name -> node name
    endpoint: str = ""

    @property
    def engine(self) -> str:
        return f"{self.name}-e"

    @property
    def disk(self) -> str:
        return f"{self.name}-d"

    @property
    def a(self) -> Node:
        return self.cluster["a"]

    @property
    def frontend(self) -> str:
        return self.endpoint.removeprefix("nvmf://").split("/", 1)[0]

    async def modes(self) -> dict[str, str]:
        return dict(await self.a.modes(self.engine))

    async def mode(self, replica: str) -> str:
        return str((await self.modes()).get(replica, "gone"))

    def host(self, seed: int) -> HostLoop:
        return self.cluster.host_loop(self.frontend, nqn_of(self.engine), seed=seed, qd=4, span=SPAN, opts=RECONNECTING)

    async def hashes(self, replica: str, size: int | None = None) -> list[str]:
        return await self.cluster.replica_hashes(self.replicas[replica], replica, (size or self.size) // 4096)

    async def same_bytes(self, first: str, second: str) -> bool:
        a, b = await asyncio.gather(self.hashes(first), self.hashes(second))
        return a == b

    async def holds(self, replica: str, written: dict[str, int]) -> int:
        """Blocks of the host's acknowledged writes that ``replica`` does not hold."""
        report = await self.cluster.host_run(
            cmd="check", path=path_of(self.replicas[replica], replica), written=written
        )
        return int(report["mismatches"])

    async def rebuild(self, old: str, node: str, new: str) -> float:
        """Longhorn's rebuild: ``old`` leaves the engine, a fresh replica
        ``new`` on ``node`` is added and copied onto; seconds from the
        ReplicaAdd to RW."""
        if old in await self.modes():
            await self.a.replica_remove(self.engine, old)
        address = await self.cluster[node].replica(new, self.size, self.name, self.disk)
        self.replicas[new], self.homes[new] = address, node
        began = time.monotonic()
        await self.a.replica_add(self.engine, new, address)
        done = await wait_until(lambda: self._is(new, "RW"), 120, f"{new} rebuilt")
        return done - began

    async def _is(self, replica: str, mode: str) -> bool:
        return await self.mode(replica) == mode

    async def delete(self) -> None:
        """The engine and every replica, as far as they are reachable."""
        try:
            await self.a.delete(self.engine)
            await wait_until(lambda: self._gone(self.a, self.engine), 30, f"{self.engine} deleted")
        except Exception:  # a scenario that left it broken: the cluster's teardown removes the rest
            pass
        for replica, node in self.homes.items():
            with contextlib.suppress(Exception):
                await self.cluster[node].delete(replica)
        for node in set(self.homes.values()):
            with contextlib.suppress(Exception):
                await wait_until(functools.partial(self._no_replicas, node), 30, f"replicas on {node} deleted")
                await self.cluster[node].delete_disk(self.disk)

    async def _no_replicas(self, node: str) -> bool:
        return not (set(self.homes) & await self.cluster[node].names())

    @staticmethod
    async def _gone(node: Node, name: str) -> bool:
        return name not in await node.names()


async def volume(cluster: Cluster, name: str, size: int = SIZE, nodes: tuple[str, ...] = ("b", "c")) -> Volume:
    replicas, homes = {}, {}
    for node in nodes:
        await cluster[node].create_disk(f"{name}-d")
    for node in nodes:
        replica = f"{name}-r{node}"
        replicas[replica] = await cluster[node].replica(replica, size, name, f"{name}-d")
        homes[replica] = node
    vol = Volume(cluster, name, size, replicas, homes)
    made = await cluster["a"].engine(vol.engine, name, size, dict(replicas))
    vol.endpoint = made.status.endpoint
    return vol


def completions(report: dict[str, Any], t0: float, t1: float) -> int:
    """Host I/Os completed between monotonic times t0 and t1 (the host's
    clock is the machine's CLOCK_MONOTONIC, as ours is)."""
    return sum(n for i, n in enumerate(report["bins_100ms"]) if t0 <= report["start"] + i / 10 < t1)


def host_facts(record: Record, report: dict[str, Any], fault_at: float | None) -> None:
    record.longest_pause_s = report["longest_pause_s"]
    record.errors, record.mismatches, record.ios = report["errors"], report["mismatches"], report["ios"]
    record.first_error = "; ".join(report.get("errors_seen", []))[:500]
    end = fault_at if fault_at is not None else report["end"]
    window = [n for i, n in enumerate(report["bins_100ms"]) if report["start"] + (i + 1) / 10 <= end]
    record.iops_before_fault = round(sum(window) / (len(window) / 10)) if window else 0.0


# -- 1: an engine on A, replicas on B and C ---------------------------------------------------


async def across_nodes(cluster: Cluster) -> Record:
    """ReplicaList shows both replicas RW at their nodes' addresses;
    VolumeExpand grows the replicas on B and C (through their imds) and the
    volume, while the host writes."""
    record = Record("1 engine on A, replicas on B and C; expand")
    vol = await volume(cluster, "v1")
    try:
        listed = await vol.a.replica_list(vol.engine)
        record.facts["replica_list"] = {name: list(value) for name, value in listed.items()}
        record.facts["endpoint"] = vol.endpoint
        loop = vol.host(seed=101)
        await loop.start()
        try:
            await asyncio.sleep(3)  # host I/O before the expansion: the workload
            began = time.monotonic()
            await vol.a.expand(vol.engine, 2 * SIZE)
            record.facts["expand_s"] = round(time.monotonic() - began, 3)
            await asyncio.sleep(2)  # and after it
            report = await loop.stop()
        finally:
            loop.kill()
        host_facts(record, report, began)
        volume_now = await vol.a.volume(vol.engine)
        record.facts["size_after"] = volume_now.size
        record.facts["expansion_error"] = volume_now.last_expansion_error
        record.facts["modes_after"] = await vol.modes()
        vol.size = 2 * SIZE
        record.facts["b_equals_c"] = await vol.same_bytes("v1-rb", "v1-rc")  # 64 MiB: both lvols grew
        record.facts["c_misses"] = await vol.holds("v1-rc", report["written"])
    finally:
        await vol.delete()
    return record


# -- 4: node C lost -----------------------------------------------------------------------------


async def node_lost(cluster: Cluster) -> Record:
    """C's imd and target die together (kill -9); C goes ERR, the host goes
    on with B. C restarts: its replica's lvol is still on its disk; a fresh
    replica on C is rebuilt from B, and B and C then hold the same bytes."""
    record = Record("4 node C lost (imd and target kill -9), restart, rebuild")
    vol = await volume(cluster, "v4")
    c = cluster["c"]
    try:
        loop = vol.host(seed=104)
        await loop.start()
        try:
            await asyncio.sleep(3)
            fault = time.monotonic()
            await c.kill9(target=True)
            errored = await wait_until(lambda: vol._is("v4-rc", "ERR"), 60, "v4-rc ERR")
            record.time_to_err_s = round(errored - fault, 3)
            record.facts["b_mode_while_c_down"] = await vol.mode("v4-rb")
            await c.start()
            record.facts["lvol_kept"] = "v4-rc" in await c.lvols(vol.disk)
            record.facts["replica_state_after_restart"] = (await c.get("v4-rc")).status.state
            record.time_to_rebuild_s = round(await vol.rebuild("v4-rc", "c", "v4-rc2"), 3)
            await asyncio.sleep(2)  # host I/O on the rebuilt mirror
            report = await loop.stop()
        finally:
            loop.kill()
        host_facts(record, report, fault)
        record.facts["modes_after"] = await vol.modes()
        record.facts["b_equals_c"] = await vol.same_bytes("v4-rb", "v4-rc2")
        record.facts["c_misses"] = await vol.holds("v4-rc2", report["written"])
    finally:
        await vol.delete()
    return record


# -- 6: the engine's node restarts ---------------------------------------------------------------


async def engine_node_restart(cluster: Cluster) -> Record:
    """A's imd is killed (-9) and restarted, its target untouched: the
    engine is back at the same endpoint, the host (reconnecting) resumes
    with no error, and the replicas are resynced to the same bytes."""
    record = Record("6 engine node A restarts (imd kill -9, target untouched)")
    vol = await volume(cluster, "v6")
    a = cluster["a"]
    try:
        target_before = a.target_pid()
        loop = vol.host(seed=106)
        await loop.start()
        try:
            await asyncio.sleep(3)
            fault = time.monotonic()
            await a.kill9(target=False)
            await a.start()
            record.facts["restart_to_serving_s"] = round(time.monotonic() - fault, 3)
            record.facts["target_untouched"] = target_before is not None and a.target_pid() == target_before
            record.facts["endpoint_after"] = (await a.get(vol.engine)).status.endpoint
            record.facts["endpoint_before"] = vol.endpoint
            resynced = await wait_until(lambda: _all_rw(vol), 120, "replicas RW again after the restart")
            record.time_to_rebuild_s = round(resynced - fault, 3)
            await asyncio.sleep(2)
            report = await loop.stop()
        finally:
            loop.kill()
        host_facts(record, report, fault)
        record.facts["b_equals_c"] = await vol.same_bytes("v6-rb", "v6-rc")
        record.facts["b_misses"] = await vol.holds("v6-rb", report["written"])
    finally:
        await vol.delete()
    return record


async def _all_rw(vol: Volume) -> bool:
    return set((await vol.modes()).values()) == {"RW"}


# -- 2, 3, 5: silent partitions (issue 25) ----------------------------------------------------------


async def long_partition(cluster: Cluster) -> Record:
    """B is cut off silently for longer than the replica controller-loss
    timeout: B should go ERR during the outage and the host see no error;
    after healing, a fresh replica on B is rebuilt and B and C match."""
    record = Record(f"2 silent partition of B, {LONG_PARTITION_S} s (> loss timeout {LOSS_TIMEOUT_S} s)")
    vol = await volume(cluster, "v2")
    try:
        loop = vol.host(seed=102)
        await loop.start()
        try:
            await asyncio.sleep(3)
            fault = time.monotonic()
            cluster.net.partition("b")
            try:
                errored = await wait_until(lambda: vol._is("v2-rb", "ERR"), LONG_PARTITION_S, "v2-rb ERR")
                record.time_to_err_s = round(errored - fault, 3)
                record.facts["err_during_outage"] = True
                await asyncio.sleep(max(0.0, fault + LONG_PARTITION_S - time.monotonic()))
            except TimeoutError:
                record.facts["err_during_outage"] = False
            finally:
                cluster.net.heal("b")
            healed = time.monotonic()
            if record.time_to_err_s is None:  # when did it go, if at all (issue 25: after the heal)?
                try:
                    errored = await wait_until(lambda: vol._is("v2-rb", "ERR"), 15, "v2-rb ERR after the heal")
                    record.facts["err_after_heal_s"] = round(errored - healed, 3)
                except TimeoutError:
                    record.facts["err_after_heal_s"] = None
            record.facts["mode_after_heal"] = await vol.mode("v2-rb")
            record.time_to_rebuild_s = round(await vol.rebuild("v2-rb", "b", "v2-rb2"), 3)
            await asyncio.sleep(2)
            report = await loop.stop()
        finally:
            loop.kill()
        host_facts(record, report, fault)
        # Once B is out, the host should go on with C alone: did it, in the
        # outage's last seconds?
        record.facts["host_ios_late_in_outage"] = completions(report, healed - 3, healed)
        record.facts["b_equals_c"] = await vol.same_bytes("v2-rb2", "v2-rc")
        record.facts["b_misses"] = await vol.holds("v2-rb2", report["written"])
    finally:
        await vol.delete()
    return record


async def short_partition(cluster: Cluster) -> Record:
    """B is cut off silently for less than the timeout. Either B stays RW
    and holds every write (B and C compare equal), or it goes ERR: never
    RW with missing writes."""
    record = Record(f"3 short silent partition of B, {SHORT_PARTITION_S} s")
    vol = await volume(cluster, "v3")
    try:
        loop = vol.host(seed=103)
        await loop.start()
        try:
            await asyncio.sleep(3)
            fault = time.monotonic()
            cluster.net.partition("b")
            try:
                await asyncio.sleep(SHORT_PARTITION_S)  # the outage's length is the scenario
            finally:
                cluster.net.heal("b")
            modes_seen: set[str] = set()
            # The host goes on for the length of the loss timeout after the
            # heal: a failure found late (issue 25) shows up in that time.
            end = time.monotonic() + LOSS_TIMEOUT_S
            while time.monotonic() < end:
                mode = await vol.mode("v3-rb")
                modes_seen.add(mode)
                if mode == "ERR" and record.time_to_err_s is None:
                    record.time_to_err_s = round(time.monotonic() - fault, 3)
                await asyncio.sleep(0.2)
            report = await loop.stop()
        finally:
            loop.kill()
        host_facts(record, report, fault)
        record.facts["modes_seen"] = sorted(modes_seen)
        record.facts["b_mode_at_end"] = await vol.mode("v3-rb")
        record.facts["b_equals_c"] = await vol.same_bytes("v3-rb", "v3-rc")
        record.facts["b_misses"] = await vol.holds("v3-rb", report["written"])
        record.facts["c_misses"] = await vol.holds("v3-rc", report["written"])
    finally:
        await vol.delete()
    return record


async def both_partitioned(cluster: Cluster) -> Record:
    """B and C are cut off together: the host gets errors (expected) and the
    engine reports why. After healing nothing is corrupt: one replica holds
    every write the host saw acknowledged, and the other either holds the
    same bytes or is not RW. Longhorn's way back then works: a new engine
    on the replica that holds everything, the other rebuilt fresh, and B
    and C compare equal."""
    record = Record(f"5 both replica nodes partitioned, {LONG_PARTITION_S} s")
    vol = await volume(cluster, "v5")
    try:
        loop = vol.host(seed=105)
        await loop.start()
        try:
            await asyncio.sleep(3)
            fault = time.monotonic()
            cluster.net.partition("b")
            cluster.net.partition("c")
            try:
                failed = await wait_until(lambda: _engine_error(vol), LONG_PARTITION_S, "engine error")
                record.time_to_err_s = round(failed - fault, 3)
                record.facts["engine_error_during_outage"] = True
                record.facts["engine_error_msg"] = (await vol.a.get(vol.engine)).status.error_msg
                await asyncio.sleep(max(0.0, fault + LONG_PARTITION_S - time.monotonic()))
            except TimeoutError:
                record.facts["engine_error_during_outage"] = False
            finally:
                cluster.net.heal("b")
                cluster.net.heal("c")
            await asyncio.sleep(3)  # the host after the heal
            report = await loop.stop()
        finally:
            loop.kill()
        host_facts(record, report, fault)
        record.facts["engine_state_after_heal"] = (await vol.a.get(vol.engine)).status.state
        modes = await vol.modes()
        record.facts["modes_after_heal"] = modes
        misses = {replica: await vol.holds(replica, report["written"]) for replica in ("v5-rb", "v5-rc")}
        record.facts["misses_after_heal"] = misses
        equal = await vol.same_bytes("v5-rb", "v5-rc")
        record.facts["equal_after_heal"] = equal
        holders = [replica for replica, missed in misses.items() if missed == 0]
        stale_rw = [r for r, missed in misses.items() if missed and modes.get(r) == "RW"]
        record.facts["nothing_corrupt"] = bool(holders) and (equal or not stale_rw)
        if not holders:
            return record
        # Longhorn's way back: a new engine on the replica that holds
        # everything, the other one rebuilt fresh from it.
        keep = holders[0]
        other = "v5-rc" if keep == "v5-rb" else "v5-rb"
        await vol.a.delete(vol.engine)
        await wait_until(lambda: Volume._gone(vol.a, vol.engine), 30, "failed engine deleted")
        made = await vol.a.engine(vol.engine, vol.name, vol.size, {keep: vol.replicas[keep]})
        vol.endpoint = made.status.endpoint
        node = vol.homes[other]
        record.time_to_rebuild_s = round(await vol.rebuild(other, node, f"{other}2"), 3)
        record.facts["rebuilt_equal"] = await vol.same_bytes(keep, f"{other}2")
    finally:
        await vol.delete()
    return record


async def _engine_error(vol: Volume) -> bool:
    return bool((await vol.a.get(vol.engine)).status.state == "error")


Scenario = Callable[[Cluster], Awaitable[Record]]
# In the order they run: the loud faults first, then the silent ones.
SCENARIOS: dict[str, Scenario] = {
    "1": across_nodes,
    "4": node_lost,
    "6": engine_node_restart,
    "3": short_partition,
    "2": long_partition,
    "5": both_partitioned,
}


def scenario_by_number(number: str) -> Scenario:
    return SCENARIOS[number]
