"""Backing images (Longhorn's SPDKBackingImage* on the engine proxy): what a
request must be before imd.v2.backing_images acts on it.

Every field the caller can get wrong is checked here first, naming it as
``proxy.proto`` spells it; V2's availability after that, as for the other
V2 calls. Longhorn's own client refuses empty names, UUIDs and checksums
and a zero size before it calls; imd's answers are the same refusals as
INVALID_ARGUMENT, plus what Longhorn leaves to fail later: a checksum that
is not a SHA-512, a source that is neither a URL nor another node.
"""

from __future__ import annotations

import re

from imd.edges.http_download import check_url
from imd.errors import InvalidArgument
from imd.services.disks import check_uuid
from imd.services.instances import InstanceService
from imd.services.validation import validate_name
from imd.supervisor.broadcast import Subscription
from imd.v2.backing_images import BackingImages
from imd.v2.bases import BackingImageSpec, BackingImageView

SHA512_HEX = re.compile(r"^[0-9a-fA-F]{128}$")
HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
UUID_MAX = 128


def check_disk_uuid(value: str) -> None:
    if not value:
        raise InvalidArgument("must not be empty (the UUID of the disk's lvstore)", field="disk_uuid")
    check_uuid(value, "disk_uuid")


class BackingImageService:
    def __init__(self, instances: InstanceService) -> None:
        self.instances = instances

    def _images(self) -> BackingImages:
        node = self.instances.v2()
        node.target.require()  # a target that is down says so before any lookup
        return node.backing_images

    async def create(
        self,
        name: str,
        backing_image_uuid: str,
        disk_uuid: str,
        size: int,
        checksum: str,
        from_address: str,
        src_lvs_uuid: str,
    ) -> BackingImageView:
        validate_name(name, "name")
        if not backing_image_uuid:
            raise InvalidArgument("must not be empty", field="backing_image_uuid")
        if len(backing_image_uuid) > UUID_MAX or not backing_image_uuid.isprintable() or "/" in backing_image_uuid:
            raise InvalidArgument(
                f"must be at most {UUID_MAX} printable characters without '/'", field="backing_image_uuid"
            )
        check_disk_uuid(disk_uuid)
        if size <= 0:
            raise InvalidArgument("must be positive", field="size")
        if not SHA512_HEX.match(checksum):
            raise InvalidArgument("must be the image's SHA-512, 128 hexadecimal digits", field="checksum")
        if not from_address:
            raise InvalidArgument(
                "a backing image needs a source: an http(s):// URL, or another node's address with src_lvs_uuid",
                field="from_address",
            )
        if from_address.startswith(("http://", "https://")) or "://" in from_address:
            try:
                check_url(from_address)
            except ValueError as exc:
                raise InvalidArgument(str(exc), field="from_address") from None
        else:
            if not HOST_PORT.match(from_address):
                raise InvalidArgument(
                    f"{from_address!r} is neither an http(s):// URL nor HOST:PORT of another node", field="from_address"
                )
            if not src_lvs_uuid:
                raise InvalidArgument("copying from another node needs the disk there", field="src_lvs_uuid")
            check_uuid(src_lvs_uuid, "src_lvs_uuid")
        images = self._images()
        self.instances.processes.lifecycle.check()
        self.instances.processes.durability.check()
        spec = BackingImageSpec(
            name=name,
            uuid=backing_image_uuid,
            disk_uuid=disk_uuid,
            size=size,
            checksum=checksum.lower(),
            from_address=from_address,
            src_lvs_uuid=src_lvs_uuid,
        )
        return await images.create(spec)

    async def delete(self, name: str, disk_uuid: str) -> None:
        validate_name(name, "name")
        check_disk_uuid(disk_uuid)
        images = self._images()
        self.instances.processes.durability.check()
        await images.delete(name, disk_uuid)

    def get(self, name: str, disk_uuid: str) -> BackingImageView:
        validate_name(name, "name")
        check_disk_uuid(disk_uuid)
        return self._images().get(name, disk_uuid)

    def listing(self) -> dict[str, BackingImageView]:
        node = self.instances.node
        return node.backing_images.listing() if node is not None else {}

    def watch(self) -> Subscription[int]:
        return self._images().watch()
