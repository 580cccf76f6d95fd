"""A child that serves grpc.health.v1 on the port given as ``--listen HOST:PORT``.

Options: ``--delay S`` waits before listening (a slow start); ``--wait-for
PATH`` listens only once PATH exists (a start the test ends when it chooses;
the child prints "waiting for PATH" first); ``--not-serving``
answers NOT_SERVING forever; ``--exit-after S`` exits 0 after S seconds;
``--ignore-signals`` ignores SIGINT and SIGHUP (only SIGTERM/SIGKILL end it).
It prints one line per second to show that it is alive and logging.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.server import Server


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--wait-for", default="")
    parser.add_argument("--not-serving", action="store_true")
    parser.add_argument("--exit-after", type=float, default=0.0)
    parser.add_argument("--ignore-signals", action="store_true", help="ignore SIGINT and SIGHUP")
    args, _ = parser.parse_known_args()
    host, _, port = args.listen.rpartition(":")
    await asyncio.sleep(args.delay)
    if args.wait_for:
        print(f"waiting for {args.wait_for}", flush=True)
        while not os.path.exists(args.wait_for):
            await asyncio.sleep(0.02)
    status = ServiceStatus()
    status.set(not args.not_serving)
    server = Server([Health({Health(): [status]})])
    await server.start("127.0.0.1" if host in ("0.0.0.0", "") else host, int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        if args.ignore_signals and sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
        else:
            loop.add_signal_handler(sig, stop.set)
    if args.exit_after:
        loop.call_later(args.exit_after, stop.set)
    print(f"serving on {port}", flush=True)
    tick = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            tick += 1
            print(f"tick {tick}", flush=True)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
