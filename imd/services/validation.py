"""Validation of process specs, before anything is allocated or spawned.

Every error names the request field as the client spelled it: the process
API and the instance API carry the same values under different field paths
(``spec.binary`` vs ``spec.process_instance_spec.binary``), so the caller
passes the paths in.
"""

from __future__ import annotations

import os
import re
import signal
import stat

import msgspec

from imd.errors import InvalidArgument
from imd.supervisor.model import ProcessSpec

NAME_MAX = 64
_NAME = re.compile(r"[a-z0-9.-]+")
INT32_MAX = 2**31 - 1


class SpecFields(msgspec.Struct, frozen=True):
    name: str = "spec.name"
    binary: str = "spec.binary"
    args: str = "spec.args"
    port_count: str = "spec.port_count"
    port_args: str = "spec.port_args"


PROCESS_FIELDS = SpecFields()
INSTANCE_FIELDS = SpecFields(binary="spec.process_instance_spec.binary", args="spec.process_instance_spec.args")


def validate_name(name: str, field: str) -> None:
    """Names become file names under the logs directory: ``[a-z0-9.-]``,
    1 to 64 characters, and never ``.`` or ``..``."""
    if not name:
        raise InvalidArgument("must not be empty", field=field)
    if len(name) > NAME_MAX:
        raise InvalidArgument(f"must be at most {NAME_MAX} characters, got {len(name)}", field=field)
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"{name!r} may contain only a-z, 0-9, '.' and '-'", field=field)
    if name in (".", ".."):
        raise InvalidArgument(f"{name!r} is not a usable name", field=field)


def validate_binary(binary: str, field: str) -> None:
    if not binary:
        raise InvalidArgument("must not be empty", field=field)
    if "\0" in binary:
        raise InvalidArgument("must not contain NUL", field=field)
    if not os.path.isabs(binary):
        raise InvalidArgument(f"{binary!r} must be an absolute path", field=field)
    try:
        info = os.stat(binary)
    except OSError as exc:
        raise InvalidArgument(f"{binary}: {exc.strerror}", field=field) from exc
    if not stat.S_ISREG(info.st_mode) or not os.access(binary, os.X_OK):
        raise InvalidArgument(f"{binary} is not an executable file", field=field)


def validate_spec(spec: ProcessSpec, fields: SpecFields) -> None:
    validate_name(spec.name, fields.name)
    validate_binary(spec.binary, fields.binary)
    for i, arg in enumerate(spec.args):
        if "\0" in arg:
            raise InvalidArgument("must not contain NUL", field=f"{fields.args}[{i}]")
    if spec.port_count < 0:
        raise InvalidArgument(f"must be >= 0, got {spec.port_count}", field=fields.port_count)
    if spec.port_count < len(spec.port_args):
        raise InvalidArgument(
            f"is {spec.port_count} but {len(spec.port_args)} port_args were given",
            field=fields.port_count,
        )
    for i, arg in enumerate(spec.port_args):
        if "\0" in arg:
            raise InvalidArgument("must not contain NUL", field=f"{fields.port_args}[{i}]")


_SIGNALS = {"SIGHUP": signal.SIGHUP}


def parse_terminate_signal(value: str, field: str = "terminate_signal") -> signal.Signals:
    """Only SIGHUP, as in Longhorn: a replaced engine hands over on SIGHUP."""
    sig = _SIGNALS.get(value)
    if sig is None:
        raise InvalidArgument(f"unsupported signal {value!r}; only SIGHUP is accepted", field=field)
    return sig
