from google.protobuf import empty_pb2 as _empty_pb2
from imd.api.gen.ptypes import controller_pb2 as _controller_pb2
from imd.api.gen.ptypes import syncagent_pb2 as _syncagent_pb2
from imd.api.gen.imrpc import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProxyEngineRequest(_message.Message):
    __slots__ = ("address", "backend_store_driver", "engine_name", "volume_name", "data_engine", "engine_frontend_name")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_STORE_DRIVER_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FRONTEND_NAME_FIELD_NUMBER: _ClassVar[int]
    address: str
    backend_store_driver: _common_pb2.BackendStoreDriver
    engine_name: str
    volume_name: str
    data_engine: _common_pb2.DataEngine
    engine_frontend_name: str
    def __init__(self, address: _Optional[str] = ..., backend_store_driver: _Optional[_Union[_common_pb2.BackendStoreDriver, str]] = ..., engine_name: _Optional[str] = ..., volume_name: _Optional[str] = ..., data_engine: _Optional[_Union[_common_pb2.DataEngine, str]] = ..., engine_frontend_name: _Optional[str] = ...) -> None: ...

class EngineVersionProxyResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _controller_pb2.VersionOutput
    def __init__(self, version: _Optional[_Union[_controller_pb2.VersionOutput, _Mapping]] = ...) -> None: ...

class EngineVolumeGetProxyResponse(_message.Message):
    __slots__ = ("volume",)
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    volume: _controller_pb2.Volume
    def __init__(self, volume: _Optional[_Union[_controller_pb2.Volume, _Mapping]] = ...) -> None: ...

class EngineVolumeExpandRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "expand")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    EXPAND_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    expand: _controller_pb2.VolumeExpandRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., expand: _Optional[_Union[_controller_pb2.VolumeExpandRequest, _Mapping]] = ...) -> None: ...

class EngineVolumeFrontendStartRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "frontend_start")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_START_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    frontend_start: _controller_pb2.VolumeFrontendStartRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., frontend_start: _Optional[_Union[_controller_pb2.VolumeFrontendStartRequest, _Mapping]] = ...) -> None: ...

class EngineVolumeSnapshotRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "snapshot_volume")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VOLUME_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    snapshot_volume: _controller_pb2.VolumeSnapshotRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., snapshot_volume: _Optional[_Union[_controller_pb2.VolumeSnapshotRequest, _Mapping]] = ...) -> None: ...

class EngineVolumeSnapshotProxyResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: _controller_pb2.VolumeSnapshotReply
    def __init__(self, snapshot: _Optional[_Union[_controller_pb2.VolumeSnapshotReply, _Mapping]] = ...) -> None: ...

class EngineVolumeUnmapMarkSnapChainRemovedSetRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "unmap_mark_snap")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMAP_MARK_SNAP_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    unmap_mark_snap: _controller_pb2.VolumeUnmapMarkSnapChainRemovedSetRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., unmap_mark_snap: _Optional[_Union[_controller_pb2.VolumeUnmapMarkSnapChainRemovedSetRequest, _Mapping]] = ...) -> None: ...

class EngineVolumeSnapshotMaxCountSetRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "count")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    count: _controller_pb2.VolumeSnapshotMaxCountSetRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., count: _Optional[_Union[_controller_pb2.VolumeSnapshotMaxCountSetRequest, _Mapping]] = ...) -> None: ...

class EngineVolumeSnapshotMaxSizeSetRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "size")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    size: _controller_pb2.VolumeSnapshotMaxSizeSetRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., size: _Optional[_Union[_controller_pb2.VolumeSnapshotMaxSizeSetRequest, _Mapping]] = ...) -> None: ...

class EngineSnapshotListProxyResponse(_message.Message):
    __slots__ = ("disks",)
    class DisksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EngineSnapshotDiskInfo
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EngineSnapshotDiskInfo, _Mapping]] = ...) -> None: ...
    DISKS_FIELD_NUMBER: _ClassVar[int]
    disks: _containers.MessageMap[str, EngineSnapshotDiskInfo]
    def __init__(self, disks: _Optional[_Mapping[str, EngineSnapshotDiskInfo]] = ...) -> None: ...

