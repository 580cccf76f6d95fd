"""Assembly of the daemon: listeners, services, background upkeep, drain.

Listeners follow Longhorn's layout: the process-manager API on the base
port, the disk API on base + 2, the instance API on base + 3, and every
service on one Unix socket (for local tools, without TLS: the socket's file
mode is the access control). Each listener also serves
grpc.health.v1.Health and reflection.

Data engine V2 is assembled here when configured: the native core (imd's
own SPDK poller, for engines), the V2 node (the supervised SPDK target,
disks, replicas, engines) and its state file. Whatever part of it cannot
start leaves a reason that V2 calls answer with; V1 is never held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from pathlib import Path

import msgspec
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from imd.api.daemon_status import DaemonServicer
from imd.api.disk import DiskServicer
from imd.api.instance import InstanceServicer
from imd.api.process_manager import ProcessManagerServicer
from imd.api.proxy import proxy_servicer
from imd.api.replica import REPLICA_PORT_OFFSET, RemoteReplicas, ReplicaServicer
from imd.api.status import BoundedProtoCodec, InFlight
from imd.api.tls import TlsError, client_context, server_context
from imd.api.transport import Server
from imd.config import Config, ConfigError
from imd.edges.metrics_http import MetricsServer
from imd.edges.netports import ephemeral_ports, overlap
from imd.edges.sdnotify import Notifier
from imd.edges.threads import install_prestarted_executor
from imd.errors import ImdError
from imd.eventlog import fields
from imd.metrics import Metrics
from imd.observability import DaemonCollector, DiskStatus, RecentErrors, SpdkCollector, daemon_status
from imd.services.conditions import MountConditions
from imd.services.disks import DiskService
from imd.services.engines import EngineService
from imd.services.instances import InstanceLogSettings, InstanceService
from imd.services.processes import Lifecycle, ProcessService
from imd.supervisor.durability import Durability
from imd.supervisor.logs import LogStore
from imd.supervisor.ports import PortAllocator
from imd.supervisor.resources import DescriptorGuard
from imd.supervisor.state import StateStore, load_registry
from imd.supervisor.supervisor import Supervisor
from imd.v2 import state as v2state
from imd.v2.datapath import DataPath, native_data_path
from imd.v2.node import V2Node
from imd.v2.target import TargetKeeper, TargetSettings
from spdk_ffi import ControllerOpts

log = logging.getLogger("imd.daemon")

PROXY_PORT_OFFSET = 1
DISK_PORT_OFFSET = 2
INSTANCE_PORT_OFFSET = 3


def tls_context(tls_dir: str) -> ssl.SSLContext:
    """mTLS with Longhorn's file names. Any failure is fatal: a daemon told
    to use TLS must never fall back to plaintext."""
    try:
        return server_context(tls_dir)
    except TlsError as exc:
        raise ConfigError(str(exc)) from exc


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.started = time.monotonic()
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.in_flight = InFlight(self.metrics)
        self.recent_errors = RecentErrors()
        self.metrics_server: MetricsServer | None = None
        low, high = config.port_bounds()
        self.logs = LogStore(
            Path(config.logs_dir).absolute(),
            max_bytes=config.log_max_bytes,
            keep=config.log_keep,
            retention_s=config.deleted_log_retention_s,
        )
        # Every state store reports here; health and STATUS= follow it.
        self.durability = Durability()
        self.descriptors = DescriptorGuard(config.fd_reserve)
        self.supervisor = Supervisor(
            ports=PortAllocator(low, high),
            logs=self.logs,
            settings=config.supervision(),
            watch_queue_limit=config.watch_queue,
            descriptors=self.descriptors,
            metrics=self.metrics,
        )
        self.processes = ProcessService(self.supervisor, self.lifecycle, self.durability)
        self.store = self.supervisor.attach_store(Path(config.state_dir), self.durability)
        self.notifier = notifier if notifier is not None else Notifier()
        self.health_status = ServiceStatus()
        self._servers: list[Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.recovery: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.stopped = asyncio.Event()
        self.v2: V2Node | None = None
        self.v2_reason = "data engine V2 is not enabled on this node (config v2.enabled)"

    async def _start_v2(self) -> dict[str, int]:
        """The V2 node: the native core for engines (optional: without it,
        engines answer FAILED_PRECONDITION and disks/replicas still work),
        then the supervised target and recovery of V2 state."""
        cfg = self.config.v2
        state_dir = Path(self.config.state_dir).absolute()
        data: DataPath | None = None
        data_reason = ""
        try:
            data = await asyncio.to_thread(self._native_data_path)
        except Exception as exc:  # any failure to start the core leaves engines unavailable, with why
            data_reason = str(exc) or type(exc).__name__
            log.error("V2 engines not available", extra=fields(reason=data_reason))
        prefix = cfg.spdk_prefix()
        target = TargetSettings(
            binary=cfg.target_path(),
            rpc_socket=cfg.target_rpc_socket or str(state_dir / "spdk-target.sock"),
            core_mask=cfg.target_core_mask,
            mem_size_mb=cfg.target_mem_size_mb,
            no_huge=not cfg.hugepages,
            lib_dir=str(Path(prefix) / "lib") if prefix else "",
            start_timeout_s=cfg.target_start_timeout_s,
            extra_args=tuple(cfg.target_args),
        )
        _, base = self.config.listen_host_port()
        peers = RemoteReplicas(base, client_context(self.config.tls.dir) if self.config.tls else None)
        self.v2 = V2Node(
            supervisor=self.supervisor,
            target=TargetKeeper(self.supervisor, target),
            expander=peers,
            image_peers=peers,
            image_connect_timeout_s=cfg.image_connect_timeout_s,
            image_read_timeout_s=cfg.image_read_timeout_s,
            rebuild_chunk_bytes=cfg.rebuild_chunk_kib * 1024,
            rebuild_rate_bytes_per_s=cfg.rebuild_rate_mib_s * (1 << 20),
            backup_rate_bytes_per_s=cfg.backup_rate_mib_s * (1 << 20),
            hash_rate_bytes_per_s=cfg.snapshot_hash_rate_mib_s * (1 << 20),
            replica_timeout_ms=round(cfg.replica_timeout_s * 1000),
            metrics=self.metrics,
            data=data,
            data_unavailable=data_reason,
            replica_address=cfg.replica_address,
            engine_address=cfg.engine_address,
            state_dir=state_dir,
            watch_queue_limit=self.config.watch_queue,
        )
        self.v2.store = StateStore(
            state_dir / v2state.V2_STATE_FILE,
            self.v2.snapshot,
            self.durability,
            relieve=self.supervisor.descriptors.limit_hit,
            metrics=self.metrics,
        )
        report = await self.v2.start(self.v2.load())
        self.v2_reason = self.v2.target.reason
        return report

    def _native_data_path(self) -> DataPath:

        cfg = self.config.v2
        timeout_ms = round(cfg.replica_timeout_s * 1000)
        opts = ControllerOpts(
            silence_timeout_ms=timeout_ms,
            # A keep-alive every half of this: an idle replica's silence is
            # seen within 1.5 times the timeout.
            keep_alive_timeout_ms=min(max(timeout_ms, 1000), 10_000),
            ctrlr_loss_timeout_sec=cfg.replica_ctrlr_loss_timeout_s,
            reconnect_delay_sec=cfg.replica_reconnect_delay_s,
            fast_io_fail_timeout_sec=cfg.replica_fast_io_fail_timeout_s,
            attach_timeout_sec=cfg.replica_attach_timeout_s,
        )
        opts.validate()
        return native_data_path(
            core_mask=cfg.engine_core_mask,
            mem_size_mb=cfg.engine_mem_size_mb,
            no_huge=not cfg.hugepages,
            opts=opts,
            idle_spin_us=cfg.engine_idle_spin_us,
        )

    def _server(self, *services: object) -> Server:
        health = Health({svc: [self.health_status] for svc in services})  # type: ignore[misc]
        return Server(ServerReflection.extend([*services, health]), codec=BoundedProtoCodec())  # type: ignore[list-item]

    async def start(self) -> None:
        cfg = self.config
        install_prestarted_executor(asyncio.get_running_loop())
        ssl_ctx = tls_context(cfg.tls.dir) if cfg.tls else None
        await self._check_port_range()
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self.logs.logs_dir.mkdir(parents=True, exist_ok=True)
        # Recovery before listening: the port allocator must know every
        # adopted child's ports before the first create can arrive.
        self.recovery = self.supervisor.recover(load_registry(self.store) or [])
        with contextlib.suppress(ImdError):
            # Degraded from the start: Durability logged it; health says so.
            await self.supervisor.durable()
        if cfg.v2.enabled:
            self.recovery.update(await self._start_v2())
        log_settings = InstanceLogSettings(logging.getLogger("imd"))
        instances = InstanceService(self.processes, self.v2, self.v2_reason)
        pm = ProcessManagerServicer(self.processes, self.in_flight)
        inst = InstanceServicer(instances, log_settings, self.in_flight)
        disk = DiskServicer(DiskService(self.v2, self.v2_reason, self.durability), self.in_flight)
        proxy = proxy_servicer(EngineService(instances), self.in_flight)
        replica = ReplicaServicer(instances, self.in_flight)
        status = DaemonServicer(self._status_document, self.in_flight)
        self._disks = DiskService(self.v2, self.v2_reason, self.durability)
        host, base = cfg.listen_host_port()

        pm_server = self._server(pm, status)
        await pm_server.start(host, base, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(pm_server)
        proxy_server = self._server(proxy)
        await proxy_server.start(host, base + PROXY_PORT_OFFSET, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(proxy_server)
        disk_server = self._server(disk)
        await disk_server.start(host, base + DISK_PORT_OFFSET, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(disk_server)
        inst_server = self._server(inst)
        await inst_server.start(host, base + INSTANCE_PORT_OFFSET, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(inst_server)
        replica_server = self._server(replica)
        await replica_server.start(host, base + REPLICA_PORT_OFFSET, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(replica_server)
        self.ports = {
            "process_port": _bound_port(pm_server),
            "proxy_port": _bound_port(proxy_server),
            "disk_port": _bound_port(disk_server),
            "instance_port": _bound_port(inst_server),
            "replica_port": _bound_port(replica_server),
        }
        if cfg.socket:
            sock = Path(cfg.socket)
            sock.parent.mkdir(parents=True, exist_ok=True)
            sock.unlink(missing_ok=True)
            unix_server = self._server(pm, inst, disk, proxy, replica, status)
            await unix_server.start(path=str(sock))
            os.chmod(sock, 0o660)
            self._servers.append(unix_server)
        await self._start_metrics()
        self.durability.on_change(self._durability_changed)
        self.health_status.set(not self.durability.degraded)
        self._tasks.append(asyncio.ensure_future(self._log_upkeep()))
        conditions = MountConditions(self.supervisor, Path(cfg.mounts_file), cfg.mount_check_interval_s)
        self._tasks.append(asyncio.ensure_future(conditions.run()))
        self._tasks.append(asyncio.ensure_future(self._report_status()))
        if self.notifier.watchdog_usec:
            self._tasks.append(asyncio.ensure_future(self._watchdog(self.notifier.watchdog_usec / 1e6)))
        log.info(
            "serving",
            extra=fields(listen=cfg.listen, socket=cfg.socket, tls=bool(ssl_ctx), **self.ports, **self.recovery),
        )
        # Only now: every listener accepts and recovery is done.
        self.notifier.ready(self.status_line())

    async def _check_port_range(self) -> None:
        """Say so when the port range shares ports with the kernel's
        ephemeral range: it works, until a port the daemon hands out is
        already some connection's local port (see imd.edges.netports)."""
        ephemeral = await ephemeral_ports()
        shared = overlap(self.config.port_bounds(), ephemeral) if ephemeral else None
        if shared is not None:
            log.warning(
                "port_range overlaps the kernel's ephemeral ports (net.ipv4.ip_local_port_range):"
                " a child or an engine export may fail with EADDRINUSE",
                extra=fields(port_range=self.config.port_range, shared=f"{shared[0]}-{shared[1]}"),
            )

    async def _start_metrics(self) -> None:
        """Facts read at scrape time, and the endpoint (if configured)."""
        for outcome in ("adopted", "lost", "untracked_killed"):
            self.metrics.recovered.labels(outcome).set(self.recovery.get(outcome, 0))
        self.metrics.register(DaemonCollector(self.supervisor, self.durability, self.v2))
        if self.v2 is not None:
            self.metrics.register(SpdkCollector(self.v2))
        where = self.config.metrics_host_port()
        if where is not None:
            self.metrics_server = MetricsServer(self.metrics.registry)
            self.ports["metrics_port"] = await self.metrics_server.start(*where)

    async def _status_document(self) -> bytes:
        disks = []
        if self.v2 is not None and self.v2.target.available:
            with contextlib.suppress(ImdError):
                for view in await self._disks.listing():
                    disks.append(DiskStatus(view.record.name, view.record.path, view.total_size, view.free_size))
        cfg = self.config
        listeners = {name: f"{cfg.listen_host_port()[0]}:{port}" for name, port in self.ports.items()}
        if cfg.socket:
            listeners["socket"] = cfg.socket
        document = daemon_status(
            started=self.started,
            listeners=listeners,
            supervisor=self.supervisor,
            durability=self.durability,
            v2=self.v2,
            disks=disks,
            errors=self.recent_errors.lines(),
        )
        return msgspec.json.encode(document)

    def status_line(self) -> str:
        counts = self.supervisor.counts()
        if self.v2 is not None:
            counts.update(self.v2.counts())
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no processes"
        line = f"{states}; {self.supervisor.events.watcher_count} watchers"
        if self.descriptors.short:
            line = f"file descriptors exhausted, refusing new processes; {line}"
        if self.durability.degraded:
            line = f"degraded, refusing changes: {self.durability.reason}; {line}"
        return line

    def _durability_changed(self) -> None:
        """Degraded mode in and out: health NOT_SERVING while any state
        store cannot write (unless draining, which already said so), and
        STATUS= says why at once rather than at the next status tick."""
        if self.lifecycle.accepting:
            self.health_status.set(not self.durability.degraded)
        self.notifier.status(self.status_line())

    async def _report_status(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(1.0)
            line = self.status_line()
            if line != last:
                self.notifier.status(line)
                last = line

    async def _watchdog(self, interval: float) -> None:
        """Pings from a task on the event loop, not a thread: if the loop
        stalls, the pings stop and systemd's watchdog fires (SIGABRT, with
        faulthandler's traceback of where the loop was stuck)."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    async def _log_upkeep(self) -> None:
        while True:
            await asyncio.sleep(self.config.log_check_s)
            for proc in self.supervisor.views():
                try:
                    if await asyncio.to_thread(self.logs.rotate_if_needed, proc.name):
                        log.info("log rotated", extra=fields(name=proc.name, uuid=proc.uuid))
                except OSError as exc:
                    log.warning("log rotation failed", extra=fields(name=proc.name, error=str(exc)))
            self.logs.expire_deleted()

    async def stop(self) -> None:
        """Drain: stop accepting work, report NOT_SERVING, end streams, wait
        for in-flight RPCs up to the deadline, close listeners, then stop
        (or leave) the children."""
        cfg = self.config
        log.info("draining", extra=fields(in_flight=self.in_flight.count))
        self.lifecycle.start_drain()
        self.health_status.set(False)
        self.notifier.stopping("draining")
        self.supervisor.events.close_all()
        if self.v2 is not None:
            self.v2.events.close_all()
            self.v2.backing_images.events.close_all()
        if not await self.in_flight.wait_idle(cfg.drain_timeout_s):
            log.warning("drain deadline passed", extra=fields(in_flight=self.in_flight.count))
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.v2 is not None:
            # Engines live in this process and go with it (their records stay:
            # the next daemon brings them back); the target is a child like any.
            await self.v2.close()
        await self.supervisor.shutdown(stop_children=cfg.stop_children_on_exit, timeout=cfg.stop_grace_s + 5)
        if not await self.store.close(timeout=cfg.drain_timeout_s):
            log.error("state not written at shutdown", extra=fields(path=str(self.store.path)))
        self.descriptors.close()
        if cfg.socket:
            Path(cfg.socket).unlink(missing_ok=True)
        log.info("stopped")
        self.stopped.set()


def _bound_port(server: Server) -> int:
    sockets = getattr(server._server, "sockets", None) or ()
    return int(sockets[0].getsockname()[1]) if sockets else 0


async def serve(config: Config) -> None:
    daemon = Daemon(config)
    await daemon.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await daemon.stop()
