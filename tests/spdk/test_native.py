"""spdk_ffi's native backend against a real nvmf_tgt over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import spdk_ffi
from spdk_ffi import AttachTimeout, ControllerOpts, Initiator, MultipathPolicy, NvmeError
from tests.helpers import eventually
from tests.spdk.target import HOST_NQN, MALLOC_NQN, NULL_NQN, Target, path

pytestmark = pytest.mark.asyncio

BLOCK = 4096


def backend() -> Any:
    return spdk_ffi.native_backend(core_mask="0x2", mem_size_mb=512, no_huge=True)


def buffers(count: int, size: int) -> list[Any]:
    from spdk_ffi.native import DmaBuffer

    return [DmaBuffer(size) for _ in range(count)]


@dataclass
class OnePath:
    native: Any
    ini: Initiator
    bufs: list[Any]

    @property
    def core(self) -> Any:
        return self.native.core


@contextlib.asynccontextmanager
async def one_path(name: str, nqn: str, port: int, *, bufs: int = 0) -> AsyncIterator[OnePath]:
    """A native backend with ``name`` attached on one path, and ``bufs``
    DMA buffers of a block; at the end the controller is detached, then the
    buffers freed (no I/O can still point at them)."""
    native = backend()
    ini = Initiator(native)
    await ini.attach(name, [path(nqn, port)], HOST_NQN)
    allocated = buffers(bufs, BLOCK)
    try:
        yield OnePath(native, ini, allocated)
    finally:
        await ini.detach(name)
        for b in allocated:
            b.free()


async def test_attach_detach_namespaces(target: Target) -> None:
    ini = Initiator(backend())
    result = await ini.attach("null", [path(NULL_NQN, 4420)], HOST_NQN, owner="e1")
    (ns,) = result.info.namespaces
    assert (ns.nsid, ns.size_bytes, ns.block_size) == (1, 262144 * BLOCK, BLOCK)
    assert len(target.host_controllers(NULL_NQN)) == 1
    assert await ini.detach("null")
    # The target drops its side once its poller sees the connection close:
    # after the host's detach, not within it.
    await eventually(lambda: target.host_controllers(NULL_NQN) == [], "the target dropped the controller")


async def test_read_after_write(target: Target) -> None:
    from spdk_ffi.native import Io, IoKind

    ini = Initiator(backend())
    await ini.attach("m", [path(MALLOC_NQN, 4421)], HOST_NQN)
    out, back = buffers(2, 8 * BLOCK)
    payload = os.urandom(8 * BLOCK)
    out.view[:] = payload
    try:
        await ini.io("m", [Io(IoKind.WRITE, 1, lba=100, nblocks=8, buf=out)])
        await ini.io("m", [Io(IoKind.READ, 1, lba=100, nblocks=8, buf=back)])
        assert bytes(back.view) == payload
        await ini.io("m", [Io(IoKind.WRITE_ZEROES, 1, lba=100, nblocks=8), Io(IoKind.FLUSH, 1)])
        await ini.io("m", [Io(IoKind.READ, 1, lba=100, nblocks=8, buf=back)])
        assert bytes(back.view) == bytes(8 * BLOCK)
    finally:
        await ini.detach("m")
        out.free()
        back.free()


async def test_io_error_carries_status_and_path(target: Target) -> None:
    from spdk_ffi.native import Io, IoError, IoKind

    ini = Initiator(backend())
    await ini.attach("m", [path(MALLOC_NQN, 4421)], HOST_NQN)
    (buf,) = buffers(1, BLOCK)
    try:
        with pytest.raises(IoError) as exc:
            await ini.io("m", [Io(IoKind.READ, 1, lba=10**9, nblocks=1, buf=buf)])  # past the end
        assert exc.value.sct == 0 and exc.value.sc == 0x80  # LBA out of range
        assert str(exc.value.path) == path(MALLOC_NQN, 4421)
    finally:
        await ini.detach("m")
        buf.free()


async def test_connection_refused_and_attach_timeout(target: Target) -> None:
    ini = Initiator(backend())
    with pytest.raises(NvmeError) as refused:
        await ini.attach("dead", [path(NULL_NQN, 4499)], HOST_NQN)
    assert refused.value.errno_name == "ECONNREFUSED"
    # A peer that accepts TCP but never speaks NVMe: the attach times out.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        opts = ControllerOpts(attach_timeout_sec=1.0)
        with pytest.raises(AttachTimeout):
            await ini.attach("mute", [path(NULL_NQN, port)], HOST_NQN, opts)
    assert ini.controllers() == []


async def test_idempotent_reattach_and_stale_controller_cleanup(target: Target) -> None:
    ini = Initiator(backend())
    first = await ini.attach("vol-r1", [path(NULL_NQN, 4420)], HOST_NQN, owner="engine-a")
    again = await ini.attach("vol-r1", [path(NULL_NQN, 4420)], HOST_NQN, owner="engine-a")
    assert again.reused and len(target.host_controllers(NULL_NQN)) == 1
    # engine-a dies without detaching; engine-b attaches under the same name.
    taken = await ini.attach("vol-r1", [path(NULL_NQN, 4420)], HOST_NQN, owner="engine-b")
    assert not taken.reused and taken.cleaned_up and "engine-a" in taken.cleaned_up
    assert first.info.name == taken.info.name
    # The leftover is gone: the target sees the disconnect on its own
    # poller, a moment after the initiator's detach returned.
    await eventually(lambda: len(target.host_controllers(NULL_NQN)) == 1, "the leftover controller gone")
    assert await ini.sweep({"engine-c"}) == ["vol-r1"]
    await eventually(lambda: target.host_controllers(NULL_NQN) == [], "the swept controller gone")


@pytest.mark.parametrize("api", ["io", "batch"])
async def test_multipath_failover_while_io_runs(target: Target, api: str) -> None:
    """Both Python-tier entry points: io() copies the I/Os each call, run()
    submits a prebuilt IoBatch and falls back to io()'s path handling."""
    from spdk_ffi.native import Io, IoKind

    native = backend()
    ini = Initiator(native)
    opts = ControllerOpts(
        ctrlr_loss_timeout_sec=30, reconnect_delay_sec=1, fast_io_fail_timeout_sec=20, policy=MultipathPolicy.FAILOVER
    )
    await ini.attach("mp", [path(MALLOC_NQN, 4421), path(MALLOC_NQN, 4422)], HOST_NQN, opts, owner="e")
    bufs = buffers(16, BLOCK)
    done = 0
    stop = asyncio.Event()

    async def io_loop() -> None:
        nonlocal done
        prebuilt = native.io_batch([Io(IoKind.READ, 1, lba=0, nblocks=1, buf=b) for b in bufs])  # type: ignore[attr-defined]
        while not stop.is_set():
            if api == "io":
                await ini.io("mp", [Io(IoKind.READ, 1, lba=random.randrange(16384), nblocks=1, buf=b) for b in bufs])
            else:
                for entry in prebuilt.entries:
                    entry.lba = random.randrange(16384)
                await native.run(ini.handle("mp"), prebuilt)  # type: ignore[attr-defined]
            done += len(bufs)

    runner = asyncio.ensure_future(io_loop())
    try:
        await eventually(lambda: done > 0, "I/O running")
        target.remove_listener(MALLOC_NQN, 4421)  # the active path dies under load
        await eventually(lambda: not ini.controllers()[0].paths[0].connected, "path 4421 seen down")
        after_loss = done
        await eventually(lambda: done > after_loss + 64, "I/O going on over path 4422")
        stop.set()
        await asyncio.wait_for(runner, 30)  # raises if any I/O surfaced an error
        info = ini.controllers()[0]
        assert [(p.connected, p.active) for p in info.paths] == [(False, False), (True, True)]
        # An I/O that met the dead path before the host saw it go is moved
        # to the other one (counted in "failovers"); whether one did is a
        # race with the host's poller, so it is not asserted. None failed.
        assert info.counters["io_errors"] == 0
    finally:
        stop.set()
        target.add_listener(MALLOC_NQN, 4421)
        await ini.detach("mp")
        for b in bufs:
            b.free()


