"""``imd backing-image ...``: the backing images of this node's disks,
through Longhorn's engine proxy (SPDKBackingImage*, base port + 1). Tables
by default, ``--json`` for scripts."""

from __future__ import annotations

import argparse
import uuid as uuidlib
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from imd.api.gen.imrpc import proxy_grpc
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.cli.output import emit

PROXY_OFFSET = 1
COLUMNS = ("name", "disk_uuid", "state", "progress", "size", "checksum", "error")


def _proxy(ch: Channel) -> proxy_grpc.ProxyEngineServiceStub:
    return proxy_grpc.ProxyEngineServiceStub(ch)


def row(r: ppb.SPDKBackingImageResponse) -> dict[str, str]:
    return {
        "name": r.spec.name,
        "disk_uuid": r.spec.disk_uuid,
        "state": r.status.state,
        "progress": f"{r.status.progress}%",
        "size": str(r.spec.size),
        "checksum": (r.status.checksum or r.spec.checksum)[:16],
        "error": r.status.error_msg,
    }


async def create(a: argparse.Namespace, ch: Channel) -> None:
    from imd.cli.v2 import parse_size

    request = ppb.SPDKBackingImageCreateRequest(
        name=a.name,
        backing_image_uuid=a.uuid or str(uuidlib.uuid4()),
        disk_uuid=a.disk_uuid,
        size=parse_size(a.size),
        checksum=a.checksum,
        from_address=a.source,
        src_lvs_uuid=a.src_disk_uuid,
    )
    reply = await _proxy(ch).SPDKBackingImageCreate(request)
    emit(reply, as_json=a.json, rows=[row(reply)], columns=COLUMNS)


async def get(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _proxy(ch).SPDKBackingImageGet(ppb.SPDKBackingImageGetRequest(name=a.name, disk_uuid=a.disk_uuid))
    emit(reply, as_json=a.json, rows=[row(reply)], columns=COLUMNS)


async def listing(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _proxy(ch).SPDKBackingImageList(Empty())
    rows = [row(r) for _, r in sorted(reply.backing_images.items())]
    emit(reply, as_json=a.json, rows=rows, columns=COLUMNS)


async def delete(a: argparse.Namespace, ch: Channel) -> None:
    await _proxy(ch).SPDKBackingImageDelete(ppb.SPDKBackingImageDeleteRequest(name=a.name, disk_uuid=a.disk_uuid))
    emit({"deleted": a.name, "disk_uuid": a.disk_uuid}, as_json=a.json)


async def watch(a: argparse.Namespace, ch: Channel) -> None:
    """Each notice (something changed), then the list as it is then."""
    async with _proxy(ch).SPDKBackingImageWatch.open() as stream:
        await stream.send_message(Empty(), end=True)
        async for _ in stream:
            await listing(a, ch)


def add_commands(top: Any) -> None:
    group = top.add_parser("backing-image", help="V2 backing images on this node's disks")
    commands = group.add_subparsers(dest="command", required=True)
    p = commands.add_parser("create", help="copy an image onto a disk (answers at once; watch its progress)")
    p.add_argument("name")
    p.add_argument("--disk-uuid", required=True, help="the disk's (lvstore's) UUID")
    p.add_argument("--size", required=True, help="the image's size: bytes, or with K/M/G/T (binary)")
    p.add_argument("--checksum", required=True, help="the image's SHA-512 (hex)")
    p.add_argument("--from", dest="source", required=True, help="an http(s):// URL, or HOST:PORT of another node")
    p.add_argument("--src-disk-uuid", default="", help="the disk on the other node (with a HOST:PORT source)")
    p.add_argument("--uuid", default="", help="the backing image's UUID (default: a new one)")
    p.set_defaults(func=create)
    for name, func in (("get", get), ("delete", delete)):
        p = commands.add_parser(name)
        p.add_argument("name")
        p.add_argument("--disk-uuid", required=True)
        p.set_defaults(func=func)
    commands.add_parser("list").set_defaults(func=listing)
    commands.add_parser("watch", help="print the list each time something changes").set_defaults(func=watch)
    for sub in commands.choices.values():
        sub.set_defaults(port_offset=PROXY_OFFSET)
