"""bench/compare: imd and the Go original side by side, same client, same run.

    python -m bench.compare [--go PATH] [--n 1000] [--watchers 1,50] [--concurrency 16] [--repeat 3]

For every repetition and every watcher count it starts a fresh imd and a
fresh Go instance manager (``--go``, default /work/go-im/longhorn-instance-
manager; its rows are skipped, saying so, when the binary is absent), one
after the other in alternating order, and drives each with the same client:
grpcio (the C-core client, not the grpclib the daemon uses), with imd's own
message classes on grpcio's generic channel methods. Per run:

1. W watchers, each on its own HTTP/2 connection, open ProcessWatch. A probe
   process is created and deleted and the workload waits until every
   watcher saw it: the Go original sends response headers only with its
   first event, so this is how to know every watcher is subscribed.
2. C callers (each its own connection) create N ``sleep`` processes
   (port_count 0): **creates/s** is N over the wall time of this phase;
   **create RPC p50/p99** is each call's latency.
3. Wait until every watcher saw every process running. **create→running** is
   from sending a create to the first watcher receiving ``running`` for its
   UUID. **RSS loaded** is the daemon's RSS now, with N children supervised
   (for imd, the daemon and any helper process of its own; never the
   children).
4. The C callers delete all N (name and UUID), then ProcessList is polled
   every 5 ms: **delete-all** is from the first delete sent to the first
   empty ProcessList received.
5. **spread** (W > 1): for each event every watcher received, the last
   watcher's receive time minus the first's; the p99 over all events.

The daemon's CPU time and everything else the machine ran meanwhile
("other CPU", from /proc/stat minus the daemon, its children and this
client) are recorded with each run: a run with other CPU well above zero
shared the cores with someone else's work.

Per phase (creates up to every watcher seeing every process running;
deletes up to every watcher seeing every process deleted), the CPU is also
split per operation: **daemon ms/create** and **daemon ms/delete** are the
daemon's; **client+child ms/create** and **/delete** are this client's and
the child's (its exec, from /proc/PID/schedstat while it sleeps; its exit,
from the daemon's reaped-children time). That second share is work no
daemon can save, so the goals table says, for the creates and delete-all
goals, how much CPU per operation the two cores leave a daemon at the pace
asked (its **reach** column, beside what each daemon used), or OUT OF
REACH when the client and the children alone need more (see _ceiling).

Medians over the repetitions are reported with their spread (min-max), and
each ratio imd/Go is taken per repetition (same repetition, same watcher
count) before its median is taken. Results: ``results/compare.json`` and
``results/compare.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty

from bench.daemon import LocalDaemon, free_port_block, rss_mb
from bench.report import RESULTS, environment, markdown_table, percentile, pyplot, save, save_figure
from imd.api.gen.imrpc import imrpc_pb2 as pm

GO_DEFAULT = "/work/go-im/longhorn-instance-manager"
SERVICE = "/ProcessManagerService/"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))

Key = tuple[str, str, bool]  # uuid, state, deleted


# -- daemons -------------------------------------------------------------------------------


class Daemon:
    """A daemon under test: its address, its pid, how to stop it."""

    label = ""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = 0
        self.root = Path(tempfile.mkdtemp(prefix="imd-compare-"))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.base}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def own_pids(self) -> list[int]:
        """The daemon's own processes (not the children it supervises)."""
        return [self.pid]

    def children(self) -> list[int]:
        own = set(self.own_pids())
        return [pid for pid, ppid in _ppids().items() if ppid in own]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; any child left behind is killed too."""
        if self.proc is None:
            return
        left = self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in left:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/bin/sleep\0"):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


class Imd(Daemon):
    label = "imd"

    def start(self) -> None:
        local = LocalDaemon(root=self.root)
        self.base = local.base
        self.proc = local.spawn()
        self._local = local

    def own_pids(self) -> list[int]:
        # imd's helper processes, if it has any, carry IMD_HELPER_OF in
        # their environment; its children never do.
        return [self.pid, *_helpers_of(self.pid)]


class GoIm(Daemon):
    label = "Go IM"

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = binary

    def start(self) -> None:
        # P..P+3 are its listeners (P+4 with SPDK), one more for pprof.
        self.base = free_port_block(6)
        logs = self.root / "logs"
        logs.mkdir()
        self.proc = subprocess.Popen(
            [
                self.binary,
                "daemon",
                "--listen",
                self.target,
                "--logs-dir",
                str(logs),
                "--port-range",
                "44001-45000",
            ],
            stdout=(self.root / "daemon.log").open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "LONGHORN_IM_DEBUG_ADDRESS": f"127.0.0.1:{self.base + 5}"},
        )


def _ppids() -> dict[int, int]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                data = Path(f"/proc/{entry.name}/stat").read_bytes()
                found[int(entry.name)] = int(data[data.rindex(b")") + 2 :].split()[1])
    return found


def _helpers_of(pid: int) -> list[int]:
    tag = f"IMD_HELPER_OF={pid}".encode()
    helpers = []
    for child, parent in _ppids().items():
        if parent == pid:
            with contextlib.suppress(OSError):
                if tag in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                    helpers.append(child)
    return helpers


def _cpu_s(pid: int, *, reaped: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads), or with ``reaped`` of
    the children it reaped, in seconds."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = data[data.rindex(b")") + 2 :].split()
    first = 13 if reaped else 11
    return (int(fields[first]) + int(fields[first + 1])) / CLK_TCK


class _Meter:
    """CPU seconds spent in one phase of the workload, by whom: the daemon
    (all its threads and helpers), this client, the children the daemon
    reaped meanwhile, and the machine as a whole."""

    def __init__(self, daemon: Daemon) -> None:
        self.pids = daemon.own_pids()
        self.start = self._sample()

    def _sample(self) -> tuple[float, ...]:
        return (
            time.perf_counter(),
            sum(_cpu_s(p) for p in self.pids),
            _cpu_s(os.getpid()),
            sum(_cpu_s(p, reaped=True) for p in self.pids),
            _busy_s(),
        )

    def read(self) -> dict[str, float]:
        wall, daemon, client, reaped, busy = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        return {
            "wall_s": round(wall, 3),
            "daemon_cpu_s": round(daemon, 3),
            "client_cpu_s": round(client, 3),
            "reaped_cpu_s": round(reaped, 3),
            "busy_cpu_s": round(busy, 3),
        }


def _ceiling(n: int, create: dict[str, float], children_exec: float, delete: dict[str, float]) -> dict[str, float]:
    """What any daemon could reach on this machine with this client.

    Per create (or delete), the work that is not the daemon's: the client's
    CPU and the child's exec (or exit). Spread over every core with a
    daemon that used no CPU at all, it gives the ceiling on creates/s and
    the floor under delete-all. A goal past it is out of reach here,
    whatever the daemon does; short of it, the cores left over are the
    daemon's CPU budget per operation, set beside what it used.

    The create phase runs from the first create to every watcher having
    seen every process running, and the delete phase from the first delete
    to every watcher having seen every process deleted: the client's work
    for the events is in them, however late a daemon delivers them."""
    create_other = (create["client_cpu_s"] + children_exec) / n
    delete_other = (delete["client_cpu_s"] + delete["reaped_cpu_s"] - children_exec) / n
    return {
        "cores": os.cpu_count() or 1,
        "other_ms_per_create": round(create_other * 1e3, 3),
        "daemon_ms_per_create": round(create["daemon_cpu_s"] / n * 1e3, 3),
        "other_ms_per_delete": round(max(0.0, delete_other) * 1e3, 3),
        "daemon_ms_per_delete": round(delete["daemon_cpu_s"] / n * 1e3, 3),
    }


def _runtime_s(pid: int) -> float:
    """CPU time of single-threaded ``pid`` to the nanosecond (schedstat):
    /proc/PID/stat counts in 10 ms ticks, and a child's exec is about one."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


