"""Protobuf <-> domain conversion. The only module that knows both shapes."""

from __future__ import annotations

from typing import Any

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_pb2
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.buildinfo import BuildInfo
from imd.errors import InvalidArgument
from imd.services.disks import DiskVersion
from imd.services.instances import V2Request, v1_instance_type, v1_target_ports
from imd.services.processes import VersionInfo
from imd.services.rates import Rates
from imd.supervisor.model import InstanceInfo, ProcessSpec, ProcessView
from imd.v2.model import ENGINE, DiskView, ReplicaLvol, V2InstanceView


def process_spec(request: pm.ProcessCreateRequest | pm.ProcessReplaceRequest) -> ProcessSpec:
    if not request.HasField("spec"):
        raise InvalidArgument("is required", field="spec")
    request_spec = request.spec
    return ProcessSpec(
        name=request_spec.name,
        binary=request_spec.binary,
        args=tuple(request_spec.args),
        port_count=request_spec.port_count,
        port_args=tuple(request_spec.port_args),
    )


def _status_fields(view: ProcessView) -> dict[str, Any]:
    """ProcessStatus and InstanceStatus share these fields (numbers differ)."""
    return {
        "state": view.state.value,
        "error_msg": view.error_msg,
        "port_start": view.port_start,
        "port_end": view.port_end,
        "uuid": view.uuid,
        "conditions": dict(view.conditions),
    }


def process_response(view: ProcessView) -> pm.ProcessResponse:
    return pm.ProcessResponse(
        spec=pm.ProcessSpec(
            name=view.name,
            binary=view.binary,
            args=view.args,
            port_count=view.port_count,
            port_args=view.port_args,
        ),
        status=pm.ProcessStatus(**_status_fields(view)),
        deleted=view.deleted,
    )


def instance_spec(
    request: inst.InstanceCreateRequest | inst.InstanceReplaceRequest,
) -> tuple[ProcessSpec, InstanceInfo]:
    if not request.HasField("spec"):
        raise InvalidArgument("is required", field="spec")
    spec = request.spec
    if not spec.HasField("process_instance_spec"):
        raise InvalidArgument("is required for data engine V1", field="spec.process_instance_spec")
    proc = spec.process_instance_spec
    return (
        ProcessSpec(
            name=spec.name,
            binary=proc.binary,
            args=tuple(proc.args),
            port_count=spec.port_count,
            port_args=tuple(spec.port_args),
        ),
        InstanceInfo(type=spec.type, volume_name=spec.volume_name),
    )


def instance_response(view: ProcessView) -> inst.InstanceResponse:
    instance_type = v1_instance_type(view.name, view.instance.type)
    target_start, target_end = v1_target_ports(instance_type, view.port_start, view.port_end)
    return inst.InstanceResponse(
        spec=inst.InstanceSpec(
            name=view.name,
            type=instance_type,
            volume_name=view.instance.volume_name,
            port_count=view.port_count,
            port_args=view.port_args,
            process_instance_spec=inst.ProcessInstanceSpec(binary=view.binary, args=view.args),
        ),
        status=inst.InstanceStatus(**_status_fields(view), target_port_start=target_start, target_port_end=target_end),
        deleted=view.deleted,
    )


def _build(build: BuildInfo) -> dict[str, str]:
    """The build fields, spelled as every Longhorn version message spells them."""
    return {"version": build.version, "gitCommit": build.git_commit, "buildDate": build.build_date}


def version_response(info: VersionInfo) -> pm.VersionResponse:
    return pm.VersionResponse(
        **_build(info.build),
        instanceManagerAPIVersion=info.api_version,
        instanceManagerAPIMinVersion=info.api_min_version,
        instanceManagerProxyAPIVersion=info.proxy_api_version,
        instanceManagerProxyAPIMinVersion=info.proxy_api_min_version,
    )


# -- data engine V2 ---------------------------------------------------------------


