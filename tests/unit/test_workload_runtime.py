"""Workload start-up refuses changed trusted files and runs the verified entrypoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.cli.main import app
from teeflow.errors import WorkloadError
from teeflow.workload import WorkloadManifest, measurement
from teeflow.workload.runtime import MANIFEST_ENV, run_workload, start_workload

APP = "import os, sys\nprint(os.environ['TEEFLOW_WORKLOAD_MANIFEST'], *sys.argv[1:])\n"


def make_workload(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    manifest = WorkloadManifest.build(
        tmp_path, entrypoint=[sys.executable, "app.py"], files=["app.py"], arguments=["--x"]
    )
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest.to_yaml())
    return path


def test_start_checks_files_and_measures(tmp_path: Path) -> None:
    path = make_workload(tmp_path)
    started = start_workload(path)
    assert started.measurement == measurement(WorkloadManifest.load(path))
    assert started.argv(["y"]) == [sys.executable, "app.py", "--x", "y"]
    assert started.environment({})[MANIFEST_ENV] == str(path.resolve())


def test_changed_trusted_file_refuses_to_start(tmp_path: Path) -> None:
    path = make_workload(tmp_path)
    (tmp_path / "app.py").write_text(APP + "# patched\n")
    with pytest.raises(WorkloadError, match=r"app\.py"):
        start_workload(path)
    (tmp_path / "app.py").unlink()
    with pytest.raises(WorkloadError, match=r"app\.py"):
        start_workload(path)


def test_run_passes_manifest_and_arguments(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = make_workload(tmp_path)
    assert run_workload(start_workload(path), ["extra"], timeout=60) == 0
    out = capfd.readouterr().out
    assert str(path.resolve()) in out and "--x extra" in out


def test_cli_run_refuses_a_changed_file(tmp_path: Path) -> None:
    path = make_workload(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["workload", "run", str(path), "extra"])
    assert result.exit_code == 0, result.output
    (tmp_path / "app.py").write_text("print('evil')\n")
    result = runner.invoke(app, ["workload", "run", str(path)])
    assert isinstance(result.exception, WorkloadError)
