"""fio with SPDK's NVMe plugin against one NVMe-oF/TCP subsystem on
loopback, and its JSON result reduced to what the benchmarks report. One
place for the command line and its parsing (bench/hotpath and
bench/engine both run it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.spdk.target import spdk_env


def run_spdk_fio(
    fio: str,
    prefix: Path,
    *,
    port: int,
    nqn: str,
    rw: str,
    bs: int,
    qd: int,
    duration: float,
    warmup: float,
    cpu: int,
    name: str = "bench",
    mem_size_mb: int | None = None,
) -> dict[str, Any]:
    escaped = nqn.replace(":", "\\:")  # fio splits file names on ':'
    cmd = [
        fio, "--output-format=json", f"--name={name}", "--ioengine=spdk", "--thread=1", "--direct=1",
        "--time_based=1", f"--runtime={int(duration * 1000)}ms", f"--ramp_time={int(warmup * 1000)}ms",
        "--norandommap=1", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", f"--cpus_allowed={cpu}",
        "--percentile_list=50:99:99.9",
        *([f"--mem_size_mb={mem_size_mb}"] if mem_size_mb else []),
        f"--filename=trtype=TCP adrfam=IPv4 traddr=127.0.0.1 trsvcid={port} subnqn={escaped} ns=1",
    ]  # fmt: skip
    env = {**spdk_env(prefix), "LD_PRELOAD": str(prefix / "fio" / "spdk_nvme")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 90, env=env, check=False)
    try:
        job = json.loads(proc.stdout[proc.stdout.index("{") :])["jobs"][0]["write" if "write" in rw else "read"]
    except (ValueError, KeyError, IndexError) as exc:
        raise RuntimeError(f"fio failed: {proc.stdout[-1000:]}{proc.stderr[-2000:]}") from exc
    clat = job["clat_ns"]
    pct = clat.get("percentile", {})
    return {
        "iops": job["iops"],
        "mib_s": job["bw"] / 1024,
        "avg_us": clat["mean"] / 1000,
        "max_us": clat["max"] / 1000,
        "p50_us": pct.get("50.000000", float("nan")) / 1000,
        "p99_us": pct.get("99.000000", float("nan")) / 1000,
        "p99.9_us": pct.get("99.900000", float("nan")) / 1000,
        "cdf": [(float(q), ns / 1000) for q, ns in sorted(pct.items(), key=lambda kv: float(kv[0]))],
    }
