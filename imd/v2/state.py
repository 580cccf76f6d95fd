"""V2 state on disk: disks, replicas, engines, snapshots' metadata and
backing images, in ``<state_dir>/v2.json``.

Kept apart from the process registry (``registry.json``) so that each file
has one owner; the node's SPDK target itself is a child process and lives
in the process registry, in the supervisor's internal namespace. Written
the same way (whole file, atomically, group-committed), and under the same
rule: a V2 change is acknowledged only once it is on disk.
"""

from __future__ import annotations

import msgspec

from imd.v2.bases import BackingImageRecord
from imd.v2.model import DiskRecord, EngineRecord, ReplicaRecord, SnapshotMeta

V2_STATE_VERSION = 1
V2_STATE_FILE = "v2.json"


class V2StateFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: int = V2_STATE_VERSION
    disks: list[DiskRecord] = []
    replicas: list[ReplicaRecord] = []
    engines: list[EngineRecord] = []
    snapshots: list[SnapshotMeta] = []
    backing_images: list[BackingImageRecord] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(V2StateFile)


def encode(state: V2StateFile) -> bytes:
    return _encoder.encode(state)


def decode(data: bytes) -> V2StateFile:
    """Raises msgspec.ValidationError/DecodeError on a corrupt or foreign file."""
    state = _decoder.decode(data)
    if state.version != V2_STATE_VERSION:
        raise msgspec.ValidationError(f"unsupported V2 state version {state.version}")
    return state
