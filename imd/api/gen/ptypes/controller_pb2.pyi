from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WO: _ClassVar[ReplicaMode]
    RW: _ClassVar[ReplicaMode]
    ERR: _ClassVar[ReplicaMode]
WO: ReplicaMode
RW: ReplicaMode
ERR: ReplicaMode

class Volume(_message.Message):
    __slots__ = ("name", "size", "replicaCount", "endpoint", "frontend", "frontendState", "isExpanding", "last_expansion_error", "last_expansion_failed_at", "unmap_mark_snap_chain_removed", "snapshot_max_count", "snapshot_max_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLICACOUNT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    FRONTENDSTATE_FIELD_NUMBER: _ClassVar[int]
    ISEXPANDING_FIELD_NUMBER: _ClassVar[int]
    LAST_EXPANSION_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_EXPANSION_FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    UNMAP_MARK_SNAP_CHAIN_REMOVED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    replicaCount: int
    endpoint: str
    frontend: str
    frontendState: str
    isExpanding: bool
    last_expansion_error: str
    last_expansion_failed_at: str
    unmap_mark_snap_chain_removed: bool
    snapshot_max_count: int
    snapshot_max_size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., replicaCount: _Optional[int] = ..., endpoint: _Optional[str] = ..., frontend: _Optional[str] = ..., frontendState: _Optional[str] = ..., isExpanding: _Optional[bool] = ..., last_expansion_error: _Optional[str] = ..., last_expansion_failed_at: _Optional[str] = ..., unmap_mark_snap_chain_removed: _Optional[bool] = ..., snapshot_max_count: _Optional[int] = ..., snapshot_max_size: _Optional[int] = ...) -> None: ...

class ReplicaAddress(_message.Message):
    __slots__ = ("address", "instanceName")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INSTANCENAME_FIELD_NUMBER: _ClassVar[int]
    address: str
    instanceName: str
    def __init__(self, address: _Optional[str] = ..., instanceName: _Optional[str] = ...) -> None: ...

class ControllerReplica(_message.Message):
    __slots__ = ("address", "mode")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    address: ReplicaAddress
    mode: ReplicaMode
    def __init__(self, address: _Optional[_Union[ReplicaAddress, _Mapping]] = ..., mode: _Optional[_Union[ReplicaMode, str]] = ...) -> None: ...

class VolumeSnapshotRequest(_message.Message):
    __slots__ = ("name", "labels", "freezeFilesystem")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FREEZEFILESYSTEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    freezeFilesystem: bool
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., freezeFilesystem: _Optional[bool] = ...) -> None: ...

class VolumeSnapshotReply(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VolumeExpandRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class VolumeFrontendStartRequest(_message.Message):
    __slots__ = ("frontend",)
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    frontend: str
    def __init__(self, frontend: _Optional[str] = ...) -> None: ...

class VolumeUnmapMarkSnapChainRemovedSetRequest(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class VolumeSnapshotMaxCountSetRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class VolumeSnapshotMaxSizeSetRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class ReplicaListReply(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ControllerReplica]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ControllerReplica, _Mapping]]] = ...) -> None: ...

class VersionOutput(_message.Message):
    __slots__ = ("version", "gitCommit", "buildDate", "cliAPIVersion", "cliAPIMinVersion", "controllerAPIVersion", "controllerAPIMinVersion", "dataFormatVersion", "dataFormatMinVersion")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GITCOMMIT_FIELD_NUMBER: _ClassVar[int]
    BUILDDATE_FIELD_NUMBER: _ClassVar[int]
    CLIAPIVERSION_FIELD_NUMBER: _ClassVar[int]
    CLIAPIMINVERSION_FIELD_NUMBER: _ClassVar[int]
    CONTROLLERAPIVERSION_FIELD_NUMBER: _ClassVar[int]
    CONTROLLERAPIMINVERSION_FIELD_NUMBER: _ClassVar[int]
    DATAFORMATVERSION_FIELD_NUMBER: _ClassVar[int]
    DATAFORMATMINVERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    gitCommit: str
    buildDate: str
    cliAPIVersion: int
    cliAPIMinVersion: int
    controllerAPIVersion: int
    controllerAPIMinVersion: int
    dataFormatVersion: int
    dataFormatMinVersion: int
    def __init__(self, version: _Optional[str] = ..., gitCommit: _Optional[str] = ..., buildDate: _Optional[str] = ..., cliAPIVersion: _Optional[int] = ..., cliAPIMinVersion: _Optional[int] = ..., controllerAPIVersion: _Optional[int] = ..., controllerAPIMinVersion: _Optional[int] = ..., dataFormatVersion: _Optional[int] = ..., dataFormatMinVersion: _Optional[int] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("readThroughput", "writeThroughput", "readLatency", "writeLatency", "readIOPS", "writeIOPS")
    READTHROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    WRITETHROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    READLATENCY_FIELD_NUMBER: _ClassVar[int]
    WRITELATENCY_FIELD_NUMBER: _ClassVar[int]
    READIOPS_FIELD_NUMBER: _ClassVar[int]
    WRITEIOPS_FIELD_NUMBER: _ClassVar[int]
    readThroughput: int
    writeThroughput: int
    readLatency: int
    writeLatency: int
    readIOPS: int
    writeIOPS: int
    def __init__(self, readThroughput: _Optional[int] = ..., writeThroughput: _Optional[int] = ..., readLatency: _Optional[int] = ..., writeLatency: _Optional[int] = ..., readIOPS: _Optional[int] = ..., writeIOPS: _Optional[int] = ...) -> None: ...
