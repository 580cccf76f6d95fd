"""Test doubles below imd's V2 seams, and a V2 node built on them.

* ``FakeKeeper``: the target keeper with its client on ``FakeSpdk``; it can
  "crash" the target and bring it back, as the real keeper reports.
* ``FakeMirror``: spdk_ffi's mirror surface, in memory, recording calls.
* ``node(...)``: a ``V2Node`` over a real ``Supervisor`` (ports, logs,
  internal children), the fake keeper, and a ``DataPath`` whose Initiator
  runs over spdk_ffi's fake backend (tests/spdk/fake_backend.py), so every
  attach and detach is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from imd.supervisor.logs import LogStore
from imd.supervisor.ports import PortAllocator
from imd.supervisor.process import SupervisionSettings
from imd.supervisor.supervisor import Supervisor
from imd.v2.datapath import DataPath, Mirror
from imd.v2.node import V2Node
from imd.v2.target import TargetKeeper, TargetSettings
from spdk_ffi import ControllerOpts, Initiator
from tests.spdk.fake_backend import FakeBackend
from tests.v2.fake_spdk import FakeSpdk, FakeTargetClient

PORTS = (23000, 23099)
T = TypeVar("T")


class FakeKeeper(TargetKeeper):
    def __init__(self, supervisor: Supervisor, spdk: FakeSpdk) -> None:
        super().__init__(supervisor, TargetSettings(binary="/fake/nvmf_tgt", rpc_socket="/nonexistent.sock"))
        self.spdk = spdk
        self.client = FakeTargetClient(spdk)
        self.fresh = True
        self.refuse = ""

    async def start(self) -> bool:
        if self.refuse:
            return self._unusable(self.refuse)
        self.started_fresh = self.fresh
        self.reason = ""
        return True

    def crash(self) -> None:
        """The target process died: in-memory state gone, listeners told."""
        self.spdk.restart()
        self.spdk.up = False
        reason = "the SPDK target (pid 1) exited: killed by SIGKILL"
        self._unusable(reason)
        for callback in self._on_lost:
            callback(reason)

    async def come_back(self) -> None:
        self.spdk.up = True
        self.reason = ""
        for callback in self._on_ready:
            await callback()


@dataclass(frozen=True)
class FakeRebuildStatus:
    """spdk_ffi.mirror.RebuildStatus's fields."""

    dst: str
    src: str
    state: str
    bytes_done: int
    bytes_total: int
    error: str


class FakeRebuild:
    """A copy the test finishes (``finish``) or that a cancel stops."""

    def __init__(self, dst: str, src: str, total: int, rate: int) -> None:
        self.dst, self.src, self.total, self.rate = dst, src, total, rate
        self.done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.bytes_done = 0
        self.cancelled = False

    def status(self) -> FakeRebuildStatus:
        if self.done.done():
            return self.done.result()  # type: ignore[no-any-return]
        return FakeRebuildStatus(self.dst, self.src, "in_progress", self.bytes_done, self.total, "")

    def finish(self, state: str = "complete", error: str = "") -> None:
        self.bytes_done = self.total if state == "complete" else self.bytes_done
        self.done.set_result(FakeRebuildStatus(self.dst, self.src, state, self.bytes_done, self.total, error))

    async def cancel(self) -> None:
        self.cancelled = True
        if not self.done.done():
            self.finish("cancelled", "cancelled")


