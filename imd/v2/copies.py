"""Copying snapshots between replicas, in the C core: what a rebuild does to
carry a volume's chain onto a new replica, and what a clone does to fill a
new volume from another's snapshot.

SPDK v24.01 has no shallow copy (Longhorn's fork copies a snapshot's own
clusters), so a snapshot travels by content: its replica's node serves it
read-only over NVMe-oF (``snapshot_expose``), this daemon's core attaches
it and copies it onto the destination replica's head with a compare copy
(spdk_ffi.jobs: read both, write only the chunks that differ). The head
already holds the previous snapshot's content, so only what changed is
written, and a thin destination stays about as thin as the source. Then the
destination's node snapshots its head under the same name, with the same
metadata (``snapshot_create``), and the next snapshot follows, oldest first.

Every wait here is bounded by the caller (a delete cancels the task: the
job stops within one chunk, the export is detached and withdrawn).

Backing images: a chain starts from its backing image (the chain's base,
never one of its snapshots), so the destination must start from the same
image, on its own disk, as the source does: then its head already reads the
image and only what the volume changed is copied. A destination without it
is refused visibly (FAILED_PRECONDITION naming the image, and the replica
ERR): the manager creates the image on that disk first (its own
SPDKBackingImageCreate from another node) and the replica with
``backing_image_name``, as Longhorn's manager does for every replica of
such a volume. Carrying the image over as data instead would turn every
rebuilt replica into a full, unshared copy of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from imd.errors import FailedPrecondition, ImdError, Unavailable
from imd.eventlog import fields
from imd.v2.datapath import DataPath, ReplicaNodes, datapath_error, export_path
from imd.v2.model import ReplicaChain, SnapshotInfo
from spdk_ffi import NvmeError
from spdk_ffi.mirror import RebuildState

log = logging.getLogger("imd.v2.copies")

COPY_CHUNK = 1 << 20  # the lvstores' cluster: what a thin destination allocates per chunk written


def ancestry(chain: ReplicaChain) -> list[SnapshotInfo]:
    """The snapshots under the head, oldest first (the active chain; a
    branch a revert left beside it is not part of the volume's data)."""
    by_name = {s.name: s for s in chain.snapshots}
    out: list[SnapshotInfo] = []
    cur = chain.head_parent
    while cur and cur in by_name:
        out.append(by_name[cur])
        cur = by_name[cur].parent
    out.reverse()
    return out


def _image(name: str) -> str:
    return f"backing image {name}" if name else "no backing image"


async def copy_snapshot(
    data: DataPath,
    nodes: ReplicaNodes,
    *,
    src_address: str,
    src_replica: str,
    snapshot: str,
    dst: object,
    blocks: int,
    hostnqn: str,
    owner: str,
    rate_bytes_per_s: int,
    compare: bool = True,
    on_job: Callable[[object], None] | None = None,
) -> None:
    """Copy snapshot ``snapshot`` of ``src_replica`` (on the node at
    ``src_address``) onto ``dst`` (an attached controller: a replica's
    head), ``blocks`` blocks from LBA 0. ``on_job`` sees the running job
    (for progress)."""
    host = src_address.rpartition(":")[0].strip("[]")
    name = f"{owner}-src"
    exposed = False
    try:
        export = await nodes.snapshot_expose(src_address, src_replica, snapshot)
        exposed = True
        try:
            # Inside the try: an attach cancelled part way (a delete preempting
            # the copy) must not leave the controller behind under this name.
            await data.initiator.attach(name, [export_path(export, host)], hostnqn, data.opts, owner=owner)
            job = data.jobs.copy(
                data.initiator.handle(name),
                dst,
                blocks,
                compare=compare,
                skip_zero=not compare,
                chunk_bytes=COPY_CHUNK,
                rate_bytes_per_s=rate_bytes_per_s,
            )
            if on_job is not None:
                on_job(job)
            try:
                result = await asyncio.shield(job.done)
            except asyncio.CancelledError:
                await job.cancel()
                raise
        finally:
            with contextlib.suppress(NvmeError):
                await asyncio.shield(data.initiator.detach(name, owner=owner))  # done even if cancelled again
    except NvmeError as exc:
        raise datapath_error(f"copying snapshot {snapshot} of {src_replica}", exc) from exc
    finally:
        if exposed:
            with contextlib.suppress(ImdError):
                await asyncio.shield(nodes.snapshot_unexpose(src_address, src_replica, snapshot))
    if result.state is not RebuildState.COMPLETE:
        raise Unavailable(f"copying snapshot {snapshot} of {src_replica}: {result.error or result.state}")


async def carry_chain(
    data: DataPath,
    nodes: ReplicaNodes,
    *,
    src_address: str,
    src_replica: str,
    dst_address: str,
    dst_replica: str,
    dst: object,
    blocks: int,
    hostnqn: str,
    owner: str,
    rate_bytes_per_s: int,
    on_job: Callable[[object], None] | None = None,
) -> int:
    """Give ``dst_replica`` every snapshot of ``src_replica``'s active
    chain it lacks, oldest first, with their names and metadata; returns
    how many were copied. The destination's own snapshots must be a prefix
    of the source's (the same names in the same order: a replica that was
    in this volume before), else nothing is copied (FAILED_PRECONDITION):
    its data is not this volume's."""
    copied = 0
    while True:
        src_chain = await nodes.snapshot_chain(src_address, src_replica)
        dst_chain = await nodes.snapshot_chain(dst_address, dst_replica)
        if src_chain.backing_image != dst_chain.backing_image:
            raise FailedPrecondition(
                f"replica {dst_replica} starts from "
                f"{_image(dst_chain.backing_image)}, {src_replica} from {_image(src_chain.backing_image)}: "
                "create the backing image on its disk, and the replica with backing_image_name, first",
                field="replica_name",
            )
        src, have = ancestry(src_chain), ancestry(dst_chain)
        if [s.name for s in have] != [s.name for s in src[: len(have)]]:
            raise FailedPrecondition(
                f"replica {dst_replica} holds snapshots {[s.name for s in have]}, not a start of "
                f"{src_replica}'s {[s.name for s in src]}: rebuild onto an empty replica",
                field="replica_name",
            )
        missing = src[len(have) :]
        if not missing:
            return copied
        snap = missing[0]
        await copy_snapshot(
            data,
            nodes,
            src_address=src_address,
            src_replica=src_replica,
            snapshot=snap.name,
            dst=dst,
            blocks=blocks,
            hostnqn=hostnqn,
            owner=owner,
            rate_bytes_per_s=rate_bytes_per_s,
            on_job=on_job,
        )
        await nodes.snapshot_create(
            dst_address,
            dst_replica,
            snap.name,
            user_created=snap.user_created,
            created=snap.created,
            labels=snap.labels,
        )
        if snap.removed:  # a purge must see it as the source's replicas do
            await nodes.snapshot_delete(dst_address, dst_replica, snap.name, mark_only=True)
        copied += 1
        log.info("snapshot carried", extra=fields(replica=dst_replica, snapshot=snap.name, source=src_replica))
