"""The shipped unit and example config are valid as shipped."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imd.config import load

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    unit = (SYSTEMD / "imd.service").read_text()
    # verify checks that ExecStart exists: point it at this environment's imd.
    imd = Path(sys.executable).with_name("imd")
    assert imd.exists()
    (tmp_path / "imd.service").write_text(unit.replace("/usr/local/bin/imd", str(imd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "imd.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_unit_keeps_children_across_restarts() -> None:
    unit = (SYSTEMD / "imd.service").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in unit if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "process"
    assert "PrivateDevices" not in settings
    # Stop timeout outlives the daemon's drain deadline plus children's grace.
    config = load(str(SYSTEMD / "imd.toml"), {})
    assert int(settings["TimeoutStopSec"]) > config.drain_timeout_s + config.stop_grace_s


def test_example_config_loads_with_leave_running() -> None:
    config = load(str(SYSTEMD / "imd.toml"), {})
    assert config.stop_children_on_exit is False
    assert config.state_dir == "/var/lib/imd" and config.socket == "/run/imd/imd.sock"


def test_example_config_describes_a_v2_node() -> None:
    config = load(str(SYSTEMD / "imd.toml"), {})
    v2 = config.v2
    assert v2.enabled and v2.spdk_dir and v2.target_path() == f"{v2.spdk_dir}/bin/nvmf_tgt"
    assert v2.target_core_mask != v2.engine_core_mask  # the two pollers on their own cores
    assert v2.replica_address == "0.0.0.0" and v2.engine_address == "0.0.0.0"
