"""A replica whose node goes silent (issue 25): its nvmf_tgt is stopped with
SIGSTOP, so its TCP connections stay open and answer nothing, as after a
power loss, a hang or a cut cable. The mirror must fail that leg within its
leg timeout and go on with the other, with no error at the host, and the
controller must be declared silent so that nothing waits on it forever.

The silent replica lives in a target of its own (a second nvmf_tgt, on the
same core as the first); the other replica in another. Outcomes are asserted, never durations: the leg went ERR
while its peer was stopped, the writes in flight completed, the data on the
working replica is what was written.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spdk_ffi import ControllerOpts, Initiator
from tests.helpers import eventually
from tests.spdk.target import HOST_NQN, Layout, Target, path, skip_reason
from tests.spdk.test_mirror import BLOCK, BLOCKS, Env, Writer, backend, nqn

pytestmark = pytest.mark.asyncio

LIVE: Layout = [(nqn("live"), "malloc", "Live", BLOCKS, [4441])]
QUIET: Layout = [(nqn("quiet"), "malloc", "Quiet", BLOCKS, [4442])]
PORTS = {"live": 4441, "quiet": 4442}
TIMEOUT_MS = 3000  # shorter than the daemon's 5 s, for a shorter test; long enough for a loaded 2-core machine


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    live = Target(Path(tmp_path_factory.mktemp("live")), LIVE)
    try:
        quiet = Target(Path(tmp_path_factory.mktemp("quiet")), QUIET)
    except BaseException:
        live.close()
        raise
    try:
        yield {"live": live, "quiet": quiet}
    finally:
        os.kill(quiet.proc.pid, signal.SIGCONT)  # a test that failed half way left it stopped
        quiet.close()
        live.close()


class Silence:
    """Stops a target's process (its sockets stay open, nothing answers) and
    always lets it go on again."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.stopped = False

    def __enter__(self) -> Silence:
        os.kill(self.target.proc.pid, signal.SIGSTOP)
        self.stopped = True
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.target.proc.pid, signal.SIGCONT)
        self.stopped = False


@pytest_asyncio.fixture
async def env(targets: dict[str, Target]) -> AsyncIterator[Env]:
    e = Env(targets["live"], Initiator(backend()))
    try:
        yield e
    finally:
        await e.close()


async def mirror(env: Env, **controller: Any) -> Any:
    from spdk_ffi.mirror import NativeMirror

    opts = ControllerOpts(
        silence_timeout_ms=TIMEOUT_MS,
        keep_alive_timeout_ms=TIMEOUT_MS,
        ctrlr_loss_timeout_sec=30,
        reconnect_delay_sec=1,
        fast_io_fail_timeout_sec=20,  # far longer than the leg timeout: the watchdog must not wait for it
        **controller,
    )
    legs = []
    for name in ("live", "quiet"):
        await env.ini.attach(name, [path(nqn(name), PORTS[name])], HOST_NQN, opts, owner="test")
        legs.append((name, env.ini.handle(name)))
    m = await NativeMirror.create(env.backend, "silence", legs, BLOCKS, leg_timeout_ms=TIMEOUT_MS)
    env.mirrors.append(m)
    return m


# A silent path is declared after replica_timeout_s; reconnects back off: a longer bound.
until = functools.partial(eventually, timeout=60)


def leg(m: Any, name: str) -> Any:
    return next(s for s in m.legs() if s.name == name)


async def test_a_silent_leg_goes_err_and_writes_complete_from_the_other(env: Env, targets: dict[str, Target]) -> None:
    m = await mirror(env)
    writer = Writer(env, m, seed=25)
    await writer.zero()
    await writer.step()
    with Silence(targets["quiet"]):
        run = asyncio.ensure_future(writer.run())
        await until(lambda: leg(m, "quiet").mode == "ERR")
        err_while_silent = leg(m, "quiet")
        steps = writer.ios
        await until(lambda: writer.ios > steps + 50)  # writes and verified reads go on without it
        writer.stop.set()
        await run
    assert writer.errors == []
    assert err_while_silent.silent_s > 0 and "silent for" in err_while_silent.error, err_while_silent
    assert leg(m, "live").mode == "RW"
    await writer.verify()
    assert await read(env, "live") == bytes(writer.shadow)


