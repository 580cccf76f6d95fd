"""Shared pieces of the V2 data-path benchmarks (bench.engine, bench.v2ops).

* ``CpuWatch``: how much CPU processes outside this benchmark used during a
  measurement (the machine is shared), and a wait for a quiet machine.
* ``SpdkApp``: an SPDK application (nvmf_tgt, bdevperf) started with
  ``--no-huge --disable-cpumask-locks`` and a short RPC socket path in /tmp,
  so that it coexists with other engineers' targets.
* ``ReplicaTarget``: the replicas' nvmf_tgt on core 0, holding thin lvols on
  an AIO bdev over a sparse file (what imd's disks and replicas are), or
  null bdevs; each replica is its own subsystem on its own port.
* ``RaidTarget``: nvmf_tgt exporting raid1 over bdev_nvme controllers (the
  reference engine: Longhorn's V2 data path with an NVMe-oF frontend).
* runners for ``bdevperf`` (with ``-z``: a warm-up run, then the measured
  run, in one process), ``spdk_nvme_perf`` and fio with SPDK's plugin.

Nothing here imports spdk_ffi: callers check ``missing()`` first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.spdkfio import run_spdk_fio
from tests.spdk.target import JsonRpc, spdk_env, spdk_prefix

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:imd-bench"
PERCENTILES = (50.0, 99.0, 99.9)
MIB = 1 << 20


def nqn(name: str) -> str:
    return f"nqn.2016-06.io.imd:bench-{name}"


def missing(tools: Sequence[str] = ("nvmf_tgt",)) -> str | None:
    """Why the V2 benchmarks cannot run here (None: they can)."""
    from tests.spdk.target import skip_reason

    reason = skip_reason()
    if reason is not None:
        return reason
    prefix = spdk_prefix()
    assert prefix is not None
    for tool in tools:
        if not (prefix / "bin" / tool).exists():
            return f"no {tool} under {prefix}/bin (build SPDK with its examples and apps)"
    return None


def prefix() -> Path:
    found = spdk_prefix()
    if found is None:
        raise RuntimeError("SPDK not found (set SPDK_DIR)")
    return found


def short_socket(tag: str) -> str:
    """A Unix socket path short enough for sun_path (108 bytes)."""
    return f"/tmp/imd-bench-{tag}-{uuid.uuid4().hex[:8]}.sock"


# -- the shared machine ----------------------------------------------------------------


def _proc_times(pid: int) -> tuple[int, int, int]:
    """(ppid, utime+stime, cutime+cstime) in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


