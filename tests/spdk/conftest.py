from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.spdk.target import Target, skip_reason


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    t = Target(Path(tmp_path_factory.mktemp("nvmf")))
    try:
        yield t
    finally:
        t.close()
