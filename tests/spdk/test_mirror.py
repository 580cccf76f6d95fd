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
from spdk_ffi.errors import NvmeError
from tests.helpers import eventually
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

    @property
    def backend(self) -> Any:  # the NativeBackend
        return self.ini._backend

    async def attach(self, name: str, replica: str, *, ports: list[int] | None = None, **opts: Any) -> Any:
        paths = [path(nqn(replica), p) for p in (ports or [PORT[replica]])]
        await self.ini.attach(name, paths, HOST_NQN, ControllerOpts(**opts), owner="test")
        return self.ini.handle(name)

    async def mirror(self, name: str, legs: list[tuple[str, str]], blocks: int = BLOCKS, **opts: Any) -> Any:
        from spdk_ffi.mirror import NativeMirror

        handles = [(leg, await self.attach(leg, replica, **opts)) for leg, replica in legs]
        m = await NativeMirror.create(self.backend, name, handles, blocks)
        self.mirrors.append(m)
        return m

    def cut(self, replica: str, port: int | None = None) -> None:
        port = port or PORT[replica]
        self.target.remove_listener(nqn(replica), port)
        self.removed.append((replica, port))

    async def restore(self) -> None:
        """Add the cut listeners back, once the target has closed the
        qpairs they had: it tears those down after its RPC answered, and a
        listener added back on the port before that is lost with them."""
        for replica, port in self.removed:

            def closed(replica: str = replica, port: int = port) -> bool:
                qpairs = self.target.rpc.call("nvmf_subsystem_get_qpairs", nqn=nqn(replica))
                return all(q["listen_address"]["trsvcid"] != str(port) for q in qpairs)

            await eventually(closed, f"the target closed the qpairs of {replica}'s port {port}")
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
        await self.restore()
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
        await eventually(lambda: w.ios > 0, "host I/O running")
        env.cut("r2")  # replica b's only path goes away while writes run
        await eventually(lambda: bool(failed), "leg b failed")
        after_failure = w.ios
        await eventually(lambda: w.ios > after_failure + 64, "host I/O going on after leg b failed")
    finally:
        w.stop.set()
        await asyncio.wait_for(runner, 30)  # raises if any host I/O failed
    await w.verify()
    legs = {leg.name: leg for leg in m.legs()}
    assert legs["b"].mode == "ERR" and legs["b"].error and legs["a"].mode == "RW"
    assert [leg for leg, _ in failed] == ["b"], failed  # called once
    assert m.counters()["errors"] == 0
    await env.restore()
    assert await env.read_replica("r1") == bytes(w.shadow)


