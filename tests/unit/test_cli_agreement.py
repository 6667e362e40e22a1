"""CLI: teeflow party keygen|show and teeflow agreement init|sign|show|diff (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from teeflow.cli import agreement_cmds, party_cmds
from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    digest,
)
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signature_files import load_signed
from teeflow.kbs.policy.signing import (
    verify_initial,
    verify_update,
)

PARTIES = ("alice", "bob", "carol")


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    party_cmds.register(app)
    agreement_cmds.register(app)
    return app


APP = _app()


def run(*args: str | Path, ok: bool = True) -> str:
    result = CliRunner().invoke(APP, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    else:
        assert result.exit_code != 0
    return result.output


def invoke_error(*args: str | Path) -> BaseException | None:
    result = CliRunner().invoke(APP, [str(a) for a in args])
    assert result.exit_code != 0
    return result.exception


@pytest.fixture()
def federation(teeflow_home: Path, tmp_path: Path) -> Path:
    for p in PARTIES:
        run("party", "keygen", p)
    out = tmp_path / "agreement.yaml"
    opts = [x for p in PARTIES for x in ("--party", f"{p}={teeflow_home}/parties/{p}/{p}.pub.json")]
    run("agreement", "init", "--federation", "study", *opts, "-o", out)
    return out


def test_keygen_layout_and_show(teeflow_home: Path) -> None:
    out = run("party", "keygen", "alice")
    d = teeflow_home / "parties" / "alice"
    assert (d / "alice.pub.json").is_file() and str(d / "alice.pub.json") in out
    assert (d.stat().st_mode & 0o777) == 0o700
    assert json.loads(run("party", "show", "alice")) == json.loads(
        (d / "alice.pub.json").read_text()
    )
    assert isinstance(invoke_error("party", "keygen", "alice"), KbsError)
    run("party", "keygen", "alice", "--force")
    assert isinstance(invoke_error("party", "keygen", "Not_A_Label"), ParseError)


def test_keygen_custom_dir(tmp_path: Path) -> None:
    run("party", "keygen", "bank", "--dir", tmp_path / "k")
    assert PartyKeys.load_dir(tmp_path / "k", "bank").name == "bank"


def test_init_template(federation: Path) -> None:
    text = federation.read_text()
    assert text.startswith("# teeflow federation agreement")
    a = FederationAgreement.load(federation)
    assert sorted(a.parties) == list(PARTIES)
    assert a.version == 1 and a.previous is None and a.allow_emulated is False
    assert a.update_quorum.k == 2
    assert a.outputs["model"] == PARTIES  # type: ignore[index]


def test_init_errors(teeflow_home: Path, tmp_path: Path, federation: Path) -> None:
    pub = teeflow_home / "parties" / "alice" / "alice.pub.json"
    exc = invoke_error(
        "agreement", "init", "--federation", "f", "--party", f"bob={pub}", "-o", tmp_path / "x.yaml"
    )
    assert isinstance(exc, ParseError)
    exc = invoke_error(
        "agreement", "init", "--federation", "f", "--party", f"alice={pub}", "-o", federation
    )
    assert isinstance(exc, KbsError)
    exc = invoke_error(
        "agreement",
        "init",
        "--federation",
        "f",
        "--party",
        f"alice={pub}",
        "--quorum",
        "2",
        "-o",
        tmp_path / "y.yaml",
    )
    assert isinstance(exc, ParseError)  # k=2 > 1 party
    exc = invoke_error(
        "agreement", "init", "--federation", "f", "--party", "alice", "-o", tmp_path / "z.yaml"
    )
    assert isinstance(exc, ParseError)


def test_sign_show_happy_path(federation: Path) -> None:
    out = run("agreement", "show", federation)
    assert "not signed" in out and "INCOMPLETE" in out
    for i, p in enumerate(PARTIES, 1):
        assert f"{i} of 3 signed" in run("agreement", "sign", federation, "--party", p)
    sig_file = federation.with_name("agreement.yaml.sigs.json")
    doc = json.loads(sig_file.read_text())
    a = FederationAgreement.load(federation)
    assert doc["format"] == "teeflow-agreement-signatures-v1"
    assert doc["digest"] == digest(a).hex() and sorted(doc["signatures"]) == list(PARTIES)
    out = run("agreement", "show", federation)
    assert digest(a).hex() in out
    assert "complete: acceptable as signed" in out
    assert "allow_emulated  false" in out
    assert verify_initial(load_signed(federation)) == digest(a)


def test_show_allow_emulated_loudly(federation: Path) -> None:
    doc = yaml.safe_load(federation.read_text())
    doc["allow_emulated"] = True
    federation.write_text(yaml.safe_dump(doc))
    assert "!!! allow_emulated: TRUE" in run("agreement", "show", federation)


def test_show_fl_weight_caps(federation: Path) -> None:
    assert "fl weights  unbounded" in run("agreement", "show", federation)
    doc = yaml.safe_load(federation.read_text())
    doc["fl"] = {"max_examples": 600, "max_examples_per_party": {PARTIES[0]: 50}}
    federation.write_text(yaml.safe_dump(doc))
    out = run("agreement", "show", federation)
    assert f"num_examples clipped to 600 (per party: {PARTIES[0]}=50)" in out


def test_sign_refusals(federation: Path, tmp_path: Path, teeflow_home: Path) -> None:
    run("party", "keygen", "dave")
    assert isinstance(invoke_error("agreement", "sign", federation, "--party", "dave"), KbsError)
    # alice's directory holding other keys than the agreement lists
    PartyKeys.generate("alice").save(tmp_path / "other")
    exc = invoke_error(
        "agreement", "sign", federation, "--party", "alice", "--dir", tmp_path / "other"
    )
    assert isinstance(exc, KbsError)
    assert isinstance(
        invoke_error("agreement", "sign", tmp_path / "none.yaml", "--party", "alice"), ParseError
    )


def test_stale_signatures_dropped(federation: Path) -> None:
    run("agreement", "sign", federation, "--party", "alice")
    doc = yaml.safe_load(federation.read_text())
    doc["update_quorum"]["k"] = 3
    federation.write_text(yaml.safe_dump(doc))
    assert "STALE" in run("agreement", "show", federation)
    with pytest.raises(VerificationError):
        load_signed(federation)
    out = run("agreement", "sign", federation, "--party", "bob")
    assert "1 of 3 signed" in out
    sigs = json.loads(federation.with_name("agreement.yaml.sigs.json").read_text())
    assert list(sigs["signatures"]) == ["bob"]


def test_merge_separately_signed_files(federation: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.yaml"
    copy.write_text(federation.read_text())
    run("agreement", "sign", copy, "--party", "carol")
    run("agreement", "sign", federation, "--party", "alice")
    run(
        "agreement",
        "sign",
        federation,
        "--party",
        "bob",
        "--merge",
        tmp_path / "copy.yaml.sigs.json",
    )
    assert "complete" in run("agreement", "show", federation)


def test_update_diff_and_previous(federation: Path, tmp_path: Path) -> None:
    for p in PARTIES:
        run("agreement", "sign", federation, "--party", p)
    old = FederationAgreement.load(federation)
    doc = old.to_document()
    doc.update(version=2, previous=digest(old).hex(), allow_emulated=True)
    doc["packages"] = {
        "trainer": {"digest": "ab" * 32, "entrypoints": ["train"], "readers": ["alice"]}
    }
    doc["outputs"]["model"] = ["alice", "bob"]
    new = tmp_path / "v2.yaml"
    new.write_text(yaml.safe_dump(doc))
    out = run("agreement", "diff", federation, new)
    assert "well-formed successor" in out
    assert "~ version: 1 -> 2" in out
    assert "~ allow_emulated: false -> true" in out
    assert '- outputs.model: "carol"' in out
    assert '+ packages.trainer: {"digest": ' in out
    assert "no differences" in run("agreement", "diff", federation, federation)
    assert "NOT a direct successor" in run("agreement", "diff", new, federation)

    assert "--previous" in run("agreement", "show", new)
    run("agreement", "sign", new, "--party", "alice")
    assert "INCOMPLETE" in run("agreement", "show", new, "--previous", federation)
    run("agreement", "sign", new, "--party", "carol")
    assert "complete" in run("agreement", "show", new, "--previous", federation)
    verify_update(load_signed(new), load_signed(federation))


def test_diff_agreements_function(federation: Path) -> None:
    a = FederationAgreement.load(federation)
    doc = a.to_document()
    doc["parties"].pop("carol")
    doc["outputs"] = {"model": ["alice", "bob"]}
    b = FederationAgreement.from_mapping(doc)
    lines = agreement_cmds.diff_agreements(a, b)
    assert any(x.startswith("- parties.carol: ") for x in lines)
    assert '- outputs.model: "carol"' in lines
    assert any(x.startswith("- outputs.result: ") for x in lines)
