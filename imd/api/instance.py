"""``/imrpc.InstanceService/*``: Longhorn's instance API, data engine V1.

V1 instances are processes; every call is routed by ``data_engine`` first,
so V2 and unknown engines fail the same way on every method.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from imd.api import convert
from imd.api.gen.imrpc import instance_grpc
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.status import InFlight, Servicer, recv, rpc
from imd.api.streams import EventEncoder, pump_events, pump_lines
from imd.errors import Unimplemented
from imd.services.instances import InstanceLogSettings, route
from imd.services.processes import ProcessService
from imd.services.validation import INSTANCE_FIELDS

_EMPTY = Empty()


class InstanceServicer(Servicer, instance_grpc.InstanceServiceBase):
    def __init__(self, processes: ProcessService, log_settings: InstanceLogSettings, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.processes = processes
        self.log_settings = log_settings
        # The manager re-lists on every tick; what changed does not matter.
        self._encode = EventEncoder(lambda event: _EMPTY)

    @rpc
    async def InstanceCreate(self, stream: Any) -> None:
        request: inst.InstanceCreateRequest = await recv(stream)
        route(request.spec.data_engine, "spec.data_engine")
        spec, info = convert.instance_spec(request)
        view = await self.processes.create(spec, info, INSTANCE_FIELDS)
        await stream.send_message(convert.instance_response(view))

    @rpc
    async def InstanceDelete(self, stream: Any) -> None:
        request: inst.InstanceDeleteRequest = await recv(stream)
        route(request.data_engine)
        view = await self.processes.delete(request.name, request.uuid)
        await stream.send_message(convert.instance_response(view))

    @rpc
    async def InstanceGet(self, stream: Any) -> None:
        request: inst.InstanceGetRequest = await recv(stream)
        route(request.data_engine)
        await stream.send_message(convert.instance_response(self.processes.get(request.name)))

    @rpc
    async def InstanceList(self, stream: Any) -> None:
        await recv(stream)
        reply = inst.InstanceListResponse()
        for view in self.processes.list():
            reply.instances[view.name].CopyFrom(convert.instance_response(view))
        await stream.send_message(reply)

    @rpc
    async def InstanceLog(self, stream: Any) -> None:
        request: inst.InstanceLogRequest = await recv(stream)
        route(request.data_engine)
        await pump_lines(stream, self.processes.log_lines(request.name, follow=request.follow))

    @rpc
    async def InstanceWatch(self, stream: Any) -> None:
        await recv(stream)
        await pump_events(stream, self.processes.watch(), self._encode)

    @rpc
    async def InstanceReplace(self, stream: Any) -> None:
        request: inst.InstanceReplaceRequest = await recv(stream)
        route(request.spec.data_engine, "spec.data_engine")
        spec, info = convert.instance_spec(request)
        view = await self.processes.replace(spec, request.terminate_signal, info, INSTANCE_FIELDS)
        await stream.send_message(convert.instance_response(view))

    async def _v2_only(self, stream: Any, method: str) -> None:
        request = await recv(stream)
        route(request.data_engine)
        raise Unimplemented(f"{method} is not supported for data engine V1")

    @rpc
    async def InstanceSuspend(self, stream: Any) -> None:
        await self._v2_only(stream, "InstanceSuspend")

    @rpc
    async def InstanceResume(self, stream: Any) -> None:
        await self._v2_only(stream, "InstanceResume")

    @rpc
    async def InstanceSwitchOverTarget(self, stream: Any) -> None:
        await self._v2_only(stream, "InstanceSwitchOverTarget")

    @rpc
    async def InstanceDeleteTarget(self, stream: Any) -> None:
        await self._v2_only(stream, "InstanceDeleteTarget")

    @rpc
    async def LogSetLevel(self, stream: Any) -> None:
        request: inst.LogSetLevelRequest = await recv(stream)
        route(request.data_engine)
        self.log_settings.set_level(request.level)
        await stream.send_message(_EMPTY)

    @rpc
    async def LogSetFlags(self, stream: Any) -> None:
        request: inst.LogSetFlagsRequest = await recv(stream)
        route(request.data_engine)
        self.log_settings.set_flags(request.flags)
        await stream.send_message(_EMPTY)

    @rpc
    async def LogGetLevel(self, stream: Any) -> None:
        request: inst.LogGetLevelRequest = await recv(stream)
        route(request.data_engine)
        await stream.send_message(inst.LogGetLevelResponse(level=self.log_settings.level))

    @rpc
    async def LogGetFlags(self, stream: Any) -> None:
        request: inst.LogGetFlagsRequest = await recv(stream)
        route(request.data_engine)
        await stream.send_message(inst.LogGetFlagsResponse(flags=self.log_settings.flags))

    @rpc
    async def VersionGet(self, stream: Any) -> None:
        await recv(stream)
        await stream.send_message(convert.version_response(self.processes.version()))
