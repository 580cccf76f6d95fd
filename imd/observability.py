"""What an operator sees of a running daemon: the facts Prometheus scrapes
(collectors that read live state at scrape time) and the status document
``imd status`` shows.

It sits at the daemon's floor because it reads every part (the
supervisor, the durability owner, the V2 node and its engines' C
counters), and nothing below may know them all. Reading never changes
anything and never waits: engines' counters are atomics in the C core,
read without a request to its poller.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from imd import __version__
from imd.eventlog import JsonLineFormatter
from imd.metrics import Metrics
from imd.supervisor.durability import Durability
from imd.supervisor.model import ProcessState
from imd.supervisor.supervisor import Supervisor
from imd.v2.model import ReplicaMode
from imd.v2.node import V2Node

STATES = [s.value for s in ProcessState]


class DaemonCollector(Collector):
    """Processes, instances, watchers, ports, degraded mode."""

    def __init__(self, supervisor: Supervisor, durability: Durability, v2: V2Node | None) -> None:
        self.supervisor = supervisor
        self.durability = durability
        self.v2 = v2

    def describe(self) -> Iterator[Any]:
        yield from self.families()

    @staticmethod
    def families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "imd_processes", "Supervised processes (as ProcessList shows them), by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                "imd_instances",
                "Instances (as InstanceList shows them), by data engine, type and state.",
                labels=["data_engine", "type", "state"],
            ),
            GaugeMetricFamily("imd_watchers", "Open watch streams, by what they watch.", labels=["source"]),
            GaugeMetricFamily("imd_ports", "Ports of the daemon's range, in use or free.", labels=["state"]),
            GaugeMetricFamily(
                "imd_state_degraded", "1 while a state file cannot be written and changes are refused, else 0."
            ),
        )

    def collect(self) -> Iterator[Any]:
        processes, instances, watchers, ports, degraded = self.families()
        views = self.supervisor.views()
        by_state = dict.fromkeys(STATES, 0)
        by_instance: dict[tuple[str, str, str], int] = {}
        for view in views:
            by_state[view.state.value] += 1
            key = ("v1", view.instance.type or "process", view.state.value)
            by_instance[key] = by_instance.get(key, 0) + 1
        for state, count in by_state.items():
            processes.add_metric([state], count)
        if self.v2 is not None:
            for v2view in self.v2.views():
                key = ("v2", v2view.type, v2view.state.value)
                by_instance[key] = by_instance.get(key, 0) + 1
        for key, count in sorted(by_instance.items()):
            instances.add_metric(list(key), count)
        watchers.add_metric(["processes"], self.supervisor.events.watcher_count)
        if self.v2 is not None:
            watchers.add_metric(["v2_instances"], self.v2.events.watcher_count)
        pool = self.supervisor.ports
        ports.add_metric(["in_use"], pool.in_use)
        ports.add_metric(["free"], pool.size - pool.in_use)
        degraded.add_metric([], 1 if self.durability.degraded else 0)
        yield from (processes, instances, watchers, ports, degraded)


class SpdkCollector(Collector):
    """The SPDK target, controllers and paths, and every engine's I/O."""

    def __init__(self, v2: V2Node) -> None:
        self.v2 = v2

    def describe(self) -> Iterator[Any]:
        yield from self.families()

    @staticmethod
    def families() -> tuple[Any, ...]:
        engine = ["engine"]
        return (
            GaugeMetricFamily("imd_spdk_target_up", "1 while the node's SPDK target answers, else 0."),
            GaugeMetricFamily(
                "imd_spdk_controllers", "NVMe-oF controllers engines hold on replicas, by state.", labels=["state"]
            ),
            GaugeMetricFamily("imd_spdk_paths", "Paths of those controllers, by state.", labels=["state"]),
            CounterMetricFamily("imd_spdk_reconnects", "Paths reconnected after they failed."),
            CounterMetricFamily("imd_engine_reads", "Reads the engine served its hosts.", labels=engine),
            CounterMetricFamily("imd_engine_writes", "Writes the engine took from its hosts.", labels=engine),
            CounterMetricFamily("imd_engine_read_bytes", "Bytes read by hosts.", labels=engine),
            CounterMetricFamily("imd_engine_written_bytes", "Bytes written by hosts.", labels=engine),
            CounterMetricFamily("imd_engine_io_errors", "Host I/Os the engine failed.", labels=engine),
            HistogramMetricFamily(
                "imd_engine_io_latency_seconds", "Latency of the engine's host I/Os (reads and writes).", labels=engine
            ),
            GaugeMetricFamily("imd_engine_replicas", "The engine's replicas, by mode.", labels=["engine", "mode"]),
            GaugeMetricFamily(
                "imd_engine_rebuild_bytes",
                "The rebuild in progress: bytes copied (done) and to copy (total).",
                labels=["engine", "kind"],
            ),
            GaugeMetricFamily(
                "imd_engine_frontend_hosts", "Hosts connected to the engine's NVMe-oF export.", labels=engine
            ),
        )

    def collect(self) -> Iterator[Any]:
        (up, controllers, paths, reconnects, reads, writes, rbytes, wbytes, errors, latency, modes, rebuild, hosts) = (
            self.families()
        )
        up.add_metric([], 1 if self.v2.target.available else 0)
        data = self.v2.engines.data
        if data is not None:
            states = {"connected": 0, "failed": 0}
            path_states = {"connected": 0, "down": 0}
            for info in data.initiator.controllers():
                states["failed" if info.failed else "connected"] += 1
                for path in info.paths:
                    path_states["connected" if path.connected else "down"] += 1
            for key, count in states.items():
                controllers.add_metric([key], count)
            for key, count in path_states.items():
                paths.add_metric([key], count)
            reconnects.add_metric([], getattr(data.backend, "reconnects_total", 0))
        for name, engine in sorted(self.v2.engines.engines.items()):
            by_mode = dict.fromkeys((m.value for m in ReplicaMode), 0)
            for replica_mode in engine.record.modes.values():
                by_mode[replica_mode.value] += 1
            for mode_name, count in by_mode.items():
                modes.add_metric([name, mode_name], count)
            mirror = engine.mirror
            if mirror is None:
                continue
            c = mirror.counters()
            reads.add_metric([name], c.get("reads", 0))
            writes.add_metric([name], c.get("writes", 0))
            rbytes.add_metric([name], c.get("bytes_read", 0))
            wbytes.add_metric([name], c.get("bytes_written", 0))
            errors.add_metric([name], c.get("errors", 0))
            hosts.add_metric([name], c.get("frontend_hosts", 0))
            latency.add_metric([name], *_histogram(c))
            if engine.rebuild is not None:
                status = engine.rebuild.status()
                rebuild.add_metric([name, "done"], status.bytes_done)
                rebuild.add_metric([name, "total"], status.bytes_total)
        yield from (up, controllers, paths, reconnects, reads, writes, rbytes, wbytes, errors, latency, modes)
        yield from (rebuild, hosts)


