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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from imd import errors

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
    """Counts RPCs inside the boundary, so a drain can wait for them."""

    def __init__(self) -> None:
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
    @functools.wraps(method)
    async def boundary(self: S, stream: Any) -> None:
        self.in_flight.enter()
        try:
            await method(self, stream)
        except errors.ImdError as exc:
            raise grpc_error(exc) from None
        except NotImplementedError as exc:
            # grpclib raises this for a compressed request message.
            raise GRPCError(
                Status.UNIMPLEMENTED, f"{exc}: send messages uncompressed (grpc-encoding identity)"
            ) from None
        except (GRPCError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            raise GRPCError(Status.INTERNAL, f"internal error in {method.__name__}") from None
        finally:
            self.in_flight.leave()

    return boundary


async def recv(stream: Any) -> Any:
    """The single request message of a unary or server-streaming call."""
    request = await stream.recv_message()
    if request is None:
        raise errors.InvalidArgument("missing request message")
    return request
