"""Starting a throwaway imd daemon for a benchmark, and reading its RSS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from tests.helpers import free_base_port, free_port_block

__all__ = ["LocalDaemon", "free_port_block", "rss_mb"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class LocalDaemon:
    """``python -m imd serve`` in a temporary directory."""

    def __init__(self, extra_config: str = "", root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="imd-bench-"))
        self.base = free_base_port()
        self.socket = self.root / "imd.sock"
        self.config = self.root / "imd.toml"
        self.config.write_text(
            f'listen = "127.0.0.1:{self.base}"\nsocket = "{self.socket}"\n'
            f'state_dir = "{self.root / "state"}"\nlogs_dir = "{self.root / "logs"}"\n'
            f'port_range = "20000-32000"\nlog_level = "warn"\n{extra_config}'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.base}"

    def spawn(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imd", "serve", "--config", str(self.config)],
            stderr=(self.root / "daemon.stderr").open("ab"),
            env={**os.environ, **(env or {})},
        )
        return self.proc

    async def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            channel = Channel(path=str(self.socket))
            try:
                reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=1)
                if reply.status == HealthCheckResponse.SERVING:
                    return
            except Exception:
                pass
            finally:
                channel.close()
            await asyncio.sleep(0.05)
        raise RuntimeError("daemon did not become ready")

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=120)
