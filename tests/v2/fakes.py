"""Test doubles below imd's V2 seams, and a V2 node built on them.

* ``FakeKeeper``: the target keeper with its client on ``FakeSpdk``; it can
  "crash" the target and bring it back, as the real keeper reports.
* ``RecordingMirror``: spdk_ffi's own in-memory mirror, recording calls.
* ``node(...)``: a ``V2Node`` over a real ``Supervisor`` (ports, logs,
  internal children), the fake keeper, and a ``DataPath`` whose Initiator
  runs over spdk_ffi's fake backend (tests/spdk/fake_backend.py), so every
  attach and detach is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from imd.supervisor.logs import LogStore
from imd.supervisor.ports import PortAllocator
from imd.supervisor.process import SupervisionSettings
from imd.supervisor.supervisor import Supervisor
from imd.v2.datapath import DataPath, ReplicaExpander
from imd.v2.node import V2Node
from imd.v2.target import TargetKeeper, TargetSettings
from spdk_ffi import ControllerOpts, Initiator
from spdk_ffi.mirror import ExportInfo, LegMode
from tests.spdk.fake_backend import FakeBackend
from tests.spdk.fake_mirror import FakeMirror, FakeRebuild
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


class FakeExpander:
    """Replicas' nodes, as an engine's expansion reaches them. With
    ``hold()``, every call waits (after it is recorded in ``calls``) until
    the test calls ``release()``: an expansion the test can catch in
    progress and end when it chooses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail: dict[str, Exception] = {}
        self.delay = 0.0
        self._held: asyncio.Event | None = None

    def hold(self) -> None:
        self._held = asyncio.Event()

    def release(self) -> None:
        if self._held is not None:
            self._held.set()

    async def expand(self, address: str, replica: str, size: int) -> None:
        self.calls.append((address, replica, size))
        if self._held is not None:
            await self._held.wait()
        await asyncio.sleep(self.delay)
        if replica in self.fail:
            raise self.fail[replica]


class RecordingMirror(FakeMirror):
    """spdk_ffi's in-memory mirror (tests/spdk/fake_mirror.py, held to the
    native mirror's behaviour by tests/spdk/test_mirror_protocol.py), plus
    what these tests look at: the calls made, each rebuild started, a
    resize that fails on demand. Rebuilds end only when a test says so."""

    def __init__(self, name: str, legs: Sequence[tuple[str, Any]], num_blocks: int) -> None:
        super().__init__(name, legs, num_blocks)
        self.rebuild_delay_s = None
        self.calls: list[str] = []
        self.rebuilds: list[FakeRebuild] = []
        self.resize_error: Exception | None = None

    @property
    def modes(self) -> dict[str, LegMode]:
        return {leg.name: leg.mode for leg in self.legs()}

    async def destroy(self) -> None:
        self.calls.append("destroy")
        await super().destroy()

    async def export(self, nqn: str, address: str, port: int, nguid: str) -> ExportInfo:
        self.calls.append("export")
        return await super().export(nqn, address, port, nguid)

    async def unexport(self) -> None:
        self.calls.append("unexport")
        await super().unexport()

    async def resize(self, num_blocks: int) -> None:
        self.calls.append(f"resize {num_blocks}")
        if self.resize_error is not None:
            raise self.resize_error
        await super().resize(num_blocks)

    def start_rebuild(
        self, dst: str, src: str | None = None, *, chunk_bytes: int = 1 << 20, rate_bytes_per_s: int = 0
    ) -> FakeRebuild:
        rebuild = super().start_rebuild(dst, src, chunk_bytes=chunk_bytes, rate_bytes_per_s=rate_bytes_per_s)
        self.rebuilds.append(rebuild)
        return rebuild


def progress(rebuild: FakeRebuild, fraction: float) -> None:
    """Move a fake rebuild along, as the core's copy would."""
    status = rebuild.status()
    rebuild._status = msgspec.structs.replace(status, bytes_done=int(status.bytes_total * fraction))


class FakeData:
    """The fake backend plus every mirror made, for assertions."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.expander = FakeExpander()
        self.mirrors: list[RecordingMirror] = []
        self.mirror_delay = 0.0
        self.path = DataPath(Initiator(self.backend), self, ControllerOpts(attach_timeout_sec=0.5))

    async def create_mirror(
        self, name: str, legs: Sequence[tuple[str, Any]], num_blocks: int, *, nsid: int = 1
    ) -> RecordingMirror:
        await asyncio.sleep(self.mirror_delay)
        mirror = RecordingMirror(name, legs, num_blocks)
        self.mirrors.append(mirror)
        return mirror

    def cancel_when_connected(self, task: Callable[[], asyncio.Future[Any] | None]) -> None:
        """Cancel ``task()`` in the loop turn in which the next connect
        completes, before the task awaiting the attach wakes up with its
        result: the narrowest window a preempting delete can land in.
        ``task`` is looked up then, as it may not exist yet."""
        connect = self.backend.connect
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            target = task()
            assert target is not None, "nothing to cancel when the connect completed"
            target.cancel()

        async def connect_then_cancel(*args: Any) -> Any:
            self.backend.connect = connect  # type: ignore[method-assign]
            handle = await connect(*args)
            loop.call_soon(cancel)
            return handle

        self.backend.connect = connect_then_cancel  # type: ignore[method-assign,assignment]

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
    root: Path,
    spdk: FakeSpdk | None = None,
    data: FakeData | None = None,
    *,
    sup: Supervisor | None = None,
    expander: ReplicaExpander | None = None,
) -> tuple[V2Node, FakeKeeper, FakeData, FakeStore]:
    """A V2 node on the fakes; its engines reach replicas' nodes through
    ``expander`` (default: the recording FakeExpander in ``data``)."""
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
        expander=expander or data.expander,
    )
    store = FakeStore(v2)
    v2.store = store
    return v2, keeper, data, store
