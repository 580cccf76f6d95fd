"""``imd serve``'s data engine V2 flags: a V2 node starts in one line.

Each flag lands on its ``[v2]`` key and wins over the config file, keys the
flags leave alone keep the file's value, and a bad value is refused before
anything listens (exit 2, naming the key), as every other serve flag is.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import msgspec
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import disk_pb2 as dpb
from imd.cli.main import build_parser
from imd.cli.serve import config_from_args
from imd.config import ConfigError, V2Config
from tests.helpers import PY, health_serving, make_daemon

ONE_LINE = [
    "serve",
    "--v2",
    "--spdk-dir=/opt/spdk",
    "--replica-address=198.18.0.2",
    "--engine-address=198.18.0.3",
    "--target-core-mask=0x1",
    "--engine-core-mask=[1]",
    "--target-mem-mb=512",
    "--engine-mem-mb=256",
    "--hugepages",
    "--target-rpc-socket=/tmp/t.sock",
    "--target-arg=--disable-cpumask-locks",
    "--target-arg=--silence-noticelog",
    "--engine-idle-spin-us=100",
    "--replica-timeout-s=2.5",
]


def config(*argv: str) -> V2Config:
    return config_from_args(build_parser().parse_args(list(argv))).v2


def test_each_flag_sets_its_v2_key() -> None:
    v2 = config(*ONE_LINE)
    assert v2 == V2Config(
        enabled=True,
        spdk_dir="/opt/spdk",
        replica_address="198.18.0.2",
        engine_address="198.18.0.3",
        target_core_mask="0x1",
        engine_core_mask="[1]",
        target_mem_size_mb=512,
        engine_mem_size_mb=256,
        hugepages=True,
        target_rpc_socket="/tmp/t.sock",
        target_args=["--disable-cpumask-locks", "--silence-noticelog"],
        engine_idle_spin_us=100,
        replica_timeout_s=2.5,
    )
    assert config("serve") == V2Config()  # no flag, no change
    off = config("serve", "--no-v2", "--no-hugepages")
    assert (off.enabled, off.hugepages) == (False, False)


def test_flags_win_over_the_file_and_leave_its_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "imd.toml"
    path.write_text('[v2]\nenabled = false\nreplica_address = "10.0.0.1"\nrebuild_rate_mib_s = 64\n')
    v2 = config("serve", "--config", str(path), "--v2", "--replica-address", "198.18.0.9")
    assert (v2.enabled, v2.replica_address, v2.rebuild_rate_mib_s) == (True, "198.18.0.9", 64)
    assert config("serve", "--config", str(path)).replica_address == "10.0.0.1"


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--target-core-mask=zz", "v2.target_core_mask"),
        ("--target-core-mask=0x0", "v2.target_core_mask"),
        ("--engine-core-mask=[1,", "v2.engine_core_mask"),
        ("--replica-address=node-b", "v2.replica_address"),
        ("--engine-address=198.18.0.300", "v2.engine_address"),
        ("--target-mem-mb=16", "target_mem_size_mb"),
        ("--engine-mem-mb=0", "engine_mem_size_mb"),
        ("--engine-idle-spin-us=-1", "engine_idle_spin_us"),
        ("--replica-timeout-s=0", "replica_timeout_s"),
    ],
)
def test_a_bad_value_names_its_key(flag: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config("serve", flag)


def test_the_file_is_checked_as_the_flags_are(tmp_path: Path) -> None:
    path = tmp_path / "imd.toml"
    path.write_text('[v2]\nengine_core_mask = "two"\n')
    with pytest.raises(ConfigError, match=r"v2\.engine_core_mask"):
        config("serve", "--config", str(path))


def serve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "imd", *argv], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--target-core-mask", "zz"], "v2.target_core_mask: 'zz' is not a core mask"),
        (["--replica-address", "node-b"], "v2.replica_address: 'node-b' is not an IP address"),
        (["--target-mem-mb", "16"], "target_mem_size_mb"),
        (["--target-mem-mb", "lots"], "argument --target-mem-mb: invalid int value"),
        (["--v2", "--no-v2"], "not allowed with argument"),
    ],
)
def test_serve_refuses_a_bad_flag_before_listening(tmp_path: Path, argv: list[str], said: str) -> None:
    daemon = make_daemon(tmp_path / "d")
    result = serve("serve", "--config", str(daemon.config_path), *argv)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert not daemon.socket.exists()  # nothing listened


@pytest.mark.asyncio
async def test_a_one_line_v2_node_uses_its_flags(tmp_path: Path) -> None:
    """A daemon started by flags alone (no config file) serves V2 with them:
    its SPDK prefix has no target, so V2 calls say so, naming the binary the
    flag pointed at."""
    root = tmp_path / "node"
    missing = tmp_path / "no-spdk"
    daemon = make_daemon(root)  # for its free port and paths only: no --config
    argv = [
        *("serve", "--listen", f"127.0.0.1:{daemon.base_port}", "--socket", str(daemon.socket)),
        *("--state-dir", str(daemon.state_dir), "--logs-dir", str(daemon.logs_dir)),
        *("--port-range", msgspec.toml.decode(daemon.config_path.read_bytes())["port_range"], "--metrics-listen", ""),
        *("--v2", "--spdk-dir", str(missing), "--replica-address", "127.0.0.1", "--engine-address", "127.0.0.1"),
        *("--target-core-mask", "0x1", "--engine-core-mask", "0x2", "--target-arg=--disable-cpumask-locks"),
    ]
    err = daemon.stderr_path.open("ab")
    proc = subprocess.Popen([PY, "-m", "imd", *argv], stdout=err, stderr=err, env=dict(os.environ))
    err.close()
    try:
        async with asyncio.timeout(20):
            while not await health_serving(daemon.socket):
                assert proc.poll() is None, daemon.stderr()
                await asyncio.sleep(0.05)
        disk = tmp_path / "disk.img"
        disk.write_bytes(bytes(4096))
        request = dpb.DiskCreateRequest(disk_type=dpb.block, disk_name="d1", disk_path=str(disk))
        with pytest.raises(GRPCError) as caught:
            await daemon.disks().DiskCreate(request)
        assert caught.value.status == Status.FAILED_PRECONDITION
        assert str(missing / "bin" / "nvmf_tgt") in str(caught.value.message)
    finally:
        daemon.proc = proc
        await daemon.stop()