async def test_all_paths_down_past_loss_timeout_frees_the_name(target: Target) -> None:
    ini = Initiator(backend())
    opts = ControllerOpts(ctrlr_loss_timeout_sec=2, reconnect_delay_sec=1, fast_io_fail_timeout_sec=1)
    await ini.attach("lossy", [path(MALLOC_NQN, 4422)], HOST_NQN, opts)
    target.remove_listener(MALLOC_NQN, 4422)
    try:
        async with asyncio.timeout(15):
            while ini.controllers():
                await asyncio.sleep(0.2)
    finally:
        target.add_listener(MALLOC_NQN, 4422)
    again = await ini.attach("lossy", [path(MALLOC_NQN, 4422)], HOST_NQN, opts)
    assert not again.reused and again.cleaned_up is None
    await ini.detach("lossy")


async def test_keep_alive_holds_an_idle_controller(target: Target) -> None:
    from spdk_ffi.native import Io, IoKind

    ini = Initiator(backend())
    await ini.attach("idle", [path(NULL_NQN, 4420)], HOST_NQN, ControllerOpts(keep_alive_timeout_ms=1000))
    (buf,) = buffers(1, BLOCK)
    try:
        # Not a wait for an event: the point is four keep-alive timeouts
        # passing with no I/O at all, so time itself must pass.
        await asyncio.sleep(4.0)
        assert not ini.controllers()[0].failed
        assert len(target.host_controllers(NULL_NQN)) == 1
        await ini.io("idle", [Io(IoKind.READ, 1, lba=0, nblocks=1, buf=buf)])
    finally:
        await ini.detach("idle")
        buf.free()


