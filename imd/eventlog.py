"""Structured logs: one JSON object per line on stderr.

journald keeps each line as one entry, and ``jq`` can filter by process
name or UUID: ``journalctl -u imd -o cat | jq 'select(.process=="e-1")'``.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_encoder = msgspec.json.Encoder()


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def fields(**values: object) -> dict[str, object]:
    """``extra=`` for a log call. Nesting the values under one key keeps
    names such as ``name`` and ``process`` from colliding with LogRecord's."""
    return {"fields": values}


def configure(level: str = "info") -> logging.Logger:
    """The daemon's loggers (``imd``, and ``spdk_ffi`` beneath its data
    engine) write JSON lines to stderr at ``level``."""
    root = logging.getLogger("imd")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    numeric = level.upper() if level.lower() != "warn" else "WARNING"
    for name in ("imd", "spdk_ffi"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(numeric)
    return root
