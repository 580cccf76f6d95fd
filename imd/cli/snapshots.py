"""``imd engine snapshot ...`` and ``imd engine clone``: a V2 engine's
snapshots from the command line, through Longhorn's engine proxy
(ProxyEngineService, base port + 1). Tables by default, ``--json`` for
scripts."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from grpclib.client import Channel

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import proxy_grpc
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.cli.output import emit

PROXY_OFFSET = 1
LIST_COLUMNS = ("name", "parent", "children", "user", "created", "size", "removed", "labels")


def _proxy(ch: Channel) -> proxy_grpc.ProxyEngineServiceStub:
    return proxy_grpc.ProxyEngineServiceStub(ch)


def _target(a: argparse.Namespace) -> ppb.ProxyEngineRequest:
    return ppb.ProxyEngineRequest(engine_name=a.engine, data_engine=common.DATA_ENGINE_V2)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"imd: --label {pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels


async def snapshot_create(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineVolumeSnapshotRequest(
        proxy_engine_request=_target(a),
        snapshot_volume=ctl.VolumeSnapshotRequest(name=a.name or "", labels=_labels(a.label)),
    )
    reply = await _proxy(ch).VolumeSnapshot(request)
    emit(reply, as_json=a.json, rows=[{"snapshot": reply.snapshot.name}], columns=("snapshot",))


async def snapshot_list(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _proxy(ch).SnapshotList(_target(a))

    def order(item: tuple[str, Any]) -> tuple[int, str, str]:
        name, disk = item
        return (name == "volume-head", disk.created, name)

    rows = [
        {
            "name": name,
            "parent": d.parent or "-",
            "children": ",".join(sorted(d.children)) or "-",
            "user": "yes" if d.user_created else "no",
            "created": d.created,
            "size": d.size,
            "removed": "yes" if d.removed else "no",
            "labels": ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
        }
        for name, d in sorted(reply.disks.items(), key=order)
    ]
    emit(reply, as_json=a.json, rows=rows, columns=LIST_COLUMNS)


async def snapshot_rm(a: argparse.Namespace, ch: Channel) -> None:
    await _proxy(ch).SnapshotRemove(ppb.EngineSnapshotRemoveRequest(proxy_engine_request=_target(a), names=a.names))
    await snapshot_list(a, ch)


async def snapshot_revert(a: argparse.Namespace, ch: Channel) -> None:
    await _proxy(ch).SnapshotRevert(ppb.EngineSnapshotRevertRequest(proxy_engine_request=_target(a), name=a.name))
    await snapshot_list(a, ch)


async def snapshot_purge(a: argparse.Namespace, ch: Channel) -> None:
    await _proxy(ch).SnapshotPurge(ppb.EngineSnapshotPurgeRequest(proxy_engine_request=_target(a)))
    reply = await _proxy(ch).SnapshotPurgeStatus(_target(a))
    rows = [
        {"replica": address, "state": s.state, "progress": f"{s.progress}%", "error": s.error}
        for address, s in sorted(reply.status.items())
    ]
    emit(reply, as_json=a.json, rows=rows, columns=("replica", "state", "progress", "error"))


async def snapshot_hash(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineSnapshotHashRequest(proxy_engine_request=_target(a), snapshot_name=a.name, rehash=a.rehash)
    await _proxy(ch).SnapshotHash(request)
    status_request = ppb.EngineSnapshotHashStatusRequest(proxy_engine_request=_target(a), snapshot_name=a.name)
    while True:
        reply = await _proxy(ch).SnapshotHashStatus(status_request)
        if not a.wait or all(s.state in ("complete", "error") for s in reply.status.values()):
            break
        await asyncio.sleep(0.5)
    rows = [
        {"replica": address, "state": s.state, "checksum": s.checksum, "error": s.error}
        for address, s in sorted(reply.status.items())
    ]
    emit(reply, as_json=a.json, rows=rows, columns=("replica", "state", "checksum", "error"))


async def clone(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineSnapshotCloneRequest(
        proxy_engine_request=_target(a),
        snapshot_name=a.snapshot,
        from_engine_name=a.from_engine,
        from_engine_address=a.from_address,
    )
    await _proxy(ch).SnapshotClone(request)
    await clone_status(a, ch)


async def clone_status(a: argparse.Namespace, ch: Channel) -> None:
    while True:
        reply = await _proxy(ch).SnapshotCloneStatus(_target(a))
        if not getattr(a, "wait", False) or all(s.state in ("complete", "error") for s in reply.status.values()):
            break
        await asyncio.sleep(0.5)
    rows = [
        {"replica": address, "state": s.state, "progress": f"{s.progress}%", "snapshot": s.snapshot_name,
         "from": s.from_replica_address, "error": s.error}
        for address, s in sorted(reply.status.items())
    ]  # fmt: skip
    emit(reply, as_json=a.json, rows=rows, columns=("replica", "state", "progress", "snapshot", "from", "error"))


def add_commands(commands: Any) -> None:
    """``snapshot`` and ``clone`` under ``imd engine``."""
    snap = commands.add_parser("snapshot", help="the volume's snapshots").add_subparsers(dest="action", required=True)
    p = snap.add_parser("create", help="take a snapshot (host writes pause, never fail)")
    p.add_argument("engine")
    p.add_argument("name", nargs="?", help="default: a new UUID")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=snapshot_create, port_offset=PROXY_OFFSET)
    p = snap.add_parser("list", help="the chain, as every healthy replica holds it")
    p.add_argument("engine")
    p.set_defaults(func=snapshot_list, port_offset=PROXY_OFFSET)
    p = snap.add_parser("rm", help="remove snapshots (marked removed if one has several children)")
    p.add_argument("engine")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=snapshot_rm, port_offset=PROXY_OFFSET)
    p = snap.add_parser("revert", help="make the volume a snapshot's content again (engine without frontend)")
    p.add_argument("engine")
    p.add_argument("name")
    p.set_defaults(func=snapshot_revert, port_offset=PROXY_OFFSET)
    p = snap.add_parser("purge", help="delete removed and system snapshots")
    p.add_argument("engine")
    p.set_defaults(func=snapshot_purge, port_offset=PROXY_OFFSET)
    p = snap.add_parser("hash", help="SHA-256 of a snapshot on every replica")
    p.add_argument("engine")
    p.add_argument("name")
    p.add_argument("--rehash", action="store_true", help="compute it again even if known")
    p.add_argument("--wait", action="store_true", help="until every replica is done")
    p.set_defaults(func=snapshot_hash, port_offset=PROXY_OFFSET)
    p = commands.add_parser("clone", help="fill this engine's replicas from another volume's snapshot")
    p.add_argument("engine")
    p.add_argument("snapshot")
    p.add_argument("--from-engine", required=True)
    p.add_argument("--from-address", required=True, help="the imd hosting it (IP[:PORT])")
    p.add_argument("--wait", action="store_true", help="until every replica is done")
    p.set_defaults(func=clone, port_offset=PROXY_OFFSET)
    p = commands.add_parser("clone-status", help="a clone's progress")
    p.add_argument("engine")
    p.set_defaults(func=clone_status, port_offset=PROXY_OFFSET)
