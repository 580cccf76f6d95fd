"""The core's doorbell (spdk_ffi/core/doorbell.h) never loses a wake-up.

The doorbell lets each side of the core skip its eventfd write while the
other side is awake. Done wrong, that skip hangs: a first attempt at it hung
once in a few benchmark runs. The bug class is a lost wake-up, and it hides
in a window of a few instructions, so these tests run the real header (it
needs no SPDK) in the schedule that hits that window on every hand-off: a
feeder publishes an item the instant the sleeper has taken the previous one,
which is the instant the sleeper finds its ring empty and arms. Nothing else
comes until that item is taken, so a lost wake-up cannot be rescued by later
traffic: the sleeper stays asleep until its poll() times out, and the
harness counts that.

The timeout is only a detector: a correct doorbell never lets poll() reach
it, however slow the machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CORE = Path(__file__).resolve().parent.parent / "spdk_ffi" / "core"

HARNESS = r"""
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include "doorbell.h"

struct run {
    struct doorbell bell;    /* the sleeper's */
    _Atomic uint64_t posted; /* the "ring": items the feeder published */
    _Atomic uint64_t seen;   /* items the sleeper has taken */
    uint64_t rounds;
    int timeout_ms;
    uint64_t lost;           /* sleeps that only the timeout ended, with an item waiting */
    uint64_t sleeps;         /* sleeps that a write ended */
};

/* The sleeper, exactly as the poller and the asyncio loop wait: take what
 * is there; else arm, look once more, sleep on the eventfd, disarm. */
static void *sleeper(void *arg)
{
    struct run *run = arg;
    uint64_t seen = 0;
    while (seen < run->rounds) {
        if (atomic_load_explicit(&run->posted, memory_order_acquire) > seen) {
            atomic_store_explicit(&run->seen, ++seen, memory_order_release);
            continue;
        }
        doorbell_arm(&run->bell);
        if (atomic_load_explicit(&run->posted, memory_order_acquire) > seen) {
            doorbell_disarm(&run->bell);
            continue;
        }
        struct pollfd pfd = {.fd = run->bell.efd, .events = POLLIN};
        int woken = poll(&pfd, 1, run->timeout_ms);
        doorbell_disarm(&run->bell);
        if (woken > 0) {
            doorbell_clear(&run->bell);
            run->sleeps++;
        } else if (atomic_load_explicit(&run->posted, memory_order_acquire) > seen) {
            run->lost++; /* an item was waiting and nobody woke us */
        }
    }
    return NULL;
}

/* The feeder publishes one item, rings, and spins until the sleeper has
 * taken it, then publishes the next at once: every item lands in the
 * window where the sleeper has just found its ring empty and arms. A lost
 * wake-up cannot be rescued by a later item: there is none until this one
 * is taken. */
int feed(uint64_t rounds, int timeout_ms, uint64_t *lost, uint64_t *sleeps, uint64_t *rings)
{
    static struct run run;
    memset(&run, 0, sizeof(run));
    run.rounds = rounds;
    run.timeout_ms = timeout_ms;
    run.bell.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (run.bell.efd < 0) {
        return -errno;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, sleeper, &run) != 0) {
        return -EAGAIN;
    }
    for (uint64_t i = 1; i <= rounds; i++) {
        atomic_store_explicit(&run.posted, i, memory_order_release);
        doorbell_ring(&run.bell);
        while (atomic_load_explicit(&run.seen, memory_order_acquire) < i) {
            __builtin_ia32_pause();
        }
    }
    pthread_join(t, NULL);
    *lost = run.lost;
    *sleeps = run.sleeps;
    *rings = run.bell.rings;
    close(run.bell.efd);
    return 0;
}
"""

CDEF = "int feed(uint64_t rounds, int timeout_ms, uint64_t *lost, uint64_t *sleeps, uint64_t *rings);"


def build_harness(workdir: Path, header_dir: Path, name: str) -> ModuleType:
    cffi = pytest.importorskip("cffi", reason="cffi is not installed")
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(CDEF)
    ffibuilder.set_source(
        name,
        HARNESS,
        include_dirs=[str(header_dir)],
        extra_compile_args=["-O2", "-pthread", "-std=gnu11"],
        extra_link_args=["-pthread"],
    )
    built = ffibuilder.compile(tmpdir=str(workdir), verbose=False)
    spec = importlib.util.spec_from_file_location(name, built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_feed(module: Any, rounds: int, timeout_ms: int) -> dict[str, int]:
    ffi, lib = module.ffi, module.lib
    lost, sleeps, rings = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
    rc = lib.feed(rounds, timeout_ms, lost, sleeps, rings)
    assert rc == 0, f"harness set-up failed: {rc}"
    return {"lost": lost[0], "sleeps": sleeps[0], "rings": rings[0]}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return build_harness(tmp_path_factory.mktemp("doorbell"), CORE, "_doorbell_harness")


def test_the_doorbell_never_loses_a_wakeup(harness: ModuleType) -> None:
    rounds = 1_000_000  # about a second here
    result = run_feed(harness, rounds, timeout_ms=2000)
    assert result["lost"] == 0, f"{result['lost']} lost wake-ups in {rounds} hand-offs"
    # The sleeper did sleep and was woken by writes: the handshake ran, not
    # only the sleeper's second look.
    assert result["sleeps"] > 0 and result["rings"] >= result["sleeps"]


def test_the_harness_catches_a_doorbell_without_its_fences(tmp_path: Path) -> None:
    """The detector can fail: the same header with its two fences taken out
    (each side's store then its load, with nothing to keep them in order,
    the textbook way to get this wrong) loses wake-ups here, a few in a
    million hand-offs. Runs until the first loss."""
    header = (CORE / "doorbell.h").read_text()
    fence = "atomic_thread_fence(memory_order_seq_cst);"
    assert header.count(fence) == 2, "doorbell.h changed: update this test"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "doorbell.h").write_text(header.replace(fence, ";"))
    module = build_harness(tmp_path, broken, "_doorbell_harness_unfenced")
    losses = [run_feed(module, 500_000, timeout_ms=5)["lost"] for _ in range(1)]
    # Until the first loss; the cap only bounds a hang. The race needs both
    # threads on their cores at once, and a run of 12 without a loss was
    # seen once (an idle machine, CI): losses are rare, not impossible.
    while losses[-1] == 0 and len(losses) < 40:
        losses.append(run_feed(module, 500_000, timeout_ms=5)["lost"])
    if losses[-1] == 0:
        # Losses need the hardware to reorder a store and a load while both
        # threads run at once: some runs of this machine never do in 20M
        # hand-offs. Then the detector's failing side is unshown, not shown
        # to pass; test_the_doorbell_never_loses_a_wakeup still ran.
        pytest.skip(f"no lost wake-up in {len(losses)} x 500k unfenced hand-offs: no reordering seen in this run")
    assert losses[-1] > 0