def instance_v2_request(request: inst.InstanceCreateRequest) -> V2Request:
    if not request.HasField("spec"):
        raise InvalidArgument("is required", field="spec")
    spec = request.spec
    if not spec.HasField("spdk_instance_spec"):
        raise InvalidArgument("is required for data engine V2", field="spec.spdk_instance_spec")
    spdk = spec.spdk_instance_spec
    return V2Request(
        name=spec.name,
        type=spec.type,
        volume_name=spec.volume_name,
        port_count=spec.port_count,
        replica_address_map=dict(spdk.replica_address_map),
        disk_name=spdk.disk_name,
        disk_uuid=spdk.disk_uuid,
        lvs_name=spdk.lvs_name,
        lvs_uuid=spdk.lvs_uuid,
        size=spdk.size,
        frontend=spdk.frontend,
        snapshot_max_count=spdk.snapshot_max_count,
        backing_image_name=spdk.backing_image_name,
    )


def instance_v2_response(view: V2InstanceView) -> inst.InstanceResponse:
    paths = [
        inst.EngineFrontendNvmeTcpPath(
            engine_name=view.name,
            target_ip=path.target_ip,
            target_port=path.target_port,
            nqn=path.nqn,
            nguid=path.nguid,
            ana_state=path.ana_state,
        )
        for path in view.paths
    ]
    return inst.InstanceResponse(
        spec=inst.InstanceSpec(
            name=view.name,
            type=view.type,
            volume_name=view.volume_name,
            port_count=1 if view.port_start else 0,
            data_engine=common.DATA_ENGINE_V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(
                replica_address_map=view.replica_address_map,
                disk_name=view.disk_name,
                disk_uuid=view.disk_uuid,
                size=view.size,
                frontend=view.frontend,
                lvs_name=view.disk_name,
                lvs_uuid=view.disk_uuid,
            ),
        ),
        status=inst.InstanceStatus(
            state=view.state.value,
            error_msg=view.error_msg,
            port_start=view.port_start,
            port_end=view.port_end,
            target_port_start=view.port_start if view.type == ENGINE else 0,
            target_port_end=view.port_end if view.type == ENGINE else 0,
            uuid=view.uuid,
            engine_name=view.name if view.type == ENGINE else "",
            endpoint=view.endpoint,
            frontend=view.frontend,
            paths=paths,
        ),
        deleted=view.deleted,
    )


def disk_response(view: DiskView, disk_id: str) -> disk_pb2.Disk:
    record = view.record
    return disk_pb2.Disk(
        id=disk_id,
        uuid=record.uuid,
        path=record.path,
        type="block",
        total_size=view.total_size,
        free_size=view.free_size,
        total_blocks=view.total_blocks,
        free_blocks=view.free_blocks,
        block_size=record.block_size,
        cluster_size=record.cluster_size,
        driver=record.driver,
        name=record.name,
        state=view.state,
    )


def replica_instance(lvol: ReplicaLvol) -> disk_pb2.ReplicaInstance:
    return disk_pb2.ReplicaInstance(
        name=lvol.name,
        uuid=lvol.uuid,
        disk_name=lvol.disk_name,
        disk_uuid=lvol.disk_uuid,
        spec_size=lvol.spec_size,
        actual_size=lvol.actual_size,
    )


def disk_version_response(info: DiskVersion) -> disk_pb2.DiskVersionResponse:
    return disk_pb2.DiskVersionResponse(
        **_build(info.build),
        instanceManagerDiskServiceAPIVersion=info.api_version,
        instanceManagerDiskServiceAPIMinVersion=info.api_min_version,
    )


def engine_version(build: BuildInfo) -> ctl.VersionOutput:
    """An engine's version; its data format is that of the mirror, 1."""
    return ctl.VersionOutput(
        version=build.version,
        gitCommit=build.git_commit,
        buildDate=build.build_date,
        dataFormatVersion=1,
        dataFormatMinVersion=1,
    )


def metrics(rates: Rates) -> ctl.Metrics:
    return ctl.Metrics(
        readThroughput=rates.read_throughput,
        writeThroughput=rates.write_throughput,
        readLatency=rates.read_latency_ns,
        writeLatency=rates.write_latency_ns,
        readIOPS=rates.read_iops,
        writeIOPS=rates.write_iops,
    )
