"""bench/snapshots: V2 snapshots through a real imd (issue 19).

    SPDK_DIR=/path/to/spdk python -m bench.snapshots [--only pause,hash,clone,rebuild] [--reps 3]

A real imd with V2 (tests/v2's configuration: its supervised nvmf_tgt on
core 0, its engine core on core 1), replicas on a sparse file in
``--disk-dir``, engines over two replicas on this node.

* **pause**: a separate host process (bench/v2proc.py's ``loop``: 4 KiB
  random writes at ``--host-qd``, and reads of blocks it wrote before,
  verified; mostly writes) works through the engine's export while
  VolumeSnapshot is called every ``--interval`` s. For each snapshot, the
  longest pause between two host completions that overlaps the call (the
  host records every pause of 1 ms or more); and, as a control, the longest
  pause in a window of the same length halfway between two snapshots. The
  issue's goal: p99 of the pause <= 20 ms. The host writes within its first
  ``--span-mib`` (each snapshot keeps what it overwrote: 40 snapshots of a
  whole 1 GiB would not fit); the volume was filled with data first.
* **hash**: SnapshotHash (``rehash``) of a snapshot of the ``--volume-mib``
  volume the host has just written, timed from the call to both replicas'
  status ``complete`` (polled every 20 ms); both replicas hash at once on
  this node, each in the daemon's C core, uncapped.
* **clone**: SnapshotClone of that snapshot onto a new engine's two empty
  replicas (copied one after the other, in the daemon's C core), timed to
  both ``complete``.
* **rebuild**: a ``--rebuild-mib`` volume, written by the host for
  ``--write-s`` seconds with 0 or 5 snapshots taken evenly during that time
  (alternating, fresh replicas each time), then ReplicaAdd of a third
  replica, timed to RW; the bytes the new replica holds afterwards (read
  from the lvstore's metadata: head and snapshots; all-zero chunks are not
  written) next to the source's. ``rebuild_rate_mib_s = 0`` (no cap).

Writes bench/results/<label>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import RESULTS, environment, markdown_table, median, pyplot, save_figure, summary_ms, write_results
from bench.spdknode import MIB, missing
from bench.v2ops import Host, Node, longest_gap


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def proxy_req(engine: str) -> Any:
    from imd.api.gen.imrpc import common_pb2
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    return ppb.ProxyEngineRequest(engine_name=engine, data_engine=common_pb2.DATA_ENGINE_V2)


async def take(node: Node, engine: str, name: str) -> None:
    from imd.api.gen.imrpc import proxy_pb2 as ppb
    from imd.api.gen.ptypes import controller_pb2 as ctl

    await node.proxy.VolumeSnapshot(
        ppb.EngineVolumeSnapshotRequest(
            proxy_engine_request=proxy_req(engine), snapshot_volume=ctl.VolumeSnapshotRequest(name=name)
        )
    )


async def until(predicate: Any, timeout: float, poll: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(poll)


async def fill(path: str, size: int) -> None:
    """Data in every block of the volume (tests/v2/host.py, 1 MiB writes):
    a hash or a clone of a thin, empty volume would read mostly holes."""
    from tests.v2.test_v2_engine_spdk import host

    report = await host(cmd="write", path=path, seed=3, lbas=list(range(0, size // 4096, 256)), nblocks=256)
    if report["mismatches"]:
        raise RuntimeError(f"fill: {report}")


# -- pause, hash, clone: one volume ----------------------------------------------------------------


async def pause_hash_clone(args: argparse.Namespace, node: Node, only: list[str]) -> dict[str, Any]:
    size = args.volume_mib * MIB
    path = await node.start_mirrored(size)
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    await fill(path, size)
    out["fill_s"] = round(time.monotonic() - t0, 1)
    print(f"filled {size // MIB} MiB in {out['fill_s']} s", flush=True)
    host = Host(path, seed=7, qd=args.host_qd)
    host.spec["gap_ms"] = 1
    host.spec["span"] = args.span_mib * MIB // 4096
    await host.start()
    await asyncio.sleep(args.warmup)  # the host's steady state, before the first snapshot
    marks: list[tuple[float, float]] = []
    load_pause = load()
    count = args.snapshots if "pause" in only else 1
    for i in range(count):
        t0 = time.monotonic()
        await take(node, "e1", f"p{i}")
        t1 = time.monotonic()
        marks.append((t0, t1))
        await asyncio.sleep(max(0.0, args.interval - (t1 - t0)))
    report = await host.stop()
    pauses = [longest_gap(report, t0, t1) for t0, t1 in marks]
    controls = []
    for (t0, t1), (n0, _) in itertools.pairwise(marks):
        mid = (t1 + n0) / 2  # halfway between this snapshot's end and the next's start
        controls.append(longest_gap(report, mid - (t1 - t0) / 2, mid + (t1 - t0) / 2))
    calls = [t1 - t0 for t0, t1 in marks]
    if "pause" in only:
        out["pause"] = {
            "load": load_pause,
            "host_qd": args.host_qd,
            "interval_s": args.interval,
            "pause_during_snapshot": summary_ms(pauses, digits=2),
            "pause_control": summary_ms(controls, digits=2),
            "volume_snapshot_call": summary_ms(calls, digits=2),
            "host": {k: report[k] for k in ("writes", "reads", "errors", "mismatches", "errors_seen")},
            "pauses_ms": [round(p * 1e3, 3) for p in pauses],
            "controls_ms": [round(p * 1e3, 3) for p in controls],
        }
        print(f"pause: {out['pause']['pause_during_snapshot']} control {out['pause']['pause_control']}", flush=True)
    # The host has written the volume at random; its last snapshot holds that.
    last = f"p{count - 1}"
    if "hash" in only:
        out["hash"] = await hash_bench(args, node, last, size)
    if "clone" in only:
        out["clone"] = await clone_bench(args, node, last, size)
    return out


async def hash_bench(args: argparse.Namespace, node: Node, snapshot: str, size: int) -> list[dict[str, Any]]:
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    listed = (await node.proxy.SnapshotList(proxy_req("e1"))).disks
    allocated = int(listed[snapshot].size)
    status_req = ppb.EngineSnapshotHashStatusRequest(proxy_engine_request=proxy_req("e1"), snapshot_name=snapshot)
    rows = []
    for rep in range(args.reps):
        t0 = time.monotonic()
        await node.proxy.SnapshotHash(
            ppb.EngineSnapshotHashRequest(proxy_engine_request=proxy_req("e1"), snapshot_name=snapshot, rehash=True)
        )

        async def done() -> bool:
            status = (await node.proxy.SnapshotHashStatus(status_req)).status
            if any(s.state == "error" for s in status.values()):
                raise RuntimeError(f"hash failed: {status}")
            return len(status) == 2 and all(s.state == "complete" for s in status.values())

        await until(done, 600)
        seconds = time.monotonic() - t0
        checksums = {s.checksum for s in (await node.proxy.SnapshotHashStatus(status_req)).status.values()}
        row = {
            "rep": rep + 1,
            "volume_mib": size // MIB,
            "allocated_mib": round(allocated / MIB, 1),
            "seconds": round(seconds, 3),
            "mib_s_per_replica": round(size / MIB / seconds, 1),
            "mib_s_both": round(2 * size / MIB / seconds, 1),
            "replicas_agree": len(checksums) == 1,
            "load": load(),
        }
        rows.append(row)
        print(f"hash: {row}", flush=True)
    return rows


async def clone_bench(args: argparse.Namespace, node: Node, snapshot: str, size: int) -> list[dict[str, Any]]:
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    rows = []
    for rep in range(args.reps):
        a, b, engine = f"c{rep}a", f"c{rep}b", f"ec{rep}"
        await node.replica(a, size)
        await node.replica(b, size)
        await node.engine(engine, [a, b], size)
        request = ppb.EngineSnapshotCloneRequest(
            proxy_engine_request=proxy_req(engine),
            snapshot_name=snapshot,
            from_engine_name="e1",
            from_engine_address=f"127.0.0.1:{node.daemon.base_port}",
        )
        t0 = time.monotonic()
        await node.proxy.SnapshotClone(request)

        async def done(engine: str = engine) -> bool:
            status = (await node.proxy.SnapshotCloneStatus(proxy_req(engine))).status
            if any(s.state == "error" for s in status.values()):
                raise RuntimeError(f"clone failed: {status}")
            return len(status) == 2 and all(s.state == "complete" for s in status.values())

        await until(done, 900)
        seconds = time.monotonic() - t0
        row = {
            "rep": rep + 1,
            "volume_mib": size // MIB,
            "seconds": round(seconds, 3),
            "mib_s_volume": round(size / MIB / seconds, 1),
            "mib_s_written": round(2 * size / MIB / seconds, 1),
            "load": load(),
        }
        rows.append(row)
        print(f"clone: {row}", flush=True)
        await delete(node, engine)
        for replica in (a, b):
            await delete(node, replica)
    return rows


async def delete(node: Node, name: str) -> None:
    from google.protobuf.empty_pb2 import Empty

    from imd.api.gen.imrpc import common_pb2
    from imd.api.gen.imrpc import instance_pb2 as inst

    request = inst.InstanceDeleteRequest(name=name, data_engine=common_pb2.DATA_ENGINE_V2, cleanup_required=True)
    await node.stub.InstanceDelete(request)

    async def gone() -> bool:
        return name not in (await node.stub.InstanceList(Empty())).instances

    await until(gone, 120, 0.1)


# -- rebuild with 0 and 5 snapshots --------------------------------------------------------------------


def held_bytes(disk: Path, replica: str, snapshots: list[str]) -> int:
    from imd.edges.blobstore_md import read_allocation
    from imd.v2.chains import lvol_name_of

    blobs = read_allocation(disk).by_name()
    names = [replica, *(lvol_name_of(replica, s) for s in snapshots)]
    return sum(blobs[n].allocated_bytes or 0 for n in names if n in blobs)


async def rebuild_bench(args: argparse.Namespace, node: Node) -> list[dict[str, Any]]:
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    size = args.rebuild_mib * MIB
    rows = []
    for rep in range(args.reps):
        for nsnap in (0, 5):  # alternated, so that the load hits both alike
            tag = f"b{rep}s{nsnap}"
            r1, r2, r3, engine = f"{tag}r1", f"{tag}r2", f"{tag}r3", f"{tag}e"
            await node.replica(r1, size)
            await node.replica(r2, size)
            path = await node.engine(engine, [r1, r2], size)
            host = Host(path, seed=100 + rep, qd=args.host_qd)
            await host.start()
            snaps = []
            step = args.write_s / (nsnap + 1)
            for i in range(nsnap):
                await asyncio.sleep(step)  # the host writes between snapshots
                await take(node, engine, f"{tag}-{i}")
                snaps.append(f"{tag}-{i}")
            await asyncio.sleep(step)
            await host.stop()
            await node.replica(r3, size)
            t0 = time.monotonic()
            await node.proxy.ReplicaAdd(
                ppb.EngineReplicaAddRequest(
                    proxy_engine_request=proxy_req(engine),
                    replica_name=r3,
                    replica_address=f"127.0.0.1:{node.ports[r3]}",
                )
            )

            async def rebuilt(engine: str = engine, r3: str = r3) -> bool:
                modes = await node.modes(engine)
                if modes.get(r3) == "ERR":
                    raise RuntimeError(f"rebuild failed: {modes}")
                return modes.get(r3) == "RW"

            await until(rebuilt, 900, 0.05)
            seconds = time.monotonic() - t0
            new, source = held_bytes(node.disk, r3, snaps), held_bytes(node.disk, r1, snaps)
            row = {
                "rep": rep + 1,
                "snapshots": nsnap,
                "volume_mib": size // MIB,
                "seconds": round(seconds, 3),
                "new_replica_mib": round(new / MIB, 1),
                "source_replica_mib": round(source / MIB, 1),
                "ratio": round(new / source, 3) if source else float("nan"),
                "load": load(),
            }
            rows.append(row)
            print(f"rebuild: {row}", flush=True)
            await delete(node, engine)
            for replica in (r1, r2, r3):
                await delete(node, replica)
    return rows


# -- report ------------------------------------------------------------------------------------------


def report(data: dict[str, Any]) -> str:
    parts = []
    pause = data.get("pause")
    if pause:
        rows = [
            {"window": "during VolumeSnapshot", **pause["pause_during_snapshot"]},
            {"window": "control (between snapshots)", **pause["pause_control"]},
            {"window": "VolumeSnapshot call itself", **pause["volume_snapshot_call"]},
        ]
        parts.append(
            f"### Host's longest completion gap (4 KiB random writes, QD{pause['host_qd']}, "
            f"a snapshot every {pause['interval_s']} s, two replicas on this node; load {pause['load']})\n\n"
            + markdown_table(rows, ("window", "p50_ms", "p99_ms", "max_ms", "count"))
            + f"\n\nhost: {pause['host']}"
        )
    if data.get("hash"):
        parts.append(
            "### SnapshotHash (rehash, both replicas at once)\n\n"
            + markdown_table(
                data["hash"],
                (
                    "rep",
                    "volume_mib",
                    "allocated_mib",
                    "seconds",
                    "mib_s_per_replica",
                    "mib_s_both",
                    "replicas_agree",
                    "load",
                ),
            )
        )
    if data.get("clone"):
        parts.append(
            "### SnapshotClone (full copy onto two empty replicas)\n\n"
            + markdown_table(data["clone"], ("rep", "volume_mib", "seconds", "mib_s_volume", "mib_s_written", "load"))
        )
    if data.get("rebuild"):
        rows = data["rebuild"]
        by = {n: [r for r in rows if r["snapshots"] == n] for n in (0, 5)}
        summary_rows = [
            {
                "snapshots": n,
                "median_s": round(median([r["seconds"] for r in rs]), 3),
                "median_new_mib": round(median([r["new_replica_mib"] for r in rs]), 1),
                "median_source_mib": round(median([r["source_replica_mib"] for r in rs]), 1),
            }
            for n, rs in by.items()
            if rs
        ]
        parts.append(
            "### Rebuild (ReplicaAdd to RW) with 0 vs 5 snapshots\n\n"
            + markdown_table(
                rows,
                ("rep", "snapshots", "volume_mib", "seconds", "new_replica_mib", "source_replica_mib", "ratio", "load"),
            )
            + "\n\n"
            + markdown_table(summary_rows, ("snapshots", "median_s", "median_new_mib", "median_source_mib"))
        )
    return "\n\n".join(parts)


def plot(label: str, data: dict[str, Any]) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    pause = data.get("pause")
    if pause:
        ax = axes[0]
        ax.plot(pause["pauses_ms"], marker="o", linestyle="", label="during VolumeSnapshot")
        ax.plot(pause["controls_ms"], marker="x", linestyle="", label="control, between snapshots")
        ax.axhline(20, color="gray", linestyle="--", label="goal p99 20 ms")
        ax.set(xlabel="snapshot #", ylabel="host's longest completion gap, ms", title="write pause")
        ax.legend(fontsize=8)
    ax = axes[1]
    bars = []
    for key, label_, col in (
        ("hash", "hash (per replica)", "mib_s_per_replica"),
        ("clone", "clone (volume)", "mib_s_volume"),
    ):
        for row in data.get(key, []):
            bars.append((f"{label_} {row['rep']}", row[col]))
    ax.bar([b[0] for b in bars], [b[1] for b in bars])
    ax.set(ylabel="MiB/s", title="SnapshotHash / SnapshotClone")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax = axes[2]
    for n, marker in ((0, "o"), (5, "^")):
        rows = [r for r in data.get("rebuild", []) if r["snapshots"] == n]
        ax.plot([r["rep"] for r in rows], [r["seconds"] for r in rows], marker=marker, label=f"{n} snapshots")
    ax.set(xlabel="repetition", ylabel="s", title="rebuild to RW")
    if data.get("rebuild"):
        ax.legend(fontsize=8)
    for a in axes:
        a.grid(True, alpha=0.3)
    return save_figure(plt, fig, RESULTS / f"{label}.png")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="pause,hash,clone,rebuild")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--volume-mib", type=int, default=1024, help="pause, hash and clone's volume")
    parser.add_argument("--snapshots", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--warmup", type=float, default=10.0, help="host writing before the first snapshot")
    parser.add_argument("--host-qd", type=int, default=8)
    parser.add_argument(
        "--span-mib", type=int, default=16, help="pause: where the host writes (each snapshot keeps it)"
    )
    parser.add_argument("--rebuild-mib", type=int, default=256)
    parser.add_argument("--write-s", type=float, default=6.0, help="rebuild: the host's writing before ReplicaAdd")
    parser.add_argument("--disk-dir", default="/dev/shm", help="where the disk's sparse file lives")
    parser.add_argument("--label", default="snapshots")
    args = parser.parse_args()

    reason = missing(("nvmf_tgt",))
    if reason is not None:
        print(f"bench/snapshots needs SPDK: {reason}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="imd-bench-snapshots-"))
    only = args.only.split(",")
    data: dict[str, Any] = {"benchmark": "snapshots", "env": environment(), "args": vars(args), "load_start": load()}
    data["command"] = " ".join(["python -m bench.snapshots", *sys.argv[1:]])
    node = Node(work / "node", Path(args.disk_dir), v2={"rebuild_rate_mib_s": 0})
    try:
        if {"pause", "hash", "clone"} & set(only):
            data.update(await pause_hash_clone(args, node, only))
        else:
            await node.start()
        if "rebuild" in only:
            data["rebuild"] = await rebuild_bench(args, node)
    finally:
        await node.close()
    data["load_end"] = load()
    md = report(data)
    print(md)
    header = f"# bench/snapshots, {data['env']['date']}\n\n`{data['command']}`\n\n"
    header += f"load average {data['load_start']} -> {data['load_end']}\n\n"
    write_results(args.label, data, header + md + "\n")
    path = plot(args.label, data)
    if path:
        print(f"plot {path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
