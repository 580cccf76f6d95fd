"""bench/backup's V2 part: the full data path of a V2 backup and restore,
through a real imd (its SPDK target, its engine, its C core) to the same
S3 server, on the same image, beside Longhorn's library from a raw file.

The image is written into a V2 volume (one replica) through the engine's
export, snapshot ``s1`` is taken, and each repetition backs it up into a
fresh backup volume (SnapshotBackup, timed from the call to the status
``complete``) and restores it onto a second engine without a frontend
(BackupRestore, timed likewise); the restore is checked against the
snapshot by SHA-256 (SnapshotHash, in the C core, on both). Then the
host's IOPS: bench/v2proc.py's verified-I/O loop on the engine's export,
alone and during a backup at the default rate cap.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.spdknode import HOSTNQN
from bench.v2ops import Host, Node, window_iops

MIB2 = 2 << 20


async def write_image(export_path: str, image: Path) -> None:
    """Write ``image`` onto the volume, through the engine's export, from
    this process's own spdk_ffi core."""
    from spdk_ffi import ControllerOpts, Initiator
    from spdk_ffi.native import DmaBuffer, Io, IoKind, NativeBackend, NativeCore

    backend = NativeBackend(NativeCore.start(core_mask="0x2", mem_size_mb=256, no_huge=True))
    ini = Initiator(backend)
    await ini.attach("img", [export_path], f"{HOSTNQN}-writer", ControllerOpts(), owner="bench")
    bufs = [DmaBuffer(MIB2) for _ in range(4)]
    try:
        with image.open("rb") as f:
            offset = 0
            while True:
                batch = []
                for buf in bufs:
                    chunk = f.read(MIB2)
                    if not chunk:
                        break
                    if chunk.count(0) != len(chunk):  # the zeros are there already (a thin volume)
                        buf.view[: len(chunk)] = chunk
                        batch.append(Io(IoKind.WRITE, 1, offset // 4096, len(chunk) // 4096, buf))
                    offset += len(chunk)
                if batch:
                    await backend.io(ini.handle("img"), batch)
                if len(batch) < len(bufs) and not chunk:
                    break
    finally:
        await ini.detach("img")
        for buf in bufs:
            buf.free()


class V2Bench:
    def __init__(self, args: Any, target: str, envs: dict[str, str], image: Path, work: Path) -> None:
        self.args = args
        self.target = target
        self.envs = envs
        self.env_list = [f"{k}={v}" for k, v in envs.items()]
        self.image = image
        self.size = image.stat().st_size
        self.node = Node(work / "imd", Path(args.disk_dir), v2={"hugepages": False})
        self.export = ""
        self.checksum = ""

    def req(self, engine: str, volume: str = "") -> Any:
        from imd.api.gen.imrpc import common_pb2, proxy_pb2

        return proxy_pb2.ProxyEngineRequest(
            engine_name=engine, volume_name=volume, data_engine=common_pb2.DATA_ENGINE_V2
        )

    async def start(self) -> None:
        from imd.api.gen.imrpc import common_pb2, proxy_pb2
        from imd.api.gen.imrpc import instance_pb2 as inst
        from imd.api.gen.ptypes import controller_pb2

        node = self.node
        await node.start()
        await node.replica("r1", self.size)
        await node.replica("r2", self.size)
        self.export = await node.engine("e1", ["r1"], self.size)
        t0 = time.monotonic()
        await write_image(self.export, self.image)
        print(f"image written into the V2 volume in {time.monotonic() - t0:.1f}s", flush=True)
        await node.proxy.VolumeSnapshot(
            proxy_pb2.EngineVolumeSnapshotRequest(
                proxy_engine_request=self.req("e1"), snapshot_volume=controller_pb2.VolumeSnapshotRequest(name="s1")
            )
        )
        spec = inst.InstanceSpec(
            name="e2", type="engine", volume_name="restored", data_engine=common_pb2.DATA_ENGINE_V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(
                size=self.size, replica_address_map={"r2": f"127.0.0.1:{node.ports['r2']}"}, frontend=""
            ),
        )  # fmt: skip
        await node.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))
        self.checksum = await self.snapshot_hash("e1", "s1")

    async def snapshot_hash(self, engine: str, snapshot: str) -> str:
        from imd.api.gen.imrpc import proxy_pb2

        await self.node.proxy.SnapshotHash(
            proxy_pb2.EngineSnapshotHashRequest(proxy_engine_request=self.req(engine), snapshot_name=snapshot)
        )
        status_req = proxy_pb2.EngineSnapshotHashStatusRequest(
            proxy_engine_request=self.req(engine), snapshot_name=snapshot
        )
        while True:
            status = (await self.node.proxy.SnapshotHashStatus(status_req)).status
            if status and all(s.state in ("complete", "error") for s in status.values()):
                (s,) = status.values()
                if s.state != "complete":
                    raise RuntimeError(f"hash of {snapshot}: {s.error}")
                return str(s.checksum)
            await asyncio.sleep(0.2)

    async def backup(self, volume: str) -> dict[str, float | str]:
        from imd.api.gen.imrpc import proxy_pb2

        began = time.perf_counter()
        started = await self.node.proxy.SnapshotBackup(
            proxy_pb2.EngineSnapshotBackupRequest(
                proxy_engine_request=self.req("e1", volume),
                snapshot_name="s1",
                backup_target=self.target,
                envs=self.env_list,
                backup_name=f"backup-{volume}",
                compression_method=self.args.compression,
                concurrent_limit=self.args.concurrency,
            )
        )
        request = proxy_pb2.EngineSnapshotBackupStatusRequest(
            proxy_engine_request=self.req("e1"), backup_name=started.backup_id
        )
        while True:
            status = await self.node.proxy.SnapshotBackupStatus(request)
            if status.state != "in_progress":
                break
            await asyncio.sleep(0.05)
        end = time.perf_counter()
        if status.state != "complete":
            raise RuntimeError(f"V2 backup: {status.error}")
        return {"time": end - began, "after_lock": end - began - 2.0, "url": status.backup_url}

    async def restore(self, url: str) -> dict[str, float | str]:
        from imd.api.gen.imrpc import proxy_pb2

        began = time.perf_counter()
        await self.node.proxy.BackupRestore(
            proxy_pb2.EngineBackupRestoreRequest(
                proxy_engine_request=self.req("e2"), url=url, envs=self.env_list,
                concurrent_limit=self.args.concurrency,
            )
        )  # fmt: skip
        while True:
            status = (await self.node.proxy.BackupRestoreStatus(self.req("e2"))).status
            if status and not any(s.is_restoring for s in status.values()):
                break
            await asyncio.sleep(0.05)
        end = time.perf_counter()
        (s,) = status.values()
        if s.state != "complete":
            raise RuntimeError(f"V2 restore: {s.error}")
        listing = (await self.node.proxy.SnapshotList(self.req("e2"))).disks
        snapshot = next(n for n in listing if n.startswith("restore-s1"))
        if await self.snapshot_hash("e2", snapshot) != self.checksum:
            raise SystemExit("V2: the restored volume differs from the snapshot")
        return {"time": end - began, "after_lock": float("nan")}

    async def host_iops(self, seconds: float = 4.0) -> dict[str, float]:
        """The host alone, then during a backup at the default rate cap."""
        host = Host(self.export, seed=7, qd=8)
        await host.start()
        await asyncio.sleep(1.0 + seconds)
        t_alone = time.monotonic()
        volume = f"bench-v2-iops-{int(time.time())}"
        t0 = time.monotonic()
        backup = await self.backup(volume)
        t1 = time.monotonic()
        await asyncio.sleep(1.0)
        report = await host.stop()
        alone = window_iops(report, t_alone - seconds, t_alone)
        during = window_iops(report, t0 + 2.0, t1)  # after the lock's 2 s wait: the data path
        return {
            "iops_alone": alone,
            "iops_during_backup": during,
            "ratio": during / alone if alone else float("nan"),
            "backup_s": float(backup["time"]),
            "errors": float(report.get("errors", 0)),
            "mismatches": float(report.get("mismatches", 0)),
        }

    async def close(self) -> None:
        await self.node.close()


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="imd-bench-backup-v2-"))
