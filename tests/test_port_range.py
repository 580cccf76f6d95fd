"""A port range inside the kernel's ephemeral ports is allowed, but the
daemon says so at start: a port it hands out may already be some
connection's local port (EADDRINUSE at random)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imd.edges.netports import LOCAL_PORT_RANGE, ephemeral_ports, overlap

pytestmark = pytest.mark.asyncio

WARNING = "port_range overlaps the kernel's ephemeral ports"


async def test_ephemeral_ports_are_read_from_the_kernels_file(tmp_path: Path) -> None:
    sample = tmp_path / "ip_local_port_range"
    sample.write_text("32768\t60999\n")
    assert await ephemeral_ports(sample) == (32768, 60999)
    sample.write_text("garbage\n")
    assert await ephemeral_ports(sample) is None
    assert await ephemeral_ports(tmp_path / "missing") is None


async def test_overlap() -> None:
    assert overlap((10000, 20000), (32768, 60999)) is None
    assert overlap((30000, 40000), (32768, 60999)) == (32768, 40000)
    assert overlap((60999, 61000), (32768, 60999)) == (60999, 60999)


async def test_the_daemon_warns_about_a_range_among_ephemeral_ports(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    ephemeral = await ephemeral_ports()
    if ephemeral is None:
        pytest.skip(f"{LOCAL_PORT_RANGE} is not readable here")
    low, high = ephemeral
    inside = await daemon_factory(port_range=f"{low}-{min(low + 9, high)}")
    assert WARNING in inside.stderr()
    below = max(1, low - 1000)
    outside = await daemon_factory(port_range=f"{below}-{below + 9}")
    assert WARNING not in outside.stderr()
