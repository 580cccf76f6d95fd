"""Wire compatibility, checked with grpcio (the C-core client) and stubs it
generated itself from proto/: the method paths, package-less names and field
numbers a Go client would use. Over loopback TCP and the Unix socket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

# grpcio's own health/reflection modules register the same proto symbols as
# grpclib's (which the daemon's imports load), so the messages come from
# grpclib and the calls go through grpcio's generic channel methods.
from grpclib.health.v1 import health_pb2
from grpclib.reflection.v1 import reflection_pb2

from tests.helpers import SH, SLEEP, RunningDaemon

pytestmark = pytest.mark.asyncio


def target(daemon: RunningDaemon, transport: str, offset: int) -> str:
    if transport == "unix":
        return f"unix://{daemon.socket}"
    return f"127.0.0.1:{daemon.base_port + offset}"


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_process_manager_over_grpcio(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any], transport: str
) -> None:
    pb, pb_grpc = grpcio_modules["imrpc_pb2"], grpcio_modules["imrpc_pb2_grpc"]

    def exercise() -> None:
        with grpc.insecure_channel(target(daemon, transport, 0)) as channel:
            stub = pb_grpc.ProcessManagerServiceStub(channel)
            script = "echo from-g1; exec sleep 1000"
            spec = pb.ProcessSpec(name="g1", binary=SH, args=["-c", script], port_count=1, port_args=["--p="])
            created = stub.ProcessCreate(pb.ProcessCreateRequest(spec=spec))
            assert created.status.uuid and created.status.state in ("starting", "error")
            assert created.spec.args[-1] == f"--p={created.status.port_start}"
            for _ in range(400):  # the child's line, polled (20 s at most)
                if [r.line for r in stub.ProcessLog(pb.LogRequest(name="g1"))] == ["from-g1"]:
                    break
                time.sleep(0.05)
            got = stub.ProcessGet(pb.ProcessGetRequest(name="g1"))
            assert got.status.uuid == created.status.uuid
            listing = stub.ProcessList(pb.ProcessListRequest())
            assert set(listing.processes) == {"g1"}
            version = stub.VersionGet(Empty())
            assert (version.instanceManagerAPIVersion, version.instanceManagerAPIMinVersion) == (7, 1)
            assert (version.instanceManagerProxyAPIVersion, version.instanceManagerProxyAPIMinVersion) == (
                7,
                1,
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.ProcessDelete(pb.ProcessDeleteRequest(name="g1", uuid="not-the-uuid"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            deleted = stub.ProcessDelete(pb.ProcessDeleteRequest(name="g1", uuid=created.status.uuid))
            assert deleted.deleted
            lines = [r.line for r in stub.ProcessLog(pb.LogRequest(name="g1"))]
            assert lines[0] == "from-g1"  # the log outlives the process, over field numbers of our proto
            with pytest.raises(grpc.RpcError) as err:
                stub.ProcessCreate(pb.ProcessCreateRequest())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "spec" in (err.value.details() or "")

    await asyncio.to_thread(exercise)


async def test_process_paths_have_no_package(daemon: RunningDaemon) -> None:
    def call(path: str) -> grpc.StatusCode:
        with grpc.insecure_channel(target(daemon, "tcp", 0)) as channel:
            method = channel.unary_unary(
                path, request_serializer=Empty.SerializeToString, response_deserializer=lambda b: b
            )
            try:
                method(Empty())
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]

    assert await asyncio.to_thread(call, "/ProcessManagerService/VersionGet") == grpc.StatusCode.OK
    assert await asyncio.to_thread(call, "/imrpc.ProcessManagerService/VersionGet") == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_instance_service_over_grpcio(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any], transport: str
) -> None:
    pb, pb_grpc = grpcio_modules["instance_pb2"], grpcio_modules["instance_pb2_grpc"]

    def exercise() -> None:
        with grpc.insecure_channel(target(daemon, transport, 3)) as channel:
            stub = pb_grpc.InstanceServiceStub(channel)
            spec = pb.InstanceSpec(
                name="r1",
                type="replica",
                volume_name="vol",
                port_count=10,
                port_args=["--listen,0.0.0.0:"],
                process_instance_spec=pb.ProcessInstanceSpec(binary=SLEEP, args=["1000"]),
            )
            created = stub.InstanceCreate(pb.InstanceCreateRequest(spec=spec))
            assert created.spec.type == "replica" and created.spec.volume_name == "vol"
            assert created.status.port_end - created.status.port_start == 9
            assert created.spec.process_instance_spec.args[-2:] == [
                "--listen",
                f"0.0.0.0:{created.status.port_start}",
            ]
            assert len(created.status.uuid) == 36
            listing = stub.InstanceList(Empty())
            assert set(listing.instances) == {"r1"}
            version = stub.VersionGet(Empty())
            assert version.instanceManagerAPIVersion == 7
            v2 = pb.InstanceGetRequest(name="r1", data_engine=1)
            with pytest.raises(grpc.RpcError) as err:
                stub.InstanceGet(v2)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "SPDK data engine not available" in (err.value.details() or "")
            deleted = stub.InstanceDelete(pb.InstanceDeleteRequest(name="r1", uuid=created.status.uuid))
            assert deleted.deleted

    await asyncio.to_thread(exercise)


@pytest.mark.parametrize(("transport", "offset"), [("tcp", 0), ("tcp", 3), ("unix", 0)])
async def test_health_and_reflection(daemon: RunningDaemon, transport: str, offset: int) -> None:
    def exercise() -> None:
        with grpc.insecure_channel(target(daemon, transport, offset)) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            reply = check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            info = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            responses = list(info(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
            names = {s.name for s in responses[0].list_services_response.service}
            assert "grpc.health.v1.Health" in names
            if transport == "unix":
                assert {"ProcessManagerService", "imrpc.InstanceService"} <= names
            elif offset == 0:
                assert "ProcessManagerService" in names
            else:
                assert "imrpc.InstanceService" in names

    await asyncio.to_thread(exercise)


async def test_a_compressed_request_is_unimplemented_saying_how_to_send_it(
    daemon: RunningDaemon, grpcio_modules: dict[str, Any]
) -> None:
    """README: compressed requests get UNIMPLEMENTED. grpcio compresses the
    message (gzip, grpc-encoding header and the compressed flag), as a Go
    client with a compressor would; nothing is created."""
    pb, pb_grpc = grpcio_modules["imrpc_pb2"], grpcio_modules["imrpc_pb2_grpc"]

    def exercise() -> tuple[Any, str]:
        with grpc.insecure_channel(target(daemon, "tcp", 0), compression=grpc.Compression.Gzip) as channel:
            stub = pb_grpc.ProcessManagerServiceStub(channel)
            # Large and repetitive: grpcio sends a message uncompressed when
            # gzip would not make it smaller.
            spec = pb.ProcessSpec(name="zipped", binary=SLEEP, args=["1000", "x" * 100_000])
            try:
                stub.ProcessCreate(pb.ProcessCreateRequest(spec=spec))
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

    code, details = await asyncio.to_thread(exercise)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert details.endswith("send messages uncompressed (grpc-encoding identity)"), details
    assert "zipped" not in (await daemon.pm().ProcessList(_process_list())).processes


def _process_list() -> Any:
    from imd.api.gen.imrpc import imrpc_pb2 as pm

    return pm.ProcessListRequest()
