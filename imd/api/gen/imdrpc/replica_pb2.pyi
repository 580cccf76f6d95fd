from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaExpandRequest(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ReplicaExpandResponse(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class ReplicaRequest(_message.Message):
    __slots__ = ("replica",)
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    replica: str
    def __init__(self, replica: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("replica", "name")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    replica: str
    name: str
    def __init__(self, replica: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SnapshotDeleteRequest(_message.Message):
    __slots__ = ("replica", "name", "mark_only")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MARK_ONLY_FIELD_NUMBER: _ClassVar[int]
    replica: str
    name: str
    mark_only: bool
    def __init__(self, replica: _Optional[str] = ..., name: _Optional[str] = ..., mark_only: _Optional[bool] = ...) -> None: ...

class SnapshotCreateRequest(_message.Message):
    __slots__ = ("replica", "name", "user_created", "created", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    name: str
    user_created: bool
    created: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, replica: _Optional[str] = ..., name: _Optional[str] = ..., user_created: _Optional[bool] = ..., created: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("name", "parent", "children", "user_created", "created", "labels", "removed", "size", "checksum", "lvol_uuid")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    USER_CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    LVOL_UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    parent: str
    children: _containers.RepeatedScalarFieldContainer[str]
    user_created: bool
    created: str
    labels: _containers.ScalarMap[str, str]
    removed: bool
    size: int
    checksum: str
    lvol_uuid: str
    def __init__(self, name: _Optional[str] = ..., parent: _Optional[str] = ..., children: _Optional[_Iterable[str]] = ..., user_created: _Optional[bool] = ..., created: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., removed: _Optional[bool] = ..., size: _Optional[int] = ..., checksum: _Optional[str] = ..., lvol_uuid: _Optional[str] = ...) -> None: ...

class SnapshotChainResponse(_message.Message):
    __slots__ = ("replica", "head_parent", "head_size", "snapshots", "backing_image")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    HEAD_PARENT_FIELD_NUMBER: _ClassVar[int]
    HEAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    BACKING_IMAGE_FIELD_NUMBER: _ClassVar[int]
    replica: str
    head_parent: str
    head_size: int
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    backing_image: str
    def __init__(self, replica: _Optional[str] = ..., head_parent: _Optional[str] = ..., head_size: _Optional[int] = ..., snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ..., backing_image: _Optional[str] = ...) -> None: ...

class SnapshotDeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class SnapshotPurgeResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotExposeResponse(_message.Message):
    __slots__ = ("address", "port", "nqn", "size")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NQN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    nqn: str
    size: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., nqn: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class SnapshotHashRequest(_message.Message):
    __slots__ = ("replica", "name", "rehash")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REHASH_FIELD_NUMBER: _ClassVar[int]
    replica: str
    name: str
    rehash: bool
    def __init__(self, replica: _Optional[str] = ..., name: _Optional[str] = ..., rehash: _Optional[bool] = ...) -> None: ...

class SnapshotHashStatus(_message.Message):
    __slots__ = ("state", "checksum", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: str
    checksum: str
    error: str
    def __init__(self, state: _Optional[str] = ..., checksum: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class BackingImageRequest(_message.Message):
    __slots__ = ("name", "disk_uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk_uuid: str
    def __init__(self, name: _Optional[str] = ..., disk_uuid: _Optional[str] = ...) -> None: ...
