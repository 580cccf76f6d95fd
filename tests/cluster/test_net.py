"""The cluster's network and its faults, without SPDK: namespaces, the
bridge, a silent partition proven silent, a link down, and the clean-up of
a killed run's leftovers that touches nothing else.

A node's silence is proven with TCP probes (tests/cluster/probe.py) run in
the namespaces: during a partition, a connect to a port nobody listens on
gets no RST and no ICMP (a timeout), and an established connection gets
neither an answer nor an error; the same probes get their RST at once when
the network is whole, so they can see one.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.cluster import netns
from tests.cluster.conftest import PREFIX
from tests.cluster.harness import ROOT

NET_SKIP = netns.skip_reason()
pytestmark = [
    pytest.mark.skipif(NET_SKIP is not None, reason=f"network namespaces: {NET_SKIP}"),
    pytest.mark.asyncio(loop_scope="module"),
]

NET_PREFIX = PREFIX + "n"
OPEN, CLOSED = 7100, 7101


@pytest.fixture(scope="module")
def net() -> Iterator[netns.Network]:
    netns.remove_leftovers(NET_PREFIX)
    made = netns.Network(NET_PREFIX)
    try:
        made.create_switch()
        for number, name in enumerate(("a", "b", "c"), start=1):
            made.add(name, number)
        yield made
    finally:
        netns.remove_leftovers(NET_PREFIX)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def listeners(net: netns.Network) -> AsyncIterator[None]:
    """A listener on OPEN in every member (CLOSED is never listened on)."""
    procs = []
    try:
        for name in net.members:
            proc = await asyncio.create_subprocess_exec(
                *net.exec_prefix(name), sys.executable, "-m", "tests.cluster.probe", "listen",
                net.address(name), str(OPEN), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"ready\n"
        yield
    finally:
        for proc in procs:
            proc.kill()
            await proc.wait()


def probe(net: netns.Network, where: str, *args: str) -> str:
    result = subprocess.run(
        [*net.exec_prefix(where), sys.executable, "-m", "tests.cluster.probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def connect(net: netns.Network, where: str, to: str, port: int, seconds: float = 1.5) -> str:
    return probe(net, where, "connect", net.address(to), str(port), str(seconds))


async def test_members_reach_each_other_and_nothing_is_made_outside(net: netns.Network, listeners: None) -> None:
    assert connect(net, "a", "b", OPEN) == "connected"
    assert connect(net, "b", "c", CLOSED) == "refused"  # a RST comes back: the probe can see one
    assert netns.namespaces(NET_PREFIX) == sorted(f"{NET_PREFIX}-{n}" for n in ("a", "b", "c", "sw"))
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "p-a" not in root_links and "br0" not in root_links  # veths and bridge live in our namespaces


async def test_a_partition_is_silent_both_ways(net: netns.Network, listeners: None) -> None:
    held = await asyncio.create_subprocess_exec(
        *net.exec_prefix("a"), sys.executable, "-m", "tests.cluster.probe", "silent", net.address("b"), str(OPEN),
        "2", cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert held.stdin is not None and held.stdout is not None
    try:
        assert await asyncio.wait_for(held.stdout.readline(), 20) == b"connected\n"
        net.partition("b")
        held.stdin.write(b"go\n")
        await held.stdin.drain()
        # An established connection: data goes out, nothing comes back.
        assert (await asyncio.wait_for(held.stdout.readline(), 20)).strip() == b"silent"
        # New connections, even to a port nobody listens on: no RST, no ICMP.
        assert connect(net, "a", "b", CLOSED) == "timeout"
        assert connect(net, "b", "a", CLOSED) == "timeout"
        assert connect(net, "c", "b", CLOSED) == "timeout"
        # The others still talk.
        assert connect(net, "a", "c", CLOSED) == "refused"
    finally:
        net.heal("b")
        held.kill()
        await held.wait()
    assert connect(net, "a", "b", CLOSED) == "refused"
    assert connect(net, "b", "a", OPEN) == "connected"


async def test_a_link_down_is_known_to_the_node_only(net: netns.Network, listeners: None) -> None:
    net.link_down("c")
    try:
        assert connect(net, "c", "a", OPEN).startswith("error:")  # c's own stack says no at once
        assert connect(net, "a", "c", CLOSED) == "timeout"  # a hears nothing
    finally:
        net.link_up("c")

    async def up_again() -> bool:
        return connect(net, "a", "c", CLOSED) == "refused"

    async with asyncio.timeout(20):
        while not await up_again():
            await asyncio.sleep(0.2)


async def test_leftovers_of_a_killed_run_go_and_nothing_else() -> None:
    """A killed run left a namespace with a process in it; the next run's
    clean-up removes both. A namespace of another prefix (even one that
    starts with the same letters) and its process stay."""
    dead, other = PREFIX + "k", PREFIX + "k2"
    netns.remove_leftovers(dead)
    netns.remove_leftovers(other)
    netns.ip("netns", "add", f"{dead}-a")
    netns.ip("netns", "add", f"{other}-a")
    leftover = subprocess.Popen(["ip", "netns", "exec", f"{dead}-a", "sleep", "300"])
    bystander = subprocess.Popen(["ip", "netns", "exec", f"{other}-a", "sleep", "300"])
    try:
        assert netns.remove_leftovers(dead) == [f"{dead}-a"]
        assert leftover.wait(10) == -9
        assert netns.namespaces(dead) == []
        assert netns.namespaces(other) == [f"{other}-a"]
        assert bystander.poll() is None
    finally:
        leftover.kill()
        bystander.kill()
        bystander.wait()
        netns.remove_leftovers(other)
