"""The final model sealed to the output recipients; verify against provenance; open; CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from teeflow.cli import fl_cmds
from teeflow.errors import FLError, ParseError, SealingError, VerificationError
from teeflow.fl.arrays import arrays_digest, encode_arrays
from teeflow.fl.outputs import open_model, read_model_header, seal_model, verify_model
from teeflow.fl.provenance import ProvenanceError, ProvenanceLog, save_provenance
from teeflow.kbs.ca.authority import FederationCA, WorkloadIdentity
from teeflow.kbs.policy.parties import PartyKeys

AGREEMENT = "cd" * 32
MEASUREMENT = "ab" * 32
ARRAYS = {
    "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fc.bias": np.ones(3, np.float32),
}


@pytest.fixture(scope="module")
def parties() -> dict[str, PartyKeys]:
    return {n: PartyKeys.generate(n) for n in ("alice", "bob", "carol")}


def model_bytes(parties: dict[str, PartyKeys], *names: str, arrays: dict = ARRAYS) -> bytes:
    return seal_model(
        encode_arrays(arrays),
        {n: parties[n].recipient_key.public_key() for n in names},
        session="s1",
        federation="study",
        agreement_digest=AGREEMENT,
    )


def test_each_recipient_opens_others_cannot(parties: dict[str, PartyKeys]) -> None:
    data = model_bytes(parties, "alice", "bob")
    for name in ("alice", "bob"):
        opened = open_model(data, parties[name])
        assert arrays_digest(opened) == arrays_digest(ARRAYS)
    with pytest.raises(FLError, match="not a recipient"):
        open_model(data, parties["carol"])
    imposter = PartyKeys("bob", parties["carol"].sign_key, parties["carol"].recipient_key)
    with pytest.raises(SealingError):
        open_model(data, imposter)


def test_header_and_body_tampering_is_detected(parties: dict[str, PartyKeys]) -> None:
    data = model_bytes(parties, "alice")
    header = read_model_header(data)
    assert header.arrays_digest == arrays_digest(ARRAYS).hex()
    forged = data.replace(b'"session":"s1"', b'"session":"s2"')
    assert forged != data
    with pytest.raises(SealingError):
        open_model(forged, parties["alice"])
    body = bytearray(data)
    body[-5] ^= 1
    with pytest.raises(SealingError):
        open_model(bytes(body), parties["alice"])
    for bad in (b"", b"TFMODEL\x00\x02" + data[9:], data[:12], data[:9] + b"\xff\xff\xff\xff"):
        with pytest.raises(ParseError):
            read_model_header(bad)


def _log(ca: FederationCA, final: dict) -> tuple[list, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    ident = WorkloadIdentity(
        role="aggregator",
        party=None,
        measurement=MEASUREMENT,
        agreement_digest=AGREEMENT,
        tee="emulated-sgx",
        emulated=True,
    )
    cert = ca.issue(key.public_key(), ident, now=datetime.now(UTC))
    log = ProvenanceLog(key)
    initial = {k: np.zeros_like(v) for k, v in ARRAYS.items()}
    log.start(
        session="s1",
        agreement_digest=AGREEMENT,
        aggregator_measurement=MEASUREMENT,
        aggregator_certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
        package_digest="ef" * 32,
        initial_digest=arrays_digest(initial),
    )
    log.record_round(
        1,
        clients=[{"party": "alice", "measurement": "12" * 32}],
        update_digests={"alice": "34" * 32},
        aggregate_digest=arrays_digest(final),
        metrics={"eval_accuracy": 0.9},
    )
    log.finish()
    return list(log.entries), cert


def test_verify_model_against_provenance(parties: dict[str, PartyKeys], tmp_path: Path) -> None:
    ca = FederationCA.generate("study", now=datetime.now(UTC))
    entries, _ = _log(ca, ARRAYS)
    data = model_bytes(parties, "alice")
    checked = verify_model(data, entries, ca.certificate, expected_agreement_digest=AGREEMENT)
    assert checked.rounds == 1 and checked.aggregator.measurement == MEASUREMENT
    other = {k: v + 1 for k, v in ARRAYS.items()}
    with pytest.raises(ProvenanceError, match="final digest"):
        verify_model(model_bytes(parties, "alice", arrays=other), entries, ca.certificate)
    with pytest.raises(ProvenanceError, match="certificate"):
        verify_model(
            data, entries, FederationCA.generate("study", now=datetime.now(UTC)).certificate
        )
    with pytest.raises(VerificationError, match="another agreement"):
        verify_model(data, entries, ca.certificate, expected_agreement_digest="00" * 32)
    tampered = [
        entries[0],
        entries[1].model_copy(update={"metrics": {"eval_accuracy": 1.0}}),
        entries[2],
    ]
    with pytest.raises(ProvenanceError):
        verify_model(data, tampered, ca.certificate)


def test_cli_verify_and_open(
    parties: dict[str, PartyKeys], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "home"))
    parties["alice"].save(tmp_path / "home" / "parties" / "alice")
    ca = FederationCA.generate("study", now=datetime.now(UTC))
    entries, _ = _log(ca, ARRAYS)
    model, prov, ca_pem = tmp_path / "m.model", tmp_path / "p.jsonl", tmp_path / "ca.pem"
    model.write_bytes(model_bytes(parties, "alice"))
    save_provenance(entries, prov)
    ca_pem.write_bytes(ca.certificate_pem())
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test"""

    fl_cmds.register(app)
    runner = CliRunner()
    out = runner.invoke(app, ["model", "verify", str(model), str(prov), "--ca", str(ca_pem)])
    assert out.exit_code == 0, out.output
    assert "verified" in out.output and "1 rounds" in out.output and "EMULATED" in out.output
    target = tmp_path / "out.safetensors"
    out = runner.invoke(app, ["model", "open", str(model), "--party", "alice", "-o", str(target)])
    assert out.exit_code == 0, out.output
    from teeflow.fl.arrays import decode_arrays

    assert arrays_digest(decode_arrays(target.read_bytes())) == arrays_digest(ARRAYS)
    prov.write_text(prov.read_text().replace('"eval_accuracy":0.9', '"eval_accuracy":0.99'))
    out = runner.invoke(app, ["model", "verify", str(model), str(prov), "--ca", str(ca_pem)])
    assert out.exit_code != 0 and isinstance(out.exception, VerificationError)
    assert json.loads(prov.read_text().splitlines()[1])["metrics"]["eval_accuracy"] == 0.99


def test_package_build_is_deterministic(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test"""

    fl_cmds.register(app)
    example = Path(__file__).resolve().parents[2] / "examples" / "mnist"
    outs = []
    for name in ("a.tar", "b.tar"):
        result = CliRunner().invoke(
            app, ["package", "build", str(example), "-o", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
        outs.append(result.output.split()[0])
    assert outs[0] == outs[1] and len(outs[0]) == 64
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
