"""Mirrors in the C core against a real nvmf_tgt holding the replicas.

The replica target runs on core 0 and this process's poller on core 1. Each
test attaches its replicas through an Initiator, builds a mirror over them,
and checks the data on each replica directly, through a second attach under
another host NQN (the driver would hand the same controller back for the
same host).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import spdk_ffi
from spdk_ffi import ControllerOpts, Initiator
from tests.spdk.target import HOST_NQN, Layout, Target, path, skip_reason

pytestmark = pytest.mark.asyncio

BLOCK = 4096
BLOCKS = 8192  # 32 MiB replicas
CHECK_NQN = "nqn.2014-08.org.nvmexpress:uuid:imd-tests-check"


def nqn(name: str) -> str:
    return f"nqn.2016-06.io.imd:{name}"


# r1 is reachable on two listeners (multipath); lv* are thin lvols (resize).
MIRROR_LAYOUT: Layout = [
    (nqn("r1"), "malloc", "R1", BLOCKS, [4431, 4432]),
    (nqn("r2"), "malloc", "R2", BLOCKS, [4433]),
    (nqn("r3"), "malloc", "R3", BLOCKS, [4434]),
    (nqn("lv1"), "lvol", "lv1", BLOCKS, [4435]),
    (nqn("lv2"), "lvol", "lv2", BLOCKS, [4436]),
]
PORT = {"r1": 4431, "r2": 4433, "r3": 4434, "lv1": 4435, "lv2": 4436}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    t = Target(Path(tmp_path_factory.mktemp("replicas")), MIRROR_LAYOUT, mem_size_mb=1024)
    try:
        yield t
    finally:
        t.close()


def backend() -> Any:
    return spdk_ffi.native_backend(core_mask="0x2", mem_size_mb=1024, no_huge=True)


def buffers(count: int, size: int) -> list[Any]:
    from spdk_ffi.native import DmaBuffer

    return [DmaBuffer(size) for _ in range(count)]


@dataclass
class Env:
    """An initiator with this test's controllers; everything is detached
    (and every listener restored) at the end."""

    target: Target
    ini: Initiator
    mirrors: list[Any] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    bufs: list[Any] = field(default_factory=list)

    async def attach(self, name: str, replica: str, *, ports: list[int] | None = None, **opts: Any) -> Any:
        paths = [path(nqn(replica), p) for p in (ports or [PORT[replica]])]
        await self.ini.attach(name, paths, HOST_NQN, ControllerOpts(**opts), owner="test")
        return self.ini.handle(name)

    async def mirror(self, name: str, legs: list[tuple[str, str]], blocks: int = BLOCKS, **opts: Any) -> Any:
        from spdk_ffi.mirror import NativeMirror

        handles = [(leg, await self.attach(leg, replica, **opts)) for leg, replica in legs]
        m = await NativeMirror.create(self.ini._backend, name, handles, blocks)  # type: ignore[arg-type]
        self.mirrors.append(m)
        return m

    def cut(self, replica: str, port: int | None = None) -> None:
        port = port or PORT[replica]
        self.target.remove_listener(nqn(replica), port)
        self.removed.append((replica, port))

    def restore(self) -> None:
        for replica, port in self.removed:
            self.target.add_listener(nqn(replica), port)
        self.removed.clear()

    def buf(self, size: int) -> Any:
        (b,) = buffers(1, size)
        self.bufs.append(b)
        return b

    async def read_replica(self, replica: str, blocks: int = BLOCKS) -> bytes:
        """The whole namespace of ``replica``, read directly (another host NQN)."""
        from spdk_ffi.native import Io, IoKind

        name = f"check-{replica}"
        await self.ini.attach(name, [path(nqn(replica), PORT[replica])], CHECK_NQN)
        chunk = 256
        bufs = buffers(8, chunk * BLOCK)
        out = bytearray()
        try:
            for base in range(0, blocks, chunk * len(bufs)):
                batch = []
                for i, b in enumerate(bufs):
                    lba = base + i * chunk
                    if lba < blocks:
                        batch.append(Io(IoKind.READ, 1, lba=lba, nblocks=min(chunk, blocks - lba), buf=b))
                await self.ini.io(name, batch)
                for io in batch:
                    out += bytes(io.buf.view[: io.nblocks * BLOCK])
        finally:
            await self.ini.detach(name)
            for b in bufs:
                b.free()
        return bytes(out)

    async def close(self) -> None:
        self.restore()
        for m in self.mirrors:
            await m.destroy()
        for info in self.ini.controllers():
            await self.ini.detach(info.name)
        for b in self.bufs:
            b.free()


@pytest_asyncio.fixture
async def env(replicas: Target) -> AsyncIterator[Env]:
    e = Env(replicas, Initiator(backend()))
    try:
        yield e
    finally:
        await e.close()


class Writer:
    """Writes random patterns at random places through a mirror and keeps a
    shadow copy; ``verify`` reads back and compares."""

    def __init__(self, env: Env, mirror: Any, seed: int, blocks: int = BLOCKS, depth: int = 8) -> None:
        self.mirror = mirror
        self.rng = random.Random(seed)
        self.blocks = blocks
        self.shadow = bytearray(blocks * BLOCK)
        self.bufs = [env.buf(16 * BLOCK) for _ in range(depth)]
        self.ios = 0
        self.errors: list[BaseException] = []
        self.stop = asyncio.Event()

    def _batch(self, write: bool) -> tuple[list[Any], list[tuple[Any, int, int]]]:
        from spdk_ffi.native import Io, IoKind

        batch: list[Any] = []
        spans: list[tuple[Any, int, int]] = []
        used: set[int] = set()
        for b in self.bufs:
            n = self.rng.randint(1, 16)
            lba = self.rng.randrange(0, self.blocks - n)
            if used & set(range(lba, lba + n)):
                continue
            used |= set(range(lba, lba + n))
            size = n * BLOCK
            if write:
                data = self.rng.randbytes(size)
                b.view[:size] = data
                self.shadow[lba * BLOCK : lba * BLOCK + size] = data
                batch.append(Io(IoKind.WRITE, 0, lba=lba, nblocks=n, buf=b))
            else:
                batch.append(Io(IoKind.READ, 0, lba=lba, nblocks=n, buf=b))
            spans.append((batch[-1], lba, size))
        return batch, spans

    async def zero(self) -> None:
        """Start from zeroes on every leg (replicas keep earlier tests' data)."""
        from spdk_ffi.native import Io, IoKind

        step = 2048
        await self.mirror.io(
            [
                Io(IoKind.WRITE_ZEROES, 0, lba=lba, nblocks=min(step, self.blocks - lba))
                for lba in range(0, self.blocks, step)
            ]
        )

    async def step(self) -> None:
        batch, _ = self._batch(write=True)
        await self.mirror.io(batch)
        self.ios += len(batch)
        batch, spans = self._batch(write=False)
        await self.mirror.io(batch)
        self.ios += len(batch)
        for io, lba, size in spans:
            assert bytes(io.buf.view[:size]) == bytes(self.shadow[lba * BLOCK : lba * BLOCK + size]), (
                f"read back at lba {lba} differs"
            )

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                await self.step()
        except BaseException as exc:
            self.errors.append(exc)
            raise

    async def verify(self) -> None:
        from spdk_ffi.native import Io, IoKind

        (b,) = [self.bufs[0]]
        for lba in range(0, self.blocks, 16):
            await self.mirror.io([Io(IoKind.READ, 0, lba=lba, nblocks=16, buf=b)])
            assert bytes(b.view[: 16 * BLOCK]) == bytes(self.shadow[lba * BLOCK : (lba + 16) * BLOCK])


# -- data ------------------------------------------------------------------------------


async def test_writes_reach_every_leg_byte_for_byte(env: Env) -> None:
    m = await env.mirror("m-data", [("a", "r1"), ("b", "r2")])
    assert (m.block_size, m.num_blocks) == (BLOCK, BLOCKS)
    w = Writer(env, m, seed=1)
    await w.zero()
    for _ in range(40):
        await w.step()
    # write zeroes and flush go to every leg as well
    from spdk_ffi.native import Io, IoKind

    await m.io([Io(IoKind.WRITE_ZEROES, 0, lba=100, nblocks=64), Io(IoKind.FLUSH, 0)])
    w.shadow[100 * BLOCK : 164 * BLOCK] = bytes(64 * BLOCK)
    await w.verify()
    for replica in ("r1", "r2"):
        assert await env.read_replica(replica) == bytes(w.shadow), f"replica {replica} differs"
    legs = {leg.name: leg for leg in m.legs()}
    assert all(leg.mode == "RW" and leg.errors == 0 for leg in legs.values())
    assert legs["a"].writes == legs["b"].writes > 0
    assert legs["a"].reads > 0 and legs["b"].reads > 0  # reads are spread
    counters = m.counters()
    assert counters["errors"] == 0 and counters["writes"] > 0 and counters["bytes_written"] > 0
    assert sum(v for k, v in counters.items() if k.startswith("latency_lt_")) == (
        counters["reads"] + counters["writes"] + counters["other_ops"]
    )


async def test_out_of_range_io_is_refused_without_touching_legs(env: Env) -> None:
    from spdk_ffi.native import Io, IoError, IoKind

    m = await env.mirror("m-range", [("a", "r1"), ("b", "r2")], blocks=1024)
    b = env.buf(BLOCK)
    with pytest.raises(IoError) as exc:
        await m.io([Io(IoKind.READ, 0, lba=1024, nblocks=1, buf=b)])
    assert (exc.value.sct, exc.value.sc) == (0, 0x80)
    assert all(leg.mode == "RW" and leg.errors == 0 for leg in m.legs())


# -- failures --------------------------------------------------------------------------


async def test_leg_failing_under_load_goes_err_without_host_errors(env: Env) -> None:
    m = await env.mirror("m-fail", [("a", "r1"), ("b", "r2")])
    failed: list[tuple[str, str]] = []
    m.on_leg_failed = lambda leg, reason: failed.append((leg, reason))
    w = Writer(env, m, seed=2)
    await w.zero()
    runner = asyncio.ensure_future(w.run())
    try:
        await asyncio.sleep(0.5)
        before = w.ios
        env.cut("r2")  # replica b's only path goes away while writes run
        async with asyncio.timeout(20):
            while not failed:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert w.ios > before
    finally:
        w.stop.set()
        await asyncio.wait_for(runner, 30)  # raises if any host I/O failed
    await w.verify()
    legs = {leg.name: leg for leg in m.legs()}
    assert legs["b"].mode == "ERR" and legs["b"].error and legs["a"].mode == "RW"
    assert [leg for leg, _ in failed] == ["b"], failed  # called once
    assert m.counters()["errors"] == 0
    env.restore()
    assert await env.read_replica("r1") == bytes(w.shadow)


async def test_multipath_leg_keeps_working_when_one_path_goes(env: Env) -> None:
    opts: dict[str, Any] = {"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 20}
    from spdk_ffi.mirror import NativeMirror

    a = await env.attach("a", "r1", ports=[4431, 4432], **opts)
    b = await env.attach("b", "r2", **opts)
    m = await NativeMirror.create(env.ini._backend, "m-mp", [("a", a), ("b", b)], BLOCKS)  # type: ignore[arg-type]
    env.mirrors.append(m)
    failed: list[str] = []
    m.on_leg_failed = lambda leg, reason: failed.append(leg)
    w = Writer(env, m, seed=3)
    await w.zero()
    runner = asyncio.ensure_future(w.run())
    try:
        await asyncio.sleep(0.5)
        before = w.ios
        env.cut("r1", 4431)  # the active path of leg a
        await asyncio.sleep(2.0)
        assert w.ios > before
    finally:
        w.stop.set()
        await asyncio.wait_for(runner, 30)
    await w.verify()
    assert failed == []
    assert all(leg.mode == "RW" and leg.errors == 0 for leg in m.legs())
    paths = {p.path.trsvcid: p.connected for p in env.ini.controllers()[0].paths}
    assert paths == {"4431": False, "4432": True}
    env.restore()
    assert await env.read_replica("r1") == bytes(w.shadow)
    assert await env.read_replica("r2") == bytes(w.shadow)


async def test_io_waits_for_a_path_until_fast_io_fail_then_the_leg_fails(env: Env) -> None:
    from spdk_ffi.native import Io, IoKind

    opts: dict[str, Any] = {"ctrlr_loss_timeout_sec": 10, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 2}
    m = await env.mirror("m-ff", [("a", "r1"), ("b", "r2")], **opts)
    failed: list[str] = []
    m.on_leg_failed = lambda leg, reason: failed.append(reason)
    b = env.buf(BLOCK)
    env.cut("r2")
    await asyncio.sleep(0.3)  # the qpair notices
    t0 = time.monotonic()
    await m.io([Io(IoKind.WRITE, 0, lba=7, nblocks=1, buf=b)])  # no error: leg a took it
    waited = time.monotonic() - t0
    assert len(failed) == 1 and "ETIMEDOUT" in failed[0], failed
    print(f"write waited {waited:.2f}s for leg b's path before it failed (fast_io_fail_timeout_sec=2)")
    assert {leg.name: leg.mode for leg in m.legs()} == {"a": "RW", "b": "ERR"}


# -- frontend ---------------------------------------------------------------------------

EXPORT_PORT = 4440
HOST2_NQN = "nqn.2014-08.org.nvmexpress:uuid:imd-tests-host2"
NGUID = "6b1d3a6e0c2f4e7e9a51c0de00000001"


def export_trid(subnqn: str, port: int = EXPORT_PORT) -> str:
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{subnqn}"


async def run_host_helper(spec: dict[str, Any]) -> dict[str, Any]:
    """tests/spdk/host_helper.py in its own process (its own SPDK, core 0)."""
    import json
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.spdk.host_helper",
        json.dumps(spec),
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"host helper failed ({proc.returncode}):\n{err.decode()[-3000:]}"
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def test_export_serves_another_process_and_the_data_lands_on_every_replica(env: Env) -> None:
    from tests.spdk.host_helper import pattern

    m = await env.mirror("m-exp", [("a", "r1"), ("b", "r2")])
    await Writer(env, m, seed=4).zero()
    subnqn = nqn("vol-exp")
    info = await m.export(subnqn, "127.0.0.1", EXPORT_PORT, NGUID)
    assert (info.nqn, info.port, info.nguid) == (subnqn, EXPORT_PORT, NGUID)
    lbas = [i * 97 % (BLOCKS - 16) for i in range(24)]
    lbas = sorted(set(lba - lba % 16 for lba in lbas))
    t0 = time.monotonic()
    report = await run_host_helper(
        {"path": path(subnqn, EXPORT_PORT), "hostnqn": HOST2_NQN, "seed": 4, "lbas": lbas, "nblocks": 16}
    )
    print(f"separate host: {len(lbas)} x 64 KiB written and read back in {time.monotonic() - t0:.2f}s")
    assert report == {"size_bytes": BLOCKS * BLOCK, "block_size": BLOCK, "written": len(lbas), "mismatches": 0}
    expected = bytearray(BLOCKS * BLOCK)
    for lba in lbas:
        expected[lba * BLOCK : (lba + 16) * BLOCK] = pattern(4, lba, 16)
    for replica in ("r1", "r2"):
        assert await env.read_replica(replica) == bytes(expected), f"replica {replica} differs"
    assert all(leg.errors == 0 for leg in m.legs())


async def test_spdk_nvme_perf_against_the_export(env: Env) -> None:
    import re

    from tests.spdk.target import spdk_env, spdk_prefix

    prefix = spdk_prefix()
    assert prefix is not None
    perf = prefix / "bin" / "spdk_nvme_perf"
    if not perf.exists():
        pytest.skip(f"no spdk_nvme_perf under {prefix}/bin")
    m = await env.mirror("m-perf", [("a", "r1"), ("b", "r2")])
    subnqn = nqn("vol-perf")
    await m.export(subnqn, "127.0.0.1", EXPORT_PORT, NGUID)
    proc = await asyncio.create_subprocess_exec(
        str(perf), "-c", "0x1", "--no-huge", "-s", "512", "-q", "8", "-o", "4096", "-w", "randrw", "-M", "50",
        "-t", "2", "-r", export_trid(subnqn),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=spdk_env(prefix),
    )  # fmt: skip
    out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
    assert proc.returncode == 0, out[-3000:]
    total = re.search(r"^Total\s*:\s*([\d.]+)", out, re.M)
    assert total is not None and float(total.group(1)) > 0, out[-3000:]
    print(f"spdk_nvme_perf 4k randrw qd8 through the export: {float(total.group(1)):.0f} IOPS (3 pollers, 2 cores)")
    counters = m.counters()
    assert counters["errors"] == 0 and counters["reads"] > 0 and counters["writes"] > 0
    assert all(leg.errors == 0 and leg.mode == "RW" for leg in m.legs())


async def test_unexport_fails_the_host_and_the_port_can_be_exported_again(env: Env) -> None:
    from spdk_ffi.native import Io, IoKind

    m = await env.mirror("m-unexp", [("a", "r1"), ("b", "r2")])
    subnqn = nqn("vol-unexp")
    await m.export(subnqn, "127.0.0.1", EXPORT_PORT, NGUID)
    # A host in this very process: the initiator and the target share the poller.
    await env.ini.attach("host", [path(subnqn, EXPORT_PORT)], HOST2_NQN)
    b = env.buf(BLOCK)
    b.view[:] = os.urandom(BLOCK)
    await env.ini.io("host", [Io(IoKind.WRITE, 1, lba=3, nblocks=1, buf=b)])
    await m.unexport()
    assert m.exported is None
    async with asyncio.timeout(15):
        while not next(c for c in env.ini.controllers() if c.name == "host").failed:
            await asyncio.sleep(0.1)
    await env.ini.detach("host")
    # The port is free again: a second export on it works.
    await m.export(subnqn, "127.0.0.1", EXPORT_PORT, NGUID)
    result = await env.ini.attach("host", [path(subnqn, EXPORT_PORT)], HOST2_NQN)
    assert result.info.namespaces[0].size_bytes == BLOCKS * BLOCK
    back = env.buf(BLOCK)
    await env.ini.io("host", [Io(IoKind.READ, 1, lba=3, nblocks=1, buf=back)])
    assert bytes(back.view) == bytes(b.view)
    await env.ini.detach("host")
    await m.unexport()
    await m.unexport()  # idempotent
