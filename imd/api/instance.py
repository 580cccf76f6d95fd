"""``/imrpc.InstanceService/*``: Longhorn's instance API, both data engines.

Every call is routed by ``data_engine`` first: V1 instances are processes
(the ProcessService), V2 instances are replicas and engines (the V2 node);
unknown engines fail the same way on every method. InstanceList and
InstanceWatch cover both.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from imd.api import convert
from imd.api.gen.imrpc import instance_grpc
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.status import InFlight, Servicer, recv, rpc
from imd.api.streams import pump_events, pump_lines
from imd.errors import Unimplemented
from imd.services.instances import DataEngine, InstanceLogSettings, InstanceService, route
from imd.services.validation import INSTANCE_FIELDS

_EMPTY = Empty()
_EMPTY_BODY = _EMPTY.SerializeToString()
# The manager re-lists on every event; what changed does not matter, so
# every watch event is the same framed Empty.
_FRAMED_EMPTY = b"\x00" + len(_EMPTY_BODY).to_bytes(4, "big") + _EMPTY_BODY


class InstanceServicer(Servicer, instance_grpc.InstanceServiceBase):
    def __init__(self, instances: InstanceService, log_settings: InstanceLogSettings, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.instances = instances
        self.processes = instances.processes
        self.log_settings = log_settings

    @rpc
    async def InstanceCreate(self, stream: Any) -> None:
        request: inst.InstanceCreateRequest = await recv(stream)
        if route(request.spec.data_engine, "spec.data_engine") is DataEngine.V2:
            view = await self.instances.create_v2(convert.instance_v2_request(request))
            await stream.send_message(convert.instance_v2_response(view))
            return
        spec, info = convert.instance_spec(request)
        process = await self.processes.create(spec, info, INSTANCE_FIELDS)
        await stream.send_message(convert.instance_response(process))

    @rpc
    async def InstanceDelete(self, stream: Any) -> None:
        request: inst.InstanceDeleteRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            view = await self.instances.delete_v2(request.name, request.uuid, request.type, request.cleanup_required)
            await stream.send_message(convert.instance_v2_response(view))
            return
        process = await self.processes.delete(request.name, request.uuid)
        await stream.send_message(convert.instance_response(process))

    @rpc
    async def InstanceGet(self, stream: Any) -> None:
        request: inst.InstanceGetRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            view = self.instances.get_v2(request.name, request.type)
            await stream.send_message(convert.instance_v2_response(view))
            return
        await stream.send_message(convert.instance_response(self.processes.get(request.name)))

    @rpc
    async def InstanceList(self, stream: Any) -> None:
        await recv(stream)
        reply = inst.InstanceListResponse()
        for process in self.instances.list_v1():
            reply.instances[process.name].CopyFrom(convert.instance_response(process))
        for view in self.instances.list_v2():
            reply.instances[view.name].CopyFrom(convert.instance_v2_response(view))
        await stream.send_message(reply)

    @rpc
    async def InstanceLog(self, stream: Any) -> None:
        request: inst.InstanceLogRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            await pump_lines(stream, self.instances.log_v2(request.name, follow=request.follow))
            return
        await pump_lines(stream, self.processes.log_lines(request.name, follow=request.follow))

    @rpc
    async def InstanceWatch(self, stream: Any) -> None:
        await recv(stream)
        await pump_events(
            stream, self.instances.watch(), lambda event: _FRAMED_EMPTY, self.in_flight.metrics, "instance"
        )

    @rpc
    async def InstanceReplace(self, stream: Any) -> None:
        request: inst.InstanceReplaceRequest = await recv(stream)
        if route(request.spec.data_engine, "spec.data_engine") is DataEngine.V2:
            raise Unimplemented("InstanceReplace is not supported for data engine V2", field="spec.data_engine")
        spec, info = convert.instance_spec(request)
        process = await self.processes.replace(spec, request.terminate_signal, info, INSTANCE_FIELDS)
        await stream.send_message(convert.instance_response(process))

    async def _not_served(self, stream: Any, method: str) -> None:
        request = await recv(stream)
        engine = route(request.data_engine)
        raise Unimplemented(f"{method} is not supported for data engine {engine.name}")

    @rpc
    async def InstanceSuspend(self, stream: Any) -> None:
        await self._not_served(stream, "InstanceSuspend")

    @rpc
    async def InstanceResume(self, stream: Any) -> None:
        await self._not_served(stream, "InstanceResume")

    @rpc
    async def InstanceSwitchOverTarget(self, stream: Any) -> None:
        await self._not_served(stream, "InstanceSwitchOverTarget")

    @rpc
    async def InstanceDeleteTarget(self, stream: Any) -> None:
        await self._not_served(stream, "InstanceDeleteTarget")

    @rpc
    async def LogSetLevel(self, stream: Any) -> None:
        request: inst.LogSetLevelRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            await self.instances.v2().set_log_level(request.level)
        else:
            self.log_settings.set_level(request.level)
        await stream.send_message(_EMPTY)

    @rpc
    async def LogSetFlags(self, stream: Any) -> None:
        request: inst.LogSetFlagsRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            await self.instances.v2().set_log_flags(request.flags)
        else:
            self.log_settings.set_flags(request.flags)
        await stream.send_message(_EMPTY)

    @rpc
    async def LogGetLevel(self, stream: Any) -> None:
        request: inst.LogGetLevelRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            level = await self.instances.v2().log_level()
        else:
            level = self.log_settings.level
        await stream.send_message(inst.LogGetLevelResponse(level=level))

    @rpc
    async def LogGetFlags(self, stream: Any) -> None:
        request: inst.LogGetFlagsRequest = await recv(stream)
        if route(request.data_engine) is DataEngine.V2:
            flags = await self.instances.v2().log_flags()
        else:
            flags = self.log_settings.flags
        await stream.send_message(inst.LogGetFlagsResponse(flags=flags))

    @rpc
    async def VersionGet(self, stream: Any) -> None:
        await recv(stream)
        await stream.send_message(convert.version_response(self.processes.version()))
