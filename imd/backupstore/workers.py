"""Worker threads for the CPU side of the data path: checksums,
compression, decompression. hashlib, liblz4 and zlib release the GIL, so
these run in parallel with each other and with the event loop. One pool
for the process, one thread per core: more would only queue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_pools: list[ThreadPoolExecutor] = []


def pool() -> ThreadPoolExecutor:
    if not _pools:
        _pools.append(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="imd-backupstore"))
    return _pools[0]


async def run(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on a worker thread. Cancelling the caller does not stop
    the call (a thread cannot be interrupted), but it is one block's work."""
    return await asyncio.get_running_loop().run_in_executor(pool(), fn, *args)
