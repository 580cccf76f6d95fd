"""bench/restart: daemon start to READY=1 with N persisted children to re-adopt.

    python -m bench.restart [--children 1000] [--repeat 3]

Creates N ``sleep`` children under a daemon in leave-running mode, kills
the daemon with SIGKILL, then times a fresh daemon from exec to the READY=1
datagram on a fake NOTIFY_SOCKET (READY comes only after recovery finished
and every listener accepts). The same is timed with no children, which is
the interpreter's and imports' share. Target: under 2 s at N = 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import time

import uvloop
from grpclib.client import Channel

from bench.daemon import LocalDaemon
from bench.report import environment, markdown_table, save
from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm


async def create_children(daemon: LocalDaemon, count: int) -> None:
    channel = Channel(path=str(daemon.socket))
    stub = imrpc_grpc.ProcessManagerServiceStub(channel)
    names = iter(range(count))

    async def worker() -> None:
        for i in names:
            spec = pm.ProcessSpec(name=f"r{i}", binary="/bin/sleep", args=["3600"])
            await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec))

    try:
        await asyncio.gather(*(worker() for _ in range(16)))
    finally:
        channel.close()


async def count_running(daemon: LocalDaemon) -> int:
    channel = Channel(path=str(daemon.socket))
    try:
        listing = await imrpc_grpc.ProcessManagerServiceStub(channel).ProcessList(pm.ProcessListRequest())
        return sum(p.status.state == "running" for p in listing.processes.values())
    finally:
        channel.close()


async def delete_all(daemon: LocalDaemon) -> None:
    channel = Channel(path=str(daemon.socket))
    stub = imrpc_grpc.ProcessManagerServiceStub(channel)
    try:
        listing = await stub.ProcessList(pm.ProcessListRequest())
        for name in listing.processes:
            await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name))
        while (await stub.ProcessList(pm.ProcessListRequest())).processes:
            await asyncio.sleep(0.1)
    finally:
        channel.close()


async def time_to_ready(daemon: LocalDaemon) -> float:
    notify_path = daemon.root / "notify.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.setblocking(False)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        daemon.spawn(env={"NOTIFY_SOCKET": str(notify_path)})
        while True:
            data = await asyncio.wait_for(loop.sock_recv(notify, 4096), 60)
            if b"READY=1" in data.split(b"\n"):
                return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    daemon = LocalDaemon("stop_children_on_exit = false\n")
    empty = []
    for _ in range(args.repeat):
        empty.append(await time_to_ready(daemon))
        daemon.stop(signal.SIGTERM)
    daemon.spawn()
    await daemon.wait_serving()
    await create_children(daemon, args.children)
    daemon.stop(signal.SIGKILL)
    loaded = []
    try:
        for _ in range(args.repeat):
            loaded.append(await time_to_ready(daemon))
            daemon.stop(signal.SIGKILL)
        daemon.spawn()
        await daemon.wait_serving()
        adopted = await count_running(daemon)
    finally:
        await delete_all(daemon)
        daemon.stop(signal.SIGTERM)
    rows = [
        {"children": n, "median s": round(statistics.median(runs), 3), "runs": [round(x, 3) for x in runs]}
        for n, runs in ((0, empty), (args.children, loaded))
    ]
    print(markdown_table(rows, ["children", "median s", "runs"]))
    print(f"\nrunning after the last restart: {adopted} of {args.children}")
    data = {"benchmark": "restart", "env": environment(), "results": rows, "running_after": adopted, "target_s": 2.0}
    print(f"saved {save('restart-imd', data)}")


if __name__ == "__main__":
    uvloop.run(main())
