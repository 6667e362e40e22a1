"""Smoke run of every parser fuzz harness (``bench/fuzz_all.py``), part of CI.

Runs ``bench/fuzz_all.py --seconds S`` (harnesses in parallel on up to 2 cores) with ``S``
from ``TEEFLOW_FUZZ_SECONDS`` — default 30 under CI (``CI=true``), else 3 — and fails when
any harness raised an exception other than its parser's typed errors (``ParseError``; the
KBS decoder's 400/413 problems), exited non-zero or printed no result. The long runs
(≥ 1,000,000 executions per harness) are done by hand: ``python bench/fuzz_X.py
-atheris_runs=1000000``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESSES = {
    "dcap_quote",
    "snp_report",
    "spdm",
    "pcs_json",
    "pem_chain",
    "arrays",
    "kbs_protocol",
}


def fuzz_seconds() -> float:
    """``TEEFLOW_FUZZ_SECONDS`` or the default (30 in CI, 3 elsewhere)."""
    value = os.environ.get("TEEFLOW_FUZZ_SECONDS")
    if value:
        return float(value)
    return 30.0 if os.environ.get("CI", "").lower() == "true" else 3.0


def test_every_harness_is_listed() -> None:
    found = {p.stem.removeprefix("fuzz_") for p in (REPO / "bench").glob("fuzz_*.py")}
    assert found - {"common", "all"} == HARNESSES


@pytest.mark.slow
def test_fuzz_smoke(tmp_path: Path) -> None:
    seconds = fuzz_seconds()
    out = tmp_path / "fuzz.json"
    cmd = [sys.executable, str(REPO / "bench" / "fuzz_all.py"), "--seconds", str(seconds)]
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=len(HARNESSES) * (seconds + 150),
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert {r["name"] for r in results} == HARNESSES
    for r in results:
        assert r["ok"] and r["crashes"] == 0, r
        assert r["executions"] > 0, r
