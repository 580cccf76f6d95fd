"""``/imdrpc.ReplicaService/*``: imd's own engine-to-replica API (base + 4).

An engine on one node acts on its replicas on other nodes through their
imds (Longhorn does the same through its SPDK service on the same port):
it grows their lvols before the volume grows, and keeps their chains of
snapshots (imd.v2.chains). The server side is here; so is the client the
engines use (``RemoteReplicas``), since both speak the wire and nothing
below the API floor may.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from imd import errors
from imd.api.gen.imdrpc import replica_grpc
from imd.api.gen.imdrpc import replica_pb2 as rpb
from imd.api.gen.imrpc import common_pb2, proxy_grpc
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.api.status import BoundedProtoCodec, InFlight, Servicer, recv, rpc
from imd.services.instances import InstanceService
from imd.services.validation import validate_name
from imd.v2.chains import Chains
from imd.v2.model import HashStatus, ReplicaChain, SnapshotExport, SnapshotInfo

REPLICA_PORT_OFFSET = 4
_EMPTY = Empty()
T = TypeVar("T")


def snapshot_pb(s: SnapshotInfo) -> rpb.Snapshot:
    return rpb.Snapshot(
        name=s.name,
        parent=s.parent,
        children=list(s.children),
        user_created=s.user_created,
        created=s.created,
        labels=s.labels,
        removed=s.removed,
        size=s.size,
        checksum=s.checksum,
        lvol_uuid=s.lvol_uuid,
    )


def snapshot_of(s: rpb.Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        name=s.name,
        parent=s.parent,
        children=tuple(s.children),
        user_created=s.user_created,
        created=s.created,
        labels=dict(s.labels),
        removed=s.removed,
        size=s.size,
        checksum=s.checksum,
        lvol_uuid=s.lvol_uuid,
    )


def _hash_pb(h: HashStatus) -> rpb.SnapshotHashStatus:
    return rpb.SnapshotHashStatus(state=h.state, checksum=h.checksum, error=h.error)


class ReplicaServicer(Servicer, replica_grpc.ReplicaServiceBase):
    def __init__(self, instances: InstanceService, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.instances = instances

    def _chains(self, replica: str) -> Chains:
        validate_name(replica, "replica")
        return self.instances.v2().chains

    @rpc
    async def ReplicaExpand(self, stream: Any) -> None:
        request: rpb.ReplicaExpandRequest = await recv(stream)
        validate_name(request.name, "name")
        node = self.instances.v2()
        size = await node.replicas.expand(request.name, request.size)
        await stream.send_message(rpb.ReplicaExpandResponse(size=size))

    @rpc
    async def SnapshotCreate(self, stream: Any) -> None:
        r: rpb.SnapshotCreateRequest = await recv(stream)
        info = await self._chains(r.replica).create(
            r.replica, r.name, user_created=r.user_created, created=r.created, labels=dict(r.labels)
        )
        await stream.send_message(snapshot_pb(info))

    @rpc
    async def SnapshotDelete(self, stream: Any) -> None:
        r: rpb.SnapshotDeleteRequest = await recv(stream)
        deleted = await self._chains(r.replica).delete(r.replica, r.name, mark_only=r.mark_only)
        await stream.send_message(rpb.SnapshotDeleteResponse(deleted=deleted))

    @rpc
    async def SnapshotChain(self, stream: Any) -> None:
        r: rpb.ReplicaRequest = await recv(stream)
        chain = await self._chains(r.replica).chain(r.replica)
        await stream.send_message(
            rpb.SnapshotChainResponse(
                replica=chain.replica,
                head_parent=chain.head_parent,
                head_size=chain.head_size,
                snapshots=[snapshot_pb(s) for s in chain.snapshots],
                backing_image=chain.backing_image,
            )
        )

    @rpc
    async def SnapshotPurge(self, stream: Any) -> None:
        r: rpb.ReplicaRequest = await recv(stream)
        deleted = await self._chains(r.replica).purge(r.replica)
        await stream.send_message(rpb.SnapshotPurgeResponse(deleted=deleted))

    @rpc
    async def SnapshotRevert(self, stream: Any) -> None:
        r: rpb.SnapshotRequest = await recv(stream)
        await self._chains(r.replica).revert(r.replica, r.name)
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotExpose(self, stream: Any) -> None:
        r: rpb.SnapshotRequest = await recv(stream)
        e = await self._chains(r.replica).expose(r.replica, r.name)
        await stream.send_message(rpb.SnapshotExposeResponse(address=e.address, port=e.port, nqn=e.nqn, size=e.size))

    @rpc
    async def SnapshotUnexpose(self, stream: Any) -> None:
        r: rpb.SnapshotRequest = await recv(stream)
        await self._chains(r.replica).unexpose(r.replica, r.name)
        await stream.send_message(_EMPTY)

    @rpc
    async def SnapshotHash(self, stream: Any) -> None:
        r: rpb.SnapshotHashRequest = await recv(stream)
        status = await self._chains(r.replica).hash(r.replica, r.name, rehash=r.rehash)
        await stream.send_message(_hash_pb(status))

    @rpc
    async def SnapshotHashStatusGet(self, stream: Any) -> None:
        r: rpb.SnapshotRequest = await recv(stream)
        await stream.send_message(_hash_pb(self._chains(r.replica).hash_status(r.replica, r.name)))

    @rpc
    async def SnapshotHashCancel(self, stream: Any) -> None:
        r: rpb.ReplicaRequest = await recv(stream)
        await self._chains(r.replica).cancel_hashes(r.replica)
        await stream.send_message(_EMPTY)

    # -- backing images: this node's copy, served to another node's copy ---------------

    @rpc
    async def BackingImageExpose(self, stream: Any) -> None:
        r: rpb.BackingImageRequest = await recv(stream)
        validate_name(r.name, "name")
        e = await self.instances.v2().backing_images.expose(r.name, r.disk_uuid)
        await stream.send_message(rpb.SnapshotExposeResponse(address=e.address, port=e.port, nqn=e.nqn, size=e.size))

    @rpc
    async def BackingImageUnexpose(self, stream: Any) -> None:
        r: rpb.BackingImageRequest = await recv(stream)
        validate_name(r.name, "name")
        await self.instances.v2().backing_images.unexpose(r.name, r.disk_uuid)
        await stream.send_message(_EMPTY)


# A remote failure keeps its meaning: a full disk over there is a full disk here.
_ERROR_OF = {
    Status.INVALID_ARGUMENT: errors.InvalidArgument,
    Status.NOT_FOUND: errors.NotFound,
    Status.ALREADY_EXISTS: errors.AlreadyExists,
    Status.FAILED_PRECONDITION: errors.FailedPrecondition,
    Status.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    Status.ABORTED: errors.Conflict,
}


class RemoteReplicas:
    """The engines' ``ReplicaNodes``: calls the imd of a replica's node, at
    the replica's IP and this daemon's own base port + 4 (nodes run imd on
    the same ports, as Longhorn's instance managers do). Every call has a
    deadline: a node that went silent is a failed call, never a hang."""

    def __init__(self, base_port: int, tls: ssl.SSLContext | None, timeout: float = 60.0) -> None:
        self.port = base_port + REPLICA_PORT_OFFSET
        self.tls = tls
        self.timeout = timeout

    @asynccontextmanager
    async def _stub(self, address: str, what: str) -> AsyncIterator[replica_grpc.ReplicaServiceStub]:
        host = address.rpartition(":")[0].strip("[]")
        channel = Channel(host, self.port, ssl=self.tls, codec=BoundedProtoCodec())
        try:
            yield replica_grpc.ReplicaServiceStub(channel)
        except GRPCError as exc:
            cls = _ERROR_OF.get(exc.status, errors.Unavailable)
            message = exc.message or exc.status.name
            if message.startswith("size: "):
                # The size the replica's node could not take is the size of
                # the expansion the engine was asked for.
                raise cls(f"{what} at {host}: {message.removeprefix('size: ')}", field="expand.size") from exc
            raise cls(f"{what} at {host}: {message}") from exc
        except (OSError, StreamTerminatedError, TimeoutError) as exc:
            raise errors.Unavailable(f"{what}: cannot reach imd at {host}:{self.port}: {exc}") from exc
        finally:
            channel.close()

    async def _call(
        self, address: str, replica: str, method: Callable[[replica_grpc.ReplicaServiceStub], Awaitable[T]]
    ) -> T:
        async with self._stub(address, f"replica {replica}") as stub:
            return await method(stub)

    async def expand(self, address: str, replica: str, size: int) -> None:
        await self._call(
            address,
            replica,
            lambda s: s.ReplicaExpand(rpb.ReplicaExpandRequest(name=replica, size=size), timeout=self.timeout),
        )

    async def snapshot_create(
        self, address: str, replica: str, name: str, *, user_created: bool, created: str, labels: dict[str, str]
    ) -> SnapshotInfo:
        request = rpb.SnapshotCreateRequest(
            replica=replica, name=name, user_created=user_created, created=created, labels=labels
        )
        reply = await self._call(address, replica, lambda s: s.SnapshotCreate(request, timeout=self.timeout))
        return snapshot_of(reply)

    async def snapshot_delete(self, address: str, replica: str, name: str, *, mark_only: bool = False) -> bool:
        request = rpb.SnapshotDeleteRequest(replica=replica, name=name, mark_only=mark_only)
        reply = await self._call(address, replica, lambda s: s.SnapshotDelete(request, timeout=self.timeout))
        return bool(reply.deleted)

    async def snapshot_chain(self, address: str, replica: str) -> ReplicaChain:
        request = rpb.ReplicaRequest(replica=replica)
        r = await self._call(address, replica, lambda s: s.SnapshotChain(request, timeout=self.timeout))
        return ReplicaChain(
            replica=r.replica,
            head_parent=r.head_parent,
            head_size=r.head_size,
            snapshots=tuple(snapshot_of(s) for s in r.snapshots),
            backing_image=r.backing_image,
        )

    async def snapshot_purge(self, address: str, replica: str) -> list[str]:
        request = rpb.ReplicaRequest(replica=replica)
        reply = await self._call(address, replica, lambda s: s.SnapshotPurge(request, timeout=self.timeout))
        return list(reply.deleted)

    async def snapshot_revert(self, address: str, replica: str, name: str) -> None:
        request = rpb.SnapshotRequest(replica=replica, name=name)
        await self._call(address, replica, lambda s: s.SnapshotRevert(request, timeout=self.timeout))

    async def snapshot_expose(self, address: str, replica: str, name: str) -> SnapshotExport:
        request = rpb.SnapshotRequest(replica=replica, name=name)
        r = await self._call(address, replica, lambda s: s.SnapshotExpose(request, timeout=self.timeout))
        return SnapshotExport(address=r.address, port=r.port, nqn=r.nqn, size=r.size)

    async def snapshot_unexpose(self, address: str, replica: str, name: str) -> None:
        request = rpb.SnapshotRequest(replica=replica, name=name)
        await self._call(address, replica, lambda s: s.SnapshotUnexpose(request, timeout=self.timeout))

    async def snapshot_hash(self, address: str, replica: str, name: str, rehash: bool) -> HashStatus:
        request = rpb.SnapshotHashRequest(replica=replica, name=name, rehash=rehash)
        r = await self._call(address, replica, lambda s: s.SnapshotHash(request, timeout=self.timeout))
        return HashStatus(state=r.state, checksum=r.checksum, error=r.error)

    async def snapshot_hash_status(self, address: str, replica: str, name: str) -> HashStatus:
        request = rpb.SnapshotRequest(replica=replica, name=name)
        r = await self._call(address, replica, lambda s: s.SnapshotHashStatusGet(request, timeout=self.timeout))
        return HashStatus(state=r.state, checksum=r.checksum, error=r.error)

    async def snapshot_hash_cancel(self, address: str, replica: str) -> None:
        request = rpb.ReplicaRequest(replica=replica)
        await self._call(address, replica, lambda s: s.SnapshotHashCancel(request, timeout=self.timeout))

    async def image_expose(self, address: str, name: str, disk_uuid: str) -> SnapshotExport:
        """The node at ``address`` serves its copy of backing image ``name``
        (on its disk ``disk_uuid``) for a copy onto this node's disk."""
        request = rpb.BackingImageRequest(name=name, disk_uuid=disk_uuid)
        async with self._stub(address, f"backing image {name}") as stub:
            r = await stub.BackingImageExpose(request, timeout=self.timeout)
        return SnapshotExport(address=r.address, port=r.port, nqn=r.nqn, size=r.size)

    async def image_unexpose(self, address: str, name: str, disk_uuid: str) -> None:
        request = rpb.BackingImageRequest(name=name, disk_uuid=disk_uuid)
        async with self._stub(address, f"backing image {name}") as stub:
            await stub.BackingImageUnexpose(request, timeout=self.timeout)

    async def engine_replicas(self, address: str, engine: str) -> list[tuple[str, str]]:
        """Longhorn's own ReplicaList on the engine proxy (base + 1) of the
        imd at ``address``: the source of a SnapshotClone."""
        host = address.rpartition(":")[0].strip("[]") if ":" in address else address
        channel = Channel(host, self.port - REPLICA_PORT_OFFSET + 1, ssl=self.tls, codec=BoundedProtoCodec())
        try:
            stub = proxy_grpc.ProxyEngineServiceStub(channel)
            request = ppb.ProxyEngineRequest(engine_name=engine, data_engine=common_pb2.DATA_ENGINE_V2)
            reply = await stub.ReplicaList(request, timeout=self.timeout)
        except GRPCError as exc:
            cls = _ERROR_OF.get(exc.status, errors.Unavailable)
            raise cls(f"engine {engine} at {host}: {exc.message}", field="from_engine_name") from exc
        except (OSError, StreamTerminatedError, TimeoutError) as exc:
            raise errors.Unavailable(f"engine {engine}: cannot reach imd at {host}: {exc}") from exc
        finally:
            channel.close()
        return [
            (r.address.instanceName, r.address.address.removeprefix("tcp://"))
            for r in reply.replica_list.replicas
            if r.mode == ctl.RW
        ]
