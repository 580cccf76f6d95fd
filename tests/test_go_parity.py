"""Where imd and Longhorn's Go original must agree on the V1 wire (issue 13):
target ports, a stale UUID during a replace, build info. Each test drives a
real daemon over gRPC, the way Longhorn's manager does."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd import buildinfo
from imd.api import convert
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.gen.imrpc import instance_pb2 as inst
from tests.helpers import HEALTH_SERVER, PY, RunningDaemon, health_spec, until_event, wait_state, watching

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent
HEALTH = {"port_count": 2, "port_args": ["--listen,127.0.0.1:"]}


def ispec(name: str, instance_type: str) -> inst.InstanceSpec:
    return inst.InstanceSpec(
        name=name,
        type=instance_type,
        volume_name="vol-1",
        process_instance_spec=inst.ProcessInstanceSpec(binary=PY, args=[HEALTH_SERVER]),
        **HEALTH,  # type: ignore[arg-type]
    )


def target_ports(response: inst.InstanceResponse) -> tuple[int, int]:
    return response.status.target_port_start, response.status.target_port_end


def own_ports(response: inst.InstanceResponse) -> tuple[int, int]:
    return response.status.port_start, response.status.port_end


async def test_v1_engine_reports_its_ports_as_target_ports_everywhere(daemon: RunningDaemon) -> None:
    """The manager copies TargetPortStart into an engine's targetPort: 0 there
    would point it at port 0."""
    stub = daemon.instances()
    async with stub.InstanceWatch.open() as watch:
        await watch.send_message(Empty(), end=True)
        await watch.recv_initial_metadata()
        engine = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("v1-e-0", "engine")))
        replica = await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("v1-r-0", "replica")))
        async with asyncio.timeout(10):
            await watch.recv_message()  # a change: the manager lists now
        await watch.cancel()
    assert engine.status.port_start > 0 and engine.status.port_end == engine.status.port_start + 1
    assert target_ports(engine) == own_ports(engine)
    assert target_ports(replica) == (0, 0) and replica.status.port_start > 0

    listing = await stub.InstanceList(Empty())
    assert target_ports(listing.instances["v1-e-0"]) == own_ports(engine)
    assert target_ports(listing.instances["v1-r-0"]) == (0, 0)
    got = await stub.InstanceGet(inst.InstanceGetRequest(name="v1-e-0", type="engine"))
    assert target_ports(got) == own_ports(engine)

    replaced = await stub.InstanceReplace(
        inst.InstanceReplaceRequest(spec=ispec("v1-e-0", "engine"), terminate_signal="SIGHUP")
    )
    assert own_ports(replaced) != own_ports(engine)
    assert target_ports(replaced) == own_ports(replaced)
    listing = await stub.InstanceList(Empty())
    assert target_ports(listing.instances["v1-e-0"]) == own_ports(replaced)


async def test_processes_without_a_type_are_typed_by_name_as_the_original_does(daemon: RunningDaemon) -> None:
    pms = daemon.pm()
    for name in ("pvc-1-e-0", "pvc-1-r-5f3a"):
        spec = health_spec(name)
        spec.port_count = 1
        await pms.ProcessCreate(pm.ProcessCreateRequest(spec=spec))
    listing = (await daemon.instances().InstanceList(Empty())).instances
    engine, replica = listing["pvc-1-e-0"], listing["pvc-1-r-5f3a"]
    assert (engine.spec.type, replica.spec.type) == ("engine", "replica")
    assert target_ports(engine) == own_ports(engine) and engine.status.port_start > 0
    assert target_ports(replica) == (0, 0)


async def test_a_recorded_type_wins_over_the_name(daemon: RunningDaemon) -> None:
    stub = daemon.instances()
    await stub.InstanceCreate(inst.InstanceCreateRequest(spec=ispec("plain-name", "engine")))
    listed = (await stub.InstanceList(Empty())).instances["plain-name"]
    assert listed.spec.type == "engine" and target_ports(listed) == own_ports(listed)


async def test_delete_with_the_uuid_of_a_replaced_process_still_exiting_is_not_found(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """The predecessor ignores SIGHUP, so it is still exiting (for stop_grace_s)
    while the manager deletes with its UUID: NOT_FOUND, as in the Go
    original, and the current process is untouched."""
    daemon = await daemon_factory(stop_grace_s=4.0)
    pms = daemon.pm()
    stubborn = health_spec("held", "--ignore-signals")
    await pms.ProcessCreate(pm.ProcessCreateRequest(spec=stubborn))
    old = await wait_state(pms, "held", {"running"})
    async with watching(daemon.pm()) as events:
        new = await pms.ProcessReplace(pm.ProcessReplaceRequest(spec=health_spec("held"), terminate_signal="SIGHUP"))
        for call in (
            pms.ProcessDelete(pm.ProcessDeleteRequest(name="held", uuid=old.status.uuid)),
            daemon.instances().InstanceDelete(inst.InstanceDeleteRequest(name="held", uuid=old.status.uuid)),
        ):
            with pytest.raises(GRPCError) as err:
                await call
            assert err.value.status == Status.NOT_FOUND
            assert old.status.uuid in (err.value.message or "")
        current = await pms.ProcessGet(pm.ProcessGetRequest(name="held"))
        assert (current.status.uuid, current.status.state) == (new.status.uuid, "running")
        # The predecessor was still there during those deletes: it is killed
        # only when its grace runs out, after them.
        seen = await until_event(events, lambda e: e.deleted and e.status.uuid == old.status.uuid)
    assert seen[-1].status.state == "error" and "SIGKILL" in seen[-1].status.error_msg
    assert all(e.status.uuid != new.status.uuid or not e.deleted for e in seen)
    current = await pms.ProcessGet(pm.ProcessGetRequest(name="held"))
    assert (current.status.uuid, current.status.state) == (new.status.uuid, "running")


# -- build info ---------------------------------------------------------------------------


async def test_version_get_and_imd_version_carry_the_build(daemon: RunningDaemon) -> None:
    expected = buildinfo.load()
    if (ROOT / ".git").exists():  # a checkout always knows its commit (see test_buildinfo)
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", expected.git_commit)
    version = await daemon.pm().VersionGet(Empty())
    assert (version.gitCommit, version.buildDate) == (expected.git_commit, expected.build_date)
    disk_version = await daemon.disks().VersionGet(Empty())
    assert (disk_version.version, disk_version.gitCommit, disk_version.buildDate) == (
        version.version,
        expected.git_commit,
        expected.build_date,
    )
    engine_version = convert.engine_version(expected)  # ServerVersionGet's answer for a V2 engine
    assert (engine_version.gitCommit, engine_version.buildDate, engine_version.dataFormatVersion) == (
        expected.git_commit,
        expected.build_date,
        1,
    )
    printed = await asyncio.to_thread(
        subprocess.run,
        [PY, "-m", "imd", "--socket", str(daemon.socket), "--json", "version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert printed.returncode == 0, printed.stderr
    shown = json.loads(printed.stdout)
    assert (shown["gitCommit"], shown["buildDate"]) == (expected.git_commit, expected.build_date)