class CpuWatch:
    """CPU time used outside this benchmark's process tree: other
    engineers' runs on the same two cores. ``start``/``stop`` bracket a
    measurement and give the average number of cores used by others."""

    def __init__(self) -> None:
        self.root = os.getpid()
        self.hz = os.sysconf("SC_CLK_TCK")
        self._t0 = self._busy0 = self._ours0 = 0.0

    def _sample(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        busy = sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait
        procs: dict[int, tuple[int, int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    procs[int(entry)] = _proc_times(int(entry))
        ours_pids = {self.root}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in ours_pids and pid not in ours_pids:
                    ours_pids.add(pid)
                    changed = True
        ours = sum(procs[p][1] for p in ours_pids if p in procs)
        if self.root in procs:
            ours += procs[self.root][2]  # reaped children (perf, bdevperf, fio)
        return time.monotonic(), busy / self.hz, ours / self.hz

    def start(self) -> None:
        self._t0, self._busy0, self._ours0 = self._sample()

    def stop(self) -> float:
        t, busy, ours = self._sample()
        return max(0.0, ((busy - self._busy0) - (ours - self._ours0)) / max(t - self._t0, 1e-6))

    def wait_quiet(self, threshold: float, timeout: float, window: float = 1.0) -> float:
        """Wait (up to ``timeout``) until others used less than ``threshold``
        cores over ``window`` seconds; returns the last figure seen."""
        deadline = time.monotonic() + timeout
        while True:
            self.start()
            time.sleep(window)
            load = self.stop()
            if load < threshold or time.monotonic() >= deadline:
                return load


# -- SPDK applications ---------------------------------------------------------------------


class SpdkApp:
    """An SPDK application on ``core_mask`` without hugepages, with its RPC."""

    def __init__(
        self, binary: str, core_mask: str, mem_mb: int, workdir: Path, tag: str, extra: Sequence[str] = ()
    ) -> None:
        self.rpc_path = short_socket(tag)
        self.log = workdir / f"{tag}.log"
        self.cmd = [
            str(prefix() / "bin" / binary), "-m", core_mask, "--no-huge", "-s", str(mem_mb),
            "-r", self.rpc_path, "--disable-cpumask-locks", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=spdk_env(prefix())
        )
        self.rpc = JsonRpc(self.rpc_path)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.rpc.call("spdk_get_version")
                break
            except (OSError, ConnectionError, RuntimeError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"{binary} did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.05)

    def close(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.rpc_path)


def listener(port: int) -> dict[str, str]:
    return {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}


class ReplicaTarget(SpdkApp):
    """The replicas' nvmf_tgt. ``kind`` "lvol": one AIO bdev over a sparse
    file in ``disk_dir`` with an lvstore (1 MiB clusters, as imd makes them),
    and a thin lvol per replica, as imd's disk and replica services create
    them; "null": a null bdev per replica. Replica ``name`` is subsystem
    ``nqn(name)`` on its own port, any host allowed."""

    def __init__(
        self,
        workdir: Path,
        *,
        kind: str,
        size: int,
        base_port: int,
        disk_dir: Path,
        disk_size: int,
        core_mask: str = "0x1",
        mem_mb: int = 2048,
    ) -> None:
        super().__init__("nvmf_tgt", core_mask, mem_mb, workdir, "replicas")
        self.kind, self.size, self.base_port = kind, size, base_port
        self.ports: dict[str, int] = {}
        self.disk_file: Path | None = None
        try:
            self.rpc.call("nvmf_create_transport", trtype="TCP")
            if kind == "lvol":
                fd, name = tempfile.mkstemp(prefix="imd-bench-disk-", suffix=".img", dir=disk_dir)
                os.ftruncate(fd, disk_size)
                os.close(fd)
                self.disk_file = Path(name)
                self.rpc.call("bdev_aio_create", name="disk", filename=name, block_size=4096)
                self.rpc.call("bdev_lvol_create_lvstore", bdev_name="disk", lvs_name="disk", cluster_sz=MIB)
        except BaseException:
            self.close()
            raise

    def add(self, name: str, size: int | None = None, *, clear_method: str = "write_zeroes") -> int:
        """Create replica ``name`` and export it; its port. ``clear_method``:
        what its delete does to its clusters (imd's replicas: write_zeroes,
        imd.edges.spdk_target's ``lvol_create`` says why)."""
        size = size or self.size
        if self.kind == "lvol":
            self.rpc.call(
                "bdev_lvol_create",
                lvol_name=name,
                size_in_mib=size // MIB,
                lvs_name="disk",
                thin_provision=True,
                clear_method=clear_method,
            )
            bdev = f"disk/{name}"
        else:
            self.rpc.call("bdev_null_create", name=name, num_blocks=size // 4096, block_size=4096)
            bdev = name
        port = self.ports.get(name) or self.base_port + len(self.ports)
        self.rpc.call("nvmf_create_subsystem", nqn=nqn(name), allow_any_host=True, serial_number="IMDBENCH0001")
        self.rpc.call("nvmf_subsystem_add_ns", nqn=nqn(name), namespace={"bdev_name": bdev})
        self.rpc.call("nvmf_subsystem_add_listener", nqn=nqn(name), listen_address=listener(port))
        self.ports[name] = port
        return port

    def remove(self, name: str) -> None:
        """Delete replica ``name`` (its port is kept for the next ``add``)."""
        self.rpc.call("nvmf_delete_subsystem", nqn=nqn(name))
        if self.kind == "lvol":
            self.rpc.call("bdev_lvol_delete", name=f"disk/{name}")
        else:
            self.rpc.call("bdev_null_delete", name=name)

    def path(self, name: str) -> str:
        """spdk_ffi's path syntax."""
        return f"TCP/IPv4/127.0.0.1/{self.ports[name]}/{nqn(name)}"

    def close(self, sig: int = signal.SIGTERM) -> None:
        super().close(sig)
        if self.disk_file is not None:
            with contextlib.suppress(OSError):
                self.disk_file.unlink()


def bdev_nvme_config(target: ReplicaTarget, replicas: Sequence[str], *, raid: bool) -> list[dict[str, Any]]:
    """bdev subsystem config: a bdev_nvme controller per replica (the same
    loss/reconnect/fast-fail timers and queue size as imd's engines), plus
    a raid1 bdev "vol" over them when ``raid``."""
    calls: list[dict[str, Any]] = []
    for name in replicas:
        calls.append(
            {
                "method": "bdev_nvme_attach_controller",
                "params": {
                    "name": name,
                    "trtype": "tcp",
                    "adrfam": "ipv4",
                    "traddr": "127.0.0.1",
                    "trsvcid": str(target.ports[name]),
                    "subnqn": nqn(name),
                    "hostnqn": f"{HOSTNQN}-bdev",
                    "ctrlr_loss_timeout_sec": 10,
                    "reconnect_delay_sec": 1,
                    "fast_io_fail_timeout_sec": 2,
                },
            }
        )
    if raid:
        calls.append(
            {
                "method": "bdev_raid_create",
                "params": {"name": "vol", "raid_level": "raid1", "base_bdevs": [f"{r}n1" for r in replicas]},
            }
        )
    calls.append({"method": "bdev_wait_for_examine"})
    return calls


class RaidTarget(SpdkApp):
    """nvmf_tgt exporting ``vol`` (raid1 over bdev_nvme controllers onto
    the replicas) as namespace 1 of ``nqn("raid")`` on ``port``."""

    def __init__(
        self, workdir: Path, target: ReplicaTarget, replicas: Sequence[str], port: int, core_mask: str = "0x2"
    ) -> None:
        super().__init__("nvmf_tgt", core_mask, 1024, workdir, "raidtgt")
        self.port = port
        try:
            for call in bdev_nvme_config(target, replicas, raid=True):
                self.rpc.call(call["method"], **call.get("params", {}))
            self.rpc.call("nvmf_create_transport", trtype="TCP")
            self.rpc.call("nvmf_create_subsystem", nqn=nqn("raid"), allow_any_host=True, serial_number="IMDBENCH0002")
            self.rpc.call("nvmf_subsystem_add_ns", nqn=nqn("raid"), namespace={"bdev_name": "vol"})
            self.rpc.call("nvmf_subsystem_add_listener", nqn=nqn("raid"), listen_address=listener(port))
        except BaseException:
            self.close()
            raise


# -- bdevperf ---------------------------------------------------------------------------------


def run_bdevperf(
    workdir: Path,
    config: list[dict[str, Any]],
    bdev: str,
    *,
    qd: int,
    io_size: int,
    workload: str,
    duration: float,
    warmup: float,
    core_mask: str = "0x2",
) -> dict[str, Any]:
    """bdevperf (in process, like imd's C tier) on ``bdev`` from ``config``:
    started with ``-z``, one warm-up run of ``warmup`` s, then the measured
    run, both over RPC (perform_tests), in the same process and connections."""
    cfg = workdir / "bdevperf.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": config}]}))
    args = ["--json", str(cfg), "-T", bdev, "-q", str(qd), "-o", str(io_size), "-w", workload, "-t", "1", "-z", "-l"]
    app = SpdkApp("bdevperf", core_mask, 1024, workdir, "bdevperf", args)
    try:
        if warmup > 0:
            app.rpc.call("perform_tests", time_in_sec=max(1, round(warmup)))
        app.rpc.call("perform_tests", time_in_sec=max(1, round(duration)))
    finally:
        app.close(signal.SIGINT)
    return parse_bdevperf(app.log.read_text(), bdev)


