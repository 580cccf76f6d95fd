"""The S3 driver against a real server (SeaweedFS): credentials, endpoints
and proxies from the request's envs only, refused credentials, a target
that cannot be reached, and secrets kept out of logs and errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from imd.backupstore import (
    BackupSpec,
    FileBlockSink,
    FileBlockSource,
    StoreOptions,
    create_backup,
    open_driver,
    restore,
)
from imd.backupstore.s3 import S3Config
from imd.backupstore.urls import S3Target, parse_target
from imd.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from tests.backupstore.conftest import FAST, random_block, write_image
from tests.backupstore.seaweed import BUCKET, SECRET_KEY, SeaweedS3

pytestmark = pytest.mark.asyncio

# A bound on the test, not a timing assertion: an unbounded connect would
# hang here until this fails it.
DEADLINE = 30.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts no connection: a listener whose backlog
    is full, so a connect hangs (SYNs dropped) as to a host that is gone."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    listener.close()


@pytest.fixture
def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_endpoint_fails_within_the_connect_timeout(
    seaweed: SeaweedS3, s3_target: str, silent_port: int, dead_port: int
) -> None:
    options = StoreOptions(connect_timeout_s=1.0)
    for port in (silent_port, dead_port):
        envs = seaweed.envs(AWS_ENDPOINTS=f"http://127.0.0.1:{port}")
        with pytest.raises(Unavailable) as err:
            await asyncio.wait_for(open_driver(s3_target, envs, options), DEADLINE)
        assert "error sending request" in str(err.value) or "timed out" in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "nothing"},
        {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},  # unsigned requests
    ],
)
async def test_refused_credentials_are_permission_denied(
    seaweed: SeaweedS3, s3_target: str, overrides: dict[str, str]
) -> None:
    with pytest.raises(PermissionDenied) as err:
        await open_driver(s3_target, seaweed.envs(**overrides), FAST)
    assert err.value.field == "backup_target"


async def test_half_a_key_pair_is_invalid(seaweed: SeaweedS3, s3_target: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await open_driver(s3_target, seaweed.envs(AWS_SECRET_ACCESS_KEY=""), FAST)
    assert err.value.field == "envs"
    with pytest.raises(InvalidArgument):
        await open_driver(s3_target, seaweed.envs(AWS_ENDPOINTS="ftp://x"), FAST)


async def test_a_bucket_that_does_not_exist(seaweed: SeaweedS3) -> None:
    with pytest.raises(NotFound) as err:
        await open_driver("s3://no-such-bucket-here@us-east-1/x/", seaweed.envs(), FAST)
    assert err.value.field == "backup_target"


async def test_settings_come_from_envs_not_from_the_process(
    seaweed: SeaweedS3, s3_target: str, dead_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Everything an S3 client would pick up from imd's own environment, wrong.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "process-key",
        "AWS_SECRET_ACCESS_KEY": "process-secret",
        "AWS_SESSION_TOKEN": "process-token",
        "AWS_ENDPOINT": f"http://127.0.0.1:{dead_port}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead_port}",
        "AWS_SKIP_SIGNATURE": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true",
        "HTTP_PROXY": f"http://127.0.0.1:{dead_port}",
        "http_proxy": f"http://127.0.0.1:{dead_port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{dead_port}",
    }.items():
        monkeypatch.setenv(name, value)
    img = tmp_path / "img"
    data = write_image(img, [random_block(1, 65536), None], 65536)
    with FileBlockSource(str(img)) as source:
        result = await create_backup(
            BackupSpec(
                target=s3_target,
                volume_name="vol-env",
                snapshot_name="s1",
                parameters={"backup-block-size": "65536"},
            ),
            source,
            envs=seaweed.envs(),
            options=FAST,
        )
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink:
        await restore(result.url, sink, envs=seaweed.envs(), options=FAST)
    assert (tmp_path / "out").read_bytes() == data


async def test_the_requests_proxy_is_used_and_no_proxy_respected(
    seaweed: SeaweedS3, s3_target: str, dead_port: int
) -> None:
    proxy = f"http://127.0.0.1:{dead_port}"
    with pytest.raises(Unavailable):
        await open_driver(s3_target, seaweed.envs(HTTP_PROXY=proxy), FAST)
    assert await open_driver(s3_target, seaweed.envs(HTTP_PROXY=proxy, NO_PROXY="127.0.0.1"), FAST)
    # An https proxy is not for an http endpoint.
    assert await open_driver(s3_target, seaweed.envs(HTTPS_PROXY=proxy), FAST)


async def test_no_secret_in_logs_errors_or_reprs(
    seaweed: SeaweedS3, s3_target: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    img = tmp_path / "img"
    data = write_image(img, [random_block(3, 65536)], 65536)
    messages = []
    with FileBlockSource(str(img)) as source:
        result = await create_backup(
            BackupSpec(
                target=s3_target, volume_name="vol-log", snapshot_name="s1", parameters={"backup-block-size": "65536"}
            ),
            source,
            envs=seaweed.envs(),
            options=FAST,
        )
    with FileBlockSink(str(tmp_path / "out"), len(data)) as sink:
        await restore(result.url, sink, envs=seaweed.envs(), options=FAST)
    wrong = "wrong-secret-value-12345"
    for envs in (seaweed.envs(AWS_SECRET_ACCESS_KEY=wrong), seaweed.envs(AWS_ACCESS_KEY_ID="")):
        try:
            await open_driver(s3_target, envs, FAST)
        except Exception as exc:
            messages.append(repr(exc) + str(exc))
    target = parse_target(s3_target)
    assert isinstance(target, S3Target)
    messages.append(repr(S3Config(target, seaweed.envs())))
    assert len(messages) == 3
    for text in [caplog.text, *messages]:
        assert SECRET_KEY not in text
        assert wrong not in text


async def test_virtual_hosted_style_and_default_endpoints() -> None:
    target = parse_target(f"s3://{BUCKET}@eu-west-1/x/")
    assert isinstance(target, S3Target)
    path_style = S3Config(target, {"AWS_ENDPOINTS": "http://minio:9000/"})
    assert (path_style.endpoint, path_style.virtual_hosted) == ("http://minio:9000", False)
    virtual = S3Config(target, {"AWS_ENDPOINTS": "https://s3.example", "VIRTUAL_HOSTED_STYLE": "true"})
    assert (virtual.endpoint, virtual.host) == (f"https://{BUCKET}.s3.example", "s3.example")
    aws = S3Config(target, {})
    assert (aws.endpoint, aws.region, aws.signed) == (
        f"https://{BUCKET}.s3.eu-west-1.amazonaws.com",
        "eu-west-1",
        False,
    )
    forced_path = S3Config(target, {"VIRTUAL_HOSTED_STYLE": "false"})
    assert forced_path.endpoint == "https://s3.eu-west-1.amazonaws.com"
