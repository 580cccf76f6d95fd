"""One three-node cluster per test module (tests/cluster/harness.py): nodes
a, b and c, each its own namespace, imd and nvmf_tgt, and a host namespace.

Skipped, with the reason, without SPDK (and spdk_ffi's core) or without
network namespaces (root, ``ip netns``). The prefix is this checkout's
(``imdt`` and a hash of its path): a run first removes what a killed run
of the same checkout left, and nothing of anyone else's.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
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
