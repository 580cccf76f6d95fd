"""Disk semantics (Longhorn's imrpc.DiskService), independent of the wire.

Everything a caller can get wrong is checked here, before the SPDK target
is asked anything, and every error names the request field as Longhorn's
``disk.proto`` spells it. Only then is V2's availability checked, so a bad
request gets the same answer on a node with SPDK and on one without.
"""

from __future__ import annotations

import os
import stat
import uuid as uuidlib

import msgspec

from imd.buildinfo import BUILD, BuildInfo
from imd.edges.spdk_target import TargetRpcError, TargetUnreachable
from imd.errors import FailedPrecondition, InvalidArgument, Unavailable, Unimplemented
from imd.services.rates import RateMeter, Rates, Sample
from imd.services.validation import validate_name
from imd.supervisor.durability import Durability
from imd.v2.model import DiskView, ReplicaLvol
from imd.v2.node import V2Node

DISK_TYPE_BLOCK = 1
DRIVERS = ("", "aio", "auto")
DEFAULT_BLOCK_SIZE = 4096
DISK_API_VERSION = 1
DISK_API_MIN_VERSION = 1


class DiskVersion(msgspec.Struct, frozen=True):
    build: BuildInfo = BUILD
    api_version: int = DISK_API_VERSION
    api_min_version: int = DISK_API_MIN_VERSION


def disk_id(path: str) -> str:
    """Longhorn's disk ID: the block device's ``major-minor``; for a file,
    its path."""
    try:
        info = os.stat(path)
    except OSError:
        return path
    if stat.S_ISBLK(info.st_mode):
        return f"{os.major(info.st_rdev)}-{os.minor(info.st_rdev)}"
    return path


def check_type(disk_type: int) -> None:
    if disk_type != DISK_TYPE_BLOCK:
        raise Unimplemented(
            f"unsupported disk type {disk_type}: data engine V2 disks are of type block", field="disk_type"
        )


def check_driver(driver: str) -> None:
    if driver not in DRIVERS:
        raise InvalidArgument(f"unsupported driver {driver!r}; imd serves aio disks", field="disk_driver")


def check_uuid(value: str, field: str = "disk_uuid") -> None:
    if value:
        try:
            uuidlib.UUID(value)
        except ValueError:
            raise InvalidArgument(f"{value!r} is not a UUID", field=field) from None


def check_path(path: str) -> None:
    if not path:
        raise InvalidArgument("must not be empty", field="disk_path")
    if "\0" in path or not os.path.isabs(path):
        raise InvalidArgument(f"{path!r} must be an absolute path", field="disk_path")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror}", field="disk_path") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise InvalidArgument(f"{path} is neither a file nor a block device", field="disk_path")


def block_size_of(value: int) -> int:
    """0 means Longhorn's default, 4096; otherwise a power of two from 512
    to 64 KiB (what an AIO bdev accepts)."""
    if value == 0:
        return DEFAULT_BLOCK_SIZE
    if value < 512 or value > 65536 or value & (value - 1):
        raise InvalidArgument(f"{value} is not a power of two from 512 to 65536", field="block_size")
    return value


class DiskService:
    """Mutations return once their change is on disk, or fail and are undone
    (see imd.v2.disks); while the state cannot be written they fail at once."""

    def __init__(self, node: V2Node | None, unavailable: str, durability: Durability | None = None) -> None:
        self.node = node
        self.unavailable = unavailable
        self.durability = durability if durability is not None else Durability()
        self._rates = RateMeter()

    def _node(self) -> V2Node:
        if self.node is None:
            raise FailedPrecondition(f"SPDK data engine not available: {self.unavailable}", field="disk_type")
        return self.node

    async def create(self, disk_type: int, name: str, uuid: str, path: str, block_size: int, driver: str) -> DiskView:
        check_type(disk_type)
        validate_name(name, "disk_name")
        check_uuid(uuid)
        check_path(path)
        size = block_size_of(block_size)
        check_driver(driver)
        node = self._node()
        self.durability.check()
        return await node.create_disk(name, uuid, path, size)

    async def get(self, disk_type: int, name: str, driver: str) -> DiskView:
        check_type(disk_type)
        validate_name(name, "disk_name")
        check_driver(driver)
        return await self._node().disks.view(name)

    async def delete(self, disk_type: int, name: str, uuid: str, driver: str) -> None:
        check_type(disk_type)
        validate_name(name, "disk_name")
        check_uuid(uuid)
        check_driver(driver)
        node = self._node()
        self.durability.check()
        await node.delete_disk(name, uuid)

    async def listing(self) -> list[DiskView]:
        node = self._node()
        node.target.require()
        return [await node.disks.view(name) for name in sorted(node.disks.records)]

    async def replicas(self, disk_type: int, name: str, driver: str) -> list[ReplicaLvol]:
        check_type(disk_type)
        validate_name(name, "disk_name")
        check_driver(driver)
        return await self._node().disks.lvols(name)

    async def delete_replica(self, disk_type: int, name: str, uuid: str, replica: str, driver: str) -> None:
        check_type(disk_type)
        validate_name(name, "disk_name")
        check_uuid(uuid)
        validate_name(replica, "replcia_instance_name")
        check_driver(driver)
        node = self._node()
        self.durability.check()
        await node.disks.delete_lvol(name, uuid, replica, node.live_replica_names(name))

    async def metrics(self, disk_type: int, name: str, driver: str) -> Rates:
        """MetricsGet: the disk's I/O (its AIO bdev, all replicas together)
        since the previous call, from the target's iostat; a first call
        measures from the bdev's making (the target's start, on its clock)."""
        check_type(disk_type)
        validate_name(name, "disk_name")
        check_driver(driver)
        node = self._node()
        record = node.disks.record(name)
        client = node.target.require()
        try:
            stat = await client.iostat(record.name)
        except (TargetRpcError, TargetUnreachable) as exc:
            raise Unavailable(f"cannot read disk {name}'s I/O counters: {exc}") from exc
        bdev = next((b for b in stat.bdevs if b.name == record.name), None)
        if bdev is None:
            raise Unavailable(f"the SPDK target has no bdev {record.name}")
        ns_per_tick = 1e9 / max(stat.tick_rate, 1)
        now = Sample(
            at_s=stat.ticks / max(stat.tick_rate, 1),
            reads=bdev.num_read_ops,
            writes=bdev.num_write_ops,
            bytes_read=bdev.bytes_read,
            bytes_written=bdev.bytes_written,
            read_latency_ns=int(bdev.read_latency_ticks * ns_per_tick),
            write_latency_ns=int(bdev.write_latency_ticks * ns_per_tick),
        )
        return self._rates.rates(f"{name}/{record.uuid}", now, 0.0)

    def version(self) -> DiskVersion:
        return DiskVersion()
