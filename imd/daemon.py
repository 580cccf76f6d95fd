"""Assembly of the daemon: listeners, services, background upkeep, drain.

Listeners follow Longhorn's layout: the process-manager API on the base
port, the instance API on base + 3, and every service on one Unix socket
(for local tools, without TLS: the socket's file mode is the access
control). Each listener also serves grpc.health.v1.Health and reflection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from pathlib import Path

from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from imd.api.instance import InstanceServicer
from imd.api.process_manager import ProcessManagerServicer
from imd.api.status import BoundedProtoCodec, InFlight
from imd.config import Config, ConfigError
from imd.edges.sdnotify import Notifier
from imd.errors import ImdError
from imd.eventlog import fields
from imd.services.instances import InstanceLogSettings
from imd.services.processes import Lifecycle, ProcessService
from imd.supervisor.durability import Durability
from imd.supervisor.logs import LogStore
from imd.supervisor.ports import PortAllocator
from imd.supervisor.resources import DescriptorGuard
from imd.supervisor.state import decode_registry
from imd.supervisor.supervisor import Supervisor

log = logging.getLogger("imd.daemon")

INSTANCE_PORT_OFFSET = 3


def tls_context(tls_dir: str) -> ssl.SSLContext:
    """mTLS with Longhorn's file names. Any failure is fatal: a daemon told
    to use TLS must never fall back to plaintext."""
    directory = Path(tls_dir)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        ctx.load_verify_locations(directory / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])  # grpc-go refuses servers without ALPN h2
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.dir {tls_dir}: cannot load ca.crt/tls.crt/tls.key: {exc}") from exc
    return ctx


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.lifecycle = Lifecycle()
        self.in_flight = InFlight()
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

    def _server(self, *services: object) -> Server:
        health = Health({svc: [self.health_status] for svc in services})  # type: ignore[misc]
        return Server(ServerReflection.extend([*services, health]), codec=BoundedProtoCodec())  # type: ignore[list-item]

    async def start(self) -> None:
        cfg = self.config
        ssl_ctx = tls_context(cfg.tls.dir) if cfg.tls else None
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self.logs.logs_dir.mkdir(parents=True, exist_ok=True)
        # Recovery before listening: the port allocator must know every
        # adopted child's ports before the first create can arrive.
        self.recovery = self.supervisor.recover(self.store.load(decode_registry) or [])
        with contextlib.suppress(ImdError):
            # Degraded from the start: Durability logged it; health says so.
            await self.supervisor.durable()
        log_settings = InstanceLogSettings(logging.getLogger("imd"))
        pm = ProcessManagerServicer(self.processes, self.in_flight)
        inst = InstanceServicer(self.processes, log_settings, self.in_flight)
        host, base = cfg.listen_host_port()

        pm_server = self._server(pm)
        await pm_server.start(host, base, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(pm_server)
        inst_server = self._server(inst)
        await inst_server.start(host, base + INSTANCE_PORT_OFFSET, ssl=ssl_ctx, reuse_address=True)
        self._servers.append(inst_server)
        self.ports = {"process_port": _bound_port(pm_server), "instance_port": _bound_port(inst_server)}
        if cfg.socket:
            sock = Path(cfg.socket)
            sock.parent.mkdir(parents=True, exist_ok=True)
            sock.unlink(missing_ok=True)
            unix_server = self._server(pm, inst)
            await unix_server.start(path=str(sock))
            os.chmod(sock, 0o660)
            self._servers.append(unix_server)
        self.durability.on_change(self._durability_changed)
        self.health_status.set(not self.durability.degraded)
        self._tasks.append(asyncio.ensure_future(self._log_upkeep()))
        self._tasks.append(asyncio.ensure_future(self._report_status()))
        if self.notifier.watchdog_usec:
            self._tasks.append(asyncio.ensure_future(self._watchdog(self.notifier.watchdog_usec / 1e6)))
        log.info(
            "serving",
            extra=fields(listen=cfg.listen, socket=cfg.socket, tls=bool(ssl_ctx), **self.ports, **self.recovery),
        )
        # Only now: every listener accepts and recovery is done.
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        counts = self.supervisor.counts()
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
        if not await self.in_flight.wait_idle(cfg.drain_timeout_s):
            log.warning("drain deadline passed", extra=fields(in_flight=self.in_flight.count))
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
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
