"""bench/images: V2 backing images (issue 22), through a real imd with V2.

    SPDK_DIR=/path/to/spdk python -m bench.images [--image-mib 1024] [--reps 3]

* **download and prepare**: an image served by an HTTP server in this
  process (tests/http_server.py, loopback) is created on disk d1 with
  SPDKBackingImageCreate and polled with Get (every 50 ms) until ready: the
  download written into the temporary head lvol through the daemon's C
  core, the SHA-512 read back by a hash job, the snapshot. The time from
  the call to ``ready``; the copy's part (to progress 99) and the rest
  (checksum and snapshot). Two images: all random bytes (every chunk
  written), and half zeroes (the zero chunks are not written).
  For scale, the same download into memory in this process (imd's own
  HTTP client, no disk): the server's and loopback's ceiling here.
* **copy from another node**: the ready image copied from d1 onto disk d2
  through the node's own replica service (what a second node does:
  BackingImageExpose, then a copy job in the C core), to ready.
* **replica from a ready image**: InstanceCreate of a replica with
  ``backing_image_name`` (a clone: ``bdev_lvol_clone`` and a resize), RPC
  time, against a plain thin replica of the same size, ``--creates``
  times each.

The HTTP server, this client and the daemon's loop share the machine's
cores with the SPDK target's and the engine's pollers: compare numbers
taken in the same run. Writes bench/results/<label>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import RESULTS, environment, markdown_table, median, percentile, pyplot, save_figure, write_results
from bench.spdknode import MIB, missing
from bench.v2ops import Node

BLOCK = 4096


def image(mib: int, zero_half: bool) -> bytes:
    piece = 64 * MIB  # randbytes makes at most 2^31 bits at once
    data = bytearray()
    for i in range(-(-mib * MIB // piece)):
        data += random.Random(mib * 1000 + i).randbytes(min(piece, mib * MIB - i * piece))
    if zero_half:
        for start in range(0, len(data), 2 * MIB):
            data[start : start + MIB] = bytes(MIB)  # every other MiB: a sparse image
    return bytes(data)


async def wait_ready(node: Node, name: str, disk: str, timeout: float = 600) -> dict[str, float]:
    """Poll Get; the times (from now) of progress 99 (copy done) and ready."""
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    t0 = time.monotonic()
    copied = None
    while True:
        reply = await node.proxy.SPDKBackingImageGet(ppb.SPDKBackingImageGetRequest(name=name, disk_uuid=disk))
        now = time.monotonic() - t0
        if copied is None and reply.status.progress >= 99:
            copied = now
        if reply.status.state == "ready":
            return {"ready_s": now, "copied_s": copied if copied is not None else now}
        if reply.status.state == "failed":
            raise RuntimeError(f"backing image {name} failed: {reply.status.error_msg}")
        if now > timeout:
            raise TimeoutError(f"backing image {name} not ready after {timeout} s")
        await asyncio.sleep(0.05)


async def create(node: Node, name: str, disk: str, data_len: int, checksum: str, source: str, src: str = "") -> None:
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    await node.proxy.SPDKBackingImageCreate(
        ppb.SPDKBackingImageCreateRequest(
            name=name,
            backing_image_uuid=f"uuid-{name}",
            disk_uuid=disk,
            size=data_len,
            checksum=checksum,
            from_address=source,
            src_lvs_uuid=src,
        )
    )


async def delete(node: Node, name: str, disk: str) -> None:
    from imd.api.gen.imrpc import proxy_pb2 as ppb

    await node.proxy.SPDKBackingImageDelete(ppb.SPDKBackingImageDeleteRequest(name=name, disk_uuid=disk))


async def disk_uuid(node: Node, name: str) -> str:
    from imd.api.gen.imrpc import disk_pb2

    reply = await node.daemon.disks().DiskGet(disk_pb2.DiskGetRequest(disk_type=disk_pb2.block, disk_name=name))
    return str(reply.uuid)


async def memory_download(url: str) -> float:
    """Seconds to download ``url`` into memory with imd's HTTP client."""
    from imd.edges.http_download import open_download

    t0 = time.monotonic()
    download = await open_download(url, connect_timeout=10, read_timeout=30)
    try:
        while await download.read(1 << 20):
            pass
    finally:
        await download.close()
    return time.monotonic() - t0


