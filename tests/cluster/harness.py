"""N imd nodes on one machine, each in its own network namespace with its
own imd (own state dir, V2 on, started by the one-line ``imd serve`` flags)
and its own nvmf_tgt (started by that imd), and a host namespace whose
initiators run as separate processes.

Used by the cluster tests (tests/cluster/conftest.py) and by people
(``python -m bench.cluster up|down|status``).

* Control: the tests and the command talk to each imd over its Unix socket
  (a file, reachable from any namespace), so nothing outside the run's
  namespaces is ever sent a packet. Inside, every imd listens on its node's
  address at the same base port (8500), as on real nodes: an engine grows
  its replicas through the replica node's imd at base + 4.
* Data: engines attach replicas at ``<node address>:<port>`` and export on
  their node's address; the host reaches them over the bridge.
* Files: ``<run_dir>/<node>/`` holds a node's state, logs, sockets, its
  disk (a sparse file) and the daemon's stderr; ``<run_dir>/cluster.json``
  says what runs, for ``status`` and ``down``.
* Teardown: ``down()`` (and a run's start) kills what runs in the prefix's
  namespaces and deletes them, then removes the run directory. It touches
  nothing else.

CPU: SPDK v24.01's nvmf_tgt cannot sleep. Its NVMe-oF poll group is a
0-period poller without interrupt support, so even with ``--interrupt-mode``
its reactor runs all the time (measured: 85-99 % of a core, idle, with or
without a TCP transport; ``--max-delay`` is parsed and ignored). Every
node's target therefore shares ``target_core_mask`` (core 0 by default):
three targets take a third of core 0 each, and imd's pollers and the host,
which do sleep when idle, have core 1. See bench/README.md for what that
gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from imd.api.gen.imrpc import common_pb2 as common
from imd.api.gen.imrpc import disk_grpc, instance_grpc, proxy_grpc
from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.api.gen.imrpc import proxy_pb2 as ppb
from imd.api.gen.ptypes import controller_pb2 as ctl
from imd.v2.model import nqn_of
from tests.cluster.netns import Network, remove_leftovers
from tests.helpers import health_serving
from tests.spdk.target import spdk_prefix

ROOT = Path(__file__).resolve().parent.parent.parent
V2 = common.DATA_ENGINE_V2
MIB = 1 << 20
BASE_PORT = 8500
PORT_RANGE = "20000-20099"
HOST = "host"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:imd-cluster-host"
STATE_FILE = "cluster.json"


@dataclass
class Node:
    """One node: its namespace and address, its imd and that imd's target."""

    name: str
    address: str
    net: Network
    dir: Path
    target_core_mask: str = "0x1"
    engine_core_mask: str = "0x2"
    disk_size: int = 256 * MIB
    proc: subprocess.Popen[bytes] | None = None
    channels: list[Channel] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.dir / "imd.sock"

    @property
    def rpc_socket(self) -> Path:
        return self.dir / "tgt.sock"

    @property
    def stderr_path(self) -> Path:
        return self.dir / "imd.stderr"

    def serve_argv(self) -> list[str]:
        """The one-line node start."""
        prefix = spdk_prefix()
        assert prefix is not None
        return [
            *("serve", "--listen", f"{self.address}:{BASE_PORT}", "--socket", str(self.socket)),
            *("--state-dir", str(self.dir / "state"), "--logs-dir", str(self.dir / "logs")),
            *("--port-range", PORT_RANGE, "--leave-children"),
            *("--v2", "--spdk-dir", str(prefix), "--replica-address", self.address, "--engine-address", self.address),
            *("--target-core-mask", self.target_core_mask, "--engine-core-mask", self.engine_core_mask),
            *("--target-mem-mb", "512", "--engine-mem-mb", "512", "--target-rpc-socket", str(self.rpc_socket)),
            "--target-arg=--disable-cpumask-locks",
        ]

    async def start(self, timeout: float = 90) -> None:
        """Start imd in the node's namespace (its own session: it outlives a
        ``bench.cluster up``) and wait until it serves."""
        self.dir.mkdir(parents=True, exist_ok=True)
        err = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.net.exec_prefix(self.name), sys.executable, "-m", "imd", *self.serve_argv()],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
        err.close()
        async with asyncio.timeout(timeout):
            while not await health_serving(self.socket):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"imd on {self.name} exited {self.proc.returncode}:\n{self.stderr()[-3000:]}")
                await asyncio.sleep(0.1)
        await self.wait_target(timeout)

    async def wait_target(self, timeout: float = 90) -> None:
        """Until V2 calls work: the node's target answers."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.disks().DiskList(Empty())
                    return
                except Exception:
                    await asyncio.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def target_pid(self) -> int | None:
        """The nvmf_tgt serving this node (found by its RPC socket)."""
        needle = str(self.rpc_socket).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    argv = cmdline.read()
            except OSError:
                continue
            if b"nvmf_tgt" in argv and needle in argv:
                return int(entry)
        return None

    def close_channels(self) -> None:
        for ch in self.channels:
            ch.close()
        self.channels.clear()

    async def kill9(self, *, target: bool) -> None:
        """``kill -9`` of imd (and of its target too, when ``target``): the
        node lost, or its imd crashed."""
        self.close_channels()
        victims = [self.pid]
        tgt = self.target_pid() if target else None
        if tgt is not None:
            victims.append(tgt)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.proc is not None
        await asyncio.to_thread(self.proc.wait, 30)
        if tgt is not None:
            async with asyncio.timeout(30):
                while _alive(tgt):
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.close_channels()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)

    # -- the node's APIs, over its Unix socket ---------------------------------------

    def _channel(self) -> Channel:
        """One channel per node, until close_channels() (grpclib's channel
        connects again by itself after the daemon restarted)."""
        if not self.channels:
            self.channels.append(Channel(path=str(self.socket)))
        return self.channels[0]

    def instances(self) -> instance_grpc.InstanceServiceStub:
        return instance_grpc.InstanceServiceStub(self._channel())

    def disks(self) -> disk_grpc.DiskServiceStub:
        return disk_grpc.DiskServiceStub(self._channel())

    def proxy(self) -> proxy_grpc.ProxyEngineServiceStub:
        return proxy_grpc.ProxyEngineServiceStub(self._channel())

    async def create_disk(self, disk: str = "d1") -> None:
        """A disk (AIO bdev and lvstore) over a sparse file of its own."""
        image = self.dir / f"{disk}.img"
        if not image.exists():
            with image.open("wb") as f:
                f.truncate(self.disk_size)
        request = dpb.DiskCreateRequest(disk_type=dpb.block, disk_name=disk, disk_path=str(image))
        await self.disks().DiskCreate(request)

    async def delete_disk(self, disk: str) -> None:
        await self.disks().DiskDelete(dpb.DiskDeleteRequest(disk_type=dpb.block, disk_name=disk))
        (self.dir / f"{disk}.img").unlink(missing_ok=True)

    async def replica(self, name: str, size: int, volume: str, disk: str = "d1") -> str:
        """A replica on one of this node's disks; its ``ip:port``."""
        spec = inst.InstanceSpec(
            name=name,
            type="replica",
            volume_name=volume,
            data_engine=V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(disk_name=disk, size=size),
        )
        made = await self.instances().InstanceCreate(inst.InstanceCreateRequest(spec=spec))
        return f"{self.address}:{made.status.port_start}"

    async def engine(self, name: str, volume: str, size: int, replicas: dict[str, str]) -> inst.InstanceResponse:
        spec = inst.InstanceSpec(
            name=name,
            type="engine",
            volume_name=volume,
            data_engine=V2,
            spdk_instance_spec=inst.SpdkInstanceSpec(size=size, replica_address_map=replicas, frontend="spdk-tcp-nvmf"),
        )
        return await self.instances().InstanceCreate(inst.InstanceCreateRequest(spec=spec))

    async def get(self, name: str) -> inst.InstanceResponse:
        return await self.instances().InstanceGet(inst.InstanceGetRequest(name=name, data_engine=V2))

    async def delete(self, name: str, *, cleanup: bool = True) -> None:
        request = inst.InstanceDeleteRequest(name=name, data_engine=V2, cleanup_required=cleanup)
        await self.instances().InstanceDelete(request)

    async def names(self) -> set[str]:
        return set((await self.instances().InstanceList(Empty())).instances)

    @staticmethod
    def engine_request(engine: str) -> ppb.ProxyEngineRequest:
        return ppb.ProxyEngineRequest(engine_name=engine, data_engine=V2)

    async def replica_list(self, engine: str) -> dict[str, tuple[str, str]]:
        """``{replica: (mode, address)}`` as the engine's ReplicaList says."""
        reply = await self.proxy().ReplicaList(self.engine_request(engine))
        return {
            r.address.instanceName: (ctl.ReplicaMode.Name(r.mode), r.address.address)
            for r in reply.replica_list.replicas
        }

    async def modes(self, engine: str) -> dict[str, str]:
        return {name: mode for name, (mode, _) in (await self.replica_list(engine)).items()}

    async def replica_add(self, engine: str, replica: str, address: str) -> None:
        request = ppb.EngineReplicaAddRequest(
            proxy_engine_request=self.engine_request(engine), replica_name=replica, replica_address=address
        )
        await self.proxy().ReplicaAdd(request)

    async def replica_remove(self, engine: str, replica: str) -> None:
        request = ppb.EngineReplicaRemoveRequest(proxy_engine_request=self.engine_request(engine), replica_name=replica)
        await self.proxy().ReplicaRemove(request)

    async def expand(self, engine: str, size: int) -> None:
        request = ppb.EngineVolumeExpandRequest(
            proxy_engine_request=self.engine_request(engine), expand=ctl.VolumeExpandRequest(size=size)
        )
        await self.proxy().VolumeExpand(request)

    async def volume(self, engine: str) -> Any:
        return (await self.proxy().VolumeGet(self.engine_request(engine))).volume

    async def lvols(self, disk: str = "d1") -> set[str]:
        """Names of the lvols on one of this node's disks (DiskReplicaInstanceList)."""
        request = dpb.DiskReplicaInstanceListRequest(disk_type=dpb.block, disk_name=disk)
        reply = await self.disks().DiskReplicaInstanceList(request)
        return set(reply.replica_instances)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Cluster:
    """``nodes`` named nodes (198.18.0.1, .2, ...) and a host (198.18.0.100)."""

    def __init__(
        self,
        prefix: str,
        run_dir: Path,
        nodes: tuple[str, ...] = ("a", "b", "c"),
        *,
        target_core_mask: str = "0x1",
        engine_core_mask: str = "0x2",
        host_core_mask: str = "0x1",
    ) -> None:
        self.prefix = prefix
        self.run_dir = run_dir
        self.net = Network(prefix)
        self.host_core_mask = host_core_mask
        self.nodes = {
            name: Node(
                name,
                f"198.18.0.{i + 1}",
                self.net,
                run_dir / name,
                target_core_mask=target_core_mask,
                engine_core_mask=engine_core_mask,
            )
            for i, name in enumerate(nodes)
        }

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    async def up(self) -> None:
        """Remove a killed run's leftovers (this prefix only), then build the
        network and start every node and its disk."""
        down(self.prefix, self.run_dir)
        self.run_dir.mkdir(parents=True)
        self.net.create_switch()
        for node in self.nodes.values():
            self.net.add(node.name, int(node.address.rsplit(".", 1)[1]))
        self.net.add(HOST, 100)
        await asyncio.gather(*(node.start() for node in self.nodes.values()))
        await asyncio.gather(*(node.create_disk() for node in self.nodes.values()))
        self.save()

    def save(self) -> None:
        state = {
            "prefix": self.prefix,
            "host": {"namespace": self.net.ns(HOST), "address": self.net.address(HOST)},
            "nodes": {
                n.name: {
                    "namespace": self.net.ns(n.name),
                    "address": n.address,
                    "imd_pid": n.pid,
                    "socket": str(n.socket),
                    "base_port": BASE_PORT,
                    "target_rpc_socket": str(n.rpc_socket),
                    "dir": str(n.dir),
                }
                for n in self.nodes.values()
            },
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def close_channels(self) -> None:
        for node in self.nodes.values():
            node.close_channels()

    async def down(self) -> None:
        self.net.heal_all()
        self.close_channels()
        down(self.prefix, self.run_dir)

    # -- the host -------------------------------------------------------------------------

    def host_argv(self, module: str, spec: dict[str, Any]) -> list[str]:
        return [*self.net.exec_prefix(HOST), sys.executable, "-m", module, json.dumps(spec)]

    async def host_run(self, **spec: Any) -> dict[str, Any]:
        """tests/v2/host.py in the host namespace; its report."""
        spec.setdefault("core_mask", self.host_core_mask)
        spec.setdefault("hostnqn", f"{HOSTNQN}-check")
        proc = await asyncio.create_subprocess_exec(
            *self.host_argv("tests.v2.host", spec),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        if proc.returncode != 0:
            raise RuntimeError(f"host {spec['cmd']} failed: {err.decode()[-2000:]}")
        return dict(json.loads(out))

    async def replica_hashes(self, address: str, replica: str, blocks: int) -> list[str]:
        """SHA-256 per 8 MiB of a replica, read straight from its node."""
        report = await self.host_run(cmd="hash", path=path_of(address, replica), first=0, count=blocks, chunk=2048)
        return list(report["hashes"])

    def host_loop(
        self, address: str, nqn: str, *, seed: int, qd: int = 4, span: int = 4096, opts: dict[str, Any] | None = None
    ) -> HostLoop:
        spec = {
            "role": "loop",
            "core_mask": self.host_core_mask,
            "poll_sleep_us": 20,
            "path": f"TCP/IPv4/{address.replace(':', '/')}/{nqn}",
            "hostnqn": f"{HOSTNQN}-{seed}",
            "seed": seed,
            "qd": qd,
            "span": span,
            "until_eof": True,
            "gap_ms": 20,
            "opts": opts or {},
        }
        return HostLoop(self.host_argv("bench.v2proc", spec))


def path_of(address: str, name: str) -> str:
    """spdk_ffi's path to an export of ``name`` at ``ip:port``."""
    return f"TCP/IPv4/{address.replace(':', '/')}/{nqn_of(name)}"


def down(prefix: str, run_dir: Path) -> list[str]:
    """Everything a run with this prefix made: its processes, namespaces and
    directory. Returns the namespaces removed."""
    removed = remove_leftovers(prefix)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return removed


class HostLoop:
    """bench/v2proc.py's verified-I/O loop in the host namespace, from
    ``start()`` until ``stop()``: a writer that reads back what it wrote
    and counts errors, mismatches and every pause of 20 ms or more."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_at = 0.0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 90)
        if not line:
            _, err = await self.proc.communicate()
            raise RuntimeError(f"host loop did not start: {err.decode()[-2000:]}")
        self.ready_at = float(json.loads(line)["t"])

    async def stop(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"host loop failed ({self.proc.returncode}): {err.decode()[-2000:]}")
        report = dict(json.loads(out.decode().strip().splitlines()[-1]))
        gaps = [end - start for start, end in report["gaps"]]
        report["longest_pause_s"] = round(max(gaps, default=0.0), 3)
        report["ios"] = report["writes"] + report["reads"]
        report["iops"] = round(report["ios"] / max(report["end"] - report["start"], 1e-9))
        return report

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def host_io(loop: HostLoop) -> AsyncIterator[HostLoop]:
    """A started host loop that is killed if the block fails before stop()."""
    await loop.start()
    try:
        yield loop
    finally:
        loop.kill()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 0.1 s until it holds; the monotonic time it
    first did. TimeoutError naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await predicate():
                return time.monotonic()
        except Exception:  # a node restarting: ask again
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.1)