async def read(env: Env, replica: str) -> bytes:
    """The replica's whole namespace, read directly (not through the mirror)."""
    from spdk_ffi.native import Io, IoKind
    from tests.spdk.test_mirror import CHECK_NQN, buffers

    name = f"check-{replica}"
    await env.ini.attach(name, [path(nqn(replica), PORTS[replica])], CHECK_NQN)
    (buf,) = buffers(1, 256 * BLOCK)
    out = bytearray()
    try:
        for lba in range(0, BLOCKS, 256):
            await env.ini.io(name, [Io(IoKind.READ, 1, lba=lba, nblocks=256, buf=buf)])
            out += bytes(buf.view)
    finally:
        await env.ini.detach(name)
        buf.free()
    return bytes(out)


async def test_an_idle_silent_leg_goes_err_once_its_keep_alive_goes_unanswered(
    env: Env, targets: dict[str, Target]
) -> None:
    """No I/O at all: the silence is seen through the keep-alive (SPDK's
    admin timeout), the path is declared lost, and the leg leaves the mirror
    so that ReplicaList tells the truth before the next write waits."""
    m = await mirror(env)

    def declared() -> bool:
        return next(i for i in env.ini.controllers() if i.name == "quiet").counters["silent_paths"] >= 1

    with Silence(targets["quiet"]):
        await until(lambda: leg(m, "quiet").mode == "ERR")
        failed = leg(m, "quiet")
        await until(declared)  # the controller's keeper reports it (and logs it)
    assert failed.silent_s > 0 and "silent for" in failed.error, failed


async def test_without_another_working_leg_the_watchdog_fails_nothing(env: Env, targets: dict[str, Target]) -> None:
    """A mirror whose only RW leg goes silent keeps it: failing the last copy
    helps no one. Its path is still declared lost (the I/O waits for a path,
    up to fast_io_fail_timeout_sec), and the mirror carries on once the node
    answers again."""
    from spdk_ffi.mirror import NativeMirror
    from spdk_ffi.native import Io, IoKind

    opts = ControllerOpts(
        silence_timeout_ms=TIMEOUT_MS,
        keep_alive_timeout_ms=TIMEOUT_MS,
        ctrlr_loss_timeout_sec=60,
        reconnect_delay_sec=1,
        fast_io_fail_timeout_sec=60,
    )
    await env.ini.attach("quiet", [path(nqn("quiet"), PORTS["quiet"])], HOST_NQN, opts, owner="test")
    m = await NativeMirror.create(
        env.backend, "alone", [("quiet", env.ini.handle("quiet"))], BLOCKS, leg_timeout_ms=TIMEOUT_MS
    )
    env.mirrors.append(m)
    buf = env.buf(BLOCK)
    buf.view[:] = b"\x5a" * BLOCK
    with Silence(targets["quiet"]):
        write = asyncio.ensure_future(m.io([Io(IoKind.WRITE, 0, lba=7, nblocks=1, buf=buf)]))

        def declared() -> bool:
            info = next(i for i in env.ini.controllers() if i.name == "quiet")
            return info.counters["silent_paths"] >= 1

        await until(declared)
        assert not write.done() and leg(m, "quiet").mode == "RW"  # waiting for a path, not failed
    await asyncio.wait_for(write, 60)  # reconnected: the write went through
    assert leg(m, "quiet").mode == "RW"


async def test_a_silent_controller_without_reconnects_fails_its_io(env: Env, targets: dict[str, Target]) -> None:
    """spdk_ffi's defaults (no reconnect): once the peer is declared silent
    the I/O waiting on it fails, it does not wait forever."""
    from spdk_ffi.native import Io, IoKind

    opts = ControllerOpts(silence_timeout_ms=TIMEOUT_MS, keep_alive_timeout_ms=TIMEOUT_MS)
    await env.ini.attach("quiet", [path(nqn("quiet"), PORTS["quiet"])], HOST_NQN, opts, owner="test")
    buf = env.buf(BLOCK)
    with Silence(targets["quiet"]):
        write = asyncio.ensure_future(env.ini.io("quiet", [Io(IoKind.WRITE, 1, lba=7, nblocks=1, buf=buf)]))

        def declared() -> bool:
            return next(i for i in env.ini.controllers() if i.name == "quiet").counters["silent_paths"] >= 1

        await until(declared)
        done, _ = await asyncio.wait([write], timeout=10)  # ten times the silence: the answer is in by now
        assert write in done, "the write still waits on a controller declared silent"
        assert write.exception() is not None


# -- a silent path of a multipath replica ------------------------------------------------------

NS = "imds-tgt"  # everything this test makes carries the "imds-" prefix
ADDR = {0: ("198.18.250.1", "198.18.250.2"), 1: ("198.18.251.1", "198.18.251.2")}  # (ours, the target's)


def _ip(*args: str) -> None:
    import subprocess

    subprocess.run(["ip", *args], check=True, capture_output=True)


