"""Helper processes of the V2 benchmarks, each with its own spdk_ffi core
(a process has one, started once with its poller options):

    python -m bench.v2proc '<json>'

``"role"``:

* ``engine``: imd's engine data path outside the benchmark's process, so
  that its poller can be started with options of its own (``poll_sleep_us``,
  ``idle_spin_us``): attach the replicas (``paths``) with the daemon's
  replica controller options, build a NativeMirror over them and export it
  (``port``, ``subnqn``), exactly as imd/v2/engines.py does. Prints one JSON
  line ``{"ready": true}``, serves until its stdin closes, then prints the
  poller's and the mirror's counters.
* ``bench``: a polite NVMe-oF host: spdk_ffi's C tier (``NativeBackend.bench``)
  on ``path`` for each of ``workloads``, with a poller that naps
  ``poll_sleep_us`` between polls instead of spinning (it shares a core with
  a busy poller). Prints the results.
* ``loop``: a verified-I/O host for the daemon-level measurements: ``qd``
  workers write a pattern to a random block, or read back a block written
  before and compare, for ``seconds`` (or until stdin closes with
  ``"until_eof"``). It records every pause between two completions longer
  than ``gap_ms`` (with monotonic timestamps, comparable with the parent's
  ``time.monotonic()``), completions per 100 ms, errors and mismatches.
  Prints ``{"ready": true}`` once attached, then its report, with
  ``written`` (each block whose last write was acknowledged: its seed).

Every role prints JSON lines on stdout; the last one is the report.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

BLOCK = 4096


def pattern(seed: int, lba: int) -> bytes:
    return random.Random(seed * 1_000_003 + lba).randbytes(BLOCK)


def set_timer_slack(ns: int | None) -> None:
    """prctl(PR_SET_TIMERSLACK): how late the kernel may wake a nap (50 µs
    by default). Threads created afterwards (the core's poller) inherit it."""
    if ns:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_TIMERSLACK)")


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def engine(spec: dict[str, Any]) -> dict[str, Any]:
    from spdk_ffi import ControllerOpts, Initiator
    from spdk_ffi.mirror import NativeMirror
    from spdk_ffi.native import NativeBackend, NativeCore

    core = NativeCore.start(
        core_mask=spec.get("core_mask", "0x2"),
        mem_size_mb=spec.get("mem_mb", 1024),
        no_huge=True,
        idle_spin_us=spec["idle_spin_us"],
        poll_sleep_us=spec["poll_sleep_us"],
    )
    backend = NativeBackend(core)
    ini = Initiator(backend)
    opts = ControllerOpts(**spec["opts"])
    legs = []
    for i, path in enumerate(spec["paths"]):
        name = f"leg{i}"
        await ini.attach(name, [path], spec["hostnqn"], opts, owner="bench-engine")
        legs.append((name, ini.handle(name)))
    blocks = min(h.namespaces[0].size_bytes for _, h in legs) // BLOCK
    mirror = await NativeMirror.create(backend, "bench-engine", legs, blocks)
    await mirror.export(spec["subnqn"], "127.0.0.1", spec["port"], spec["nguid"])
    say({"ready": True, "blocks": blocks})
    await stdin_closed()
    report = {"poller": core.poller_stats(), "mirror": mirror.counters(), "legs": [leg.mode for leg in mirror.legs()]}
    await mirror.destroy()
    for name, _ in legs:
        await ini.detach(name)
    return report


async def bench(spec: dict[str, Any]) -> dict[str, Any]:
    from spdk_ffi import ControllerOpts, Initiator
    from spdk_ffi.native import NativeBackend, NativeCore

    core = NativeCore.start(
        core_mask=spec.get("core_mask", "0x2"),
        mem_size_mb=512,
        no_huge=True,
        idle_spin_us=spec.get("idle_spin_us", 0),
        poll_sleep_us=spec["poll_sleep_us"],
    )
    backend = NativeBackend(core)
    ini = Initiator(backend)
    await ini.attach("dev", [spec["path"]], spec["hostnqn"], ControllerOpts(io_queue_size=128, io_queue_requests=512))
    results = []
    try:
        for w in spec["workloads"]:
            r = await backend.bench(
                ini.handle("dev"),
                qd=w["qd"],
                io_size=w["io_size"],
                write=w["write"],
                duration_s=w["duration"],
                warmup_s=w["warmup"],
            )
            results.append({"iops": r.iops, "avg_us": r.avg_us, "histogram_100ns": r.histogram_100ns})
    finally:
        await ini.detach("dev")
    return {"results": results, "poller": core.poller_stats()}


