"""``/imdrpc.DaemonService/Status``: the daemon's status document, for
``imd status``. The document is assembled above this floor (it reads every
part of the daemon) and handed in as a callable that returns it encoded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from imd.api.gen.imdrpc import daemon_grpc
from imd.api.gen.imdrpc import daemon_pb2 as dpb
from imd.api.status import InFlight, Servicer, recv, rpc


class DaemonServicer(Servicer, daemon_grpc.DaemonServiceBase):
    def __init__(self, status: Callable[[], Awaitable[bytes]], in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self._status = status

    @rpc
    async def Status(self, stream: Any) -> None:
        await recv(stream)
        await stream.send_message(dpb.StatusResponse(json=await self._status()))
