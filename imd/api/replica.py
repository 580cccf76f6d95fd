"""``/imdrpc.ReplicaService/*``: imd's own engine-to-replica API (base + 4).

An engine on one node grows the lvols of its replicas on other nodes
through their imds (Longhorn does the same through its SPDK service on the
same port). The server side is here; so is the client the engines use
(``RemoteReplicas``), since both speak the wire and nothing below the API
floor may.
"""

from __future__ import annotations

import ssl
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from imd import errors
from imd.api.gen.imdrpc import replica_grpc
from imd.api.gen.imdrpc import replica_pb2 as rpb
from imd.api.status import BoundedProtoCodec, InFlight, Servicer, recv, rpc
from imd.services.instances import InstanceService
from imd.services.validation import validate_name

REPLICA_PORT_OFFSET = 4


class ReplicaServicer(Servicer, replica_grpc.ReplicaServiceBase):
    def __init__(self, instances: InstanceService, in_flight: InFlight) -> None:
        super().__init__(in_flight)
        self.instances = instances

    @rpc
    async def ReplicaExpand(self, stream: Any) -> None:
        request: rpb.ReplicaExpandRequest = await recv(stream)
        validate_name(request.name, "name")
        node = self.instances.v2()
        size = await node.replicas.expand(request.name, request.size)
        await stream.send_message(rpb.ReplicaExpandResponse(size=size))


# A remote failure keeps its meaning: a full disk over there is a full disk here.
_ERROR_OF = {
    Status.INVALID_ARGUMENT: errors.InvalidArgument,
    Status.NOT_FOUND: errors.NotFound,
    Status.FAILED_PRECONDITION: errors.FailedPrecondition,
    Status.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}


class RemoteReplicas:
    """The engines' ReplicaExpander: calls the imd of a replica's node, at
    the replica's IP and this daemon's own base port + 4 (nodes run imd on
    the same ports, as Longhorn's instance managers do)."""

    def __init__(self, base_port: int, tls: ssl.SSLContext | None, timeout: float = 60.0) -> None:
        self.port = base_port + REPLICA_PORT_OFFSET
        self.tls = tls
        self.timeout = timeout

    async def expand(self, address: str, replica: str, size: int) -> None:
        host = address.rpartition(":")[0].strip("[]")
        channel = Channel(host, self.port, ssl=self.tls, codec=BoundedProtoCodec())
        try:
            stub = replica_grpc.ReplicaServiceStub(channel)
            await stub.ReplicaExpand(rpb.ReplicaExpandRequest(name=replica, size=size), timeout=self.timeout)
        except GRPCError as exc:
            cls = _ERROR_OF.get(exc.status, errors.Unavailable)
            message = exc.message or exc.status.name
            if message.startswith("size: "):
                # The size the replica's node could not take is the size of
                # the expansion the engine was asked for.
                raise cls(
                    f"replica {replica} at {host}: {message.removeprefix('size: ')}", field="expand.size"
                ) from exc
            raise cls(f"replica {replica} at {host}: {message}") from exc
        except (OSError, StreamTerminatedError, TimeoutError) as exc:
            raise errors.Unavailable(f"replica {replica}: cannot reach imd at {host}:{self.port}: {exc}") from exc
        finally:
            channel.close()
