"""bench/cluster: several imd nodes on this machine (issue 21), for people.

    python -m bench.cluster up [--nodes a,b,c]     # leaves them running
    python -m bench.cluster status
    python -m bench.cluster io ENDPOINT [--seconds 30]
    python -m bench.cluster partition NODE | heal NODE | link-down NODE | link-up NODE
    python -m bench.cluster kill NODE [--imd-only] | start NODE
    python -m bench.cluster down
    python -m bench.cluster scenarios [--only 1,4,6,3,2,5]

Needs root (network namespaces), SPDK (``SPDK_DIR``) and spdk_ffi's core.
Every command takes ``--prefix`` (default ``imdc``): the namespaces are
``<prefix>-sw`` (the bridge), ``<prefix>-a`` ... and ``<prefix>-host``, the
files are under ``/tmp/<prefix>/``, and ``up`` and ``down`` remove what a
run with that prefix left and nothing else. Each node's imd listens on
198.18.0.N:8500 inside its namespace, and on its Unix socket
``/tmp/<prefix>/<node>/imd.sock``, which ``imd --socket`` reaches from
anywhere; node N's replicas and engines listen on 198.18.0.N, the host is
198.18.0.100. tests/cluster/harness.py says how it is built.

* ``io``: bench/v2proc.py's verified loop in the host namespace against an
  engine's endpoint (``nvmf://IP:PORT/NQN``), reconnecting across an engine
  restart; prints errors, mismatches, the longest pause and the IOPS.
* ``scenarios``: brings up its own cluster (prefix ``imdb``), runs issue 21's
  scenarios (tests/cluster/scenarios.py) and writes
  ``bench/results/cluster.{json,md}``: per scenario the host's longest
  pause, its errors and mismatches, the time to ERR and to rebuild, the
  host's IOPS before the fault, and the outcome the tests assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import RESULTS, environment, markdown_table, save
from tests.cluster import netns
from tests.cluster.harness import HOST, STATE_FILE, Cluster, Node, down, host_io

DEFAULT_PREFIX = "imdc"


def run_dir(prefix: str) -> Path:
    return Path("/tmp") / prefix


def missing() -> str | None:
    from tests.cluster.conftest import skip_reason

    return skip_reason()


def load_state(prefix: str) -> dict[str, Any]:
    path = run_dir(prefix) / STATE_FILE
    if not path.exists():
        raise SystemExit(f"no cluster with prefix {prefix!r} is up ({path} is missing)")
    return dict(json.loads(path.read_text()))


def attached(prefix: str) -> Cluster:
    """The running cluster of ``prefix``, as its state file describes it."""
    state = load_state(prefix)
    cluster = Cluster(prefix, run_dir(prefix), tuple(state["nodes"]))
    for name, node in state["nodes"].items():
        cluster.net.members[name] = node["address"]
    cluster.net.members[HOST] = state["host"]["address"]
    return cluster


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def up(a: argparse.Namespace) -> int:
    cluster = Cluster(a.prefix, run_dir(a.prefix), tuple(a.nodes.split(",")))
    try:
        await cluster.up()
    except BaseException:
        await cluster.down()
        raise
    for node in cluster.nodes.values():
        where = f"imd --socket {node.socket}, disk d1, namespace {node.net.ns(node.name)}"
        print(f"node {node.name}: {node.address} ({where})")
    print(f"host: {cluster.net.address(HOST)}, namespace {cluster.net.ns(HOST)}")
    cluster.close_channels()
    return 0


async def status(a: argparse.Namespace) -> int:
    from tests.helpers import health_serving

    cluster = attached(a.prefix)
    state = load_state(a.prefix)
    present = set(netns.namespaces(a.prefix))
    rows = []
    for name, info in state["nodes"].items():
        node = cluster[name]
        serving = await health_serving(node.socket)
        target = node.target_pid()
        engines = ""
        if serving:
            try:
                listed = await node.instances().InstanceList(_empty())
                parts = []
                for instance, response in sorted(listed.instances.items()):
                    line = f"{instance}:{response.spec.type}:{response.status.state}"
                    if response.spec.type == "engine" and response.status.state == "running":
                        modes = await node.modes(instance)
                        line += "[" + ",".join(f"{r}={m}" for r, m in sorted(modes.items())) + "]"
                    parts.append(line)
                engines = " ".join(parts)
            finally:
                node.close_channels()
        neigh = netns.ip("-n", info["namespace"], "neigh", "show", check=False) if info["namespace"] in present else ""
        misdirected = {line.split()[0] for line in neigh.splitlines() if netns.NOWHERE_MAC in line}
        others = {addr for member, addr in cluster.net.members.items() if member != name}
        rows.append(
            {
                "node": name,
                "address": info["address"],
                "namespace": "yes" if info["namespace"] in present else "MISSING",
                "imd": "SERVING" if serving else "down",
                "nvmf_tgt": str(target) if target else "down",
                "partitioned": "yes" if others <= misdirected else "",
                "instances": engines,
            }
        )
    print(markdown_table(rows, list(rows[0]) if rows else []))
    return 0


def _empty() -> Any:
    from google.protobuf.empty_pb2 import Empty

    return Empty()


async def io(a: argparse.Namespace) -> int:
    cluster = attached(a.prefix)
    address, _, nqn = a.endpoint.removeprefix("nvmf://").partition("/")
    reconnecting = {"ctrlr_loss_timeout_sec": 60, "reconnect_delay_sec": 1}
    loop = cluster.host_loop(address, nqn, seed=int(time.time()) % 100_000, qd=a.qd, opts=reconnecting)
    async with host_io(loop):
        print(f"host I/O on {a.endpoint} for {a.seconds} s (QD {a.qd}, verified)", flush=True)
        await asyncio.sleep(a.seconds)
        report = await loop.stop()
    fields = ("writes", "reads", "errors", "mismatches", "longest_pause_s", "iops")
    print(" ".join(f"{key}={report[key]}" for key in fields))
    for error in report["errors_seen"]:
        print(f"error: {error}")
    return 1 if report["errors"] or report["mismatches"] else 0


async def fault(a: argparse.Namespace) -> int:
    cluster = attached(a.prefix)
    if a.node not in cluster.nodes:
        raise SystemExit(f"no node {a.node!r} (nodes: {', '.join(cluster.nodes)})")
    if a.command == "partition":
        cluster.net.partition(a.node)
    elif a.command == "heal":
        cluster.net.heal(a.node)
    elif a.command == "link-down":
        cluster.net.link_down(a.node)
    elif a.command == "link-up":
        cluster.net.link_up(a.node)
    return 0


async def kill_or_start(a: argparse.Namespace) -> int:
    cluster = attached(a.prefix)
    node: Node = cluster[a.node]
    state = load_state(a.prefix)
    if a.command == "kill":
        pid = int(state["nodes"][a.node]["imd_pid"])
        target = None if a.imd_only else node.target_pid()
        for victim in (pid, target):
            if victim is not None and alive(victim):
                os.kill(victim, 9)
        print(f"killed imd {pid}" + (f" and nvmf_tgt {target}" if target else ""))
    else:
        await node.start()
        state["nodes"][a.node]["imd_pid"] = node.pid
        (run_dir(a.prefix) / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        node.close_channels()
        print(f"imd on {a.node} serving (pid {node.pid})")
    return 0


async def teardown(a: argparse.Namespace) -> int:
    removed = down(a.prefix, run_dir(a.prefix))
    print(f"removed {len(removed)} namespaces: {' '.join(removed) or '-'}")
    return 0


async def scenarios(a: argparse.Namespace) -> int:
    from tests.cluster.scenarios import SCENARIOS

    chosen = a.only.split(",") if a.only else list(SCENARIOS)
    cluster = Cluster("imdb", run_dir("imdb"))
    records = []
    try:
        began = time.monotonic()
        await cluster.up()
        up_s = round(time.monotonic() - began, 1)
        for number in chosen:
            print(f"scenario {number} ...", flush=True)
            record = await SCENARIOS[number](cluster)
            records.append(record.as_dict())
            print(json.dumps(record.as_dict()), flush=True)
    finally:
        await cluster.down()
    rows = [
        {
            "scenario": r["scenario"],
            "longest pause s": r["longest_pause_s"],
            "errors": r["errors"],
            "mismatches": r["mismatches"],
            "to ERR s": "-" if r["time_to_err_s"] is None else r["time_to_err_s"],
            "to rebuild s": "-" if r["time_to_rebuild_s"] is None else r["time_to_rebuild_s"],
            "IOPS before": r["iops_before_fault"],
            "outcome": r["outcome"],
        }
        for r in records
    ]
    table = markdown_table(rows, list(rows[0]) if rows else [])
    print(table)
    env = environment()
    save("cluster", {"env": env, "up_s": up_s, "records": records})
    report = f"# bench/cluster ({env.get('date', '')})\n\ncluster up in {up_s} s\n\n{table}\n"
    (RESULTS / "cluster.md").write_text(report)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="names of this run's namespaces and files")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("up", help="bring the nodes up and leave them running")
    s.add_argument("--nodes", default="a,b,c")
    s.set_defaults(func=up)
    sub.add_parser("status").set_defaults(func=status)
    sub.add_parser("down", help="kill everything in the prefix's namespaces, delete them and the files").set_defaults(
        func=teardown
    )
    s = sub.add_parser("io", help="verified host I/O on an engine's endpoint, from the host namespace")
    s.add_argument("endpoint", help="nvmf://IP:PORT/NQN (the engine's endpoint)")
    s.add_argument("--seconds", type=float, default=30)
    s.add_argument("--qd", type=int, default=4)
    s.set_defaults(func=io)
    for name, what in (
        ("partition", "cut NODE off silently (packets vanish: no RST, no ICMP)"),
        ("heal", "undo a partition"),
        ("link-down", "NODE's interface down"),
        ("link-up", "NODE's interface up"),
    ):
        s = sub.add_parser(name, help=what)
        s.add_argument("node")
        s.set_defaults(func=fault)
    s = sub.add_parser("kill", help="kill -9 NODE's imd and its nvmf_tgt")
    s.add_argument("node")
    s.add_argument("--imd-only", action="store_true", help="leave the target running")
    s.set_defaults(func=kill_or_start)
    s = sub.add_parser("start", help="start NODE's imd again (it re-adopts or restarts its target)")
    s.add_argument("node")
    s.set_defaults(func=kill_or_start)
    s = sub.add_parser("scenarios", help="run issue 21's scenarios on a cluster of their own; write the results")
    s.add_argument("--only", default="", help="e.g. 1,4,6")
    s.set_defaults(func=scenarios)
    return p


def main() -> int:
    a = parser().parse_args()
    reason = None if a.command in ("down", "status", "partition", "heal", "link-down", "link-up") else missing()
    if reason is not None:
        sys.stderr.write(f"bench.cluster: cannot run here: {reason}\n")
        return 2
    return int(uvloop.run(a.func(a)))


if __name__ == "__main__":
    sys.exit(main())
