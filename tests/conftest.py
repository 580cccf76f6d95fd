from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvloop

from tests.helpers import RunningDaemon, make_daemon


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The daemon runs on uvloop; so do in-process tests and clients.
    return {"uvloop": uvloop.new_event_loop}


DaemonFactory = Callable[..., Coroutine[Any, Any, RunningDaemon]]


@pytest_asyncio.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    started: list[RunningDaemon] = []

    async def factory(**overrides: Any) -> RunningDaemon:
        daemon = make_daemon(tmp_path / f"d{len(started)}", **overrides)
        await daemon.start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            await daemon.stop()


@pytest_asyncio.fixture
async def daemon(daemon_factory: DaemonFactory) -> RunningDaemon:
    return await daemon_factory()
