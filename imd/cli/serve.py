"""``imd serve``: config from file and flags, then the daemon on uvloop."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import sys

import uvloop

from imd import eventlog
from imd.config import Config, ConfigError, load
from imd.daemon import serve


def config_from_args(a: argparse.Namespace) -> Config:
    """The config file (if any) with the flags over it; ConfigError if
    either is malformed."""
    overrides: dict[str, object] = {
        "listen": a.listen,
        "socket": a.serve_socket,
        "state_dir": a.state_dir,
        "logs_dir": a.logs_dir,
        "port_range": a.port_range,
        "log_level": a.log_level,
        "stop_children_on_exit": a.stop_children,
        "metrics_listen": a.metrics_listen,
    }
    if a.serve_tls_dir:
        overrides["tls"] = {"dir": a.serve_tls_dir}
    v2 = {
        "enabled": a.v2_enabled,
        "spdk_dir": a.spdk_dir,
        "replica_address": a.replica_address,
        "engine_address": a.engine_address,
        "target_core_mask": a.target_core_mask,
        "engine_core_mask": a.engine_core_mask,
        "target_mem_size_mb": a.target_mem_mb,
        "engine_mem_size_mb": a.engine_mem_mb,
        "hugepages": a.v2_hugepages,
        "target_rpc_socket": a.target_rpc_socket,
        "target_args": a.target_args,
        "engine_idle_spin_us": a.engine_idle_spin_us,
        "replica_timeout_s": a.replica_timeout_s,
    }
    overrides["v2"] = {key: value for key, value in v2.items() if value is not None} or None
    return load(a.config, overrides)


def run_serve(a: argparse.Namespace) -> int:
    try:
        config = config_from_args(a)
    except ConfigError as exc:
        sys.stderr.write(f"imd: config error: {exc}\n")
        return 2
    # A watchdog abort (SIGABRT) or a fatal signal leaves a Python traceback.
    faulthandler.enable()
    eventlog.configure(config.log_level)
    # Garbage collection, tuned for a daemon holding a thousand children.
    # With CPython's defaults (a young collection every 700 allocations)
    # a bench/compare run of 1000 creates and deletes spent 80 ms in the
    # collector, 29 ms of it in one full collection that stalled the loop;
    # with these, 22 ms and no full collection. Cycles are still collected:
    # request objects mostly die by reference counting, so the collector
    # only needs to run for the rare cycle. freeze() moves everything built
    # at start (modules, config) out of the collector's sight for good.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    try:
        uvloop.run(serve(config))
    except ConfigError as exc:
        sys.stderr.write(f"imd: config error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"imd: cannot start: {exc}\n")
        return 1
    return 0
