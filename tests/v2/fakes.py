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
import errno
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from imd.errors import FailedPrecondition, Unavailable
from imd.supervisor.logs import LogStore
from imd.supervisor.ports import PortAllocator
from imd.supervisor.process import SupervisionSettings
from imd.supervisor.supervisor import Supervisor
from imd.v2.chains import LocalReplicaNodes
from imd.v2.datapath import DataPath, ReplicaNodes
from imd.v2.model import HashStatus, ReplicaChain, SnapshotExport, SnapshotInfo
from imd.v2.node import V2Node
from imd.v2.target import TargetKeeper, TargetSettings
from spdk_ffi import ControllerOpts, Initiator, NvmeError
from spdk_ffi.blockio import Block
from spdk_ffi.mirror import ExportInfo, LegMode
from spdk_ffi.model import Namespace
from spdk_ffi.model import Path as NvmePath
from tests.spdk.fake_backend import FakeBackend
from tests.spdk.fake_jobs import FakeJob, FakeJobs
from tests.spdk.fake_mirror import FakeMirror, FakeRebuild
from tests.v2.fake_spdk import FakeSpdk, FakeTargetClient
from tests.v2.fake_spdk import Lvol as FakeLvol

PORTS = (23000, 23099)
T = TypeVar("T")


class FakeKeeper(TargetKeeper):
    def __init__(self, supervisor: Supervisor, spdk: FakeSpdk) -> None:
        super().__init__(supervisor, TargetSettings(binary="/fake/nvmf_tgt", rpc_socket="/nonexistent.sock"))
        self.spdk = spdk
        self.fake_client = FakeTargetClient(spdk)
        self.client = self.fake_client
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
    """Replicas' nodes, as an engine reaches them (``ReplicaNodes``): it
    grows their lvols (recording the calls), and, without ``nodes`` (real
    ``Chains`` of fake nodes, tests/v2/test_snapshots.py), their replicas
    (fake targets with no lvstore) have no snapshots. With ``hold()``,
    every expansion waits (after it is recorded in ``calls``) until the test
    calls ``release()``: an expansion the test can catch in progress and end
    when it chooses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail: dict[str, Exception] = {}
        self.delay = 0.0
        self.nodes: LocalReplicaNodes | None = None
        # False while a restarted daemon restores its engines: the real one
        # reaches replicas' nodes over gRPC (its own included), which it does
        # not serve yet, so every call fails as a refused connection would.
        self.serving = True
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
        if self.nodes is not None:
            await self.nodes.expand(address, replica, size)

    def _nodes(self) -> LocalReplicaNodes:
        if not self.serving:
            raise Unavailable("cannot reach imd at 127.0.0.1: connection refused (not serving yet)")
        if self.nodes is None:
            raise FailedPrecondition("these fake replicas keep no snapshots")
        return self.nodes

    async def snapshot_chain(self, address: str, replica: str) -> ReplicaChain:
        if self.nodes is None and self.serving:
            return ReplicaChain(replica=replica, head_parent="", head_size=-1, snapshots=())
        return await self._nodes().snapshot_chain(address, replica)

    async def snapshot_create(
        self, address: str, replica: str, name: str, *, user_created: bool, created: str, labels: dict[str, str]
    ) -> SnapshotInfo:
        return await self._nodes().snapshot_create(
            address, replica, name, user_created=user_created, created=created, labels=labels
        )

    async def snapshot_delete(self, address: str, replica: str, name: str, *, mark_only: bool = False) -> bool:
        return await self._nodes().snapshot_delete(address, replica, name, mark_only=mark_only)

    async def snapshot_purge(self, address: str, replica: str) -> list[str]:
        return await self._nodes().snapshot_purge(address, replica)

    async def snapshot_revert(self, address: str, replica: str, name: str) -> None:
        await self._nodes().snapshot_revert(address, replica, name)

    async def snapshot_expose(self, address: str, replica: str, name: str) -> SnapshotExport:
        return await self._nodes().snapshot_expose(address, replica, name)

    async def snapshot_unexpose(self, address: str, replica: str, name: str) -> None:
        await self._nodes().snapshot_unexpose(address, replica, name)

    async def snapshot_hash(self, address: str, replica: str, name: str, rehash: bool) -> HashStatus:
        return await self._nodes().snapshot_hash(address, replica, name, rehash)

    async def snapshot_hash_status(self, address: str, replica: str, name: str) -> HashStatus:
        return await self._nodes().snapshot_hash_status(address, replica, name)

    async def snapshot_hash_cancel(self, address: str, replica: str) -> None:
        if self.nodes is not None:
            await self.nodes.snapshot_hash_cancel(address, replica)

    async def engine_replicas(self, address: str, engine: str) -> list[tuple[str, str]]:
        return await self._nodes().engine_replicas(address, engine)


class RecordingMirror(FakeMirror):
    """spdk_ffi's in-memory mirror (tests/spdk/fake_mirror.py, held to the
    native mirror's behaviour by tests/spdk/test_mirror_protocol.py), plus
    what these tests look at: the calls made, each rebuild started, a
    resize that fails on demand. Rebuilds end only when a test says so."""

    def __init__(self, name: str, legs: Sequence[tuple[str, Any]], num_blocks: int, leg_timeout_ms: int) -> None:
        super().__init__(name, legs, num_blocks, leg_timeout_ms=leg_timeout_ms)
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

    async def quiesce(self) -> None:
        self.calls.append("quiesce")
        await super().quiesce()

    async def resume(self) -> None:
        self.calls.append("resume")
        await super().resume()

    async def resize(self, num_blocks: int) -> None:
        self.calls.append(f"resize {num_blocks}")
        if self.resize_error is not None:
            raise self.resize_error
        await super().resize(num_blocks)

    def start_rebuild(
        self,
        dst: str,
        src: str | None = None,
        *,
        chunk_bytes: int = 1 << 20,
        rate_bytes_per_s: int = 0,
        compare: bool = False,
    ) -> FakeRebuild:
        rebuild = super().start_rebuild(
            dst, src, chunk_bytes=chunk_bytes, rate_bytes_per_s=rate_bytes_per_s, compare=compare
        )
        self.rebuilds.append(rebuild)
        return rebuild


def progress(rebuild: FakeRebuild, fraction: float) -> None:
    """Move a fake rebuild along, as the core's copy would."""
    status = rebuild.status()
    rebuild._status = msgspec.structs.replace(status, bytes_done=int(status.bytes_total * fraction))


