"""The kernel's ephemeral port range, which the daemon's port range should
stay out of: a port the kernel has lent to an outgoing connection (a gRPC
client, an NVMe-oF host) cannot be listened on, so a child or an engine
export given it fails with EADDRINUSE, at random."""

from __future__ import annotations

from pathlib import Path

import aiofiles

LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


async def ephemeral_ports(path: Path = LOCAL_PORT_RANGE) -> tuple[int, int] | None:
    """(low, high) of the kernel's ephemeral ports; None if unknown."""
    try:
        async with aiofiles.open(path) as f:
            low, high = (int(field) for field in (await f.read()).split()[:2])
    except (OSError, ValueError):
        return None
    return low, high


def overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    low, high = max(a[0], b[0]), min(a[1], b[1])
    return (low, high) if low <= high else None