async def loop(spec: dict[str, Any]) -> dict[str, Any]:
    from spdk_ffi import ControllerOpts, Initiator
    from spdk_ffi.native import DmaBuffer, Io, IoKind, NativeBackend, NativeCore

    core = NativeCore.start(
        core_mask=spec.get("core_mask", "0x1"),
        mem_size_mb=256,
        no_huge=True,
        idle_spin_us=0,
        poll_sleep_us=spec.get("poll_sleep_us", 20),
    )
    ini = Initiator(NativeBackend(core))
    info = (await ini.attach("dev", [spec["path"]], spec["hostnqn"], ControllerOpts(**spec.get("opts", {})))).info
    blocks = info.namespaces[0].size_bytes // BLOCK
    span = min(blocks, spec.get("span", blocks))
    seed, qd = spec["seed"], spec.get("qd", 4)
    gap_s = spec.get("gap_ms", 20) / 1000
    rng = random.Random(seed)
    counts = {"writes": 0, "reads": 0, "errors": 0, "mismatches": 0}
    errors: list[str] = []
    written: dict[int, int] = {}
    busy: set[int] = set()
    start = time.monotonic()
    last = [start]
    gaps: list[tuple[float, float]] = []
    bins: dict[int, int] = {}
    stop = asyncio.Event()

    def completed() -> None:
        now = time.monotonic()
        if now - last[0] >= gap_s:
            gaps.append((round(last[0], 6), round(now, 6)))
        last[0] = now
        slot = int((now - start) * 10)
        bins[slot] = bins.get(slot, 0) + 1

    async def worker(slot: int) -> None:
        buf = DmaBuffer(BLOCK)
        generation = slot * 1_000_000_000
        try:
            while not stop.is_set():
                lba = rng.randrange(span)
                if lba in busy:
                    await asyncio.sleep(0)
                    continue
                busy.add(lba)
                generation += 1
                try:
                    if lba in written and rng.random() < 0.5:
                        await ini.io("dev", [Io(IoKind.READ, 1, lba, 1, buf)])
                        counts["reads"] += 1
                        counts["mismatches"] += bytes(buf.view) != pattern(written[lba], lba)
                    else:
                        buf.view[:] = pattern(seed + generation, lba)
                        written.pop(lba, None)  # in flight: unknown until it completes
                        await ini.io("dev", [Io(IoKind.WRITE, 1, lba, 1, buf)])
                        written[lba] = seed + generation
                        counts["writes"] += 1
                except Exception as exc:  # counted; the loop goes on
                    counts["errors"] += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))
                finally:
                    busy.discard(lba)
                completed()
        finally:
            buf.free()

    say({"ready": True, "blocks": blocks, "t": time.monotonic()})
    workers = [asyncio.ensure_future(worker(i)) for i in range(qd)]
    if spec.get("until_eof"):
        await stdin_closed()
    else:
        await asyncio.sleep(spec["seconds"])
    stop.set()
    await asyncio.gather(*workers)
    end = time.monotonic()
    await ini.detach("dev")
    return {
        **counts,
        "errors_seen": errors,
        "start": start,
        "end": end,
        "gaps": gaps,
        "bins_100ms": [bins.get(i, 0) for i in range(int((end - start) * 10) + 1)],
        "written": written,
    }


ROLES = {"engine": engine, "bench": bench, "loop": loop}


def main() -> int:
    spec = json.loads(sys.argv[1])
    import uvloop

    set_timer_slack(spec.get("timer_slack_ns"))
    report = uvloop.run(ROLES[spec["role"]](spec))
    say(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
