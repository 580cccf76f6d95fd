"""The Mirror protocol: the native mirror and the in-memory fake both satisfy
it (checked by mypy through the annotated assignments below), and the fake
follows the same scenario the native mirror runs in test_mirror.py."""

from __future__ import annotations

from typing import Any

import pytest

from spdk_ffi.errors import InvalidOptions, NvmeError
from spdk_ffi.mirror import LegMode, Mirror, MirrorFactory, NativeMirror, NativeMirrorFactory, RebuildState
from tests.spdk.fake_mirror import FakeMirror, FakeMirrorFactory

pytestmark = pytest.mark.asyncio


def _native_is_a_mirror(m: NativeMirror, f: NativeMirrorFactory) -> tuple[Mirror, MirrorFactory]:
    return m, f  # a type error here means the native surface left the protocol


def _fake_is_a_mirror(m: FakeMirror, f: FakeMirrorFactory) -> tuple[Mirror, MirrorFactory]:
    return m, f


async def orchestration_scenario(factory: MirrorFactory, controllers: dict[str, Any], port: int) -> None:
    """What imd does with an engine's mirror, in order; run against the fake
    here and against the native mirror in test_mirror.py."""
    m = await factory.create_mirror("vol-scenario", [("r1", controllers["r1"]), ("r2", controllers["r2"])], 1024)
    try:
        assert (m.block_size, m.num_blocks) == (4096, 1024)
        assert [(leg.name, leg.mode) for leg in m.legs()] == [("r1", LegMode.RW), ("r2", LegMode.RW)]
        await m.add_leg("r3", controllers["r3"])
        assert {leg.name: leg.mode for leg in m.legs()}["r3"] == LegMode.WO
        with pytest.raises((NvmeError, InvalidOptions)):
            await m.add_leg("r3", controllers["r3"])
        rebuild = m.start_rebuild("r3")
        status = await rebuild.done
        assert status.state == RebuildState.COMPLETE and status.bytes_done == status.bytes_total == 1024 * 4096
        assert status.dst == "r3" and status.src in ("r1", "r2")
        await m.set_mode("r3", LegMode.RW)
        assert all(leg.mode == LegMode.RW for leg in m.legs())
        with pytest.raises(NvmeError):
            await m.resize(1000)
        await m.resize(1024)
        info = await m.export("nqn.2016-06.io.imd:vol-scenario", "127.0.0.1", port, "0011223344556677-8899AABBCCDDEEFF")
        assert info.nguid == "00112233445566778899aabbccddeeff" and info.port == port
        await m.unexport()
        await m.remove_leg("r1")
        assert [leg.name for leg in m.legs()] == ["r2", "r3"]
        counters = m.counters()  # no host I/O in the scenario: the copies are not host I/O
        assert (counters["reads"], counters["writes"], counters["errors"]) == (0, 0, 0), counters
    finally:
        await m.destroy()


async def test_fake_follows_the_scenario() -> None:
    await orchestration_scenario(FakeMirrorFactory(), {"r1": object(), "r2": object(), "r3": object()}, 4460)


async def test_fake_leg_failure_and_rebuild_hooks() -> None:
    m = await FakeMirrorFactory().create_mirror("v", [("a", 1), ("b", 2)], 100)
    failed: list[tuple[str, str]] = []
    m.on_leg_failed = lambda leg, reason: failed.append((leg, reason))
    await m.add_leg("c", 3)
    m.rebuild_delay_s = None
    rebuild = m.start_rebuild("c", src="a")
    assert rebuild.status().state == RebuildState.IN_PROGRESS
    m.fail_leg("c")
    assert (await rebuild.done).state == RebuildState.ERROR
    assert failed == [("c", "ENXIO: no live path")]
    assert {leg.name: leg.mode for leg in m.legs()} == {"a": "RW", "b": "RW", "c": "ERR"}
    await m.set_mode("c", LegMode.WO)
    again = m.start_rebuild("c")
    await again.cancel()
    assert (await again.done).state == RebuildState.CANCELLED
