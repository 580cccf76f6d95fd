"""Bad input of every field gets INVALID_ARGUMENT naming the field, and the
daemon carries on with everything it already supervised."""

from __future__ import annotations

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hypothesis import given, settings
from hypothesis import strategies as st

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.errors import InvalidArgument
from imd.services.validation import PROCESS_FIELDS, validate_name, validate_spec
from imd.supervisor.model import ProcessSpec
from tests.helpers import SLEEP, RunningDaemon, spec

BAD_SPECS = [
    (pm.ProcessSpec(name="", binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name="UPPER", binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name="a/b", binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name="..", binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name=".", binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name="x" * 65, binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name="sp ace", binary=SLEEP), "spec.name"),
    (pm.ProcessSpec(name="ok", binary=""), "spec.binary"),
    (pm.ProcessSpec(name="ok", binary="sleep"), "spec.binary"),
    (pm.ProcessSpec(name="ok", binary="/nonexistent"), "spec.binary"),
    (pm.ProcessSpec(name="ok", binary="/tmp"), "spec.binary"),
    (pm.ProcessSpec(name="ok", binary=SLEEP, args=["a\0b"]), "spec.args[0]"),
    (pm.ProcessSpec(name="ok", binary=SLEEP, port_count=-1), "spec.port_count"),
    (pm.ProcessSpec(name="ok", binary=SLEEP, port_count=1, port_args=["a", "b"]), "spec.port_count"),
    (pm.ProcessSpec(name="ok", binary=SLEEP, port_count=1, port_args=["a\0"]), "spec.port_args[0]"),
]


@pytest.mark.asyncio
async def test_bad_specs_are_rejected_naming_the_field(daemon: RunningDaemon) -> None:
    stub = daemon.pm()
    survivor = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("survivor")))
    for bad, field in BAD_SPECS:
        for call in ("create", "replace"):
            with pytest.raises(GRPCError) as err:
                if call == "create":
                    await stub.ProcessCreate(pm.ProcessCreateRequest(spec=bad))
                else:
                    await stub.ProcessReplace(pm.ProcessReplaceRequest(spec=bad, terminate_signal="SIGHUP"))
            assert err.value.status == Status.INVALID_ARGUMENT, (bad, call)
            assert (err.value.message or "").startswith(field + ":"), (err.value.message, field)
    listing = await stub.ProcessList(pm.ProcessListRequest())
    assert list(listing.processes) == ["survivor"]
    assert listing.processes["survivor"].status.uuid == survivor.status.uuid
    assert listing.processes["survivor"].status.state == "running"


@pytest.mark.asyncio
async def test_missing_spec_is_invalid_argument(daemon: RunningDaemon) -> None:
    with pytest.raises(GRPCError) as err:
        await daemon.pm().ProcessCreate(pm.ProcessCreateRequest())
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith("spec:")


@pytest.mark.asyncio
@pytest.mark.parametrize("call", ["get", "delete", "log"])
async def test_bad_names_in_lookups(daemon: RunningDaemon, call: str) -> None:
    stub = daemon.pm()
    for bad in ("", "../x", "A"):
        with pytest.raises(GRPCError) as err:
            if call == "get":
                await stub.ProcessGet(pm.ProcessGetRequest(name=bad))
            elif call == "delete":
                await stub.ProcessDelete(pm.ProcessDeleteRequest(name=bad))
            else:
                async with stub.ProcessLog.open() as stream:
                    await stream.send_message(pm.LogRequest(name=bad), end=True)
                    await stream.recv_message()
        assert err.value.status == Status.INVALID_ARGUMENT
        assert (err.value.message or "").startswith("name:")


@pytest.mark.asyncio
async def test_oversized_request_is_resource_exhausted(daemon: RunningDaemon) -> None:
    stub = daemon.pm()
    huge = pm.ProcessSpec(name="huge", binary=SLEEP, args=["x" * (5 * 1024 * 1024)])
    with pytest.raises(GRPCError) as err:
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=huge))
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    ok = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("fine")))
    assert ok.status.state == "running"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_accepted_name_is_a_plain_file_name(name: str) -> None:
    try:
        validate_name(name, "spec.name")
    except InvalidArgument as exc:
        assert exc.field == "spec.name"
        return
    assert "/" not in name and name not in (".", "..") and 0 < len(name) <= 64
    assert name == name.lower() and name.isascii()


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        ProcessSpec,
        name=st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True),
        binary=st.sampled_from([SLEEP, "/bin/true", "", "/nope", "rel"]),
        args=st.lists(st.text(max_size=5), max_size=3).map(tuple),
        port_count=st.integers(-3, 5),
        port_args=st.lists(st.text(max_size=5), max_size=6).map(tuple),
    )
)
def test_validation_either_accepts_or_names_a_field(candidate: ProcessSpec) -> None:
    try:
        validate_spec(candidate, PROCESS_FIELDS)
    except InvalidArgument as exc:
        assert exc.field is not None and exc.field.startswith("spec.")
        return
    assert candidate.port_count >= len(candidate.port_args) >= 0
    assert candidate.binary in (SLEEP, "/bin/true")
