"""The build hook: SPDK is optional unless IMD_REQUIRE_SPDK=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def run_setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "--name"],
        cwd=ROOT,
        env={**os.environ, "PKG_CONFIG_PATH": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_spdk_is_fine_by_default(tmp_path: Path) -> None:
    result = run_setup({"SPDK_DIR": str(tmp_path / "no-spdk")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("imd")


def test_missing_spdk_is_a_build_error_when_required(tmp_path: Path) -> None:
    result = run_setup({"SPDK_DIR": str(tmp_path / "no-spdk"), "IMD_REQUIRE_SPDK": "1"})
    assert result.returncode != 0
    assert "IMD_REQUIRE_SPDK=1" in result.stderr and "no-spdk" in result.stderr
