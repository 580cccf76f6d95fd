"""An in-memory SPDK target below imd's seam (``SpdkTargetClient.call``).

It answers the JSON-RPC methods imd uses with SPDK v24.01's results and
error codes (-ENODEV for an unknown bdev, -EEXIST for a duplicate, a bare
"Invalid parameters" for an unknown NQN), and keeps what a real target
keeps on its devices (lvstores and lvols, by device path) apart from what
it keeps in memory (bdevs, loaded lvstores, subsystems), so a "restart"
loses the one and keeps the other. Every call is recorded, so tests can
check what imd asked for, and any method can be made to fail.

An lvstore runs out as a real one does (lib/blob, lib/lvol, v24.01): a
thick lvol takes its clusters when made or grown, a thin one only as it is
written (``write``), so neither a thin create nor a thin resize ever runs
out of clusters; every lvol takes one metadata page, and an lvstore has as
many as its device has clusters (one is the lvstore's own). Running out
is answered as SPDK answers a failure in a completion callback: "Invalid
params" (-32602) with the errno's text, ``No space left on device`` for
clusters and ``Cannot allocate memory`` for metadata pages.

The real target is exercised by tests/v2/test_v2_spdk.py where SPDK is
installed; this fake lets the orchestration above be tested everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imd.edges.spdk_target import INVALID_PARAMS, SpdkTargetClient, TargetRpcError, TargetUnreachable


@dataclass
class Lvol:
    name: str
    uuid: str
    size_mib: int
    thin: bool = True
    clusters: int = 0  # allocated: all of them for a thick lvol, the written ones for a thin one
    snapshot: bool = False
    parent: str = ""  # the lvol name of its parent snapshot (a clone's)
    content: str = "zeroes"  # a token for what it reads: equal tokens, equal bytes


@dataclass
class LvstoreOnDevice:
    uuid: str
    name: str
    cluster_size: int
    total_clusters: int  # data clusters
    md_pages: int  # one per lvol, and one for the lvstore itself
    lvols: dict[str, Lvol] = field(default_factory=dict)

    @property
    def free_clusters(self) -> int:
        return self.total_clusters - sum(lvol.clusters for lvol in self.lvols.values())

    def clusters_for(self, size_mib: int) -> int:
        return -(-size_mib * (1 << 20) // self.cluster_size)


class FakeSpdk:
    def __init__(self) -> None:
        self.devices: dict[str, LvstoreOnDevice] = {}  # path -> lvstore (survives restarts)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, TargetRpcError | TargetUnreachable] = {}
        self.delay: dict[str, float] = {}
        self.up = True
        self._restart()

    def _restart(self) -> None:
        self.transports: list[str] = []
        self.aio: dict[str, tuple[str, int]] = {}  # bdev name -> (path, block size)
        self.loaded: dict[str, str] = {}  # aio bdev name -> device path with a loaded lvstore
        self.subsystems: dict[str, dict[str, Any]] = {}
        self.ticks = 0
        self.io: dict[str, dict[str, int]] = {}  # bdev name -> iostat counters a test sets

    def restart(self) -> None:
        """A new target process: nothing in memory, devices as they were."""
        self._restart()

    def called(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    # -- dispatch ---------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append((method, params))
        await asyncio.sleep(self.delay.get(method, 0))
        if not self.up:
            raise TargetUnreachable(f"fake target is down: {method}")
        failure = self.fail.get(method)
        if failure is not None:
            raise failure
        handler = getattr(self, "rpc_" + method, None)
        if handler is None:
            raise TargetRpcError(method, -32601, "Method not found")
        return handler(method, **params)

    @staticmethod
    def _err(method: str, code: int, message: str = "") -> TargetRpcError:
        return TargetRpcError(method, code, message or os.strerror(-code) if code < 0 else message)

    @staticmethod
    def _callback_err(method: str, err: int) -> TargetRpcError:
        """A failure in an operation's completion callback, as SPDK's lvol
        RPCs report it: "Invalid params" with the errno's text."""
        return TargetRpcError(method, INVALID_PARAMS, os.strerror(err))

    # -- misc ---------------------------------------------------------------------------

    def rpc_spdk_get_version(self, method: str) -> dict[str, str]:
        return {"version": "SPDK v24.01 (fake)"}

    def rpc_nvmf_get_transports(self, method: str) -> list[dict[str, str]]:
        return [{"trtype": t} for t in self.transports]

    def rpc_nvmf_create_transport(self, method: str, trtype: str) -> bool:
        if trtype in self.transports:
            raise self._err(method, -errno.EEXIST)
        self.transports.append(trtype)
        return True

    # -- bdevs ----------------------------------------------------------------------------

    def rpc_bdev_aio_create(self, method: str, name: str, filename: str, block_size: int) -> str:
        if name in self.aio or any(p == filename for p, _ in self.aio.values()):
            raise self._err(method, -errno.EEXIST)
        if not os.path.exists(filename):
            raise self._err(method, -errno.ENOENT)
        self.aio[name] = (filename, block_size)
        if filename in self.devices:  # examine loads the lvstore on it
            self.loaded[name] = filename
        return name

    def rpc_bdev_get_iostat(self, method: str, name: str) -> dict[str, Any]:
        if name not in self.aio:
            raise self._err(method, -errno.ENODEV)
        self.ticks += 1_000_000  # one second of the target's clock per call
        io = self.io.setdefault(name, {"bytes_written": 0, "num_write_ops": 0, "write_latency_ticks": 0})
        return {"tick_rate": 1_000_000, "ticks": self.ticks, "bdevs": [{"name": name, **io}]}

    def rpc_bdev_aio_delete(self, method: str, name: str) -> bool:
        if name not in self.aio:
            raise self._err(method, -errno.ENODEV)
        del self.aio[name]
        self.loaded.pop(name, None)
        return True

    def rpc_bdev_wait_for_examine(self, method: str) -> bool:
        return True

    def _lvstore_by_name(self, name: str) -> tuple[str, LvstoreOnDevice] | None:
        for bdev, path in self.loaded.items():
            if self.devices[path].name == name:
                return bdev, self.devices[path]
        return None

    def _lvol_bdev(self, lvs: LvstoreOnDevice, bdev: str, lvol: Lvol) -> dict[str, Any]:
        """An lvol as bdev_get_bdevs shows it, with SPDK v24.01's
        ``driver_specific.lvol``: a clone names its parent snapshot, a
        snapshot its clones, by lvol name."""
        details: dict[str, Any] = {
            "lvol_store_uuid": lvs.uuid,
            "base_bdev": bdev,
            "thin_provision": True,
            "snapshot": lvol.snapshot,
            "clone": bool(lvol.parent),
        }
        if lvol.parent:
            details["base_snapshot"] = lvol.parent
        if lvol.snapshot:
            details["clones"] = [c.name for c in lvs.lvols.values() if c.parent == lvol.name]
        return {
            "name": lvol.uuid,
            "aliases": [f"{lvs.name}/{lvol.name}"],
            "uuid": lvol.uuid,
            "block_size": 4096,
            "num_blocks": lvol.size_mib * 256,
            "driver_specific": {"lvol": details},
        }

    def rpc_bdev_get_bdevs(self, method: str, name: str = "") -> list[dict[str, Any]]:
        if not name:
            every: list[dict[str, Any]] = []
            for bdev, (path, block) in self.aio.items():
                every.append({"name": bdev, "block_size": block, "num_blocks": os.path.getsize(path) // block})
                if bdev in self.loaded:
                    lvs = self.devices[self.loaded[bdev]]
                    every.extend(self._lvol_bdev(lvs, bdev, lvol) for lvol in lvs.lvols.values())
            return every
        if name in self.aio:
            path, block = self.aio[name]
            return [{"name": name, "block_size": block, "num_blocks": os.path.getsize(path) // block}]
        lvs_name, _, lvol_name = name.partition("/")
        found = self._lvstore_by_name(lvs_name)
        if found is not None and lvol_name in found[1].lvols:
            return [self._lvol_bdev(found[1], found[0], found[1].lvols[lvol_name])]
        raise self._err(method, -errno.ENODEV)

    # -- lvstores and lvols ----------------------------------------------------------------

    def rpc_bdev_lvol_get_lvstores(self, method: str) -> list[dict[str, Any]]:
        result = []
        for bdev, path in self.loaded.items():
            lvs = self.devices[path]
            result.append(
                {
                    "uuid": lvs.uuid,
                    "name": lvs.name,
                    "base_bdev": bdev,
                    "total_data_clusters": lvs.total_clusters,
                    "free_clusters": lvs.free_clusters,
                    "block_size": self.aio[bdev][1],
                    "cluster_size": lvs.cluster_size,
                }
            )
        return result

    def rpc_bdev_lvol_create_lvstore(self, method: str, bdev_name: str, lvs_name: str, cluster_sz: int) -> str:
        if bdev_name not in self.aio:
            raise self._err(method, -errno.ENODEV)
        if bdev_name in self.loaded or self._lvstore_by_name(lvs_name):
            raise self._err(method, -errno.EEXIST)
        path = self.aio[bdev_name][0]
        clusters = os.path.getsize(path) // cluster_sz
        # Metadata takes the first cluster; md pages: one per device cluster
        # (num_md_pages_per_cluster_ratio 100).
        self.devices[path] = LvstoreOnDevice(str(uuidlib.uuid4()), lvs_name, cluster_sz, clusters - 1, clusters)
        self.loaded[bdev_name] = path
        return self.devices[path].uuid

    def rpc_bdev_lvol_rename_lvstore(self, method: str, old_name: str, new_name: str) -> bool:
        found = self._lvstore_by_name(old_name)
        if found is None:
            raise self._err(method, -errno.ENOENT, f"Lvol store {old_name} not found")
        found[1].name = new_name
        return True

    def rpc_bdev_lvol_get_lvols(self, method: str, lvs_name: str) -> list[dict[str, Any]]:
        found = self._lvstore_by_name(lvs_name)
        if found is None:
            raise self._err(method, -errno.ENODEV)
        lvs = found[1]
        return [
            {
                "alias": f"{lvs.name}/{lvol.name}",
                "uuid": lvol.uuid,
                "name": lvol.name,
                "lvs": {"name": lvs.name, "uuid": lvs.uuid},
                "is_thin_provisioned": lvol.thin,
            }
            for lvol in lvs.lvols.values()
        ]

    def rpc_bdev_lvol_create(
        self,
        method: str,
        lvs_name: str,
        lvol_name: str,
        size_in_mib: int,
        thin_provision: bool = False,
        clear_method: str = "unmap",
    ) -> str:
        if clear_method not in ("none", "unmap", "write_zeroes"):
            raise self._err(method, -errno.EINVAL)  # vbdev_lvol_rpc.c: "Invalid clear_method parameter"
        found = self._lvstore_by_name(lvs_name)
        if found is None:
            raise self._err(method, -errno.ENODEV)
        lvs = found[1]
        if lvol_name in lvs.lvols:
            raise self._err(method, -errno.EEXIST)
        if 1 + len(lvs.lvols) >= lvs.md_pages:
            raise self._callback_err(method, errno.ENOMEM)  # bs_create_blob: no free md page
        clusters = 0 if thin_provision else lvs.clusters_for(size_in_mib)
        if clusters > lvs.free_clusters:
            raise self._callback_err(method, errno.ENOSPC)
        lvol = Lvol(lvol_name, str(uuidlib.uuid4()), size_in_mib, thin=thin_provision, clusters=clusters)
        lvs.lvols[lvol_name] = lvol
        return lvol.uuid

    def _lvol(self, method: str, alias: str) -> tuple[LvstoreOnDevice, Lvol]:
        lvs_name, _, lvol_name = alias.partition("/")
        found = self._lvstore_by_name(lvs_name)
        if found is None or lvol_name not in found[1].lvols:
            raise self._err(method, -errno.ENODEV)
        return found[1], found[1].lvols[lvol_name]

    def rpc_bdev_lvol_resize(self, method: str, name: str, size_in_mib: int) -> bool:
        lvs, lvol = self._lvol(method, name)
        if not lvol.thin:
            more = lvs.clusters_for(size_in_mib) - lvol.clusters
            if more > lvs.free_clusters:
                raise self._callback_err(method, errno.ENOSPC)  # blob_resize: not enough free clusters
            lvol.clusters += max(more, 0)
        lvol.size_mib = size_in_mib
        return True

    def rpc_bdev_lvol_delete(self, method: str, name: str) -> bool:
        lvs, lvol = self._lvol(method, name)
        if any(ns["bdev_name"] == name for s in self.subsystems.values() for ns in s["namespaces"]):
            raise self._err(method, -errno.EBUSY)
        clones = [c for c in lvs.lvols.values() if c.parent == lvol.name]
        if len(clones) > 1:
            raise self._err(method, -errno.EBUSY, "Cannot remove snapshot with more than one clone")
        for clone in clones:  # SPDK folds a snapshot into its one clone
            clone.parent = lvol.parent
            clone.clusters += lvol.clusters
        del lvs.lvols[lvol.name]
        return True

    def rpc_bdev_lvol_snapshot(self, method: str, lvol_name: str, snapshot_name: str) -> str:
        lvs, lvol = self._lvol(method, lvol_name)
        if lvol.snapshot:
            raise self._err(method, -errno.EINVAL)
        if snapshot_name in lvs.lvols:
            raise self._err(method, -errno.EEXIST)
        snap = Lvol(
            snapshot_name,
            str(uuidlib.uuid4()),
            lvol.size_mib,
            thin=lvol.thin,
            clusters=lvol.clusters,
            snapshot=True,
            parent=lvol.parent,
            content=lvol.content,
        )
        lvs.lvols[snapshot_name] = snap
        # The head keeps no cluster of its own: it is a thin clone of the
        # snapshot now, as SPDK makes it.
        lvol.parent, lvol.thin, lvol.clusters = snapshot_name, True, 0
        return snap.uuid

    def rpc_bdev_lvol_clone(self, method: str, snapshot_name: str, clone_name: str) -> str:
        lvs, snap = self._lvol(method, snapshot_name)
        if not snap.snapshot:
            raise self._err(method, -errno.EINVAL)
        if clone_name in lvs.lvols:
            raise self._err(method, -errno.EEXIST)
        clone = Lvol(clone_name, str(uuidlib.uuid4()), snap.size_mib, parent=snap.name, content=snap.content)
        lvs.lvols[clone_name] = clone
        return clone.uuid

    def rpc_bdev_lvol_rename(self, method: str, old_name: str, new_name: str) -> bool:
        lvs, lvol = self._lvol(method, old_name)
        if new_name in lvs.lvols:
            raise self._err(method, -errno.EEXIST)
        del lvs.lvols[lvol.name]
        for child in lvs.lvols.values():
            if child.parent == lvol.name:
                child.parent = new_name
        lvol.name = new_name
        lvs.lvols[new_name] = lvol
        return True

    def write(self, alias: str, mib: int, content: str | None = None) -> None:
        """A host wrote ``mib`` MiB that were not yet written into lvol
        ``alias``: a thin lvol allocates their clusters now (no more than its
        size, or than the lvstore has free); what it reads is now ``content``
        (a new token by default)."""
        lvs, lvol = self._lvol("write", alias)
        if lvol.thin:
            more = min(lvs.clusters_for(mib), lvs.free_clusters)
            lvol.clusters = min(lvol.clusters + more, lvs.clusters_for(lvol.size_mib))
        lvol.content = content if content is not None else str(uuidlib.uuid4())

    def allocated_bytes(self, path: str) -> dict[str, int]:
        """Each lvol's allocated bytes on the device at ``path``, by UUID (what
        imd.edges.blobstore_md reads from a real device)."""
        lvs = self.devices[path]
        return {lvol.uuid: lvol.clusters * lvs.cluster_size for lvol in lvs.lvols.values()}

    def lvol_at(self, traddr: str, trsvcid: str, nqn: str) -> Lvol | None:
        """The lvol a subsystem serves as namespace 1 at a listener."""
        subsystem = self.subsystems.get(nqn)
        if subsystem is None or not subsystem["namespaces"]:
            return None
        if not any(a["traddr"] == traddr and a["trsvcid"] == trsvcid for a in subsystem["listen_addresses"]):
            return None
        lvs_name, _, lvol_name = subsystem["namespaces"][0]["bdev_name"].partition("/")
        found = self._lvstore_by_name(lvs_name)
        return found[1].lvols.get(lvol_name) if found is not None else None

    # -- NVMe-oF ------------------------------------------------------------------------------

    def rpc_nvmf_get_subsystems(self, method: str) -> list[dict[str, Any]]:
        return [{"nqn": nqn, **s} for nqn, s in self.subsystems.items()]

    def _subsystem(self, method: str, nqn: str) -> dict[str, Any]:
        if nqn not in self.subsystems:
            raise self._err(method, -32602, "Invalid parameters")
        return self.subsystems[nqn]

    def rpc_nvmf_create_subsystem(self, method: str, nqn: str, **options: Any) -> bool:
        if nqn in self.subsystems:
            raise self._err(method, -32602, "Invalid parameters")
        self.subsystems[nqn] = {"namespaces": [], "listen_addresses": []}
        return True

    def rpc_nvmf_subsystem_add_ns(self, method: str, nqn: str, namespace: dict[str, Any]) -> int:
        subsystem = self._subsystem(method, nqn)
        self._lvol(method, namespace["bdev_name"])
        subsystem["namespaces"].append({"nsid": len(subsystem["namespaces"]) + 1, **namespace})
        return len(subsystem["namespaces"])

    def rpc_nvmf_subsystem_remove_ns(self, method: str, nqn: str, nsid: int) -> bool:
        subsystem = self._subsystem(method, nqn)
        before = len(subsystem["namespaces"])
        subsystem["namespaces"] = [ns for ns in subsystem["namespaces"] if ns["nsid"] != nsid]
        if len(subsystem["namespaces"]) == before:
            raise self._err(method, -32602, "Invalid parameters")
        return True

    def rpc_nvmf_subsystem_add_listener(self, method: str, nqn: str, listen_address: dict[str, str]) -> bool:
        subsystem = self._subsystem(method, nqn)
        taken = {(a["traddr"], a["trsvcid"]) for s in self.subsystems.values() for a in s["listen_addresses"]}
        if (listen_address["traddr"], listen_address["trsvcid"]) in taken:
            raise self._err(method, -errno.EADDRINUSE)
        subsystem["listen_addresses"].append(listen_address)
        return True

    def rpc_nvmf_delete_subsystem(self, method: str, nqn: str) -> bool:
        self._subsystem(method, nqn)
        del self.subsystems[nqn]
        return True


async def bury_the_dead(rounds: int = 100) -> None:
    """End the tasks a test left (a killed daemon's among them) before its
    loop closes.

    The loop's shutdown cancels the tasks it finds once. A dead daemon's
    task, cancelled, starts its shielded clean-up as new tasks, which wait
    on the dead client for ever (a dead process never answers) and would
    keep the loop from closing. Here every task left is cancelled, round
    after round, until none is (a real dead daemon has no tasks at all)."""
    me = asyncio.current_task()
    for _ in range(rounds):
        left = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
        if not left:
            return
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=0.1)


class FakeTargetClient(SpdkTargetClient):
    """imd's own client with the socket replaced by ``FakeSpdk``."""

    def __init__(self, spdk: FakeSpdk) -> None:
        super().__init__("/nonexistent/fake-spdk.sock")
        self.spdk = spdk
        self.dead = False
        self.crashed = asyncio.Event()
        self.on_crash: list[Callable[[], None]] = []
        self._crash_at: tuple[str, int] | None = None

    def crash_at(self, method: str, after: int = 0) -> None:
        """The daemon dies (kill -9) when it sends its ``after + 1``-th
        ``method`` from now: that call and every later one never reach the
        target and never answer (the dead daemon's tasks stay parked), while
        the target keeps what earlier calls did, as a real one outlives imd."""
        self._crash_at = (method, len(self.spdk.called(method)) + after)

    def crash(self) -> None:
        """The daemon dies now."""
        self.dead = True
        self.crashed.set()
        for callback in self.on_crash:
            callback()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        crash = self._crash_at
        if crash is not None and method == crash[0] and len(self.spdk.called(method)) >= crash[1]:
            self.crash()
        if self.dead:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # the test's loop is closing: let the dead daemon's tasks end
            await asyncio.Future()  # a dead process never hears back
        return await self.spdk.call(method, params or {})

    async def close(self) -> None:
        return None
