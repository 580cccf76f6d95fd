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

from setuptools import setup

_spec = importlib.util.spec_from_file_location("_spdk_build", Path(__file__).parent / "spdk_ffi" / "_build.py")
assert _spec is not None and _spec.loader is not None
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

try:
    _build.find_spdk()
    extra = {"cffi_modules": ["spdk_ffi/_build.py:ffibuilder"]}
except _build.SpdkNotFound as exc:
    if os.environ.get("IMD_REQUIRE_SPDK") == "1":
        raise SystemExit(f"IMD_REQUIRE_SPDK=1: {exc}") from exc
    extra = {}

setup(**extra)
