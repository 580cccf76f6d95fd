"""Build hook for spdk_ffi's native core; everything else is in pyproject.toml.

The cffi extension ``spdk_ffi._core`` is built only when SPDK is found
(``SPDK_DIR`` or pkg-config, see spdk_ffi/_build.py). Without SPDK the
package installs without it and ``spdk_ffi.available()`` is False, unless
``IMD_REQUIRE_SPDK=1`` (release builds), which makes that a build error.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> Any:
    """A build helper, by path: pip's isolated build cannot import the package."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load("_spdk_build", HERE / "spdk_ffi" / "_build.py")

# The git commit and build date that VersionGet reports (imd.buildinfo).
_load("_imd_buildstamp", HERE / "imd" / "_buildstamp.py").stamp(HERE / "imd")

try:
    _build.find_spdk()
    extra = {"cffi_modules": ["spdk_ffi/_build.py:ffibuilder"]}
except _build.SpdkNotFound as exc:
    if os.environ.get("IMD_REQUIRE_SPDK") == "1":
        raise SystemExit(f"IMD_REQUIRE_SPDK=1: {exc}") from exc
    extra = {}

setup(**extra)
