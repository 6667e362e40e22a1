"""Provenance log: build, save/load, verify, and every tamper class."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeflow.errors import FLError, ParseError, VerificationError
from teeflow.fl.provenance import (
    ClientRecord,
    ProvenanceEntry,
    ProvenanceError,
    embedded_certificate,
    entry_hash,
    load_provenance,
    verify_provenance,
)
from teeflow.fl.provenance_log import ProvenanceLog

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def d(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


def make_cert(key: ec.EllipticCurvePrivateKey, cn: str = "aggregator") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


KEY = ec.generate_private_key(ec.SECP256R1())
CERT = make_cert(KEY)
COMMON: dict[str, Any] = {
    "session": "mnist-1",
    "agreement_digest": d("agreement"),
    "aggregator_measurement": d("aggregator").hex(),
    "package_digest": d("package"),
}


def start(log: ProvenanceLog, cert: x509.Certificate = CERT) -> None:
    log.start(**COMMON, aggregator_certificate=pem(cert), initial_digest=d("model-0"))


def build(rounds: int = 2, *, final: bool = True) -> ProvenanceLog:
    log = ProvenanceLog(KEY)
    start(log)
    for r in range(1, rounds + 1):
        log.record_round(
            r,
            clients=[
                ClientRecord(party="hospital-a", measurement=d("client").hex()),
                {"party": "hospital-b", "measurement": d("client").hex()},
            ],
            update_digests={"hospital-a": d(f"u{r}a"), "hospital-b": d(f"u{r}b").hex()},
            aggregate_digest=d(f"model-{r}"),
            metrics={"train_loss": 1.0 / r, "accuracy": 0.5 + r / 10, "num_examples": 958},
        )
    if final:
        log.finish(metrics={"accuracy": 0.7})
    return log


def resign(
    entry: ProvenanceEntry, key: ec.EllipticCurvePrivateKey = KEY, **changes: Any
) -> ProvenanceEntry:
    """Apply changes, recompute the hash and sign — a forger with (or without) the key."""
    from teeflow.fl.provenance import PROVENANCE_DOMAIN
    from teeflow.hazmat.ecdsa import der_to_raw_signature

    e = entry.model_copy(update=changes)
    h = entry_hash(e)
    sig = key.sign(PROVENANCE_DOMAIN + bytes.fromhex(h), ec.ECDSA(hashes.SHA256()))
    return e.model_copy(update={"hash": h, "signature": der_to_raw_signature(sig).hex()})


def test_valid_log_verifies_with_key_or_certificate(tmp_path: Path) -> None:
    log = build()
    entries = list(log.entries)
    assert [e.kind for e in entries] == ["session-start", "round", "round", "final"]
    assert entries[-1].aggregate_digest == d("model-2").hex() and entries[-1].round == 2
    verify_provenance(entries, KEY.public_key(), expected_final_digest=d("model-2"))
    verify_provenance(entries, CERT, expected_final_digest=d("model-2").hex())
    assert embedded_certificate(entries) == CERT
    path = tmp_path / "provenance.jsonl"
    log.save(path)
    loaded = load_provenance(path)
    assert loaded == entries
    verify_provenance(loaded, CERT, expected_final_digest=d("model-2"))
    assert len(path.read_text().splitlines()) == 4


def test_resume_continues_the_chain() -> None:
    partial = build(1, final=False)
    resumed = ProvenanceLog(KEY, partial.entries)
    assert not resumed.needs_handover  # same key (e.g. a test harness): no hand-over needed
    resumed.record_round(
        2,
        clients=[{"party": "hospital-a", "measurement": "ab" * 32}],
        update_digests={"hospital-a": d("x")},
        aggregate_digest=d("m2"),
    )
    resumed.finish()
    verify_provenance(resumed.entries, CERT, expected_final_digest=d("m2"))
    # another key (a restarted instance) must hand over before it may append
    other = ec.generate_private_key(ec.SECP256R1())
    continued = ProvenanceLog(other, partial.entries)
    assert continued.needs_handover
    with pytest.raises(FLError, match="append a handover first"):
        continued.finish()


def expect(
    entries: list[ProvenanceEntry], seq: int | None, match: str, key: Any = None, **kw: Any
) -> None:
    with pytest.raises(ProvenanceError, match=match) as info:
        verify_provenance(entries, key if key is not None else KEY.public_key(), **kw)
    assert info.value.seq == seq
    assert isinstance(info.value, VerificationError)


def test_content_tamper_breaks_the_hash() -> None:
    base = list(build().entries)
    cases = {
        "metrics": {"metrics": {"train_loss": 0.0001, "accuracy": 0.99, "num_examples": 958}},
        "aggregate": {"aggregate_digest": d("evil").hex()},
        "clients": {
            "clients": (
                ClientRecord(party="hospital-a", measurement="00" * 32),
                ClientRecord(party="hospital-b", measurement="00" * 32),
            )
        },
        "update": {"update_digests": {"hospital-a": d("evil").hex()}},
    }
    for change in cases.values():
        entries = list(base)
        entries[1] = entries[1].model_copy(update=change)
        expect(entries, 2, "hash does not match")


def test_rehashed_but_unsigned_or_foreign_signature() -> None:
    entries = list(build().entries)
    e = entries[2].model_copy(update={"metrics": {"accuracy": 1.0}})
    entries[2] = e.model_copy(update={"hash": entry_hash(e)})
    expect(entries, 3, "prev_hash|signature")  # signature fails at 3 (4's prev_hash later)
    entries = list(build().entries)
    entries[2] = resign(
        entries[2], ec.generate_private_key(ec.SECP256R1()), metrics={"accuracy": 1.0}
    )
    expect(entries, 3, "signature")
    entries = list(build().entries)
    entries[3] = entries[3].model_copy(update={"signature": "00" * 64})
    expect(entries, 4, "signature")


def test_structural_tamper_classes() -> None:
    base = list(build(3).entries)  # seq 1 start, 2..4 rounds, 5 final
    expect([], None, "empty")
    expect(base[:2] + base[3:], 3, "sequence")  # dropped round
    expect([base[0], base[2], base[1], *base[3:]], 2, "sequence")  # reordered
    expect([*base[:3], base[2], *base[3:]], 4, "sequence")  # duplicated
    expect(base[1:], 1, "certificate")  # session-start removed
    expect(base[:4], 4, "final", expected_final_digest=d("model-3"))  # tail truncated
    expect(base, 5, "model's digest", expected_final_digest=d("other"))
    # a key holder re-signing still cannot break the rules
    forged = [*base[:2], resign(base[2], round=3), *base[3:]]
    expect(forged, 3, "round 3 after round 1")
    forged = [*base[:2], resign(base[2], agreement_digest=d("other").hex()), *base[3:]]
    expect(forged, 3, "agreement_digest changed")
    forged = [*base[:2], resign(base[2], package_digest=d("other").hex()), *base[3:]]
    expect(forged, 3, "package_digest changed")
    forged = [*base[:2], resign(base[2], aggregator_measurement="11" * 32), *base[3:]]
    expect(forged, 3, "aggregator_measurement changed")
    forged = [*base[:4], resign(base[4], aggregate_digest=d("swap").hex())]
    expect(forged, 5, "final digest differs")
    forged = [*base[:2], resign(base[2], prev_hash="00" * 32), *base[3:]]
    expect(forged, 3, "prev_hash")
    forged = [*base, resign(base[4], seq=6, prev_hash=base[4].hash)]
    expect(forged, 6, "after the final")
    forged = [
        *base[:2],
        resign(
            base[2],
            kind="session-start",
            round=None,
            clients=(),
            update_digests={},
            aggregator_certificate=pem(CERT),
        ),
        *base[3:],
    ]
    expect(forged, 3, "session-start")
    forged = [*base[:2], resign(base[2], update_digests={"intruder": d("x").hex()}), *base[3:]]
    expect(forged, 3, "participating")


def test_wrong_key_or_certificate() -> None:
    entries = list(build().entries)
    other = ec.generate_private_key(ec.SECP256R1())
    expect(entries, 1, "not the given key", key=other.public_key())
    expect(entries, 1, "not the given one", key=make_cert(KEY, "someone-else"))
    # a log signed by another key but embedding the genuine certificate
    entries = [resign(e, other) for e in entries]
    expect(entries, 1, "signature", key=CERT)


def test_append_refuses_invalid_entries() -> None:
    log = ProvenanceLog(KEY)
    with pytest.raises(FLError, match="session-start"):
        log.record_round(1, clients=[], update_digests={}, aggregate_digest=d("m"))
    with pytest.raises(FLError, match="certificate"):
        log.append("session-start", **COMMON, aggregate_digest=d("m"))
    start(log)
    with pytest.raises(FLError, match="round 2 after round 0"):
        log.record_round(
            2,
            clients=[{"party": "a", "measurement": "aa" * 32}],
            update_digests={"a": d("u")},
            aggregate_digest=d("m"),
        )
    with pytest.raises(FLError):
        log.record_round(
            1,
            clients=[{"party": "A B", "measurement": "aa" * 32}],
            update_digests={},
            aggregate_digest=d("m"),
        )
    with pytest.raises(FLError, match="32 bytes"):
        log.record_round(
            1,
            clients=[{"party": "a", "measurement": "aa" * 32}],
            update_digests={"a": b"short"},
            aggregate_digest=d("m"),
        )
    with pytest.raises(FLError, match="not representable"):
        log.record_round(
            1,
            clients=[{"party": "a", "measurement": "aa" * 32}],
            update_digests={"a": d("u")},
            aggregate_digest=d("m"),
            metrics={"loss": float("nan")},
        )
    assert len(log.entries) == 1
    with pytest.raises(FLError, match="session-start must be exactly the first"):
        start(log)
    with pytest.raises(FLError, match="P-256"):
        ProvenanceLog(ec.generate_private_key(ec.SECP384R1()))


def test_load_is_strict(tmp_path: Path) -> None:
    log = build()
    path = tmp_path / "p.jsonl"
    log.save(path)
    lines = path.read_text().splitlines()
    cases = {
        "not json": "{oops",
        "extra key": json.dumps({**json.loads(lines[1]), "extra": 1}),
        "duplicate key": lines[1][:-1] + ',"seq":2}',
        "bad hex": lines[1].replace(json.loads(lines[1])["hash"], "zz" * 32),
        "not utf8": "\udcff",
    }
    for text in cases.values():
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(("\n".join([lines[0], text]) + "\n").encode("utf-8", "surrogateescape"))
        with pytest.raises(ParseError, match="line 2"):
            load_provenance(bad)
    with pytest.raises(ParseError, match="cannot read"):
        load_provenance(tmp_path / "missing.jsonl")


# -- hand-overs (an aggregator restart) ----------------------------------------------------

KEY2 = ec.generate_private_key(ec.SECP256R1())
CERT2 = make_cert(KEY2, "aggregator-2")
M2 = d("aggregator-v2").hex()


def certify_only(*good: x509.Certificate) -> Any:
    """A stand-in for the federation CA check: accept exactly ``good``."""

    def check(cert: x509.Certificate, entry: ProvenanceEntry) -> None:
        if cert not in good:
            raise VerificationError("not issued by the federation CA")

    return check


def handed_over(certify: Any = None) -> ProvenanceLog:
    """Rounds 1 by KEY; restart: hand-over to KEY2 (measurement M2); round 2; final."""
    first = build(1, final=False)
    log = ProvenanceLog(KEY2, first.entries, certify=certify or certify_only(CERT2))
    log.handover(aggregator_certificate=pem(CERT2), aggregator_measurement=M2)
    log.record_round(
        2,
        clients=[{"party": "hospital-a", "measurement": d("client").hex()}],
        update_digests={"hospital-a": d("u2a")},
        weights={"hospital-a": 500},
        aggregate_digest=d("model-2"),
    )
    log.finish()
    return log


def test_handover_opens_a_segment_signed_by_the_new_key() -> None:
    entries = list(handed_over().entries)
    assert [e.kind for e in entries] == ["session-start", "round", "handover", "round", "final"]
    h = entries[2]
    assert h.round == 1 and h.aggregate_digest == d("model-1").hex()
    assert h.aggregator_measurement == M2 and entries[3].aggregator_measurement == M2
    certs = verify_provenance(
        entries, CERT, expected_final_digest=d("model-2"), certify=certify_only(CERT2)
    )
    assert certs == (CERT, CERT2)
    assert entries[3].weights == {"hospital-a": 500}


def test_handover_certificates_must_pass_the_ca_check() -> None:
    """Attack (P): a hand-over to a key the federation CA never certified is refused."""
    entries = list(handed_over().entries)
    expect(entries, 3, "hand-over certificate not checked", key=CERT)
    expect(entries, 3, "hand-over certificate: not issued", key=CERT, certify=certify_only())
    # a forger appends its own hand-over (self-signed certificate) and a round to a real log
    forger = ec.generate_private_key(ec.SECP256R1())
    fake = make_cert(forger, "aggregator")
    base = list(build(1, final=False).entries)
    log = ProvenanceLog(forger, base, certify=lambda c, e: None)  # the forger's own checker
    log.handover(aggregator_certificate=pem(fake), aggregator_measurement=d("aggregator").hex())
    log.record_round(
        2,
        clients=[{"party": "hospital-a", "measurement": d("client").hex()}],
        update_digests={"hospital-a": d("evil")},
        aggregate_digest=d("evil-model"),
    )
    log.finish()
    expect(
        list(log.entries),
        3,
        "hand-over certificate: not issued",
        key=CERT,
        certify=certify_only(CERT2),
    )


def test_handover_rules() -> None:
    base = list(handed_over().entries)
    ok = certify_only(CERT2)
    # the old key keeps signing after the hand-over
    forged = [*base[:3], resign(base[3], KEY), *[resign(e, KEY2) for e in base[4:]]]
    expect(forged, 4, "signature", key=CERT, certify=ok)
    # hand-over signed by the old key (the new key did not sign it)
    expect([*base[:2], resign(base[2], KEY), *base[3:]], 3, "signature", key=CERT, certify=ok)
    bad = {
        "does not name the certificate": {"handover_from": "00" * 32},
        "hand-over names round 2": {"round": 2},
        "last round's aggregate": {"aggregate_digest": d("other").hex()},
        "needs the aggregator certificate": {"aggregator_certificate": None},
        "carries no clients": {"clients": (ClientRecord(party="x", measurement="aa" * 32),)},
        "same key": {"aggregator_certificate": pem(CERT), "handover_from": base[2].handover_from},
    }
    for match, change in bad.items():
        entries = [*base[:2], resign(base[2], KEY2, **change), *base[3:]]
        expect(entries, 3, match, key=CERT, certify=certify_only(CERT, CERT2))
    # a measurement change outside a hand-over
    forged = [*base[:3], resign(base[3], KEY2, aggregator_measurement="22" * 32), *base[4:]]
    expect(forged, 4, "measurement changed without a hand-over", key=CERT, certify=ok)
    # no hand-over before any round, none after the final
    log = ProvenanceLog(KEY2, list(build(0, final=False).entries), certify=ok)
    with pytest.raises(FLError, match="committed round"):
        log.handover(aggregator_certificate=pem(CERT2), aggregator_measurement=M2)
    log = ProvenanceLog(KEY, list(build(1, final=True).entries), certify=ok)
    with pytest.raises(FLError, match="committed round"):
        log.handover(aggregator_certificate=pem(CERT2), aggregator_measurement=M2)
    # the hand-over certificate must be the signing key's
    log = ProvenanceLog(KEY2, list(build(1, final=False).entries), certify=ok)
    with pytest.raises(FLError, match="signing key"):
        log.handover(aggregator_certificate=pem(CERT), aggregator_measurement=M2)


def test_round_weight_fields() -> None:
    base = list(build(1).entries)
    cases = {
        "weights must be of aggregated updates": {"weights": {"intruder": 5}},
        "clipped parties": {"clipped": ("hospital-a",)},
    }
    for match, change in cases.items():
        expect([base[0], resign(base[1], **change), *base[2:]], 2, match)
    ok = resign(base[1], weights={"hospital-a": 7, "hospital-b": 9}, clipped=("hospital-b",))
    entries = [base[0], ok, resign(base[2], prev_hash=ok.hash)]
    verify_provenance(entries, CERT)
