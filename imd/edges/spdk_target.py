"""JSON-RPC to one SPDK target (``nvmf_tgt``), through SPDK's own Python client.

This edge knows SPDK's method names and parameters and nothing of imd above
it: the V2 layer asks for "an AIO bdev", "an lvol", "a subsystem with this
namespace and listener", and gets msgspec Structs or a ``TargetRpcError``
carrying SPDK's error code (usually ``-errno``) back.

Why a thread: ``spdk.rpc.client.JSONRPCClient`` (PyPI ``spdk``) is a
blocking socket client. Every call runs on one dedicated worker thread, so
the event loop never blocks on the target, and calls reach the target one
at a time, in order (the target serves its RPCs one at a time anyway). A
caller that is cancelled stops waiting, but the call it made still runs to
its end on the worker: SPDK has no way to abort an RPC once sent, so the
V2 layer treats every call as "may have happened" and reconciles.

We use the client's ``send``/``recv`` rather than ``call``: ``call`` folds
the error object into a message string, and the V2 layer needs the code
(``-ENODEV`` means "already gone", which a cleanup path must accept). After
a timeout or a broken connection the socket is dropped, so a late reply can
never be taken for the answer to the next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import time
from typing import Any

import msgspec

from imd.eventlog import fields

log = logging.getLogger("imd.spdk_target")

# A call that takes this long is logged (the target answers most in
# microseconds; a long one points at a stuck subsystem or a busy reactor).
SLOW_CALL_S = 1.0


# JSON-RPC's "Invalid params": what SPDK v24.01 answers when an operation
# fails in its completion callback (bdev_lvol_create, bdev_lvol_resize, ...),
# with the errno only as its strerror() text for a message.
INVALID_PARAMS = -32602
_ERRNO_OF_TEXT = {os.strerror(number): number for number in sorted(errno.errorcode, reverse=True)}


class TargetRpcError(Exception):
    """The target answered a call with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message

    @property
    def errno(self) -> int:
        """SPDK reports most failures as ``-errno``; an operation that fails
        in its completion callback as "Invalid params" with the errno's
        text (an lvstore out of clusters: ``No space left on device``, out
        of metadata pages: ``Cannot allocate memory``). 0 if neither."""
        if -4096 < self.code < 0:
            return -self.code
        if self.code == INVALID_PARAMS:
            return _ERRNO_OF_TEXT.get(self.message, 0)
        return 0

    @property
    def not_found(self) -> bool:
        """Whether the bdev or lvol named in the call does not exist (SPDK
        says -ENODEV or -ENOENT). The nvmf methods answer an unknown NQN with
        a bare "Invalid parameters", so they are checked by listing first."""
        return self.errno in (errno.ENODEV, errno.ENOENT)


class TargetUnreachable(Exception):
    """The target's RPC socket does not answer (not started, gone, or hung)."""


# -- what the target reports (only the fields imd reads) ----------------------


class Lvstore(msgspec.Struct, frozen=True):
    uuid: str
    name: str
    base_bdev: str
    total_data_clusters: int
    free_clusters: int
    block_size: int
    cluster_size: int


class LvolStore(msgspec.Struct, frozen=True):
    name: str
    uuid: str


class Lvol(msgspec.Struct, frozen=True):
    alias: str
    uuid: str
    name: str
    lvs: LvolStore
    is_thin_provisioned: bool = False
    is_snapshot: bool = False


class Bdev(msgspec.Struct, frozen=True):
    name: str
    block_size: int
    num_blocks: int
    uuid: str = ""
    aliases: list[str] = []


class LvolDetails(msgspec.Struct, frozen=True):
    """What bdev_get_bdevs says of an lvol (``driver_specific.lvol``). The
    chain of snapshots lives here: a clone names its parent snapshot
    (``base_snapshot``, by lvol name), a snapshot its clones."""

    lvol_store_uuid: str
    base_bdev: str = ""
    thin_provision: bool = False
    snapshot: bool = False
    clone: bool = False
    base_snapshot: str = ""
    clones: list[str] = []


class LvolDriver(msgspec.Struct, frozen=True):
    lvol: LvolDetails


class LvolBdev(msgspec.Struct, frozen=True):
    """An lvol as a bdev: its UUID is the bdev's name, ``aliases`` holds
    ``<lvstore>/<lvol>``."""

    name: str
    block_size: int
    num_blocks: int
    driver_specific: LvolDriver
    uuid: str = ""
    aliases: list[str] = []

    @property
    def alias(self) -> str:
        return self.aliases[0] if self.aliases else self.name

    @property
    def lvol_name(self) -> str:
        return self.alias.partition("/")[2]

    @property
    def lvs_name(self) -> str:
        return self.alias.partition("/")[0]

    @property
    def details(self) -> LvolDetails:
        return self.driver_specific.lvol


class BdevIostat(msgspec.Struct, frozen=True):
    name: str
    bytes_read: int = 0
    num_read_ops: int = 0
    bytes_written: int = 0
    num_write_ops: int = 0
    read_latency_ticks: int = 0
    write_latency_ticks: int = 0


