from google.protobuf import empty_pb2 as _empty_pb2
from imd.api.gen.ptypes import controller_pb2 as _controller_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DiskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    filesystem: _ClassVar[DiskType]
    block: _ClassVar[DiskType]
filesystem: DiskType
block: DiskType

class Disk(_message.Message):
    __slots__ = ("id", "uuid", "path", "type", "total_size", "free_size", "total_blocks", "free_blocks", "block_size", "cluster_size", "driver", "name", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    FREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    uuid: str
    path: str
    type: str
    total_size: int
    free_size: int
    total_blocks: int
    free_blocks: int
    block_size: int
    cluster_size: int
    driver: str
    name: str
    state: str
    def __init__(self, id: _Optional[str] = ..., uuid: _Optional[str] = ..., path: _Optional[str] = ..., type: _Optional[str] = ..., total_size: _Optional[int] = ..., free_size: _Optional[int] = ..., total_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., cluster_size: _Optional[int] = ..., driver: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ReplicaInstance(_message.Message):
    __slots__ = ("name", "uuid", "disk_name", "disk_uuid", "spec_size", "actual_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    SPEC_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    disk_name: str
    disk_uuid: str
    spec_size: int
    actual_size: int
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ..., disk_name: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., spec_size: _Optional[int] = ..., actual_size: _Optional[int] = ...) -> None: ...

class DiskCreateRequest(_message.Message):
    __slots__ = ("disk_type", "disk_name", "disk_uuid", "disk_path", "block_size", "disk_driver")
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISK_DRIVER_FIELD_NUMBER: _ClassVar[int]
    disk_type: DiskType
    disk_name: str
    disk_uuid: str
    disk_path: str
    block_size: int
    disk_driver: str
    def __init__(self, disk_type: _Optional[_Union[DiskType, str]] = ..., disk_name: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., disk_path: _Optional[str] = ..., block_size: _Optional[int] = ..., disk_driver: _Optional[str] = ...) -> None: ...

class DiskGetRequest(_message.Message):
    __slots__ = ("disk_type", "disk_name", "disk_path", "disk_driver")
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    DISK_DRIVER_FIELD_NUMBER: _ClassVar[int]
    disk_type: DiskType
    disk_name: str
    disk_path: str
    disk_driver: str
    def __init__(self, disk_type: _Optional[_Union[DiskType, str]] = ..., disk_name: _Optional[str] = ..., disk_path: _Optional[str] = ..., disk_driver: _Optional[str] = ...) -> None: ...

class DiskDeleteRequest(_message.Message):
    __slots__ = ("disk_type", "disk_name", "disk_uuid", "disk_path", "disk_driver")
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    DISK_DRIVER_FIELD_NUMBER: _ClassVar[int]
    disk_type: DiskType
    disk_name: str
    disk_uuid: str
    disk_path: str
    disk_driver: str
    def __init__(self, disk_type: _Optional[_Union[DiskType, str]] = ..., disk_name: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., disk_path: _Optional[str] = ..., disk_driver: _Optional[str] = ...) -> None: ...

class DiskHealthGetRequest(_message.Message):
    __slots__ = ("disk_type", "disk_name", "disk_path", "disk_driver")
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    DISK_DRIVER_FIELD_NUMBER: _ClassVar[int]
    disk_type: DiskType
    disk_name: str
    disk_path: str
    disk_driver: str
    def __init__(self, disk_type: _Optional[_Union[DiskType, str]] = ..., disk_name: _Optional[str] = ..., disk_path: _Optional[str] = ..., disk_driver: _Optional[str] = ...) -> None: ...

class DiskReplicaInstanceListRequest(_message.Message):
    __slots__ = ("disk_type", "disk_name", "disk_driver")
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_DRIVER_FIELD_NUMBER: _ClassVar[int]
    disk_type: DiskType
    disk_name: str
    disk_driver: str
    def __init__(self, disk_type: _Optional[_Union[DiskType, str]] = ..., disk_name: _Optional[str] = ..., disk_driver: _Optional[str] = ...) -> None: ...

class DiskReplicaInstanceListResponse(_message.Message):
    __slots__ = ("replica_instances",)
    class ReplicaInstancesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ReplicaInstance
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ReplicaInstance, _Mapping]] = ...) -> None: ...
    REPLICA_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    replica_instances: _containers.MessageMap[str, ReplicaInstance]
    def __init__(self, replica_instances: _Optional[_Mapping[str, ReplicaInstance]] = ...) -> None: ...

