"""Rendering client results: readable tables, or JSON with ``--json``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import msgspec
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

PROCESS_COLUMNS = ("name", "state", "uuid", "ports", "error")


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def process_row(response: Any) -> dict[str, str]:
    status = response.status
    ports = f"{status.port_start}-{status.port_end}" if status.port_start else "-"
    return {
        "name": response.spec.name,
        "state": status.state + (" (deleted)" if response.deleted else ""),
        "uuid": status.uuid,
        "ports": ports,
        "error": status.error_msg or "",
    }


def table(rows: Sequence[dict[str, str]], columns: Sequence[str] = PROCESS_COLUMNS) -> str:
    widths = {c: max([len(c), *(len(r.get(c, "")) for r in rows)]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    for row in rows:
        lines.append("  ".join(row.get(c, "").ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def emit(
    obj: Any,
    *,
    as_json: bool,
    rows: Sequence[dict[str, str]] | None = None,
    columns: Sequence[str] = PROCESS_COLUMNS,
) -> None:
    if as_json:
        data = as_dict(obj) if isinstance(obj, Message) else obj
        sys.stdout.write(msgspec.json.encode(data).decode() + "\n")
    elif rows is not None:
        sys.stdout.write(table(rows, columns) + "\n")
    else:
        for key, value in (as_dict(obj) if isinstance(obj, Message) else obj).items():
            sys.stdout.write(f"{key}: {value}\n")
    sys.stdout.flush()


async def stream_lines(call: Any, request: Any, *, as_json: bool) -> None:
    """Print a log stream (ProcessLog, InstanceLog) line by line as it comes."""
    async with call.open() as stream:
        await stream.send_message(request, end=True)
        async for reply in stream:
            if as_json:
                emit({"line": reply.line}, as_json=True)
            else:
                sys.stdout.write(reply.line + "\n")
                sys.stdout.flush()
