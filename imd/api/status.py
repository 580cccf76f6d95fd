"""The RPC boundary: one place where failures become gRPC statuses.

Every servicer method is wrapped by ``rpc``. Inside, code raises the
domain's exceptions (imd.errors); here each maps to exactly one status code,
with a message that names the field at fault. Anything unexpected is logged
with its traceback and answered INTERNAL: the daemon keeps serving and
nothing it supervises is touched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from imd import errors
from imd.metrics import Metrics

log = logging.getLogger("imd.api")

STATUS_OF: dict[type[errors.ImdError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.ResourceExhausted: Status.RESOURCE_EXHAUSTED,  # PortsExhausted too
    errors.Conflict: Status.ABORTED,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.Unimplemented: Status.UNIMPLEMENTED,
    errors.StartFailed: Status.UNAVAILABLE,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.PermissionDenied: Status.PERMISSION_DENIED,
    errors.DataLoss: Status.DATA_LOSS,
}

# grpc-go's default receive limit, which Longhorn's clients also use.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def grpc_error(exc: errors.ImdError) -> GRPCError:
    for cls in type(exc).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            return GRPCError(status, str(exc))
    return GRPCError(Status.INTERNAL, str(exc))


class BoundedProtoCodec(ProtoCodec):
    """grpclib enforces no receive limit; refuse oversized requests before
    decoding them."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > MAX_MESSAGE_BYTES:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            )
        return super().decode(data, message_type)


class InFlight:
    """What the RPC boundary keeps: the RPCs inside it, so a drain can wait
    for them, and what each answered and how long it took (metrics)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class Servicer:
    """Base of our servicers: holds the shared in-flight counter."""

    def __init__(self, in_flight: InFlight) -> None:
        self.in_flight = in_flight


S = TypeVar("S", bound=Servicer)


def rpc(
    method: Callable[[S, Any], Coroutine[Any, Any, None]],
) -> Callable[[S, Any], Coroutine[Any, Any, None]]:
    name = method.__name__

    @functools.wraps(method)
    async def boundary(self: S, stream: Any) -> None:
        in_flight = self.in_flight
        in_flight.enter()
        began = time.perf_counter()
        code = "OK"
        try:
            await method(self, stream)
        except errors.ImdError as exc:
            error = grpc_error(exc)
            code = error.status.name
            raise error from None
        except NotImplementedError as exc:
            # grpclib raises this for a compressed request message.
            code = Status.UNIMPLEMENTED.name
            raise GRPCError(
                Status.UNIMPLEMENTED, f"{exc}: send messages uncompressed (grpc-encoding identity)"
            ) from None
        except GRPCError as exc:
            code = exc.status.name
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling() == 0:
                # Not this handler's cancellation (the client going away, a
                # shutdown) but a task it awaited being cancelled: re-raising
                # would end the handler without a status, and the client
                # would wait forever. Answer instead, and say so in the log.
                code = Status.UNAVAILABLE.name
                log.error("%s: work it waited for was cancelled", name)
                raise GRPCError(Status.UNAVAILABLE, f"{name}: the operation was cancelled inside the daemon") from None
            code = Status.CANCELLED.name
            raise
        except Exception:
            code = Status.INTERNAL.name
            log.exception("unexpected error in %s", name)
            raise GRPCError(Status.INTERNAL, f"internal error in {name}") from None
        finally:
            in_flight.leave()
            metrics = in_flight.metrics
            metrics.rpc_requests.labels(name, code).inc()
            metrics.rpc_duration.labels(name).observe(time.perf_counter() - began)

    return boundary


async def recv(stream: Any) -> Any:
    """The single request message of a unary or server-streaming call."""
    request = await stream.recv_message()
    if request is None:
        raise errors.InvalidArgument("missing request message")
    return request
