"""``teeflow emulate tsm|gramine``: option errors are refused before anything is mounted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.cli.main import app
from teeflow.errors import PlatformError
from teeflow.testing.standins import build_standin

runner = CliRunner()
M32 = "ab" * 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tsm", "{d}", "--tee", "sgx", "--measurement", M32], "--tee must be tdx or sev-snp"),
        (["tsm", "{d}", "--tee", "tdx"], "exactly one of --measurement"),
        (["tsm", "{d}", "--tee", "sev-snp", "--measurement", M32, "--rtmr", "0=00"], "--rtmr"),
        (["tsm", "{d}", "--tee", "tdx", "--measurement", M32, "--rtmr", "7=00"], "I=HEX"),
        (["tsm", "{d}", "--tee", "tdx", "--measurement", "zz"], "not hexadecimal"),
        (["gramine", "{d}", "--measurement", "ab" * 48], "must be 32 bytes"),
    ],
)
def test_option_errors(tmp_path: Path, args: list[str], message: str) -> None:
    argv = ["emulate", *(a.format(d=tmp_path) for a in args)]
    result = runner.invoke(app, argv)
    assert result.exit_code != 0
    assert isinstance(result.exception, PlatformError)
    assert message in str(result.exception)


def test_refuses_a_non_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "home"))
    target = tmp_path / "mnt"
    target.mkdir()
    (target / "precious").write_text("x")
    result = runner.invoke(app, ["emulate", "gramine", str(target), "--measurement", M32])
    assert isinstance(result.exception, PlatformError)
    assert "not empty" in str(result.exception) or "FUSE" in str(result.exception)
    assert (target / "precious").read_text() == "x"


def test_reference_values_per_platform(tmp_path: Path) -> None:
    m = bytes.fromhex(M32)
    tdx = build_standin("tdx", m, home=tmp_path)
    assert tdx.reference_values["tdx"]["mrtd"] == [(m + bytes(16)).hex()]
    assert tdx.reference_values["tdx"]["rtmr3"] == bytes(48).hex()
    sgx = build_standin("gramine-sgx", m, home=tmp_path)
    assert sgx.reference_values == {"sgx": {"mrenclave": [M32]}}
    assert sgx.info["tee"] == "emulated-sgx" and sgx.info["interface"] == "gramine"
    mrtd48 = bytes(range(48))
    assert build_standin("tdx", mrtd48, home=tmp_path).info["mrtd"] == mrtd48.hex()
    with pytest.raises(PlatformError):
        build_standin("emulated-sgx", m, home=tmp_path)