class EngineSnapshotDiskInfo(_message.Message):
    __slots__ = ("name", "parent", "children", "removed", "user_created", "created", "size", "labels")
    class ChildrenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
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
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    USER_CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parent: str
    children: _containers.ScalarMap[str, bool]
    removed: bool
    user_created: bool
    created: str
    size: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., parent: _Optional[str] = ..., children: _Optional[_Mapping[str, bool]] = ..., removed: _Optional[bool] = ..., user_created: _Optional[bool] = ..., created: _Optional[str] = ..., size: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EngineSnapshotRevertRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "name")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    name: str
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class EngineSnapshotPurgeRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "skip_if_in_progress")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SKIP_IF_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    skip_if_in_progress: bool
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., skip_if_in_progress: _Optional[bool] = ...) -> None: ...

class EngineSnapshotPurgeStatusProxyResponse(_message.Message):
    __slots__ = ("status",)
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _syncagent_pb2.SnapshotPurgeStatusResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_syncagent_pb2.SnapshotPurgeStatusResponse, _Mapping]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.MessageMap[str, _syncagent_pb2.SnapshotPurgeStatusResponse]
    def __init__(self, status: _Optional[_Mapping[str, _syncagent_pb2.SnapshotPurgeStatusResponse]] = ...) -> None: ...

class EngineSnapshotCloneRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "from_engine_address", "snapshot_name", "export_backing_image_if_exist", "file_sync_http_client_timeout", "from_engine_name", "from_volume_name", "grpc_timeout_seconds", "clone_mode", "dst_replica_src_replica_pair_map")
    class DstReplicaSrcReplicaPairMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    FROM_ENGINE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPORT_BACKING_IMAGE_IF_EXIST_FIELD_NUMBER: _ClassVar[int]
    FILE_SYNC_HTTP_CLIENT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    FROM_ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLONE_MODE_FIELD_NUMBER: _ClassVar[int]
    DST_REPLICA_SRC_REPLICA_PAIR_MAP_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    from_engine_address: str
    snapshot_name: str
    export_backing_image_if_exist: bool
    file_sync_http_client_timeout: int
    from_engine_name: str
    from_volume_name: str
    grpc_timeout_seconds: int
    clone_mode: _common_pb2.CloneMode
    dst_replica_src_replica_pair_map: _containers.ScalarMap[str, str]
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., from_engine_address: _Optional[str] = ..., snapshot_name: _Optional[str] = ..., export_backing_image_if_exist: _Optional[bool] = ..., file_sync_http_client_timeout: _Optional[int] = ..., from_engine_name: _Optional[str] = ..., from_volume_name: _Optional[str] = ..., grpc_timeout_seconds: _Optional[int] = ..., clone_mode: _Optional[_Union[_common_pb2.CloneMode, str]] = ..., dst_replica_src_replica_pair_map: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EngineSnapshotCloneStatusProxyResponse(_message.Message):
    __slots__ = ("status",)
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _syncagent_pb2.SnapshotCloneStatusResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_syncagent_pb2.SnapshotCloneStatusResponse, _Mapping]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.MessageMap[str, _syncagent_pb2.SnapshotCloneStatusResponse]
    def __init__(self, status: _Optional[_Mapping[str, _syncagent_pb2.SnapshotCloneStatusResponse]] = ...) -> None: ...

class EngineSnapshotRemoveRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "names")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class EngineSnapshotBackupRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "envs", "backup_name", "snapshot_name", "backup_target", "backing_image_name", "backing_image_checksum", "labels", "compression_method", "concurrent_limit", "storage_class_name", "parameters")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ENVS_FIELD_NUMBER: _ClassVar[int]
    BACKUP_NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKUP_TARGET_FIELD_NUMBER: _ClassVar[int]
    BACKING_IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKING_IMAGE_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_METHOD_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    envs: _containers.RepeatedScalarFieldContainer[str]
    backup_name: str
    snapshot_name: str
    backup_target: str
    backing_image_name: str
    backing_image_checksum: str
    labels: _containers.ScalarMap[str, str]
    compression_method: str
    concurrent_limit: int
    storage_class_name: str
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., envs: _Optional[_Iterable[str]] = ..., backup_name: _Optional[str] = ..., snapshot_name: _Optional[str] = ..., backup_target: _Optional[str] = ..., backing_image_name: _Optional[str] = ..., backing_image_checksum: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., compression_method: _Optional[str] = ..., concurrent_limit: _Optional[int] = ..., storage_class_name: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EngineSnapshotBackupProxyResponse(_message.Message):
    __slots__ = ("backup_id", "replica", "is_incremental")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    IS_INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    replica: str
    is_incremental: bool
    def __init__(self, backup_id: _Optional[str] = ..., replica: _Optional[str] = ..., is_incremental: _Optional[bool] = ...) -> None: ...

class EngineSnapshotBackupStatusRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "backup_name", "replica_address", "replica_name")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    BACKUP_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NAME_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    backup_name: str
    replica_address: str
    replica_name: str
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., backup_name: _Optional[str] = ..., replica_address: _Optional[str] = ..., replica_name: _Optional[str] = ...) -> None: ...

class EngineSnapshotBackupStatusProxyResponse(_message.Message):
    __slots__ = ("backup_url", "error", "progress", "snapshot_name", "state", "replica_address")
    BACKUP_URL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    backup_url: str
    error: str
    progress: int
    snapshot_name: str
    state: str
    replica_address: str
    def __init__(self, backup_url: _Optional[str] = ..., error: _Optional[str] = ..., progress: _Optional[int] = ..., snapshot_name: _Optional[str] = ..., state: _Optional[str] = ..., replica_address: _Optional[str] = ...) -> None: ...

class EngineBackupRestoreRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "envs", "url", "target", "volume_name", "concurrent_limit", "need_correct_encrypted_volume_size")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ENVS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEED_CORRECT_ENCRYPTED_VOLUME_SIZE_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    envs: _containers.RepeatedScalarFieldContainer[str]
    url: str
    target: str
    volume_name: str
    concurrent_limit: int
    need_correct_encrypted_volume_size: bool
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., envs: _Optional[_Iterable[str]] = ..., url: _Optional[str] = ..., target: _Optional[str] = ..., volume_name: _Optional[str] = ..., concurrent_limit: _Optional[int] = ..., need_correct_encrypted_volume_size: _Optional[bool] = ...) -> None: ...

class EngineBackupRestoreProxyResponse(_message.Message):
    __slots__ = ("taskError",)
    TASKERROR_FIELD_NUMBER: _ClassVar[int]
    taskError: bytes
    def __init__(self, taskError: _Optional[bytes] = ...) -> None: ...

class EngineBackupRestoreStatusProxyResponse(_message.Message):
    __slots__ = ("status",)
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EngineBackupRestoreStatus
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EngineBackupRestoreStatus, _Mapping]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.MessageMap[str, EngineBackupRestoreStatus]
    def __init__(self, status: _Optional[_Mapping[str, EngineBackupRestoreStatus]] = ...) -> None: ...

class EngineBackupRestoreStatus(_message.Message):
    __slots__ = ("is_restoring", "last_restored", "current_restoring_backup", "progress", "error", "filename", "state", "backup_url")
    IS_RESTORING_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTORED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RESTORING_BACKUP_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BACKUP_URL_FIELD_NUMBER: _ClassVar[int]
    is_restoring: bool
    last_restored: str
    current_restoring_backup: str
    progress: int
    error: str
    filename: str
    state: str
    backup_url: str
    def __init__(self, is_restoring: _Optional[bool] = ..., last_restored: _Optional[str] = ..., current_restoring_backup: _Optional[str] = ..., progress: _Optional[int] = ..., error: _Optional[str] = ..., filename: _Optional[str] = ..., state: _Optional[str] = ..., backup_url: _Optional[str] = ...) -> None: ...

class EngineBackupRestoreFinishRequest(_message.Message):
    __slots__ = ("proxy_engine_request",)
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ...) -> None: ...

class EngineReplicaAddRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "replica_address", "restore", "size", "current_size", "fast_sync", "file_sync_http_client_timeout", "replica_name", "grpc_timeout_seconds", "local_sync", "linked_clone_src_replica_name", "linked_clone_src_engine_name", "linked_clone_src_engine_address")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FAST_SYNC_FIELD_NUMBER: _ClassVar[int]
    FILE_SYNC_HTTP_CLIENT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SYNC_FIELD_NUMBER: _ClassVar[int]
    LINKED_CLONE_SRC_REPLICA_NAME_FIELD_NUMBER: _ClassVar[int]
    LINKED_CLONE_SRC_ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    LINKED_CLONE_SRC_ENGINE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    replica_address: str
    restore: bool
    size: int
    current_size: int
    fast_sync: bool
    file_sync_http_client_timeout: int
    replica_name: str
    grpc_timeout_seconds: int
    local_sync: EngineReplicaLocalSync
    linked_clone_src_replica_name: str
    linked_clone_src_engine_name: str
    linked_clone_src_engine_address: str
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., replica_address: _Optional[str] = ..., restore: _Optional[bool] = ..., size: _Optional[int] = ..., current_size: _Optional[int] = ..., fast_sync: _Optional[bool] = ..., file_sync_http_client_timeout: _Optional[int] = ..., replica_name: _Optional[str] = ..., grpc_timeout_seconds: _Optional[int] = ..., local_sync: _Optional[_Union[EngineReplicaLocalSync, _Mapping]] = ..., linked_clone_src_replica_name: _Optional[str] = ..., linked_clone_src_engine_name: _Optional[str] = ..., linked_clone_src_engine_address: _Optional[str] = ...) -> None: ...

class EngineReplicaLocalSync(_message.Message):
    __slots__ = ("source_path", "target_path")
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    source_path: str
    target_path: str
    def __init__(self, source_path: _Optional[str] = ..., target_path: _Optional[str] = ...) -> None: ...

class EngineReplicaListProxyResponse(_message.Message):
    __slots__ = ("replica_list",)
    REPLICA_LIST_FIELD_NUMBER: _ClassVar[int]
    replica_list: _controller_pb2.ReplicaListReply
    def __init__(self, replica_list: _Optional[_Union[_controller_pb2.ReplicaListReply, _Mapping]] = ...) -> None: ...

class EngineReplicaVerifyRebuildRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "replica_address", "replica_name")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NAME_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    replica_address: str
    replica_name: str
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., replica_address: _Optional[str] = ..., replica_name: _Optional[str] = ...) -> None: ...

class EngineReplicaRebuildingQosSetRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "qos_limit_mbps")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    QOS_LIMIT_MBPS_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    qos_limit_mbps: int
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., qos_limit_mbps: _Optional[int] = ...) -> None: ...

class EngineReplicaRebuildStatusProxyResponse(_message.Message):
    __slots__ = ("status",)
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _syncagent_pb2.ReplicaRebuildStatusResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_syncagent_pb2.ReplicaRebuildStatusResponse, _Mapping]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.MessageMap[str, _syncagent_pb2.ReplicaRebuildStatusResponse]
    def __init__(self, status: _Optional[_Mapping[str, _syncagent_pb2.ReplicaRebuildStatusResponse]] = ...) -> None: ...

class EngineReplicaRemoveRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "replica_address", "replica_name")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NAME_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    replica_address: str
    replica_name: str
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., replica_address: _Optional[str] = ..., replica_name: _Optional[str] = ...) -> None: ...

class EngineReplicaModeUpdateRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "replica_address", "mode")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    replica_address: str
    mode: _controller_pb2.ReplicaMode
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., replica_address: _Optional[str] = ..., mode: _Optional[_Union[_controller_pb2.ReplicaMode, str]] = ...) -> None: ...

class EngineReplicaRebuildConcurrentSyncLimitSetRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "limit")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    limit: int
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class EngineReplicaRebuildConcurrentSyncLimitGetResponse(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class EngineSnapshotHashRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "snapshot_name", "rehash")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    REHASH_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    snapshot_name: str
    rehash: bool
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., snapshot_name: _Optional[str] = ..., rehash: _Optional[bool] = ...) -> None: ...

