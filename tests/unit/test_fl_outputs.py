"""The final model sealed to the output recipients; verify against provenance; open; CLI."""

from __future__ import annotations

import json
import stat
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
from teeflow.fl.provenance import ProvenanceError, save_provenance
from teeflow.fl.provenance_log import ProvenanceLog
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
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # plaintext: owner only
    target.chmod(0o644)  # an existing world-readable file is replaced by a 0600 one
    out = runner.invoke(app, ["model", "open", str(model), "--party", "alice", "-o", str(target)])
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
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
    for name, check in (("a.tar", []), ("b.tar", ["--no-check"])):
        result = CliRunner().invoke(
            app, ["package", "build", str(example), "-o", str(tmp_path / name), *check]
        )
        assert result.exit_code == 0, result.output
        outs.append(result.output.split()[0])
    assert outs[0] == outs[1] and len(outs[0]) == 64
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


# -- forged provenance and aggregator restarts ------------------------------------------------


def _cert(
    ca: FederationCA,
    key: ec.EllipticCurvePrivateKey,
    role: str = "aggregator",
    measurement: str = MEASUREMENT,
) -> str:
    ident = WorkloadIdentity(
        role=role,
        party="bob" if role == "client" else None,
        measurement=measurement,
        agreement_digest=AGREEMENT,
        tee="emulated-sgx",
        emulated=True,
    )
    cert = ca.issue(key.public_key(), ident, now=datetime.now(UTC))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _signed_log(key: ec.EllipticCurvePrivateKey, cert_pem: str, final: dict) -> list:
    """A complete one-round log for ``final`` signed by ``key`` under ``cert_pem``."""
    log = ProvenanceLog(key)
    log.start(
        session="s1",
        agreement_digest=AGREEMENT,
        aggregator_measurement=MEASUREMENT,
        aggregator_certificate=cert_pem,
        package_digest="ef" * 32,
        initial_digest=arrays_digest({k: np.zeros_like(v) for k, v in ARRAYS.items()}),
    )
    log.record_round(
        1,
        clients=[{"party": "alice", "measurement": "12" * 32}],
        update_digests={"alice": "34" * 32},
        aggregate_digest=arrays_digest(final),
    )
    log.finish()
    return list(log.entries)


def _rechain(entries: list, key: ec.EllipticCurvePrivateKey, cert_pem: str) -> list:
    """The log with ``cert_pem`` in its session-start entry, every entry re-hashed, re-chained
    and signed by ``key`` (what a forger holding only ``key`` can produce)."""
    from cryptography.hazmat.primitives import hashes

    from teeflow.fl.provenance import PROVENANCE_DOMAIN, entry_hash
    from teeflow.hazmat.ecdsa import der_to_raw_signature

    out: list = []
    for i, old in enumerate(entries):
        change = {"prev_hash": out[-1].hash if out else old.prev_hash}
        if i == 0:
            change["aggregator_certificate"] = cert_pem
        e = old.model_copy(update=change)
        h = entry_hash(e)
        sig = key.sign(PROVENANCE_DOMAIN + bytes.fromhex(h), ec.ECDSA(hashes.SHA256()))
        out.append(e.model_copy(update={"hash": h, "signature": der_to_raw_signature(sig).hex()}))
    return out


def test_forged_provenance_signed_by_an_uncertified_key_fails(
    parties: dict[str, PartyKeys],
) -> None:
    """Attack (P): a party forges a model and a provenance log. Whatever key signs it - its own
    (self-signed or another CA's certificate), a federation *client* certificate it obtained
    for its own client - ``model verify`` refuses it with the exact reason."""
    ca = FederationCA.generate("study", now=datetime.now(UTC))
    evil = {k: v * 0 + 7 for k, v in ARRAYS.items()}
    forged_model = model_bytes(parties, "alice", arrays=evil)
    forger = ec.generate_private_key(ec.SECP256R1())
    other_ca = FederationCA.generate("study", now=datetime.now(UTC))
    cases = {
        "another CA": _cert(other_ca, forger),
        "client role": _cert(ca, forger, role="client"),
        "unlogged measurement": _cert(ca, forger, measurement="99" * 32),
    }
    for label, cert_pem in cases.items():
        entries = _signed_log(forger, cert_pem, evil)
        with pytest.raises(
            ProvenanceError, match=r"^provenance entry 1: aggregator certificate: "
        ) as info:
            verify_model(forged_model, entries, ca.certificate)
        assert info.value.seq == 1, label
    # the genuine session-start certificate, but entries signed by the forger's key
    genuine = ec.generate_private_key(ec.SECP256R1())
    entries = _rechain(_signed_log(forger, _cert(ca, forger), evil), forger, _cert(ca, genuine))
    with pytest.raises(ProvenanceError, match=r"^provenance entry 1: signature is invalid$"):
        verify_model(forged_model, entries, ca.certificate)


