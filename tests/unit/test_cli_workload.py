"""CLI: ``teeflow workload measure|init`` and ``teeflow emulate quote|info``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.attestation import sgx
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.evidence import TcbStatus
from teeflow.cli.main import app, main
from teeflow.errors import PlatformError, WorkloadError
from teeflow.platform.emulated import EmulationAuthority
from teeflow.workload import WorkloadManifest, measurement

runner = CliRunner()


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    base = tmp_path / "app"
    (base / "lib").mkdir(parents=True)
    (base / "main.py").write_text("print('hi')\n")
    (base / "lib" / "util.py").write_text("X = 1\n")
    return base


def _init(app_dir: Path) -> Path:
    result = runner.invoke(
        app, ["workload", "init", str(app_dir), "--entrypoint", "python main.py", "--arg", "--x"]
    )
    assert result.exit_code == 0, result.output
    return app_dir / "workload.yaml"


def test_init_then_measure(app_dir: Path) -> None:
    path = _init(app_dir)
    manifest = WorkloadManifest.load(path)
    assert manifest.entrypoint == ("python", "main.py")
    assert manifest.arguments == ("--x",)
    assert [f.path for f in manifest.trusted_files] == ["lib/util.py", "main.py"]  # no manifest
    result = runner.invoke(app, ["workload", "measure", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == measurement(manifest).hex()
    result = runner.invoke(app, ["workload", "measure", str(path), "--json"])
    doc = json.loads(result.output)
    assert doc["measurement"] == measurement(manifest).hex()
    assert doc["files_verified"] is True and doc["trusted_files"] == 2
    # Refuses to overwrite without --force.
    again = runner.invoke(app, ["workload", "init", str(app_dir), "--entrypoint", "python main.py"])
    assert isinstance(again.exception, WorkloadError)


def test_measure_with_base_dir(app_dir: Path, tmp_path: Path) -> None:
    path = _init(app_dir)
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(path.read_text())
    bad = runner.invoke(app, ["workload", "measure", str(moved)])
    assert isinstance(bad.exception, WorkloadError)
    ok = runner.invoke(app, ["workload", "measure", str(moved), "--base-dir", str(app_dir)])
    assert ok.exit_code == 0, ok.output


def test_measure_mismatch_one_line_error(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _init(app_dir)
    (app_dir / "lib" / "util.py").write_text("X = 2\n")
    monkeypatch.setattr(sys, "argv", ["teeflow", "workload", "measure", str(path)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "lib/util.py" in err
    assert "workload" in err
    # --no-verify-files still prints the measurement.
    result = runner.invoke(app, ["workload", "measure", str(path), "--no-verify-files"])
    assert result.exit_code == 0
    assert result.output.strip() == measurement(WorkloadManifest.load(path)).hex()


def test_emulate_quote_verifies(app_dir: Path, teeflow_home: Path, tmp_path: Path) -> None:
    path = _init(app_dir)
    out = tmp_path / "q.bin"
    coll = tmp_path / "coll"
    result = runner.invoke(
        app,
        [
            "emulate", "quote", "--manifest", str(path), "--report-data", "ab" * 64,
            "-o", str(out), "--collateral-out", str(coll),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (teeflow_home / "emulation" / "root_ca.pem").is_file()
    now = datetime.now(UTC)
    anchor = EmulationAuthority.existing_trust_anchor()
    assert anchor is not None
    verified = sgx.verify(
        sgx.parse_quote(out.read_bytes()),
        anchors=[anchor],
        collateral=IntelCollateral.from_dir(coll),
        now=now,
    )
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.report.mr_enclave == measurement(WorkloadManifest.load(path))
    assert verified.report.report_data == bytes.fromhex("ab" * 64)


def test_emulate_quote_errors(app_dir: Path, teeflow_home: Path, tmp_path: Path) -> None:
    path = _init(app_dir)
    out = str(tmp_path / "q.bin")
    too_long = runner.invoke(
        app, ["emulate", "quote", "-m", str(path), "--report-data", "00" * 65, "-o", out]
    )
    assert isinstance(too_long.exception, PlatformError)
    not_hex = runner.invoke(
        app, ["emulate", "quote", "-m", str(path), "--report-data", "zz", "-o", out]
    )
    assert isinstance(not_hex.exception, PlatformError)
    (app_dir / "main.py").write_text("changed\n")
    changed = runner.invoke(app, ["emulate", "quote", "-m", str(path), "-o", out])
    assert isinstance(changed.exception, WorkloadError)
    raw = runner.invoke(app, ["emulate", "quote", "--measurement", "11" * 32, "-o", out])
    assert raw.exit_code == 0, raw.output
    assert sgx.parse_quote(Path(out).read_bytes()).body.mr_enclave == bytes.fromhex("11" * 32)


def test_emulate_info(teeflow_home: Path) -> None:
    empty = runner.invoke(app, ["emulate", "info", "--json"])
    assert json.loads(empty.output) == {
        "directory": str(teeflow_home / "emulation"),
        "exists": False,
        "trusted_roots": [],
    }
    created = runner.invoke(app, ["emulate", "info", "--create"])
    assert created.exit_code == 0, created.output
    assert "EMULATED" in created.output and "not hardware" in created.output
    authority = EmulationAuthority.load_or_create()
    assert authority.fingerprint in created.output
    doc = json.loads(runner.invoke(app, ["emulate", "info", "--json"]).output)
    assert doc["root_sha256"] == authority.fingerprint and doc["emulated"] is True
