from google.protobuf import empty_pb2 as _empty_pb2
from imd.api.gen.imrpc import common_pb2 as _common_pb2
from imd.api.gen.imrpc import imrpc_pb2 as _imrpc_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessInstanceSpec(_message.Message):
    __slots__ = ("binary", "args")
    BINARY_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    binary: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, binary: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class SpdkInstanceSpec(_message.Message):
    __slots__ = ("replica_address_map", "disk_name", "disk_uuid", "size", "expose_required", "frontend", "salvage_requested", "backing_image_name", "ublk_queue_depth", "ublk_number_of_queue", "snapshot_max_count", "slot_index", "lvs_name", "lvs_uuid", "shard_group_spec")
    class ReplicaAddressMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REPLICA_ADDRESS_MAP_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    SALVAGE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    BACKING_IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    UBLK_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    UBLK_NUMBER_OF_QUEUE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    SLOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LVS_NAME_FIELD_NUMBER: _ClassVar[int]
    LVS_UUID_FIELD_NUMBER: _ClassVar[int]
    SHARD_GROUP_SPEC_FIELD_NUMBER: _ClassVar[int]
    replica_address_map: _containers.ScalarMap[str, str]
    disk_name: str
    disk_uuid: str
    size: int
    expose_required: bool
    frontend: str
    salvage_requested: bool
    backing_image_name: str
    ublk_queue_depth: int
    ublk_number_of_queue: int
    snapshot_max_count: int
    slot_index: int
    lvs_name: str
    lvs_uuid: str
    shard_group_spec: _common_pb2.ShardGroupSpec
    def __init__(self, replica_address_map: _Optional[_Mapping[str, str]] = ..., disk_name: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., size: _Optional[int] = ..., expose_required: _Optional[bool] = ..., frontend: _Optional[str] = ..., salvage_requested: _Optional[bool] = ..., backing_image_name: _Optional[str] = ..., ublk_queue_depth: _Optional[int] = ..., ublk_number_of_queue: _Optional[int] = ..., snapshot_max_count: _Optional[int] = ..., slot_index: _Optional[int] = ..., lvs_name: _Optional[str] = ..., lvs_uuid: _Optional[str] = ..., shard_group_spec: _Optional[_Union[_common_pb2.ShardGroupSpec, _Mapping]] = ...) -> None: ...

