from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessSpec(_message.Message):
    __slots__ = ("name", "binary", "args", "port_count", "port_args")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    PORT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PORT_ARGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    binary: str
    args: _containers.RepeatedScalarFieldContainer[str]
    port_count: int
    port_args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., binary: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., port_count: _Optional[int] = ..., port_args: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessStatus(_message.Message):
    __slots__ = ("state", "error_msg", "port_start", "port_end", "conditions", "uuid")
    class ConditionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MSG_FIELD_NUMBER: _ClassVar[int]
    PORT_START_FIELD_NUMBER: _ClassVar[int]
    PORT_END_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    state: str
    error_msg: str
    port_start: int
    port_end: int
    conditions: _containers.ScalarMap[str, bool]
    uuid: str
    def __init__(self, state: _Optional[str] = ..., error_msg: _Optional[str] = ..., port_start: _Optional[int] = ..., port_end: _Optional[int] = ..., conditions: _Optional[_Mapping[str, bool]] = ..., uuid: _Optional[str] = ...) -> None: ...

class ProcessCreateRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ProcessSpec
    def __init__(self, spec: _Optional[_Union[ProcessSpec, _Mapping]] = ...) -> None: ...

class ProcessDeleteRequest(_message.Message):
    __slots__ = ("name", "uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ...) -> None: ...

class ProcessGetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ProcessResponse(_message.Message):
    __slots__ = ("spec", "status", "deleted")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    spec: ProcessSpec
    status: ProcessStatus
    deleted: bool
    def __init__(self, spec: _Optional[_Union[ProcessSpec, _Mapping]] = ..., status: _Optional[_Union[ProcessStatus, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ProcessListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProcessListResponse(_message.Message):
    __slots__ = ("processes",)
    class ProcessesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ProcessResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ProcessResponse, _Mapping]] = ...) -> None: ...
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.MessageMap[str, ProcessResponse]
    def __init__(self, processes: _Optional[_Mapping[str, ProcessResponse]] = ...) -> None: ...

class LogRequest(_message.Message):
    __slots__ = ("name", "follow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    follow: bool
    def __init__(self, name: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class ProcessReplaceRequest(_message.Message):
    __slots__ = ("spec", "terminate_signal")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TERMINATE_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    spec: ProcessSpec
    terminate_signal: str
    def __init__(self, spec: _Optional[_Union[ProcessSpec, _Mapping]] = ..., terminate_signal: _Optional[str] = ...) -> None: ...

class LogResponse(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ("version", "gitCommit", "buildDate", "instanceManagerAPIVersion", "instanceManagerAPIMinVersion", "instanceManagerProxyAPIVersion", "instanceManagerProxyAPIMinVersion")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GITCOMMIT_FIELD_NUMBER: _ClassVar[int]
    BUILDDATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCEMANAGERAPIVERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCEMANAGERAPIMINVERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCEMANAGERPROXYAPIVERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCEMANAGERPROXYAPIMINVERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    gitCommit: str
    buildDate: str
    instanceManagerAPIVersion: int
    instanceManagerAPIMinVersion: int
    instanceManagerProxyAPIVersion: int
    instanceManagerProxyAPIMinVersion: int
    def __init__(self, version: _Optional[str] = ..., gitCommit: _Optional[str] = ..., buildDate: _Optional[str] = ..., instanceManagerAPIVersion: _Optional[int] = ..., instanceManagerAPIMinVersion: _Optional[int] = ..., instanceManagerProxyAPIVersion: _Optional[int] = ..., instanceManagerProxyAPIMinVersion: _Optional[int] = ...) -> None: ...
