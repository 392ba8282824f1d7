"""Timing that compile, compare and bench share: warm-up runs, then N timed runs; median and p90."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int
    samples_ms: list[float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms median (p90 {self.p90_ms:.2f}, n={self.runs})"


def time_fn(fn: Callable[[], Any], *, runs: int = 10, warmup: int = 2, max_seconds: float | None = None) -> Timing:
    """Call fn() `warmup` times untimed, then `runs` times timed (wall clock, perf_counter).

    `max_seconds` stops early once the timed runs exceed it, but never before 3 samples, so a slow
    model still gets a median that means something."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and len(samples) >= 3 and time.perf_counter() - started > max_seconds:
            break
    a = np.asarray(samples)
    return Timing(float(np.median(a)), float(np.percentile(a, 90)), float(a.mean()), float(a.min()),
                  len(samples), warmup, [round(s, 4) for s in samples])