class InstanceSpec(_message.Message):
    __slots__ = ("backend_store_driver", "name", "type", "volume_name", "port_count", "port_args", "process_instance_spec", "spdk_instance_spec", "data_engine", "upgrade_required", "initiator_address", "target_address", "engine_name")
    BACKEND_STORE_DRIVER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PORT_ARGS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_INSTANCE_SPEC_FIELD_NUMBER: _ClassVar[int]
    SPDK_INSTANCE_SPEC_FIELD_NUMBER: _ClassVar[int]
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    UPGRADE_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    backend_store_driver: _common_pb2.BackendStoreDriver
    name: str
    type: str
    volume_name: str
    port_count: int
    port_args: _containers.RepeatedScalarFieldContainer[str]
    process_instance_spec: ProcessInstanceSpec
    spdk_instance_spec: SpdkInstanceSpec
    data_engine: _common_pb2.DataEngine
    upgrade_required: bool
    initiator_address: str
    target_address: str
    engine_name: str
    def __init__(self, backend_store_driver: _Optional[_Union[_common_pb2.BackendStoreDriver, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., volume_name: _Optional[str] = ..., port_count: _Optional[int] = ..., port_args: _Optional[_Iterable[str]] = ..., process_instance_spec: _Optional[_Union[ProcessInstanceSpec, _Mapping]] = ..., spdk_instance_spec: _Optional[_Union[SpdkInstanceSpec, _Mapping]] = ..., data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., upgrade_required: _Optional[bool] = ..., initiator_address: _Optional[str] = ..., target_address: _Optional[str] = ..., engine_name: _Optional[str] = ...) -> None: ...

class EngineFrontendNvmeTcpPath(_message.Message):
    __slots__ = ("engine_name", "target_ip", "target_port", "nqn", "nguid", "ana_state")
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_IP_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    NQN_FIELD_NUMBER: _ClassVar[int]
    NGUID_FIELD_NUMBER: _ClassVar[int]
    ANA_STATE_FIELD_NUMBER: _ClassVar[int]
    engine_name: str
    target_ip: str
    target_port: int
    nqn: str
    nguid: str
    ana_state: str
    def __init__(self, engine_name: _Optional[str] = ..., target_ip: _Optional[str] = ..., target_port: _Optional[int] = ..., nqn: _Optional[str] = ..., nguid: _Optional[str] = ..., ana_state: _Optional[str] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("state", "error_msg", "port_start", "port_end", "conditions", "target_port_start", "target_port_end", "standby_target_port_start", "standby_target_port_end", "ublk_id", "uuid", "engine_name", "endpoint", "frontend", "active_path", "preferred_path", "paths")
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
    TARGET_PORT_START_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_END_FIELD_NUMBER: _ClassVar[int]
    STANDBY_TARGET_PORT_START_FIELD_NUMBER: _ClassVar[int]
    STANDBY_TARGET_PORT_END_FIELD_NUMBER: _ClassVar[int]
    UBLK_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_PATH_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_PATH_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    state: str
    error_msg: str
    port_start: int
    port_end: int
    conditions: _containers.ScalarMap[str, bool]
    target_port_start: int
    target_port_end: int
    standby_target_port_start: int
    standby_target_port_end: int
    ublk_id: int
    uuid: str
    engine_name: str
    endpoint: str
    frontend: str
    active_path: str
    preferred_path: str
    paths: _containers.RepeatedCompositeFieldContainer[EngineFrontendNvmeTcpPath]
    def __init__(self, state: _Optional[str] = ..., error_msg: _Optional[str] = ..., port_start: _Optional[int] = ..., port_end: _Optional[int] = ..., conditions: _Optional[_Mapping[str, bool]] = ..., target_port_start: _Optional[int] = ..., target_port_end: _Optional[int] = ..., standby_target_port_start: _Optional[int] = ..., standby_target_port_end: _Optional[int] = ..., ublk_id: _Optional[int] = ..., uuid: _Optional[str] = ..., engine_name: _Optional[str] = ..., endpoint: _Optional[str] = ..., frontend: _Optional[str] = ..., active_path: _Optional[str] = ..., preferred_path: _Optional[str] = ..., paths: _Optional[_Iterable[_Union[EngineFrontendNvmeTcpPath, _Mapping]]] = ...) -> None: ...

class InstanceCreateRequest(_message.Message):
    __slots__ = ("spec", "data_layout_type")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATA_LAYOUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    spec: InstanceSpec
    data_layout_type: _common_pb2.DataLayoutType
    def __init__(self, spec: _Optional[_Union[InstanceSpec, _Mapping]] = ..., data_layout_type: _Optional[_Union[_common_pb2.DataLayoutType, str]] = ...) -> None: ...

class InstanceDeleteRequest(_message.Message):
    __slots__ = ("backend_store_driver", "name", "type", "disk_uuid", "cleanup_required", "data_engine", "uuid")
    BACKEND_STORE_DRIVER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    backend_store_driver: _common_pb2.BackendStoreDriver
    name: str
    type: str
    disk_uuid: str
    cleanup_required: bool
    data_engine: _common_pb2.DataEngine
    uuid: str
    def __init__(self, backend_store_driver: _Optional[_Union[_common_pb2.BackendStoreDriver, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., cleanup_required: _Optional[bool] = ..., data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., uuid: _Optional[str] = ...) -> None: ...

class InstanceGetRequest(_message.Message):
    __slots__ = ("backend_store_driver", "name", "type", "data_engine")
    BACKEND_STORE_DRIVER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    backend_store_driver: _common_pb2.BackendStoreDriver
    name: str
    type: str
    data_engine: _common_pb2.DataEngine
    def __init__(self, backend_store_driver: _Optional[_Union[_common_pb2.BackendStoreDriver, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ...) -> None: ...

class InstanceResponse(_message.Message):
    __slots__ = ("spec", "status", "deleted")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    spec: InstanceSpec
    status: InstanceStatus
    deleted: bool
    def __init__(self, spec: _Optional[_Union[InstanceSpec, _Mapping]] = ..., status: _Optional[_Union[InstanceStatus, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class InstanceListResponse(_message.Message):
    __slots__ = ("instances",)
    class InstancesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: InstanceResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[InstanceResponse, _Mapping]] = ...) -> None: ...
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.MessageMap[str, InstanceResponse]
    def __init__(self, instances: _Optional[_Mapping[str, InstanceResponse]] = ...) -> None: ...

class InstanceLogRequest(_message.Message):
    __slots__ = ("backend_store_driver", "name", "type", "data_engine", "follow")
    BACKEND_STORE_DRIVER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    backend_store_driver: _common_pb2.BackendStoreDriver
    name: str
    type: str
    data_engine: _common_pb2.DataEngine
    follow: bool
    def __init__(self, backend_store_driver: _Optional[_Union[_common_pb2.BackendStoreDriver, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., follow: _Optional[bool] = ...) -> None: ...

class InstanceReplaceRequest(_message.Message):
    __slots__ = ("spec", "terminate_signal")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TERMINATE_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    spec: InstanceSpec
    terminate_signal: str
    def __init__(self, spec: _Optional[_Union[InstanceSpec, _Mapping]] = ..., terminate_signal: _Optional[str] = ...) -> None: ...

class InstanceSuspendRequest(_message.Message):
    __slots__ = ("data_engine", "name", "type")
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    name: str
    type: str
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class InstanceResumeRequest(_message.Message):
    __slots__ = ("data_engine", "name", "type")
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    name: str
    type: str
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class InstanceSwitchOverTargetRequest(_message.Message):
    __slots__ = ("data_engine", "name", "type", "target_address", "engine_name", "switchover_phase")
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    SWITCHOVER_PHASE_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    name: str
    type: str
    target_address: str
    engine_name: str
    switchover_phase: str
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., target_address: _Optional[str] = ..., engine_name: _Optional[str] = ..., switchover_phase: _Optional[str] = ...) -> None: ...

class InstanceDeleteTargetRequest(_message.Message):
    __slots__ = ("data_engine", "name", "type")
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    name: str
    type: str
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class LogSetLevelRequest(_message.Message):
    __slots__ = ("data_engine", "level")
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    level: str
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., level: _Optional[str] = ...) -> None: ...

class LogSetFlagsRequest(_message.Message):
    __slots__ = ("data_engine", "flags")
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    flags: str
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., flags: _Optional[str] = ...) -> None: ...

class LogGetLevelRequest(_message.Message):
    __slots__ = ("data_engine",)
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ...) -> None: ...

class LogGetLevelResponse(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: str
    def __init__(self, level: _Optional[str] = ...) -> None: ...

class LogGetFlagsRequest(_message.Message):
    __slots__ = ("data_engine",)
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    data_engine: _common_pb2.DataEngine
    def __init__(self, data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ...) -> None: ...

class LogGetFlagsResponse(_message.Message):
    __slots__ = ("flags",)
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    flags: str
    def __init__(self, flags: _Optional[str] = ...) -> None: ...