def test_restart_handover_verifies_and_forged_handover_fails(
    parties: dict[str, PartyKeys],
) -> None:
    """An aggregator restart: the new instance's CA-issued certificate takes over the log
    (hand-over entry) and ``verify_model`` checks each segment's certificate; a hand-over to
    an uncertified key, or to a federation client certificate, fails at that entry."""
    ca = FederationCA.generate("study", now=datetime.now(UTC))
    key1, key2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    first = _signed_log(key1, _cert(ca, key1), ARRAYS)[:2]  # session-start, round 1
    final = {k: v + 1 for k, v in ARRAYS.items()}
    data = model_bytes(parties, "alice", arrays=final)

    def resumed(key: ec.EllipticCurvePrivateKey, cert_pem: str) -> list:
        log = ProvenanceLog(key, first, certify=lambda c, e: None)
        log.handover(aggregator_certificate=cert_pem, aggregator_measurement=MEASUREMENT)
        log.record_round(
            2,
            clients=[{"party": "alice", "measurement": "12" * 32}],
            update_digests={"alice": "56" * 32},
            aggregate_digest=arrays_digest(final),
        )
        log.finish()
        return list(log.entries)

    checked = verify_model(data, resumed(key2, _cert(ca, key2)), ca.certificate)
    assert checked.rounds == 2 and checked.handovers == 1 and len(checked.aggregators) == 2
    forger = ec.generate_private_key(ec.SECP256R1())
    other_ca = FederationCA.generate("study", now=datetime.now(UTC))
    for cert_pem in (_cert(other_ca, forger), _cert(ca, forger, role="client")):
        with pytest.raises(ProvenanceError, match=r"^provenance entry 3: hand-over certificate: "):
            verify_model(data, resumed(forger, cert_pem), ca.certificate)


def test_verify_model_checks_the_encrypted_payload(
    parties: dict[str, PartyKeys], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (issue 14, item 7): a model whose encrypted payload is corrupt used to verify.
    A bit flip inside the ciphertext fails the AEAD tag check with a recipient's key (library
    and CLI, which finds the recipient's keys in TEEFLOW_HOME); a truncated or extended
    payload and a payload swapped in from another model fail even without a key."""
    ca = FederationCA.generate("study", now=datetime.now(UTC))
    entries, _ = _log(ca, ARRAYS)
    data = model_bytes(parties, "alice")
    ok = verify_model(data, entries, ca.certificate, party_keys=parties["alice"])
    assert ok.payload_authenticated
    assert not verify_model(data, entries, ca.certificate).payload_authenticated
    flipped = bytearray(data)
    flipped[-40] ^= 1
    with pytest.raises(SealingError):
        verify_model(bytes(flipped), entries, ca.certificate, party_keys=parties["alice"])
    with pytest.raises(VerificationError, match="truncated or extended"):
        verify_model(data[:-16], entries, ca.certificate)
    with pytest.raises(VerificationError, match="truncated or extended"):
        verify_model(data + b"\0" * 16, entries, ca.certificate)
    header = read_model_header(data)
    swapped = data[: header.body_offset] + seal_payload_for_other_session(data)
    with pytest.raises(VerificationError, match="not bound"):
        verify_model(swapped, entries, ca.certificate)
    # the CLI: keys found in TEEFLOW_HOME → the corrupt payload fails
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "home"))
    parties["alice"].save(tmp_path / "home" / "parties" / "alice")
    model, prov, ca_pem = tmp_path / "m.model", tmp_path / "p.jsonl", tmp_path / "ca.pem"
    save_provenance(entries, prov)
    ca_pem.write_bytes(ca.certificate_pem())
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test"""

    fl_cmds.register(app)
    runner = CliRunner()
    model.write_bytes(data)
    out = runner.invoke(
        app, ["model", "verify", str(model), str(prov), "--ca", str(ca_pem), "--json"]
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["payload_authenticated"] and doc["payload_authenticated_by"] == "alice"
    model.write_bytes(bytes(flipped))
    out = runner.invoke(app, ["model", "verify", str(model), str(prov), "--ca", str(ca_pem)])
    assert out.exit_code != 0 and isinstance(out.exception, SealingError)


def seal_payload_for_other_session(model: bytes) -> bytes:
    """The sealed body of a model of another session (same size, other binding)."""
    from teeflow.sealing import generate_key, seal

    header = read_model_header(model)
    body_len = len(model) - header.body_offset
    sealed = seal(b"\0" * header.arrays_size, generate_key(), aad=b"another session")
    assert len(sealed) == body_len
    return sealed
