"""``/imrpc.ProxyEngineService/*``: Longhorn's engine proxy, for the V2
engines imd hosts (base port + 1).

Served: ServerVersionGet, VolumeGet, VolumeExpand, ReplicaAdd, ReplicaList,
ReplicaRemove, ReplicaRebuildingStatus, ReplicaRebuildingQosSet,
ReplicaModeUpdate, MetricsGet, and the snapshot methods (VolumeSnapshot,
SnapshotList, SnapshotRemove, SnapshotPurge and its status, SnapshotRevert,
SnapshotHash and its status, SnapshotClone and its status,
VolumeSnapshotMaxCountSet, VolumeSnapshotMaxSizeSet), backups and
restores (SnapshotBackup and its status, BackupRestore and its status,
BackupRestoreFinish, CleanupBackupMountPoints), and the backing images of
this node's disks (SPDKBackingImageCreate, Delete, Get, List and Watch:
imd.services.backing_images). Every other method of the service answers
UNIMPLEMENTED, naming itself.
"""

from __future__ import annotations

import abc
from typing import Any

from google.protobuf.empty_pb2 import Empty

from imd.api import convert
from imd.api.gen.imrpc import proxy_grpc
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.api.gen.ptypes import syncagent_pb2 as sync
from imd.api.status import InFlight, Servicer, recv, rpc
from imd.api.streams import pump_events
from imd.errors import Unimplemented
from imd.services.backing_images import BackingImageService
from imd.services.engines import BackupRequest, EngineService, tcp
from imd.v2.bases import BackingImageView

_EMPTY = Empty()
_FRAMED_EMPTY = b"\x00" + (0).to_bytes(4, "big")  # one empty message, framed (a watch notice)
_MODE = {"WO": ctl.WO, "RW": ctl.RW, "ERR": ctl.ERR}

NOT_SERVED = (
    "VolumeFrontendStart",
    "VolumeFrontendShutdown",
    "VolumeUnmapMarkSnapChainRemovedSet",
    "ReplicaVerifyRebuild",
    "ReplicaRebuildConcurrentSyncLimitSet",
    "ReplicaRebuildConcurrentSyncLimitGet",
    "RemountReadOnlyVolume",
)


