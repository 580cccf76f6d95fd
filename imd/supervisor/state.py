"""The registry on disk, so a restarted daemon can re-adopt its children.

Format: one msgspec JSON document, rewritten whole on every change. At a
thousand entries that is ~300 KB and about a millisecond to encode, so
rewriting beats the complexity of a journal. Writes are atomic (temp file,
fsync, rename, fsync of the directory): a crash leaves the old file or the
new one, never a torn one.

Writes are group-committed. Every change marks the store dirty; one writer
task writes the newest snapshot; ``sync()`` waits until a write that began
after the caller's change has reached the disk. A burst of a hundred
creates costs a handful of fsyncs, not a hundred, and each RPC still
returns only after its change is durable.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiofiles
import aiofiles.os
import msgspec

from imd.eventlog import fields
from imd.supervisor.model import InstanceInfo, PortBlock, ProcessSpec, ProcessState

log = logging.getLogger("imd.state")

STATE_VERSION = 1


class Role(enum.StrEnum):
    """Where an entry sits in the registry."""

    CURRENT = "current"
    REPLACING = "replacing"  # a replacement that had not taken over yet
    RETIRING = "retiring"  # a replaced (or abandoned) process on its way out
    INTERNAL = "internal"  # the daemon's own helper (the SPDK target): never listed


class PersistedProcess(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    uuid: str
    spec: ProcessSpec
    instance: InstanceInfo
    pid: int
    start_time: int
    ports: PortBlock | None
    state: ProcessState
    error_msg: str
    role: Role
    delete_requested: bool


class StateFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    processes: list[PersistedProcess]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StateFile)


class StateStore:
    """The writer of one state file. By default it holds the process
    registry; with ``encode`` (and another ``filename``) it writes whatever
    document its owner encodes (the V2 state, for one), with the same
    atomicity and group commit."""

    def __init__(
        self,
        state_dir: Path,
        snapshot: Callable[[], list[PersistedProcess]] | None = None,
        *,
        filename: str = "registry.json",
        encode: Callable[[], bytes] | None = None,
    ) -> None:
        self.path = state_dir / filename
        self._snapshot = snapshot
        self._encode = encode if encode is not None else self._encode_registry
        self._changed = 0
        self._written = 0
        self._attempted = 0
        self._writer: asyncio.Task[None] | None = None
        self._written_event = asyncio.Event()

    def load(self) -> list[PersistedProcess]:
        """The persisted entries; empty if there is no file. A file that
        cannot be read or decoded is set aside (renamed, never deleted, so an
        operator can look at it) and the daemon starts empty."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._set_aside(f"unreadable: {exc}")
            return []
        try:
            state = _decoder.decode(data)
            if state.version != STATE_VERSION:
                raise msgspec.ValidationError(f"unsupported version {state.version}")
        except msgspec.MsgspecError as exc:
            self._set_aside(f"corrupt: {exc}")
            return []
        return state.processes

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            self.path.replace(aside)
        except OSError as exc:
            log.error("cannot set aside state file", extra=fields(path=str(self.path), error=str(exc)))
        log.error("state file set aside; starting empty", extra=fields(reason=why, moved_to=str(aside)))

    def _encode_registry(self) -> bytes:
        assert self._snapshot is not None
        return _encoder.encode(StateFile(STATE_VERSION, self._snapshot()))

    def mark_dirty(self) -> None:
        self._changed += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_loop())

    async def sync(self) -> None:
        """Return once every change marked so far is on disk, or a write
        that covered it failed (logged; the writer keeps retrying). A failing
        disk must not hang the RPCs: the change itself already happened."""
        target = self._changed
        while self._attempted < target:
            if self._writer is None or self._writer.done():
                self._writer = asyncio.ensure_future(self._write_loop())
            self._written_event.clear()
            await self._written_event.wait()

    async def _write_loop(self) -> None:
        while self._written < self._changed:
            generation = self._changed
            data = self._encode()
            try:
                await self._write(data)
            except OSError as exc:
                log.error("state write failed", extra=fields(path=str(self.path), error=str(exc)))
                self._attempted = max(self._attempted, generation)
                self._written_event.set()
                await asyncio.sleep(0.5)
                continue
            self._written = self._attempted = generation
            self._written_event.set()

    async def _write(self, data: bytes) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        async with aiofiles.open(tmp, "wb") as out:
            await out.write(data)
            await out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        await aiofiles.os.replace(tmp, self.path)
        await asyncio.to_thread(_fsync_dir, self.path.parent)

    async def close(self) -> None:
        """Write any pending change, then stop."""
        await self.sync()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
