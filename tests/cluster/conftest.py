"""One three-node cluster per test module (tests/cluster/harness.py): nodes
a, b and c, each its own namespace, imd and nvmf_tgt, and a host namespace.

Skipped, with the reason, without SPDK (and spdk_ffi's core) or without
network namespaces (root, ``ip netns``). The prefix is this checkout's
(``imdt`` and a hash of its path): a run first removes what a killed run
of the same checkout left, and nothing of anyone else's.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cluster import netns
from tests.cluster.harness import ROOT, Cluster
from tests.v2.spdk_env import engine_skip_reason

PREFIX = "imdt" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:4]
RUN_DIR = Path("/tmp") / PREFIX


def skip_reason() -> str | None:
    return engine_skip_reason() or netns.skip_reason()


SKIP = skip_reason()
needs_cluster = pytest.mark.skipif(SKIP is not None, reason=f"cluster tests: {SKIP}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    made = Cluster(PREFIX, RUN_DIR)
    try:
        await made.up()
        yield made
    finally:
        await made.down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def node_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test prints the tail of each node's imd log (the run
    directory goes at teardown), which pytest shows with the failure."""
    yield
    if not request.node.stash.get(FAILED, False) or "cluster" not in request.fixturenames:
        return
    made: Cluster = request.getfixturevalue("cluster")
    for node in made.nodes.values():
        tail = "\n".join(node.stderr().splitlines()[-15:])
        print(f"--- imd on {node.name} ({node.address}), last lines ---\n{tail}")
