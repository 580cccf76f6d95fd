"""bench/v2ops: V2 engine operations under host I/O (issue 9).

    SPDK_DIR=/path/to/spdk python -m bench.v2ops [--only rebuild,expand,restart] [--reps 3]

* **rebuild** (in process, the engine's C core as the daemon starts it, on
  core 1; replicas in an nvmf_tgt on core 0): a 1 GiB replica full of data is
  copied onto a fresh thin replica by ``NativeMirror.start_rebuild``
  (the daemon's 1 MiB chunks), with the throttle off and at a cap. MiB/s
  with no host I/O, and with a host doing 4 KiB randwrite at QD8 through the
  mirror (the C tier, ``NativeMirror.bench``, in process); the host's IOPS
  during the rebuild over its IOPS in the windows just before and after it,
  in the same run.
* **expand** (a real imd with V2: its supervised nvmf_tgt on core 0, its
  engine core on core 1): VolumeExpand of a 2-replica engine, timed from the
  RPC's start to its answer, while a separate host process writes and
  verifies through the engine's export (and without a host, for
  comparison). The daemon's own log times the phases: the replicas' lvols
  (through imd's replica service on base+4), then the mirror and the
  frontend's namespace.
* **failover** (two real imds on loopback, each with its own nvmf_tgt: node
  A holds replica r1 and the engine, node B replica r2): a host does
  verified I/O through the engine's export while node B's target is lost,
  silently (SIGSTOP: its connections stay open and answer nothing, as after a
  power loss or a cut cable) or loudly (SIGKILL: the kernel resets its
  connections). The host's longest pause and errors, and the time from the
  fault to ReplicaList showing r2 ERR (polled every 100 ms), with the
  replica timeout (``--replica-timeout``, the daemon's default 5 s).
* **restart** (a real imd with V2 and ``stop_children_on_exit = false``): a
  host with a reconnect policy (ctrlr_loss_timeout_sec 30,
  reconnect_delay_sec 1) does verified I/O through the engine's export
  across a ``kill -9`` of imd and its restart; the time from the kill, from
  the restart and from the daemon's SERVING to the host's first completed
  I/O, and the I/O errors and mismatches the host saw (should be 0).

Hosts for expand and restart are bench/v2proc.py's ``loop`` in their own
process on core 0, with a poller that naps 20 µs between polls (three
pollers share two cores). Writes bench/results/v2ops.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import RESULTS, environment, markdown_table, median, pyplot, save_figure, write_results
from bench.spdknode import HOSTNQN, MIB, CpuWatch, ReplicaTarget, missing

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 4096


# -- host process ---------------------------------------------------------------------------------


class Host:
    """bench/v2proc.py's verified-I/O loop in its own process, until stop()."""

    def __init__(self, path: str, *, seed: int, qd: int = 4, opts: dict[str, Any] | None = None) -> None:
        self.spec = {
            "role": "loop",
            "core_mask": "0x1",
            "poll_sleep_us": 20,
            "path": path,
            "hostnqn": f"{HOSTNQN}-host{seed}",
            "seed": seed,
            "qd": qd,
            "until_eof": True,
            "gap_ms": 20,
            "opts": opts or {},
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_at = 0.0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.v2proc", json.dumps(self.spec), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            _, err = await self.proc.communicate()
            raise RuntimeError(f"host did not start: {err.decode()[-2000:]}")
        self.ready_at = float(json.loads(line)["t"])

    async def stop(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        out, err = await asyncio.wait_for(self.proc.communicate(), 120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"host failed ({self.proc.returncode}): {err.decode()[-2000:]}")
        return dict(json.loads(out.decode().strip().splitlines()[-1]))


def window_iops(report: dict[str, Any], t0: float, t1: float) -> float:
    """Host completions per second between monotonic times t0 and t1."""
    bins = report["bins_100ms"]
    first, last = int((t0 - report["start"]) * 10), int((t1 - report["start"]) * 10)
    chosen = bins[max(first, 0) : max(last, 0)]
    return sum(chosen) / (len(chosen) / 10) if chosen else float("nan")


def longest_gap(report: dict[str, Any], t0: float, t1: float) -> float:
    """The longest pause between two host completions that overlaps [t0, t1]."""
    gaps = [end - start for start, end in report["gaps"] if end >= t0 and start <= t1]
    return max(gaps, default=0.0)


def first_completion_after(report: dict[str, Any], t: float) -> float | None:
    """When the host completed its first I/O after ``t`` had passed through a
    pause: the end of the recorded gap that contains ``t``."""
    for start, end in report["gaps"]:
        if start <= t <= end:
            return float(end)
    return None


# -- rebuild, in process --------------------------------------------------------------------------


async def fill(backend: Any, handle: Any, blocks: int) -> None:
    """Non-zero data everywhere (the rebuild writes all-zero chunks as
    write-zeroes, which would flatter it)."""
    from spdk_ffi.native import DmaBuffer, Io, IoKind

    chunk = 256  # blocks: 1 MiB
    bufs = [DmaBuffer(chunk * BLOCK) for _ in range(8)]
    try:
        noise = os.urandom(chunk * BLOCK)
        for b in bufs:
            b.view[:] = noise
        for base in range(0, blocks, chunk * len(bufs)):
            batch = []
            for i, b in enumerate(bufs):
                lba = base + i * chunk
                if lba < blocks:
                    b.view[:8] = lba.to_bytes(8, "little")
                    batch.append(Io(IoKind.WRITE, 1, lba, min(chunk, blocks - lba), b))
            await backend.io(handle, batch)
    finally:
        for b in bufs:
            b.free()


def hist_delta(before: dict[str, int], after: dict[str, int]) -> list[tuple[int, int]]:
    """(upper bound µs, count) of the mirror's log2 latency histogram between two reads."""
    out = []
    for key, value in after.items():
        if key.startswith("latency_lt_"):
            out.append((int(key.removeprefix("latency_lt_").removesuffix("us")), value - before.get(key, 0)))
    return sorted(out)


def hist_pct(hist: list[tuple[int, int]], q: float) -> float:
    total = sum(n for _, n in hist)
    seen = 0
    for bound, n in hist:
        seen += n
        if total and seen >= q / 100 * total:
            return float(bound)
    return float("nan")


async def rebuild_bench(args: argparse.Namespace, work: Path, watch: CpuWatch) -> list[dict[str, Any]]:
    from bench.engine import daemon_replica_opts
    from imd.config import V2Config
    from spdk_ffi import ControllerOpts, Initiator
    from spdk_ffi.mirror import LegMode, NativeMirror, RebuildState
    from spdk_ffi.native import NativeBackend, NativeCore

    cfg = V2Config()
    size = args.rebuild_mib * MIB
    blocks = size // BLOCK
    target = ReplicaTarget(
        work, kind="lvol", size=size, base_port=4601, disk_dir=Path(args.disk_dir), disk_size=3 * size
    )
    native = NativeBackend(
        NativeCore.start(core_mask="0x2", mem_size_mb=1024, no_huge=True, idle_spin_us=cfg.engine_idle_spin_us)
    )
    ini = Initiator(native)
    opts = ControllerOpts(**daemon_replica_opts())
    results: list[dict[str, Any]] = []
    try:
        target.add("src")
        target.add("dst")
        await ini.attach("src", [target.path("src")], HOSTNQN, opts, owner="bench")
        t0 = time.monotonic()
        await fill(native, ini.handle("src"), blocks)
        print(f"filled the source replica ({args.rebuild_mib} MiB) in {time.monotonic() - t0:.1f}s", flush=True)
        mirror = await NativeMirror.create(native, "rebuild", [("src", ini.handle("src"))], blocks)

        async def fresh_destination() -> None:
            if "dst" in {leg.name for leg in mirror.legs()}:
                await mirror.remove_leg("dst")
                await ini.detach("dst")
                target.remove("dst")
                target.add("dst")
            await ini.attach("dst", [target.path("dst")], HOSTNQN, opts, owner="bench")
            await mirror.add_leg("dst", ini.handle("dst"), LegMode.WO)

        for cap in args.caps:
            rate = cap * MIB
            for loaded in (False, True):
                for rep in range(args.reps):
                    await fresh_destination()
                    quiet = await asyncio.to_thread(watch.wait_quiet, 0.25, 60)
                    watch.start()
                    row: dict[str, Any] = {"cap_mib_s": cap, "host": loaded, "rep": rep + 1, "quiet_before": quiet}
                    host: asyncio.Future[Any] | None = None
                    if loaded:
                        expect = size / rate if rate else 4.0
                        duration = 1 + 3 + 3 * expect + 3 + 5
                        host = asyncio.ensure_future(
                            mirror.bench(qd=args.host_qd, write=True, duration_s=duration, warmup_s=1)
                        )
                        await asyncio.sleep(1.5)
                        c0, w0 = time.monotonic(), mirror.counters()
                        await asyncio.sleep(3)
                    c1, w1 = time.monotonic(), mirror.counters()
                    handle = mirror.start_rebuild(
                        "dst", "src", chunk_bytes=cfg.rebuild_chunk_kib * 1024, rate_bytes_per_s=rate
                    )
                    status = await handle.done
                    c2, w2 = time.monotonic(), mirror.counters()
                    if status.state != RebuildState.COMPLETE:
                        raise RuntimeError(f"rebuild ended {status.state}: {status.error}")
                    row["seconds"] = c2 - c1
                    row["mib_s"] = status.bytes_total / MIB / (c2 - c1)
                    row["zero_chunks"] = w2["rebuild_chunks_zero"]
                    if loaded and host is not None:
                        await asyncio.sleep(3)
                        c3, w3 = time.monotonic(), mirror.counters()
                        if host.done():
                            raise RuntimeError("the host bench ended before the after-window: make it longer")
                        before = (w1["writes"] - w0["writes"]) / (c1 - c0)
                        during = (w2["writes"] - w1["writes"]) / (c2 - c1)
                        after = (w3["writes"] - w2["writes"]) / (c3 - c2)
                        lat_during, lat_outside = hist_delta(w1, w2), hist_delta(w0, w1)
                        row.update(
                            host_iops_before=before,
                            host_iops_during=during,
                            host_iops_after=after,
                            host_fraction=during / ((before + after) / 2),
                            host_p50_us_during=hist_pct(lat_during, 50),
                            host_p99_us_during=hist_pct(lat_during, 99),
                            host_p50_us_outside=hist_pct(lat_outside, 50),
                            host_p99_us_outside=hist_pct(lat_outside, 99),
                        )
                        bench = await host
                        row["host_bench_iops"] = bench.iops
                    row["others_cores"] = round(watch.stop(), 2)
                    results.append(row)
                    print(
                        f"rebuild cap {cap or 'off'} host={loaded} rep {rep + 1}: {row['mib_s']:.0f} MiB/s"
                        + (f", host {row['host_fraction']:.2f} of its IOPS" if loaded else "")
                        + f" (others {row['others_cores']} cores)",
                        flush=True,
                    )
        await mirror.destroy()
    finally:
        for info in ini.controllers():
            await ini.detach(info.name)
        target.close()
    return results


# -- a real daemon ------------------------------------------------------------------------------


class Node:
    """A real imd with V2 (tests/v2's configuration), a disk on a sparse
    file, replicas and an engine, driven over gRPC."""

    def __init__(
        self, root: Path, disk_dir: Path, *, port_range: str = "25000-25999", v2: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:  # fmt: skip
        from tests.helpers import make_daemon
        from tests.v2.spdk_env import v2_config

        self.v2 = v2_config(target_mem_size_mb=1024, engine_mem_size_mb=1024, **(v2 or {}))
        self.daemon = make_daemon(root, v2=self.v2, port_range=port_range, log_level="info", **overrides)
        fd, name = tempfile.mkstemp(prefix="imd-bench-v2disk-", suffix=".img", dir=disk_dir)
        os.ftruncate(fd, 8 << 30)
        os.close(fd)
        self.disk = Path(name)
        self.ports: dict[str, int] = {}

    @property
    def stub(self) -> Any:
        return self.daemon.instances()

    @property
    def proxy(self) -> Any:
        from imd.api.gen.imrpc import proxy_grpc

        return proxy_grpc.ProxyEngineServiceStub(self.daemon.channel(offset=1))

    def target(self, engine: str) -> Any:
        from imd.api.gen.imrpc import common_pb2, proxy_pb2

        return proxy_pb2.ProxyEngineRequest(engine_name=engine, data_engine=common_pb2.DATA_ENGINE_V2)

    async def start(self) -> None:
        from imd.api.gen.imrpc import disk_pb2

        await self.daemon.start()
        await self.daemon.disks().DiskCreate(
            disk_pb2.DiskCreateRequest(disk_type=disk_pb2.block, disk_name="d1", disk_path=str(self.disk))
        )

    async def start_mirrored(self, size: int) -> str:
        """Start the daemon with engine e1 over replicas r1 and r2; the
        engine's export path, for a host."""
        await self.start()
        await self.replica("r1", size)
        await self.replica("r2", size)
        return await self.engine("e1", ["r1", "r2"], size)

    async def replica(self, name: str, size: int) -> None:
        from imd.api.gen.imrpc import common_pb2
        from imd.api.gen.imrpc import instance_pb2 as inst

        spec = inst.InstanceSpec(
            name=name, type="replica", volume_name="vol", data_engine=common_pb2.DATA_ENGINE_V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(disk_name="d1", size=size),
        )  # fmt: skip
        made = await self.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
        self.ports[name] = int(made.status.port_start)

    async def engine(self, name: str, replicas: list[str], size: int, addresses: dict[str, str] | None = None) -> str:
        """Create the engine; the spdk_ffi path of its export. ``addresses``:
        replicas of other nodes (``ip:port``)."""
        from imd.api.gen.imrpc import common_pb2
        from imd.api.gen.imrpc import instance_pb2 as inst
        from imd.v2.model import nqn_of

        spec = inst.InstanceSpec(
            name=name, type="engine", volume_name="vol", data_engine=common_pb2.DATA_ENGINE_V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(
                size=size,
                replica_address_map={**{r: f"127.0.0.1:{self.ports[r]}" for r in replicas}, **(addresses or {})},
                frontend="spdk-tcp-nvmf",
            ),
        )  # fmt: skip
        made = await self.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
        return f"TCP/IPv4/127.0.0.1/{made.status.port_start}/{nqn_of(name)}"

    async def modes(self, engine: str) -> dict[str, str]:
        from imd.api.gen.ptypes import controller_pb2

        reply = await self.proxy.ReplicaList(self.target(engine))
        return {r.address.instanceName: controller_pb2.ReplicaMode.Name(r.mode) for r in reply.replica_list.replicas}

    async def wait_all_rw(self, engine: str, timeout: float = 120) -> float:
        t0 = time.monotonic()
        async with asyncio.timeout(timeout):
            while set((await self.modes(engine)).values()) != {"RW"}:
                await asyncio.sleep(0.1)
        return time.monotonic() - t0

    async def expand(self, engine: str, size: int) -> None:
        from imd.api.gen.imrpc import proxy_pb2
        from imd.api.gen.ptypes import controller_pb2

        await self.proxy.VolumeExpand(
            proxy_pb2.EngineVolumeExpandRequest(
                proxy_engine_request=self.target(engine), expand=controller_pb2.VolumeExpandRequest(size=size)
            )
        )

    async def target_up(self) -> bool:
        """Whether the node's SPDK target serves again (DiskGet answers)."""
        from grpclib.exceptions import GRPCError

        from imd.api.gen.imrpc import disk_pb2

        try:
            await self.daemon.disks().DiskGet(disk_pb2.DiskGetRequest(disk_type=disk_pb2.block, disk_name="d1"))
        except GRPCError:
            return False
        return True

    async def volume_size(self, engine: str) -> int:
        return int((await self.proxy.VolumeGet(self.target(engine))).volume.size)

    def log_events(self, since_wall: float) -> list[dict[str, Any]]:
        """The daemon's JSON log lines from ``since_wall`` on, with "t" (wall)."""
        import datetime

        events = []
        for line in self.daemon.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
                t = datetime.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
            except (ValueError, KeyError):
                continue
            entry["t"] = t.timestamp()
            if entry["t"] >= since_wall - 0.001:
                events.append(entry)
        return events

    async def close(self) -> None:
        from tests.v2.spdk_env import target_pid

        try:
            if self.daemon.proc is not None and self.daemon.proc.poll() is None:
                await self.daemon.stop()
        finally:
            pid = target_pid(self.v2)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            self.disk.unlink(missing_ok=True)


async def expand_bench(args: argparse.Namespace, work: Path, watch: CpuWatch) -> list[dict[str, Any]]:
    size = args.expand_mib * MIB
    node = Node(work / "expand", Path(args.disk_dir))
    results: list[dict[str, Any]] = []
    try:
        path = await node.start_mirrored(size)
        current = size
        for loaded in (False, True):
            host = Host(path, seed=31, qd=4) if loaded else None
            if host is not None:
                await host.start()
                await asyncio.sleep(2)
            marks = []
            for rep in range(args.reps):
                new = current + size
                watch.start()
                wall, t0 = time.time(), time.monotonic()
                await node.expand("e1", new)
                t1 = time.monotonic()
                others = watch.stop()
                if await node.volume_size("e1") != new:
                    raise RuntimeError("VolumeExpand answered but the volume did not grow")
                events = node.log_events(wall)
                grown = [e["t"] for e in events if e.get("event") == "replica grown"]
                done = [e["t"] for e in events if e.get("event") == "volume expanded"]
                row: dict[str, Any] = {
                    "host": loaded,
                    "rep": rep + 1,
                    "from_mib": current // MIB,
                    "to_mib": new // MIB,
                    "seconds": t1 - t0,
                    "replicas_s": (max(grown) - wall) if grown else None,
                    "mirror_frontend_s": (min(done) - max(grown)) if grown and done else None,
                    "others_cores": round(others, 2),
                }
                marks.append((row, t0, t1))
                results.append(row)
                current = new
                print(
                    f"expand host={loaded} {row['from_mib']}->{row['to_mib']} MiB: {row['seconds'] * 1e3:.0f} ms",
                    flush=True,
                )
                await asyncio.sleep(1.5)
            if host is not None:
                report = await host.stop()
                for row, t0, t1 in marks:
                    row["host_longest_pause_ms"] = longest_gap(report, t0, t1) * 1e3
                    row["host_iops_during"] = window_iops(report, t0, max(t1, t0 + 0.1))
                    row["host_iops_before"] = window_iops(report, t0 - 1.0, t0)
                row_summary = {k: report[k] for k in ("writes", "reads", "errors", "mismatches", "errors_seen")}
                results.append({"host_report": row_summary})
                print(f"expand host: {row_summary}", flush=True)
    finally:
        await node.close()
    return results


async def failover_bench(args: argparse.Namespace, work: Path, watch: CpuWatch) -> list[dict[str, Any]]:
    """A replica's node lost under host I/O, silently and loudly (see the
    module doc). Each repetition builds a fresh engine over fresh replicas."""
    from imd.api.gen.imrpc import common_pb2
    from imd.api.gen.imrpc import instance_pb2 as inst
    from tests.v2.spdk_env import target_pid

    size = args.restart_mib * MIB
    a = Node(work / "failover-a", Path(args.disk_dir), v2={"replica_timeout_s": args.replica_timeout})
    b = Node(work / "failover-b", Path(args.disk_dir), port_range="26000-26999")
    results: list[dict[str, Any]] = []
    try:
        await a.start()
        await b.start()
        for kind in ("silent", "loud"):
            for rep in range(args.reps):
                tag = f"{kind[0]}{rep}"
                await a.replica(f"r1{tag}", size)
                await b.replica(f"r2{tag}", size)
                addresses = {f"r2{tag}": f"127.0.0.1:{b.ports[f'r2{tag}']}"}
                path = await a.engine(f"e{tag}", [f"r1{tag}"], size, addresses)
                host = Host(path, seed=61 + rep, qd=4)
                await host.start()
                await asyncio.sleep(2)
                pid = target_pid(b.v2)
                assert pid is not None
                watch.start()
                t_fault = time.monotonic()
                os.kill(pid, signal.SIGSTOP if kind == "silent" else signal.SIGKILL)
                async with asyncio.timeout(120):
                    while (await a.modes(f"e{tag}"))[f"r2{tag}"] != "ERR":
                        await asyncio.sleep(0.1)
                t_err = time.monotonic()
                await asyncio.sleep(2)
                report = await host.stop()
                others = watch.stop()
                row: dict[str, Any] = {
                    "fault": kind,
                    "rep": rep + 1,
                    "replica_timeout_s": args.replica_timeout,
                    "fault_to_err_s": t_err - t_fault,
                    "longest_pause_s": longest_gap(report, t_fault - 1, t_err + 1),
                    "host_iops_before": window_iops(report, t_fault - 1.5, t_fault),
                    "host_iops_after": window_iops(report, t_err + 0.2, t_err + 1.8),
                    "writes": report["writes"],
                    "reads": report["reads"],
                    "errors": report["errors"],
                    "mismatches": report["mismatches"],
                    "errors_seen": report["errors_seen"],
                    "others_cores": round(others, 2),
                }
                results.append(row)
                print(
                    f"failover {kind} rep {rep + 1}: ERR after {row['fault_to_err_s']:.2f} s, longest pause "
                    f"{row['longest_pause_s']:.2f} s, errors {row['errors']}, mismatches {row['mismatches']}",
                    flush=True,
                )
                await a.stub.InstanceDelete(
                    inst.InstanceDeleteRequest(name=f"e{tag}", data_engine=common_pb2.DATA_ENGINE_V2)
                )
                if kind == "silent":
                    os.kill(pid, signal.SIGCONT)
                # A killed target is started again by node B's imd; wait for it
                # before the next repetition makes a replica there.
                async with asyncio.timeout(120):
                    while target_pid(b.v2) is None or not await b.target_up():
                        await asyncio.sleep(0.2)
    finally:
        await a.close()
        await b.close()
    return results


async def restart_bench(args: argparse.Namespace, work: Path, watch: CpuWatch) -> list[dict[str, Any]]:
    size = args.restart_mib * MIB
    node = Node(work / "restart", Path(args.disk_dir), stop_children_on_exit=False)
    results: list[dict[str, Any]] = []
    try:
        path = await node.start_mirrored(size)
        for rep in range(args.reps):
            host = Host(path, seed=41 + rep, qd=4, opts={"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1})
            await host.start()
            await asyncio.sleep(3)
            watch.start()
            t_kill = time.monotonic()
            await node.daemon.stop(signal.SIGKILL)
            t_dead = time.monotonic()
            wall_spawn = time.time()
            t_spawn = time.monotonic()
            await node.daemon.start()
            t_serving = time.monotonic()
            resync_s = await node.wait_all_rw("e1")
            t_resynced = time.monotonic()
            await asyncio.sleep(2)
            report = await host.stop()
            others = watch.stop()
            first = first_completion_after(report, t_kill)
            events = node.log_events(wall_spawn)
            restored = [e["t"] for e in events if e.get("event") == "engine restored"]
            row: dict[str, Any] = {
                "rep": rep + 1,
                "kill_to_first_io_s": (first - t_kill) if first else None,
                "restart_to_first_io_s": (first - t_spawn) if first else None,
                "serving_to_first_io_s": (first - t_serving) if first else None,
                "kill_to_exit_s": t_dead - t_kill,
                "restart_to_serving_s": t_serving - t_spawn,
                "restart_to_engine_restored_s": (min(restored) - wall_spawn) if restored else None,
                "serving_to_resynced_s": resync_s,
                "longest_pause_s": max((e - s for s, e in report["gaps"]), default=0.0),
                "host_iops_before_kill": window_iops(report, t_kill - 2, t_kill),
                "host_iops_during_resync": window_iops(report, (first or t_serving) + 0.2, t_resynced),
                "host_iops_after_resync": window_iops(report, t_resynced, t_resynced + 1.5),
                "writes": report["writes"],
                "reads": report["reads"],
                "errors": report["errors"],
                "mismatches": report["mismatches"],
                "errors_seen": report["errors_seen"],
                "others_cores": round(others, 2),
            }
            results.append(row)
            print(
                f"restart rep {rep + 1}: kill->first I/O {row['kill_to_first_io_s']}, "
                f"errors {row['errors']}, mismatches {row['mismatches']}",
                flush=True,
            )
    finally:
        await node.close()
    return results


# -- report -----------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def report(data: dict[str, Any]) -> str:
    parts = []
    rebuild = data.get("rebuild", [])
    if rebuild:
        rows = []
        for cap in sorted({r["cap_mib_s"] for r in rebuild}):
            for loaded in (False, True):
                reps = [r for r in rebuild if r["cap_mib_s"] == cap and r["host"] == loaded]
                if not reps:
                    continue
                row = {
                    "cap": f"{cap} MiB/s" if cap else "off",
                    "host I/O": f"randwrite QD{data['args']['host_qd']}" if loaded else "none",
                    "rebuild MiB/s (median)": f"{median([r['mib_s'] for r in reps]):.0f}",
                    "per rep": " ".join(f"{r['mib_s']:.0f}" for r in reps),
                    "seconds": f"{median([r['seconds'] for r in reps]):.2f}",
                }
                if loaded:
                    row["host IOPS outside / during"] = (
                        f"{median([(r['host_iops_before'] + r['host_iops_after']) / 2 for r in reps]):,.0f} / "
                        f"{median([r['host_iops_during'] for r in reps]):,.0f}"
                    )
                    row["host fraction (median)"] = f"{median([r['host_fraction'] for r in reps]):.2f}"
                    row["per rep "] = " ".join(f"{r['host_fraction']:.2f}" for r in reps)
                    row["host p99 µs outside / during"] = (
                        f"<{median([r['host_p99_us_outside'] for r in reps]):.0f} / "
                        f"<{median([r['host_p99_us_during'] for r in reps]):.0f}"
                    )
                row["others (cores)"] = f"{max(r['others_cores'] for r in reps):.2f}"
                rows.append(row)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        parts.append("### Rebuild\n\n" + markdown_table(rows, columns))
    expand = [r for r in data.get("expand", []) if "seconds" in r]
    if expand:
        rows = [
            {
                "host": "verified writes QD4" if r["host"] else "none",
                "size MiB": f"{r['from_mib']} → {r['to_mib']}",
                "VolumeExpand ms": f"{r['seconds'] * 1e3:.0f}",
                "replicas ms": fmt(r["replicas_s"] and r["replicas_s"] * 1e3, ".0f"),
                "mirror + frontend ms": fmt(r["mirror_frontend_s"] and r["mirror_frontend_s"] * 1e3, ".0f"),
                "host longest pause ms": fmt(r.get("host_longest_pause_ms"), ".0f"),
                "host IOPS before / during": (
                    f"{r['host_iops_before']:,.0f} / {r['host_iops_during']:,.0f}" if r["host"] else "—"
                ),
                "others (cores)": f"{r['others_cores']:.2f}",
            }
            for r in expand
        ]
        hosts = [r["host_report"] for r in data["expand"] if "host_report" in r]
        parts.append(
            "### Expansion\n\n"
            + markdown_table(rows, list(rows[0]))
            + "".join(
                f"\n\nHost: {h['writes']} writes, {h['reads']} verified reads, {h['errors']} errors, "
                f"{h['mismatches']} mismatches."
                for h in hosts
            )
        )
    failover = data.get("failover", [])
    if failover:
        rows = [
            {
                "fault": r["fault"],
                "rep": r["rep"],
                "fault → ERR s": fmt(r["fault_to_err_s"]),
                "host longest pause s": fmt(r["longest_pause_s"]),
                "host IOPS before / after": f"{r['host_iops_before']:,.0f} / {r['host_iops_after']:,.0f}",
                "I/O errors": r["errors"],
                "mismatches": r["mismatches"],
                "others (cores)": f"{r['others_cores']:.2f}",
            }
            for r in failover
        ]
        summary = []
        for kind in ("silent", "loud"):
            reps = [r for r in failover if r["fault"] == kind]
            if reps:
                summary.append(
                    f"{kind}: median fault → ERR {median([r['fault_to_err_s'] for r in reps]):.2f} s, median longest "
                    f"pause {median([r['longest_pause_s'] for r in reps]):.2f} s, worst "
                    f"{max(r['longest_pause_s'] for r in reps):.2f} s, I/O errors {sum(r['errors'] for r in reps)}"
                )
        parts.append(
            f"### A replica's node lost (replica timeout {failover[0]['replica_timeout_s']:g} s)\n\n"
            + markdown_table(rows, list(rows[0]))
            + "\n\n"
            + "; ".join(summary)
            + "."
        )
    restart = data.get("restart", [])
    if restart:
        rows = [
            {
                "rep": r["rep"],
                "kill → first I/O s": fmt(r["kill_to_first_io_s"]),
                "restart → first I/O s": fmt(r["restart_to_first_io_s"]),
                "SERVING → first I/O s": fmt(r["serving_to_first_io_s"]),
                "restart → SERVING s": fmt(r["restart_to_serving_s"]),
                "restart → engine restored s": fmt(r["restart_to_engine_restored_s"]),
                "resync s": fmt(r["serving_to_resynced_s"]),
                "host IOPS before / resync / after": f"{r['host_iops_before_kill']:,.0f} / "
                f"{r['host_iops_during_resync']:,.0f} / {r['host_iops_after_resync']:,.0f}",
                "I/O errors": r["errors"],
                "mismatches": r["mismatches"],
                "others (cores)": f"{r['others_cores']:.2f}",
            }
            for r in restart
        ]
        kill = [r["kill_to_first_io_s"] for r in restart if r["kill_to_first_io_s"] is not None]
        parts.append(
            "### Restart pause\n\n"
            + markdown_table(rows, list(rows[0]))
            + f"\n\nMedian kill → first I/O: {median(kill):.2f} s over {len(kill)} repetitions; "
            f"I/O errors in total: {sum(r['errors'] for r in restart)}, "
            f"mismatches: {sum(r['mismatches'] for r in restart)}."
        )
    return "\n\n".join(parts)


def plot(label: str, data: dict[str, Any]) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    parts = [k for k in ("rebuild", "expand", "restart", "failover") if data.get(k)]
    if not parts:
        return None
    fig, row = plt.subplots(1, len(parts), figsize=(5.3 * len(parts), 4.5), squeeze=False)
    axes = dict(zip(parts, row[0], strict=True))
    rebuild = data.get("rebuild", [])
    if "rebuild" in axes:
        ax = axes["rebuild"]
        for loaded, marker in ((False, "o"), (True, "^")):
            for cap in sorted({r["cap_mib_s"] for r in rebuild}):
                reps = [r for r in rebuild if r["cap_mib_s"] == cap and r["host"] == loaded]
                ax.scatter(
                    [cap or -1] * len(reps),
                    [r["mib_s"] for r in reps],
                    marker=marker,
                    label=f"cap {cap or 'off'}, {'host QD' + str(data['args']['host_qd']) if loaded else 'no host'}",
                )
                if loaded:
                    ax.scatter(
                        [(cap or -1) + 8] * len(reps),
                        [r["host_fraction"] * 1000 for r in reps],
                        marker="x",
                        color="black",
                    )
        ax.set(
            xlabel="rebuild cap MiB/s (-1: off)", ylabel="rebuild MiB/s   (x: host fraction x 1000)", title="rebuild"
        )
        if rebuild:
            ax.legend(fontsize=7)
    expand = [r for r in data.get("expand", []) if "seconds" in r]
    if "expand" in axes:
        ax = axes["expand"]
        for loaded, color in ((False, "tab:gray"), (True, "tab:blue")):
            reps = [r for r in expand if r["host"] == loaded]
            ax.bar(
                [i + (0.2 if loaded else -0.2) for i in range(len(reps))],
                [r["seconds"] * 1e3 for r in reps],
                width=0.4,
                color=color,
                label="host writing" if loaded else "no host",
            )
        ax.set(xlabel="expansion #", ylabel="ms", title="VolumeExpand")
        if expand:
            ax.legend(fontsize=8)
    restart = data.get("restart", [])
    if "restart" in axes:
        ax = axes["restart"]
        for key, label_ in (
            ("kill_to_first_io_s", "kill → first I/O"),
            ("restart_to_first_io_s", "restart → first I/O"),
            ("restart_to_serving_s", "restart → SERVING"),
        ):
            ax.plot([r["rep"] for r in restart], [r[key] or float("nan") for r in restart], marker="o", label=label_)
        ax.set(xlabel="repetition", ylabel="s", title="kill -9 of imd: the host's pause")
        if restart:
            ax.legend(fontsize=8)
    failover = data.get("failover", [])
    if "failover" in axes:
        ax = axes["failover"]
        for offset, (kind, color) in enumerate((("silent", "tab:red"), ("loud", "tab:green"))):
            reps = [r for r in failover if r["fault"] == kind]
            xs = [r["rep"] + (0.2 if offset else -0.2) for r in reps]
            ax.bar(
                xs, [r["longest_pause_s"] for r in reps], width=0.35, color=color, label=f"{kind}: host's longest pause"
            )
            ax.scatter(xs, [r["fault_to_err_s"] for r in reps], color="black", marker="x", zorder=3)
        if failover:
            ax.axhline(failover[0]["replica_timeout_s"], color="gray", linestyle="--", label="replica timeout")
            ax.legend(fontsize=8)
        ax.set(xlabel="repetition (x: fault → ERR)", ylabel="s", title="a replica's node lost under host I/O")
    for a in axes.values():
        a.grid(True, alpha=0.3)
    return save_figure(plt, fig, RESULTS / f"{label}.png")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="rebuild,expand,restart,failover")
    parser.add_argument("--replica-timeout", type=float, default=5.0, help="failover: the engine's replica timeout")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rebuild-mib", type=int, default=1024)
    parser.add_argument("--caps", type=lambda s: [int(x) for x in s.split(",")], default=[0, 64])
    parser.add_argument("--host-qd", type=int, default=8)
    parser.add_argument("--expand-mib", type=int, default=256, help="initial size and step of the expansions")
    parser.add_argument("--restart-mib", type=int, default=256)
    parser.add_argument("--disk-dir", default="/dev/shm", help="where the disks' sparse files live")
    parser.add_argument("--label", default="v2ops")
    args = parser.parse_args()

    reason = missing(("nvmf_tgt",))
    if reason is not None:
        print(f"bench/v2ops needs SPDK: {reason}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="imd-bench-v2ops-"))
    watch = CpuWatch()
    data: dict[str, Any] = {"benchmark": "v2ops", "env": environment(), "args": vars(args)}
    data["command"] = " ".join(["python -m bench.v2ops", *sys.argv[1:]])
    only = args.only.split(",")
    # The daemon-level parts start their own imd (with its own SPDK core):
    # run them before this process starts one for the rebuild part.
    if "expand" in only:
        data["expand"] = await expand_bench(args, work, watch)
    if "restart" in only:
        data["restart"] = await restart_bench(args, work, watch)
    if "failover" in only:
        data["failover"] = await failover_bench(args, work, watch)
    if "rebuild" in only:
        data["rebuild"] = await rebuild_bench(args, work, watch)
    md = report(data)
    print(md)
    write_results(args.label, data, f"# bench/v2ops, {data['env']['date']}\n\n`{data['command']}`\n\n{md}\n")
    path = plot(args.label, data)
    if path:
        print(f"plot {path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
