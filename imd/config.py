"""Daemon configuration: a TOML file decoded by msgspec, then flag overrides.

Relative paths are resolved against the working directory, so the default
config (no file, no flags) keeps all state under ``./.imd`` of wherever the
daemon was started: handy in a checkout, and never a surprise write to
``/var``. The shipped systemd config (systemd/imd.toml) sets absolute paths.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

import msgspec

from imd.supervisor.process import SupervisionSettings

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
# SPDK's -m: a hex mask, or a list of cores and ranges in brackets.
_CORE_MASK = re.compile(r"0[xX][0-9a-fA-F]+|\[\d+(-\d+)?(,\d+(-\d+)?)*\]")


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Longhorn's layout: ``ca.crt``, ``tls.crt`` and ``tls.key`` in one directory."""

    dir: str


class V2Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Data engine V2: the node's SPDK target (replicas) and the engines
    imd hosts itself (spdk_ffi's native core). Off unless ``enabled``."""

    enabled: bool = False
    spdk_dir: str = ""
    """SPDK install prefix (bin/nvmf_tgt, lib/); default: $SPDK_DIR."""
    target_binary: str = ""
    """Default: <spdk_dir>/bin/nvmf_tgt."""
    target_core_mask: str = "0x1"
    target_mem_size_mb: Annotated[int, msgspec.Meta(ge=64)] = 1024
    hugepages: bool = False
    """Run the target and imd's core on hugepages (set them up first)."""
    target_rpc_socket: str = ""
    """Default: <state_dir>/spdk-target.sock."""
    target_start_timeout_s: Seconds = 30.0
    target_args: list[str] = []
    """Extra arguments for the target (e.g. ``--disable-cpumask-locks``)."""
    replica_address: str = "127.0.0.1"
    """Where replicas listen (engines on other nodes connect here)."""
    engine_address: str = "127.0.0.1"
    """Where engines' frontends listen (hosts connect here)."""
    engine_core_mask: str = "0x2"
    """The core of imd's own SPDK poller (engines: mirror and frontend)."""
    engine_mem_size_mb: Annotated[int, msgspec.Meta(ge=64)] = 1024
    engine_idle_spin_us: Annotated[int, msgspec.Meta(ge=0)] = 2000
    replica_ctrlr_loss_timeout_s: Annotated[int, msgspec.Meta(ge=-1)] = 10
    replica_reconnect_delay_s: Annotated[int, msgspec.Meta(ge=0)] = 1
    replica_fast_io_fail_timeout_s: Annotated[int, msgspec.Meta(ge=0)] = 2
    replica_attach_timeout_s: Seconds = 10.0
    replica_timeout_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 5.0
    """How long an engine waits for a replica that answers nothing (its node
    lost power, hangs, or is cut off: no RST, no ICMP) before it fails the
    replica (ERR) and completes the host's writes from the others; also the
    bound after which such a path is declared lost and reconnected, and the
    keep-alive timeout engines ask replicas' targets for (capped at 10 s).
    Longhorn's V1 counterpart is its engine-replica-timeout setting."""
    rebuild_chunk_kib: Annotated[int, msgspec.Meta(ge=4, le=65536)] = 1024
    rebuild_rate_mib_s: Annotated[int, msgspec.Meta(ge=0)] = 256
    """Bandwidth cap of a replica rebuild, so host I/O keeps most of the
    machine (0: no cap); ReplicaRebuildingQosSet sets it per engine."""
    snapshot_hash_rate_mib_s: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Cap on what a SnapshotHash reads on one replica (0: no cap): a hash
    of a large snapshot can then leave host I/O most of the machine."""
    backup_rate_mib_s: Annotated[int, msgspec.Meta(ge=0)] = 128
    """Cap on what a V2 backup reads to hash, compress and upload (all-zero
    blocks are not counted), so host I/O keeps most of the machine (0: no
    cap)."""
    image_connect_timeout_s: Seconds = 10.0
    """A backing image's download: how long connecting to its URL may take."""
    image_read_timeout_s: Seconds = 30.0
    """A backing image's download: how long the server may send nothing
    (for the answer, and for each piece of the body) before the download
    fails."""

    def validate(self) -> None:
        """Values the types cannot check, named by their key (a bad mask or
        address would otherwise surface only as a target that cannot start,
        or an engine that cannot listen)."""
        for key in ("target_core_mask", "engine_core_mask"):
            mask = getattr(self, key)
            if not _CORE_MASK.fullmatch(mask) or (mask[:2] in ("0x", "0X") and int(mask, 16) == 0):
                raise ConfigError(f"v2.{key}: {mask!r} is not a core mask (0x1, or a list such as [0,1])")
        for key in ("replica_address", "engine_address"):
            value = getattr(self, key)
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ConfigError(f"v2.{key}: {value!r} is not an IP address") from None

    def spdk_prefix(self) -> str:
        return self.spdk_dir or os.environ.get("SPDK_DIR", "")

    def target_path(self) -> str:
        if self.target_binary:
            return self.target_binary
        prefix = self.spdk_prefix()
        return str(Path(prefix) / "bin" / "nvmf_tgt") if prefix else ""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: str = "127.0.0.1:8500"
    """Base address: process manager here, instance API on port + 3."""
    socket: str = ".imd/imd.sock"
    """Unix socket serving every service; empty to disable."""
    state_dir: str = ".imd/state"
    logs_dir: str = ".imd/logs"
    port_range: str = "10000-20000"
    health_timeout_s: Seconds = 60.0
    health_interval_s: Seconds = 0.1
    stop_grace_s: Seconds = 30.0
    watch_queue: Annotated[int, msgspec.Meta(ge=1)] = 1024
    drain_timeout_s: Seconds = 10.0
    stop_children_on_exit: bool = True
    log_max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 64 * 1024 * 1024
    log_keep: Annotated[int, msgspec.Meta(ge=0)] = 3
    log_check_s: Seconds = 10.0
    deleted_log_retention_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    log_level: str = "info"
    fd_reserve: Annotated[int, msgspec.Meta(ge=0)] = 16
    """Descriptors held back for connections, health checks and the state
    file, spent when the limit is hit (see imd/supervisor/resources.py)."""
    mounts_file: str = "/proc/self/mounts"
    """The mount table read for engines' FilesystemReadOnly condition."""
    mount_check_interval_s: Seconds = 10.0
    """How often it is read (the Go original's MountCheckInterval)."""
    tls: TlsConfig | None = None
    metrics_listen: str | None = None
    """Prometheus endpoint HOST:PORT (GET /metrics); default: the listen
    host on the base port + 10; "" turns it off."""
    v2: V2Config = msgspec.field(default_factory=V2Config)

    def listen_host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65532:
            raise ConfigError(f"listen: {self.listen!r} is not HOST:PORT with PORT in 1-65532")
        return host.strip("[]"), int(port)

    def metrics_host_port(self) -> tuple[str, int] | None:
        """Where /metrics is served, or None when turned off."""
        if self.metrics_listen == "":
            return None
        if self.metrics_listen is None:
            host, base = self.listen_host_port()
            return host, base + 10
        host, sep, port = self.metrics_listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"metrics_listen: {self.metrics_listen!r} is not HOST:PORT")
        return host.strip("[]") or "127.0.0.1", int(port)

    def port_bounds(self) -> tuple[int, int]:
        low, sep, high = self.port_range.partition("-")
        if not sep or not low.isdigit() or not high.isdigit():
            raise ConfigError(f"port_range: {self.port_range!r} is not A-B")
        lo, hi = int(low), int(high)
        if not 1 <= lo <= hi <= 65535:
            raise ConfigError(f"port_range: {self.port_range!r} must satisfy 1 <= A <= B <= 65535")
        return lo, hi

    def supervision(self) -> SupervisionSettings:
        return SupervisionSettings(
            health_timeout_s=self.health_timeout_s,
            health_interval_s=self.health_interval_s,
            stop_grace_s=self.stop_grace_s,
        )

    def validate(self) -> None:
        self.listen_host_port()
        self.port_bounds()
        self.metrics_host_port()
        self.v2.validate()


class ConfigError(Exception):
    """The config file or a flag is malformed: the daemon refuses to start."""


def load(path: str | None, overrides: dict[str, object]) -> Config:
    base: dict[str, object] = {}
    if path:
        try:
            base = msgspec.toml.decode(Path(path).read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for key, value in overrides.items():
        table = base.get(key)
        if isinstance(value, dict) and isinstance(table, dict):
            base[key] = {**table, **value}  # a flag wins over its key in the file's table
        elif value is not None:
            base[key] = value
    try:
        config = msgspec.convert(base, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path or 'flags'}: {exc}") from exc
    config.validate()
    return config