async def test_ten_thousand_random_ios_verified(target: Target) -> None:
    from spdk_ffi.native import Io, IoKind

    rng = random.Random(42)
    ini = Initiator(backend())
    await ini.attach("v", [path(MALLOC_NQN, 4421)], HOST_NQN)
    shadow = bytearray(16384 * BLOCK)
    pool = buffers(32, 32 * BLOCK)
    try:
        remaining = 10_000
        while remaining:
            batch: list[Io] = []
            spans: list[tuple[Io, int, int]] = []
            lbas: set[int] = set()
            for buf in pool[: min(32, remaining)]:
                nblocks = rng.randint(1, 32)
                lba = rng.randrange(0, 16384 - nblocks)
                if any(b in lbas for b in range(lba, lba + nblocks)):
                    continue  # keep one batch free of overlaps
                lbas.update(range(lba, lba + nblocks))
                size = nblocks * BLOCK
                if rng.random() < 0.5:
                    data = rng.randbytes(size)
                    buf.view[:size] = data
                    shadow[lba * BLOCK : lba * BLOCK + size] = data
                    batch.append(Io(IoKind.WRITE, 1, lba=lba, nblocks=nblocks, buf=buf))
                else:
                    batch.append(Io(IoKind.READ, 1, lba=lba, nblocks=nblocks, buf=buf))
                spans.append((batch[-1], lba, size))
            await ini.io("v", batch)
            for io, lba, size in spans:
                if io.kind == IoKind.READ:
                    assert bytes(io.buf.view[:size]) == bytes(shadow[lba * BLOCK : lba * BLOCK + size])
            remaining -= len(batch)
    finally:
        await ini.detach("v")
        for b in pool:
            b.free()


async def test_c_tier_benchmark_runs(target: Target) -> None:
    async with one_path("b", NULL_NQN, 4420) as t:
        native, ini = t.native, t.ini
        result = await native.bench(ini.handle("b"), qd=8, ios=20_000, warmup=1_000)
        assert result.iops > 0
        assert sum(n for _, n in result.histogram_100ns) == 20_000
        assert 0 < result.percentile_us(50) <= result.percentile_us(99)
        timed = await native.bench(
            ini.handle("b"), qd=8, io_size=128 * 1024, sequential=True, duration_s=0.3, warmup_s=0.1
        )
        assert timed.seconds >= 0.3 and timed.iops > 0
        assert sum(n for _, n in timed.histogram_100ns) == round(timed.iops * timed.seconds)


