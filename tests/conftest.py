"""Shared test fixtures: the real attestation vectors in ../shared/testdata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TEEFLOW_SHARED", REPO_ROOT.parent / "shared"))
ATTESTATION = SHARED / "testdata" / "attestation"


@pytest.fixture(scope="session")
def attestation_dir() -> Path:
    """``../shared/testdata/attestation`` or skip with the reason."""
    if not (ATTESTATION / "manifest.json").is_file():
        pytest.skip(f"real attestation vectors not found at {ATTESTATION} (set TEEFLOW_SHARED)")
    return ATTESTATION


@pytest.fixture(scope="session")
def manifest(attestation_dir: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of the shared vectors (file -> facts)."""
    data: dict[str, Any] = json.loads((attestation_dir / "manifest.json").read_text())
    return data


@pytest.fixture()
def teeflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$TEEFLOW_HOME`` for one test."""
    home = tmp_path / "teeflow-home"
    monkeypatch.setenv("TEEFLOW_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _fresh_emulated_warnings() -> None:
    """Each test sees the first emulated-evidence warning of each kind logged."""
    from teeflow.attestation.appraise_common import reset_emulated_warnings

    reset_emulated_warnings()
