"""Data engine V2 on the wire, on any machine: a real daemon whose V2 cannot
run (no SPDK target binary, or one that dies at once) says why, answers
V2 calls with FAILED_PRECONDITION and that reason after validating them,
names the field of every bad input, and keeps serving V1.

Field numbers are checked with grpcio's own stubs generated from proto/
(an independent client); tests/v2/test_v2_spdk.py runs the same API
against a real SPDK target.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message, message_factory
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from tests.conftest import DaemonFactory
from tests.helpers import RunningDaemon, spec

pytestmark = pytest.mark.asyncio

V2 = common.DATA_ENGINE_V2
BLOCK = dpb.block


def disk_file(root: Path, size: int = 64 << 20) -> str:
    path = root / "disk.img"
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


async def v2_daemon(factory: DaemonFactory, binary: str) -> RunningDaemon:
    return await factory(v2={"enabled": True, "target_binary": binary, "target_start_timeout_s": 5.0})


async def test_a_missing_target_binary_is_the_reason_v2_calls_give(daemon_factory: DaemonFactory) -> None:
    daemon = await v2_daemon(daemon_factory, "/nonexistent/bin/nvmf_tgt")
    why = "/nonexistent/bin/nvmf_tgt is not an executable file"
    disks = daemon.disks()
    with pytest.raises(GRPCError) as err:
        await disks.DiskCreate(dpb.DiskCreateRequest(disk_type=BLOCK, disk_name="d1", disk_path=disk_file(daemon.root)))
    assert err.value.status == Status.FAILED_PRECONDITION and why in (err.value.message or "")
    replica = inst.InstanceSpec(
        name="r1", type="replica", data_engine=V2, spdk_instance_spec=inst.SpdkInstanceSpec(disk_name="d1", size=4096)
    )
    with pytest.raises(GRPCError) as err:
        await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=replica))
    assert err.value.status == Status.FAILED_PRECONDITION and why in (err.value.message or "")
    assert why in daemon.stderr()  # said once in the daemon's log
    # V1 is untouched.
    created = await daemon.pm().ProcessCreate(_create(spec("p1")))
    assert created.status.state == "running"


def _create(process_spec: Any) -> Any:
    from imd.api.gen.imrpc import imrpc_pb2 as pm

    return pm.ProcessCreateRequest(spec=process_spec)


async def test_a_target_that_dies_at_once_is_reported_with_its_log(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    script = tmp_path / "dying-nvmf_tgt"
    script.write_text("#!/bin/sh\necho 'EAL: cannot reserve memory' >&2\nexit 3\n")
    script.chmod(0o755)
    daemon = await v2_daemon(daemon_factory, str(script))
    with pytest.raises(GRPCError) as err:
        await daemon.disks().DiskGet(dpb.DiskGetRequest(disk_type=BLOCK, disk_name="d1"))
    message = err.value.message or ""
    assert err.value.status == Status.FAILED_PRECONDITION
    assert "exited before answering" in message and "cannot reserve memory" in message
    # The dead target is not listed anywhere a manager looks.
    assert (await daemon.pm().ProcessList(_list())).processes == {}
    assert (await daemon.instances().InstanceList(Empty())).instances == {}


def _list() -> Any:
    from imd.api.gen.imrpc import imrpc_pb2 as pm

    return pm.ProcessListRequest()


DISK_CASES = [
    ({"disk_name": ""}, Status.INVALID_ARGUMENT, "disk_name"),
    ({"disk_name": "Bad_Name"}, Status.INVALID_ARGUMENT, "disk_name"),
    ({"disk_path": ""}, Status.INVALID_ARGUMENT, "disk_path"),
    ({"disk_path": "/nonexistent/disk.img"}, Status.INVALID_ARGUMENT, "disk_path"),
    ({"block_size": 1000}, Status.INVALID_ARGUMENT, "block_size"),
    ({"disk_uuid": "nope"}, Status.INVALID_ARGUMENT, "disk_uuid"),
    ({"disk_driver": "virtio-blk"}, Status.INVALID_ARGUMENT, "disk_driver"),
    ({"disk_type": dpb.filesystem}, Status.UNIMPLEMENTED, "disk_type"),
]


@pytest.mark.parametrize(("change", "status", "field"), DISK_CASES)
async def test_disk_bad_input_names_the_field_over_the_wire(
    daemon: RunningDaemon, change: dict[str, Any], status: Status, field: str
) -> None:
    fields: dict[str, Any] = {
        "disk_type": BLOCK,
        "disk_name": "d1",
        "disk_path": disk_file(daemon.root),
        "block_size": 4096,
    }
    fields.update(change)
    with pytest.raises(GRPCError) as err:
        await daemon.disks().DiskCreate(dpb.DiskCreateRequest(**fields))
    assert err.value.status == status
    assert (err.value.message or "").startswith(f"{field}:")


INSTANCE_CASES = [
    ({"type": "shard"}, "spec.type"),
    ({"name": ""}, "spec.name"),
    ({"size": 0}, "spec.spdk_instance_spec.size"),
    ({"size": 1000}, "spec.spdk_instance_spec.size"),
    ({"replicas": {}}, "spec.spdk_instance_spec.replica_address_map"),
    ({"replicas": {"r1": "10.0.0.1"}}, "spec.spdk_instance_spec.replica_address_map[r1]"),
    ({"frontend": "ublk"}, "spec.spdk_instance_spec.frontend"),
    ({"frontend": "spdk-tcp-blockdev"}, "spec.spdk_instance_spec.frontend"),
    ({"volume": ""}, "spec.volume_name"),
]


@pytest.mark.parametrize(("change", "field"), INSTANCE_CASES)
async def test_v2_instance_bad_input_names_the_field_on_any_node(
    daemon: RunningDaemon, change: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {
        "name": "e1",
        "type": "engine",
        "volume": "vol-1",
        "size": 1 << 20,
        "replicas": {"r1": "127.0.0.1:20001"},
        "frontend": "spdk-tcp-nvmf",
    }
    values.update(change)
    request = inst.InstanceCreateRequest(
        spec=inst.InstanceSpec(
            name=values["name"],
            type=values["type"],
            volume_name=values["volume"],
            data_engine=V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(
                size=values["size"], replica_address_map=values["replicas"], frontend=values["frontend"]
            ),
        )
    )
    with pytest.raises(GRPCError) as err:
        await daemon.instances().InstanceCreate(request)
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith(f"{field}:")
    assert (await daemon.instances().InstanceList(Empty())).instances == {}


async def test_disk_service_answers_a_go_style_client_on_base_plus_two(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any]
) -> None:
    disk_pb2, disk_grpc = grpcio_modules["disk_pb2"], grpcio_modules["disk_pb2_grpc"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.base_port + 2}") as channel:
        stub = disk_grpc.DiskServiceStub(channel)
        version = await stub.VersionGet(Empty())
        assert (version.instanceManagerDiskServiceAPIVersion, version.instanceManagerDiskServiceAPIMinVersion) == (1, 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DiskGet(disk_pb2.DiskGetRequest(disk_type=1, disk_name="d1"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "v2.enabled" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DiskHealthGet(disk_pb2.DiskHealthGetRequest(disk_type=1, disk_name="d1"))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the engine proxy (imrpc.ProxyEngineService, base + 1) -----------------------------------

# The methods README lists as served; every other method of the service is
# UNIMPLEMENTED. The service's methods come from proto/ through grpcio's own
# stubs, so a method added to the proto without a decision shows up here.
ENGINE_SERVED = {
    "ServerVersionGet",
    "VolumeGet",
    "VolumeExpand",
    "ReplicaAdd",
    "ReplicaList",
    "ReplicaRemove",
    "ReplicaRebuildingStatus",
    "ReplicaRebuildingQosSet",
    "ReplicaModeUpdate",
    "MetricsGet",
    "VolumeSnapshot",
    "SnapshotList",
    "SnapshotRemove",
    "SnapshotPurge",
    "SnapshotPurgeStatus",
    "SnapshotRevert",
    "SnapshotHash",
    "SnapshotHashStatus",
    "SnapshotClone",
    "SnapshotCloneStatus",
    "VolumeSnapshotMaxCountSet",
    "VolumeSnapshotMaxSizeSet",
    "SnapshotBackup",
    "SnapshotBackupStatus",
    "BackupRestore",
    "BackupRestoreStatus",
    "BackupRestoreFinish",
}
# Served for the node rather than for an engine: no engine_name, no data_engine.
NODE_SERVED = {
    "CleanupBackupMountPoints",
    "SPDKBackingImageCreate",
    "SPDKBackingImageDelete",
    "SPDKBackingImageGet",
    "SPDKBackingImageList",
    "SPDKBackingImageWatch",
}
NOT_ENABLED = (
    "data_engine: SPDK data engine not available: data engine V2 is not enabled on this node (config v2.enabled)"
)


def proxy_calls(pb: Any, engine: str, data_engine: int) -> dict[str, Any]:
    """A valid request for each served method, naming ``engine``: whatever
    is refused is refused for the engine, not for a bad field."""
    target = pb.ProxyEngineRequest(engine_name=engine, data_engine=data_engine)
    return {
        "ServerVersionGet": target,
        "VolumeGet": target,
        "ReplicaList": target,
        "ReplicaRebuildingStatus": target,
        "MetricsGet": target,
        "VolumeExpand": pb.EngineVolumeExpandRequest(proxy_engine_request=target, expand={"size": 2 << 30}),
        "ReplicaAdd": pb.EngineReplicaAddRequest(
            proxy_engine_request=target, replica_name="r9", replica_address="tcp://127.0.0.1:20001"
        ),
        "ReplicaRemove": pb.EngineReplicaRemoveRequest(proxy_engine_request=target, replica_name="r9"),
        "ReplicaRebuildingQosSet": pb.EngineReplicaRebuildingQosSetRequest(
            proxy_engine_request=target, qos_limit_mbps=100
        ),
        "ReplicaModeUpdate": pb.EngineReplicaModeUpdateRequest(
            proxy_engine_request=target, replica_address="tcp://127.0.0.1:20001", mode=2
        ),
        "VolumeSnapshot": pb.EngineVolumeSnapshotRequest(proxy_engine_request=target),
        "SnapshotList": target,
        "SnapshotRemove": pb.EngineSnapshotRemoveRequest(proxy_engine_request=target, names=["s1"]),
        "SnapshotPurge": pb.EngineSnapshotPurgeRequest(proxy_engine_request=target),
        "SnapshotPurgeStatus": target,
        "SnapshotRevert": pb.EngineSnapshotRevertRequest(proxy_engine_request=target, name="s1"),
        "SnapshotHash": pb.EngineSnapshotHashRequest(proxy_engine_request=target, snapshot_name="s1"),
        "SnapshotHashStatus": pb.EngineSnapshotHashStatusRequest(proxy_engine_request=target, snapshot_name="s1"),
        "SnapshotClone": pb.EngineSnapshotCloneRequest(
            proxy_engine_request=target,
            from_engine_address="127.0.0.1:20001",
            from_engine_name="e0",
            snapshot_name="s1",
        ),
        "SnapshotCloneStatus": target,
        "VolumeSnapshotMaxCountSet": pb.EngineVolumeSnapshotMaxCountSetRequest(
            proxy_engine_request=target, count={"count": 10}
        ),
        "VolumeSnapshotMaxSizeSet": pb.EngineVolumeSnapshotMaxSizeSetRequest(
            proxy_engine_request=target, size={"size": 1 << 30}
        ),
        "SnapshotBackup": pb.EngineSnapshotBackupRequest(
            proxy_engine_request=target, backup_name="b1", snapshot_name="s1", backup_target="vfs:///nonexistent"
        ),
        "SnapshotBackupStatus": pb.EngineSnapshotBackupStatusRequest(proxy_engine_request=target, backup_name="b1"),
        "BackupRestore": pb.EngineBackupRestoreRequest(
            proxy_engine_request=target,
            url="vfs:///nonexistent?backup=backup-1&volume=v1",
            target="vfs:///nonexistent",
            volume_name="v1",
        ),
        "BackupRestoreStatus": target,
        "BackupRestoreFinish": pb.EngineBackupRestoreFinishRequest(proxy_engine_request=target),
    }


def node_calls(pb: Any) -> dict[str, Any]:
    """A valid request for each method served for the node."""
    return {
        "CleanupBackupMountPoints": Empty(),
        "SPDKBackingImageCreate": pb.SPDKBackingImageCreateRequest(
            name="bi1",
            backing_image_uuid="u1",
            disk_uuid="0a6e1b3c-9d2f-4e7a-8b1c-2d3e4f5a6b7c",
            size=1 << 20,
            checksum="0" * 128,
            from_address="http://127.0.0.1:9/bi1",
        ),
        "SPDKBackingImageDelete": pb.SPDKBackingImageDeleteRequest(
            name="bi1", disk_uuid="0a6e1b3c-9d2f-4e7a-8b1c-2d3e4f5a6b7c"
        ),
        "SPDKBackingImageGet": pb.SPDKBackingImageGetRequest(
            name="bi1", disk_uuid="0a6e1b3c-9d2f-4e7a-8b1c-2d3e4f5a6b7c"
        ),
        "SPDKBackingImageList": Empty(),
        "SPDKBackingImageWatch": Empty(),
    }


def proxy_answers(daemon: RunningDaemon, grpcio: dict[str, Any], calls: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """(status code, details) of each call, over grpcio on base + 1."""
    stub_class = grpcio["proxy_pb2_grpc"].ProxyEngineServiceStub
    answers = {}
    with grpc.insecure_channel(f"127.0.0.1:{daemon.base_port + 1}") as channel:
        stub = stub_class(channel)
        for name, request in calls.items():
            try:
                reply = getattr(stub, name)(request, timeout=10)
                if not isinstance(reply, message.Message):  # a server stream
                    list(reply)
                answers[name] = (grpc.StatusCode.OK, "")
            except grpc.RpcError as exc:
                answers[name] = (exc.code(), exc.details() or "")
    return answers


async def test_proxy_methods_imd_does_not_serve_are_unimplemented_naming_themselves(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any]
) -> None:
    service = grpcio_modules["proxy_pb2"].DESCRIPTOR.services_by_name["ProxyEngineService"]
    methods = {m.name: m for m in service.methods}
    served = ENGINE_SERVED | NODE_SERVED
    assert set(methods) > served
    not_served = sorted(set(methods) - served)
    assert len(not_served) == 7  # see README "Not yet"
    calls = {name: message_factory.GetMessageClass(methods[name].input_type)() for name in not_served}
    answers = await asyncio.to_thread(proxy_answers, daemon, grpcio_modules, calls)
    for name in not_served:
        assert answers[name] == (grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served by imd's engine proxy"), name


async def test_every_served_proxy_method_is_failed_precondition_without_v2(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any]
) -> None:
    pb = grpcio_modules["proxy_pb2"]
    calls = proxy_calls(pb, "e1", V2)
    assert set(calls) == ENGINE_SERVED and set(node_calls(pb)) == NODE_SERVED
    answers = await asyncio.to_thread(proxy_answers, daemon, grpcio_modules, calls | node_calls(pb))
    expected = {name: (grpc.StatusCode.FAILED_PRECONDITION, NOT_ENABLED) for name in ENGINE_SERVED | NODE_SERVED}
    # A node without V2 holds no backing image and no backup mount: the
    # manager's poll of every node gets an empty list, and a clean-up has
    # nothing to do, rather than an error.
    expected["SPDKBackingImageList"] = (grpc.StatusCode.OK, "")
    expected["CleanupBackupMountPoints"] = (grpc.StatusCode.OK, "")
    assert answers == expected
    # An unknown data engine is UNIMPLEMENTED on every method, V2 or not.
    unknown = await asyncio.to_thread(
        proxy_answers, daemon, grpcio_modules, proxy_calls(grpcio_modules["proxy_pb2"], "e1", 7)
    )
    assert unknown == {
        name: (grpc.StatusCode.UNIMPLEMENTED, "data_engine: unknown data engine 7") for name in ENGINE_SERVED
    }


async def test_a_v1_engine_is_failed_precondition_on_every_proxy_method(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any]
) -> None:
    v1 = inst.InstanceSpec(
        name="vol-e-0",
        type="engine",
        volume_name="vol",
        process_instance_spec=inst.ProcessInstanceSpec(binary="/bin/sleep", args=["1000"]),
    )
    await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=v1))
    why = (
        "engine_name: engine vol-e-0 is a data engine V1 process, with a proxy of its own; "
        "this service operates the V2 engines imd hosts"
    )
    pb = grpcio_modules["proxy_pb2"]
    for data_engine in (common.DATA_ENGINE_V1, V2):  # asked as V1, or as V2 by mistake: the same answer
        answers = await asyncio.to_thread(
            proxy_answers, daemon, grpcio_modules, proxy_calls(pb, "vol-e-0", data_engine)
        )
        assert answers == {name: (grpc.StatusCode.FAILED_PRECONDITION, why) for name in ENGINE_SERVED}, data_engine
    got = await daemon.instances().InstanceGet(inst.InstanceGetRequest(name="vol-e-0"))
    assert got.status.state == "running"  # refused, and untouched


@pytest.mark.parametrize(
    ("disk_fields", "field"),
    [
        ({"disk_name": "d1", "lvs_name": "d2"}, "spec.spdk_instance_spec.lvs_name"),
        ({"lvs_name": "Not_A_Name"}, "spec.spdk_instance_spec.lvs_name"),
        ({}, "spec.spdk_instance_spec.disk_name"),
    ],
)
async def test_a_replica_names_its_disk_consistently_on_any_node(
    daemon: RunningDaemon, disk_fields: dict[str, str], field: str
) -> None:
    """lvs_name names the disk too (its lvstore is named after it): a
    mismatch is the caller's mistake, answered before V2's availability."""
    spec = inst.InstanceSpec(
        name="r1",
        type="replica",
        data_engine=V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(
            size=1 << 20, disk_name=disk_fields.get("disk_name", ""), lvs_name=disk_fields.get("lvs_name", "")
        ),
    )
    with pytest.raises(GRPCError) as err:
        await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=spec))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith(f"{field}:")
