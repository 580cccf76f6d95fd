"""PortAllocator: contiguous blocks, next-fit with wrap-around, exact release."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imd.errors import InvalidArgument, PortsExhausted
from imd.supervisor.model import PortBlock
from imd.supervisor.ports import PortAllocator


def test_next_fit_wraps_around() -> None:
    ports = PortAllocator(100, 109)
    a = ports.allocate(4)
    b = ports.allocate(4)
    assert (a.start, b.start) == (100, 104)
    ports.release(a)
    c = ports.allocate(3)  # 108-109 too small: wraps to the freed start
    assert (c.start, c.end) == (100, 102)
    d = ports.allocate(2)
    assert (d.start, d.end) == (108, 109)


def test_exhaustion_and_oversized_requests() -> None:
    ports = PortAllocator(1, 4)
    ports.allocate(3)
    with pytest.raises(PortsExhausted) as exc:
        ports.allocate(2)
    # The range ran out; the caller's port_count is not at fault.
    assert exc.value.field is None and exc.value.resource == "port range 1-4"
    assert str(exc.value) == "port range 1-4: no 2 contiguous free ports (3 of 4 in use)"
    with pytest.raises(InvalidArgument):
        ports.allocate(5)
    assert ports.allocate(1) == PortBlock(4, 4)


def test_reserve_and_double_release_are_refused() -> None:
    ports = PortAllocator(10, 19)
    ports.reserve(PortBlock(12, 13))
    with pytest.raises(ValueError, match="unavailable"):
        ports.reserve(PortBlock(13, 14))
    ports.release(PortBlock(12, 13))
    with pytest.raises(ValueError, match="not allocated"):
        ports.release(PortBlock(12, 13))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6)), max_size=60))
def test_blocks_never_overlap(ops: list[tuple[bool, int]]) -> None:
    ports = PortAllocator(1000, 1031)
    held: list[PortBlock] = []
    for allocate, size in ops:
        if allocate or not held:
            try:
                held.append(ports.allocate(size))
            except PortsExhausted:
                free = 32 - sum(b.count for b in held)
                assert free < size or _largest_gap(held) < size
        else:
            ports.release(held.pop(size % len(held)))
        used = sorted(p for b in held for p in range(b.start, b.end + 1))
        assert len(used) == len(set(used)) and ports.in_use == len(used)
        assert all(1000 <= p <= 1031 for p in used)


def _largest_gap(held: list[PortBlock]) -> int:
    edges = sorted((b.start, b.end) for b in held)
    gap, cursor = 0, 1000
    for start, end in edges:
        gap = max(gap, start - cursor)
        cursor = end + 1
    return max(gap, 1032 - cursor)