async def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine, this process aside,
    used less than ``limit`` of a core over one second; returns that use."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        busy0, mine0 = _busy_s(), _cpu_s(os.getpid())
        await asyncio.sleep(1.0)
        used = (_busy_s() - busy0) - (_cpu_s(os.getpid()) - mine0)
        if used < limit or time.monotonic() > deadline:
            return used
        if not said:
            print(f"  (machine busy: {used:.2f} cores in use by others; waiting up to {max_wait:.0f} s)", flush=True)
            said = True
        await asyncio.sleep(4.0)


def _loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# -- the client -------------------------------------------------------------------------------


def _channel(target: str) -> grpc.aio.Channel:
    # A local subchannel pool: every channel is its own HTTP/2 connection,
    # as separate managers' would be (grpcio shares them otherwise).
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


class Stub:
    """ProcessManagerService through grpcio's generic channel methods, with
    imd's own message classes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.create = self._method(channel.unary_unary, "ProcessCreate", pm.ProcessCreateRequest, pm.ProcessResponse)
        self.delete = self._method(channel.unary_unary, "ProcessDelete", pm.ProcessDeleteRequest, pm.ProcessResponse)
        self.list = self._method(channel.unary_unary, "ProcessList", pm.ProcessListRequest, pm.ProcessListResponse)
        self.version = self._method(channel.unary_unary, "VersionGet", Empty, pm.VersionResponse)
        self.watch = self._method(channel.unary_stream, "ProcessWatch", Empty, pm.ProcessResponse)

    @staticmethod
    def _method(kind: Any, name: str, request: Any, response: Any) -> Any:
        return kind(
            SERVICE + name, request_serializer=request.SerializeToString, response_deserializer=response.FromString
        )


async def wait_ready(target: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    channel = _channel(target)
    try:
        stub = Stub(channel)
        while True:
            try:
                await stub.version(Empty(), timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await channel.close()


class Watchers:
    """W watch streams. ``seen[key]`` lists receive times, one per watcher
    that got the event; ``count[key]`` is its length, kept for cheap
    waiting."""

    def __init__(self, target: str, count: int) -> None:
        self.target = target
        self.size = count
        self.seen: dict[Key, list[float]] = defaultdict(list)
        self.names: dict[str, set[int]] = defaultdict(set)  # name -> watchers that saw it
        self.final: dict[str, list[float]] = defaultdict(list)  # uuid -> receive times of its deleted event
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []

    def start(self) -> None:
        for i in range(self.size):
            channel = _channel(self.target)
            self._channels.append(channel)
            self._tasks.append(asyncio.ensure_future(self._run(i, Stub(channel))))

    async def _run(self, index: int, stub: Stub) -> None:
        seen, names = self.seen, self.names
        clock = time.perf_counter
        try:
            async for event in stub.watch(Empty()):
                now = clock()
                status = event.status
                seen[(status.uuid, status.state, event.deleted)].append(now)
                if event.deleted:
                    self.final[status.uuid].append(now)
                names[event.spec.name].add(index)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"watcher {index}: {exc.code().name}: {exc.details()}")

    def count(self, key: Key) -> int:
        times = self.seen.get(key)
        return len(times) if times else 0

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()


def _all_saw(watch: Watchers, name: str) -> bool:
    return len(watch.names[name]) == watch.size


def _at_least(bound: float, value: float) -> bool:
    return value >= bound


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1e3, 2),
        "p99": round(percentile(values, 99) * 1e3, 2),
        "max": round(max(values) * 1e3, 2) if values else float("nan"),
        "count": len(values),
    }


async def workload(daemon: Daemon, n: int, watchers: int, concurrency: int, tag: str) -> dict[str, Any]:
    target = daemon.target
    watch = Watchers(target, watchers)
    watch.start()
    channels = [_channel(target) for _ in range(concurrency)]
    stubs = [Stub(ch) for ch in channels]
    lister = Stub(_channel(target))
    try:
        # 1. Every watcher subscribed: all of them saw one probe process.
        for attempt in range(20):
            probe = f"probe-{tag}-{attempt}"
            spec = pm.ProcessSpec(name=probe, binary="/bin/sleep", args=["60"])
            await stubs[0].create(pm.ProcessCreateRequest(spec=spec))
            subscribed = await wait_until(functools.partial(_all_saw, watch, probe), 2)
            await stubs[0].delete(pm.ProcessDeleteRequest(name=probe))
            if subscribed:
                break
        else:
            raise RuntimeError(f"only {len(watch.names[probe])} of {watchers} watchers subscribed")
        if not await _wait_empty(lister, 30):
            raise RuntimeError("probes not deleted")
        await asyncio.sleep(0.3)  # their last events settle everywhere

        pids = daemon.own_pids()
        cpu0 = sum(_cpu_s(p) for p in pids)
        reaped0 = sum(_cpu_s(p, reaped=True) for p in pids)
        busy0 = _busy_s()
        client0 = _cpu_s(os.getpid())
        create_meter = _Meter(daemon)

        # 2. Creates.
        names = [f"c-{tag}-{i}" for i in range(n)]
        sent: dict[str, float] = {}
        uuids: dict[str, str] = {}
        create_rpc: list[float] = []
        errors: list[str] = []
        todo = iter(names)

        async def creator(stub: Stub) -> None:
            for name in todo:
                request = pm.ProcessCreateRequest(spec=pm.ProcessSpec(name=name, binary="/bin/sleep", args=["3600"]))
                t0 = time.perf_counter()
                sent[name] = t0
                try:
                    reply = await stub.create(request)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"create {name}: {exc.code().name}: {exc.details()}")
                    continue
                create_rpc.append(time.perf_counter() - t0)
                uuids[name] = reply.status.uuid

        started = time.perf_counter()
        await asyncio.gather(*(creator(s) for s in stubs))
        create_wall = time.perf_counter() - started

        # 3. Running everywhere.
        running = [(uuids[nm], "running", False) for nm in names if nm in uuids]
        all_running = await wait_until(lambda: all(watch.count(k) >= watchers for k in running), 120, 0.01)
        to_running = [
            watch.seen[(uuids[nm], "running", False)][0] - sent[nm]
            for nm in names
            if nm in uuids and watch.seen.get((uuids[nm], "running", False))
        ]
        create_phase = create_meter.read()
        rss_loaded = sum(rss_mb(p) for p in daemon.own_pids())
        children = daemon.children()
        loaded_children = len(children)
        # What the children's exec cost (they sleep from then on): with the
        # client's share of the create phase, the machine's work per create
        # that no daemon can save.
        children_exec = sum(_runtime_s(p) for p in children)

        # 4. Deletes, then ProcessList until empty.
        todo = iter(names)
        delete_rpc: list[float] = []
        delete_sent: dict[str, float] = {}

        async def deleter(stub: Stub) -> None:
            for name in todo:
                if name not in uuids:
                    continue
                t0 = time.perf_counter()
                delete_sent[name] = t0
                try:
                    await stub.delete(pm.ProcessDeleteRequest(name=name, uuid=uuids[name]))
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"delete {name}: {exc.code().name}: {exc.details()}")
                    continue
                delete_rpc.append(time.perf_counter() - t0)

        delete_meter = _Meter(daemon)
        first_delete = time.perf_counter()
        await asyncio.gather(*(deleter(s) for s in stubs))
        deletes_returned = time.perf_counter() - first_delete
        emptied = await _wait_empty(lister, 120)
        delete_all = time.perf_counter() - first_delete
        # The client's work for the deletes includes their events, which a
        # daemon may deliver after ProcessList is empty: meter until every
        # watcher saw every process go.
        await wait_until(lambda: all(len(watch.final[u]) >= watchers for u in uuids.values()), 60, 0.01)
        delete_phase = delete_meter.read()

        cpu1 = sum(_cpu_s(p) for p in pids)
        reaped1 = sum(_cpu_s(p, reaped=True) for p in pids)
        client1 = _cpu_s(os.getpid())
        busy1 = _busy_s()

        to_final = []
        for name, uuid in uuids.items():
            times = watch.final.get(uuid)
            if times:
                to_final.append(times[0] - delete_sent[name])
        spreads = [max(t) - min(t) for t in watch.seen.values() if len(t) == watchers] if watchers > 1 else []
        daemon_cpu = cpu1 - cpu0
        children_cpu = reaped1 - reaped0
        client_cpu = client1 - client0
        return {
            "daemon": daemon.label,
            "n": n,
            "watchers": watchers,
            "concurrency": concurrency,
            "complete": all_running and emptied and not errors and not watch.errors,
            "errors": (errors + watch.errors)[:10],
            "creates_per_s": round(len(create_rpc) / create_wall, 1),
            "create_rpc_ms": summary_ms(create_rpc),
            "create_to_running_ms": summary_ms(to_running),
            "delete_all_s": round(delete_all, 3),
            "deletes_returned_s": round(deletes_returned, 3),
            "delete_rpc_ms": summary_ms(delete_rpc),
            "delete_to_final_ms": summary_ms(to_final),
            "spread_ms": summary_ms(spreads) if spreads else None,
            "rss_loaded_mb": round(rss_loaded, 1),
            "loaded_children": loaded_children,
            "events": sum(len(t) for t in watch.seen.values()),
            "daemon_cpu_s": round(daemon_cpu, 2),
            "children_cpu_s": round(children_cpu, 2),
            "client_cpu_s": round(client_cpu, 2),
            "other_cpu_s": round(max(0.0, busy1 - busy0 - daemon_cpu - children_cpu - client_cpu), 2),
            "wall_s": round(time.perf_counter() - started, 2),
            "phases": {
                "create": create_phase | {"children_cpu_s": round(children_exec, 3)},
                "delete": delete_phase,
            },
            "ceiling": _ceiling(n, create_phase, children_exec, delete_phase),
        }
    finally:
        await watch.close()
        for ch in channels:
            await ch.close()
        await lister.channel.close()


async def _wait_empty(stub: Stub, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while True:
        try:
            listing = await stub.list(pm.ProcessListRequest())
            if not listing.processes:
                return True
        except grpc.aio.AioRpcError:
            pass
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.005)


async def run_one(
    daemon: Daemon,
    n: int,
    watchers: int,
    concurrency: int,
    tag: str,
    profile: Path | None = None,
    quiet: float | None = None,
) -> dict[str, Any]:
    if quiet is not None:
        await wait_quiet(quiet, 600)
    load = _loadavg()
    daemon.start()
    spy = None
    try:
        await wait_ready(daemon.target)
        if profile is not None:
            # Collapsed stacks (py-spy's raw format) of whichever thread
            # holds the GIL: where the daemon's Python CPU goes.
            spy = subprocess.Popen(  # noqa: ASYNC220 (a moment, once per run)
                [PY_SPY, "record", "-p", str(daemon.pid), "-r", "200", "--gil", "--format", "raw", "-o", str(profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        result = await workload(daemon, n, watchers, concurrency, tag)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        daemon.stop()
    result["loadavg_before"] = load
    return result


# -- reporting -------------------------------------------------------------------------------

# name, getter, goal as (comparison, bound) on the imd/Go ratio
METRICS: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
    ("creates/s", lambda r: r["creates_per_s"]),
    ("create→running p99 ms", lambda r: r["create_to_running_ms"]["p99"]),
    ("create RPC p50 ms", lambda r: r["create_rpc_ms"]["p50"]),
    ("create RPC p99 ms", lambda r: r["create_rpc_ms"]["p99"]),
    ("delete-all s", lambda r: r["delete_all_s"]),
    ("RSS loaded MB", lambda r: r["rss_loaded_mb"]),
    ("spread p99 ms", lambda r: r["spread_ms"]["p99"] if r["spread_ms"] else float("nan")),
    ("daemon CPU s", lambda r: r["daemon_cpu_s"]),
    ("other CPU s", lambda r: r["other_cpu_s"]),
    ("daemon ms/create", lambda r: r["ceiling"]["daemon_ms_per_create"]),
    ("client+child ms/create", lambda r: r["ceiling"]["other_ms_per_create"]),
    ("daemon ms/delete", lambda r: r["ceiling"]["daemon_ms_per_delete"]),
    ("client+child ms/delete", lambda r: r["ceiling"]["other_ms_per_delete"]),
]


def _median_spread(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return _fmt(med)
    return f"{_fmt(med)} ({_fmt(min(values))}-{_fmt(max(values))})"


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _by(results: list[dict[str, Any]], daemon: str, watchers: int) -> list[dict[str, Any]]:
    return [r for r in results if r["daemon"] == daemon and r["watchers"] == watchers]


def side_by_side(results: list[dict[str, Any]], watcher_counts: list[int], daemons: list[str]) -> str:
    rows = []
    for w in watcher_counts:
        for d in daemons:
            runs = _by(results, d, w)
            if not runs:
                continue
            row: dict[str, Any] = {"watchers": w, "daemon": d, "runs": len(runs)}
            for name, get in METRICS:
                if name == "spread p99 ms" and w == 1:
                    row[name] = "-"
                    continue
                row[name] = _median_spread([get(r) for r in runs])
            row["complete"] = all(r["complete"] for r in runs)
            rows.append(row)
    columns = ["watchers", "daemon", "runs", *(m[0] for m in METRICS), "complete"]
    return markdown_table(rows, columns)


def goals(results: list[dict[str, Any]], watcher_counts: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """The issue's goals, as median over repetitions of the per-repetition
    ratio imd/Go (and imd's own figures for the no-tail and spread goals)."""
    checks: list[dict[str, Any]] = []

    def paired(w: int, get: Callable[[dict[str, Any]], float]) -> list[float]:
        imd = {r["rep"]: get(r) for r in _by(results, "imd", w)}
        go = {r["rep"]: get(r) for r in _by(results, "Go IM", w)}
        return [imd[k] / go[k] for k in imd if go.get(k)]

    def check(goal: str, values: list[float], ok: Callable[[float], bool], unit: str = "x", reach: str = "-") -> None:
        if not values:
            checks.append({"goal": goal, "result": "-", "status": "not measured", "reach": reach})
            return
        med = statistics.median(values)
        spread = f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
        status = "met" if ok(med) else "MISSED"
        result = f"{med:.2f}{unit}{spread}"
        checks.append({"goal": goal, "result": result, "value": med, "status": status, "reach": reach})

    def against_ceiling(w: int, metric: int, factor: float) -> str:
        """The goal in absolute terms against what this machine leaves any
        daemon with this client (see _ceiling): the daemon's CPU budget per
        operation at the goal's rate, beside what each daemon used."""
        creates = metric == 0
        op = "create" if creates else "delete"
        runs = [r for r in results if r["watchers"] == w]
        go = statistics.median(METRICS[metric][1](r) for r in _by(results, "Go IM", w))
        other = statistics.median(r["ceiling"][f"other_ms_per_{op}"] for r in runs)
        cores = runs[0]["ceiling"]["cores"]
        n = runs[0]["n"]
        needed = go * factor
        # ms of CPU per operation the whole machine has at the needed pace
        machine = cores * 1e3 / needed if creates else cores * needed * 1e3 / n
        used = ", ".join(
            f"{d} {statistics.median(r['ceiling'][f'daemon_ms_per_{op}'] for r in _by(results, d, w)):.2f}"
            for d in ("imd", "Go IM")
        )
        goal = f"{needed:.0f}/s" if creates else f"{needed:.2f} s"
        budget = machine - other
        if budget <= 0:
            return f"{goal}: OUT OF REACH, client and children alone need {other:.2f} of {machine:.2f} ms per {op}"
        return f"{goal}: daemon CPU budget {budget:.2f} ms per {op} (used: {used})"

    for w in watcher_counts:
        target = 1.5 if w <= 1 else 3.0
        enough = functools.partial(_at_least, target)
        check(
            f"creates/s ≥ {target}x Go at {w} watchers",
            paired(w, METRICS[0][1]),
            enough,
            reach=against_ceiling(w, 0, target),
        )
        check(
            f"delete-all ≤ 0.5x Go at {w} watchers",
            paired(w, METRICS[4][1]),
            lambda v: v <= 0.5,
            reach=against_ceiling(w, 4, 0.5),
        )
        check(f"create→running p99 ≤ 0.5x Go at {w} watchers", paired(w, METRICS[1][1]), lambda v: v <= 0.5)
        tails = [r["create_rpc_ms"]["p99"] / r["create_rpc_ms"]["p50"] for r in _by(results, "imd", w)]
        check(f"imd create RPC p99 ≤ 3x its p50 at {w} watchers", tails, lambda v: v <= 3)
        check(f"RSS loaded ≤ Go's at {w} watchers", paired(w, METRICS[5][1]), lambda v: v <= 1)
        if w > 1:
            spreads = [r["spread_ms"]["p99"] for r in _by(results, "imd", w) if r["spread_ms"]]
            check(f"imd spread p99 over {w} watchers ≤ 20 ms", spreads, lambda v: v <= 20, " ms")
    return markdown_table(checks, ["goal", "result", "status", "reach"]), checks


def plot(results: list[dict[str, Any]], watcher_counts: list[int], daemons: list[str], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    shown = [METRICS[i] for i in (0, 1, 3, 4, 5)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.6))
    width = 0.8 / max(1, len(daemons))
    for ax, (name, get) in zip(axes, shown, strict=True):
        for i, d in enumerate(daemons):
            meds, lows, highs = [], [], []
            for w in watcher_counts:
                vals = [get(r) for r in _by(results, d, w)] or [float("nan")]
                med = statistics.median(vals)
                meds.append(med)
                lows.append(med - min(vals))
                highs.append(max(vals) - med)
            xs = [x + (i - (len(daemons) - 1) / 2) * width for x in range(len(watcher_counts))]
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=d)
        ax.set_xticks(range(len(watcher_counts)), [f"{w} watchers" for w in watcher_counts])
        ax.set_title(name, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend()
    return save_figure(plt, fig, path)


def _orders(daemons: list[str], rep: int) -> Iterator[str]:
    """Alternate which daemon goes first, so neither always runs on a
    machine the other just warmed (or heated)."""
    yield from daemons if rep % 2 == 0 else reversed(daemons)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--go", default=GO_DEFAULT, help="the Go instance manager binary (default %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="processes per run (default %(default)s)")
    parser.add_argument("--watchers", default="1,50", help="watcher counts, comma-separated (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default %(default)s)")
    parser.add_argument("--only", choices=["imd", "go"], help="run one daemon only")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.15,
        metavar="CORES",
        help="before each run, wait (up to 10 min) until others use less than this many cores (default %(default)s)",
    )
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        metavar="K",
        help="re-run a run during which others used over 0.3 cores on average, up to K times (default %(default)s)",
    )
    parser.add_argument("--label", default="compare", help="results/<label>.{json,png} (default %(default)s)")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy (200 Hz, GIL holder, collapsed stacks) on each imd run, into DIR"
    )
    args = parser.parse_args()
    watcher_counts = [int(w) for w in args.watchers.split(",")]
    daemons = ["imd", "Go IM"]
    if args.only == "imd":
        daemons = ["imd"]
    elif args.only == "go":
        daemons = ["Go IM"]
    if "Go IM" in daemons and not os.access(args.go, os.X_OK):
        print(f"Go original not found at {args.go}: its rows are skipped (--go PATH to point at it)")
        daemons.remove("Go IM")
    if not daemons:
        sys.exit("nothing to run")
    print(f"command: python -m bench.compare {' '.join(sys.argv[1:])}")
    results: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        for w in watcher_counts:
            for d in _orders(daemons, rep):
                daemon: Daemon = Imd() if d == "imd" else GoIm(args.go)
                tag = f"{rep}{w}{int(time.time() * 1000) % 100000}"
                profile = Path(args.profile) / f"imd-w{w}-rep{rep}.txt" if args.profile and d == "imd" else None
                if profile is not None:
                    profile.parent.mkdir(parents=True, exist_ok=True)
                for attempt in range(args.retry_noisy + 1):
                    result = await run_one(daemon, args.n, w, args.concurrency, tag, profile, args.quiet)
                    noisy = result["other_cpu_s"] / max(result["wall_s"], 0.1) > 0.3
                    result["noisy"] = noisy
                    if not noisy or attempt == args.retry_noisy:
                        break
                    print(f"  (rep {rep} W={w} {d}: others used {result['other_cpu_s']} CPU s; run again)", flush=True)
                    daemon = Imd() if d == "imd" else GoIm(args.go)
                result["rep"] = rep
                results.append(result)
                print(
                    f"rep {rep} W={w:<3} {d:6} creates/s {result['creates_per_s']:7.1f}  "
                    f"create p50/p99 {result['create_rpc_ms']['p50']:6.1f}/{result['create_rpc_ms']['p99']:6.1f} ms  "
                    f"→running p99 {result['create_to_running_ms']['p99']:7.1f} ms  "
                    f"delete-all {result['delete_all_s']:5.2f} s  RSS {result['rss_loaded_mb']:5.1f} MB  "
                    f"spread p99 {result['spread_ms']['p99'] if result['spread_ms'] else '-'}  "
                    f"CPU {result['daemon_cpu_s']:.1f} s (other {result['other_cpu_s']:.1f})"
                    + ("" if result["complete"] else f"  INCOMPLETE {result['errors'][:2]}")
                    + ("  NOISY" if result.get("noisy") else ""),
                    flush=True,
                )
                await asyncio.sleep(1.0)
    table = side_by_side(results, watcher_counts, daemons)
    print()
    print(f"N={args.n}, {args.concurrency} concurrent callers; medians over {args.repeat} runs (min-max)\n")
    print(table)
    checks_table, checks = goals(results, watcher_counts) if len(daemons) == 2 else ("", [])
    if checks_table:
        print()
        print(checks_table)
    path = save(
        args.label,
        {
            "benchmark": "compare",
            "command": f"python -m bench.compare {' '.join(sys.argv[1:])}",
            "env": environment(),
            "go_binary": args.go if "Go IM" in daemons else None,
            "results": results,
            "goals": checks,
            "table": table,
        },
    )
    print(f"\nsaved {path}")
    png = plot(results, watcher_counts, daemons, RESULTS / f"{args.label}.png")
    if png:
        print(f"plot {png}")


if __name__ == "__main__":
    asyncio.run(main())
