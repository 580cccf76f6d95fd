"""Where SPDK is, for the V2 tests that need a real target, and a daemon
configured to supervise one. Skipped with a one-line reason where SPDK is
not installed (SPDK_DIR or pkg-config), as the spdk_ffi tests are."""

from __future__ import annotations

import os
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Any

from tests.spdk.target import JsonRpc, spdk_env, spdk_prefix


def target_skip_reason() -> str | None:
    prefix = spdk_prefix()
    if prefix is None:
        return "SPDK not found (set SPDK_DIR to an SPDK install prefix)"
    if not (prefix / "bin" / "nvmf_tgt").exists():
        return f"no nvmf_tgt under {prefix}/bin"
    return None


def engine_skip_reason() -> str | None:
    import spdk_ffi

    reason = target_skip_reason()
    if reason is None and not spdk_ffi.available():
        return "spdk_ffi was installed without its native core (reinstall with SPDK_DIR set)"
    return reason


def v2_config(**overrides: Any) -> dict[str, Any]:
    """The ``[v2]`` table of a test daemon: the real target on core 0, no
    hugepages, a short RPC socket path (Unix socket paths are limited to
    108 bytes, pytest's temporary directories are long), and no CPU core
    lock, so that test targets running side by side do not refuse to start."""
    prefix = spdk_prefix()
    assert prefix is not None
    config: dict[str, Any] = {
        "enabled": True,
        "spdk_dir": str(prefix),
        "target_rpc_socket": f"/tmp/imd-tgt-{uuidlib.uuid4().hex[:8]}.sock",
        "target_args": ["--disable-cpumask-locks"],
        "target_mem_size_mb": 512,
        "engine_mem_size_mb": 512,
    }
    config.update(overrides)
    return config


def rpc(config: dict[str, Any]) -> JsonRpc:
    """A JSON-RPC client of our own onto the daemon's target, to look at it
    from the outside."""
    return JsonRpc(config["target_rpc_socket"])


def sparse_file(path: Path, size: int = 256 << 20) -> str:
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def perf(address: str, port: int, nqn: str, *, workload: str = "randwrite", seconds: int = 1) -> str:
    """spdk_nvme_perf against an export: a real NVMe-oF host. Its output."""
    prefix = spdk_prefix()
    assert prefix is not None
    trid = f"trtype:TCP adrfam:IPv4 traddr:{address} trsvcid:{port} subnqn:{nqn}"
    result = subprocess.run(
        [
            str(prefix / "bin" / "spdk_nvme_perf"),
            *("-c", "0x2", "--no-huge", "-s", "256", "-q", "4", "-o", "4096", "-w", workload, "-t", str(seconds)),
            *("-r", trid),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=spdk_env(prefix),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def target_pid(config: dict[str, Any]) -> int | None:
    """The pid of the nvmf_tgt serving this config's RPC socket."""
    needle = config["target_rpc_socket"].encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if needle in cmdline.read():
                    return int(entry)
        except OSError:
            continue
    return None
