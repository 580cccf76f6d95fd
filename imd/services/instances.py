"""Instance semantics: Longhorn's InstanceService, routed by data engine.

Data engine V1 instances (engines and replicas) are processes, so they go
to the ProcessService with the instance's type and volume kept alongside.
V2 (SPDK) needs the native initiator, which is not wired in yet; until it
is, V2 requests fail with FAILED_PRECONDITION rather than pretending.
"""

from __future__ import annotations

import enum
import logging

from imd.errors import FailedPrecondition, InvalidArgument, Unimplemented

V2_UNAVAILABLE = "SPDK data engine not available"


class DataEngine(enum.IntEnum):
    V1 = 0
    V2 = 1


def route(engine: int, field: str = "data_engine") -> DataEngine:
    """Accept V1; refuse V2 (no SPDK yet) and values this API does not know."""
    try:
        known = DataEngine(engine)
    except ValueError:
        raise Unimplemented(f"unknown data engine {engine}", field=field) from None
    if known is DataEngine.V2:
        raise FailedPrecondition(V2_UNAVAILABLE, field=field)
    return known


# logrus level names, which the manager sends, onto the stdlib's.
_LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


class InstanceLogSettings:
    """The daemon's own log level and flags, as LogSet/GetLevel and
    LogSet/GetFlags see them for data engine V1."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._level = logging.getLevelName(logger.getEffectiveLevel()).lower()
        self.flags = ""

    @property
    def level(self) -> str:
        return "warn" if self._level == "warning" else self._level

    def set_level(self, level: str) -> None:
        key = level.strip().lower()
        if key not in _LEVELS:
            raise InvalidArgument(f"unknown level {level!r}; one of {', '.join(sorted(_LEVELS))}", field="level")
        self._logger.setLevel(_LEVELS[key])
        self._level = key

    def set_flags(self, flags: str) -> None:
        # V1 has no per-component log flags (that is an SPDK notion); they are
        # kept and reported back so a manager's set-then-get round-trips.
        self.flags = flags