class Iostat(msgspec.Struct, frozen=True):
    tick_rate: int
    ticks: int
    bdevs: list[BdevIostat] = []


class ListenAddress(msgspec.Struct, frozen=True):
    traddr: str = ""
    trsvcid: str = ""
    trtype: str = ""
    adrfam: str = ""


class SubsystemNamespace(msgspec.Struct, frozen=True):
    nsid: int
    bdev_name: str
    nguid: str = ""


class Subsystem(msgspec.Struct, frozen=True):
    nqn: str
    subtype: str = ""
    listen_addresses: list[ListenAddress] = []
    namespaces: list[SubsystemNamespace] = []


class SpdkTargetClient:
    """Calls to the target listening on ``socket_path``."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._client: Any = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spdk-rpc")

    # -- transport -------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._timed_call, method, params or {})

    def _timed_call(self, method: str, params: dict[str, Any]) -> Any:
        began = time.monotonic()
        try:
            return self._call_blocking(method, params)
        finally:
            took = time.monotonic() - began
            if took >= SLOW_CALL_S:
                log.warning("slow SPDK target call", extra=fields(method=method, seconds=round(took, 3)))

    def _call_blocking(self, method: str, params: dict[str, Any]) -> Any:
        from spdk.rpc.client import JSONRPCException

        try:
            client = self._connected()
            client.send(method, params)
            response = client.recv()
        except (JSONRPCException, OSError) as exc:
            self._drop()
            detail = getattr(exc, "message", None) or str(exc)
            raise TargetUnreachable(f"SPDK target at {self.socket_path}: {method}: {detail.strip()}") from None
        error = response.get("error")
        if error is not None:
            raise TargetRpcError(method, int(error.get("code", 0)), str(error.get("message", "")))
        return response.get("result")

    def _connected(self) -> Any:
        if self._client is None:
            from spdk.rpc.client import JSONRPCClient

            client = JSONRPCClient(self.socket_path, timeout=self.timeout, log_level=logging.ERROR)
            # The client adds a stderr handler to its logger on every
            # construction; ours goes through the daemon's JSON log instead.
            client.get_logger().handlers.clear()
            self._client = client
        return self._client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None and getattr(client, "sock", None) is not None:
            with contextlib.suppress(OSError):
                client.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._drop)
        self._worker.shutdown(wait=False)

    async def wait_ready(self, timeout: float, *, alive: Any = None) -> str:
        """Poll ``spdk_get_version`` until the target answers; its version.
        ``alive`` (a callable) ends the wait early when the process died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while True:
            try:
                version = await self.call("spdk_get_version")
                return str(version.get("version", "")) if isinstance(version, dict) else str(version)
            except TargetUnreachable as exc:
                last = str(exc)
            if alive is not None and not alive():
                raise TargetUnreachable(f"the SPDK target exited before answering on {self.socket_path}")
            if loop.time() >= deadline:
                raise TargetUnreachable(f"no answer within {timeout:g}s: {last}")
            await asyncio.sleep(0.1)

    # -- bdevs ----------------------------------------------------------------

    async def aio_create(self, name: str, filename: str, block_size: int) -> None:
        await self.call("bdev_aio_create", {"name": name, "filename": filename, "block_size": block_size})

    async def aio_delete(self, name: str) -> None:
        await self.call("bdev_aio_delete", {"name": name})

    async def wait_for_examine(self) -> None:
        await self.call("bdev_wait_for_examine")

    async def bdev(self, name: str) -> Bdev | None:
        try:
            found = await self.call("bdev_get_bdevs", {"name": name})
        except TargetRpcError as exc:
            if exc.not_found:
                return None
            raise
        return msgspec.convert(found[0], Bdev) if found else None

    async def iostat(self, name: str) -> Iostat:
        """I/O counters of bdev ``name`` since it was made, and the target's
        clock (ticks since it started, at ``tick_rate`` per second)."""
        return msgspec.convert(await self.call("bdev_get_iostat", {"name": name}), Iostat)

    # -- lvol stores and lvols ------------------------------------------------

    async def lvstores(self) -> list[Lvstore]:
        return msgspec.convert(await self.call("bdev_lvol_get_lvstores"), list[Lvstore])

    async def lvstore_create(self, bdev_name: str, lvs_name: str, cluster_size: int) -> str:
        params = {"bdev_name": bdev_name, "lvs_name": lvs_name, "cluster_sz": cluster_size}
        return str(await self.call("bdev_lvol_create_lvstore", params))

    async def lvstore_rename(self, old_name: str, new_name: str) -> None:
        await self.call("bdev_lvol_rename_lvstore", {"old_name": old_name, "new_name": new_name})

    async def lvols(self, lvs_name: str) -> list[Lvol]:
        return msgspec.convert(await self.call("bdev_lvol_get_lvols", {"lvs_name": lvs_name}), list[Lvol])

    async def lvol_create(self, lvs_name: str, name: str, size_mib: int) -> str:
        """A thin-provisioned lvol whose clusters are zeroed when it frees
        them (delete, shrink); its UUID.

        Why ``clear_method: write_zeroes``: SPDK v24.01's blobstore does not
        zero a cluster it allocates to a thin blob without a parent
        (``bs_allocate_and_copy_cluster``, lib/blob/blobstore.c:2744, skips
        the copy when the back device is the zeroes device), so a new lvol's
        first write into a cluster leaves the rest of it as the last owner
        left it. The default clear method, unmap, is a no-op on an AIO disk
        (bdev_aio supports neither UNMAP nor WRITE_ZEROES, and
        module/blob/bdev/blob_bdev.c:256 completes an unsupported unmap at
        once), so a deleted replica's bytes stayed on the disk for the next
        replica to read: another volume's data, and two replicas of one
        volume that differ where the host never wrote. With write_zeroes
        the bdev layer writes zero buffers over the lvol's allocated
        clusters as it frees them; the cost is a delete that writes as much
        as the lvol holds (bench/README.md has the figure). The method is
        kept in the blob's metadata and snapshots inherit it
        (blobstore.c:6450); clones do not (``bdev_lvol_clone`` has no
        clear_method in v24.01): README, data engine V2, says what that
        leaves."""
        params = {
            "lvs_name": lvs_name,
            "lvol_name": name,
            "size_in_mib": size_mib,
            "thin_provision": True,
            "clear_method": "write_zeroes",
        }
        return str(await self.call("bdev_lvol_create", params))

    async def lvol_resize(self, alias: str, size_mib: int) -> None:
        await self.call("bdev_lvol_resize", {"name": alias, "size_in_mib": size_mib})

    async def lvol_delete(self, alias: str) -> None:
        await self.call("bdev_lvol_delete", {"name": alias})

    async def lvol_snapshot(self, alias: str, snapshot_name: str) -> str:
        """A read-only snapshot of lvol ``alias`` named ``snapshot_name`` (in
        the same lvstore); the lvol becomes its clone. The snapshot's UUID."""
        return str(await self.call("bdev_lvol_snapshot", {"lvol_name": alias, "snapshot_name": snapshot_name}))

    async def lvol_clone(self, snapshot_alias: str, clone_name: str) -> str:
        """A thin clone of snapshot ``snapshot_alias`` named ``clone_name``; its UUID."""
        return str(await self.call("bdev_lvol_clone", {"snapshot_name": snapshot_alias, "clone_name": clone_name}))

    async def lvol_rename(self, alias: str, new_name: str) -> None:
        await self.call("bdev_lvol_rename", {"old_name": alias, "new_name": new_name})

    async def lvol_bdevs(self) -> list[LvolBdev]:
        """Every lvol the target serves, with its place in its chain."""
        found = await self.call("bdev_get_bdevs")
        return [
            msgspec.convert(b, LvolBdev)
            for b in found
            if isinstance(b.get("driver_specific"), dict) and "lvol" in b["driver_specific"]
        ]

    # -- NVMe-oF exports ---------------------------------------------------------

    async def ensure_tcp_transport(self) -> None:
        transports = await self.call("nvmf_get_transports")
        if any(str(t.get("trtype", "")).upper() == "TCP" for t in transports):
            return
        await self.call("nvmf_create_transport", {"trtype": "TCP"})

    async def subsystems(self) -> list[Subsystem]:
        return msgspec.convert(await self.call("nvmf_get_subsystems"), list[Subsystem])

    async def subsystem_create(self, nqn: str, *, serial: str, model: str) -> None:
        params = {"nqn": nqn, "serial_number": serial, "model_number": model, "allow_any_host": True}
        await self.call("nvmf_create_subsystem", params)

    async def subsystem_add_ns(self, nqn: str, bdev_name: str, nguid: str) -> None:
        await self.call("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": bdev_name, "nguid": nguid}})

    async def subsystem_remove_ns(self, nqn: str, nsid: int) -> None:
        await self.call("nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": nsid})

    async def subsystem_add_listener(self, nqn: str, address: str, port: int) -> None:
        listen = {"trtype": "TCP", "adrfam": "IPv6" if ":" in address else "IPv4", "traddr": address}
        listen["trsvcid"] = str(port)
        await self.call("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": listen})

    async def subsystem_delete(self, nqn: str) -> bool:
        """Remove the subsystem; False if there was none. (The target answers
        an unknown NQN with a bare "Invalid parameters", so look first; imd
        is the target's only client, so nothing comes in between.)"""
        if not any(s.nqn == nqn for s in await self.subsystems()):
            return False
        await self.call("nvmf_delete_subsystem", {"nqn": nqn})
        return True

    async def subsystem_controllers(self, nqn: str) -> list[dict[str, Any]]:
        return list(await self.call("nvmf_subsystem_get_controllers", {"nqn": nqn}))

    # -- the target's own log ------------------------------------------------------

    async def log_print_level(self) -> str:
        return str(await self.call("log_get_print_level"))

    async def set_log_print_level(self, level: str) -> None:
        await self.call("log_set_print_level", {"level": level})

    async def log_flags(self) -> dict[str, bool]:
        return {str(k): bool(v) for k, v in (await self.call("log_get_flags")).items()}

    async def set_log_flag(self, flag: str, enabled: bool) -> None:
        await self.call("log_set_flag" if enabled else "log_clear_flag", {"flag": flag})