def _clean_netns() -> None:
    import contextlib
    import subprocess

    for i in ADDR:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", f"imds-h{i}")
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", NS)


def _netns_reason() -> str | None:
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "network namespaces need root and iproute2"
    try:
        _ip("netns", "add", "imds-probe")
        _ip("netns", "del", "imds-probe")
    except subprocess.CalledProcessError as exc:
        return f"ip netns does not work here: {exc.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def two_path_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """An nvmf_tgt in a namespace of its own, reachable through two veth
    pairs: two real paths to one replica, each of which can be cut alone."""
    reason = skip_reason() or _netns_reason()
    if reason is not None:
        pytest.skip(reason)
    _clean_netns()  # a killed run's leftovers, by prefix
    _ip("netns", "add", NS)
    try:
        _ip("-n", NS, "link", "set", "lo", "up")
        for i, (ours, theirs) in ADDR.items():
            _ip("link", "add", f"imds-h{i}", "type", "veth", "peer", "name", f"imds-t{i}", "netns", NS)
            _ip("addr", "add", f"{ours}/24", "dev", f"imds-h{i}")
            _ip("link", "set", f"imds-h{i}", "up")
            _ip("-n", NS, "addr", "add", f"{theirs}/24", "dev", f"imds-t{i}")
            _ip("-n", NS, "link", "set", f"imds-t{i}", "up")
        target = Target(
            Path(tmp_path_factory.mktemp("two-path")),
            [(nqn("mp"), "malloc", "Mp", BLOCKS, [])],
            netns=NS,
        )
        try:
            for _, theirs in ADDR.values():
                target.add_listener(nqn("mp"), 4450, address=theirs)
            yield target
        finally:
            target.close()
    finally:
        _clean_netns()


async def test_a_silent_path_fails_over_to_the_live_one_and_the_leg_stays(env: Env, two_path_target: Target) -> None:
    """Path 0 of replica "mp" goes silent (our neighbour entry for the
    target's address now points at a MAC nobody has: frames vanish, no RST,
    no ICMP). The path is declared silent and its I/O moves to path 1; the
    leg never leaves the mirror and the writer sees no error. The keeper's
    reconnects to the silent path go on meanwhile and must not stop the
    poller (SPDK's connect() blocks: each attempt is first probed from the
    loop), so writes keep completing after several of them."""
    from spdk_ffi.mirror import NativeMirror

    opts = ControllerOpts(
        silence_timeout_ms=TIMEOUT_MS,
        keep_alive_timeout_ms=TIMEOUT_MS,
        ctrlr_loss_timeout_sec=30,
        reconnect_delay_sec=1,
        fast_io_fail_timeout_sec=20,
        attach_timeout_sec=2,
    )
    await env.ini.attach("live", [path(nqn("live"), PORTS["live"])], HOST_NQN, opts, owner="test")
    paths = [f"TCP/IPv4/{theirs}/4450/{nqn('mp')}" for _, theirs in ADDR.values()]
    await env.ini.attach("mp", paths, HOST_NQN, opts, owner="test")
    legs = [("live", env.ini.handle("live")), ("mp", env.ini.handle("mp"))]
    m = await NativeMirror.create(env.backend, "multipath", legs, BLOCKS, leg_timeout_ms=TIMEOUT_MS)
    env.mirrors.append(m)
    writer = Writer(env, m, seed=52)
    await writer.zero()
    await writer.step()

    def declared() -> bool:
        return next(i for i in env.ini.controllers() if i.name == "mp").counters["silent_paths"] >= 1

    run = asyncio.ensure_future(writer.run())
    _, theirs = ADDR[0]
    _ip("neigh", "replace", theirs, "lladdr", "02:00:00:00:5e:5e", "dev", "imds-h0", "nud", "permanent")

    def attempts() -> int:
        return int(next(i for i in env.ini.controllers() if i.name == "mp").counters["reconnect_attempts"])

    try:
        await until(declared)
        steps = writer.ios
        await until(lambda: writer.ios > steps + 50)  # going on through path 1
        tried = attempts()
        await until(lambda: attempts() >= tried + 2)  # two more reconnects to the silent path...
        steps = writer.ios
        await until(lambda: writer.ios > steps + 50)  # ...and the poller still serves the writes
    finally:
        _ip("neigh", "del", theirs, "dev", "imds-h0")
        writer.stop.set()
        await run
    assert writer.errors == []
    assert [s.mode for s in m.legs()] == ["RW", "RW"]  # path 1 carried the writes after path 0 went silent
    await writer.verify()
