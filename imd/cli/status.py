"""``imd status``: one screen an operator can read at a glance (``--json``
for scripts): version, uptime, listeners, counts by state, degraded mode,
the SPDK target, disks, engines with their replicas' modes and any
rebuild, and the last errors."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgspec
from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from imd.api.gen.imdrpc import daemon_grpc
from imd.cli.output import table


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d{h}h{m}m" if days else f"{h}h{m}m{s}s" if hours else f"{m}m{s}s"


def render(doc: dict[str, Any]) -> str:
    out = [f"imd {doc['version']}, up {_duration(doc['uptime_s'])}"]
    out.append("listeners: " + ", ".join(f"{k.removesuffix('_port')} {v}" for k, v in doc["listeners"].items()))
    if doc["degraded"]:
        out.append(f"DEGRADED, refusing changes: {doc['degraded']}")
    counts = doc["counts"]
    out.append("counts: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing supervised"))
    target = doc["target"]
    if target is None:
        out.append("SPDK target: data engine V2 not enabled")
    elif target["available"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(target["up_since"]))
        out.append(f"SPDK target: pid {target['pid']}, {target['uuid']}, up since {since}, {target['version']}")
    else:
        out.append(f"SPDK target: NOT AVAILABLE: {target['reason']}")
    if doc["disks"]:
        rows = [
            {"disk": d["name"], "path": d["path"], "total": _size(d["total_size"]), "free": _size(d["free_size"])}
            for d in doc["disks"]
        ]
        out += ["", table(rows, ("disk", "path", "total", "free"))]
    if doc["engines"]:
        rows = []
        for e in doc["engines"]:
            rebuild = e["rebuild"]
            progress = (
                f"{rebuild['replica']} {100 * rebuild['bytes_done'] // max(rebuild['bytes_total'], 1)}%"
                if rebuild
                else "-"
            )
            rows.append(
                {
                    "engine": e["name"],
                    "state": e["state"],
                    "size": _size(e["size"]),
                    "replicas": " ".join(f"{r['name']}={r['mode']}" for r in e["replicas"]),
                    "rebuild": progress,
                    "hosts": str(e["hosts"]),
                    "endpoint": e["endpoint"] or "-",
                }
            )
        out += ["", table(rows, ("engine", "state", "size", "replicas", "rebuild", "hosts", "endpoint"))]
    if doc["errors"]:
        out += ["", f"last {len(doc['errors'])} errors:"]
        for line in doc["errors"]:
            entry = msgspec.json.decode(line)
            detail = {k: v for k, v in entry.items() if k not in ("ts", "level", "logger", "event", "traceback")}
            out.append(f"  {entry.get('ts', '')} {entry.get('event', '')} {detail}")
    return "\n".join(out)


async def status(a: argparse.Namespace, ch: Channel) -> None:
    reply = await daemon_grpc.DaemonServiceStub(ch).Status(Empty())
    if a.json:
        sys.stdout.write(reply.json.decode() + "\n")
    else:
        sys.stdout.write(render(msgspec.json.decode(reply.json)) + "\n")
    sys.stdout.flush()
