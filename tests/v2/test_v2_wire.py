"""Data engine V2 on the wire, on any machine: a real daemon whose V2 cannot
run (no SPDK target binary, or one that dies at once) says why, answers
V2 calls with FAILED_PRECONDITION and that reason after validating them,
names the field of every bad input, and keeps serving V1.

Field numbers are checked with grpcio's own stubs generated from proto/
(an independent client); tests/v2/test_v2_spdk.py runs the same API
against a real SPDK target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
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
