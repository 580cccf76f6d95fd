"""Shared reporting: percentiles, Markdown tables, JSON files, optional plots."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """The median; NaN for no data (a row with nothing measured)."""
    return float(statistics.median(values)) if values else float("nan")


def summary_ms(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1e3, digits),
        "p99_ms": round(percentile(values, 99) * 1e3, digits),
        "max_ms": round(max(values) * 1e3, digits) if values else float("nan"),
        "count": len(values),
    }


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import os

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(data), indent=2))
    return path


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None, after saying so, when
    the bench extra (matplotlib) is not installed: a plot is optional."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(plot skipped: matplotlib not installed; pip install -e '.[bench]')")
        return None
    return plt


def save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (its folder made), close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(label: str, data: dict[str, Any], markdown: str) -> None:
    """results/<label>.json (the run's data) and results/<label>.md (its report)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{label}.json").write_text(json.dumps(data, indent=1, default=str))
    (RESULTS / f"{label}.md").write_text(markdown)


def plot_percentiles(name: str, title: str, series: dict[str, list[tuple[int, float, float]]]) -> Path | None:
    """series: label -> [(N, p50_ms, p99_ms)]. Needs the bench extra
    (matplotlib); returns None, after saying so, without it."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        ns = [p[0] for p in points]
        ax.plot(ns, [p[1] for p in points], marker="o", label=f"{label} p50")
        ax.plot(ns, [p[2] for p in points], marker="^", linestyle="--", label=f"{label} p99")
    ax.set_xlabel("processes (N)")
    ax.set_ylabel("ms")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(plt, fig, RESULTS / f"{name}.png")