def parse_bdevperf(out: str, bdev: str) -> dict[str, Any]:
    """The last run's figures: IOPS, MiB/s, average latency (its table) and
    percentiles (its -l latency summary)."""
    rows = re.findall(
        rf"^\s*{re.escape(bdev)}\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
        out,
        re.M,
    )
    if not rows:
        raise RuntimeError(f"bdevperf printed no result for {bdev}:\n{out[-3000:]}")
    runtime, iops, mib_s, fail_s, _, avg, _, lat_max = (float(x) for x in rows[-1])
    summary = out.rsplit("Latency summary", 1)[-1]
    cdf = [(float(p), float(us)) for p, us in re.findall(r"^\s*([\d.]+)% :\s*([\d.]+)us", summary, re.M)]
    result: dict[str, Any] = {
        "iops": iops,
        "mib_s": mib_s,
        "avg_us": avg,
        "max_us": lat_max,
        "fail_s": fail_s,
        "seconds": runtime,
        "cdf": cdf,
    }
    for q in PERCENTILES:
        result[f"p{q:g}_us"] = from_cdf(cdf, q)
    return result


def from_cdf(cdf: Sequence[tuple[float, float]], q: float) -> float:
    for pct, us in cdf:
        if pct >= q - 1e-9:
            return us
    return float("nan")


