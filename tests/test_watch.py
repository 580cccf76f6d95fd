"""ProcessWatch: one event per change, ordered per process, bounded per watcher."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from tests.helpers import RunningDaemon, health_spec, next_events, spec, until_event, wait_gone, watching

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_events_are_ordered_per_process_with_uuids(daemon: RunningDaemon, transport: str) -> None:
    stub = daemon.pm()
    names = [f"w{i}" for i in range(5)]
    async with watching(daemon.pm(transport)) as events:
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=health_spec("hw")))
        for name in names:
            await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(name)))
        for name in names:
            await stub.ProcessDelete(pm.ProcessDeleteRequest(name=name))
        # hw: starting, running; each w: running, stopping, stopped+deleted
        seen = await next_events(events, 2 + 3 * len(names))
    by_uuid: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    names_of: dict[str, str] = {}
    for event in seen:
        assert event.status.uuid
        by_uuid[event.status.uuid].append((event.status.state, event.deleted))
        names_of[event.status.uuid] = event.spec.name
    for uuid, states in by_uuid.items():
        if names_of[uuid] == "hw":
            assert states == [("starting", False), ("running", False)]
        else:
            assert states == [("running", False), ("stopping", False), ("stopped", True)]
    assert sorted(names_of.values()) == sorted(["hw", *names])


async def test_slow_watcher_is_dropped_with_resource_exhausted_and_fast_one_sees_all(
    daemon_factory,  # type: ignore[no-untyped-def]
) -> None:
    daemon = await daemon_factory(watch_queue=20)
    # The smallest HTTP/2 windows, so a client that does not read really
    # pushes back on the daemon instead of buffering everything locally.
    small = Configuration(http2_connection_window_size=65535, http2_stream_window_size=65535)
    slow_channel = Channel("127.0.0.1", daemon.base_port, config=small)
    slow_stub = imrpc_grpc.ProcessManagerServiceStub(slow_channel)
    stub = daemon.pm()
    count = 300
    try:
        async with slow_stub.ProcessWatch.open() as slow, watching(daemon.pm()) as fast:
            await slow.send_message(Empty(), end=True)
            await slow.recv_initial_metadata()
            fast_events: list[pm.ProcessResponse] = []

            async def read_fast() -> None:
                fast_events.extend(await next_events(fast, 3 * count, timeout=120))

            reader = asyncio.ensure_future(read_fast())
            for i in range(count):
                await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec(f"f{i}")))
                await stub.ProcessDelete(pm.ProcessDeleteRequest(name=f"f{i}"))
            await reader
            # The fast watcher got every change, in order, for every process.
            assert len(fast_events) == 3 * count
            assert sum(e.deleted for e in fast_events) == count
            # The slow one gets what was in flight, then an explicit error.
            received = 0
            with pytest.raises(GRPCError) as err:
                async with asyncio.timeout(30):
                    while await slow.recv_message() is not None:
                        received += 1
                    await slow.recv_trailing_metadata()  # grpclib raises the status here
            assert err.value.status == Status.RESOURCE_EXHAUSTED
            assert "fell more than 20 events behind" in (err.value.message or "")
            assert received < 3 * count
    finally:
        slow_channel.close()
    # The daemon carries on serving.
    reply = await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("after")))
    assert reply.status.state == "running"


async def test_deleted_flag_is_decided_when_the_change_happens(daemon: RunningDaemon) -> None:
    """Read the events only after the process is long gone: the stopping
    event must still say deleted=false (Go decides at send time)."""
    stub = daemon.pm()
    async with watching(daemon.pm()) as events:
        await stub.ProcessCreate(pm.ProcessCreateRequest(spec=spec("late")))
        await stub.ProcessDelete(pm.ProcessDeleteRequest(name="late"))
        await wait_gone(stub, "late")  # gone before a single event is read
        seen = await until_event(events, lambda e: e.deleted)
    assert [(e.status.state, e.deleted) for e in seen] == [
        ("running", False),
        ("stopping", False),
        ("stopped", True),
    ]


async def test_watch_sees_changes_of_self_exiting_process(daemon: RunningDaemon) -> None:
    stub = daemon.pm()
    async with watching(daemon.pm()) as events:
        await stub.ProcessCreate(
            pm.ProcessCreateRequest(spec=spec("selfexit", binary="/bin/sh", args=["-c", "exit 4"]))
        )
        seen = await until_event(events, lambda e: e.status.state == "error")
    assert seen[-1].status.error_msg == "exit status 4"
    assert not seen[-1].deleted
