"""Helpers shared by the benchmarks: timing statistics, RSS, JSON output, machine info."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def time_calls(fn: Callable[[], object], *, iterations: int, warmup: int = 20) -> dict[str, float]:
    """Call ``fn`` ``warmup`` + ``iterations`` times; per-call stats in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {
        "iterations": iterations,
        "median_ms": statistics.median(samples),
        "mean_ms": statistics.fmean(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "min_ms": samples[0],
    }


def machine() -> dict[str, Any]:
    """Basic facts about the machine the numbers come from."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_json(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` to ``bench/results/<name>.json`` (or ``out``) and return the path."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
