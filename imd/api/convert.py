"""Protobuf <-> domain conversion. The only module that knows both shapes."""

from __future__ import annotations

from typing import Any

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.errors import InvalidArgument
from imd.services.processes import VersionInfo
from imd.supervisor.model import InstanceInfo, ProcessSpec, ProcessView


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
    return inst.InstanceResponse(
        spec=inst.InstanceSpec(
            name=view.name,
            type=view.instance.type,
            volume_name=view.instance.volume_name,
            port_count=view.port_count,
            port_args=view.port_args,
            process_instance_spec=inst.ProcessInstanceSpec(binary=view.binary, args=view.args),
        ),
        status=inst.InstanceStatus(**_status_fields(view)),
        deleted=view.deleted,
    )


def version_response(info: VersionInfo) -> pm.VersionResponse:
    return pm.VersionResponse(
        version=info.version,
        gitCommit=info.git_commit,
        buildDate=info.build_date,
        instanceManagerAPIVersion=info.api_version,
        instanceManagerAPIMinVersion=info.api_min_version,
        instanceManagerProxyAPIVersion=info.proxy_api_version,
        instanceManagerProxyAPIMinVersion=info.proxy_api_min_version,
    )
