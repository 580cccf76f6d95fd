"""One supervised child, from spawn (or adoption) to exit.

A ManagedProcess owns its own state and moves it forward only; the
Supervisor owns the registry and is told of every change through the
observer interface. Everything here runs on the event loop thread, so state
changes are atomic with respect to each other without locks.

Long waits (the health wait, the grace period before SIGKILL) are tasks and
timers owned by the process. Ending the process cancels them: a delete is
never held up behind a health wait, which is Longhorn's lesson that long
operations must never block a delete.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Protocol

import msgspec

from imd.edges import spawn as os_spawn
from imd.edges.health_probe import wait_until_serving
from imd.supervisor.model import (
    InstanceInfo,
    PortBlock,
    ProcessSpec,
    ProcessState,
    ProcessView,
    render_args,
)


class SupervisionSettings(msgspec.Struct, frozen=True):
    health_host: str = "127.0.0.1"
    health_timeout_s: float = 60.0
    health_interval_s: float = 0.1
    stop_grace_s: float = 30.0


class ProcessObserver(Protocol):
    def process_changed(self, proc: ManagedProcess) -> None: ...

    def process_exited(self, proc: ManagedProcess) -> None: ...


class ManagedProcess:
    def __init__(
        self,
        *,
        name: str,
        uuid: str,
        spec: ProcessSpec,
        instance: InstanceInfo,
        ports: PortBlock | None,
        observer: ProcessObserver,
        settings: SupervisionSettings,
    ) -> None:
        self.name = name
        self.uuid = uuid
        self.spec = spec
        self.instance = instance
        self.ports = ports
        self.args = render_args(spec, ports)
        self.state = ProcessState.STARTING
        self.error_msg = ""
        # Observed, not persisted: the next mount check after a restart
        # finds them again (as in the Go original, which keeps them in memory).
        self.conditions: dict[str, bool] = {}
        self.pid = 0
        self.start_time = 0
        # The registry's bookkeeping, written into the state file:
        # delete_requested once a delete is durable, delete_pending while it
        # is being committed, promoting while a replacement's takeover is.
        self.delete_requested = False
        self.delete_pending = False
        self.promoting = False
        self._pidfd = -1
        self._observer = observer
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._health_task: asyncio.Task[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._failure: str | None = None  # why we ended it, overriding the exit status
        self._stop_signal: int | None = None
        self.started: asyncio.Future[bool] = self._loop.create_future()
        self.exited: asyncio.Future[os_spawn.ExitInfo] = self._loop.create_future()

    # -- views ---------------------------------------------------------------

    def view(self, *, deleted: bool = False) -> ProcessView:
        ports = self.ports
        return ProcessView(
            name=self.name,
            uuid=self.uuid,
            binary=self.spec.binary,
            args=self.args,
            port_count=self.spec.port_count,
            port_args=self.spec.port_args,
            state=self.state,
            error_msg=self.error_msg,
            port_start=ports.start if ports else 0,
            port_end=ports.end if ports else 0,
            deleted=deleted,
            instance=self.instance,
            conditions=tuple(sorted(self.conditions.items())),
        )

    @property
    def alive(self) -> bool:
        return self._pidfd >= 0

    # -- start ---------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return [self.spec.binary, *self.args]

    def launch(self, log_path: os.PathLike[str] | str, env: dict[str, str]) -> None:
        """Spawn the child, here on the loop thread. Raises OSError if exec
        fails or the child could not be put under watch; then nothing is
        left running and the caller still owns the ports. (The supervisor
        spawns in a worker thread and calls ``attach`` instead.)"""
        self.attach(os_spawn.spawn_watched(self.argv, Path(log_path), env))

    def attach(self, child: os_spawn.Spawned) -> None:
        """Take charge of the child just spawned for this process."""
        self.start_time = child.start_time
        self._watch(child.pid, child.pidfd)
        if self.spec.port_count == 0:
            self._set_state(ProcessState.RUNNING, notify=False)
        else:
            self._health_task = asyncio.ensure_future(self._await_health())

    def adopt(self, pid: int, pidfd: int, start_time: int, state: ProcessState) -> None:
        """Take over a child spawned by an earlier daemon instance."""
        self.start_time = start_time
        self.state = state
        self._watch(pid, pidfd)
        if state == ProcessState.RUNNING:
            self.started.set_result(True)
        elif state == ProcessState.STARTING:
            self._health_task = asyncio.ensure_future(self._await_health())
        elif state == ProcessState.STOPPING:
            # The earlier instance asked it to stop; finish that job.
            self.state = ProcessState.RUNNING
            self.stop(signal.SIGINT)

    def mark_lost(self, message: str) -> None:
        """The child of a persisted entry is gone (it exited while the daemon
        was down, or its pid now belongs to another program). It is never
        signalled; it only reports what happened."""
        if not self.state.terminal:
            self.state = ProcessState.ERROR
            self.error_msg = message
        if not self.started.done():
            self.started.set_result(False)
        if not self.exited.done():
            self.exited.set_result(os_spawn.ExitInfo(code=None, signal=None))

    def _watch(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._loop.add_reader(pidfd, self._on_exit)

    async def _await_health(self) -> None:
        assert self.ports is not None
        timeout = self._settings.health_timeout_s
        try:
            await asyncio.wait_for(
                wait_until_serving(self._settings.health_host, self.ports.start, self._settings.health_interval_s),
                timeout,
            )
        except TimeoutError:
            self._end(
                f"health check on port {self.ports.start} did not pass within {timeout:g}s",
                signal.SIGINT,
            )
            return
        self._set_state(ProcessState.RUNNING)

    # -- stop ----------------------------------------------------------------

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Ask the child's process group to exit with ``sig``; SIGKILL it
        after the grace period. Idempotent: a second stop does nothing."""
        if self.state.terminal or self._stop_signal is not None:
            return
        self._stop_signal = sig
        self._cancel_health()
        self._set_state(ProcessState.STOPPING)
        if not os_spawn.signal_group(self.pid, self._pidfd, sig):
            return  # already exiting; the pidfd reader will see it
        grace = self._settings.stop_grace_s
        self._kill_timer = self._loop.call_later(grace, self._escalate, sig, grace)

    def _end(self, failure: str, sig: int) -> None:
        self._failure = failure
        self.stop(sig)

    def _escalate(self, sig: int, grace: float) -> None:
        self._kill_timer = None
        if not self.alive:
            return
        self._failure = f"did not exit within {grace:g}s of {signal.Signals(sig).name}; killed with SIGKILL"
        os_spawn.signal_group(self.pid, self._pidfd, signal.SIGKILL)

    def _cancel_health(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None

    # -- exit ----------------------------------------------------------------

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        info = os_spawn.collect_exit(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._cancel_health()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        was_starting = self.state == ProcessState.STARTING
        state, message = self._judge_exit(info)
        if was_starting and state == ProcessState.ERROR and self._failure is None:
            message = f"exited before becoming ready: {message}"
        self.error_msg = message
        self._set_state(state, notify=False)
        if not self.started.done():
            self.started.set_result(False)
        self.exited.set_result(info)
        self._observer.process_exited(self)

    def _judge_exit(self, info: os_spawn.ExitInfo) -> tuple[ProcessState, str]:
        if self._failure is not None:
            return ProcessState.ERROR, self._failure
        if info.code == 0:
            return ProcessState.STOPPED, ""
        if info.code is None and info.signal is None:
            return ProcessState.STOPPED, info.describe()
        if info.signal is not None and info.signal == self._stop_signal:
            return ProcessState.STOPPED, ""  # it did what we asked
        return ProcessState.ERROR, info.describe()

    def close_without_stopping(self) -> None:
        """Forget the child but leave it running (daemon restart/upgrade)."""
        self._cancel_health()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    # -- state ---------------------------------------------------------------

    def _set_state(self, state: ProcessState, *, notify: bool = True) -> None:
        if state.rank < self.state.rank or (self.state.terminal and state != self.state):
            return  # never backwards: a late probe cannot revive a stopping process
        if state == self.state:
            return
        self.state = state
        if state == ProcessState.RUNNING and not self.started.done():
            self.started.set_result(True)
        elif state.rank > ProcessState.RUNNING.rank and not self.started.done():
            self.started.set_result(False)
        if notify:
            self._observer.process_changed(self)
