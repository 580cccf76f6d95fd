from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackendStoreDriver(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    v1: _ClassVar[BackendStoreDriver]
    v2: _ClassVar[BackendStoreDriver]

class DataEngine(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_ENGINE_V1: _ClassVar[DataEngine]
    DATA_ENGINE_V2: _ClassVar[DataEngine]

class CloneMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLONE_MODE_FULL_COPY: _ClassVar[CloneMode]
    CLONE_MODE_LINKED_CLONE: _ClassVar[CloneMode]

class DataLayoutType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_LAYOUT_TYPE_REPLICATED: _ClassVar[DataLayoutType]
    DATA_LAYOUT_TYPE_SHARDED: _ClassVar[DataLayoutType]
v1: BackendStoreDriver
v2: BackendStoreDriver
DATA_ENGINE_V1: DataEngine
DATA_ENGINE_V2: DataEngine
CLONE_MODE_FULL_COPY: CloneMode
CLONE_MODE_LINKED_CLONE: CloneMode
DATA_LAYOUT_TYPE_REPLICATED: DataLayoutType
DATA_LAYOUT_TYPE_SHARDED: DataLayoutType

class ShardEndpoint(_message.Message):
    __slots__ = ("address", "slot_index")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    address: str
    slot_index: int
    def __init__(self, address: _Optional[str] = ..., slot_index: _Optional[int] = ...) -> None: ...

class ShardGroupSpec(_message.Message):
    __slots__ = ("data_chunks", "parity_chunks", "strip_size_kb", "shards", "salvage_requested")
    class ShardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ShardEndpoint
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ShardEndpoint, _Mapping]] = ...) -> None: ...
    DATA_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PARITY_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    STRIP_SIZE_KB_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SALVAGE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    data_chunks: int
    parity_chunks: int
    strip_size_kb: int
    shards: _containers.MessageMap[str, ShardEndpoint]
    salvage_requested: bool
    def __init__(self, data_chunks: _Optional[int] = ..., parity_chunks: _Optional[int] = ..., strip_size_kb: _Optional[int] = ..., shards: _Optional[_Mapping[str, ShardEndpoint]] = ..., salvage_requested: _Optional[bool] = ...) -> None: ...
