"""``/ProcessManagerService/*``: Longhorn's process-manager API."""

from __future__ import annotations

from typing import Any

from imd.api import convert
from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.status import InFlight, Servicer, recv, rpc
from imd.api.streams import EventEncoder, pump_events, pump_lines
from imd.services.processes import ProcessService


class ProcessManagerServicer(Servicer, imrpc_grpc.ProcessManagerServiceBase):
    def __init__(self, processes: ProcessService, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.processes = processes
        self._encode = EventEncoder(lambda event: convert.process_response(event.view))

    @rpc
    async def ProcessCreate(self, stream: Any) -> None:
        request: pm.ProcessCreateRequest = await recv(stream)
        view = await self.processes.create(convert.process_spec(request))
        await stream.send_message(convert.process_response(view))

    @rpc
    async def ProcessDelete(self, stream: Any) -> None:
        request: pm.ProcessDeleteRequest = await recv(stream)
        view = await self.processes.delete(request.name, request.uuid)
        await stream.send_message(convert.process_response(view))

    @rpc
    async def ProcessGet(self, stream: Any) -> None:
        request: pm.ProcessGetRequest = await recv(stream)
        await stream.send_message(convert.process_response(self.processes.get(request.name)))

    @rpc
    async def ProcessList(self, stream: Any) -> None:
        await recv(stream)
        reply = pm.ProcessListResponse()
        for view in self.processes.list():
            reply.processes[view.name].CopyFrom(convert.process_response(view))
        await stream.send_message(reply)

    @rpc
    async def ProcessLog(self, stream: Any) -> None:
        request: pm.LogRequest = await recv(stream)
        await pump_lines(stream, self.processes.log_lines(request.name, follow=request.follow))

    @rpc
    async def ProcessWatch(self, stream: Any) -> None:
        await recv(stream)
        await pump_events(stream, self.processes.watch(), self._encode, self.in_flight.metrics, "process")

    @rpc
    async def ProcessReplace(self, stream: Any) -> None:
        request: pm.ProcessReplaceRequest = await recv(stream)
        view = await self.processes.replace(convert.process_spec(request), request.terminate_signal)
        await stream.send_message(convert.process_response(view))

    @rpc
    async def VersionGet(self, stream: Any) -> None:
        await recv(stream)
        await stream.send_message(convert.version_response(self.processes.version()))
