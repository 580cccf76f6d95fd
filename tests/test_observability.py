"""Prometheus metrics scraped from a real daemon (parsed with
prometheus_client's own parser), ``imd status``, MetricsGet's arithmetic,
and README's metric table against the code."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.observability import metrics_table
from imd.services.rates import RateMeter, Rates, Sample
from tests.conftest import DaemonFactory
from tests.helpers import PY, RunningDaemon, eventually, spec, until_event, wait_state, watching

ROOT = Path(__file__).resolve().parent.parent


async def scrape(daemon: RunningDaemon, path: str = "/metrics", accept: str = "") -> tuple[str, str]:
    """(status line, body) of one HTTP request to the metrics endpoint."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.metrics_port())
    headers = f"Accept: {accept}\r\n" if accept else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().splitlines()[0], body.decode()


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.asyncio
async def test_the_figures_move_as_work_happens(daemon: RunningDaemon) -> None:
    status, body = await scrape(daemon)
    assert status == "HTTP/1.1 200 OK"
    before = samples(body)
    assert value(before, "imd_processes", state="running") == 0
    stub = daemon.pm()
    after: dict[Any, float] = {}
    async with watching(stub) as events:
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("m1")))
        await wait_state(stub, "m1", {"running"})
        with pytest.raises(GRPCError):
            await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("Bad")))
        await until_event(events, lambda e: e.spec.name == "m1")  # the watcher got it

        async def counted() -> bool:
            # The counter moves once the daemon's write of the event returned,
            # which may be just after the watcher read it.
            after.update(samples((await scrape(daemon))[1]))
            return value(after, "imd_watch_events_sent_total", api="process") >= 1

        await eventually(counted, "m1's event counted as sent")
        assert value(after, "imd_watchers", source="processes") == 1
    assert value(after, "imd_processes", state="running") == 1
    assert value(after, "imd_instances", data_engine="v1", type="process", state="running") == 1
    ok = value(after, "imd_grpc_requests_total", method="ProcessCreate", code="OK")
    assert ok == value(before, "imd_grpc_requests_total", method="ProcessCreate", code="OK") + 1
    assert value(after, "imd_grpc_requests_total", method="ProcessCreate", code="INVALID_ARGUMENT") == 1
    assert value(after, "imd_grpc_request_duration_seconds_count", method="ProcessCreate") == 2
    assert value(after, "imd_state_transitions_total", data_engine="v1", type="process", state="running") >= 1
    assert value(after, "imd_state_commits_total", file="registry.json", result="ok") > value(
        before, "imd_state_commits_total", file="registry.json", result="ok"
    )
    assert value(before, "imd_watch_events_sent_total", api="process") == 0
    assert value(after, "imd_ports", state="in_use") == 0
    assert value(after, "imd_state_degraded") == 0
    assert value(after, "imd_spawn_failures_total", reason="ENOENT") == 0


@pytest.mark.asyncio
async def test_spawn_failures_are_counted_by_cause(daemon: RunningDaemon, tmp_path: Path) -> None:
    script = tmp_path / "not-a-program"
    script.write_bytes(b"\x00\x01garbage")
    script.chmod(0o755)
    with pytest.raises(GRPCError):
        await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("junk", str(script), [])))
    found = samples((await scrape(daemon))[1])
    assert value(found, "imd_spawn_failures_total", reason="ENOEXEC") == 1


@pytest.mark.asyncio
async def test_the_endpoint_speaks_http_and_openmetrics(daemon: RunningDaemon) -> None:
    status, _ = await scrape(daemon, "/elsewhere")
    assert status == "HTTP/1.1 404 Not Found"
    status, body = await scrape(daemon, accept="application/openmetrics-text; version=1.0.0")
    assert status == "HTTP/1.1 200 OK" and body.rstrip().endswith("# EOF")


@pytest.mark.asyncio
async def test_an_empty_metrics_listen_turns_the_endpoint_off(daemon_factory: DaemonFactory) -> None:
    daemon = await daemon_factory(metrics_listen="")
    assert '"metrics_port"' not in daemon.stderr()


def imd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "imd", *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.asyncio
async def test_imd_status_for_an_operator_and_for_scripts(daemon: RunningDaemon) -> None:
    await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("s1")))
    await wait_state(daemon.pm(), "s1", {"running"})
    shown = await asyncio.to_thread(imd, "--socket", str(daemon.socket), "status")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert re.match(r"imd \d+\.\d+\.\d+, up \d+m\d+s", text)
    assert f"process 127.0.0.1:{daemon.base_port}" in text and "1 v1 running" in text
    assert "SPDK target: data engine V2 not enabled" in text
    data = json.loads((await asyncio.to_thread(imd, "--socket", str(daemon.socket), "--json", "status")).stdout)
    assert data["counts"] == {"v1 running": 1} and data["degraded"] == "" and data["target"] is None
    assert data["listeners"]["instance_port"] == f"127.0.0.1:{daemon.base_port + 3}"
    # A child that fails shows in the counts, on screen and in the document.
    await daemon.pm().ProcessCreate(pm.ProcessCreateRequest(spec=spec("s2", "/bin/sh", ["-c", "exit 3"])))
    failed = await wait_state(daemon.pm(), "s2", {"error"})
    assert failed.status.error_msg == "exit status 3"
    shown = await asyncio.to_thread(imd, "--socket", str(daemon.socket), "status")
    assert "counts: 1 v1 error, 1 v1 running" in shown.stdout
    data = json.loads((await asyncio.to_thread(imd, "--socket", str(daemon.socket), "--json", "status")).stdout)
    assert data["counts"] == {"v1 running": 1, "v1 error": 1}


def test_rates_over_the_interval_between_calls() -> None:
    meter = RateMeter()
    first = meter.rates("e1", Sample(10.0, 100, 50, 409_600, 204_800, 100 * 20_000, 50 * 40_000), origin_s=0.0)
    assert first == Rates(40_960, 20_480, 20_000, 40_000, 10, 5)
    second = meter.rates("e1", Sample(12.0, 300, 50, 1_228_800, 204_800, 100 * 20_000 + 200 * 10_000, 50 * 40_000), 0)
    assert second == Rates(read_throughput=409_600, read_latency_ns=10_000, read_iops=100)
    # Counters that went backwards (the engine was made again) start over from zero.
    reset = meter.rates("e1", Sample(20.0, 10, 0, 40_960, 0, 10 * 5_000, 0), origin_s=18.0)
    assert reset == Rates(read_throughput=20_480, read_latency_ns=5_000, read_iops=5)


def test_readme_metric_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- metrics-table:start -->")
    end = readme.index("<!-- metrics-table:end -->")
    assert readme[start:end].split("\n", 1)[1].strip() == metrics_table().strip(), (
        "README's metric table is stale: paste the output of "
        "`python -c 'from imd.observability import metrics_table; print(metrics_table())'`"
    )