def _histogram(counters: dict[str, int]) -> tuple[list[tuple[str, float]], float]:
    """The core's log2 buckets (``latency_lt_<N>us``: I/Os under N µs, at
    least N/2) as cumulative Prometheus buckets in seconds, and an estimated
    sum (each bucket at its midpoint; the core keeps no exact sum of both
    kinds together)."""
    buckets = sorted(
        (int(key[len("latency_lt_") : -2]), count) for key, count in counters.items() if key.startswith("latency_lt_")
    )
    cumulative: list[tuple[str, float]] = []
    running = 0
    total = 0.0
    for upper_us, count in buckets:
        running += count
        total += count * (upper_us * 0.75) / 1e6
        cumulative.append((f"{upper_us / 1e6:g}", running))
    cumulative.append(("+Inf", running))
    return cumulative, total


class _Described(Collector):
    """Metric families without data: what a collector would expose."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def describe(self) -> Iterator[Any]:
        yield from self._families

    def collect(self) -> Iterator[Any]:
        yield from ()


def metrics_table() -> str:
    """README's table of metrics, generated from what the daemon registers
    (a test fails if the two disagree)."""
    metrics = Metrics()
    metrics.register(_Described([*DaemonCollector.families(), *SpdkCollector.families()]))
    rows = ["| metric | type | what |", "|---|---|---|"]
    for name, kind, doc in metrics.documentation():
        rows.append(f"| `{name}` | {kind} | {doc} |")
    return "\n".join(rows)


# -- imd status --------------------------------------------------------------------


class RecentErrors(logging.Handler):
    """The last error lines of the daemon's log, for ``imd status`` (the
    full log is on stderr, in journald)."""

    def __init__(self, keep: int = 20) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(JsonLineFormatter())
        self._lines: deque[str] = deque(maxlen=keep)
        logging.getLogger("imd").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))

    def lines(self) -> list[str]:
        return list(self._lines)


class TargetStatus(msgspec.Struct, frozen=True):
    available: bool
    reason: str
    pid: int
    uuid: str
    up_since: float
    version: str


class DiskStatus(msgspec.Struct, frozen=True):
    name: str
    path: str
    total_size: int
    free_size: int


class ReplicaModeStatus(msgspec.Struct, frozen=True):
    name: str
    mode: str
    error: str


class RebuildStatusLine(msgspec.Struct, frozen=True):
    replica: str
    bytes_done: int
    bytes_total: int
    state: str


class EngineStatus(msgspec.Struct, frozen=True):
    name: str
    state: str
    size: int
    endpoint: str
    replicas: list[ReplicaModeStatus]
    rebuild: RebuildStatusLine | None
    hosts: int


class DaemonStatus(msgspec.Struct, frozen=True):
    version: str
    uptime_s: float
    listeners: dict[str, str]
    counts: dict[str, int]
    degraded: str
    target: TargetStatus | None
    disks: list[DiskStatus]
    engines: list[EngineStatus]
    errors: list[str]


def daemon_status(
    *,
    started: float,
    listeners: dict[str, str],
    supervisor: Supervisor,
    durability: Durability,
    v2: V2Node | None,
    disks: list[DiskStatus],
    errors: list[str],
) -> DaemonStatus:
    counts: dict[str, int] = {}
    for process in supervisor.views():
        counts[f"v1 {process.state.value}"] = counts.get(f"v1 {process.state.value}", 0) + 1
    target = None
    engines = []
    if v2 is not None:
        counts.update(v2.counts())
        proc = v2.target.process
        target = TargetStatus(
            available=v2.target.available,
            reason=v2.target.reason,
            pid=proc.pid if proc is not None else 0,
            uuid=proc.uuid if proc is not None else "",
            up_since=v2.target.up_since,
            version=v2.target.version,
        )
        for name, engine in sorted(v2.engines.engines.items()):
            view = v2.engines.view(engine)
            rebuild = None
            if engine.rebuild is not None:
                s = engine.rebuild.status()
                rebuild = RebuildStatusLine(str(s.dst), int(s.bytes_done), int(s.bytes_total), str(s.state))
            counters = engine.mirror.counters() if engine.mirror is not None else {}
            engines.append(
                EngineStatus(
                    name=name,
                    state=view.state.value,
                    size=engine.record.size,
                    endpoint=view.endpoint,
                    replicas=[
                        ReplicaModeStatus(
                            r, engine.record.modes.get(r, ReplicaMode.ERR).value, engine.errors.get(r, "")
                        )
                        for r in sorted(engine.record.spec.replicas)
                    ],
                    rebuild=rebuild,
                    hosts=int(counters.get("frontend_hosts", 0)),
                )
            )
    return DaemonStatus(
        version=__version__,
        uptime_s=round(time.monotonic() - started, 1),
        listeners=listeners,
        counts=counts,
        degraded=durability.reason if durability.degraded else "",
        target=target,
        disks=disks,
        engines=engines,
        errors=errors,
    )
