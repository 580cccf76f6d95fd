from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotPurgeStatusResponse(_message.Message):
    __slots__ = ("is_purging", "error", "progress", "state")
    IS_PURGING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    is_purging: bool
    error: str
    progress: int
    state: str
    def __init__(self, is_purging: _Optional[bool] = ..., error: _Optional[str] = ..., progress: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ReplicaRebuildStatusResponse(_message.Message):
    __slots__ = ("is_rebuilding", "error", "progress", "state", "from_replica_address", "from_replica_address_list")
    IS_REBUILDING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FROM_REPLICA_ADDRESS_LIST_FIELD_NUMBER: _ClassVar[int]
    is_rebuilding: bool
    error: str
    progress: int
    state: str
    from_replica_address: str
    from_replica_address_list: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, is_rebuilding: _Optional[bool] = ..., error: _Optional[str] = ..., progress: _Optional[int] = ..., state: _Optional[str] = ..., from_replica_address: _Optional[str] = ..., from_replica_address_list: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotCloneStatusResponse(_message.Message):
    __slots__ = ("is_cloning", "error", "progress", "state", "from_replica_address", "snapshot_name")
    IS_CLONING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    is_cloning: bool
    error: str
    progress: int
    state: str
    from_replica_address: str
    snapshot_name: str
    def __init__(self, is_cloning: _Optional[bool] = ..., error: _Optional[str] = ..., progress: _Optional[int] = ..., state: _Optional[str] = ..., from_replica_address: _Optional[str] = ..., snapshot_name: _Optional[str] = ...) -> None: ...

class SnapshotHashStatusResponse(_message.Message):
    __slots__ = ("state", "checksum", "error", "silently_corrupted")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SILENTLY_CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    state: str
    checksum: str
    error: str
    silently_corrupted: bool
    def __init__(self, state: _Optional[str] = ..., checksum: _Optional[str] = ..., error: _Optional[str] = ..., silently_corrupted: _Optional[bool] = ...) -> None: ...
