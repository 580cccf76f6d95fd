"""Instance semantics: Longhorn's InstanceService, routed by data engine.

Data engine V1 instances (engines and replicas) are processes: they go to
the ProcessService with the instance's type and volume kept alongside.
Data engine V2 instances are replicas (lvols on the node's SPDK target) and
engines (inside imd, over spdk_ffi): they go to the V2 node. Both share one
namespace, since InstanceList is one map by name.

Every V2 field a caller can get wrong is checked here first, naming the
field as Longhorn's ``instance.proto`` spells it; V2's availability is
checked after that, so a bad request gets the same answer on every node. A
V2 request on a node where V2 cannot run answers FAILED_PRECONDITION with
the reason (no SPDK target binary, the target failed to start, no native
core), and V1 is never affected.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
from collections.abc import AsyncIterator

import msgspec

from imd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from imd.services.processes import ProcessService
from imd.services.validation import INT32_MAX, validate_name
from imd.supervisor.broadcast import Broadcaster, MergedSubscription
from imd.supervisor.model import ProcessEvent, ProcessView
from imd.v2.model import (
    ENGINE,
    FRONTEND_NVMF,
    FRONTENDS_ELSEWHERE,
    REPLICA,
    EngineSpec,
    ReplicaSpec,
    V2Event,
    V2InstanceView,
)
from imd.v2.node import V2Node

V2_UNAVAILABLE = "SPDK data engine not available"
SPDK_SPEC = "spec.spdk_instance_spec"


class DataEngine(enum.IntEnum):
    V1 = 0
    V2 = 1


# Longhorn's engine process names end in "-e-<n>" (go-common-libs'
# IsEngineProcess); the Go original types a V1 process by its name.
ENGINE_PROCESS_NAME = re.compile(r".+?-e-[^-]*$")


def v1_instance_type(name: str, recorded: str) -> str:
    """The type a V1 instance reports: the one it was created with, else (a
    process made through ProcessCreate, or adopted from before types were
    recorded) what the Go original infers from the name."""
    if recorded:
        return recorded
    return ENGINE if ENGINE_PROCESS_NAME.match(name) else REPLICA


def v1_target_ports(instance_type: str, port_start: int, port_end: int) -> tuple[int, int]:
    """V1 has no separate target: the Go original reports an engine's own
    ports as its target ports (the manager copies them into the engine's
    targetPort) and 0 for anything else."""
    return (port_start, port_end) if instance_type == ENGINE else (0, 0)


def route(engine: int, field: str = "data_engine") -> DataEngine:
    """The data engine a request is for; values this API does not know are
    UNIMPLEMENTED (the same on every method)."""
    try:
        return DataEngine(engine)
    except ValueError:
        raise Unimplemented(f"unknown data engine {engine}", field=field) from None


class V2Request(msgspec.Struct, frozen=True, kw_only=True):
    """InstanceCreate for data engine V2, as the wire layer decoded it."""

    name: str
    type: str
    volume_name: str = ""
    port_count: int = 0
    replica_address_map: dict[str, str] = {}
    disk_name: str = ""
    disk_uuid: str = ""
    lvs_name: str = ""
    lvs_uuid: str = ""
    size: int = 0
    frontend: str = ""
    snapshot_max_count: int = 0
    backing_image_name: str = ""


def parse_addresses(replica: str, value: str) -> tuple[str, ...]:
    """``ip:port[,ip:port...]``: one replica's paths. Each must be a literal
    IP address (v6 in brackets) and a port."""
    field = f"{SPDK_SPEC}.replica_address_map[{replica}]"
    addresses = []
    for part in value.split(","):
        address = part.strip()
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"{address!r} is not IP:PORT", field=field)
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise InvalidArgument(f"{host!r} is not an IP address", field=field) from None
        addresses.append(address)
    if len(set(addresses)) != len(addresses):
        raise InvalidArgument(f"{value!r} lists an address twice", field=field)
    return tuple(addresses)


def check_frontend(frontend: str) -> str:
    if frontend in ("", FRONTEND_NVMF):
        return frontend
    served = f"this daemon serves {FRONTEND_NVMF!r} and '' (no frontend)"
    if frontend in FRONTENDS_ELSEWHERE:
        raise InvalidArgument(f"frontend {frontend!r} is not available here; {served}", field=f"{SPDK_SPEC}.frontend")
    raise InvalidArgument(f"unknown frontend {frontend!r}; {served}", field=f"{SPDK_SPEC}.frontend")


def check_size(size: int, *, multiple: int = 512) -> None:
    if size <= 0:
        raise InvalidArgument("must be positive", field=f"{SPDK_SPEC}.size")
    if size % multiple:
        raise InvalidArgument(f"{size} is not a multiple of {multiple}", field=f"{SPDK_SPEC}.size")


def replica_spec(request: V2Request) -> ReplicaSpec:
    """A disk's lvstore is named after the disk, so ``lvs_name`` names the
    disk too: either one will do, both must agree."""
    check_size(request.size)
    disk = request.disk_name or request.lvs_name
    if not disk:
        raise InvalidArgument("a replica needs its disk (disk_name or lvs_name)", field=f"{SPDK_SPEC}.disk_name")
    validate_name(disk, f"{SPDK_SPEC}.{'disk_name' if request.disk_name else 'lvs_name'}")
    if request.lvs_name and request.lvs_name != disk:
        raise InvalidArgument(
            f"lvstore {request.lvs_name} is not disk {disk}'s (a disk's lvstore is named after the disk)",
            field=f"{SPDK_SPEC}.lvs_name",
        )
    if request.volume_name:
        validate_name(request.volume_name, "spec.volume_name")
    if request.backing_image_name:
        validate_name(request.backing_image_name, f"{SPDK_SPEC}.backing_image_name")
    return ReplicaSpec(
        name=request.name,
        disk_name=disk,
        size=request.size,
        volume_name=request.volume_name,
        backing_image=request.backing_image_name,
    )


def engine_spec(request: V2Request) -> EngineSpec:
    check_size(request.size, multiple=4096)
    if not request.volume_name:
        raise InvalidArgument("an engine needs its volume's name", field="spec.volume_name")
    validate_name(request.volume_name, "spec.volume_name")
    if not request.replica_address_map:
        raise InvalidArgument("an engine needs at least one replica", field=f"{SPDK_SPEC}.replica_address_map")
    replicas = {}
    for name, value in sorted(request.replica_address_map.items()):
        validate_name(name, f"{SPDK_SPEC}.replica_address_map")
        replicas[name] = parse_addresses(name, value)
    if request.snapshot_max_count < 0:
        raise InvalidArgument(
            f"must be >= 0, got {request.snapshot_max_count}", field=f"{SPDK_SPEC}.snapshot_max_count"
        )
    return EngineSpec(
        name=request.name,
        volume_name=request.volume_name,
        size=request.size,
        replicas=replicas,
        frontend=check_frontend(request.frontend),
        snapshot_max_count=request.snapshot_max_count,
    )


class InstanceService:
    def __init__(self, processes: ProcessService, node: V2Node | None, v2_unavailable: str) -> None:
        self.processes = processes
        self.node = node
        self.v2_unavailable = v2_unavailable
        processes.taken_elsewhere = self._v2_has

    def _v2_has(self, name: str) -> bool:
        return self.node is not None and self.node.has(name)

    def v2(self, field: str = "data_engine") -> V2Node:
        if self.node is None:
            raise FailedPrecondition(f"{V2_UNAVAILABLE}: {self.v2_unavailable}", field=field)
        return self.node

    # -- V2 ---------------------------------------------------------------------------

    async def create_v2(self, request: V2Request) -> V2InstanceView:
        validate_name(request.name, "spec.name")
        if request.port_count < 0 or request.port_count > INT32_MAX:
            raise InvalidArgument(f"must be >= 0, got {request.port_count}", field="spec.port_count")
        if request.type == REPLICA:
            replica = replica_spec(request)
            node = self.v2("spec.data_engine")
            self.processes.lifecycle.check()
            self.processes.durability.check()
            self._not_a_process(request.name)
            node.target.require()  # a target that is down says so before any lookup
            self._disk_uuid_matches(node, replica.disk_name, request.disk_uuid, request.lvs_uuid)
            return await node.create_replica(replica, SPDK_SPEC)
        if request.type == ENGINE:
            engine = engine_spec(request)
            node = self.v2("spec.data_engine")
            self.processes.lifecycle.check()
            self.processes.durability.check()
            self._not_a_process(request.name)
            return await node.create_engine(engine)
        raise InvalidArgument(
            f"unknown instance type {request.type!r} for data engine V2; one of {REPLICA!r}, {ENGINE!r}",
            field="spec.type",
        )

    def _not_a_process(self, name: str) -> None:
        if self.processes.exists(name):
            raise AlreadyExists(f"instance {name} already exists (data engine V1)", field="spec.name")

    @staticmethod
    def _disk_uuid_matches(node: V2Node, disk: str, disk_uuid: str, lvs_uuid: str) -> None:
        """The disk's UUID is its lvstore's: ``disk_uuid`` and ``lvs_uuid``,
        each when given, must be it."""
        record = node.disks.record(disk, f"{SPDK_SPEC}.disk_name")
        for field, uuid in (("disk_uuid", disk_uuid), ("lvs_uuid", lvs_uuid)):
            if uuid and uuid != record.uuid:
                raise NotFound(f"disk {disk} has UUID {record.uuid}, not {uuid}", field=f"{SPDK_SPEC}.{field}")

    async def delete_v2(self, name: str, uuid: str, kind: str, cleanup: bool) -> V2InstanceView:
        validate_name(name, "name")
        node = self.v2()
        self._kind_matches(node, name, kind)
        self.processes.durability.check()
        return await node.delete(name, uuid, cleanup=cleanup)

    def get_v2(self, name: str, kind: str) -> V2InstanceView:
        validate_name(name, "name")
        node = self.v2()
        self._kind_matches(node, name, kind)
        return node.get(name)

    @staticmethod
    def _kind_matches(node: V2Node, name: str, kind: str) -> None:
        view = node.get(name)
        if kind and kind != view.type:
            raise NotFound(f"{name} is a V2 {view.type}, not a {kind}", field="type")

    def log_v2(self, name: str, *, follow: bool) -> AsyncIterator[str]:
        validate_name(name, "name")
        return self.v2().log_lines(name, follow=follow, draining=self.processes.lifecycle.draining)

    # -- both -------------------------------------------------------------------------

    def list_v1(self) -> list[ProcessView]:
        return self.processes.list()

    def list_v2(self) -> list[V2InstanceView]:
        return self.node.views() if self.node is not None else []

    def watch(self) -> MergedSubscription:
        """One watch over V1 processes and V2 instances: the manager re-lists
        on every event, whichever kind changed."""
        sources: list[Broadcaster[ProcessEvent] | Broadcaster[V2Event]] = [self.processes.supervisor.events]
        if self.node is not None:
            sources.append(self.node.events)
        return MergedSubscription(sources)


# logrus level names, which the manager sends, onto the stdlib's.
_LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


class InstanceLogSettings:
    """The daemon's own log level and flags, as LogSet/GetLevel and
    LogSet/GetFlags see them for data engine V1."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._level = logging.getLevelName(logger.getEffectiveLevel()).lower()
        self.flags = ""

    @property
    def level(self) -> str:
        return "warn" if self._level == "warning" else self._level

    def set_level(self, level: str) -> None:
        key = level.strip().lower()
        if key not in _LEVELS:
            raise InvalidArgument(f"unknown level {level!r}; one of {', '.join(sorted(_LEVELS))}", field="level")
        self._logger.setLevel(_LEVELS[key])
        self._level = key

    def set_flags(self, flags: str) -> None:
        # V1 has no per-component log flags (that is an SPDK notion); they are
        # kept and reported back so a manager's set-then-get round-trips.
        self.flags = flags