class ProxyServicer(Servicer, proxy_grpc.ProxyEngineServiceBase):
    def __init__(self, engines: EngineService, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.engines = engines
        self.images = BackingImageService(engines.instances)

    @rpc
    async def ServerVersionGet(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        self.engines.engines(r.engine_name, r.data_engine)
        await stream.send_message(
            ppb.EngineVersionProxyResponse(version=convert.engine_version(self.engines.version()))
        )

    @rpc
    async def VolumeGet(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        v = self.engines.volume(r.engine_name, r.data_engine)
        volume = ctl.Volume(
            name=v.name,
            size=v.size,
            replicaCount=v.replica_count,
            endpoint=v.endpoint,
            frontend=v.frontend,
            frontendState=v.frontend_state,
            isExpanding=v.is_expanding,
            last_expansion_error=v.last_expansion_error,
            last_expansion_failed_at=v.last_expansion_failed_at,
            snapshot_max_count=v.snapshot_max_count,
            snapshot_max_size=v.snapshot_max_size,
        )
        await stream.send_message(ppb.EngineVolumeGetProxyResponse(volume=volume))

    @rpc
    async def VolumeExpand(self, stream: Any) -> None:
        r: ppb.EngineVolumeExpandRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.expand(e.engine_name, e.data_engine, r.expand.size)
        await stream.send_message(_EMPTY)

    @rpc
    async def ReplicaAdd(self, stream: Any) -> None:
        r: ppb.EngineReplicaAddRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.add_replica(
            e.engine_name,
            e.data_engine,
            r.replica_name,
            r.replica_address,
            restore=r.restore,
            linked=bool(r.linked_clone_src_replica_name),
        )
        await stream.send_message(_EMPTY)

    @rpc
    async def ReplicaList(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        replicas = [
            ctl.ControllerReplica(
                address=ctl.ReplicaAddress(address=info.address, instanceName=info.name), mode=_MODE[info.mode]
            )
            for info in self.engines.replicas(r.engine_name, r.data_engine)
        ]
        reply = ppb.EngineReplicaListProxyResponse(replica_list=ctl.ReplicaListReply(replicas=replicas))
        await stream.send_message(reply)

    @rpc
    async def ReplicaRemove(self, stream: Any) -> None:
        r: ppb.EngineReplicaRemoveRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.remove_replica(e.engine_name, e.data_engine, r.replica_name, r.replica_address)
        await stream.send_message(_EMPTY)

    @rpc
    async def ReplicaRebuildingStatus(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        reply = ppb.EngineReplicaRebuildStatusProxyResponse()
        for info in self.engines.rebuilds(r.engine_name, r.data_engine):
            reply.status[info.address].CopyFrom(
                sync.ReplicaRebuildStatusResponse(
                    is_rebuilding=info.is_rebuilding,
                    error=info.error,
                    progress=info.progress,
                    state=info.state,
                    from_replica_address=info.from_address,
                    from_replica_address_list=[info.from_address] if info.from_address else [],
                )
            )
        await stream.send_message(reply)

    @rpc
    async def ReplicaRebuildingQosSet(self, stream: Any) -> None:
        r: ppb.EngineReplicaRebuildingQosSetRequest = await recv(stream)
        e = r.proxy_engine_request
        self.engines.set_rebuild_rate(e.engine_name, e.data_engine, r.qos_limit_mbps)
        await stream.send_message(_EMPTY)

    @rpc
    async def MetricsGet(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        rates = self.engines.metrics(r.engine_name, r.data_engine)
        await stream.send_message(ppb.EngineMetricsGetProxyResponse(metrics=convert.metrics(rates)))

    @rpc
    async def ReplicaModeUpdate(self, stream: Any) -> None:
        r: ppb.EngineReplicaModeUpdateRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.set_mode(e.engine_name, e.data_engine, r.replica_address, r.mode)
        await stream.send_message(_EMPTY)

    # -- backing images (this node's disks) -------------------------------------------

    @rpc
    async def SPDKBackingImageCreate(self, stream: Any) -> None:
        r: ppb.SPDKBackingImageCreateRequest = await recv(stream)
        view = await self.images.create(
            r.name, r.backing_image_uuid, r.disk_uuid, r.size, r.checksum, r.from_address, r.src_lvs_uuid
        )
        await stream.send_message(backing_image_pb(view))

    @rpc
    async def SPDKBackingImageDelete(self, stream: Any) -> None:
        r: ppb.SPDKBackingImageDeleteRequest = await recv(stream)
        await self.images.delete(r.name, r.disk_uuid)
        await stream.send_message(_EMPTY)

    @rpc
    async def SPDKBackingImageGet(self, stream: Any) -> None:
        r: ppb.SPDKBackingImageGetRequest = await recv(stream)
        await stream.send_message(backing_image_pb(self.images.get(r.name, r.disk_uuid)))

    @rpc
    async def SPDKBackingImageList(self, stream: Any) -> None:
        await recv(stream)
        reply = ppb.SPDKBackingImageListResponse()
        for key, view in self.images.listing().items():
            reply.backing_images[key].CopyFrom(backing_image_pb(view))
        await stream.send_message(reply)

    @rpc
    async def SPDKBackingImageWatch(self, stream: Any) -> None:
        await recv(stream)
        watch = self.images.watch()
        await pump_events(stream, watch, lambda _: _FRAMED_EMPTY, self.in_flight.metrics, "backing_image")

    # -- snapshots ---------------------------------------------------------------------

    @rpc
    async def VolumeSnapshot(self, stream: Any) -> None:
        r: ppb.EngineVolumeSnapshotRequest = await recv(stream)
        e = r.proxy_engine_request
        s = r.snapshot_volume
        name = await self.engines.snapshot_create(e.engine_name, e.data_engine, s.name, dict(s.labels))
        await stream.send_message(ppb.EngineVolumeSnapshotProxyResponse(snapshot=ctl.VolumeSnapshotReply(name=name)))

    @rpc
    async def SnapshotList(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        entries = await self.engines.snapshot_list(r.engine_name, r.data_engine)
        reply = ppb.EngineSnapshotListProxyResponse()
        for name, s in entries.items():
            reply.disks[name].CopyFrom(
                ppb.EngineSnapshotDiskInfo(
                    name=s.name,
                    parent=s.parent,
                    children=dict.fromkeys(s.children, True),
                    removed=s.removed,
                    user_created=s.user_created,
                    created=s.created,
                    size=str(s.size),
                    labels=s.labels,
                )
            )
        await stream.send_message(reply)

    @rpc
    async def SnapshotRemove(self, stream: Any) -> None:
        r: ppb.EngineSnapshotRemoveRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_remove(e.engine_name, e.data_engine, list(r.names))
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotPurge(self, stream: Any) -> None:
        r: ppb.EngineSnapshotPurgeRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_purge(e.engine_name, e.data_engine, r.skip_if_in_progress)
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotPurgeStatus(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        reply = ppb.EngineSnapshotPurgeStatusProxyResponse()
        for address, s in self.engines.snapshot_purge_status(r.engine_name, r.data_engine).items():
            reply.status[address].CopyFrom(
                sync.SnapshotPurgeStatusResponse(
                    is_purging=s.is_purging, error=s.error, progress=s.progress, state=s.state
                )
            )
        await stream.send_message(reply)

    @rpc
    async def SnapshotRevert(self, stream: Any) -> None:
        r: ppb.EngineSnapshotRevertRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_revert(e.engine_name, e.data_engine, r.name)
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotHash(self, stream: Any) -> None:
        r: ppb.EngineSnapshotHashRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_hash(e.engine_name, e.data_engine, r.snapshot_name, r.rehash)
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotHashStatus(self, stream: Any) -> None:
        r: ppb.EngineSnapshotHashStatusRequest = await recv(stream)
        e = r.proxy_engine_request
        reply = ppb.EngineSnapshotHashStatusProxyResponse()
        for address, s in (
            await self.engines.snapshot_hash_status(e.engine_name, e.data_engine, r.snapshot_name)
        ).items():
            reply.status[address].CopyFrom(
                sync.SnapshotHashStatusResponse(state=s.state, checksum=s.checksum, error=s.error)
            )
        await stream.send_message(reply)

    @rpc
    async def SnapshotClone(self, stream: Any) -> None:
        r: ppb.EngineSnapshotCloneRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_clone(
            e.engine_name, e.data_engine, r.snapshot_name, r.from_engine_name, r.from_engine_address, r.clone_mode
        )
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotCloneStatus(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        reply = ppb.EngineSnapshotCloneStatusProxyResponse()
        for address, s in self.engines.snapshot_clone_status(r.engine_name, r.data_engine).items():
            reply.status[address].CopyFrom(
                sync.SnapshotCloneStatusResponse(
                    is_cloning=s.is_cloning,
                    error=s.error,
                    progress=s.progress,
                    state=s.state,
                    from_replica_address=s.from_address,
                    snapshot_name=s.snapshot,
                )
            )
        await stream.send_message(reply)

    @rpc
    async def VolumeSnapshotMaxCountSet(self, stream: Any) -> None:
        r: ppb.EngineVolumeSnapshotMaxCountSetRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_max_count_set(e.engine_name, e.data_engine, r.count.count)
        await stream.send_message(_EMPTY)

    @rpc
    async def VolumeSnapshotMaxSizeSet(self, stream: Any) -> None:
        r: ppb.EngineVolumeSnapshotMaxSizeSetRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.snapshot_max_size_set(e.engine_name, e.data_engine, r.size.size)
        await stream.send_message(_EMPTY)

    # -- backups and restores --------------------------------------------------------------

    @rpc
    async def SnapshotBackup(self, stream: Any) -> None:
        r: ppb.EngineSnapshotBackupRequest = await recv(stream)
        e = r.proxy_engine_request
        started = await self.engines.backup_create(
            e.engine_name,
            e.data_engine,
            BackupRequest(
                snapshot_name=r.snapshot_name,
                backup_target=r.backup_target,
                backup_name=r.backup_name,
                volume_name=e.volume_name,
                envs=list(r.envs),
                compression_method=r.compression_method,
                concurrent_limit=r.concurrent_limit,
                labels=dict(r.labels),
                parameters=dict(r.parameters),
                backing_image_name=r.backing_image_name,
                backing_image_checksum=r.backing_image_checksum,
                storage_class_name=r.storage_class_name,
            ),
        )
        await stream.send_message(
            ppb.EngineSnapshotBackupProxyResponse(
                backup_id=started.backup, replica=started.replica_address, is_incremental=started.is_incremental
            )
        )

    @rpc
    async def SnapshotBackupStatus(self, stream: Any) -> None:
        r: ppb.EngineSnapshotBackupStatusRequest = await recv(stream)
        e = r.proxy_engine_request
        s = self.engines.backup_status(e.engine_name, e.data_engine, r.backup_name, r.replica_address)
        await stream.send_message(
            ppb.EngineSnapshotBackupStatusProxyResponse(
                backup_url=s.url,
                error=s.error,
                progress=s.progress,
                snapshot_name=s.snapshot,
                state=s.state,
                replica_address=s.replica_address,
            )
        )

    @rpc
    async def BackupRestore(self, stream: Any) -> None:
        r: ppb.EngineBackupRestoreRequest = await recv(stream)
        e = r.proxy_engine_request
        await self.engines.restore(e.engine_name, e.data_engine, r.url, list(r.envs), r.concurrent_limit)
        await stream.send_message(ppb.EngineBackupRestoreProxyResponse())

    @rpc
    async def BackupRestoreStatus(self, stream: Any) -> None:
        r: ppb.ProxyEngineRequest = await recv(stream)
        reply = ppb.EngineBackupRestoreStatusProxyResponse()
        for address, s in self.engines.restore_status(r.engine_name, r.data_engine).values():
            reply.status[tcp(address)].CopyFrom(
                ppb.EngineBackupRestoreStatus(
                    is_restoring=s.is_restoring,
                    last_restored=s.last_restored,
                    current_restoring_backup=s.backup if s.is_restoring else "",
                    progress=s.progress,
                    error=s.error,
                    state=s.state,
                    backup_url=s.backup_url,
                )
            )
        await stream.send_message(reply)

    @rpc
    async def BackupRestoreFinish(self, stream: Any) -> None:
        r: ppb.EngineBackupRestoreFinishRequest = await recv(stream)
        e = r.proxy_engine_request
        self.engines.restore_finish(e.engine_name, e.data_engine)
        await stream.send_message(_EMPTY)

    @rpc
    async def CleanupBackupMountPoints(self, stream: Any) -> None:
        await recv(stream)
        await self.engines.cleanup_mount_points()
        await stream.send_message(_EMPTY)


def backing_image_pb(v: BackingImageView) -> ppb.SPDKBackingImageResponse:
    """Longhorn's shape (its proxy's spdkBackingImageToBackingImageResponse):
    ``disk_uuid`` is the lvstore's UUID, ``checksum`` in the spec the one
    asked for, in the status the one the content has."""
    return ppb.SPDKBackingImageResponse(
        spec=ppb.SPDKBackingImageSpec(
            name=v.spec.name,
            backing_image_uuid=v.spec.uuid,
            disk_uuid=v.spec.disk_uuid,
            size=v.spec.size,
            checksum=v.spec.checksum,
        ),
        status=ppb.SPDKBackingImageStatus(
            progress=v.progress, state=v.state, checksum=v.current_checksum, error_msg=v.error
        ),
    )


def _not_served(method: str) -> Any:
    @rpc
    async def handler(self: ProxyServicer, stream: Any) -> None:
        await recv(stream)
        raise Unimplemented(f"{method} is not served by imd's engine proxy")

    handler.__name__ = handler.__qualname__ = method
    return handler


# The generated base declares every method of the service abstract; the ones
# imd does not serve share one handler, added here rather than written out
# thirty times. (mypy cannot see methods added this way, hence the ignores
# here and where the servicer is made; the suite instantiates it.)
for _method in NOT_SERVED:
    setattr(ProxyServicer, _method, _not_served(_method))
abc.update_abstractmethods(ProxyServicer)  # type: ignore[type-abstract]


def proxy_servicer(engines: EngineService, in_flight: InFlight) -> ProxyServicer:
    return ProxyServicer(engines, in_flight)  # type: ignore[abstract]