async def test_lanes_reusing_pooled_requests_read_back_what_they_wrote(target: Target) -> None:
    """io() reuses finished requests and their I/O arrays: eight lanes in
    flight at once, each writing its own region then reading it back,
    must never see another lane's I/Os in a reused array."""
    from spdk_ffi.native import Io, IoKind

    async with one_path("p", MALLOC_NQN, 4421) as t:
        ini, core = t.ini, t.core

        async def lane(n: int) -> None:
            rng = random.Random(n)
            out, back = buffers(4, BLOCK), buffers(4, BLOCK)
            try:
                for round_ in range(200):
                    lbas = [n * 1024 + round_ % 64 * 8 + i for i in range(4)]
                    for b in out:
                        b.view[:] = rng.randbytes(BLOCK)
                    await ini.io(
                        "p", [Io(IoKind.WRITE, 1, lba=lba, nblocks=1, buf=b) for lba, b in zip(lbas, out, strict=True)]
                    )
                    await ini.io(
                        "p", [Io(IoKind.READ, 1, lba=lba, nblocks=1, buf=b) for lba, b in zip(lbas, back, strict=True)]
                    )
                    assert [bytes(b.view) for b in back] == [bytes(b.view) for b in out], f"lane {n} round {round_}"
            finally:
                for b in out + back:
                    b.free()

        await asyncio.gather(*(lane(n) for n in range(8)))
        # Every lane's requests went back to the pool: at most one per lane
        # was ever in flight, so the pool holds no more than that.
        assert 1 <= len(core._io_pool) <= 8


async def test_a_cancelled_io_keeps_its_request_until_the_poller_is_done(target: Target) -> None:
    from spdk_ffi.native import Io, IoKind

    async with one_path("c", MALLOC_NQN, 4421, bufs=8) as t:
        ini, core, bufs = t.ini, t.core, t.bufs
        ios = [Io(IoKind.READ, 1, lba=i, nblocks=1, buf=b) for i, b in enumerate(bufs)]
        core._io_pool.clear()
        task = asyncio.ensure_future(ini.io("c", ios))
        await asyncio.sleep(0)  # submitted; the poller has it
        in_flight = [entry[0] for entry in core._pending.values()]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancelled request is not reusable: the poller may still write
        # its statuses. It leaves the pending map (with the buffers it
        # holds) only once the poller has finished it.
        assert all(req not in [r for r, _ in core._io_pool] for req in in_flight)
        await eventually(lambda: not core._pending, "the cancelled request reaped", interval=0.005)
        await ini.io("c", ios)  # the controller and the pool still work


async def test_a_burst_of_submissions_wakes_the_poller_at_most_once_per_sleep(target: Target) -> None:
    """The doorbell (core/doorbell.h): Python writes the poller's eventfd
    only when the poller has armed it to sleep. 256 batches submitted in one
    go reach a poller that is awake after the first of them."""
    from spdk_ffi.native import Io, IoKind

    async with one_path("w", NULL_NQN, 4420, bufs=256) as t:
        ini, core, bufs = t.ini, t.core, t.bufs
        before = core.poller_stats()
        await asyncio.gather(*(ini.io("w", [Io(IoKind.READ, 1, lba=i, nblocks=1, buf=b)]) for i, b in enumerate(bufs)))
        after = core.poller_stats()
        woke_poller = after["poller_wakeups"] - before["poller_wakeups"]
        woke_python = after["python_wakeups"] - before["python_wakeups"]
        assert 0 <= woke_poller < 256, woke_poller
        assert 0 < woke_python <= 256, woke_python  # Python slept at least once, for the completions


