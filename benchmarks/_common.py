"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_COORDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp16_coordinates_100k.csv"


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``repeat`` runs, in seconds (the usual timeit convention)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def row(label: str, n: int, seconds: float, anchor_rate: float | None = None) -> str:
    rate = n / seconds
    ratio = f"{rate / anchor_rate:7.1f}x" if anchor_rate else "   anchor"
    return f"  {label:<38} {rate:>14,.0f} /s   {seconds * 1e3:9.1f} ms   {ratio}"