class FakeExpander:
    """Replicas' nodes, as an engine's expansion reaches them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail: dict[str, Exception] = {}
        self.delay = 0.0

    async def expand(self, address: str, replica: str, size: int) -> None:
        self.calls.append((address, replica, size))
        await asyncio.sleep(self.delay)
        if replica in self.fail:
            raise self.fail[replica]


class FakeMirror:
    def __init__(self, name: str, legs: Sequence[tuple[str, Any]], num_blocks: int) -> None:
        self.name = name
        self.block_size = 4096
        self.num_blocks = num_blocks
        self.modes = {leg: "RW" for leg, _ in legs}
        self.handles = dict(legs)
        self.exported: tuple[str, str, int, str] | None = None
        self.destroyed = False
        self.on_leg_failed: Any = None
        self.calls: list[str] = []
        self.rebuilds: list[FakeRebuild] = []
        self.resize_error: Exception | None = None

    async def destroy(self) -> None:
        self.calls.append("destroy")
        self.destroyed = True

    def legs(self) -> list[Any]:
        return list(self.modes.items())

    def counters(self) -> dict[str, int]:
        return {}

    async def add_leg(self, name: str, controller: Any, mode: Any) -> None:
        self.modes[name] = str(mode)
        self.handles[name] = controller

    async def remove_leg(self, name: str) -> None:
        self.modes.pop(name)
        self.handles.pop(name)

    async def set_mode(self, name: str, mode: Any) -> None:
        self.modes[name] = str(mode)

    async def resize(self, num_blocks: int) -> None:
        self.calls.append(f"resize {num_blocks}")
        if self.resize_error is not None:
            raise self.resize_error
        self.num_blocks = num_blocks

    def start_rebuild(
        self, dst: str, src: str | None = None, *, chunk_bytes: int = 0, rate_bytes_per_s: int = 0
    ) -> FakeRebuild:
        assert self.modes[dst] == "WO", f"rebuild onto a {self.modes[dst]} leg"
        source = src or next(n for n, m in sorted(self.modes.items()) if m == "RW")
        self.rebuilds.append(FakeRebuild(dst, source, self.num_blocks * self.block_size, rate_bytes_per_s))
        return self.rebuilds[-1]

    async def export(self, nqn: str, address: str, port: int, nguid: str) -> Any:
        self.calls.append("export")
        self.exported = (nqn, address, port, nguid)
        return self.exported

    async def unexport(self) -> None:
        self.calls.append("unexport")
        self.exported = None

    def fail_leg(self, name: str, why: str = "I/O error") -> None:
        self.modes[name] = "ERR"
        assert self.on_leg_failed is not None
        self.on_leg_failed(name, why)


class FakeData:
    """The fake backend plus every mirror made, for assertions."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.expander = FakeExpander()
        self.mirrors: list[FakeMirror] = []
        self.mirror_delay = 0.0
        self.path = DataPath(Initiator(self.backend), self.make_mirror, ControllerOpts(attach_timeout_sec=0.5))

    async def make_mirror(self, name: str, legs: Sequence[tuple[str, Any]], num_blocks: int) -> Mirror:
        await asyncio.sleep(self.mirror_delay)
        mirror = FakeMirror(name, legs, num_blocks)
        self.mirrors.append(mirror)
        return mirror  # type: ignore[return-value]

    def replica_target(self, name: str, port: int, size: int = 1 << 30, address: str = "127.0.0.1") -> str:
        """Make replica ``name`` reachable at ``address:port``; its address."""
        from imd.v2.model import nqn_of

        self.backend.add_target(address, str(port), nqn_of(name), [size])
        return f"{address}:{port}"


class FakeStore:
    """Persistence that keeps the last snapshot in memory and can fail."""

    def __init__(self, node: V2Node) -> None:
        self.node = node
        self.snapshots: list[bytes] = []
        self.failing: Exception | None = None

    def mark_dirty(self) -> None:
        return None

    async def commit(self) -> None:
        await asyncio.sleep(0)
        if self.failing is not None:
            raise self.failing
        self.snapshots.append(self.node.snapshot())

    def load(self, decode: Callable[[bytes], T]) -> T | None:
        path = self.node.state_path
        if not path.exists():
            return None
        try:
            return decode(path.read_bytes())
        except msgspec.MsgspecError:
            path.replace(path.with_name(path.name + ".bad-test"))
            return None


def supervisor(root: Path) -> Supervisor:
    return Supervisor(
        ports=PortAllocator(*PORTS),
        logs=LogStore(root / "logs", max_bytes=1 << 20, keep=1, retention_s=60),
        settings=SupervisionSettings(stop_grace_s=2.0),
    )


def node(
    root: Path, spdk: FakeSpdk | None = None, data: FakeData | None = None, *, sup: Supervisor | None = None
) -> tuple[V2Node, FakeKeeper, FakeData, FakeStore]:
    sup = sup or supervisor(root)
    keeper = FakeKeeper(sup, spdk or FakeSpdk())
    data = data or FakeData()
    v2 = V2Node(
        supervisor=sup,
        target=keeper,
        data=data.path,
        data_unavailable="",
        replica_address="127.0.0.1",
        engine_address="127.0.0.1",
        state_dir=root,
        watch_queue_limit=1000,
        expander=data.expander,
    )
    store = FakeStore(v2)
    v2.store = store
    return v2, keeper, data, store
