"""The network of a cluster on one machine: a network namespace per node and
one for the host, each with a veth into a bridge that lives in a switch
namespace of its own. Nothing is made in the machine's own namespace, and
every address is in 198.18.0.0/15 (the benchmarking range), so a cluster
can only ever talk to itself.

Every namespace's name starts with the run's prefix (``<prefix>-sw``,
``<prefix>-<node>``). ``remove_leftovers(prefix)`` kills whatever still runs
in those namespaces and deletes them: a run calls it first, for what a
killed run left, and last. Names with another prefix are never touched.

Faults, all with ``ip`` (this kernel has no netem, iptables or nftables):

* ``link_down(node)``: the node's own interface goes down. The node knows
  (its routes go, its sends fail); its peers hear nothing.
* ``partition(node)``: silent. Every other namespace gets a permanent
  neighbour entry for the node's address with a MAC nobody has, and the
  node one for each of theirs. Frames are sent and flooded by the bridge,
  and every interface drops them: no RST, no ICMP, no carrier change,
  nothing in anyone's logs. ``heal(node)`` deletes the entries, and ARP
  finds the real MACs again. tests/cluster/test_net.py proves it silent.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable

SUBNET = "198.18.0.0/24"
PREFIX_LEN = 24
# A locally administered unicast MAC that no interface of a run has.
NOWHERE_MAC = "02:00:5e:00:53:01"
BRIDGE = "br0"
DEV = "eth0"


class NetError(RuntimeError):
    """An ``ip`` command failed; the message has its output."""


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def skip_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    import os
    import shutil

    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = "imdprobe-" + str(os.getpid())
    try:
        ip("netns", "add", probe)
    except NetError as exc:
        return f"cannot create a network namespace: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def namespaces(prefix: str) -> list[str]:
    """The namespaces of runs with this prefix (``<prefix>-...``)."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(prefix + "-"))


def pids_in(namespace: str) -> list[int]:
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]


def remove_leftovers(prefix: str) -> list[str]:
    """Kill every process in this prefix's namespaces, then delete them.
    Returns the namespaces removed."""
    import os
    import signal
    import time

    found = namespaces(prefix)
    for namespace in found:
        for pid in pids_in(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # A killed process leaves its namespace once it is gone; wait for that
    # (bounded), so that its ports and the target's memory are free again.
    deadline = time.monotonic() + 10
    while any(pids_in(n) for n in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    for namespace in found:
        ip("netns", "del", namespace, check=False)
    return found


class Network:
    """The switch and the members of one run. ``address(name)`` is a
    member's IP; members are added once, in order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.members: dict[str, str] = {}  # name -> address
        self.partitioned: set[str] = set()

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def address(self, name: str) -> str:
        return self.members[name]

    def create_switch(self) -> None:
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.switch, "link", "set", BRIDGE, "up")

    def add(self, name: str, host_number: int) -> str:
        """A namespace for ``name`` with 198.18.0.<host_number> on its eth0,
        plugged into the bridge."""
        ns, port, address = self.ns(name), f"p-{name}", f"198.18.0.{host_number}"
        ip("netns", "add", ns)
        ip("link", "add", DEV, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", BRIDGE)
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", DEV)
        ip("-n", ns, "link", "set", DEV, "up")
        self.members[name] = address
        return address

    def exec_prefix(self, name: str) -> list[str]:
        """argv that runs a command inside ``name``'s namespace."""
        return ["ip", "netns", "exec", self.ns(name)]

    # -- faults --------------------------------------------------------------------

    def link_down(self, name: str) -> None:
        ip("-n", self.ns(name), "link", "set", DEV, "down")

    def link_up(self, name: str) -> None:
        ip("-n", self.ns(name), "link", "set", DEV, "up")

    def partition(self, name: str) -> None:
        """Cut ``name`` off from every other member, silently."""
        for other in self._others(name):
            self._misdirect(other, self.members[name])
            self._misdirect(name, self.members[other])
        self.partitioned.add(name)

    def heal(self, name: str) -> None:
        for other in self._others(name):
            ip("-n", self.ns(other), "neigh", "del", self.members[name], "dev", DEV, check=False)
            ip("-n", self.ns(name), "neigh", "del", self.members[other], "dev", DEV, check=False)
        self.partitioned.discard(name)

    def heal_all(self) -> None:
        for name in list(self.partitioned):
            self.heal(name)

    def _others(self, name: str) -> Iterable[str]:
        return [other for other in self.members if other != name]

    def _misdirect(self, where: str, address: str) -> None:
        ip("-n", self.ns(where), "neigh", "replace", address, "lladdr", NOWHERE_MAC, "dev", DEV, "nud", "permanent")
