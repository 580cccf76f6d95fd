"""Paths, options and controller descriptions, as msgspec Structs."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from spdk_ffi.errors import InvalidOptions

_TRTYPES = {"TCP"}
_ADRFAMS = {"IPv4", "IPv6"}


class Path(msgspec.Struct, frozen=True, order=True):
    """One NVMe-oF transport path: ``trtype/adrfam/traddr/trsvcid/subnqn``."""

    trtype: str
    adrfam: str
    traddr: str
    trsvcid: str
    subnqn: str

    @classmethod
    def parse(cls, text: str) -> Path:
        parts = text.split("/", 4)
        if len(parts) != 5 or not all(parts):
            raise InvalidOptions(f"path {text!r} is not trtype/adrfam/traddr/trsvcid/subnqn")
        path = cls(*parts)
        path.validate()
        return path

    def validate(self) -> None:
        if self.trtype.upper() not in _TRTYPES:
            raise InvalidOptions(f"path {self}: trtype must be TCP, not {self.trtype!r}")
        if self.adrfam not in _ADRFAMS:
            raise InvalidOptions(f"path {self}: adrfam must be IPv4 or IPv6, not {self.adrfam!r}")
        if not self.trsvcid.isdigit() or not 0 < int(self.trsvcid) < 65536:
            raise InvalidOptions(f"path {self}: trsvcid must be a port number, not {self.trsvcid!r}")
        if not self.subnqn.startswith("nqn.") or len(self.subnqn) > 223:
            raise InvalidOptions(f"path {self}: subnqn must be an NQN of at most 223 bytes")
        if not self.traddr or len(self.traddr) > 256:
            raise InvalidOptions(f"path {self}: traddr is empty or too long")

    def trid(self) -> str:
        """The transport-id string ``spdk_nvme_transport_id_parse`` takes."""
        return (
            f"trtype:{self.trtype} adrfam:{self.adrfam} traddr:{self.traddr} "
            f"trsvcid:{self.trsvcid} subnqn:{self.subnqn}"
        )

    def __str__(self) -> str:
        return f"{self.trtype}/{self.adrfam}/{self.traddr}/{self.trsvcid}/{self.subnqn}"


class MultipathPolicy(enum.StrEnum):
    FAILOVER = "failover"  # active/passive: one path carries I/O
    ROUND_ROBIN = "round_robin"  # active/active


U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]


class ControllerOpts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Controller options; the reconnect timers mean what they mean in
    bdev_nvme and are validated by the same rules."""

    keep_alive_timeout_ms: U32 = 10_000
    silence_timeout_ms: U32 = 10_000
    """A path whose peer answers nothing this long (commands outstanding and
    none answered, or an unanswered command or keep-alive) is declared lost:
    its commands come back as path failures and the reconnect timers below
    run, as for a loud failure. 0 turns it off (then a silent peer holds its
    commands until TCP gives up, ~15 minutes). See core/ctrlr.c, "Silence"."""
    io_queue_size: U32 = 128
    io_queue_requests: U32 = 512
    ctrlr_loss_timeout_sec: int = 0
    reconnect_delay_sec: U32 = 0
    fast_io_fail_timeout_sec: U32 = 0
    attach_timeout_sec: float = 10.0
    policy: MultipathPolicy = MultipathPolicy.FAILOVER

    def validate(self) -> None:
        """bdev_nvme_check_io_error_resiliency_params, rule for rule."""
        loss, delay, fast = self.ctrlr_loss_timeout_sec, self.reconnect_delay_sec, self.fast_io_fail_timeout_sec
        if loss < -1:
            raise InvalidOptions("ctrlr_loss_timeout_sec can't be less than -1")
        if loss == -1:
            if delay == 0:
                raise InvalidOptions("reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0")
            if fast != 0 and fast < delay:
                raise InvalidOptions("reconnect_delay_sec can't be more than fast_io_fail_timeout_sec")
        elif loss != 0:
            if delay == 0:
                raise InvalidOptions("reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0")
            if delay > loss:
                raise InvalidOptions("reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec")
            if fast != 0 and fast < delay:
                raise InvalidOptions("reconnect_delay_sec can't be more than fast_io_fail_timeout_sec")
            if fast != 0 and fast > loss:
                raise InvalidOptions("fast_io_fail_timeout_sec can't be more than ctrlr_loss_timeout_sec")
        elif delay != 0 or fast != 0:
            raise InvalidOptions(
                "both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0"
            )
        if self.keep_alive_timeout_ms == 0:
            raise InvalidOptions("keep_alive_timeout_ms must be positive")
        if self.silence_timeout_ms != 0 and self.silence_timeout_ms < 100:
            raise InvalidOptions("silence_timeout_ms must be 0 (never) or at least 100")
        if self.io_queue_size < 2:
            raise InvalidOptions("io_queue_size must be at least 2")
        if self.attach_timeout_sec <= 0:
            raise InvalidOptions("attach_timeout_sec must be positive")


class Namespace(msgspec.Struct, frozen=True):
    nsid: int
    size_bytes: int
    block_size: int


class PathState(msgspec.Struct, frozen=True):
    path: Path
    connected: bool
    active: bool


class ControllerInfo(msgspec.Struct, frozen=True):
    name: str
    owner: str
    hostnqn: str
    subnqn: str
    failed: bool
    paths: tuple[PathState, ...]
    namespaces: tuple[Namespace, ...]
    counters: dict[str, int]


class AttachResult(msgspec.Struct, frozen=True):
    """What ``attach`` did: ``reused`` the live controller of the same owner
    and paths, or attached fresh, after ``cleaned_up`` a leftover (and why)."""

    info: ControllerInfo
    reused: bool
    cleaned_up: str | None
