"""``teeflow party enroll`` / ``revoke-enrollment`` (CLI layer; the KBS side is tested in
test_kbs_enrollment.py and over HTTPS in tests/integration)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from teeflow.cli import party_cmds
from teeflow.cli.enrollment_cmds import load_workload_key, parse_duration
from teeflow.errors import ParseError
from teeflow.kbs.policy.enrollment import load_enrollment, read_enrollment
from teeflow.kbs.policy.parties import PartyKeys


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    party_cmds.register(app)
    return app


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path))
    PartyKeys.generate("alice").save(tmp_path / "parties" / "alice")
    return tmp_path


def test_parse_duration() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("7d") == timedelta(days=7)
    for bad in ("", "1", "0h", "-1h", "1.5h", "1w", "h", "99999999d"):
        with pytest.raises(ParseError):
            parse_duration(bad)


def test_workload_key_jwk_and_pem(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", private=True)
    jwk = tmp_path / "k.jwk"
    jwk.write_text(json.dumps(key.as_dict(private=False)))
    assert load_workload_key(jwk)["x"] == key.as_dict()["x"]
    pem = tmp_path / "k.pem"
    priv = ec.generate_private_key(ec.SECP256R1())
    pem.write_bytes(priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert load_workload_key(pem)["crv"] == "P-256"
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for bad in (p384, tmp_path / "missing"):
        with pytest.raises(ParseError):
            load_workload_key(bad)
    (tmp_path / "junk").write_bytes(b"x" * 20_000)
    with pytest.raises(ParseError, match="larger"):
        load_workload_key(tmp_path / "junk")


def test_enroll_writes_a_private_token(home: Path, tmp_path: Path) -> None:
    wkey = ECKey.generate_key("P-256", private=True)
    (tmp_path / "w.jwk").write_text(json.dumps(wkey.as_dict(private=False)))
    out = tmp_path / "alice.jwt"
    result = CliRunner().invoke(_app(), [
        "party", "enroll", "--party", "alice", "--role", "client", "--session", "s1",
        "--expires", "2h", "--uses", "3", "--workload-key", str(tmp_path / "w.jwk"),
        "--federation", "study", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert (facts["party"], facts["role"], facts["session"], facts["uses"]) == (
        "alice", "client", "s1", 3)
    assert out.stat().st_mode & 0o077 == 0
    e = read_enrollment(load_enrollment(out))
    assert e.jti == facts["id"] and e.exp - e.iat == 7200 and e.cnf is not None
    assert e.cnf.jkt == wkey.thumbprint()


def test_enroll_refuses_bad_input(home: Path, tmp_path: Path) -> None:
    for args in (["--role", "admin"], ["--role", "client", "--expires", "400d"],
                 ["--role", "client", "--uses", "0"], ["--role", "client", "--session", "-x"]):
        result = CliRunner().invoke(_app(), [
            "party", "enroll", "--party", "alice", "--federation", "study",
            "-o", str(tmp_path / "t.jwt"), *args])
        assert result.exit_code != 0
        assert isinstance(result.exception, ParseError), (args, result.exception)
    assert not (tmp_path / "t.jwt").exists()
    # the revocation needs exactly one of --id / --token
    result = CliRunner().invoke(_app(), ["party", "revoke-enrollment", "--party", "alice"])
    assert isinstance(result.exception, ParseError)


def test_load_enrollment_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"a" * 5000)
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    for name in ("big", "bin", "missing"):
        with pytest.raises(ParseError):
            load_enrollment(tmp_path / name)