def from_histogram(iops: float, io_size: int, avg_us: float, hist: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """A summary from spdk_ffi's 100 ns histogram (BenchResult)."""
    total = max(1, sum(n for _, n in hist))
    cdf, seen = [], 0
    for bucket, n in hist:
        seen += n
        cdf.append((seen / total * 100, (bucket + 1) / 10))
    out: dict[str, Any] = {"iops": iops, "mib_s": iops * io_size / MIB, "avg_us": avg_us}
    for q in PERCENTILES:
        out[f"p{q:g}_us"] = from_cdf(cdf, q)
    step = max(1, len(cdf) // 300)
    out["cdf"] = cdf[::step] + cdf[-1:]
    return out


# -- hosts through a frontend ----------------------------------------------------------------------


def trid(port: int, subnqn: str) -> str:
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{subnqn}"


def run_perf(
    port: int, subnqn: str, *, qd: int, io_size: int, workload: str, duration: float, warmup: float, core_mask: str
) -> dict[str, Any]:
    """spdk_nvme_perf against an NVMe-oF/TCP subsystem."""
    cmd = [
        str(prefix() / "bin" / "spdk_nvme_perf"), "-c", core_mask, "--no-huge", "-s", "512",
        "-q", str(qd), "-o", str(io_size), "-w", workload, "-t", str(round(duration)),
        "-a", str(round(warmup)), "-L", "-r", trid(port, subnqn),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + warmup + 90, env=spdk_env(prefix()), check=False
    )
    total = re.search(r"^Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", proc.stdout, re.M)
    if total is None:
        raise RuntimeError(f"spdk_nvme_perf printed no total:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    cdf = [(float(p), float(us)) for p, us in re.findall(r"^\s*([\d.]+)% :\s*([\d.]+)us", proc.stdout, re.M)]
    result: dict[str, Any] = {
        "iops": float(total.group(1)),
        "mib_s": float(total.group(2)),
        "avg_us": float(total.group(3)),
        "max_us": float(total.group(5)),
        "cdf": cdf,
    }
    for q in PERCENTILES:
        result[f"p{q:g}_us"] = from_cdf(cdf, q)
    return result


def fio_unavailable(fio: str | None) -> str | None:
    plugin = prefix() / "fio" / "spdk_nvme"
    if not plugin.exists():
        return f"SPDK's fio plugin is not built ({plugin} missing)"
    if fio is None or not Path(fio).exists():
        return "no fio binary (pass --fio)"
    with open("/proc/meminfo") as meminfo:
        free = next((int(line.split()[1]) for line in meminfo if line.startswith("HugePages_Free:")), 0)
    if free < 256:
        return "fewer than 256 free hugepages (SPDK's fio plugin has no no-huge mode; set vm.nr_hugepages)"
    return None


def run_fio(
    fio: str,
    port: int,
    subnqn: str,
    *,
    qd: int,
    io_size: int,
    workload: str,
    duration: float,
    warmup: float,
    cpu: int,
) -> dict[str, Any]:
    """fio with SPDK's NVMe plugin (hugepages) against a subsystem."""
    return run_spdk_fio(
        fio, prefix(), port=port, nqn=subnqn, rw=workload, bs=io_size, qd=qd,
        duration=duration, warmup=warmup, cpu=cpu, mem_size_mb=512,
    )  # fmt: skip


@contextlib.contextmanager
def workdir(tag: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"imd-bench-{tag}-"))
    yield path


def load_average() -> float:
    return os.getloadavg()[0]
