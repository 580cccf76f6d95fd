"""The committed stubs are exactly what proto/generate.py makes from proto/."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path / "gen")
    committed = ROOT / "imd" / "api" / "gen"
    fresh = sorted(p.relative_to(tmp_path / "gen") for p in (tmp_path / "gen").rglob("*.py*"))
    current = sorted(p.relative_to(committed) for p in committed.rglob("*.py*") if "__pycache__" not in p.parts)
    assert fresh == current
    for rel in fresh:
        assert filecmp.cmp(tmp_path / "gen" / rel, committed / rel, shallow=False), f"{rel} is stale"
