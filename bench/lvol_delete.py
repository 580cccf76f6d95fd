"""bench/lvol_delete: what clearing a replica's clusters costs its delete.

    SPDK_DIR=/path/to/spdk python -m bench.lvol_delete [--size-mib 1024] [--reps 3]

A replica's lvol on an AIO disk (nvmf_tgt on core 0, a sparse file, 1 MiB
clusters, as imd makes them) is filled end to end by spdk_nvme_perf
(sequential 128 KiB writes over NVMe-oF/TCP, until every cluster is
allocated), then ``bdev_lvol_delete`` is timed from the RPC's send to its
answer. Two clear methods, alternated rep by rep so that the machine's load
hits both alike: ``unmap`` (SPDK's default, a no-op on an AIO bdev: what imd
did before) and ``write_zeroes`` (what imd's replicas use now: the bdev layer
writes zero buffers over every allocated cluster before the delete answers).
Writes bench/results/lvol_delete.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import RESULTS, environment, markdown_table, save
from bench.spdknode import MIB, ReplicaTarget, missing, nqn, run_perf

METHODS = ("unmap", "write_zeroes")


def allocated(target: ReplicaTarget, name: str) -> int:
    """Clusters in use on the disk (``name`` is its only lvol; SPDK v24.01
    reports no per-lvol allocation)."""
    (lvs,) = target.rpc.call("bdev_lvol_get_lvstores", lvs_name="disk")
    return int(lvs["total_data_clusters"]) - int(lvs["free_clusters"])


def fill(target: ReplicaTarget, name: str, size: int) -> None:
    """Every cluster of ``name`` written. perf runs by time and its
    sequential writes start at block 0 each run: twice as long each try."""
    for attempt in range(6):
        run_perf(
            target.ports[name], nqn(name), qd=16, io_size=128 << 10, workload="write",
            duration=4 << attempt, warmup=0, core_mask="0x2",
        )  # fmt: skip
        if allocated(target, name) * MIB >= size:
            return
    raise RuntimeError(f"{name}: {allocated(target, name)} clusters after 6 runs of perf")


def one(target: ReplicaTarget, name: str, size: int, method: str) -> float:
    target.add(name, size, clear_method=method)
    fill(target, name, size)
    target.rpc.call("nvmf_delete_subsystem", nqn=nqn(name))
    began = time.monotonic()
    target.rpc.call("bdev_lvol_delete", name=f"disk/{name}")
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--disk-dir", default=str(Path.home()), help="where the disk's sparse file goes")
    args = parser.parse_args()
    reason = missing(("nvmf_tgt", "spdk_nvme_perf"))
    if reason:
        raise SystemExit(f"skipped: {reason}")
    size = args.size_mib * MIB
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="imd-bench-del-") as work:
        target = ReplicaTarget(
            Path(work), kind="lvol", size=size, base_port=4600, disk_dir=Path(args.disk_dir), disk_size=size + 64 * MIB
        )
        try:
            for rep in range(args.reps):
                order = METHODS if rep % 2 == 0 else METHODS[::-1]
                for method in order:
                    took = one(target, f"r{rep}{method[0]}", size, method)
                    times[method].append(took)
                    print(f"rep {rep} {method}: delete {took:.3f} s", flush=True)
        finally:
            target.close()
    load_after = os.getloadavg()
    rows: list[dict[str, Any]] = [
        {
            "clear_method": m,
            "delete_s (each)": ", ".join(f"{t:.3f}" for t in times[m]),
            "median_s": f"{sorted(times[m])[len(times[m]) // 2]:.3f}",
            "GiB/s cleared": f"{size / (1 << 30) / sorted(times[m])[len(times[m]) // 2]:.2f}" if m != "unmap" else "-",
        }
        for m in METHODS
    ]
    table = markdown_table(rows, ["clear_method", "delete_s (each)", "median_s", "GiB/s cleared"])
    load = f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    print(f"\n{args.size_mib} MiB replica, fully allocated, on an AIO disk; {load}\n\n{table}")
    loads = [load_before, load_after]
    save("lvol_delete", {"env": environment(), "size_mib": args.size_mib, "load": loads, "times": times})
    (RESULTS / "lvol_delete.md").write_text(f"{args.size_mib} MiB, fully allocated; {load}\n\n{table}\n")


if __name__ == "__main__":
    main()
