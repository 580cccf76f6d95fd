"""SPDKBackingImage* on the wire, on any machine: a real daemon whose V2
cannot run answers with the field a bad request got wrong first, then with
FAILED_PRECONDITION and the reason V2 is not there; List is an empty map
(as InstanceList lists no V2 instance there). The CLI says the same. A real
target is in tests/v2/test_v2_backing_images_spdk.py."""

from __future__ import annotations

import hashlib
import uuid as uuidlib

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import proxy_grpc
from imd.api.gen.imrpc import proxy_pb2 as ppb
from tests.conftest import DaemonFactory
from tests.test_cli import imd

pytestmark = pytest.mark.asyncio

WHY = "/nonexistent/bin/nvmf_tgt is not an executable file"
CHECKSUM = hashlib.sha512(b"image").hexdigest()


def create(**overrides: object) -> ppb.SPDKBackingImageCreateRequest:
    fields: dict[str, object] = {
        "name": "img",
        "backing_image_uuid": "bi-uuid",
        "disk_uuid": str(uuidlib.uuid4()),
        "size": 1 << 20,
        "checksum": CHECKSUM,
        "from_address": "http://127.0.0.1:1/img",
    }
    fields.update(overrides)
    return ppb.SPDKBackingImageCreateRequest(**fields)  # type: ignore[arg-type]


async def test_bad_input_names_its_field_then_v2_s_absence_is_the_answer(daemon_factory: DaemonFactory) -> None:
    daemon = await daemon_factory(v2={"enabled": True, "target_binary": "/nonexistent/bin/nvmf_tgt"})
    proxy = proxy_grpc.ProxyEngineServiceStub(daemon.channel(offset=1))
    for overrides, field in (
        ({"name": ""}, "name"),
        ({"name": "Bad_Name"}, "name"),
        ({"backing_image_uuid": ""}, "backing_image_uuid"),
        ({"disk_uuid": ""}, "disk_uuid"),
        ({"disk_uuid": "lvs-1"}, "disk_uuid"),
        ({"size": 0}, "size"),
        ({"checksum": "abc"}, "checksum"),
        ({"from_address": ""}, "from_address"),
        ({"from_address": "file:///img"}, "from_address"),
        ({"from_address": "10.0.0.2:8504"}, "src_lvs_uuid"),
        ({"from_address": "10.0.0.2:8504", "src_lvs_uuid": "x"}, "src_lvs_uuid"),
    ):
        with pytest.raises(GRPCError) as err:
            await proxy.SPDKBackingImageCreate(create(**overrides))
        assert err.value.status == Status.INVALID_ARGUMENT, (overrides, err.value)
        assert (err.value.message or "").startswith(f"{field}:"), (overrides, err.value.message)
    with pytest.raises(GRPCError) as err:
        await proxy.SPDKBackingImageCreate(create())
    assert err.value.status == Status.FAILED_PRECONDITION and WHY in (err.value.message or "")
    disk = str(uuidlib.uuid4())
    for call in (
        proxy.SPDKBackingImageGet(ppb.SPDKBackingImageGetRequest(name="img", disk_uuid=disk)),
        proxy.SPDKBackingImageDelete(ppb.SPDKBackingImageDeleteRequest(name="img", disk_uuid=disk)),
    ):
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status == Status.FAILED_PRECONDITION and WHY in (err.value.message or "")
    with pytest.raises(GRPCError) as err:
        await proxy.SPDKBackingImageGet(ppb.SPDKBackingImageGetRequest(name="img", disk_uuid=""))
    assert err.value.status == Status.INVALID_ARGUMENT and (err.value.message or "").startswith("disk_uuid:")
    listed = await proxy.SPDKBackingImageList(Empty())
    assert dict(listed.backing_images) == {}
    with pytest.raises(GRPCError) as err:
        async with proxy.SPDKBackingImageWatch.open() as stream:
            await stream.send_message(Empty(), end=True)
            async for _ in stream:
                pass
    assert err.value.status == Status.FAILED_PRECONDITION

    sock = ["--socket", str(daemon.socket)]
    listed_cli = await imd(*sock, "backing-image", "list")
    assert listed_cli.returncode == 0 and listed_cli.stdout.split() == [
        "NAME",
        "DISK_UUID",
        "STATE",
        "PROGRESS",
        "SIZE",
        "CHECKSUM",
        "ERROR",
    ]
    bad = await imd(
        *sock,
        "backing-image",
        "create",
        "img",
        "--disk-uuid",
        disk,
        "--size",
        "1M",
        "--checksum",
        "abc",
        "--from",
        "http://127.0.0.1:1/img",
    )
    assert bad.returncode == 1 and "INVALID_ARGUMENT: checksum" in bad.stderr


async def test_a_node_without_v2_lists_no_images(daemon_factory: DaemonFactory) -> None:
    daemon = await daemon_factory()
    proxy = proxy_grpc.ProxyEngineServiceStub(daemon.channel(offset=1))
    assert dict((await proxy.SPDKBackingImageList(Empty())).backing_images) == {}
    with pytest.raises(GRPCError) as err:
        await proxy.SPDKBackingImageCreate(create())
    assert err.value.status == Status.FAILED_PRECONDITION
