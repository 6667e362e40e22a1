"""CLI: ``teeflow keygen``, ``teeflow seal``, ``teeflow unseal``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.cli.main import app
from teeflow.errors import ParseError, SealingError
from teeflow.sealing import parse_key_file, read_key_file, seal, unseal

runner = CliRunner()


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.key"
    result = runner.invoke(app, ["keygen", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_keygen_writes_0600_key_file(key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(read_key_file(key_file)) == 32
    assert key_file.read_text().startswith("teeflow-key:v1:")


def test_keygen_refuses_overwrite_without_force(key_file: Path) -> None:
    before = key_file.read_bytes()
    result = runner.invoke(app, ["keygen", "-o", str(key_file)])
    assert result.exit_code != 0
    assert isinstance(result.exception, SealingError)
    assert key_file.read_bytes() == before
    result = runner.invoke(app, ["keygen", "-o", str(key_file), "--force"])
    assert result.exit_code == 0, result.output
    assert key_file.read_bytes() != before
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_keygen_to_stdout() -> None:
    result = runner.invoke(app, ["keygen"])
    assert result.exit_code == 0
    assert len(parse_key_file(result.stdout.encode())) == 32


def test_seal_unseal_round_trip(tmp_path: Path, key_file: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "in.bin").write_bytes(data)
    args = ["--key-file", str(key_file), "--aad", "dataset:v1"]
    result = runner.invoke(
        app,
        [
            "seal",
            str(tmp_path / "in.bin"),
            str(tmp_path / "in.sealed"),
            *args,
            "--chunk-size",
            "65536",
        ],
    )
    assert result.exit_code == 0, result.output
    sealed = (tmp_path / "in.sealed").read_bytes()
    assert unseal(sealed, read_key_file(key_file), aad=b"dataset:v1") == data
    result = runner.invoke(
        app, ["unseal", str(tmp_path / "in.sealed"), str(tmp_path / "out"), *args]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out").read_bytes() == data


def test_unseal_wrong_aad_creates_nothing(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "s").write_bytes(seal(b"secret", read_key_file(key_file), aad=b"right"))
    result = runner.invoke(
        app,
        [
            "unseal",
            str(tmp_path / "s"),
            str(tmp_path / "out"),
            "-k",
            str(key_file),
            "--aad",
            "wrong",
        ],
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, SealingError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.key", "s"]


def test_unseal_tampered_file(tmp_path: Path, key_file: Path) -> None:
    blob = bytearray(seal(os.urandom(20000), read_key_file(key_file), chunk_size=4096))
    blob[-1] ^= 1
    (tmp_path / "s").write_bytes(blob)
    result = runner.invoke(
        app, ["unseal", str(tmp_path / "s"), str(tmp_path / "out"), "-k", str(key_file)]
    )
    assert isinstance(result.exception, SealingError)
    assert not (tmp_path / "out").exists()


def test_output_exists_needs_force(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "in").write_bytes(b"abc")
    (tmp_path / "out").write_bytes(b"old")
    result = runner.invoke(
        app, ["seal", str(tmp_path / "in"), str(tmp_path / "out"), "-k", str(key_file)]
    )
    assert isinstance(result.exception, SealingError)
    assert (tmp_path / "out").read_bytes() == b"old"
    result = runner.invoke(
        app, ["seal", str(tmp_path / "in"), str(tmp_path / "out"), "-k", str(key_file), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert unseal((tmp_path / "out").read_bytes(), read_key_file(key_file)) == b"abc"


def test_bad_inputs(tmp_path: Path, key_file: Path) -> None:
    result = runner.invoke(
        app, ["seal", str(tmp_path / "missing"), str(tmp_path / "o"), "-k", str(key_file)]
    )
    assert isinstance(result.exception, SealingError)
    (tmp_path / "in").write_bytes(b"abc")
    (tmp_path / "bad.key").write_text("nope\n")
    result = runner.invoke(
        app, ["seal", str(tmp_path / "in"), str(tmp_path / "o"), "-k", str(tmp_path / "bad.key")]
    )
    assert isinstance(result.exception, ParseError)
    result = runner.invoke(
        app,
        [
            "seal",
            str(tmp_path / "in"),
            str(tmp_path / "o"),
            "-k",
            str(key_file),
            "--chunk-size",
            "100",
        ],
    )
    assert isinstance(result.exception, SealingError)
    assert not (tmp_path / "o").exists()


def test_root_cli_prints_one_line_and_exits_1(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "s").write_bytes(seal(b"x", bytes(32)))
    env = {k: v for k, v in os.environ.items() if k != "TEEFLOW_DEBUG"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "teeflow",
            "unseal",
            str(tmp_path / "s"),
            str(tmp_path / "o"),
            "-k",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error (sealing): wrong key"), proc.stderr
    assert not (tmp_path / "o").exists()
