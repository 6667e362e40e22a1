"""``teeflow quote show|verify`` and ``teeflow demo`` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teeflow.cli.main import app

runner = CliRunner()
PHALA = "sgx/phala_sgx_quote_v3.bin"
PHALA_SET = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.vectors
def test_show_prints_the_readme_fields(attestation_dir: Path) -> None:
    code, out = run_json("quote", "show", str(attestation_dir / PHALA))
    assert code == 0
    assert out["version"] == 3
    assert out["tee"] == "sgx"
    assert out["mrenclave"] == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert out["mrsigner"] == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    assert out["isv_prod_id"] == 0 and out["isv_svn"] == 0
    assert out["attributes"] == "0500000000000000e700000000000000"
    assert out["debug"] is False
    assert out["pck_fmspc"] == "00a067110000"
    assert out["report_data"].startswith("48656c6c6f2c20776f726c6421")


@pytest.mark.vectors
def test_verify_with_collateral_at_fixed_time(attestation_dir: Path) -> None:
    args = [
        "quote",
        "verify",
        str(attestation_dir / PHALA),
        "--collateral",
        str(attestation_dir / PHALA_SET),
        "--at",
        "2025-07-01T00:00:00Z",
    ]
    code, out = run_json(*args)
    assert code == 1  # verified, but ConfigurationAndSWHardeningNeeded is not accepted by default
    assert out["verified"] is True and out["accepted"] is False
    assert out["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert out["advisories"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert out["errors"] == ["policy: tcb status ConfigurationAndSWHardeningNeeded not accepted"]
    for key in ("tee", "mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "report_data"):
        assert key in out

    code, out = run_json(*args, "--accept-tcb", "ConfigurationAndSWHardeningNeeded")
    assert code == 0 and out["accepted"] is True and out["errors"] == []
    code, out = run_json(
        *args,
        "--accept-tcb",
        "ConfigurationAndSWHardeningNeeded",
        "--accept-advisory",
        "INTEL-SA-00289",
    )
    assert code == 1 and out["errors"] == ["policy: advisory INTEL-SA-00615 not accepted"]


@pytest.mark.vectors
def test_verify_at_todays_date_fails_on_expired_collateral(attestation_dir: Path) -> None:
    code, out = run_json(
        "quote",
        "verify",
        str(attestation_dir / PHALA),
        "--collateral",
        str(attestation_dir / PHALA_SET),
        "--at",
        "2026-11-21T00:00:00Z",
    )
    assert code == 1
    assert out["verified"] is False and out["tcb_status"] is None
    assert out["errors"] and out["errors"][0].startswith("collateral:")


@pytest.mark.vectors
def test_without_collateral_fails_closed_unless_signatures_only(attestation_dir: Path) -> None:
    quote = str(attestation_dir / "sgx/mobilecoin_hw_quote_v3.bin")
    code, out = run_json("quote", "verify", quote, "--at", "2023-05-01T00:00:00Z")
    assert code == 1 and out["verified"] is False
    assert out["errors"][0].startswith("collateral:")
    crls = [
        "--crl",
        str(attestation_dir / "sgx/mobilecoin_processor_ca_crl.der"),
        "--crl",
        str(attestation_dir / "sgx/mobilecoin_root_ca_crl.der"),
    ]
    sig_only = [
        "quote",
        "verify",
        quote,
        "--at",
        "2023-05-01T00:00:00Z",
        "--signatures-only",
        *crls,
    ]
    code, out = run_json(*sig_only)
    # the mobilecoin enclave is a DEBUG enclave: verified, but the default policy refuses it
    assert out["verified"] is True and out["tcb_status"] is None
    assert code == 1 and out["errors"] == ["policy: debug enclave not allowed"]
    code, out = run_json(*sig_only, "--allow-debug")
    assert code == 0 and out["accepted"] is True


@pytest.mark.vectors
def test_flipped_quote_is_not_verified(attestation_dir: Path, tmp_path: Path) -> None:
    raw = bytearray((attestation_dir / PHALA).read_bytes())
    raw[100] ^= 0x01  # inside the ISV enclave report body
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(raw))
    code, out = run_json(
        "quote",
        "verify",
        str(bad),
        "--collateral",
        str(attestation_dir / PHALA_SET),
        "--at",
        "2025-07-01T00:00:00Z",
    )
    assert code == 1 and out["verified"] is False
    assert out["errors"][0].startswith("verification:")


def test_garbage_is_a_parse_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x03\x00" + b"\xff" * 100)
    code, out = run_json("quote", "verify", str(junk))
    assert code == 1 and out["verified"] is False
    assert out["errors"][0].startswith("parse:")
    result = runner.invoke(app, ["quote", "show", str(junk)])
    assert result.exit_code != 0


def test_emulated_quote_needs_allow_emulated(teeflow_home: Path, tmp_path: Path) -> None:
    quote = tmp_path / "q.bin"
    collateral = tmp_path / "collateral"
    result = runner.invoke(
        app,
        [
            "emulate",
            "quote",
            "--measurement",
            "ab" * 32,
            "--report-data",
            "01" * 64,
            "-o",
            str(quote),
            "--collateral-out",
            str(collateral),
        ],
    )
    assert result.exit_code == 0, result.output
    code, out = run_json("quote", "verify", str(quote), "--collateral", str(collateral))
    assert code == 1
    assert out["verified"] is True and out["emulated"] is True
    assert "policy: emulated evidence not allowed" in out["errors"]
    code, out = run_json(
        "quote", "verify", str(quote), "--collateral", str(collateral), "--allow-emulated"
    )
    assert code == 0 and out["accepted"] is True
    assert out["tee"] == "emulated-sgx" and out["status"] == "warning"
    assert out["mrenclave"] == "ab" * 32 and out["tcb_status"] == "UpToDate"


def test_demo_json(tmp_path: Path) -> None:
    # the attestation round trip is `teeflow demo attestation` (plain `demo` is the FL job)
    code, out = run_json("demo", "attestation", "--workdir", str(tmp_path / "demo"))
    assert code == 0
    assert out["ok"] is True and out["emulated"] is True
    assert out["default_policy_denied_emulated"] is True
    assert out["ear_status"] == "warning" and out["tcb_status"] == "UpToDate"
    assert Path(out["files"]["quote"]).is_file()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("teeflow ")
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("quote", "seal", "unseal", "keygen", "workload", "emulate", "demo"):
        assert group in result.stdout
