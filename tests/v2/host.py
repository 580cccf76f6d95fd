"""A separate NVMe-oF host for the V2 engine tests, in its own process with
its own SPDK environment (spdk_ffi, no hugepages, a poller that never spins
while idle: with the replica target and the engine polling the two cores,
a third spinning poller would starve them).

    python -m tests.v2.host '<json>'   -> prints one JSON report

Commands (``"cmd"``):

* ``write``: write deterministic patterns at ``lbas`` (``nblocks`` each,
  seeded by ``seed``), read them back, count mismatches.
* ``verify``: read ``lbas`` and count blocks that differ from the pattern.
* ``check``: read each block of ``written`` (``{lba: seed}``, as ``loop``
  reports it) and count the blocks that differ.
* ``hash``: SHA-256 of blocks ``[first, first + count)``, per ``chunk``
  blocks (to compare replicas byte for byte).
* ``loop``: for ``seconds``, write and read back random blocks with
  ``qd`` I/Os in flight, counting errors and mismatches and the longest
  gap between two completions (the pause a host sees); with reconnect
  options, a host that rides out an engine restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
from typing import Any

BLOCK = 4096


def pattern(seed: int, lba: int, nblocks: int = 1) -> bytes:
    """The bytes written at ``lba``; tests recompute them."""
    return b"".join(random.Random(seed * 1_000_003 + lba + i).randbytes(BLOCK) for i in range(nblocks))


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    from spdk_ffi import ControllerOpts, Initiator
    from spdk_ffi.native import DmaBuffer, Io, IoKind, NativeBackend, NativeCore

    core = NativeCore.start(
        core_mask=spec.get("core_mask", "0x1"), mem_size_mb=256, no_huge=True, idle_spin_us=0, poll_sleep_us=20
    )
    opts = ControllerOpts(**spec.get("opts", {}))
    ini = Initiator(NativeBackend(core))
    hostnqn = spec.get("hostnqn", "nqn.2014-08.org.nvmexpress:uuid:imd-test-host")
    info = (await ini.attach("dev", [spec["path"]], hostnqn, opts)).info
    (ns,) = info.namespaces
    report: dict[str, Any] = {"size_bytes": ns.size_bytes, "block_size": ns.block_size}
    cmd = spec["cmd"]
    try:
        if cmd in ("write", "verify"):
            seed, nblocks, lbas = spec["seed"], spec.get("nblocks", 1), spec["lbas"]
            buf = DmaBuffer(nblocks * BLOCK)
            mismatches = 0
            try:
                for lba in lbas:
                    if cmd == "write":
                        buf.view[:] = pattern(seed, lba, nblocks)
                        await ini.io("dev", [Io(IoKind.WRITE, 1, lba, nblocks, buf)])
                    await ini.io("dev", [Io(IoKind.READ, 1, lba, nblocks, buf)])
                    mismatches += bytes(buf.view) != pattern(seed, lba, nblocks)
                if cmd == "write":
                    await ini.io("dev", [Io(IoKind.FLUSH, 1)])
            finally:
                buf.free()
            report.update(blocks=len(lbas), mismatches=mismatches)
        elif cmd == "check":
            buf = DmaBuffer(BLOCK)
            mismatches = 0
            try:
                for lba_text, seed in spec["written"].items():
                    lba = int(lba_text)
                    await ini.io("dev", [Io(IoKind.READ, 1, lba, 1, buf)])
                    mismatches += bytes(buf.view) != pattern(seed, lba)
            finally:
                buf.free()
            report.update(blocks=len(spec["written"]), mismatches=mismatches)
        elif cmd == "hash":
            chunk = spec.get("chunk", 256)
            buf = DmaBuffer(chunk * BLOCK)
            hashes = []
            try:
                first, count = spec["first"], spec["count"]
                for lba in range(first, first + count, chunk):
                    n = min(chunk, first + count - lba)
                    await ini.io("dev", [Io(IoKind.READ, 1, lba, n, buf)])
                    hashes.append(hashlib.sha256(bytes(buf.view[: n * BLOCK])).hexdigest())
            finally:
                buf.free()
            report.update(hashes=hashes)
        elif cmd == "loop":
            report.update(await _loop(ini, spec, ns.size_bytes // BLOCK, DmaBuffer, Io, IoKind))
        else:
            raise SystemExit(f"unknown cmd {cmd!r}")
    finally:
        await ini.detach("dev")
    return report


async def _loop(ini: Any, spec: dict[str, Any], blocks: int, dma: Any, io: Any, kind: Any) -> dict[str, Any]:
    seed, seconds, qd = spec["seed"], spec["seconds"], spec.get("qd", 4)
    span = min(blocks, spec.get("span", blocks))
    rng = random.Random(seed)
    counts = {"writes": 0, "reads": 0, "errors": 0, "mismatches": 0}
    written: dict[int, int] = {}
    busy: set[int] = set()  # blocks with an I/O in flight: never two at once on one block
    last = [time.monotonic()]
    longest = [0.0]
    deadline = time.monotonic() + seconds
    first_error = [""]

    def completed() -> None:
        now = time.monotonic()
        longest[0] = max(longest[0], now - last[0])
        last[0] = now

    async def worker(slot: int) -> None:
        buf = dma(BLOCK)
        generation = slot * 1_000_000
        try:
            while time.monotonic() < deadline:
                lba = rng.randrange(span)
                if lba in busy:
                    continue
                busy.add(lba)
                generation += 1
                try:
                    if lba in written and rng.random() < 0.5:
                        await ini.io("dev", [io(kind.READ, 1, lba, 1, buf)])
                        counts["reads"] += 1
                        counts["mismatches"] += bytes(buf.view) != pattern(written[lba], lba)
                    else:
                        buf.view[:] = pattern(seed + generation, lba)
                        written.pop(lba, None)  # in flight: unknown until done
                        await ini.io("dev", [io(kind.WRITE, 1, lba, 1, buf)])
                        written[lba] = seed + generation
                        counts["writes"] += 1
                except Exception as exc:  # counted, the loop goes on: the test asserts the count
                    counts["errors"] += 1
                    first_error[0] = first_error[0] or repr(exc)
                finally:
                    busy.discard(lba)
                completed()
        finally:
            buf.free()

    await asyncio.gather(*(worker(i) for i in range(qd)))
    return {**counts, "longest_gap_s": round(longest[0], 3), "first_error": first_error[0], "written": written}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))), flush=True)
