"""Contiguous port blocks from a fixed range, handed out next-fit.

Next-fit (search from where the last block ended, wrapping around) spreads
reuse over the whole range, so a port freed a moment ago (which a client may
still be connecting to) is the last one handed out again. The Go original
does the same; unlike it, ports here are freed only when the process that
held them has exited.
"""

from __future__ import annotations

from imd.errors import InvalidArgument, PortsExhausted
from imd.supervisor.model import PortBlock


class PortAllocator:
    """Owns which ports of ``[low, high]`` are in use. Not thread-safe: the
    supervisor, on the event loop, is its only caller."""

    def __init__(self, low: int, high: int) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")
        self.low = low
        self.high = high
        self._used = bytearray(high - low + 1)
        self._next = 0
        self._in_use = 0

    @property
    def size(self) -> int:
        return len(self._used)

    @property
    def in_use(self) -> int:
        return self._in_use

    def allocate(self, count: int) -> PortBlock:
        if count <= 0:
            raise ValueError("count must be positive")
        size = len(self._used)
        if count > size:
            raise InvalidArgument(
                f"{count} ports requested but the range {self.low}-{self.high} has {size}",
                field="spec.port_count",
            )
        # Candidate starts in next-fit order; a block may not wrap past the end.
        start = self._next
        for _ in range(size):
            if start + count > size:
                start = 0
            window = self._used[start : start + count]
            busy = window.rfind(1)
            if busy < 0:
                self._used[start : start + count] = b"\x01" * count
                self._in_use += count
                self._next = (start + count) % size
                return PortBlock(self.low + start, self.low + start + count - 1)
            start += busy + 1
            if start >= size:
                start = 0
        raise PortsExhausted(
            f"no {count} contiguous free ports ({self._in_use} of {size} in use)",
            resource=f"port range {self.low}-{self.high}",
        )

    def reserve(self, block: PortBlock) -> None:
        """Mark a known block used (re-adoption after a restart)."""
        lo, hi = block.start - self.low, block.end - self.low
        if lo < 0 or hi >= len(self._used) or any(self._used[lo : hi + 1]):
            raise ValueError(f"ports {block.start}-{block.end} unavailable")
        self._used[lo : hi + 1] = b"\x01" * block.count
        self._in_use += block.count

    def release(self, block: PortBlock) -> None:
        lo, hi = block.start - self.low, block.end - self.low
        if lo < 0 or hi >= len(self._used) or not all(self._used[lo : hi + 1]):
            raise ValueError(f"ports {block.start}-{block.end} were not allocated")
        self._used[lo : hi + 1] = bytes(block.count)
        self._in_use -= block.count