async def test_multipath_leg_keeps_working_when_one_path_goes(env: Env) -> None:
    opts: dict[str, Any] = {"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 20}
    from spdk_ffi.mirror import NativeMirror

    a = await env.attach("a", "r1", ports=[4431, 4432], **opts)
    b = await env.attach("b", "r2", **opts)
    m = await NativeMirror.create(env.backend, "m-mp", [("a", a), ("b", b)], BLOCKS)
    env.mirrors.append(m)
    failed: list[str] = []
    m.on_leg_failed = lambda leg, reason: failed.append(leg)
    w = Writer(env, m, seed=3)
    await w.zero()
    runner = asyncio.ensure_future(w.run())

    def path_4431_down() -> bool:
        return not {p.path.trsvcid: p.connected for p in env.ini.controllers()[0].paths}["4431"]

    try:
        await eventually(lambda: w.ios > 0, "host I/O running")
        env.cut("r1", 4431)  # the active path of leg a
        await eventually(path_4431_down, "leg a's path 4431 seen down")
        after_loss = w.ios
        await eventually(lambda: w.ios > after_loss + 64, "host I/O going on over path 4432")
    finally:
        w.stop.set()
        await asyncio.wait_for(runner, 30)
    await w.verify()
    assert failed == []
    assert all(leg.mode == "RW" and leg.errors == 0 for leg in m.legs())
    paths = {p.path.trsvcid: p.connected for p in env.ini.controllers()[0].paths}
    assert paths == {"4431": False, "4432": True}

    await env.restore()
    await eventually(lambda: not path_4431_down(), "leg a's path 4431 back")  # the listener serves again
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

    def b_disconnected() -> bool:
        (leg_b,) = [c for c in env.ini.controllers() if c.name == "b"]
        return not any(p.connected for p in leg_b.paths)

    await eventually(b_disconnected, "leg b's path seen down")  # the qpair noticed the cut
    # The write finds no path for leg b, waits fast_io_fail_timeout_sec for
    # one, and only then fails the leg; the host's write completes through
    # leg a without an error.
    await m.io([Io(IoKind.WRITE, 0, lba=7, nblocks=1, buf=b)])  # no error: leg a took it
    assert len(failed) == 1 and "ETIMEDOUT" in failed[0], failed
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
    report = await run_host_helper(
        {"path": path(subnqn, EXPORT_PORT), "hostnqn": HOST2_NQN, "seed": 4, "lbas": lbas, "nblocks": 16}
    )
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
    # A host in this very process: the initiator and the target share the
    # poller (fine while the namespace does not change, see the resize test).
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


# -- rebuild -----------------------------------------------------------------------------


async def wait_done(rebuild: Any, timeout: float = 60) -> Any:
    return await asyncio.wait_for(asyncio.shield(rebuild.done), timeout)


async def test_rebuild_under_host_writes_leaves_every_leg_identical(env: Env) -> None:
    from spdk_ffi.mirror import LegMode, RebuildState

    m = await env.mirror("m-rb", [("a", "r1"), ("b", "r2")])
    w = Writer(env, m, seed=5)
    await w.zero()
    for _ in range(10):
        await w.step()
    runner = asyncio.ensure_future(w.run())
    try:
        c = await env.attach("c", "r3")  # holds an earlier test's data: everything must be copied
        await m.add_leg("c", c)
        assert {leg.name: leg.mode for leg in m.legs()}["c"] == LegMode.WO
        rebuild = m.start_rebuild("c", chunk_bytes=256 << 10)
        status = await wait_done(rebuild)
        ios_during = w.ios
    finally:
        w.stop.set()
        await asyncio.wait_for(runner, 30)
    assert status.state == RebuildState.COMPLETE, status
    assert status.bytes_done == status.bytes_total == BLOCKS * BLOCK and status.dst == "c" and status.error == ""
    counters = m.counters()
    print(
        f"rebuild of {BLOCKS * BLOCK >> 20} MiB under writes: {ios_during} host I/Os meanwhile, "
        f"{counters['held_writes']} writes held by the range lock, {counters['rebuild_chunks_zero']} zero chunks"
    )
    assert {leg.name: leg.mode for leg in m.legs()}["c"] == LegMode.WO  # the caller flips it
    await m.set_mode("c", LegMode.RW)
    await w.verify()
    expected = bytes(w.shadow)
    for replica in ("r1", "r2", "r3"):
        assert await env.read_replica(replica) == expected, f"replica {replica} differs"
    assert all(leg.errors == 0 for leg in m.legs())


async def test_rebuild_cancel_stops_within_a_chunk_and_releases_writes(env: Env) -> None:
    from spdk_ffi.mirror import LegMode, RebuildState

    m = await env.mirror("m-cancel", [("a", "r1"), ("b", "r2")])
    w = Writer(env, m, seed=6)
    await w.zero()
    await m.add_leg("c", await env.attach("c", "r3"))
    runner = asyncio.ensure_future(w.run())
    chunk, rate = 1 << 20, 256 << 10  # the bucket holds one chunk: the first goes at once, then one per 4 s
    try:
        rebuild = m.start_rebuild("c", chunk_bytes=chunk, rate_bytes_per_s=rate)
        await eventually(lambda: rebuild.status().bytes_done >= chunk, "the first chunk copied")
        # Read just before the cancel; the one bound on what may still be
        # copied after this read needs the clock (at most one chunk in flight,
        # plus what the rate allows meanwhile). It is one-sided: a loaded
        # machine only copies less, so it cannot fail for being slow.
        read_at = time.monotonic()
        before_cancel = rebuild.status()
        assert before_cancel.state == RebuildState.IN_PROGRESS
        await rebuild.cancel()
        allowed = chunk + rate * (time.monotonic() - read_at)
        status = await wait_done(rebuild, 5)
        assert status.bytes_done - before_cancel.bytes_done <= allowed, (status, before_cancel)
        before = w.ios
        await eventually(lambda: w.ios > before + 64, "host writes going on: nothing stays held")
    finally:
        w.stop.set()
        await asyncio.wait_for(runner, 30)
    assert status.state == RebuildState.CANCELLED and 0 < status.bytes_done < BLOCKS * BLOCK
    assert {leg.name: leg.mode for leg in m.legs()}["c"] == LegMode.WO
    # A new rebuild may start after a cancel, and completes.
    again = await wait_done(m.start_rebuild("c", chunk_bytes=1 << 20))
    assert again.state == RebuildState.COMPLETE
    await w.verify()


async def test_rebuild_throttle(env: Env) -> None:
    from spdk_ffi.mirror import RebuildState

    m = await env.mirror("m-throttle", [("a", "r1")])
    await m.add_leg("c", await env.attach("c", "r3"))
    rate, chunk = 4 << 20, 256 << 10
    # A cap is bytes per second, so its bound needs the clock (it cannot be
    # an event). The bound is one-sided: the bucket starts with one chunk
    # and refills at the rate, so at any moment the copy has done at most
    # chunk + rate * (time since the start); a loaded machine only copies
    # less. An uncapped copy passes 1 MiB in milliseconds and fails it.
    started_at = time.monotonic()
    rebuild = m.start_rebuild("c", chunk_bytes=chunk, rate_bytes_per_s=rate)
    seen: list[tuple[int, float]] = []

    def copied_a_mib() -> bool:
        done = rebuild.status().bytes_done
        seen.append((done, time.monotonic() - started_at))
        return done >= 1 << 20

    await eventually(copied_a_mib, "1 MiB copied", interval=0.02)
    for done, elapsed in seen:
        assert done <= chunk + rate * elapsed, (done, elapsed)
    assert rebuild.status().state == RebuildState.IN_PROGRESS and seen[-1][0] < BLOCKS * BLOCK
    await rebuild.cancel()
    assert (await wait_done(rebuild)).state == RebuildState.CANCELLED


async def test_rebuild_source_failing_mid_copy_switches_to_another_source(env: Env) -> None:
    from spdk_ffi.mirror import LegMode, RebuildState

    m = await env.mirror("m-srcfail", [("a", "r1"), ("b", "r2")])
    w = Writer(env, m, seed=7)
    await w.zero()
    for _ in range(20):
        await w.step()
    failed: list[str] = []
    m.on_leg_failed = lambda leg, reason: failed.append(leg)
    await m.add_leg("c", await env.attach("c", "r3"))
    rebuild = m.start_rebuild("c", src="a", chunk_bytes=512 << 10, rate_bytes_per_s=32 << 20)
    await eventually(lambda: rebuild.status().bytes_done > 0, "copying from a")
    assert rebuild.status().src == "a"
    env.cut("r1")
    status = await wait_done(rebuild)
    assert status.state == RebuildState.COMPLETE, status
    assert status.src == "b" and failed == ["a"]
    modes = {leg.name: leg.mode for leg in m.legs()}
    assert modes == {"a": LegMode.ERR, "b": LegMode.RW, "c": LegMode.WO}
    await m.set_mode("c", LegMode.RW)
    await m.remove_leg("a")
    await w.verify()
    for replica in ("r2", "r3"):
        assert await env.read_replica(replica) == bytes(w.shadow), f"replica {replica} differs"


async def test_rebuild_without_a_source_left_fails_visibly(env: Env) -> None:
    from spdk_ffi.mirror import RebuildState

    m = await env.mirror("m-nosrc", [("a", "r1")])
    await m.add_leg("c", await env.attach("c", "r3"))
    rebuild = m.start_rebuild("c", chunk_bytes=512 << 10, rate_bytes_per_s=16 << 20)
    await eventually(lambda: rebuild.status().bytes_done > 0, "copying from r1")
    env.cut("r1")
    status = await wait_done(rebuild)
    assert status.state == RebuildState.ERROR and "source" in status.error, status


async def test_remove_leg_preempts_its_rebuild(env: Env) -> None:
    from spdk_ffi.mirror import RebuildState

    m = await env.mirror("m-rmleg", [("a", "r1")])
    await m.add_leg("c", await env.attach("c", "r3"))
    rebuild = m.start_rebuild("c", chunk_bytes=1 << 20, rate_bytes_per_s=4 << 20)
    await eventually(lambda: rebuild.status().bytes_done > 0, "copying onto c")
    await m.remove_leg("c")
    assert (await wait_done(rebuild, 5)).state == RebuildState.CANCELLED
    assert [leg.name for leg in m.legs()] == ["a"]


async def test_rebuild_refuses_bad_requests(env: Env) -> None:
    from spdk_ffi.errors import InvalidOptions

    m = await env.mirror("m-bad", [("a", "r1"), ("b", "r2")])
    with pytest.raises(NvmeError, match="must be WO"):
        await m.start_rebuild("b").done
    with pytest.raises(InvalidOptions, match="no leg"):
        m.start_rebuild("zz")
    await m.add_leg("c", await env.attach("c", "r3"))
    rebuild = m.start_rebuild("c", rate_bytes_per_s=1 << 20)
    with pytest.raises(NvmeError, match="in progress"):
        m.start_rebuild("c")
    with pytest.raises(NvmeError, match="destination of a rebuild"):
        await m.set_mode("c", "RW")
    await m.destroy()  # cancels the rebuild
    assert (await wait_done(rebuild, 5)).state == "cancelled"
    env.mirrors.remove(m)


# -- resize -------------------------------------------------------------------------------


async def test_resize_grows_the_mirror_and_the_export(env: Env) -> None:
    import json
    import sys

    from spdk_ffi.native import Io, IoKind

    m = await env.mirror("m-grow", [("a", "lv1"), ("b", "lv2")])
    subnqn = nqn("vol-grow")
    port = EXPORT_PORT + 1
    await m.export(subnqn, "127.0.0.1", port, NGUID)
    with pytest.raises(NvmeError, match="only grows"):
        await m.resize(BLOCKS - 1)
    with pytest.raises(NvmeError, match="fewer than"):
        await m.resize(2 * BLOCKS, wait_s=0.2)  # the replicas are still small
    # A host stays connected in another process. (Not in this one: the
    # driver handles the namespace-changed notice with blocking waits, and
    # the target answering them would be this very poller.)
    spec = {"path": path(subnqn, port), "hostnqn": HOST2_NQN, "watch_blocks": 2 * BLOCKS}
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.spdk.host_helper", json.dumps(spec),
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watcher.stdout is not None
    line = await asyncio.wait_for(watcher.stdout.readline(), 60)
    assert line.strip() == b"attached"
    env.target.resize_lvol("lv1", 2 * BLOCKS)
    env.target.resize_lvol("lv2", 2 * BLOCKS)
    await m.resize(2 * BLOCKS)
    assert m.num_blocks == 2 * BLOCKS
    out, err = await asyncio.wait_for(watcher.communicate(), 60)
    assert watcher.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report == {"size_bytes": BLOCKS * BLOCK, "grown_to_blocks": 2 * BLOCKS}, report  # the notice arrived
    b = env.buf(BLOCK)
    b.view[:] = os.urandom(BLOCK)
    await m.io([Io(IoKind.WRITE, 0, lba=2 * BLOCKS - 1, nblocks=1, buf=b)])
    # A host that connects now sees the new size and the new blocks.
    result = await env.ini.attach("host", [path(subnqn, port)], HOST2_NQN)
    assert result.info.namespaces[0].size_bytes == 2 * BLOCKS * BLOCK
    back = env.buf(BLOCK)
    await env.ini.io("host", [Io(IoKind.READ, 1, lba=2 * BLOCKS - 1, nblocks=1, buf=back)])
    assert bytes(back.view) == bytes(b.view)
    await env.ini.detach("host")


# -- the poller's idle policy and the C tier --------------------------------------------------


PPOLL_X86_64 = 271  # the syscall the poller naps in (poller.c: nap)


def poller_nap_us() -> int | None:
    """The timeout of the ppoll() this process's poller thread is blocked
    in right now, in microseconds; None while it runs. Read from the
    thread's /proc syscall entry (number and arguments) and the timespec it
    points to, on the poller's stack in this very process; the entry is read
    again after, so a nap that ended meanwhile is not taken for one."""
    import ctypes
    import struct

    for task in Path("/proc/self/task").iterdir():
        if (task / "comm").read_text().strip() == "imdn-poller":
            call = (task / "syscall").read_text().split()
            if call[0] != str(PPOLL_X86_64):
                return None
            sec, nsec = struct.unpack("qq", ctypes.string_at(int(call[3], 16), 16))
            if (task / "syscall").read_text().split() != call:
                return None
            return int(sec * 1_000_000 + nsec // 1000)
    raise AssertionError("no imdn-poller thread")


async def test_poller_sleeps_when_idle_with_and_without_an_export(env: Env) -> None:
    """README: idle, the poller sleeps on its eventfd, 10 ms at a time with
    nothing exported and 1 ms with an export (never past the next timed
    poller). Checked as what the poller does, not as rates over a window: it
    is seen blocked in ppoll() with such a timeout, and its sleep counter
    moves while nothing else happens."""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("reads the poller's ppoll() arguments by x86_64 syscall number")
    core = env.backend.core

    async def naps(count: int) -> list[int]:
        seen: list[int] = []
        sleeps = core.poller_stats()["sleeps"]

        def napping() -> bool:
            nap = poller_nap_us()
            if nap is not None:
                seen.append(nap)
            return len(seen) >= count and core.poller_stats()["sleeps"] >= sleeps + count

        await eventually(napping, f"the poller seen napping {count} times", interval=0.01)
        return seen

    idle = await naps(5)
    assert all(0 < nap <= 10_000 for nap in idle), idle
    # Up to 10 ms, or to the next timed poller (a periodic one of the
    # controllers earlier tests attached may be due first): longer than the
    # exported cap, anyway.
    assert max(idle) > 1_000, idle
    m = await env.mirror("m-idle", [("a", "r1")])
    await m.export(nqn("vol-idle"), "127.0.0.1", EXPORT_PORT, NGUID)
    exported = await naps(5)
    assert all(0 < nap <= 1_000 for nap in exported), exported  # a host's first I/O waits at most 1 ms


async def test_c_tier_bench_through_the_mirror(env: Env) -> None:
    m = await env.mirror("m-bench", [("a", "r1"), ("b", "r2")])
    for write in (False, True):
        result = await m.bench(qd=8, write=write, duration_s=0.3, warmup_s=0.1)
        assert result.iops > 0 and result.seconds >= 0.3
        assert sum(n for _, n in result.histogram_100ns) == round(result.iops * result.seconds)
    legs = {leg.name: leg for leg in m.legs()}
    assert legs["a"].writes == legs["b"].writes > 0 and legs["a"].reads > 0 and legs["b"].reads > 0


async def test_native_follows_the_orchestration_scenario(env: Env) -> None:
    from spdk_ffi.mirror import NativeMirrorFactory
    from tests.spdk.test_mirror_protocol import orchestration_scenario

    controllers = {leg: await env.attach(leg, replica) for leg, replica in (("r1", "r1"), ("r2", "r2"), ("r3", "r3"))}
    await orchestration_scenario(NativeMirrorFactory(env.backend), controllers, EXPORT_PORT)


async def test_cancelled_callers_leave_the_mirror_consistent(env: Env) -> None:
    from spdk_ffi.mirror import LegMode

    m = await env.mirror("m-cancelled", [("a", "r1")])
    c = await env.attach("c", "r3")
    task = asyncio.ensure_future(m.add_leg("c", c))
    await asyncio.sleep(0)  # submitted
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        while "c" not in [leg.name for leg in m.legs()]:
            await asyncio.sleep(0.01)  # recorded once the core added it
    assert {leg.name: leg.mode for leg in m.legs()} == {"a": LegMode.RW, "c": LegMode.WO}
    task = asyncio.ensure_future(m.export(nqn("vol-cx"), "127.0.0.1", EXPORT_PORT, NGUID))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The export that nobody asked for any more is taken down again; the
    # port is free for the next one.
    async with asyncio.timeout(5):
        while True:
            try:
                await m.export(nqn("vol-cx"), "127.0.0.1", EXPORT_PORT, NGUID)
                break
            except NvmeError:
                await asyncio.sleep(0.05)
    await m.unexport()


# -- other hosts, where this machine has them ---------------------------------------------


def fio_skip_reason(prefix: Path) -> str | None:
    import shutil

    plugin = prefix / "fio" / "spdk_nvme"
    if not plugin.exists():
        return f"SPDK's fio plugin is not built ({plugin} missing; configure SPDK --with-fio)"
    if (os.environ.get("FIO") or shutil.which("fio")) is None:
        return "no fio binary (put fio on PATH or set FIO)"
    meminfo = Path("/proc/meminfo").read_text()
    free = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("HugePages_Free:")), 0)
    if free < 256:
        return "fewer than 256 free hugepages (SPDK's fio plugin has no no-huge mode)"
    return None