async def test_io_batch_runs_again_and_again_with_its_data(target: Target) -> None:
    """An IoBatch changed in place between runs: writes land where the
    entries say at each run, and reads through another batch see them."""
    from spdk_ffi.native import Io, IoKind

    async with one_path("b", MALLOC_NQN, 4421, bufs=8) as t:
        native, handle = t.native, t.ini.handle("b")
        out, back = t.bufs[:4], t.bufs[4:]
        writes = native.io_batch([Io(IoKind.WRITE, 1, lba=0, nblocks=1, buf=b) for b in out])  # type: ignore[attr-defined]
        reads = native.io_batch([Io(IoKind.READ, 1, lba=0, nblocks=1, buf=b) for b in back])  # type: ignore[attr-defined]
        rng = random.Random(7)
        for round_ in range(50):
            lbas = rng.sample(range(4096), 4)
            for b in out:
                b.view[:] = rng.randbytes(BLOCK)
            for batch in (writes, reads):
                for entry, lba in zip(batch.entries, lbas, strict=True):
                    entry.lba = lba
            await native.run(handle, writes)  # type: ignore[attr-defined]
            await native.run(handle, reads)  # type: ignore[attr-defined]
            assert [bytes(b.view) for b in back] == [bytes(b.view) for b in out], f"round {round_}"


async def test_io_batch_errors_name_the_io_and_refuse_a_second_run(target: Target) -> None:
    from spdk_ffi import InvalidOptions
    from spdk_ffi.native import Io, IoError, IoKind

    async with one_path("e", MALLOC_NQN, 4421, bufs=3) as t:
        native, handle, bufs = t.native, t.ini.handle("e"), t.bufs
        with pytest.raises(InvalidOptions, match="at least one I/O"):
            native.io_batch([])  # type: ignore[attr-defined]
        batch = native.io_batch([Io(IoKind.READ, 1, lba=i, nblocks=1, buf=b) for i, b in enumerate(bufs)])  # type: ignore[attr-defined]
        batch.entries[2].lba = 10**9  # past the end: the third I/O fails
        with pytest.raises(IoError) as exc:
            await native.run(handle, batch)  # type: ignore[attr-defined]
        assert (exc.value.index, exc.value.sct, exc.value.sc) == (2, 0, 0x80)
        batch.entries[2].lba = 2
        first = asyncio.ensure_future(native.run(handle, batch))  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # submitted; its completion needs another turn of the loop
        assert not first.done()
        with pytest.raises(InvalidOptions, match="still in flight"):
            await native.run(handle, batch)  # type: ignore[attr-defined]
        await first
        await native.run(handle, batch)  # type: ignore[attr-defined]  # free again once it completed


async def test_the_poller_yields_while_it_spins_for_nothing(target: Target) -> None:
    """After its work the poller spins for idle_spin_us (2 ms by default)
    before it sleeps; that spin, like a wait on the network, counts as no
    progress, so it yields its core (core/poller.c, "Sharing a core"). Before
    the idle spin counted, a thread waiting for that core waited all of it:
    the Python tier's p99.9 was 2 ms at every queue depth."""
    from spdk_ffi.native import Io, IoKind

    async with one_path("y", NULL_NQN, 4420, bufs=1) as t:
        ini, core, (buf,) = t.ini, t.core, t.bufs
        for _ in range(200):  # a loaded machine may deny the poller its core in many windows in a row
            await ini.io("y", [Io(IoKind.READ, 1, lba=0, nblocks=1, buf=buf)])
            before = core.poller_stats()
            # A window to look through, not a wait for an event: the poller's
            # idle spin (2 ms) after the I/O, then maybe a nap; retried
            # below when a loaded machine did not let the poller run in it.
            await asyncio.sleep(0.005)
            after = core.poller_stats()
            if after["iterations"] - before["iterations"] >= 100:
                break  # the poller ran in the window (a loaded machine may not let it)
        assert after["iterations"] - before["iterations"] >= 100, "the poller never ran"
        assert after["yields"] > before["yields"], (before, after)


@pytest.mark.parametrize("option", ["idle_spin_us", "poll_sleep_us", "yield_after"])
@pytest.mark.parametrize("value", [-1, 10_000_001])
async def test_poller_options_out_of_range_are_refused_by_name(target: Target, option: str, value: int) -> None:
    from spdk_ffi import InvalidOptions
    from spdk_ffi.native import NativeCore

    backend()  # the core runs already: the options are checked all the same
    options: dict[str, Any] = {option: value}
    with pytest.raises(InvalidOptions, match=f"{option} must be 0..10000000, not {value}"):
        NativeCore.start(**options)
