"""The node's SPDK target (``nvmf_tgt``): the one owner of that child.

The target is where V2 replicas live: disks (AIO bdevs with an lvstore) and
replicas (lvols exported over NVMe-oF/TCP). It is a separate process on
purpose: it keeps serving this node's replicas to engines on other nodes
while imd itself restarts (``kill -9`` included), and imd re-adopts it like
any child, through the supervisor's internal namespace (pidfd first, start
time second; never listed, so no manager can take it for an orphan).

Availability is a fact with a reason. If V2 is configured and the target
cannot start (no binary, a bad core mask, no memory), the reason is logged
once and every V2 call answers FAILED_PRECONDITION with it; V1 is not
affected. If the running target exits, the keeper says so (its listeners
mark the replicas it served as failed), then starts a new one after a
backoff and tells its listeners again, so disks are loaded back.

Everything here runs on the event loop; the keeper is the only writer of
its fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from imd.edges.spdk_target import SpdkTargetClient, TargetUnreachable
from imd.errors import FailedPrecondition, ImdError
from imd.eventlog import fields
from imd.supervisor.model import ProcessSpec
from imd.supervisor.process import ManagedProcess
from imd.supervisor.supervisor import Supervisor

log = logging.getLogger("imd.v2.target")

# Not a valid V1 process name (no '_' there), so its log file and registry
# entry can never collide with a process a manager creates.
TARGET_NAME = "_spdk_tgt"
STARTING = "the SPDK target is starting"


class TargetSettings(msgspec.Struct, frozen=True, kw_only=True):
    binary: str
    rpc_socket: str
    core_mask: str = "0x1"
    mem_size_mb: int = 1024
    no_huge: bool = True
    lib_dir: str = ""
    start_timeout_s: float = 30.0
    rpc_timeout_s: float = 30.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    extra_args: tuple[str, ...] = ()

    def argv(self) -> tuple[str, ...]:
        args = ["-m", self.core_mask, "-r", self.rpc_socket, "-s", str(self.mem_size_mb)]
        if self.no_huge:
            args.append("--no-huge")
        return (*args, *self.extra_args)


Listener = Callable[[], Awaitable[None]]


class TargetKeeper:
    """Starts or re-adopts the target, knows whether it is usable, and
    restarts it when it dies."""

    def __init__(self, supervisor: Supervisor, settings: TargetSettings) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self.client = SpdkTargetClient(settings.rpc_socket, timeout=settings.rpc_timeout_s)
        self.reason = STARTING
        self.version = ""
        self.started_fresh = False  # this daemon started the target (nothing was on it)
        self.up_since = 0.0  # wall-clock time the target in use became usable
        self._on_lost: list[Callable[[str], None]] = []
        self._on_ready: list[Listener] = []
        self._restart: asyncio.Task[None] | None = None
        self._closing = False
        self._backoff = settings.restart_backoff_s
        self._serving: ManagedProcess | None = None  # the child that answered and is in use

    # -- who wants to know -------------------------------------------------------

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """``callback(reason)`` when a running target exits."""
        self._on_lost.append(callback)

    def on_ready(self, callback: Listener) -> None:
        """Awaited after a target became usable again after a restart."""
        self._on_ready.append(callback)

    @property
    def available(self) -> bool:
        return not self.reason

    def require(self) -> SpdkTargetClient:
        """The client, or FailedPrecondition with the reason the target is
        not usable."""
        if self.reason:
            raise FailedPrecondition(f"SPDK data engine not available: {self.reason}", field="data_engine")
        return self.client

    @property
    def process(self) -> ManagedProcess | None:
        return self.supervisor.internal(TARGET_NAME)

    # -- start ------------------------------------------------------------------

    async def start(self) -> bool:
        """Adopt the target a previous daemon left running, or start one.
        False (with ``reason`` set and logged) if it is not usable."""
        adopted = self.supervisor.internal(TARGET_NAME)
        if adopted is not None:
            self.supervisor.watch_internal(TARGET_NAME, self._exited)
            try:
                self.version = await self.client.wait_ready(self.settings.start_timeout_s, alive=lambda: adopted.alive)
            except TargetUnreachable as exc:
                log.error("adopted SPDK target does not answer; restarting it", extra=fields(error=str(exc)))
                await self._stop_quietly(adopted)
            else:
                self.started_fresh = False
                self._usable(adopted)
                log.info("SPDK target adopted", extra=fields(uuid=adopted.uuid, pid=adopted.pid, version=self.version))
                return True
        if await self._spawn():
            return True
        # Keep trying in the background: the cause (memory, a core held by
        # another SPDK process, a binary being upgraded) may go away, and the
        # node then recovers by itself. The reason stays what it was.
        self._schedule_restart()
        return False

    async def _spawn(self) -> bool:
        settings = self.settings
        spec = ProcessSpec(name=TARGET_NAME, binary=settings.binary, args=settings.argv())
        problem = self._check_binary()
        if problem:
            return self._unusable(problem)
        await asyncio.to_thread(_prepare_socket, Path(settings.rpc_socket))
        try:
            proc = self.supervisor.start_internal(spec, self._exited, extra_env=self._env())
        except ImdError as exc:
            return self._unusable(f"cannot start {settings.binary}: {exc}")
        try:
            self.version = await self.client.wait_ready(settings.start_timeout_s, alive=lambda: proc.alive)
        except TargetUnreachable as exc:
            await self._stop_quietly(proc)
            tail = _log_tail(self.supervisor.logs.path_for(TARGET_NAME))
            return self._unusable(f"{exc}{'; its log ends: ' + tail if tail else ''}")
        try:
            await self.client.ensure_tcp_transport()
        except Exception as exc:  # any failure here means the target is unusable
            await self._stop_quietly(proc)
            return self._unusable(f"cannot create the TCP transport: {exc}")
        self.started_fresh = True
        self._usable(proc)
        self._backoff = settings.restart_backoff_s
        log.info("SPDK target started", extra=fields(uuid=proc.uuid, pid=proc.pid, version=self.version))
        return True

    def _usable(self, proc: ManagedProcess) -> None:
        self.reason = ""
        self._serving = proc
        self.up_since = time.time()

    def _check_binary(self) -> str:
        binary = self.settings.binary
        if not binary:
            return "no SPDK target binary configured (set v2.target_binary or SPDK_DIR)"
        if not os.path.isabs(binary) or not os.access(binary, os.X_OK):
            return f"{binary} is not an executable file"
        return ""

    def _env(self) -> dict[str, str]:
        if not self.settings.lib_dir:
            return {}
        current = os.environ.get("LD_LIBRARY_PATH", "")
        return {"LD_LIBRARY_PATH": f"{self.settings.lib_dir}:{current}" if current else self.settings.lib_dir}

    def _unusable(self, reason: str) -> bool:
        """Say why V2 cannot run: logged once when V2 goes from usable (or
        starting) to not, at debug level while a retry keeps failing."""
        if self.reason in ("", STARTING):
            log.error("SPDK data engine not available", extra=fields(reason=reason))
        else:
            log.debug("SPDK target still not usable", extra=fields(reason=reason))
        self.reason = reason
        return False

    async def _stop_quietly(self, proc: ManagedProcess) -> None:
        self.supervisor.stop_internal(proc.name)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(proc.exited), self.supervisor.settings.stop_grace_s + 5)

    # -- loss and restart -------------------------------------------------------------

    def _exited(self, proc: ManagedProcess) -> None:
        """The supervisor saw a target exit. Only the one in use matters here
        (one that dies while starting is the start's failure, said there)."""
        if self._closing or proc.delete_requested or proc is not self._serving:
            return
        self._serving = None
        reason = f"the SPDK target (pid {proc.pid}) exited: {proc.error_msg or proc.state.value}"
        self._unusable(reason)
        for callback in self._on_lost:
            callback(reason)
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if not self._closing and (self._restart is None or self._restart.done()):
            self._restart = asyncio.ensure_future(self._restart_later())

    async def _restart_later(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self.settings.restart_backoff_max_s)
            if await self._spawn():
                log.info("SPDK data engine available again")
                for callback in self._on_ready:
                    try:
                        await callback()
                    except Exception:
                        log.exception("reloading V2 state onto the restarted SPDK target failed")
                return

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Daemon shutdown. Whether the target stops too or keeps serving the
        node's replicas for the next daemon is the supervisor's decision, made
        for all children alike (``stop_children_on_exit``)."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        await self.client.close()


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        # A socket file left by a target that died unclean would make the new
        # one refuse to listen.
        path.unlink()


def _log_tail(path: Path, limit: int = 400) -> str:
    try:
        with path.open("rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            size = log_file.tell()
            log_file.seek(max(0, size - limit))
            return log_file.read().decode(errors="replace").strip().replace("\n", " | ")
    except OSError:
        return ""