async def replica_create(node: Node, name: str, size: int, image_name: str) -> float:
    from imd.api.gen.imrpc import common_pb2
    from imd.api.gen.imrpc import instance_pb2 as inst

    spec = inst.InstanceSpec(
        name=name,
        type="replica",
        volume_name=f"vol-{name}",
        data_engine=common_pb2.DATA_ENGINE_V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(disk_name="d1", size=size, backing_image_name=image_name),
    )
    t0 = time.monotonic()
    await node.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
    return time.monotonic() - t0


async def replica_delete(node: Node, name: str) -> None:
    from google.protobuf.empty_pb2 import Empty

    from imd.api.gen.imrpc import common_pb2
    from imd.api.gen.imrpc import instance_pb2 as inst

    await node.stub.InstanceDelete(
        inst.InstanceDeleteRequest(name=name, data_engine=common_pb2.DATA_ENGINE_V2, cleanup_required=True)
    )
    async with asyncio.timeout(60):
        while name in (await node.stub.InstanceList(Empty())).instances:
            await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from imd.api.gen.imrpc import disk_pb2
    from tests.http_server import FileServer

    work = Path(tempfile.mkdtemp(prefix="imd-bench-images-"))
    disk_dir = Path(args.disk_dir)
    node = Node(work / "node", disk_dir, port_range="26000-26999")
    server = await FileServer().start()
    result: dict[str, Any] = {"prepare": [], "sync": [], "memory": [], "replicas": {}}
    fd, second = tempfile.mkstemp(prefix="imd-bench-d2-", suffix=".img", dir=disk_dir)
    os.ftruncate(fd, 8 << 30)
    os.close(fd)
    try:
        await node.start()
        await node.daemon.disks().DiskCreate(
            disk_pb2.DiskCreateRequest(disk_type=disk_pb2.block, disk_name="d2", disk_path=second)
        )
        d1, d2 = await disk_uuid(node, "d1"), await disk_uuid(node, "d2")
        source = f"127.0.0.1:{node.daemon.base_port + 4}"
        for shape, zero_half in (("random", False), ("half zeroes", True)):
            data = image(args.image_mib, zero_half)
            checksum = hashlib.sha512(data).hexdigest()
            server.add(f"/{shape.replace(' ', '-')}", data)
            url = server.url(f"/{shape.replace(' ', '-')}")
            for rep in range(args.reps):
                result["memory"].append({"shape": shape, "rep": rep, "seconds": await memory_download(url)})
                name = f"img-{rep}"
                t0 = time.monotonic()
                await create(node, name, d1, len(data), checksum, url)
                answered = time.monotonic() - t0
                times = await wait_ready(node, name, d1)
                result["prepare"].append(
                    {"shape": shape, "rep": rep, "create_rpc_s": answered, **times, "mib": args.image_mib}
                )
                print(f"prepare {shape} rep {rep}: {times['ready_s']:.2f} s", flush=True)
                await create(node, name, d2, len(data), checksum, source, d1)
                sync = await wait_ready(node, name, d2)
                result["sync"].append({"shape": shape, "rep": rep, **sync, "mib": args.image_mib})
                print(f"sync {shape} rep {rep}: {sync['ready_s']:.2f} s", flush=True)
                if shape == "random" and rep == 0:
                    size = args.replica_mib * MIB
                    with_image, plain = [], []
                    for i in range(args.creates):
                        with_image.append(await replica_create(node, f"rb{i}", size, name))
                        plain.append(await replica_create(node, f"rp{i}", size, ""))
                    for i in range(args.creates):
                        await replica_delete(node, f"rb{i}")
                        await replica_delete(node, f"rp{i}")
                    result["replicas"] = {"from_image_s": with_image, "plain_s": plain, "mib": args.replica_mib}
                await delete(node, name, d2)
                await delete(node, name, d1)
    finally:
        await server.close()
        await node.close()
        os.unlink(second)
    return result