async def test_fio_with_spdks_plugin_writes_and_verifies_through_the_export(env: Env) -> None:
    import json
    import shutil

    from tests.spdk.target import spdk_env, spdk_prefix

    prefix = spdk_prefix()
    assert prefix is not None
    reason = fio_skip_reason(prefix)
    if reason is not None:
        pytest.skip(reason)
    fio = os.environ.get("FIO") or shutil.which("fio")
    assert fio is not None
    m = await env.mirror("m-fio", [("a", "r1"), ("b", "r2")])
    subnqn = nqn("vol-fio")
    await m.export(subnqn, "127.0.0.1", EXPORT_PORT, NGUID)
    escaped = subnqn.replace(":", "\\:")  # fio splits file names on ':'
    filename = f"trtype=TCP adrfam=IPv4 traddr=127.0.0.1 trsvcid={EXPORT_PORT} subnqn={escaped} ns=1"
    proc = await asyncio.create_subprocess_exec(
        fio, "--output-format=json", "--name=verify", "--ioengine=spdk", "--thread=1", "--direct=1",
        "--rw=randwrite", "--bs=4k", "--size=4m", "--iodepth=8", "--verify=crc32c", "--do_verify=1",
        "--verify_fatal=1", "--verify_state_save=0", "--cpus_allowed=0", f"--filename={filename}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**spdk_env(prefix), "LD_PRELOAD": str(prefix / "fio" / "spdk_nvme")},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-3000:]
    job = json.loads(out.decode()[out.decode().index("{") :])["jobs"][0]
    assert job["error"] == 0 and job["write"]["io_bytes"] == 4 << 20 and job["read"]["io_bytes"] == 4 << 20
    assert all(leg.errors == 0 and leg.mode == "RW" for leg in m.legs())
    a, b = await env.read_replica("r1"), await env.read_replica("r2")
    assert a == b  # what fio wrote and verified is on both replicas


def kernel_skip_reason() -> str | None:
    import shutil

    if shutil.which("nvme") is None:
        return "no nvme CLI (nvme-cli) for the kernel host"
    if not Path("/sys/module/nvme_tcp").exists():
        return "the kernel's nvme-tcp module is not loaded"
    return None


async def test_kernel_nvme_tcp_host_reads_what_it_wrote(env: Env) -> None:
    import mmap
    import uuid

    reason = kernel_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    m = await env.mirror("m-kernel", [("a", "r1"), ("b", "r2")])
    subnqn = nqn("vol-kernel")
    await m.export(subnqn, "127.0.0.1", EXPORT_PORT, NGUID)

    async def nvme(*args: str) -> None:
        proc = await asyncio.create_subprocess_exec("nvme", *args, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, f"nvme {' '.join(args)}: {err.decode()}"

    await nvme("connect", "-t", "tcp", "-a", "127.0.0.1", "-s", str(EXPORT_PORT), "-n", subnqn, "-q", HOST2_NQN)
    try:
        # The namespace's block device, found by the UUID the export gives it.
        wanted = str(uuid.UUID(NGUID))
        dev = None
        async with asyncio.timeout(20):
            while dev is None:
                for block in Path("/sys/block").glob("nvme*n*"):
                    wwid = block / "wwid"
                    if wwid.exists() and wanted in wwid.read_text():
                        dev = f"/dev/{block.name}"
                await asyncio.sleep(0.1)
        size = 256 << 10
        data = os.urandom(size)
        buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants
        buf.write(data)
        fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
        try:
            assert os.pwritev(fd, [buf], 1 << 20) == size
            os.fsync(fd)
            back = mmap.mmap(-1, size)
            assert os.preadv(fd, [back], 1 << 20) == size
            assert bytes(back) == data
        finally:
            os.close(fd)
    finally:
        await nvme("disconnect", "-n", subnqn)
    replica = await env.read_replica("r1", blocks=(1 << 20) // BLOCK + size // BLOCK)
    assert replica[1 << 20 :] == data