class EngineSnapshotHashStatusRequest(_message.Message):
    __slots__ = ("proxy_engine_request", "snapshot_name")
    PROXY_ENGINE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    proxy_engine_request: ProxyEngineRequest
    snapshot_name: str
    def __init__(self, proxy_engine_request: _Optional[_Union[ProxyEngineRequest, _Mapping]] = ..., snapshot_name: _Optional[str] = ...) -> None: ...

class EngineSnapshotHashStatusProxyResponse(_message.Message):
    __slots__ = ("status",)
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _syncagent_pb2.SnapshotHashStatusResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_syncagent_pb2.SnapshotHashStatusResponse, _Mapping]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.MessageMap[str, _syncagent_pb2.SnapshotHashStatusResponse]
    def __init__(self, status: _Optional[_Mapping[str, _syncagent_pb2.SnapshotHashStatusResponse]] = ...) -> None: ...

class EngineMetricsGetProxyResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _controller_pb2.Metrics
    def __init__(self, metrics: _Optional[_Union[_controller_pb2.Metrics, _Mapping]] = ...) -> None: ...

class RemountVolumeRequest(_message.Message):
    __slots__ = ("volume_name",)
    VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    volume_name: str
    def __init__(self, volume_name: _Optional[str] = ...) -> None: ...

class SPDKBackingImageCreateRequest(_message.Message):
    __slots__ = ("name", "backing_image_uuid", "disk_uuid", "size", "checksum", "from_address", "src_lvs_uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKING_IMAGE_UUID_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    FROM_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SRC_LVS_UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    backing_image_uuid: str
    disk_uuid: str
    size: int
    checksum: str
    from_address: str
    src_lvs_uuid: str
    def __init__(self, name: _Optional[str] = ..., backing_image_uuid: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., size: _Optional[int] = ..., checksum: _Optional[str] = ..., from_address: _Optional[str] = ..., src_lvs_uuid: _Optional[str] = ...) -> None: ...

class SPDKBackingImageDeleteRequest(_message.Message):
    __slots__ = ("name", "disk_uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk_uuid: str
    def __init__(self, name: _Optional[str] = ..., disk_uuid: _Optional[str] = ...) -> None: ...

class SPDKBackingImageGetRequest(_message.Message):
    __slots__ = ("name", "disk_uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk_uuid: str
    def __init__(self, name: _Optional[str] = ..., disk_uuid: _Optional[str] = ...) -> None: ...

class SPDKBackingImageSpec(_message.Message):
    __slots__ = ("name", "backing_image_uuid", "disk_uuid", "size", "checksum")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKING_IMAGE_UUID_FIELD_NUMBER: _ClassVar[int]
    DISK_UUID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    backing_image_uuid: str
    disk_uuid: str
    size: int
    checksum: str
    def __init__(self, name: _Optional[str] = ..., backing_image_uuid: _Optional[str] = ..., disk_uuid: _Optional[str] = ..., size: _Optional[int] = ..., checksum: _Optional[str] = ...) -> None: ...

class SPDKBackingImageStatus(_message.Message):
    __slots__ = ("progress", "state", "checksum", "error_msg")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ERROR_MSG_FIELD_NUMBER: _ClassVar[int]
    progress: int
    state: str
    checksum: str
    error_msg: str
    def __init__(self, progress: _Optional[int] = ..., state: _Optional[str] = ..., checksum: _Optional[str] = ..., error_msg: _Optional[str] = ...) -> None: ...

class SPDKBackingImageResponse(_message.Message):
    __slots__ = ("spec", "status")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    spec: SPDKBackingImageSpec
    status: SPDKBackingImageStatus
    def __init__(self, spec: _Optional[_Union[SPDKBackingImageSpec, _Mapping]] = ..., status: _Optional[_Union[SPDKBackingImageStatus, _Mapping]] = ...) -> None: ...

class SPDKBackingImageListResponse(_message.Message):
    __slots__ = ("backing_images",)
    class BackingImagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SPDKBackingImageResponse
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SPDKBackingImageResponse, _Mapping]] = ...) -> None: ...
    BACKING_IMAGES_FIELD_NUMBER: _ClassVar[int]
    backing_images: _containers.MessageMap[str, SPDKBackingImageResponse]
    def __init__(self, backing_images: _Optional[_Mapping[str, SPDKBackingImageResponse]] = ...) -> None: ...
