"""The core's silence rules (spdk_ffi/core/silence.h), on any machine.

The header holds the decisions the C core makes about a peer that stops
answering: when a path or a mirror leg counts as silent, and which legs the
mirror's watchdog fails. It needs no SPDK, so this builds the real header
with cffi and checks every rule; tests/spdk/test_silence.py and
tests/v2/test_v2_silence_spdk.py show the whole thing against a stopped
nvmf_tgt where SPDK is installed.
"""

from __future__ import annotations

import errno
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CORE = Path(__file__).resolve().parent.parent / "spdk_ffi" / "core"
HZ = 1_000_000  # ticks per second in these tests: one tick is a microsecond
BOUND = 5 * HZ  # the replica timeout

CDEF = """
struct quiet_watch { uint64_t answered_seen; uint64_t quiet_since; };
void quiet_watch_start(struct quiet_watch *w, uint64_t answered, uint64_t now);
uint64_t quiet_for(struct quiet_watch *w, uint32_t outstanding, uint64_t answered, uint64_t now);
struct leg_facts {
    bool present; bool rw; uint64_t quiet_ticks; uint32_t num_paths; uint32_t live_paths; bool lost;
    uint64_t path_silent_us;
};
int leg_verdict(const struct leg_facts *f, uint64_t bound_ticks, uint64_t ticks_hz, uint64_t *silent_us);
int silence_verdicts(const struct leg_facts *legs, int n, uint64_t bound_ticks, uint64_t ticks_hz,
                     int *verdicts, uint64_t *silent_us);
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    cffi = pytest.importorskip("cffi", reason="cffi is not installed")
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(CDEF)
    ffibuilder.set_source("_silence_rules", '#include "silence.h"', include_dirs=[str(CORE)])
    built = ffibuilder.compile(tmpdir=str(tmp_path_factory.mktemp("silence")), verbose=False)
    spec = importlib.util.spec_from_file_location("_silence_rules", built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_silence_rules"] = module
    spec.loader.exec_module(module)
    return module


def leg(**facts: Any) -> dict[str, Any]:
    """A working RW leg with one path, unless told otherwise."""
    return {"present": True, "rw": True, "quiet_ticks": 0, "num_paths": 1, "live_paths": 1, "lost": False,
            "path_silent_us": 0, **facts}  # fmt: skip


def decide(rules: ModuleType, *legs: dict[str, Any]) -> list[tuple[int, int]]:
    """(verdict, silent_us) per leg, as the watchdog decides them."""
    ffi, lib = rules.ffi, rules.lib
    facts = ffi.new("struct leg_facts[]", len(legs))
    for slot, values in zip(facts, legs, strict=True):
        for name, value in values.items():
            setattr(slot, name, value)
    verdicts, silent = ffi.new("int[]", len(legs)), ffi.new("uint64_t[]", len(legs))
    failing = lib.silence_verdicts(facts, len(legs), BOUND, HZ, verdicts, silent)
    out = [(verdicts[i], silent[i]) for i in range(len(legs))]
    assert failing == sum(v != 0 for v, _ in out)
    return out


# -- quiet_for: "answered nothing while commands were outstanding" --------------------------


def test_quiet_time_grows_only_while_commands_wait_unanswered(rules: ModuleType) -> None:
    ffi, lib = rules.ffi, rules.lib
    w = ffi.new("struct quiet_watch *")
    lib.quiet_watch_start(w, 0, 1000)
    assert lib.quiet_for(w, 4, 0, 1000 + 3 * HZ) == 3 * HZ  # 4 outstanding, none answered for 3 s
    assert lib.quiet_for(w, 4, 1, 1000 + 4 * HZ) == 0  # an answer restarts the clock
    assert lib.quiet_for(w, 4, 1, 1000 + 6 * HZ) == 2 * HZ
    assert lib.quiet_for(w, 0, 1, 1000 + 60 * HZ) == 0  # nothing outstanding: idle is not silent
    assert lib.quiet_for(w, 1, 1, 1000 + 61 * HZ) == HZ  # measured from the last idle look, not from before
    assert lib.quiet_for(w, 1, 1, 1000 + 50 * HZ) == 0  # a clock that goes back restarts it, never wraps


def test_a_new_watch_counts_from_its_start_not_from_tick_zero(rules: ModuleType) -> None:
    """The bug the first version had: a leg made with a zeroed watch, busy at
    its first look, counted as silent since the machine booted."""
    ffi, lib = rules.ffi, rules.lib
    w = ffi.new("struct quiet_watch *")
    lib.quiet_watch_start(w, 0, 10_000 * HZ)
    assert lib.quiet_for(w, 8, 0, 10_000 * HZ + 10_000) == 10_000


# -- which legs the watchdog fails ---------------------------------------------------------


def test_a_silent_leg_fails_while_another_works(rules: ModuleType) -> None:
    assert decide(rules, leg(), leg(quiet_ticks=BOUND)) == [(0, 0), (-errno.ETIMEDOUT, 5_000_000)]
    assert decide(rules, leg(), leg(quiet_ticks=BOUND - 1)) == [(0, 0), (0, 0)]  # not yet


def test_nothing_fails_without_another_working_rw_leg(rules: ModuleType) -> None:
    assert decide(rules, leg(quiet_ticks=BOUND)) == [(0, 0)]  # the last copy stays
    both = decide(rules, leg(quiet_ticks=BOUND), leg(quiet_ticks=2 * BOUND))
    assert both == [(0, 0), (0, 0)]  # both silent: the paths' own timers decide
    # A WO leg (a rebuild destination) is no copy to fail over to.
    assert decide(rules, leg(quiet_ticks=BOUND), leg(rw=False)) == [(0, 0), (0, 0)]
    # ...but a silent WO leg is failed while a RW leg works.
    assert decide(rules, leg(), leg(rw=False, quiet_ticks=BOUND))[1][0] == -errno.ETIMEDOUT
    # Slots with no leg, or an ERR leg, count for nothing.
    assert decide(rules, leg(present=False), leg(quiet_ticks=BOUND)) == [(0, 0), (0, 0)]


def test_a_leg_with_another_live_path_is_left_to_multipath(rules: ModuleType) -> None:
    two_paths = {"num_paths": 2, "live_paths": 1}
    assert decide(rules, leg(), leg(quiet_ticks=BOUND, **two_paths)) == [(0, 0), (0, 0)]
    # ...for a while: a leg that stays silent although a path looks live goes.
    assert decide(rules, leg(), leg(quiet_ticks=2 * BOUND, **two_paths))[1] == (-errno.ETIMEDOUT, 10_000_000)
    # Every path dead: no waiting for multipath.
    assert decide(rules, leg(), leg(quiet_ticks=BOUND, num_paths=2, live_paths=0))[1][0] == -errno.ETIMEDOUT


def test_an_idle_leg_whose_path_was_declared_silent_fails(rules: ModuleType) -> None:
    """Nothing outstanding (an idle volume), but its path went silent (an
    unanswered keep-alive) and none works: ReplicaList should say so now."""
    silent_path = {"live_paths": 0, "path_silent_us": 7_500_000}
    assert decide(rules, leg(), leg(**silent_path)) == [(0, 0), (-errno.ETIMEDOUT, 7_500_000)]
    # A path declared silent while another path works: multipath carries on.
    assert decide(rules, leg(), leg(num_paths=2, live_paths=1, path_silent_us=7_500_000)) == [(0, 0), (0, 0)]


def test_a_leg_whose_controller_was_given_up_loudly_fails_as_lost(rules: ModuleType) -> None:
    assert decide(rules, leg(), leg(lost=True, live_paths=0)) == [(0, 0), (-errno.ENXIO, 0)]
    # Given up after its path went silent: the silence is the reason.
    assert decide(rules, leg(), leg(lost=True, path_silent_us=5_000_000))[1] == (-errno.ETIMEDOUT, 5_000_000)
