"""Spawning children that outlive the daemon, and watching them through pidfds.

Why this shape:

* ``posix_spawn`` with ``setsid``: each child leads its own session and
  process group, so a daemon restart (or a signal sent to the daemon's
  group) never reaches it, and a stop can signal the child's whole group.
  No shell is involved: argv goes to execve as given.
* stdout and stderr are opened *by the child* onto its log file in append
  mode. Nothing is piped through the daemon, so children keep logging while
  the daemon restarts, and a slow daemon never blocks a child on a full pipe.
* A pidfd is the one handle for both children we spawned and children we
  re-adopt after a restart: it becomes readable on exit, and signals sent
  through it can never hit a recycled pid.
* ``posix_spawn`` is libc's, called through cffi, not ``os.posix_spawn``:
  CPython holds the GIL across the call, and with glibc's vfork-style spawn
  the caller is suspended until the child has exec'd (~0.2 ms on a quiet
  machine, several ms when the cores are busy). Under bench/control that
  was 40% of the event loop's time. cffi releases the GIL, so
  ``spawn_watched`` can run in a worker thread while the loop goes on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from pathlib import Path
from typing import Any

import cffi  # type: ignore[import-untyped]
import msgspec

# Variables that belong to the daemon's own supervisor (systemd); a child
# that inherited them could send notifications in the daemon's name.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


class ExitInfo(msgspec.Struct, frozen=True):
    """How a child ended. ``code`` is None when it died from ``signal``;
    both are None when the exit status could not be collected (an adopted
    child is not ours to reap)."""

    code: int | None
    signal: int | None

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.code is not None:
            return f"exit status {self.code}"
        return "exited (status unknown: not a child of this daemon instance)"


# Every child carries these two, so that a daemon restarting after a crash
# can find children that were spawned but never recorded (the crash fell
# between spawn and the state write): their ports are not reserved and no
# entry owns them. IMD_OWNER keeps several daemons on one host apart.
TAG_UUID = "IMD_PROCESS_UUID"
TAG_OWNER = "IMD_OWNER"


def tagged_processes(owner: str) -> dict[str, list[int]]:
    """Live pids whose environment says ``IMD_OWNER=owner``, by their
    ``IMD_PROCESS_UUID`` (a child's own children inherit both)."""
    owner_var = f"{TAG_OWNER}={owner}".encode()
    uuid_prefix = f"{TAG_UUID}=".encode()
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                data = environ.read()
        except OSError:
            continue
        if owner_var not in data:
            continue
        variables = data.split(b"\0")
        if owner_var not in variables:
            continue
        for var in variables:
            if var.startswith(uuid_prefix):
                found.setdefault(var[len(uuid_prefix) :].decode(errors="replace"), []).append(int(entry.name))
    return found


def kill_untracked(pid: int) -> bool:
    """SIGKILL a process found by ``tagged_processes``, through a pidfd."""
    try:
        pidfd = open_pidfd(pid)
    except ProcessLookupError:
        return False
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key in _PRIVATE_ENV:
        env.pop(key, None)
    return env


_ffi = cffi.FFI()
# The attribute and file-action objects are opaque here: they are only ever
# passed by pointer, in buffers larger than glibc's (80 and 336 bytes on
# 64-bit Linux). mode_t is unsigned int on Linux.
_ffi.cdef(
    """
    int posix_spawn(int *pid, const char *path, const void *file_actions, const void *attrp,
                    char *const argv[], char *const envp[]);
    int posix_spawn_file_actions_init(void *file_actions);
    int posix_spawn_file_actions_destroy(void *file_actions);
    int posix_spawn_file_actions_addopen(void *file_actions, int fd, const char *path, int oflag, unsigned int mode);
    int posix_spawn_file_actions_adddup2(void *file_actions, int fd, int newfd);
    int posix_spawnattr_init(void *attr);
    int posix_spawnattr_destroy(void *attr);
    int posix_spawnattr_setflags(void *attr, short flags);
    int posix_spawnattr_setsigmask(void *attr, const void *sigmask);
    int sigemptyset(void *set);
    """
)
_libc = _ffi.dlopen(None)
_OPAQUE = "long long[128]"  # 1 KiB, 8-byte aligned
# glibc's (and musl's) <spawn.h> values; Python does not export them.
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def _strings(items: list[bytes]) -> tuple[Any, list[Any]]:
    """A NULL-terminated ``char *[]`` and the buffers it points into (which
    must outlive the call)."""
    buffers = [_ffi.new("char[]", item) for item in items]
    return _ffi.new("char *[]", [*buffers, _ffi.NULL]), buffers


def spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Start ``argv`` in a new session writing to ``log_path``; return its pid.

    Raises OSError (ENOENT, EACCES, ENOEXEC, ...) when exec fails: glibc's
    posix_spawn reports exec errors synchronously, so a missing binary never
    becomes a zombie we have to reap. The GIL is released during the call;
    the child starts with an empty signal mask whichever thread spawns it.
    """
    c_argv, keep_argv = _strings([os.fsencode(arg) for arg in argv])
    c_envp, keep_envp = _strings([os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()])
    actions = _ffi.new(_OPAQUE)
    attr = _ffi.new(_OPAQUE)
    mask = _ffi.new(_OPAQUE)
    pid = _ffi.new("int *")
    _check(_libc.posix_spawn_file_actions_init(actions))
    try:
        _check(_libc.posix_spawnattr_init(attr))
        try:
            _check(_libc.posix_spawn_file_actions_addopen(actions, 0, os.devnull.encode(), os.O_RDONLY, 0))
            _check(_libc.posix_spawn_file_actions_addopen(actions, 1, os.fsencode(log_path), _LOG_FLAGS, 0o640))
            _check(_libc.posix_spawn_file_actions_adddup2(actions, 1, 2))
            _libc.sigemptyset(mask)
            _check(_libc.posix_spawnattr_setsigmask(attr, mask))
            _check(_libc.posix_spawnattr_setflags(attr, _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGMASK))
            error = _libc.posix_spawn(pid, c_argv[0], actions, attr, c_argv, c_envp)
        finally:
            _libc.posix_spawnattr_destroy(attr)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)
    del keep_argv, keep_envp
    if error:
        raise OSError(error, os.strerror(error), argv[0])
    return int(pid[0])


def _check(error: int) -> None:
    if error:
        raise OSError(error, os.strerror(error))


class Spawned(msgspec.Struct, frozen=True):
    """A started child: its pid, a pidfd on it, and its start time."""

    pid: int
    pidfd: int
    start_time: int


def spawn_watched(argv: list[str], log_path: Path, env: dict[str, str]) -> Spawned:
    """``spawn``, then open the child's pidfd and read its start time.

    Both need a descriptor, so both can fail at the daemon's descriptor
    limit (EMFILE) after the child already runs. Such a child could neither
    be watched nor recognised after a restart (its recorded start time
    would be wrong), so it is killed and reaped before the error is raised:
    the caller sees an OSError and nothing left running, exactly as if
    ``spawn`` itself had failed.
    """
    pid = spawn(argv, log_path, env)
    try:
        pidfd = open_pidfd(pid)
    except BaseException:
        _kill_and_reap(pid)
        raise
    try:
        start_time = process_start_time(pid)
    except BaseException:
        os.close(pidfd)
        _kill_and_reap(pid)
        raise
    return Spawned(pid, pidfd, start_time)


def _kill_and_reap(pid: int) -> None:
    """SIGKILL a child we just spawned, with its group, and reap it. It is
    our unreaped child, so neither its pid nor its group id can have been
    reused; the wait is short (SIGKILL cannot be caught)."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def open_pidfd(pid: int) -> int:
    """A pidfd for ``pid`` (close-on-exec). Raises ProcessLookupError if gone."""
    return os.pidfd_open(pid)


def collect_exit(pidfd: int) -> ExitInfo:
    """Reap the exited process behind ``pidfd`` and say how it ended.

    For a process that is not our child (adopted after a restart) waitid
    fails with ECHILD: we know that it exited, not how.
    """
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return ExitInfo(code=None, signal=None)
    if result is None:  # readable pidfd but not yet waitable: treat as unknown
        return ExitInfo(code=None, signal=None)
    if result.si_code == os.CLD_EXITED:
        return ExitInfo(code=result.si_status, signal=None)
    return ExitInfo(code=None, signal=result.si_status)


def signal_group(pid: int, pidfd: int, sig: int) -> bool:
    """Send ``sig`` to the child's process group; False if it is already gone.

    The leader is signalled through its pidfd first: that cannot hit a
    recycled pid. Only if the leader is still there (so its pid, which is also
    the group id, cannot have been reused) is the rest of the group signalled.
    """
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    return True


def reattach(pid: int, start_time: int) -> int | None:
    """A pidfd for a process recorded as (pid, start_time), or None if that
    process is gone.

    The pidfd is opened *first*, then the start time compared: once we hold
    the pidfd it refers to one process for good, so if the start time still
    matches, the pidfd is that very process. The other order would leave a
    window in which the pid could be recycled between check and open. A pid
    now used by another program is never adopted, and so never signalled.
    """
    if pid <= 0:
        return None
    try:
        pidfd = open_pidfd(pid)
    except ProcessLookupError:
        return None
    try:
        matches = process_start_time(pid) == start_time
    except (OSError, ValueError, IndexError):
        matches = False
    if not matches or _has_exited(pidfd):
        # An exited but unreaped process (a zombie: nobody reaps orphans in
        # some containers) is as gone as one that was reaped.
        os.close(pidfd)
        return None
    return pidfd


def _has_exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: start time in clock ticks since boot.

    With the pid it identifies a process uniquely across pid reuse. The
    command name (field 2) may contain spaces and parentheses, so parse from
    the last ')'.
    """
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])
