"""bench/control: control-plane load against any daemon speaking imrpc.

    python -m bench.control                       # starts its own imd
    python -m bench.control --addr H:P --pid PID  # any daemon (e.g. the Go original)

For each N: open W watchers (each its own HTTP/2 connection, like separate
managers), create N ``sleep`` processes (port_count 0) with C concurrent
clients, wait until every watcher saw every process running, then delete
them all and wait for every final event. Reports:

* create RPC latency p50/p99 and creates per second (wall time of the phase);
* create->running: from sending the create to the first watcher seeing
  ``running`` for that UUID;
* spread: for each event, last watcher's receive time minus the first's;
* delete->final event: from sending the delete to the first watcher seeing
  ``deleted=true`` for that UUID;
* the daemon's peak RSS during the run (needs --pid for a remote daemon).

Everything runs on this machine: the watchers' own scheduling is part of
the spread, as it would be for a manager process on the node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

import uvloop
from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from bench.daemon import LocalDaemon, rss_mb
from bench.report import environment, markdown_table, plot_percentiles, save, summary_ms
from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm

Key = tuple[str, str, bool]  # uuid, state, deleted


async def watcher(addr: tuple[str, int], seen: dict[Key, list[float]], ready: asyncio.Event, count: list[int]) -> None:
    channel = Channel(*addr)
    try:
        stub = imrpc_grpc.ProcessManagerServiceStub(channel)
        async with stub.ProcessWatch.open() as stream:
            await stream.send_message(Empty(), end=True)
            # imd sends headers once subscribed; the Go original sends them
            # with its first event, so don't wait on them forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.recv_initial_metadata(), 2)
            count[0] += 1
            if count[0] == count[1]:
                ready.set()
            while True:
                event = await stream.recv_message()
                now = time.perf_counter()
                if event is None:
                    return
                seen[(event.status.uuid, event.status.state, event.deleted)].append(now)
    finally:
        channel.close()


async def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def sample_rss(pid: int | None, peak: list[float], stop: asyncio.Event) -> None:
    while pid and not stop.is_set():
        try:
            peak[0] = max(peak[0], rss_mb(pid))
        except OSError:
            return
        await asyncio.sleep(0.05)


async def run_once(
    addr: tuple[str, int], pid: int | None, n: int, watchers: int, concurrency: int, tag: str
) -> dict[str, Any]:
    seen: dict[Key, list[float]] = defaultdict(list)
    ready = asyncio.Event()
    counter = [0, watchers]
    tasks = [asyncio.ensure_future(watcher(addr, seen, ready, counter)) for _ in range(watchers)]
    await asyncio.wait_for(ready.wait(), 30)
    channels = [Channel(*addr) for _ in range(concurrency)]
    stubs = [imrpc_grpc.ProcessManagerServiceStub(ch) for ch in channels]
    names = [f"bench-{tag}-{i}" for i in range(n)]
    create_sent: dict[str, float] = {}
    uuids: dict[str, str] = {}
    create_rpc: list[float] = []
    peak = [0.0]
    stop_rss = asyncio.Event()
    rss_task = asyncio.ensure_future(sample_rss(pid, peak, stop_rss))
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)

    async def creator(stub: imrpc_grpc.ProcessManagerServiceStub) -> None:
        while not queue.empty():
            name = queue.get_nowait()
            spec = pm.ProcessSpec(name=name, binary="/bin/sleep", args=["3600"])
            t0 = time.perf_counter()
            create_sent[name] = t0
            reply = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec))
            create_rpc.append(time.perf_counter() - t0)
            uuids[name] = reply.status.uuid

    started = time.perf_counter()
    await asyncio.gather(*(creator(s) for s in stubs))
    create_wall = time.perf_counter() - started
    all_running = await wait_for(lambda: all(len(seen[(uuids[nm], "running", False)]) == watchers for nm in names), 120)
    to_running = [
        seen[(uuids[nm], "running", False)][0] - create_sent[nm] for nm in names if seen[(uuids[nm], "running", False)]
    ]

    delete_sent: dict[str, float] = {}
    for name in names:
        queue.put_nowait(name)

    async def deleter(stub: imrpc_grpc.ProcessManagerServiceStub) -> None:
        while not queue.empty():
            name = queue.get_nowait()
            delete_sent[name] = time.perf_counter()
            await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name, uuid=uuids[name]))

    await asyncio.gather(*(deleter(s) for s in stubs))

    def final_key(name: str) -> list[float]:
        times = [t for (u, _, d), t in seen.items() if u == uuids[name] and d]
        return times[0] if times else []

    all_deleted = await wait_for(lambda: all(len(final_key(nm)) == watchers for nm in names), 120)
    to_final = [final_key(nm)[0] - delete_sent[nm] for nm in names if final_key(nm)]
    spreads = [max(t) - min(t) for t in seen.values() if len(t) == watchers]
    stop_rss.set()
    await rss_task
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        ch.close()
    return {
        "n": n,
        "watchers": watchers,
        "concurrency": concurrency,
        "complete": all_running and all_deleted,
        "creates_per_s": round(n / create_wall, 1),
        "create_rpc": summary_ms(create_rpc),
        "create_to_running": summary_ms(to_running),
        "watch_spread": summary_ms(spreads),
        "delete_to_final_event": summary_ms(to_final),
        "events_seen": sum(len(t) for t in seen.values()),
        "peak_rss_mb": round(peak[0], 1) if pid else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", help="HOST:PORT of a running daemon's process-manager API")
    parser.add_argument("--pid", type=int, help="that daemon's pid, for RSS")
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--label", default="imd")
    args = parser.parse_args()
    local = None
    if args.addr:
        host, _, port = args.addr.rpartition(":")
        addr, pid = (host, int(port)), args.pid
    else:
        local = LocalDaemon()
        pid = local.spawn().pid
        await local.wait_serving()
        addr = ("127.0.0.1", local.base)
    results = []
    try:
        for i, n in enumerate(int(x) for x in args.sizes.split(",")):
            result = await run_once(addr, pid, n, args.watchers, args.concurrency, f"{i}{int(time.time())}")
            results.append(result)
            await asyncio.sleep(1.0)
    finally:
        if local is not None:
            local.stop()

    def pair(summary: dict[str, float]) -> str:
        return f"{summary['p50_ms']} / {summary['p99_ms']}"

    rows = [
        {
            "N": r["n"],
            "creates/s": r["creates_per_s"],
            "create RPC p50/p99 ms": pair(r["create_rpc"]),
            "create→running p50/p99 ms": pair(r["create_to_running"]),
            f"spread over {r['watchers']} watchers p99 ms": r["watch_spread"]["p99_ms"],
            "delete→final p50/p99 ms": pair(r["delete_to_final_event"]),
            "peak RSS MB": r["peak_rss_mb"],
            "complete": r["complete"],
        }
        for r in results
    ]
    table = markdown_table(rows, list(rows[0]))
    print(table)
    path = save(
        f"control-{args.label}", {"benchmark": "control", "label": args.label, "env": environment(), "results": results}
    )
    print(f"\nsaved {path}")
    plot = plot_percentiles(
        f"control-{args.label}",
        f"{args.label}: create→running latency",
        {args.label: [(r["n"], r["create_to_running"]["p50_ms"], r["create_to_running"]["p99_ms"]) for r in results]},
    )
    if plot:
        print(f"plot {plot}")


if __name__ == "__main__":
    uvloop.run(main())
