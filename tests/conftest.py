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


@pytest.fixture(scope="session")
def grpcio_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """grpcio's own stubs generated from proto/: an independent client, so
    the wire tests check our paths and field numbers, not our stubs."""
    import importlib
    import importlib.util
    import sys

    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpcio_stubs")
    proto_root = Path(__file__).resolve().parent.parent / "proto"
    include = Path(protoc.__file__).parent / "_proto"
    spec = importlib.util.spec_from_file_location("generate", proto_root / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    protos = generate.PROTOS
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main([*args, *protos]) == 0
    sys.path.insert(0, str(out))
    try:
        return {
            name: importlib.import_module(f"imrpc.{name}")
            for name in (
                "imrpc_pb2",
                "imrpc_pb2_grpc",
                "instance_pb2",
                "instance_pb2_grpc",
                "disk_pb2",
                "disk_pb2_grpc",
                "proxy_pb2",
                "proxy_pb2_grpc",
            )
        }
    finally:
        sys.path.remove(str(out))