class DiskReplicaInstanceDeleteRequest(_message.Message):
    __slots__ = ("disk_type", "disk_name", "disk_uuid", "replcia_instance_name", "disk_driver")
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    REPLCIA_INSTANCE_NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_DRIVER_FIELD_NUMBER: _ClassVar[int]
    disk_type: DiskType
    disk_name: str
    disk_uuid: str
    replcia_instance_name: str
    disk_driver: str
    def __init__(self, disk_type: _Optional[_Union[DiskType, str]] = ..., disk_name: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., replcia_instance_name: _Optional[str] = ..., disk_driver: _Optional[str] = ...) -> None: ...

class DiskVersionResponse(_message.Message):
    __slots__ = ("version", "gitCommit", "buildDate", "instanceManagerDiskServiceAPIVersion", "instanceManagerDiskServiceAPIMinVersion")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GITCOMMIT_FIELD_NUMBER: _ClassVar[int]
    BUILDDATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCEMANAGERDISKSERVICEAPIVERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCEMANAGERDISKSERVICEAPIMINVERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    gitCommit: str
    buildDate: str
    instanceManagerDiskServiceAPIVersion: int
    instanceManagerDiskServiceAPIMinVersion: int
    def __init__(self, version: _Optional[str] = ..., gitCommit: _Optional[str] = ..., buildDate: _Optional[str] = ..., instanceManagerDiskServiceAPIVersion: _Optional[int] = ..., instanceManagerDiskServiceAPIMinVersion: _Optional[int] = ...) -> None: ...

class DiskMetricsGetReply(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _controller_pb2.Metrics
    def __init__(self, metrics: _Optional[_Union[_controller_pb2.Metrics, _Mapping]] = ...) -> None: ...

class DiskHealthGetResponse(_message.Message):
    __slots__ = ("model_number", "serial_number", "firmware_revision", "traddr", "critical_warning", "temperature_celsius", "available_spare_percentage", "available_spare_threshold_percentage", "percentage_used", "data_units_read", "data_units_written", "host_read_commands", "host_write_commands", "controller_busy_time", "power_cycles", "power_on_hours", "unsafe_shutdowns", "media_errors", "num_err_log_entries", "warning_temperature_time_minutes", "critical_composite_temperature_time_minutes")
    MODEL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_REVISION_FIELD_NUMBER: _ClassVar[int]
    TRADDR_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_WARNING_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_SPARE_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_SPARE_THRESHOLD_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_USED_FIELD_NUMBER: _ClassVar[int]
    DATA_UNITS_READ_FIELD_NUMBER: _ClassVar[int]
    DATA_UNITS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    HOST_READ_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    HOST_WRITE_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_BUSY_TIME_FIELD_NUMBER: _ClassVar[int]
    POWER_CYCLES_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_HOURS_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_SHUTDOWNS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ERRORS_FIELD_NUMBER: _ClassVar[int]
    NUM_ERR_LOG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    WARNING_TEMPERATURE_TIME_MINUTES_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_COMPOSITE_TEMPERATURE_TIME_MINUTES_FIELD_NUMBER: _ClassVar[int]
    model_number: str
    serial_number: str
    firmware_revision: str
    traddr: str
    critical_warning: int
    temperature_celsius: float
    available_spare_percentage: int
    available_spare_threshold_percentage: int
    percentage_used: int
    data_units_read: int
    data_units_written: int
    host_read_commands: int
    host_write_commands: int
    controller_busy_time: int
    power_cycles: int
    power_on_hours: int
    unsafe_shutdowns: int
    media_errors: int
    num_err_log_entries: int
    warning_temperature_time_minutes: int
    critical_composite_temperature_time_minutes: int
    def __init__(self, model_number: _Optional[str] = ..., serial_number: _Optional[str] = ..., firmware_revision: _Optional[str] = ..., traddr: _Optional[str] = ..., critical_warning: _Optional[int] = ..., temperature_celsius: _Optional[float] = ..., available_spare_percentage: _Optional[int] = ..., available_spare_threshold_percentage: _Optional[int] = ..., percentage_used: _Optional[int] = ..., data_units_read: _Optional[int] = ..., data_units_written: _Optional[int] = ..., host_read_commands: _Optional[int] = ..., host_write_commands: _Optional[int] = ..., controller_busy_time: _Optional[int] = ..., power_cycles: _Optional[int] = ..., power_on_hours: _Optional[int] = ..., unsafe_shutdowns: _Optional[int] = ..., media_errors: _Optional[int] = ..., num_err_log_entries: _Optional[int] = ..., warning_temperature_time_minutes: _Optional[int] = ..., critical_composite_temperature_time_minutes: _Optional[int] = ...) -> None: ...

class DiskListResponse(_message.Message):
    __slots__ = ("disks",)
    class DisksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Disk
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Disk, _Mapping]] = ...) -> None: ...
    DISKS_FIELD_NUMBER: _ClassVar[int]
    disks: _containers.MessageMap[str, Disk]
    def __init__(self, disks: _Optional[_Mapping[str, Disk]] = ...) -> None: ...
