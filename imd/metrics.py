"""The daemon's metrics, in Prometheus' terms (``prometheus_client``).

Two kinds, so that measuring never slows what is measured:

* **Events, counted where they happen**: an RPC answered, a state entered,
  a spawn refused, a watch event sent, a watcher dropped, a state file
  written. The code that sees the event increments a counter or observes a
  histogram (well under a microsecond); nothing here runs per I/O.
* **Facts, read when Prometheus scrapes**: processes and instances by
  state, watchers open, ports in use, the SPDK target, controllers and
  paths, engines' I/O counters. Their owners register collectors that read
  live state at scrape time, so nothing is kept twice, and engines' counters
  come straight from the C core's atomics (no request to the poller, no
  Python per I/O).

One ``Metrics`` per daemon, made at assembly and handed to the parts that
count events; a part made without one (a test, a tool) gets its own,
unexposed. Names follow Prometheus' rules: the ``imd_`` prefix, base units
(seconds, bytes), ``_total`` on counters (prometheus_client adds it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

# gRPC calls take from tens of microseconds (a Get) to minutes (a create
# that waits for a health check); state commits are an fsync or two.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# A silent peer is declared after the replica timeout (default 5 s), give or
# take the keep-alive interval.
SILENCE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_requests = Counter(
            "imd_grpc_requests", "gRPC requests answered, by method and status code.", ["method", "code"], registry=r
        )
        self.rpc_duration = Histogram(
            "imd_grpc_request_duration_seconds",
            "Time from a gRPC request's arrival to its answer (streams: to their end), by method.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "imd_state_transitions",
            "Instances and processes entering a state, by data engine, kind and state.",
            ["data_engine", "type", "state"],
            registry=r,
        )
        self.spawn_failures = Counter(
            "imd_spawn_failures",
            "Children that could not be started, by cause (an errno name).",
            ["reason"],
            registry=r,
        )
        self.recovered = Gauge(
            "imd_recovered_children",
            "Children found at the daemon's start, by outcome: adopted, lost (exited while the daemon was "
            "down), untracked_killed (spawned but never recorded).",
            ["outcome"],
            registry=r,
        )
        self.watch_events = Counter(
            "imd_watch_events_sent", "Watch events sent to watchers (one per watcher per event).", ["api"], registry=r
        )
        self.watchers_dropped = Counter(
            "imd_watchers_dropped", "Watchers ended with RESOURCE_EXHAUSTED for falling behind.", ["api"], registry=r
        )
        self.commits = Counter(
            "imd_state_commits",
            "State file writes (each covers every change made before it began), by file and result.",
            ["file", "result"],
            registry=r,
        )
        self.commit_duration = Histogram(
            "imd_state_commit_duration_seconds",
            "Time to write, fsync and rename a state file, by file.",
            ["file"],
            buckets=COMMIT_BUCKETS,
            registry=r,
        )

        self.replica_silence = Histogram(
            "imd_engine_replica_silence_seconds",
            "How long a replica had answered nothing when its engine failed it for that (the time to detect a "
            "silent replica).",
            buckets=SILENCE_BUCKETS,
            registry=r,
        )
        self.path_silence = Histogram(
            "imd_spdk_path_silence_seconds",
            "How long an NVMe-oF path's peer had answered nothing when the path was declared lost.",
            buckets=SILENCE_BUCKETS,
            registry=r,
        )

        self._described: list[Any] = [
            self.rpc_requests,
            self.rpc_duration,
            self.transitions,
            self.spawn_failures,
            self.recovered,
            self.watch_events,
            self.watchers_dropped,
            self.commits,
            self.commit_duration,
            self.replica_silence,
            self.path_silence,
        ]

    def register(self, collector: Collector) -> None:
        """A collector of facts read at scrape time; it must describe its
        metrics without live state (``describe``), for the documentation."""
        self.registry.register(collector)
        self._described.append(collector)

    def documentation(self) -> list[tuple[str, str, str]]:
        """(name, type, help) of every metric the daemon exposes, sorted:
        what README's metrics table is generated from."""
        found: dict[str, tuple[str, str, str]] = {}
        for family in self._families():
            name = family.name + "_total" if family.type == "counter" else family.name
            found[name] = (name, family.type, family.documentation)
        return sorted(found.values())

    def _families(self) -> Iterable[Any]:
        for collector in self._described:
            yield from collector.describe()
