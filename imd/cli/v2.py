"""``imd disk|replica|engine``: data engine V2 from the command line.

Disks go to the DiskService (base port + 2); replicas and engines are
instances (InstanceService, base port + 3, data engine V2). Tables by
default, ``--json`` for scripts, exactly like the V1 commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_grpc, instance_grpc, proxy_grpc
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.cli import backups, snapshots
from imd.cli.output import as_dict, emit, stream_lines

Command = Callable[[argparse.Namespace, Channel], Awaitable[None]]

PROXY_OFFSET = 1
DISK_OFFSET = 2
INSTANCE_OFFSET = 3
DISK_COLUMNS = ("name", "uuid", "path", "total", "free", "block", "state")
V2_COLUMNS = ("name", "type", "state", "uuid", "port", "where", "error")
BLOCK = dpb.block


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``4096``: bytes (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def disk_row(disk: dpb.Disk) -> dict[str, str]:
    return {
        "name": disk.name,
        "uuid": disk.uuid,
        "path": disk.path,
        "total": _size(disk.total_size),
        "free": _size(disk.free_size),
        "block": str(disk.block_size),
        "state": disk.state,
    }


def v2_row(response: inst.InstanceResponse) -> dict[str, str]:
    status, spec = response.status, response.spec
    spdk = spec.spdk_instance_spec
    where = status.endpoint or (f"{spdk.disk_name} {_size(spdk.size)}" if spec.type == "replica" else "-")
    return {
        "name": spec.name,
        "type": spec.type,
        "state": status.state + (" (deleted)" if response.deleted else ""),
        "uuid": status.uuid,
        "port": str(status.port_start) if status.port_start else "-",
        "where": where,
        "error": status.error_msg,
    }


def _show_disk(a: argparse.Namespace, disk: dpb.Disk) -> None:
    emit(disk, as_json=a.json, rows=[disk_row(disk)], columns=DISK_COLUMNS)


def _show_instance(a: argparse.Namespace, response: inst.InstanceResponse) -> None:
    emit(response, as_json=a.json, rows=[v2_row(response)], columns=V2_COLUMNS)


def _disks(ch: Channel) -> disk_grpc.DiskServiceStub:
    return disk_grpc.DiskServiceStub(ch)


def _inst(ch: Channel) -> instance_grpc.InstanceServiceStub:
    return instance_grpc.InstanceServiceStub(ch)


# -- disks --------------------------------------------------------------------------


async def disk_create(a: argparse.Namespace, ch: Channel) -> None:
    request = dpb.DiskCreateRequest(
        disk_type=BLOCK,
        disk_name=a.name,
        disk_uuid=a.uuid,
        disk_path=a.path,
        block_size=a.block_size,
        disk_driver=a.driver,
    )
    _show_disk(a, await _disks(ch).DiskCreate(request))


async def disk_get(a: argparse.Namespace, ch: Channel) -> None:
    _show_disk(a, await _disks(ch).DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name=a.name)))


async def disk_list(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _disks(ch).DiskList(Empty())
    emit(reply, as_json=a.json, rows=[disk_row(reply.disks[k]) for k in sorted(reply.disks)], columns=DISK_COLUMNS)


async def disk_delete(a: argparse.Namespace, ch: Channel) -> None:
    await _disks(ch).DiskDelete(dpb.DiskDeleteRequest(disk_type=BLOCK, disk_name=a.name, disk_uuid=a.uuid))
    emit({"deleted": a.name}, as_json=a.json)


async def disk_replicas(a: argparse.Namespace, ch: Channel) -> None:
    request = dpb.DiskReplicaInstanceListRequest(disk_type=BLOCK, disk_name=a.name)
    reply = await _disks(ch).DiskReplicaInstanceList(request)
    rows = [
        {"name": r.name, "uuid": r.uuid, "size": _size(r.spec_size)}
        for r in (reply.replica_instances[k] for k in sorted(reply.replica_instances))
    ]
    emit(reply, as_json=a.json, rows=rows, columns=("name", "uuid", "size"))


# -- replicas and engines ---------------------------------------------------------------


async def replica_create(a: argparse.Namespace, ch: Channel) -> None:
    spec = inst.InstanceSpec(
        name=a.name,
        type="replica",
        volume_name=a.volume,
        data_engine=common.DATA_ENGINE_V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(
            disk_name=a.disk, disk_uuid=a.disk_uuid, size=parse_size(a.size), backing_image_name=a.backing_image
        ),
    )
    _show_instance(a, await _inst(ch).InstanceCreate(inst.InstanceCreateRequest(spec=spec)))


def _replica_map(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        name, sep, addresses = pair.partition("=")
        if not sep:
            raise SystemExit(f"imd: --replica {pair!r}: expected NAME=IP:PORT[,IP:PORT]")
        mapping[name] = addresses
    return mapping


async def engine_create(a: argparse.Namespace, ch: Channel) -> None:
    spec = inst.InstanceSpec(
        name=a.name,
        type="engine",
        volume_name=a.volume,
        data_engine=common.DATA_ENGINE_V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(
            size=parse_size(a.size), replica_address_map=_replica_map(a.replica), frontend=a.frontend
        ),
    )
    _show_instance(a, await _inst(ch).InstanceCreate(inst.InstanceCreateRequest(spec=spec)))


def _deleter(kind: str) -> Command:
    async def delete(a: argparse.Namespace, ch: Channel) -> None:
        request = inst.InstanceDeleteRequest(
            name=a.name,
            type=kind,
            uuid=a.uuid,
            cleanup_required=getattr(a, "cleanup", False),
            data_engine=common.DATA_ENGINE_V2,
        )
        _show_instance(a, await _inst(ch).InstanceDelete(request))

    return delete


def _getter(kind: str) -> Command:
    async def get(a: argparse.Namespace, ch: Channel) -> None:
        request = inst.InstanceGetRequest(name=a.name, type=kind, data_engine=common.DATA_ENGINE_V2)
        _show_instance(a, await _inst(ch).InstanceGet(request))

    return get


def _lister(kind: str) -> Command:
    async def listing(a: argparse.Namespace, ch: Channel) -> None:
        reply = await _inst(ch).InstanceList(Empty())
        chosen = [
            reply.instances[k]
            for k in sorted(reply.instances)
            if reply.instances[k].spec.type == kind and reply.instances[k].spec.data_engine == common.DATA_ENGINE_V2
        ]
        as_json = {"instances": {r.spec.name: as_dict(r) for r in chosen}}
        emit(as_json, as_json=a.json, rows=[v2_row(r) for r in chosen], columns=V2_COLUMNS)

    return listing


def _logger(kind: str) -> Command:
    async def log(a: argparse.Namespace, ch: Channel) -> None:
        request = inst.InstanceLogRequest(name=a.name, type=kind, data_engine=common.DATA_ENGINE_V2, follow=a.follow)
        await stream_lines(_inst(ch).InstanceLog, request, as_json=a.json)

    return log


# -- engine operations (ProxyEngineService) ----------------------------------------------


def _proxy(ch: Channel) -> proxy_grpc.ProxyEngineServiceStub:
    return proxy_grpc.ProxyEngineServiceStub(ch)


def _target(a: argparse.Namespace) -> ppb.ProxyEngineRequest:
    return ppb.ProxyEngineRequest(engine_name=a.engine, data_engine=common.DATA_ENGINE_V2)


async def engine_expand(a: argparse.Namespace, ch: Channel) -> None:
    size = parse_size(a.size)
    request = ppb.EngineVolumeExpandRequest(proxy_engine_request=_target(a), expand=ctl.VolumeExpandRequest(size=size))
    await _proxy(ch).VolumeExpand(request)
    volume = (await _proxy(ch).VolumeGet(_target(a))).volume
    emit(volume, as_json=a.json, rows=[{"volume": volume.name, "size": _size(volume.size)}], columns=("volume", "size"))


async def engine_volume(a: argparse.Namespace, ch: Channel) -> None:
    v = (await _proxy(ch).VolumeGet(_target(a))).volume
    row = {
        "volume": v.name,
        "size": _size(v.size),
        "replicas": str(v.replicaCount),
        "frontend": v.frontendState,
        "endpoint": v.endpoint or "-",
        "expanding": "yes" if v.isExpanding else "no",
        "last_expansion_error": v.last_expansion_error,
    }
    emit(v, as_json=a.json, rows=[row], columns=tuple(row))


async def engine_replica_add(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineReplicaAddRequest(
        proxy_engine_request=_target(a), replica_name=a.replica, replica_address=a.address
    )
    await _proxy(ch).ReplicaAdd(request)
    await engine_replica_list(a, ch)


async def engine_replica_list(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _proxy(ch).ReplicaList(_target(a))
    rows = [
        {"replica": r.address.instanceName, "address": r.address.address, "mode": ctl.ReplicaMode.Name(r.mode)}
        for r in reply.replica_list.replicas
    ]
    emit(reply, as_json=a.json, rows=rows, columns=("replica", "address", "mode"))


async def engine_replica_remove(a: argparse.Namespace, ch: Channel) -> None:
    request = ppb.EngineReplicaRemoveRequest(proxy_engine_request=_target(a), replica_name=a.replica)
    await _proxy(ch).ReplicaRemove(request)
    await engine_replica_list(a, ch)


async def engine_rebuild_status(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _proxy(ch).ReplicaRebuildingStatus(_target(a))
    rows = [
        {
            "replica": address,
            "state": s.state,
            "progress": f"{s.progress}%",
            "from": s.from_replica_address,
            "error": s.error,
        }
        for address, s in sorted(reply.status.items())
    ]
    emit(reply, as_json=a.json, rows=rows, columns=("replica", "state", "progress", "from", "error"))


def _add_engine_operations(commands: Any) -> None:
    p = commands.add_parser("expand", help="grow the volume")
    p.add_argument("engine")
    p.add_argument("size", help="the new size: bytes, or with K/M/G/T (binary)")
    p.set_defaults(func=engine_expand, port_offset=PROXY_OFFSET)
    p = commands.add_parser("volume", help="the volume as the engine sees it")
    p.add_argument("engine")
    p.set_defaults(func=engine_volume, port_offset=PROXY_OFFSET)
    replica = commands.add_parser("replica", help="the engine's replicas").add_subparsers(dest="action", required=True)
    p = replica.add_parser("add", help="attach a replica and rebuild it from a healthy one")
    p.add_argument("engine")
    p.add_argument("replica")
    p.add_argument("address", help="IP:PORT[,IP:PORT] of the replica's export")
    p.set_defaults(func=engine_replica_add, port_offset=PROXY_OFFSET)
    p = replica.add_parser("list")
    p.add_argument("engine")
    p.set_defaults(func=engine_replica_list, port_offset=PROXY_OFFSET)
    p = replica.add_parser("remove")
    p.add_argument("engine")
    p.add_argument("replica")
    p.set_defaults(func=engine_replica_remove, port_offset=PROXY_OFFSET)
    rebuild = commands.add_parser("rebuild", help="replica rebuilds").add_subparsers(dest="action", required=True)
    p = rebuild.add_parser("status")
    p.add_argument("engine")
    p.set_defaults(func=engine_rebuild_status, port_offset=PROXY_OFFSET)
    snapshots.add_commands(commands)
    backups.add_commands(commands)


def add_commands(top: Any) -> None:
    disk = top.add_parser("disk", help="V2 disks (AIO bdev + lvstore on the node's SPDK target)")
    disks = disk.add_subparsers(dest="command", required=True)
    p = disks.add_parser("create")
    p.add_argument("name")
    p.add_argument("path", help="a file or block device")
    p.add_argument("--uuid", default="", help="the lvstore UUID expected on it")
    p.add_argument("--block-size", type=int, default=4096)
    p.add_argument("--driver", default="aio")
    p.set_defaults(func=disk_create)
    for name, func in (("get", disk_get), ("replicas", disk_replicas)):
        p = disks.add_parser(name)
        p.add_argument("name")
        p.set_defaults(func=func)
    disks.add_parser("list").set_defaults(func=disk_list)
    p = disks.add_parser("delete")
    p.add_argument("name")
    p.add_argument("--uuid", default="")
    p.set_defaults(func=disk_delete)
    for sub in disks.choices.values():
        sub.set_defaults(port_offset=DISK_OFFSET)

    for kind, create in (("replica", replica_create), ("engine", engine_create)):
        group = top.add_parser(kind, help=f"V2 {kind}s (data engine V2 instances)")
        commands = group.add_subparsers(dest="command", required=True)
        p = commands.add_parser("create")
        p.add_argument("name")
        p.add_argument("--size", required=True, help="bytes, or with K/M/G/T (binary)")
        p.add_argument("--volume", default="", required=kind == "engine")
        if kind == "replica":
            p.add_argument("--disk", required=True)
            p.add_argument("--disk-uuid", default="")
            p.add_argument("--backing-image", default="", help="a ready backing image on the disk: a clone of it")
        else:
            p.add_argument("--replica", action="append", default=[], metavar="NAME=IP:PORT[,IP:PORT]")
            p.add_argument("--frontend", default="spdk-tcp-nvmf", help="spdk-tcp-nvmf, or '' for none")
        p.set_defaults(func=create)
        for name, make in (("get", _getter), ("delete", _deleter), ("log", _logger)):
            p = commands.add_parser(name)
            p.add_argument("name")
            p.set_defaults(func=make(kind))
            if name == "delete":
                p.add_argument("--uuid", default="")
                if kind == "replica":
                    p.add_argument("--cleanup", action="store_true", help="also remove the replica's data")
            if name == "log":
                p.add_argument("--follow", "-f", action="store_true")
        commands.add_parser("list").set_defaults(func=_lister(kind))
        for sub in commands.choices.values():
            sub.set_defaults(port_offset=INSTANCE_OFFSET)
        if kind == "engine":
            _add_engine_operations(commands)