SECTOR = 4096
TOKEN_DATA_BYTES = 8 << 20  # a plain content token reads as data up to here, zeros after


class FakeBlockIo:
    """``BlockIo`` over the fake world's lvols (``link`` says which lvol a
    controller reads). Bytes follow content tokens: a plain token (a "host
    write" of tests/v2/test_snapshots.py) reads as data derived from it in
    its first ``TOKEN_DATA_BYTES`` and zeros after; a write through a
    mirror gives each leg's lvol a new token that records the sectors
    written over the old one. Tokens are immutable, so snapshots, copies
    and clones, which copy tokens, carry the bytes too. ``gate`` (when set)
    holds every read until it opens: a backup caught mid-way."""

    def __init__(self) -> None:
        self.lvol_of: Callable[[Any], FakeLvol] | None = None
        self.tokens: dict[str, tuple[str, dict[int, bytes]]] = {}
        self.reads = 0
        self.writes = 0
        self.zeroed = 0
        self.gate: asyncio.Event | None = None
        self.read_started = asyncio.Event()

    def sector(self, token: str, index: int) -> bytes:
        while token in self.tokens:
            base, written = self.tokens[token]
            if index in written:
                return written[index]
            token = base
        if token in ("", "zeroes") or index * SECTOR >= TOKEN_DATA_BYTES:
            return bytes(SECTOR)
        return hashlib.sha256(f"{token}:{index}".encode()).digest() * (SECTOR // 32)

    def bytes_of(self, token: str, offset: int, length: int) -> bytes:
        return b"".join(self.sector(token, s) for s in range(offset // SECTOR, (offset + length) // SECTOR))

    def _lvol(self, controller: Any) -> FakeLvol:
        assert self.lvol_of is not None, "link() the fake world first"
        return self.lvol_of(controller)

    async def read(self, controller: Any, offset: int, length: int) -> Block:
        self.read_started.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        self.reads += 1
        data = self.bytes_of(self._lvol(controller).content, offset, length)
        return Block(data, data == bytes(length))

    def _legs(self, mirror: Any, *modes: LegMode) -> list[FakeLvol]:
        return [self._lvol(leg.controller) for leg in mirror._legs.values() if leg.mode in modes]

    async def mirror_read(self, mirror: Any, offset: int, length: int) -> Block:
        await asyncio.sleep(0)
        legs = self._legs(mirror, LegMode.RW)
        if not legs:
            raise NvmeError(errno.ENXIO, "no RW leg")
        data = self.bytes_of(legs[0].content, offset, length)
        return Block(data, data == bytes(length))

    def write_lvols(self, lvols: list[FakeLvol], offset: int, data: bytes) -> None:
        """Legs that read alike before the write (the same token) share the
        new token: they still read alike, hashes included."""
        written = {offset // SECTOR + i: bytes(data[i * SECTOR : (i + 1) * SECTOR]) for i in range(len(data) // SECTOR)}
        new: dict[str, str] = {}
        for lvol in lvols:
            if lvol.content not in new:
                token = new[lvol.content] = f"w{len(self.tokens)}"
                self.tokens[token] = (lvol.content, written)
            lvol.content = new[lvol.content]

    async def mirror_write(self, mirror: Any, offset: int, data: Any) -> None:
        await asyncio.sleep(0)
        legs = self._legs(mirror, LegMode.RW, LegMode.WO)
        if not legs:
            raise NvmeError(errno.ENXIO, "no RW leg")
        self.writes += 1
        self.write_lvols(legs, offset, bytes(data))

    async def mirror_write_zeroes(self, mirror: Any, offset: int, length: int) -> None:
        self.zeroed += length
        await self.mirror_write(mirror, offset, bytes(length))

    async def mirror_flush(self, mirror: Any) -> None:
        await asyncio.sleep(0)


class FakeData:
    """The fake backend plus every mirror made, for assertions."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.expander = FakeExpander()
        self.mirrors: list[RecordingMirror] = []
        self.mirror_delay = 0.0
        self.jobs = FakeJobs()
        self.blocks = FakeBlockIo()
        self.path = DataPath(
            Initiator(self.backend), self, ControllerOpts(attach_timeout_sec=0.5), self.jobs, blocks=self.blocks
        )

    async def create_mirror(
        self, name: str, legs: Sequence[tuple[str, Any]], num_blocks: int, *, nsid: int = 1, leg_timeout_ms: int = 5000
    ) -> RecordingMirror:
        await asyncio.sleep(self.mirror_delay)
        mirror = RecordingMirror(name, legs, num_blocks, leg_timeout_ms)
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


def link(data: FakeData, *targets: FakeSpdk) -> None:
    """One fake world: whatever these fake SPDK targets export (replicas,
    snapshots served for a copy or a hash) is reachable through ``data``'s
    fake backend, a hash's digest is that of what the lvol reads (its
    content token), and a copy makes the destination read as the source."""

    def lvol(path: NvmePath) -> FakeLvol | None:
        for spdk in targets:
            found = spdk.lvol_at(path.traddr, path.trsvcid, path.subnqn)
            if found is not None:
                return found
        return None

    def namespaces(path: NvmePath) -> list[Namespace] | None:
        found = lvol(path)
        return [Namespace(1, found.size_mib << 20, 4096)] if found is not None else None

    def of(controller: Any) -> FakeLvol:
        found = lvol(controller.key[0])
        assert found is not None, f"no fake lvol behind {controller.key[0]}"
        return found

    def copied(job: FakeJob) -> None:
        src, dst = lvol(job.src.key[0]), lvol(job.dst.key[0])
        if src is None or dst is None:
            gone = job.src.key[0] if src is None else job.dst.key[0]
            raise LookupError(f"no lvol behind {gone} any more")
        dst.content = src.content

    data.backend.resolvers.append(namespaces)
    data.blocks.lvol_of = of
    data.jobs.digest_of = lambda controller: hashlib.sha256(of(controller).content.encode()).hexdigest()
    data.jobs.on_copied = copied


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
    address: str = "127.0.0.1",
    expander: ReplicaNodes | None = None,
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
        replica_address=address,
        engine_address=address,
        state_dir=root,
        watch_queue_limit=1000,
        expander=expander or data.expander,
    )
    store = FakeStore(v2)
    v2.store = store
    return v2, keeper, data, store
