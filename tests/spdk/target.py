"""A real SPDK nvmf_tgt on loopback for the spdk_ffi tests, configured over
its JSON-RPC socket. Found through SPDK_DIR or pkg-config; tests that need
it are skipped, with the reason, where SPDK is absent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import spdk_ffi

HOST_NQN = "nqn.2014-08.org.nvmexpress:uuid:imd-tests"
NULL_NQN = "nqn.2016-06.io.imd:null"
MALLOC_NQN = "nqn.2016-06.io.imd:malloc"


def spdk_prefix() -> Path | None:
    if os.environ.get("SPDK_DIR"):
        return Path(os.environ["SPDK_DIR"])
    try:
        out = subprocess.run(
            ["pkg-config", "--variable=prefix", "spdk_nvme"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(out) if out else None


def skip_reason() -> str | None:
    prefix = spdk_prefix()
    if prefix is None:
        return "SPDK not found (set SPDK_DIR to an SPDK install prefix)"
    if not (prefix / "bin" / "nvmf_tgt").exists():
        return f"no nvmf_tgt under {prefix}/bin"
    if not spdk_ffi.available():
        return "spdk_ffi was installed without its native core (reinstall with SPDK_DIR set)"
    return None


class JsonRpc:
    def __init__(self, path: str) -> None:
        self.path = path
        self._id = 0

    def call(self, method: str, **params: Any) -> Any:
        self._id += 1
        request = {"jsonrpc": "2.0", "method": method, "id": self._id}
        if params:
            request["params"] = params
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.path)
            sock.sendall(json.dumps(request).encode())
            data = b""
            decoder = json.JSONDecoder()
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("nvmf_tgt closed the RPC connection")
                data += chunk
                try:
                    reply, _ = decoder.raw_decode(data.decode())
                    break
                except ValueError:
                    continue
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


def spdk_env(prefix: Path) -> dict[str, str]:
    """SPDK's own binaries find its shared libraries through this."""
    return {**os.environ, "LD_LIBRARY_PATH": f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


# (subsystem NQN, bdev kind, bdev name, blocks of 4 KiB, listener ports). Kinds:
# "null" and "malloc" (SPDK's bdevs of those names), and "lvol": a thin lvol
# named ``<name>`` in its own lvstore ``<name>-lvs`` on a malloc bdev twice its
# size (the bdev is ``<name>-lvs/<name>``; bdev_lvol_resize grows it).
Layout = list[tuple[str, str, str, int, list[int]]]

TEST_LAYOUT: Layout = [
    (NULL_NQN, "null", "Null0", 262144, [4420]),
    (MALLOC_NQN, "malloc", "Malloc0", 16384, [4421, 4422]),  # two paths for multipath
]


class Target:
    """nvmf_tgt on core 0, without hugepages, serving ``layout`` on 127.0.0.1.
    The default: a null namespace (4420) and a malloc namespace reachable
    through two listeners (4421, 4422). Without SPDK's per-core lock files
    (--disable-cpumask-locks): two test targets, or a test target and a
    daemon's, may share core 0 on a small machine."""

    def __init__(
        self, workdir: Path, layout: Layout = TEST_LAYOUT, mem_size_mb: int = 512, netns: str | None = None
    ) -> None:
        prefix = spdk_prefix()
        assert prefix is not None
        self.rpc_path = str(workdir / "spdk.sock")
        self.log = workdir / "nvmf_tgt.log"
        self.proc = subprocess.Popen(
            [
                *(("ip", "netns", "exec", netns) if netns else ()),
                str(prefix / "bin" / "nvmf_tgt"),
                *("-m", "0x1", "--no-huge", "-s", str(mem_size_mb), "-r", self.rpc_path),
                "--disable-cpumask-locks",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=spdk_env(prefix),
        )
        self.rpc = JsonRpc(self.rpc_path)
        try:
            self._configure(layout)
        except BaseException:
            self.close()  # never leave a target holding core 0 behind
            raise

    def _configure(self, layout: Layout) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.rpc.call("spdk_get_version")
                break
            except (OSError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"nvmf_tgt did not start:\n{self.log.read_text()}") from None
                time.sleep(0.1)
        self.rpc.call("nvmf_create_transport", trtype="TCP")
        for nqn, kind, bdev, blocks, ports in layout:
            if kind == "lvol":
                base, lvs = f"{bdev}-base", f"{bdev}-lvs"
                self.rpc.call("bdev_malloc_create", name=base, num_blocks=2 * blocks + 1024, block_size=4096)
                self.rpc.call("bdev_lvol_create_lvstore", bdev_name=base, lvs_name=lvs, cluster_sz=1 << 20)
                self.rpc.call(
                    "bdev_lvol_create",
                    lvol_name=bdev,
                    size_in_mib=blocks * 4096 >> 20,
                    lvs_name=lvs,
                    thin_provision=True,
                )
                ns_bdev = f"{lvs}/{bdev}"
            else:
                self.rpc.call(f"bdev_{kind}_create", name=bdev, num_blocks=blocks, block_size=4096)
                ns_bdev = bdev
            self.rpc.call("nvmf_create_subsystem", nqn=nqn, allow_any_host=True, serial_number="IMD0001")
            self.rpc.call("nvmf_subsystem_add_ns", nqn=nqn, namespace={"bdev_name": ns_bdev})
            for port in ports:
                self.add_listener(nqn, port)

    def resize_lvol(self, name: str, blocks: int) -> None:
        """Grow lvol ``name`` (of an "lvol" layout entry) to ``blocks`` of 4 KiB."""
        self.rpc.call("bdev_lvol_resize", name=f"{name}-lvs/{name}", size_in_mib=blocks * 4096 >> 20)

    def listener(self, port: int, address: str = "127.0.0.1") -> dict[str, str]:
        return {"trtype": "TCP", "adrfam": "IPv4", "traddr": address, "trsvcid": str(port)}

    def add_listener(self, nqn: str, port: int, address: str = "127.0.0.1") -> None:
        self.rpc.call("nvmf_subsystem_add_listener", nqn=nqn, listen_address=self.listener(port, address))

    def remove_listener(self, nqn: str, port: int) -> None:
        self.rpc.call("nvmf_subsystem_remove_listener", nqn=nqn, listen_address=self.listener(port))

    def host_controllers(self, nqn: str) -> list[dict[str, Any]]:
        return list(self.rpc.call("nvmf_subsystem_get_controllers", nqn=nqn))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def path(nqn: str, port: int) -> str:
    return f"TCP/IPv4/127.0.0.1/{port}/{nqn}"
