"""Exhaustion told apart from caller mistakes, and the descriptor reserve
(spent at the limit, refilled only with room to spare)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from imd.errors import ImdError, InvalidArgument, ResourceExhausted, Unavailable
from imd.supervisor.resources import spawn_error

REPO = Path(__file__).resolve().parent.parent


def test_caller_mistakes_and_exhaustion_get_different_errors() -> None:
    def status(code: int) -> tuple[type[ImdError], str]:
        error = spawn_error(OSError(code, os.strerror(code)), "/bin/x")
        return type(error), str(error)

    assert status(errno.ENOENT) == (InvalidArgument, "spec.binary: cannot execute /bin/x: No such file or directory")
    assert status(errno.ENOEXEC) == (InvalidArgument, "spec.binary: cannot execute /bin/x: Exec format error")
    assert status(errno.E2BIG) == (InvalidArgument, "spec.args: cannot execute /bin/x: argument list too long")
    assert status(errno.EAGAIN) == (
        ResourceExhausted,
        "processes: cannot start /bin/x: resource temporarily unavailable",
    )
    assert status(errno.ENOMEM) == (ResourceExhausted, "memory: cannot start /bin/x: cannot allocate memory")
    kind, text = status(errno.EMFILE)
    assert kind is ResourceExhausted and text.startswith("file descriptors: cannot start /bin/x: too many open files")
    assert status(errno.ENOSPC) == (ResourceExhausted, "logs dir: cannot start /bin/x: no space left on device")
    assert status(errno.EIO) == (Unavailable, "cannot start /bin/x: input/output error")


GUARD_AT_THE_LIMIT = """
import errno, os, resource
from imd.errors import ResourceExhausted
from imd.supervisor.resources import DescriptorGuard

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
guard = DescriptorGuard(8)
assert guard.reserve_held == 8
hogs = []
try:
    while True:
        hogs.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == errno.EMFILE
    print("freed:", guard.limit_hit(exc), guard.limit_hit(exc))
print("short:", guard.short, guard.reserve_held)
try:
    guard.admit()  # 8 free, but a refill wants 8 more to spare
except ResourceExhausted as exc:
    print("refused:", exc)
for fd in hogs[:8]:
    os.close(fd)
guard.admit()
print("admitted:", guard.short, guard.reserve_held)
"""


def test_descriptor_guard_spends_its_reserve_and_refills_with_a_margin() -> None:
    run = subprocess.run(
        [sys.executable, "-c", GUARD_AT_THE_LIMIT], check=False, capture_output=True, text=True, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "freed: True False",  # the second time there is nothing left to spend
        "short: True 0",
        "refused: file descriptors: too many open files (limit 64); refusing new processes until some are freed",
        "admitted: False 8",
    ]
