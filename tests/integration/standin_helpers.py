"""Shared fixtures for tests over the FUSE interface stand-ins (``teeflow emulate tsm|gramine``).

FUSE missing: the tests skip with the reason — except under CI (``CI=true``), where a skip
would hide the hardware code paths, so they fail instead (.ci/run installs fuse3).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from teeflow.demo.standins import StandinProcess, start_standin
from teeflow.testing.pseudofs import fuse_problem

__all__ = ["require_fuse", "standin"]


def require_fuse() -> None:
    """Skip (locally) or fail (CI) when FUSE cannot be used."""
    problem = fuse_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the stand-in tests: {problem}")
    pytest.skip(problem)


@contextmanager
def standin(
    platform: str, mountpoint: Path, home: Path, measurement: bytes, logs: Path
) -> Iterator[StandinProcess]:
    """A running stand-in under ``home``'s emulation roots, stopped (unmounted) on exit."""
    require_fuse()
    env = {**os.environ, "TEEFLOW_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = start_standin(platform, mountpoint, measurement=measurement, env=env, logs=logs)
    try:
        yield proc
    finally:
        proc.stop()
