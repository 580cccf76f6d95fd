"""``/imrpc.DiskService/*``: Longhorn's disk API for data engine V2.

Served on the base port + 2 (and the Unix socket). DiskHealthGet and
MetricsGet are not served (UNIMPLEMENTED, as every method a servicer does
not define).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from imd.api import convert
from imd.api.gen.imrpc import disk_grpc
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.status import InFlight, Servicer, recv, rpc
from imd.errors import Unimplemented
from imd.services.disks import DiskService, disk_id

_EMPTY = Empty()


class DiskServicer(Servicer, disk_grpc.DiskServiceBase):
    def __init__(self, disks: DiskService, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.disks = disks

    @rpc
    async def DiskCreate(self, stream: Any) -> None:
        r: dpb.DiskCreateRequest = await recv(stream)
        view = await self.disks.create(r.disk_type, r.disk_name, r.disk_uuid, r.disk_path, r.block_size, r.disk_driver)
        await stream.send_message(convert.disk_response(view, disk_id(view.record.path)))

    @rpc
    async def DiskDelete(self, stream: Any) -> None:
        r: dpb.DiskDeleteRequest = await recv(stream)
        await self.disks.delete(r.disk_type, r.disk_name, r.disk_uuid, r.disk_driver)
        await stream.send_message(_EMPTY)

    @rpc
    async def DiskGet(self, stream: Any) -> None:
        r: dpb.DiskGetRequest = await recv(stream)
        view = await self.disks.get(r.disk_type, r.disk_name, r.disk_driver)
        await stream.send_message(convert.disk_response(view, disk_id(view.record.path)))

    @rpc
    async def DiskReplicaInstanceList(self, stream: Any) -> None:
        r: dpb.DiskReplicaInstanceListRequest = await recv(stream)
        reply = dpb.DiskReplicaInstanceListResponse()
        for lvol in await self.disks.replicas(r.disk_type, r.disk_name, r.disk_driver):
            reply.replica_instances[lvol.name].CopyFrom(convert.replica_instance(lvol))
        await stream.send_message(reply)

    @rpc
    async def DiskReplicaInstanceDelete(self, stream: Any) -> None:
        r: dpb.DiskReplicaInstanceDeleteRequest = await recv(stream)
        await self.disks.delete_replica(r.disk_type, r.disk_name, r.disk_uuid, r.replcia_instance_name, r.disk_driver)
        await stream.send_message(_EMPTY)

    @rpc
    async def DiskHealthGet(self, stream: Any) -> None:
        await recv(stream)
        raise Unimplemented("DiskHealthGet is not served: imd's disks are AIO bdevs, with no NVMe health log")

    @rpc
    async def MetricsGet(self, stream: Any) -> None:
        r: dpb.DiskGetRequest = await recv(stream)
        rates = await self.disks.metrics(r.disk_type, r.disk_name, r.disk_driver)
        await stream.send_message(dpb.DiskMetricsGetReply(metrics=convert.metrics(rates)))

    @rpc
    async def DiskList(self, stream: Any) -> None:
        await recv(stream)
        reply = dpb.DiskListResponse()
        for view in await self.disks.listing():
            reply.disks[view.record.name].CopyFrom(convert.disk_response(view, disk_id(view.record.path)))
        await stream.send_message(reply)

    @rpc
    async def VersionGet(self, stream: Any) -> None:
        await recv(stream)
        await stream.send_message(convert.disk_version_response(self.disks.version()))
