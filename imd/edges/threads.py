"""The loop's default executor, with every worker thread started up front.

asyncio's default executor starts its threads lazily, one per call that
finds no idle worker. A thread is a task to the kernel: under a pids limit
(the cgroup the daemon and its children share) the limit may be reached by
children, and then the daemon's next journal write fails with "can't start
new thread", while it had a perfectly good reason to exist. Starting every
worker at boot moves that failure to the one moment it is harmless: before
the daemon serves. The pool's size is asyncio's own default.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

# asyncio's default: min(32, cpus + 4).
DEFAULT_WORKERS = min(32, (os.cpu_count() or 1) + 4)


def prestarted_executor(workers: int = DEFAULT_WORKERS) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, all running when this returns.

    Each of ``workers`` calls waits at a barrier until all have arrived, so
    the pool cannot hand two of them to one thread: it must start them all.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imd-io")
    barrier = threading.Barrier(workers)
    started = [pool.submit(barrier.wait, 10.0) for _ in range(workers)]
    for future in started:
        future.result()
    return pool


_installed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPoolExecutor] = weakref.WeakKeyDictionary()


def install_prestarted_executor(loop: asyncio.AbstractEventLoop, workers: int = DEFAULT_WORKERS) -> ThreadPoolExecutor:
    """Make a pre-started pool the loop's default executor (used by
    ``asyncio.to_thread`` and aiofiles), once per loop: a second daemon on
    the same loop (tests run several) shares it. The loop's close shuts it down."""
    pool = _installed.get(loop)
    if pool is None:
        pool = _installed[loop] = prestarted_executor(workers)
        loop.set_default_executor(pool)
    return pool
