"""imrpc.InstanceService for data engine V1, and the refusals for V2 (on a
node without it) and unknown engines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import instance_pb2 as inst
from tests.helpers import HEALTH_SERVER, PY, SLEEP, RunningDaemon, wait_log

pytestmark = pytest.mark.asyncio


def ispec(name: str, binary: str = SLEEP, args: list[str] | None = None, **kw: Any) -> inst.InstanceSpec:
    return inst.InstanceSpec(
        name=name,
        type=kw.pop("type", "engine"),
        volume_name=kw.pop("volume_name", "vol-1"),
        process_instance_spec=inst.ProcessInstanceSpec(binary=binary, args=["1000"] if args is None else args),
        **kw,
    )


async def test_v1_lifecycle(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    created = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("e1")))
    assert created.status.state == "running"
    assert (created.spec.type, created.spec.volume_name) == ("engine", "vol-1")
    got = await stub.InstanceGet(inst.InstanceGetRequest(name="e1"))
    assert got.status.uuid == created.status.uuid
    listing = await stub.InstanceList(Empty())
    assert listing.instances["e1"].spec.process_instance_spec.binary == SLEEP
    with pytest.raises(GRPCError) as err:
        await stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", uuid="stale"))
    assert err.value.status == Status.NOT_FOUND
    deleted = await stub.InstanceDelete(inst.InstanceDeleteRequest(name="e1", uuid=created.status.uuid))
    assert deleted.deleted


async def test_v1_replace_keeps_type_and_volume(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    health = {"port_count": 1, "port_args": ["--listen,127.0.0.1:"]}
    old = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("e2", PY, [HEALTH_SERVER], **health)))
    new = await stub.InstanceReplace(
        inst.InstanceReplaceRequest(spec=ispec("e2", PY, [HEALTH_SERVER], **health), terminate_signal="SIGHUP")
    )
    assert new.status.uuid != old.status.uuid and new.status.state == "running"
    assert (new.spec.type, new.spec.volume_name) == ("engine", "vol-1")


async def test_instance_watch_sends_one_empty_per_change(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    async with stub.InstanceWatch.open() as stream:
        await stream.send_message(Empty(), end=True)
        await stream.recv_initial_metadata()
        await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("e3")))
        await stub.InstanceDelete(inst.InstanceDeleteRequest(name="e3"))
        async with asyncio.timeout(10):
            got = [await stream.recv_message() for _ in range(3)]  # running, stopping, stopped
        assert all(isinstance(m, Empty) for m in got)
        await stream.cancel()


async def test_instance_log(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("e4", "/bin/sh", ["-c", "echo hello; sleep 100"])))
    await wait_log(daemon, "e4", "hello\n")
    async with stub.InstanceLog.open() as stream:
        await stream.send_message(inst.InstanceLogRequest(name="e4"), end=True)
        lines = [reply.line async for reply in stream]
    assert lines == ["hello"]


async def test_missing_process_instance_spec_names_the_field(daemon: RunningDaemon) -> None:
    spec = inst.InstanceSpec(name="e5", type="engine")
    with pytest.raises(GRPCError) as err:
        await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=spec))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith("spec.process_instance_spec:")
    with pytest.raises(GRPCError) as err:
        await daemon.instances().InstanceCreate(inst.InstanceCreateRequest())
    assert (err.value.message or "").startswith("spec:")


async def test_bad_binary_names_the_instance_field(daemon: RunningDaemon) -> None:
    with pytest.raises(GRPCError) as err:
        await daemon.instances().InstanceCreate(inst.InstanceCreateRequest(spec=ispec("e6", "/missing")))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith("spec.process_instance_spec.binary:")


V2 = common.DATA_ENGINE_V2
UNKNOWN_ENGINE = 7


def v2_replica_spec(name: str = "v") -> inst.InstanceSpec:
    return inst.InstanceSpec(
        name=name,
        type="replica",
        data_engine=V2,
        spdk_instance_spec=inst.SpdkInstanceSpec(disk_name="disk-1", size=1 << 20),
    )


def _all_engine_calls(stub: Any, engine: Any) -> list[tuple[str, Any]]:
    v2_spec = v2_replica_spec() if engine == V2 else ispec("v", data_engine=engine)
    calls = [
        ("InstanceCreate", inst.InstanceCreateRequest(spec=v2_spec)),
        ("InstanceDelete", inst.InstanceDeleteRequest(name="v", data_engine=engine)),
        ("InstanceGet", inst.InstanceGetRequest(name="v", data_engine=engine)),
        ("InstanceLog", None),
        ("LogSetLevel", inst.LogSetLevelRequest(level="debug", data_engine=engine)),
        ("LogSetFlags", inst.LogSetFlagsRequest(flags="x", data_engine=engine)),
        ("LogGetLevel", inst.LogGetLevelRequest(data_engine=engine)),
        ("LogGetFlags", inst.LogGetFlagsRequest(data_engine=engine)),
    ]
    return [(name, getattr(stub, name)(request)) for name, request in calls if request is not None]


def _not_served_calls(stub: Any, engine: Any) -> list[tuple[str, Any]]:
    calls = [
        ("InstanceReplace", inst.InstanceReplaceRequest(spec=ispec("v", data_engine=engine))),
        ("InstanceSuspend", inst.InstanceSuspendRequest(name="v", data_engine=engine)),
        ("InstanceResume", inst.InstanceResumeRequest(name="v", data_engine=engine)),
        ("InstanceSwitchOverTarget", inst.InstanceSwitchOverTargetRequest(name="v", data_engine=engine)),
        ("InstanceDeleteTarget", inst.InstanceDeleteTargetRequest(name="v", data_engine=engine)),
    ]
    return [(name, getattr(stub, name)(request)) for name, request in calls]


async def test_v2_without_v2_configured_is_a_failed_precondition_with_the_reason(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    for name, call in _all_engine_calls(stub, V2):
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status == Status.FAILED_PRECONDITION, name
        message = err.value.message or ""
        assert "SPDK data engine not available" in message, name
        assert "v2.enabled" in message, name  # the reason, not just the refusal
    async with stub.InstanceLog.open() as stream:
        await stream.send_message(inst.InstanceLogRequest(name="v", data_engine=V2), end=True)
        with pytest.raises(GRPCError) as err:
            await stream.recv_message()
    assert err.value.status == Status.FAILED_PRECONDITION
    for name, call in _not_served_calls(stub, V2):
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status == Status.UNIMPLEMENTED, name
        assert "V2" in (err.value.message or ""), name
    assert (await stub.InstanceList(Empty())).instances == {}
    # V1 goes on regardless.
    created = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("v1-ok")))
    assert created.status.state == "running"


async def test_unknown_engines_are_unimplemented_on_every_method(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    for name, call in [*_all_engine_calls(stub, UNKNOWN_ENGINE), *_not_served_calls(stub, UNKNOWN_ENGINE)]:
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status == Status.UNIMPLEMENTED, name
        assert "unknown data engine 7" in (err.value.message or ""), name
        assert "data_engine" in (err.value.message or ""), name
    assert (await stub.InstanceList(Empty())).instances == {}


@pytest.mark.parametrize(
    "method", ["InstanceSuspend", "InstanceResume", "InstanceSwitchOverTarget", "InstanceDeleteTarget"]
)
async def test_v2_only_methods_are_unimplemented_for_v1(daemon: RunningDaemon, method: str) -> None:
    request = getattr(inst, f"{method}Request")(name="x")
    with pytest.raises(GRPCError) as err:
        await getattr(daemon.instances(), method)(request)
    assert err.value.status == Status.UNIMPLEMENTED
    assert method in (err.value.message or "")


async def test_log_level_and_flags_round_trip(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    assert (await stub.LogGetLevel(inst.LogGetLevelRequest())).level == "info"
    await stub.LogSetLevel(inst.LogSetLevelRequest(level="debug"))
    assert (await stub.LogGetLevel(inst.LogGetLevelRequest())).level == "debug"
    with pytest.raises(GRPCError) as err:
        await stub.LogSetLevel(inst.LogSetLevelRequest(level="loud"))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith("level:")
    assert (await stub.LogGetLevel(inst.LogGetLevelRequest())).level == "debug"
    await stub.LogSetFlags(inst.LogSetFlagsRequest(flags="nvme,bdev"))
    assert (await stub.LogGetFlags(inst.LogGetFlagsRequest())).flags == "nvme,bdev"