def report(data: dict[str, Any]) -> str:
    mib = data["args"]["image_mib"]
    rows = []
    for shape in ("random", "half zeroes"):
        prep = [r for r in data["prepare"] if r["shape"] == shape]
        sync = [r for r in data["sync"] if r["shape"] == shape]
        mem = [r["seconds"] for r in data["memory"] if r["shape"] == shape]
        rows.append(
            {
                "image": f"{mib} MiB, {shape}",
                "download → ready s (median)": f"{median([r['ready_s'] for r in prep]):.2f}",
                "MiB/s": f"{mib / median([r['ready_s'] for r in prep]):.0f}",
                "per rep s": " ".join(f"{r['ready_s']:.2f}" for r in prep),
                "copy / checksum+snapshot s": f"{median([r['copied_s'] for r in prep]):.2f} / "
                f"{median([r['ready_s'] - r['copied_s'] for r in prep]):.2f}",
                "Create answered ms": f"{median([r['create_rpc_s'] for r in prep]) * 1e3:.0f}",
                "download to memory s (MiB/s)": f"{median(mem):.2f} ({mib / median(mem):.0f})",
                "disk → disk via replica service s (MiB/s)": f"{median([r['ready_s'] for r in sync]):.2f} "
                f"({mib / median([r['ready_s'] for r in sync]):.0f})",
            }
        )
    parts = ["### Download and prepare, and a copy from another disk\n\n" + markdown_table(rows, list(rows[0]))]
    reps = data.get("replicas") or {}
    if reps:
        rrows = [
            {
                "replica create": what,
                "p50 ms": f"{percentile(reps[key], 50) * 1e3:.1f}",
                "p99 ms": f"{percentile(reps[key], 99) * 1e3:.1f}",
                "max ms": f"{max(reps[key]) * 1e3:.1f}",
                "count": len(reps[key]),
            }
            for what, key in (
                (f"from a ready {mib} MiB image ({reps['mib']} MiB replica: clone + resize)", "from_image_s"),
                (f"plain thin lvol ({reps['mib']} MiB)", "plain_s"),
            )
        ]
        parts.append("### A replica from a ready image\n\n" + markdown_table(rrows, list(rrows[0])))
    return "\n\n".join(parts)


def plot(label: str, data: dict[str, Any]) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    mib = data["args"]["image_mib"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    shapes = ["random", "half zeroes"]
    kinds = [
        ("download to memory", [median([r["seconds"] for r in data["memory"] if r["shape"] == s]) for s in shapes]),
        ("download → ready", [median([r["ready_s"] for r in data["prepare"] if r["shape"] == s]) for s in shapes]),
        ("disk → disk", [median([r["ready_s"] for r in data["sync"] if r["shape"] == s]) for s in shapes]),
    ]
    width = 0.25
    for i, (kind, seconds) in enumerate(kinds):
        left.bar([x + i * width for x in range(len(shapes))], [mib / s for s in seconds], width, label=kind)
    left.set_xticks([x + width for x in range(len(shapes))], shapes)
    left.set_ylabel("MiB/s")
    left.set_title(f"{mib} MiB backing image")
    left.legend()
    reps = data.get("replicas") or {}
    if reps:
        right.boxplot(
            [[v * 1e3 for v in reps["from_image_s"]], [v * 1e3 for v in reps["plain_s"]]],
            tick_labels=["from image", "plain"],
        )
        right.set_ylabel("InstanceCreate ms")
        right.set_title(f"replica create ({reps['mib']} MiB)")
    return save_figure(plt, fig, RESULTS / f"{label}.png")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-mib", type=int, default=1024)
    parser.add_argument("--replica-mib", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--disk-dir", default="/dev/shm", help="where the disks' sparse files live")
    parser.add_argument("--label", default="images")
    args = parser.parse_args()
    reason = missing(("nvmf_tgt",))
    if reason is not None:
        print(f"bench/images needs SPDK: {reason}")
        return 2
    data: dict[str, Any] = {"benchmark": "images", "env": environment(), "args": vars(args)}
    data["command"] = " ".join(["python -m bench.images", *sys.argv[1:]])
    data.update(await run(args))
    md = report(data)
    print(md)
    write_results(args.label, data, f"# bench/images, {data['env']['date']}\n\n`{data['command']}`\n\n{md}\n")
    path = plot(args.label, data)
    if path:
        print(f"plot {path}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
