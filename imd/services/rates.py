"""Rates for Longhorn's MetricsGet: throughput, IOPS and average latency
over the interval between two calls for the same object, from counters
that only grow (an engine's in the C core, a disk's bdev iostat).

Longhorn's fields: readThroughput/writeThroughput in bytes/s,
readIOPS/writeIOPS, readLatency/writeLatency as the average nanoseconds of
one read/write in the interval (0 when there was none). The first call for
an object measures from the counters' origin (zero, at ``origin_s``).
A counter that went backwards (the engine was re-created) starts a new
interval from zero.
"""

from __future__ import annotations

import msgspec


class Sample(msgspec.Struct, frozen=True):
    """Cumulative counters at ``at_s`` (seconds, any monotonic origin)."""

    at_s: float
    reads: int
    writes: int
    bytes_read: int
    bytes_written: int
    read_latency_ns: int
    write_latency_ns: int


class Rates(msgspec.Struct, frozen=True):
    read_throughput: int = 0
    write_throughput: int = 0
    read_latency_ns: int = 0
    write_latency_ns: int = 0
    read_iops: int = 0
    write_iops: int = 0


class RateMeter:
    def __init__(self) -> None:
        self._last: dict[str, Sample] = {}

    def rates(self, key: str, now: Sample, origin_s: float) -> Rates:
        before = self._last.get(key)
        if before is None or now.reads < before.reads or now.writes < before.writes:
            before = Sample(origin_s, 0, 0, 0, 0, 0, 0)
        self._last[key] = now
        seconds = now.at_s - before.at_s
        if seconds <= 0:
            return Rates()
        reads, writes = now.reads - before.reads, now.writes - before.writes
        return Rates(
            read_throughput=int((now.bytes_read - before.bytes_read) / seconds),
            write_throughput=int((now.bytes_written - before.bytes_written) / seconds),
            read_latency_ns=(now.read_latency_ns - before.read_latency_ns) // reads if reads else 0,
            write_latency_ns=(now.write_latency_ns - before.write_latency_ns) // writes if writes else 0,
            read_iops=int(reads / seconds),
            write_iops=int(writes / seconds),
        )

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
