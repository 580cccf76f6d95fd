"""Longhorn's backupstore format: where things live, what the config files
say, and how block names are made. Pure functions and msgspec Structs; no
I/O.

Layout under a backup target (``backupstore.go``, ``config.go``,
``util.go``, ``lock.go`` of longhorn/backupstore)::

    backupstore/volumes/<c0c1>/<c2c3>/<volume>/volume.cfg
    backupstore/volumes/<c0c1>/<c2c3>/<volume>/backups/backup_<backup>.cfg
    backupstore/volumes/<c0c1>/<c2c3>/<volume>/blocks/<k0k1>/<k2k3>/<checksum>.blk
    backupstore/volumes/<c0c1>/<c2c3>/<volume>/locks/<lock>.lck

where ``c`` is the checksum of the volume's name and ``k`` the block's. A
checksum is ``util.GetChecksum``: SHA-512, hex, its first 64 characters.

The config files are what Go's ``encoding/json`` writes for Longhorn's
structs, byte for byte: fields in declaration order, no spaces, map keys
sorted, nil maps as ``null``, ``<``, ``>`` and ``&`` escaped as ``\\u003c``
and so on, and the ``json:",string"`` fields quoted: an ``int64`` becomes a
string (``"Size":"4194304"``) and a ``string`` becomes JSON inside a string
(``"CompressionMethod":"\\"lz4\\""``, which is what Go does with that tag on
a string field). ``encode_volume``, ``encode_backup`` and ``encode_lock``
write exactly that; the decoders read it back (and also the plain forms,
which Go would refuse, so imd is never stricter than it needs to be).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec

from imd.errors import InvalidArgument

BASE = "backupstore"
VOLUMES = "volumes"
VOLUME_CONFIG = "volume.cfg"
BACKUPS = "backups"
BACKUP_PREFIX = "backup_"
CFG_SUFFIX = ".cfg"
BLOCKS = "blocks"
BLOCK_SUFFIX = ".blk"
LOCKS = "locks"
LOCK_SUFFIX = ".lck"

CHECKSUM_LENGTH = 64
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
LEGACY_COMPRESSION = "gzip"  # what an empty CompressionMethod means (backupstore.go)
COMPRESSION_METHODS = ("none", "gzip", "lz4")

# Longhorn's backup parameters (go-common-libs/backup).
PARAM_BLOCK_SIZE = "backup-block-size"
PARAM_MODE = "backup-mode"
MODE_FULL = "full"
MODE_INCREMENTAL = "incremental"

# Progress as Longhorn reports it: blocks run to 95, the config writes to 100.
PROGRESS_BLOCKS = 95
PROGRESS_DONE = 100

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_HEX = re.compile(r"[0-9a-f]{64}")


def valid_name(name: str) -> bool:
    """``util.ValidateName``: what Longhorn accepts as a volume, backup or
    lock name (two characters at least)."""
    return _NAME.fullmatch(name) is not None


def check_name(name: str, field: str) -> str:
    if not valid_name(name):
        raise InvalidArgument(
            f"{name!r} is not a valid name (Longhorn's rule: [a-zA-Z0-9][a-zA-Z0-9_.-]+, at least 2 characters)",
            field=field,
        )
    return name


def check_compression(method: str) -> str:
    """The compression method a request asks for; empty means Longhorn's
    default, lz4."""
    method = method or "lz4"
    if method not in COMPRESSION_METHODS:
        raise InvalidArgument(f"{method!r} is not one of {', '.join(COMPRESSION_METHODS)}", field="compression_method")
    return method


def checksum(data: bytes | bytearray | memoryview) -> str:
    """``util.GetChecksum``: SHA-512 in hex, truncated to 64 characters.
    hashlib releases the GIL while it hashes, so this runs in threads."""
    return hashlib.sha512(data).hexdigest()[:CHECKSUM_LENGTH]


def is_checksum(name: str) -> bool:
    return _HEX.fullmatch(name) is not None


def now() -> str:
    """``util.Now``: RFC 3339 in UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime | None:
    """An RFC 3339 time as Go's ``time.Parse(time.RFC3339, ...)`` reads
    the ones Longhorn writes; None if it is not one."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


# -- paths ----------------------------------------------------------------------


def volume_dir(volume: str) -> str:
    digest = checksum(volume.encode())
    return f"{BASE}/{VOLUMES}/{digest[0:2]}/{digest[2:4]}/{volume}"


def volume_cfg_path(volume: str) -> str:
    return f"{volume_dir(volume)}/{VOLUME_CONFIG}"


def backups_dir(volume: str) -> str:
    return f"{volume_dir(volume)}/{BACKUPS}"


def backup_cfg_path(volume: str, backup: str) -> str:
    return f"{backups_dir(volume)}/{BACKUP_PREFIX}{backup}{CFG_SUFFIX}"


def blocks_dir(volume: str) -> str:
    return f"{volume_dir(volume)}/{BLOCKS}"


def block_path(volume: str, block_checksum: str) -> str:
    return f"{blocks_dir(volume)}/{block_checksum[0:2]}/{block_checksum[2:4]}/{block_checksum}{BLOCK_SUFFIX}"


def locks_dir(volume: str) -> str:
    return f"{volume_dir(volume)}/{LOCKS}"


def lock_path(volume: str, lock: str) -> str:
    return f"{locks_dir(volume)}/{lock}{LOCK_SUFFIX}"


def extract_names(entries: list[str], prefix: str, suffix: str) -> list[str]:
    """``util.ExtractNames``: the names between prefix and suffix, valid
    ones only (a ``.tmp.<ns>`` file left by an interrupted write is not one)."""
    names = []
    for raw in entries:
        entry = raw.lstrip("/")
        if entry.startswith(prefix) and entry.endswith(suffix):
            name = entry[len(prefix) : len(entry) - len(suffix)]
            if valid_name(name):
                names.append(name)
    return names


# -- block size -----------------------------------------------------------------

_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|)")
_SUFFIX = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def block_size_of(parameters: Mapping[str, str] | None) -> int:
    """``getBlockSizeFromParameters``: ``backup-block-size`` as a Kubernetes
    quantity (``2Mi``, ``16Mi``, ``2097152``), 2 MiB when absent, empty or
    zero. imd also wants it a positive multiple of 4096, which every size
    Longhorn offers is."""
    value = (parameters or {}).get(PARAM_BLOCK_SIZE, "")
    if value == "":
        return DEFAULT_BLOCK_SIZE
    match = _QUANTITY.fullmatch(value.strip())
    field = f"parameters[{PARAM_BLOCK_SIZE}]"
    if match is None:
        raise InvalidArgument(f"{value!r} is not a quantity such as 2Mi or 16Mi", field=field)
    number, suffix = match.groups()
    whole, _, fraction = number.partition(".")
    scale = _SUFFIX[suffix]
    size = int(whole) * scale + (-(-int(fraction or "0") * scale // 10 ** len(fraction)) if fraction else 0)
    if size == 0:
        return DEFAULT_BLOCK_SIZE
    if size % 4096:
        raise InvalidArgument(f"{value!r} ({size} bytes) is not a multiple of 4096 bytes", field=field)
    return size


def is_full_mode(parameters: Mapping[str, str] | None) -> bool:
    """``backup-mode: full``: upload every block again, even those the target has."""
    return (parameters or {}).get(PARAM_MODE) == MODE_FULL


# -- the config files -------------------------------------------------------------


class BlockMapping(msgspec.Struct, frozen=True, rename="pascal"):
    """One block of a backup: where it sits in the volume, and its checksum
    (which names its file)."""

    offset: int
    block_checksum: str


class VolumeConfig(msgspec.Struct, kw_only=True):
    """``volume.cfg`` (Longhorn's ``Volume``)."""

    name: str
    size: int
    labels: dict[str, str] | None = None
    created_time: str = ""
    last_backup_name: str = ""
    last_backup_at: str = ""
    block_count: int = 0
    backing_image_name: str = ""
    backing_image_checksum: str = ""
    compression_method: str = ""
    storage_class_name: str = ""
    data_engine: str = ""


class BackupConfig(msgspec.Struct, kw_only=True):
    """``backup_<name>.cfg`` (Longhorn's ``Backup``). ``created_time`` empty
    is Longhorn's mark of a backup still in progress."""

    name: str
    volume_name: str
    snapshot_name: str = ""
    snapshot_created_at: str = ""
    created_time: str = ""
    size: int = 0
    labels: dict[str, str] | None = None
    parameters: dict[str, str] | None = None
    is_incremental: bool = False
    compression_method: str = ""
    newly_uploaded_data_size: int = 0
    re_uploaded_data_size: int = 0
    blocks: list[BlockMapping] = msgspec.field(default_factory=list)
    single_file_path: str = ""

    @property
    def in_progress(self) -> bool:
        return self.created_time == ""


class LockFile(msgspec.Struct, rename="pascal"):
    """A lock file's content (Longhorn's ``FileLock``, exported fields)."""

    name: str
    type: int
    acquired: bool = False


# Go's encoding/json, for exactly the values these files hold.

_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_SPECIAL = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    special = _SPECIAL.get(char)
    if special is not None:
        return special
    if "\ud800" <= char <= "\udfff":
        return "\ufffd"  # what Go writes for a byte that is not UTF-8
    return f"\\u{ord(char):04x}"


def go_string(value: str) -> str:
    """A JSON string as Go's encoding/json writes it (HTML-safe)."""
    return '"' + _ESCAPE.sub(_escape_char, value) + '"'


def _go_quoted(value: str) -> str:
    """A ``string`` field tagged ``json:",string"``: JSON inside JSON."""
    return go_string(go_string(value))


def _go_map(value: Mapping[str, str] | None) -> str:
    if value is None:
        return "null"
    return "{" + ",".join(f"{go_string(k)}:{go_string(value[k])}" for k in sorted(value)) + "}"


def _go_bool(value: bool) -> str:
    return "true" if value else "false"


def encode_volume(v: VolumeConfig) -> bytes:
    return (
        "{"
        f'"Name":{go_string(v.name)},'
        f'"Size":"{v.size:d}",'
        f'"Labels":{_go_map(v.labels)},'
        f'"CreatedTime":{go_string(v.created_time)},'
        f'"LastBackupName":{go_string(v.last_backup_name)},'
        f'"LastBackupAt":{go_string(v.last_backup_at)},'
        f'"BlockCount":"{v.block_count:d}",'
        f'"BackingImageName":{_go_quoted(v.backing_image_name)},'
        f'"BackingImageChecksum":{_go_quoted(v.backing_image_checksum)},'
        f'"CompressionMethod":{_go_quoted(v.compression_method)},'
        f'"StorageClassName":{_go_quoted(v.storage_class_name)},'
        f'"DataEngine":{_go_quoted(v.data_engine)}'
        "}"
    ).encode()


def encode_backup(b: BackupConfig) -> bytes:
    """A backup's config as Longhorn writes it. ``ProcessingBlocks`` is an
    internal field Go serializes anyway: ``{}`` on a full backup (the struct
    it filled), ``null`` on an incremental one (the merged copy)."""
    for block in b.blocks:
        if not is_checksum(block.block_checksum):
            raise ValueError(f"not a block checksum: {block.block_checksum!r}")
    blocks = ""
    if b.blocks:
        # Offsets are ints and checksums hex: msgspec writes them as Go does.
        blocks = ',"Blocks":' + msgspec.json.encode(b.blocks).decode()
    return (
        "{"
        f'"Name":{go_string(b.name)},'
        f'"VolumeName":{go_string(b.volume_name)},'
        f'"SnapshotName":{go_string(b.snapshot_name)},'
        f'"SnapshotCreatedAt":{go_string(b.snapshot_created_at)},'
        f'"CreatedTime":{go_string(b.created_time)},'
        f'"Size":"{b.size:d}",'
        f'"Labels":{_go_map(b.labels)},'
        f'"Parameters":{_go_map(b.parameters)},'
        f'"IsIncremental":{_go_bool(b.is_incremental)},'
        f'"CompressionMethod":{go_string(b.compression_method)},'
        f'"NewlyUploadedDataSize":"{b.newly_uploaded_data_size:d}",'
        f'"ReUploadedDataSize":"{b.re_uploaded_data_size:d}",'
        f'"ProcessingBlocks":{"null" if b.is_incremental else "{}"}'
        f"{blocks},"
        f'"SingleFile":{{"FilePath":{go_string(b.single_file_path)}}}'
        "}"
    ).encode()


def encode_lock(lock: LockFile) -> bytes:
    return f'{{"Name":{go_string(lock.name)},"Type":{lock.type:d},"Acquired":{_go_bool(lock.acquired)}}}'.encode()


# Decoding: the files as written, with the quoted fields still quoted.

_Quoted = str | int | None


class _VolumeWire(msgspec.Struct, rename="pascal"):
    name: str = ""
    size: _Quoted = None
    labels: dict[str, str] | None = None
    created_time: str | None = ""
    last_backup_name: str | None = ""
    last_backup_at: str | None = ""
    block_count: _Quoted = None
    backing_image_name: str | None = None
    backing_image_checksum: str | None = None
    compression_method: str | None = None
    storage_class_name: str | None = None
    data_engine: str | None = None


class _SingleFile(msgspec.Struct, rename="pascal"):
    file_path: str | None = ""


class _BackupWire(msgspec.Struct, rename="pascal"):
    name: str = ""
    volume_name: str = ""
    snapshot_name: str | None = ""
    snapshot_created_at: str | None = ""
    created_time: str | None = ""
    size: _Quoted = None
    labels: dict[str, str] | None = None
    parameters: dict[str, str] | None = None
    is_incremental: bool | None = False
    compression_method: str | None = ""
    newly_uploaded_data_size: _Quoted = None
    re_uploaded_data_size: _Quoted = None
    blocks: list[BlockMapping] | None = None
    single_file: _SingleFile | None = None


def _unquote_int(value: _Quoted, what: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an integer") from None


def _unquote_str(value: str | None) -> str:
    if not value:
        return ""
    if value.startswith('"'):
        decoded = msgspec.json.decode(value)
        if isinstance(decoded, str):
            return decoded
    return value


def decode_volume(data: bytes | bytearray | memoryview) -> VolumeConfig:
    """volume.cfg; an empty CompressionMethod reads as gzip and an empty
    DataEngine as v1, as ``loadVolume`` does."""
    wire = msgspec.json.decode(data, type=_VolumeWire)
    return VolumeConfig(
        name=wire.name,
        size=_unquote_int(wire.size, "Size"),
        labels=wire.labels,
        created_time=wire.created_time or "",
        last_backup_name=wire.last_backup_name or "",
        last_backup_at=wire.last_backup_at or "",
        block_count=_unquote_int(wire.block_count, "BlockCount"),
        backing_image_name=_unquote_str(wire.backing_image_name),
        backing_image_checksum=_unquote_str(wire.backing_image_checksum),
        compression_method=_unquote_str(wire.compression_method) or LEGACY_COMPRESSION,
        storage_class_name=_unquote_str(wire.storage_class_name),
        data_engine=_unquote_str(wire.data_engine) or "v1",
    )


def decode_backup(data: bytes | bytearray | memoryview) -> BackupConfig:
    """A backup's config; an empty CompressionMethod reads as gzip, as
    ``loadBackup`` does."""
    wire = msgspec.json.decode(data, type=_BackupWire)
    return BackupConfig(
        name=wire.name,
        volume_name=wire.volume_name,
        snapshot_name=wire.snapshot_name or "",
        snapshot_created_at=wire.snapshot_created_at or "",
        created_time=wire.created_time or "",
        size=_unquote_int(wire.size, "Size"),
        labels=wire.labels,
        parameters=wire.parameters,
        is_incremental=bool(wire.is_incremental),
        compression_method=wire.compression_method or LEGACY_COMPRESSION,
        newly_uploaded_data_size=_unquote_int(wire.newly_uploaded_data_size, "NewlyUploadedDataSize"),
        re_uploaded_data_size=_unquote_int(wire.re_uploaded_data_size, "ReUploadedDataSize"),
        blocks=wire.blocks or [],
        single_file_path=(wire.single_file.file_path or "") if wire.single_file else "",
    )


def decode_lock(data: bytes | bytearray | memoryview) -> LockFile:
    return msgspec.json.decode(data, type=LockFile)
