"""A separate NVMe-oF host for the frontend tests: attaches one subsystem with
spdk_ffi (its own SPDK environment, another core mask, no hugepages), writes
deterministic patterns, reads them back, and prints a JSON report.

    python -m tests.spdk.host_helper '{"path": ..., "hostnqn": ..., "seed": 1, "lbas": [...], "nblocks": 16}'
    python -m tests.spdk.host_helper '{"path": ..., "hostnqn": ..., "watch_blocks": N}'

The second form prints "attached", then waits until the namespace grows to
N blocks while connected (the namespace-attribute-changed notice).

Its poller never spins (idle_spin_us=0, poll_sleep_us=20): with the replica
target and the engine busy-polling the machine's two cores, a third spinning
poller would make every I/O wait for a scheduler time slice.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

BLOCK = 4096


def pattern(seed: int, lba: int, nblocks: int) -> bytes:
    """The bytes the helper writes at ``lba``; tests recompute them."""
    return b"".join(random.Random(seed * 1_000_003 + lba + i).randbytes(BLOCK) for i in range(nblocks))


async def watch_size(ini: Any, blocks: int, timeout: float) -> int:
    """Wait until the attached namespace has ``blocks`` blocks without
    reconnecting: only the target's namespace-changed notice tells the
    driver. (A mirror over the controller checks the driver's live size.)"""
    from spdk_ffi.errors import NvmeError
    from spdk_ffi.mirror import NativeMirror

    print("attached", flush=True)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            probe = await NativeMirror.create(ini._backend, "probe", [("export", ini.handle("export"))], blocks)
        except NvmeError:
            await asyncio.sleep(0.05)
            continue
        await probe.destroy()
        return blocks
    return 0


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    from spdk_ffi import Initiator
    from spdk_ffi.native import DmaBuffer, Io, IoKind, NativeBackend, NativeCore

    core = NativeCore.start(
        core_mask=spec.get("core_mask", "0x1"), mem_size_mb=512, no_huge=True, idle_spin_us=0, poll_sleep_us=20
    )
    ini = Initiator(NativeBackend(core))
    result = await ini.attach("export", [spec["path"]], spec["hostnqn"])
    (ns,) = result.info.namespaces
    if "watch_blocks" in spec:
        try:
            seen = await watch_size(ini, spec["watch_blocks"], spec.get("timeout", 20.0))
        finally:
            await ini.detach("export")
        return {"size_bytes": ns.size_bytes, "grown_to_blocks": seen}
    seed, nblocks, lbas = spec["seed"], spec["nblocks"], spec["lbas"]
    bufs = [DmaBuffer(nblocks * BLOCK) for _ in range(8)]
    mismatches = 0
    try:
        for base in range(0, len(lbas), len(bufs)):
            group = lbas[base : base + len(bufs)]
            for lba, buf in zip(group, bufs, strict=False):
                buf.view[:] = pattern(seed, lba, nblocks)
            await ini.io(
                "export", [Io(IoKind.WRITE, 1, lba, nblocks, buf) for lba, buf in zip(group, bufs, strict=False)]
            )
        for base in range(0, len(lbas), len(bufs)):
            group = lbas[base : base + len(bufs)]
            await ini.io(
                "export", [Io(IoKind.READ, 1, lba, nblocks, buf) for lba, buf in zip(group, bufs, strict=False)]
            )
            for lba, buf in zip(group, bufs, strict=False):
                mismatches += bytes(buf.view) != pattern(seed, lba, nblocks)
        await ini.io("export", [Io(IoKind.FLUSH, 1)])
    finally:
        await ini.detach("export")
        for buf in bufs:
            buf.free()
    return {"size_bytes": ns.size_bytes, "block_size": ns.block_size, "written": len(lbas), "mismatches": mismatches}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))), flush=True)
