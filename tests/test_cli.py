"""The imd command line against a real daemon: tables, JSON, errors."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from tests.helpers import PY, SH, SLEEP, RunningDaemon, make_daemon, wait_log

pytestmark = pytest.mark.asyncio


async def imd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [PY, "-m", "imd", *args], capture_output=True, text=True, timeout=timeout
    )


async def test_process_commands_table_and_json(daemon: RunningDaemon) -> None:
    sock = ["--socket", str(daemon.socket)]
    created = await imd(*sock, "process", "create", "--port-count", "1", "--port-arg=--p=", "c1", SLEEP, "--", "1000")
    assert created.returncode == 0, created.stderr
    header, row = created.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "UUID", "PORTS", "ERROR"]
    assert row.split()[:2] == ["c1", "starting"]

    listed = await imd(*sock, "--json", "process", "list")
    data = json.loads(listed.stdout)
    entry = data["processes"]["c1"]
    assert entry["spec"]["args"] == ["1000", f"--p={entry['status']['port_start']}"]

    over_tcp = await imd("--addr", f"127.0.0.1:{daemon.base_port}", "--json", "process", "get", "c1")
    assert json.loads(over_tcp.stdout)["status"]["uuid"] == entry["status"]["uuid"]

    deleted = await imd(*sock, "process", "delete", "c1", "--uuid", entry["status"]["uuid"])
    assert deleted.returncode == 0 and "(deleted)" in deleted.stdout


async def test_client_errors_exit_1_with_status(daemon: RunningDaemon) -> None:
    result = await imd("--socket", str(daemon.socket), "process", "get", "nope")
    assert result.returncode == 1
    assert result.stderr.startswith("imd: NOT_FOUND:")
    bad = await imd("--socket", str(daemon.socket), "process", "create", "Bad", SLEEP)
    assert bad.returncode == 1 and "INVALID_ARGUMENT: spec.name" in bad.stderr
    unreachable = await imd("--socket", str(daemon.root / "absent.sock"), "version")
    assert unreachable.returncode == 1 and "cannot reach the daemon" in unreachable.stderr


async def test_log_follow_and_instance_commands(daemon: RunningDaemon) -> None:
    sock = ["--socket", str(daemon.socket)]
    made = await imd(
        *sock, "instance", "create", "--type", "engine", "e1", SH, "--", "-c", "echo one; echo two; sleep 100"
    )
    assert made.returncode == 0, made.stderr
    await wait_log(daemon, "e1", "two\n")
    logs = await imd(*sock, "instance", "log", "e1")
    assert logs.stdout.splitlines() == ["one", "two"]
    follower = await asyncio.create_subprocess_exec(
        PY, "-m", "imd", *sock, "process", "log", "--follow", "e1", stdout=asyncio.subprocess.PIPE
    )
    assert follower.stdout is not None
    first = await asyncio.wait_for(follower.stdout.readline(), 10)
    assert first == b"one\n"
    await imd(*sock, "instance", "delete", "e1")
    rest = await asyncio.wait_for(follower.stdout.read(), 15)  # ends when the instance is gone
    assert rest.startswith(b"two\n")
    assert await follower.wait() == 0
    version = await imd("--addr", f"127.0.0.1:{daemon.base_port}", "version")
    assert "instanceManagerAPIVersion: 7" in version.stdout


async def test_serve_rejects_bad_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(tmp_path / "d", port_range="9-3")
    result = await imd("serve", "--config", str(daemon.config_path))
    assert result.returncode == 2 and "port_range" in result.stderr
    daemon.config_path.write_text('listen = "127.0.0.1:1"\nunknown_key = 1\n')
    result = await imd("serve", "--config", str(daemon.config_path))
    assert result.returncode == 2 and "unknown_key" in result.stderr
