"""An in-memory ``spdk_ffi.mirror.Mirror`` for testing orchestration where
SPDK is absent. It keeps the native mirror's rules (leg modes, one rebuild
at a time to a WO leg, grow-only resize, one export) and adds test hooks:
``fail_leg`` (a leg's I/O failed), ``fall_silent`` (the watchdog failed a
leg that answered nothing), ``finish_rebuild``/``rebuild_delay_s``.
It moves no data.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spdk_ffi.errors import InvalidOptions, NvmeError
from spdk_ffi.mirror import ExportInfo, LegMode, LegStatus, RebuildState, RebuildStatus


@dataclass
class _Leg:
    controller: Any
    mode: LegMode
    error: str = ""
    silent_s: float = 0.0


class FakeRebuild:
    def __init__(self, mirror: FakeMirror, dst: str, src: str, total: int) -> None:
        self._mirror = mirror
        self._status = RebuildStatus(dst, src, RebuildState.IN_PROGRESS, 0, total, "")
        self.done: asyncio.Future[RebuildStatus] = asyncio.get_running_loop().create_future()

    def status(self) -> RebuildStatus:
        return self._status

    async def cancel(self) -> None:
        self.finish(RebuildState.CANCELLED)

    def finish(self, state: RebuildState, error: str = "") -> None:
        if self.done.done():
            return
        s = self._status
        done = s.bytes_total if state is RebuildState.COMPLETE else s.bytes_done
        self._status = RebuildStatus(s.dst, s.src, state, done, s.bytes_total, error)
        self.done.set_result(self._status)


class FakeMirror:
    def __init__(
        self,
        name: str,
        legs: Sequence[tuple[str, Any]],
        num_blocks: int,
        block_size: int = 4096,
        leg_timeout_ms: int = 5000,
    ) -> None:
        self.name = name
        self.leg_timeout_ms = leg_timeout_ms
        self._legs = {leg: _Leg(controller, LegMode.RW) for leg, controller in legs}
        self._num_blocks = num_blocks
        self._block_size = block_size
        self._rebuild: FakeRebuild | None = None
        self._export: ExportInfo | None = None
        self.destroyed = False
        self.rebuild_delay_s: float | None = 0.01  # None: only finish_rebuild ends a rebuild
        self.rebuild_compare = False  # the last rebuild's compare flag
        self.quiesced = False  # between quiesce() and resume(): host writes held
        self.on_leg_failed: Callable[[str, str], None] | None = None

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def exported(self) -> ExportInfo | None:
        return self._export

    def legs(self) -> list[LegStatus]:
        return [LegStatus(name, leg.mode, 0, 0, 0, 0, 0, leg.error, leg.silent_s) for name, leg in self._legs.items()]

    def counters(self) -> dict[str, int]:
        return {"reads": 0, "writes": 0, "errors": 0}

    def _leg(self, name: str) -> _Leg:
        self._alive()
        if name not in self._legs:
            raise InvalidOptions(f"mirror {self.name} has no leg {name}")
        return self._legs[name]

    def _alive(self) -> None:
        if self.destroyed:
            raise NvmeError(errno.ENODEV, f"mirror {self.name} is destroyed")

    async def destroy(self) -> None:
        if self._rebuild is not None:
            self._rebuild.finish(RebuildState.CANCELLED)
        self._export = None
        self.destroyed = True

    async def add_leg(self, name: str, controller: Any, mode: LegMode = LegMode.WO) -> None:
        self._alive()
        if name in self._legs or len(self._legs) == 8:
            raise NvmeError(errno.EEXIST if name in self._legs else errno.ENOSPC, f"cannot add leg {name}")
        self._legs[name] = _Leg(controller, LegMode(mode))

    async def remove_leg(self, name: str) -> None:
        self._leg(name)
        rb = self._rebuild
        if rb is not None and name in (rb.status().dst, rb.status().src):
            rb.finish(RebuildState.CANCELLED)
        del self._legs[name]

    async def set_mode(self, name: str, mode: LegMode) -> None:
        leg = self._leg(name)
        rb = self._rebuild
        if rb is not None and not rb.done.done() and rb.status().dst == name and mode != LegMode.WO:
            raise NvmeError(errno.EBUSY, f"leg {name} is the destination of a rebuild in progress")
        leg.mode = LegMode(mode)
        leg.error = ""

    async def resize(self, num_blocks: int) -> None:
        self._alive()
        if num_blocks < self._num_blocks:
            raise NvmeError(errno.EINVAL, f"a mirror only grows ({self._num_blocks} blocks now)")
        self._num_blocks = num_blocks

    def start_rebuild(
        self,
        dst: str,
        src: str | None = None,
        *,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        compare: bool = False,
    ) -> FakeRebuild:
        self.rebuild_compare = compare
        if self._leg(dst).mode != LegMode.WO:
            raise NvmeError(errno.EINVAL, f"a rebuild destination must be WO; leg {dst} is not")
        if self._rebuild is not None and not self._rebuild.done.done():
            raise NvmeError(errno.EBUSY, "a rebuild is in progress")
        sources = [n for n, leg in self._legs.items() if leg.mode == LegMode.RW and n != dst]
        source = src if src is not None else (sources[0] if sources else "")
        rebuild = FakeRebuild(self, dst, source, self._num_blocks * self._block_size)
        self._rebuild = rebuild
        if not source:
            rebuild.finish(RebuildState.ERROR, "ENXIO: no RW source leg left")
        elif self.rebuild_delay_s is not None:
            asyncio.get_running_loop().call_later(self.rebuild_delay_s, rebuild.finish, RebuildState.COMPLETE)
        return rebuild

    async def quiesce(self) -> None:
        self._alive()
        if self.quiesced:
            raise NvmeError(errno.EALREADY, f"mirror {self.name} is quiesced already")
        self.quiesced = True

    async def resume(self) -> None:
        self._alive()
        self.quiesced = False

    def finish_rebuild(self, state: RebuildState = RebuildState.COMPLETE, error: str = "") -> None:
        assert self._rebuild is not None
        self._rebuild.finish(state, error)

    async def export(self, nqn: str, address: str, port: int, nguid: str) -> ExportInfo:
        self._alive()
        if self._export is not None:
            raise NvmeError(errno.EEXIST, f"mirror {self.name} is exported already")
        self._export = ExportInfo(nqn, address, port, nguid.replace("-", "").lower())
        return self._export

    async def unexport(self) -> None:
        self._export = None

    def fall_silent(self, name: str) -> None:
        """Test hook: the leg answered nothing for the leg timeout while
        another RW leg worked, and the core's watchdog failed it (with no
        timeout, or no other working RW leg, the core would not)."""
        others = [n for n, leg in self._legs.items() if n != name and leg.mode == LegMode.RW]
        if self.leg_timeout_ms == 0 or not others:
            return
        silent = self.leg_timeout_ms / 1000
        self._leg(name).silent_s = silent
        self.fail_leg(name, f"silent for {silent:.1f} s (its node answered nothing): failed")

    def fail_leg(self, name: str, reason: str = "ENXIO: no live path") -> None:
        """Test hook: the leg's I/O failed, as the core reports it."""
        leg = self._leg(name)
        if leg.mode == LegMode.ERR:
            return
        leg.mode, leg.error = LegMode.ERR, reason
        rb = self._rebuild
        if rb is not None and rb.status().dst == name:
            rb.finish(RebuildState.ERROR, "EIO: the destination leg failed")
        if self.on_leg_failed is not None:
            self.on_leg_failed(name, reason)


class FakeMirrorFactory:
    def __init__(self) -> None:
        self.mirrors: dict[str, FakeMirror] = {}

    async def create_mirror(
        self,
        name: str,
        legs: Sequence[tuple[str, Any]],
        num_blocks: int,
        *,
        nsid: int = 1,
        leg_timeout_ms: int = 5000,
    ) -> FakeMirror:
        if not 1 <= len(legs) <= 8 or name in self.mirrors:
            raise InvalidOptions(f"mirror {name}: 1 to 8 legs and a new name")
        if leg_timeout_ms != 0 and not 100 <= leg_timeout_ms <= 3_600_000:
            raise InvalidOptions(f"mirror {name}: leg_timeout_ms must be 0 or 100..3600000, not {leg_timeout_ms}")
        mirror = FakeMirror(name, legs, num_blocks, leg_timeout_ms=leg_timeout_ms)
        self.mirrors[name] = mirror
        return mirror
