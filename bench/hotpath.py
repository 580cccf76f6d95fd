"""bench/hotpath: the I/O hot path, side by side with SPDK's own initiator.

    SPDK_DIR=/path/to/spdk python -m bench.hotpath [--duration 5] [--warmup 1] [--reps 3]

Starts its own ``nvmf_tgt`` on loopback (core 0, no hugepages) with a null
and a malloc bdev, then runs each workload through the tiers, all with the
initiator on core 1:

  (a) perf    ``spdk_nvme_perf``, the reference;
  (b) c       spdk_ffi's C tier: the poller runs the I/O loop itself;
  (c) python  spdk_ffi's Python-visible tier: every I/O submitted and
              awaited from asyncio, in batches (no Python per I/O in C);
              its asyncio thread shares core 1 with its poller;
  (d) fio     fio with SPDK's plugin, when the plugin is built.

Every figure is also given as a ratio to (a) from the same repetition, so
the ratios hold on a noisy machine. Writes bench/results/hotpath.json, a
Markdown table (hotpath.md) and, with the bench extra, hotpath.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.report import RESULTS, environment, markdown_table, pyplot, save, save_figure
from bench.spdkfio import run_spdk_fio

WORKLOADS: list[tuple[str, str, int, int]] = [  # name, bdev, io size, qd
    *((f"4k randread qd{qd}", "null", 4096, qd) for qd in (1, 8, 32, 128)),
    *((f"4k randwrite qd{qd}", "null", 4096, qd) for qd in (1, 8, 32, 128)),
    ("128k read qd8", "null", 128 * 1024, 8),
    ("4k randread qd32 malloc", "malloc", 4096, 32),
]
NQN = {"null": "nqn.2016-06.io.imd:bench-null", "malloc": "nqn.2016-06.io.imd:bench-malloc"}
PORT = {"null": 4520, "malloc": 4521}
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:imd-bench"
PERCENTILES = (50.0, 99.0, 99.9)
INITIATOR_CORE = 1  # every tier's initiator; the target's reactor has core 0
TIERS = ("perf", "c", "python", "fio")
# The target is the tests' own nvmf_tgt fixture (tests/spdk/target.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.spdk.target import Target, spdk_env  # noqa: E402


def pattern(name: str) -> tuple[bool, bool]:
    """(write, sequential) for a workload name."""
    return "write" in name, "rand" not in name


def trid(bdev: str) -> str:
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{PORT[bdev]} subnqn:{NQN[bdev]}"


# -- (a) spdk_nvme_perf ---------------------------------------------------------------


def run_perf(
    prefix: Path, bdev: str, size: int, qd: int, write: bool, seq: bool, dur: float, warm: float
) -> dict[str, Any]:
    workload = ("write" if write else "read") if seq else ("randwrite" if write else "randread")
    cmd = [
        str(prefix / "bin" / "spdk_nvme_perf"), "-c", "0x2", "--no-huge", "-s", "1024",
        "-q", str(qd), "-o", str(size), "-w", workload, "-t", str(int(dur)), "-a", str(int(warm)), "-L",
        "-r", trid(bdev),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=dur + warm + 60, env=spdk_env(prefix), check=False
    ).stdout
    total = re.search(r"^Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    if total is None:
        raise RuntimeError(f"spdk_nvme_perf printed no total:\n{out[-2000:]}")
    cdf = [(float(p), float(us)) for p, us in re.findall(r"^\s*([\d.]+)% :\s*([\d.]+)us", out, re.M)]
    return {
        "iops": float(total.group(1)),
        "mib_s": float(total.group(2)),
        "avg_us": float(total.group(3)),
        **{f"p{q:g}_us": _from_cdf(cdf, q) for q in PERCENTILES},
        "cdf": cdf,
    }


def _from_cdf(cdf: list[tuple[float, float]], q: float) -> float:
    for pct, us in cdf:
        if pct >= q - 1e-9:
            return us
    return float("nan")


# -- (d) fio with SPDK's plugin ----------------------------------------------------------------


def run_fio(
    fio: str, prefix: Path, bdev: str, size: int, qd: int, write: bool, seq: bool, dur: float, warm: float
) -> dict[str, Any]:
    """The same workload through fio's SPDK engine (the job files in
    bench/fio/ spell out the same options)."""
    rw = ("write" if write else "read") if seq else ("randwrite" if write else "randread")
    return run_spdk_fio(
        fio, prefix, port=PORT[bdev], nqn=NQN[bdev], rw=rw, bs=size, qd=qd,
        duration=dur, warmup=warm, cpu=1, name="hotpath",
    )  # fmt: skip


def fio_unavailable(fio: str | None, prefix: Path) -> str | None:
    plugin = prefix / "fio" / "spdk_nvme"
    if not plugin.exists():
        return f"SPDK's fio plugin is not built ({plugin} missing; configure SPDK --with-fio=<fio source>)"
    if not fio:  # None (not on PATH) or --fio "" (skip the fio tier)
        return "no fio binary (put fio on PATH or pass --fio)"
    free = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("HugePages_Free:"):
                free = int(line.split()[1])
    if free == 0:
        return "no free hugepages (SPDK's fio plugin has no no-huge mode; set vm.nr_hugepages)"
    return None


# -- (b) the C tier -----------------------------------------------------------------------


async def run_c(
    native: Any, handle: Any, size: int, qd: int, write: bool, seq: bool, dur: float, warm: float
) -> dict[str, Any]:
    result = await native.bench(handle, qd=qd, io_size=size, write=write, sequential=seq, duration_s=dur, warmup_s=warm)
    return _summary(result.iops, size, result.avg_us, result.histogram_100ns)


def _summary(iops: float, size: int, avg_us: float, hist: list[tuple[int, int]]) -> dict[str, Any]:
    total = sum(n for _, n in hist)
    out: dict[str, Any] = {"iops": iops, "mib_s": iops * size / 2**20, "avg_us": avg_us}
    cdf, seen = [], 0
    for bucket, n in hist:
        seen += n
        cdf.append((seen / total * 100, (bucket + 1) / 10))
    for q in PERCENTILES:
        out[f"p{q:g}_us"] = _from_cdf(cdf, q)
    out["cdf"] = _thin(cdf)
    return out


def _thin(cdf: list[tuple[float, float]], points: int = 400) -> list[tuple[float, float]]:
    step = max(1, len(cdf) // points)
    return cdf[::step] + cdf[-1:]


# -- (c) the Python-visible tier ---------------------------------------------------------------


async def run_python(
    native: Any, handle: Any, ns_blocks: int, size: int, qd: int, write: bool, seq: bool, dur: float, warm: float
) -> dict[str, Any]:
    """QD I/Os kept in flight from asyncio, in lanes of batches of up to 8;
    each batch is submitted and awaited as one request, with every I/O's
    LBA chosen in Python. A lane lays its batch out once (IoBatch) and
    changes the LBAs in place. An I/O's latency is its batch's
    submit-to-completion time."""
    from spdk_ffi.native import DmaBuffer, Io, IoKind

    batch_size = min(8, qd)
    lanes = max(1, qd // batch_size)
    blocks = size // 4096
    kind = IoKind.WRITE if write else IoKind.READ
    lat_100ns: dict[int, int] = {}
    state = {"measuring": False, "done": 0, "lat_sum": 0.0}
    stop_at = [float("inf")]
    cursor = [0]

    async def lane(seed: int) -> None:
        rng = random.Random(seed)
        bufs = [DmaBuffer(size) for _ in range(batch_size)]
        batch = native.io_batch([Io(kind, 1, 0, blocks, b) for b in bufs])
        entries = list(batch.entries)
        try:
            while time.perf_counter() < stop_at[0]:
                for entry in entries:
                    if seq:
                        entry.lba = (cursor[0] * blocks) % (ns_blocks - blocks)
                        cursor[0] += 1
                    else:
                        entry.lba = rng.randrange(ns_blocks // blocks) * blocks
                t0 = time.perf_counter()
                await native.run(handle, batch)
                lat = time.perf_counter() - t0
                if state["measuring"]:
                    bucket = int(lat * 1e7)
                    lat_100ns[bucket] = lat_100ns.get(bucket, 0) + batch_size
                    state["done"] += batch_size
                    state["lat_sum"] += lat * batch_size
        finally:
            for b in bufs:
                b.free()

    # The whole initiator on core 1, as in every other tier: the poller is
    # there by its core mask, and the asyncio thread joins it (the poller
    # yields to it when it makes no progress). Unpinned, the thread also
    # takes time from the target's reactor on core 0, which slows the target
    # and gives this tier more than the one core the others get.
    saved_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {INITIATOR_CORE})
    try:
        tasks = [asyncio.ensure_future(lane(i)) for i in range(lanes)]
        await asyncio.sleep(warm)
        state["measuring"] = True
        started = time.perf_counter()
        stop_at[0] = started + dur
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    finally:
        os.sched_setaffinity(0, saved_affinity)
    done = int(state["done"])
    return _summary(done / elapsed, size, state["lat_sum"] / max(done, 1) * 1e6, sorted(lat_100ns.items()))


# -- the run ---------------------------------------------------------------------------------------


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--fio", default=shutil.which("fio"), help='fio binary for tier (d); --fio "" skips it')
    args = parser.parse_args()

    from tests.spdk.target import skip_reason, spdk_prefix

    missing = skip_reason()
    if missing is not None:
        print(f"bench/hotpath needs SPDK: {missing}")
        return 2
    prefix = spdk_prefix()
    assert prefix is not None
    fio_missing = fio_unavailable(args.fio, prefix)

    import spdk_ffi
    from spdk_ffi import ControllerOpts, Initiator

    workdir = Path(tempfile.mkdtemp(prefix="imd-hotpath-"))
    layout = [
        (NQN["null"], "null", "Null0", 1 << 18, [PORT["null"]]),
        (NQN["malloc"], "malloc", "Malloc0", 1 << 16, [PORT["malloc"]]),
    ]
    target = Target(workdir, layout, mem_size_mb=1024)
    native = spdk_ffi.native_backend(core_mask="0x2", mem_size_mb=1024, no_huge=True)
    ini = Initiator(native)
    opts = ControllerOpts(io_queue_size=256, io_queue_requests=1024)
    results: list[dict[str, Any]] = []
    try:
        for bdev in ("null", "malloc"):
            info = await ini.attach(bdev, [f"TCP/IPv4/127.0.0.1/{PORT[bdev]}/{NQN[bdev]}"], HOSTNQN, opts)
            ns_blocks = info.info.namespaces[0].size_bytes // 4096
            for name, wl_bdev, size, qd in WORKLOADS:
                if wl_bdev != bdev or (args.only and args.only not in name):
                    continue
                write, seq = pattern(name)
                reps: list[dict[str, Any]] = []
                for rep in range(args.reps):
                    row: dict[str, Any] = {}
                    row["perf"] = await asyncio.to_thread(
                        run_perf, prefix, bdev, size, qd, write, seq, args.duration, args.warmup
                    )
                    row["c"] = await run_c(native, ini.handle(bdev), size, qd, write, seq, args.duration, args.warmup)
                    row["python"] = await run_python(
                        native, ini.handle(bdev), ns_blocks, size, qd, write, seq, args.duration, args.warmup
                    )
                    if fio_missing is None:
                        row["fio"] = await asyncio.to_thread(
                            run_fio, args.fio, prefix, bdev, size, qd, write, seq, args.duration, args.warmup
                        )
                    for tier in TIERS[1:]:
                        if tier not in row:
                            continue
                        row[tier]["iops_ratio"] = row[tier]["iops"] / row["perf"]["iops"]
                        row[tier]["p50_delta_us"] = row[tier]["p50_us"] - row["perf"]["p50_us"]
                    reps.append(row)
                    print(f"{name} rep {rep + 1}: " + ", ".join(f"{t} {row[t]['iops']:.0f}" for t in row), flush=True)
                results.append({"workload": name, "bdev": bdev, "io_size": size, "qd": qd, "reps": reps})
            await ini.detach(bdev)
    finally:
        target.close()

    rows = []
    for r in results:
        for tier in TIERS:
            if tier not in r["reps"][0]:
                continue
            reps = [rep[tier] for rep in r["reps"]]
            iops = [x["iops"] for x in reps]
            med = statistics.median(iops)
            row = {
                "workload": r["workload"],
                "tier": tier,
                "IOPS (median)": f"{med:,.0f}",
                "spread": f"{min(iops):,.0f} to {max(iops):,.0f}",
                "MiB/s": f"{statistics.median(x['mib_s'] for x in reps):,.1f}",
                "avg µs": f"{statistics.median(x['avg_us'] for x in reps):.1f}",
                "p50 µs": f"{statistics.median(x['p50_us'] for x in reps):.1f}",
                "p99 µs": f"{statistics.median(x['p99_us'] for x in reps):.1f}",
                "p99.9 µs": f"{statistics.median(x['p99.9_us'] for x in reps):.1f}",
                "x perf": "1.00" if tier == "perf" else f"{statistics.median(x['iops_ratio'] for x in reps):.2f}",
            }
            rows.append(row)
    table = markdown_table(rows, list(rows[0]))
    targets = _targets(results)
    notes = [f"fio tier: {'skipped: ' + fio_missing if fio_missing else 'run (see the fio rows)'}", *targets]
    print(table)
    print("\n".join(notes))
    stamp = environment()
    save("hotpath", {"benchmark": "hotpath", "env": stamp, "args": vars(args), "results": results, "notes": notes})
    (RESULTS / "hotpath.md").write_text(
        f"# bench/hotpath, {stamp['date']}\n\n`{' '.join(['python -m bench.hotpath', *sys.argv[1:]])}`\n\n{table}\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    _plot(results)
    return 0


def _targets(results: list[dict[str, Any]]) -> list[str]:
    def med(name: str, tier: str, key: str) -> float | None:
        for r in results:
            if r["workload"] == name:
                return float(statistics.median(rep[tier][key] for rep in r["reps"]))
        return None

    lines = []
    for qd in (32, 128):
        ratio = med(f"4k randread qd{qd}", "c", "iops_ratio")
        if ratio is not None:
            lines.append(
                f"target C tier >= 0.95 x perf at QD{qd}: {ratio:.2f} ({'met' if ratio >= 0.95 else 'MISSED'})"
            )
    for qd in (32, 128):  # issue 10
        ratio = med(f"4k randread qd{qd}", "python", "iops_ratio")
        if ratio is not None:
            lines.append(
                f"target Python tier >= 0.60 x perf at QD{qd}: {ratio:.2f} ({'met' if ratio >= 0.60 else 'MISSED'})"
            )
    delta = med("4k randread qd1", "python", "p50_delta_us")
    if delta is not None:
        lines.append(
            f"target QD1 p50 within +15 us of perf (Python tier): {delta:+.1f} us "
            f"({'met' if delta <= 15 else 'MISSED'})"
        )
    delta = med("4k randread qd1", "c", "p50_delta_us")
    if delta is not None:
        lines.append(
            f"target QD1 p50 within +5 us of perf (C tier): {delta:+.1f} us ({'met' if delta <= 5 else 'MISSED'})"
        )
    return lines


def _plot(results: list[dict[str, Any]]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for tier in TIERS:
        if not results or tier not in results[0]["reps"][0]:
            continue
        points = [
            (r["qd"], statistics.median(rep[tier]["iops"] for rep in r["reps"]))
            for r in results
            if r["workload"].startswith("4k randread qd") and r["bdev"] == "null"
        ]
        if points:
            left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=tier)
        qd1 = next((r for r in results if r["workload"] == "4k randread qd1"), None)
        if qd1:
            cdf = qd1["reps"][0][tier]["cdf"]
            right.plot([us for _, us in cdf], [pct for pct, _ in cdf], label=tier)
    left.set(xscale="log", xlabel="queue depth", ylabel="IOPS", title="4 KiB randread, null bdev")
    right.set(xscale="log", xlabel="latency (µs)", ylabel="percentile", title="latency CDF at QD1")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend()
    path = save_figure(plt, fig, RESULTS / "hotpath.png")
    print(f"plot {path}")


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
