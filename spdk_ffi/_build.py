"""cffi (API mode) build of ``spdk_ffi._core``, when SPDK can be found.

SPDK is looked up through ``SPDK_DIR`` (an install prefix with include/,
lib/ and lib/pkgconfig/) or, without it, through pkg-config's own search
path (``PACKAGES`` below, SPDK built with --with-shared).
setup.py builds the extension only when this finds SPDK, unless
``IMD_REQUIRE_SPDK=1``, which makes a missing SPDK a build error.

Run directly (``python spdk_ffi/_build.py``) to build the core in place.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The NVMe driver and environment, plus the bdev layer with its subsystems
# (spdk_event_bdev pulls accel, vmd, sock and iobuf) and the NVMe-oF target
# library for the embedded frontend. Not spdk_event_nvmf: that is nvmf_tgt's
# own subsystem, which would create a second target on init.
PACKAGES = ["spdk_nvme", "spdk_env_dpdk", "spdk_event_bdev", "spdk_nvmf"]
# The C core, one file per concern (see core/imdn_internal.h).
SOURCES = ["base.c", "ctrlr.c", "io.c", "copy.c", "mirror.c", "frontend.c", "bench.c", "poller.c"]
# spdk_bdev's pkg-config file drags in every bdev module SPDK built (and
# blobstore, lvol, ftl for them). Linked with --no-as-needed their
# constructors would register them, and they would examine every bdev we
# register (lvol and gpt read its first blocks): leave them out.
_UNWANTED = re.compile(r"^spdk_(bdev_.+|blob.*|lvol|ftl|accel_error|accel_ioat)$")


class SpdkNotFound(Exception):
    pass


def pkg_config(*args: str, packages: tuple[str, ...] = tuple(PACKAGES)) -> list[str]:
    env = dict(os.environ)
    spdk_dir = os.environ.get("SPDK_DIR")
    if spdk_dir:
        env["PKG_CONFIG_PATH"] = os.pathsep.join(
            p for p in (f"{spdk_dir}/lib/pkgconfig", env.get("PKG_CONFIG_PATH", "")) if p
        )
    try:
        out = subprocess.run(
            ["pkg-config", *args, *packages], env=env, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        where = f"SPDK_DIR={spdk_dir}" if spdk_dir else "pkg-config's search path (no SPDK_DIR set)"
        raise SpdkNotFound(f"SPDK ({', '.join(packages)}) not found in {where}: {exc}") from exc
    return [flag for flag in shlex.split(out) if not (flag.startswith("-l") and _UNWANTED.match(flag[2:]))]


def find_spdk() -> dict[str, list[str]]:
    cflags = pkg_config("--cflags")
    # SPDK's shared libraries leave ISA-L and system libraries to the
    # final link (spdk_syslibs lists them as private libs).
    libs = pkg_config("--libs") + pkg_config("--libs", "--static", packages=("spdk_syslibs",))
    lib_dirs = list(dict.fromkeys(flag[2:] for flag in libs if flag.startswith("-L")))
    # ISA-L comes as static archives whose symbols SPDK's shared libraries
    # expect the final program to provide: link them whole into the core.
    static = [lib for lib in ("isal", "isal_crypto") if f"-l{lib}" in libs]
    whole = ["-Wl,--whole-archive", *(f"-l:lib{lib}.a" for lib in static), "-Wl,--no-whole-archive"]
    return {
        "include_dirs": [flag[2:] for flag in cflags if flag.startswith("-I")],
        "library_dirs": lib_dirs,
        # SPDK registers its transports from constructors: link every
        # library even though nothing references it by symbol, and find
        # them at run time without LD_LIBRARY_PATH.
        # DT_RPATH (not RUNPATH) so that DPDK libraries, which carry no
        # search path of their own, find each other too.
        "extra_link_args": [
            "-Wl,--no-as-needed",
            "-Wl,--disable-new-dtags",
            *(f"-Wl,-rpath,{d}" for d in lib_dirs),
            *(f"-L{d}" for d in lib_dirs),
            # The -l flags go here, after --no-as-needed: setuptools puts
            # ``libraries`` before extra link arguments, where the linker's
            # as-needed default would drop libspdk_sock_posix and friends.
            *(f"-l{lib}" for lib in dict.fromkeys(f[2:] for f in libs if f.startswith("-l")) if lib not in static),
            *(whole if static else []),
        ],
    }


def cdef() -> str:
    header = (HERE / "core" / "imdn.h").read_text()
    body = header.split("/* CDEF-BEGIN */", 1)[1].split("/* CDEF-END */", 1)[0]
    # cffi's cdef wants "#define NAME value" with plain integers: fine as is.
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)


def make_builder(*, relative: bool = True) -> Any:
    from cffi import FFI  # type: ignore[import-untyped]

    spdk = find_spdk()

    def where(p: Path) -> str:
        return os.path.relpath(p) if relative else str(p)

    builder = FFI()
    builder.cdef(cdef())
    builder.set_source(
        "spdk_ffi._core",
        '#include "imdn.h"',
        # setuptools wants paths relative to setup.py (the working directory).
        sources=[where(HERE / "core" / name) for name in SOURCES],
        depends=[where(HERE / "core" / name) for name in ("imdn.h", "imdn_internal.h", "doorbell.h", "silence.h")],
        include_dirs=[where(HERE / "core"), *spdk["include_dirs"]],
        library_dirs=spdk["library_dirs"],
        libraries=["pthread"],
        extra_compile_args=[
            "-O2",
            "-std=gnu11",
            "-Wall",
            "-Werror=implicit-function-declaration",
            "-Wno-format-truncation",  # error messages may be cut short, by design
        ],
        extra_link_args=spdk["extra_link_args"],
    )
    return builder


if __name__ == "__main__":
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = make_builder(relative=False).compile(tmpdir=tmp, verbose=False)
        target = HERE / Path(built).name
        shutil.copy(built, target)
        print(f"built {target}")
else:
    try:
        ffibuilder = make_builder()
    except SpdkNotFound:
        ffibuilder = None
