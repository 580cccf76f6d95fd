"""imd.api.status.rpc, the boundary every handler runs inside: a handler
must always end with a status. A CancelledError that is not the handler's
own cancellation (a task it awaited was cancelled by someone else, e.g. a
delete preempting a create) would end the handler without one, and the
client would wait forever; the client going away must still cancel it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd import errors
from imd.api.status import InFlight, Servicer, grpc_error, rpc

pytestmark = pytest.mark.asyncio


class Probe(Servicer):
    def __init__(self) -> None:
        super().__init__(InFlight())
        self.entered = asyncio.Event()

    @rpc
    async def Preempted(self, stream: Any) -> None:
        work = asyncio.ensure_future(asyncio.sleep(30))  # long work that never ends by itself
        asyncio.get_running_loop().call_later(0.01, work.cancel)  # someone else preempts it
        await work

    @rpc
    async def Slow(self, stream: Any) -> None:
        self.entered.set()
        await asyncio.sleep(30)  # a slow handler: the test ends it, never waits it out


def answered(probe: Probe, method: str, code: str) -> float | None:
    registry = probe.in_flight.metrics.registry
    return registry.get_sample_value("imd_grpc_requests_total", {"method": method, "code": code})


async def test_a_cancelled_dependency_is_answered_unavailable() -> None:
    probe = Probe()
    with pytest.raises(GRPCError) as err:
        await asyncio.wait_for(probe.Preempted(None), 5)
    assert err.value.status == Status.UNAVAILABLE
    assert err.value.message == "Preempted: the operation was cancelled inside the daemon"
    assert probe.in_flight.count == 0
    assert answered(probe, "Preempted", "UNAVAILABLE") == 1


async def test_the_handlers_own_cancellation_still_cancels_it() -> None:
    probe = Probe()
    handler = asyncio.ensure_future(probe.Slow(None))
    await probe.entered.wait()
    handler.cancel()  # what grpclib does when the client resets the stream
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert probe.in_flight.count == 0
    assert answered(probe, "Slow", "CANCELLED") == 1


class Refusing(Servicer):
    def __init__(self, exc: Exception) -> None:
        super().__init__(InFlight())
        self.exc = exc

    @rpc
    async def Refused(self, stream: Any) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.PermissionDenied("403 Forbidden: InvalidAccessKeyId", field="backup_target"), Status.PERMISSION_DENIED),
        (errors.DataLoss("block backupstore/volumes/x.blk: checksum mismatch"), Status.DATA_LOSS),
        (errors.Unavailable("backup target: connect timed out after 3s"), Status.UNAVAILABLE),
    ],
)
async def test_backup_target_errors_get_their_own_status(exc: errors.ImdError, status: Status) -> None:
    with pytest.raises(GRPCError) as err:
        await Refusing(exc).Refused(None)
    assert err.value.status == status
    assert err.value.message == str(exc)
    assert grpc_error(exc).status == status
