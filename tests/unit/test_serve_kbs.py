"""Issue 12 at the KBS: the serving key of an FL session (``fl/serve-key/<session>``) goes
only to attested aggregators and ``serve`` workloads with their agreed measurements, and
signed usage batches land in the audit log (service level, memory store)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from test_kbs_service import AGG_MR, CLAIMS, CLIENT_MR, OTHER_MR, PARTIES, PKG, Harness
from test_kbs_service import agreement_doc as base_doc

from teeflow.kbs.api.problems import InvalidRequest, PolicyDeny
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode
from teeflow.kbs.policy.generated import serve_key_path
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.service.release import open_jwe
from teeflow.kbs.service.usage import (
    UsageBatch,
    UsageReport,
    batch_of,
    usage_of,
    usage_signing_input,
)
from teeflow.kbs.store import open_store

SERVE_MR = bytes.fromhex("5e" * 32)
SESSION = "study-1"
KEY = serve_key_path(SESSION)
SERVE_CLAIMS: dict[str, Any] = {"role": "serve", "resources": [KEY]}
AGG_CLAIMS: dict[str, Any] = {"role": "aggregator", "package_digest": PKG,
                              "resources": [KEY], "recipients": ["alice"]}


def serving_doc(**changes: Any) -> dict[str, Any]:
    doc = base_doc(version=2, **changes)
    doc["parties"]["alice"]["roles"] = ["data-owner", "model-owner"]
    doc["workloads"]["serve"] = {"sgx": {"mrenclave": [SERVE_MR.hex()]}}
    doc["outputs"] = {"model": ["alice", "bob"], "serve": ["alice"]}
    return doc


@pytest.fixture
def h() -> Iterator[Harness]:
    store = open_store("memory://", bytes(32))
    harness = Harness(store)
    doc = serving_doc(previous=digest(harness.signed.agreement).hex())
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for name in ("alice", "bob"):
        signed = signed.signed_by(PARTIES[name])
    harness.service.submit_agreement(signed)
    harness.signed = signed
    try:
        yield harness
    finally:
        store.close()


def _key(h: Harness, claims: dict[str, Any], mr: bytes, party: str) -> bytes:
    w = h.attest(claims=claims, measurement=mr, enroll={"party": party})
    return open_jwe(h.service.get_resource(h.session(w), KEY), w.key)


def test_serve_key_goes_to_the_aggregator_and_the_agreed_serve_workload(h: Harness) -> None:
    sealed_with = _key(h, AGG_CLAIMS, AGG_MR, "carol")
    assert _key(h, SERVE_CLAIMS, SERVE_MR, "alice") == sealed_with


def test_serve_key_refused_to_other_measurements_and_roles(h: Harness) -> None:
    """Attack: a serve workload with another measurement, or a client, asks for the key."""
    from teeflow.kbs.api.problems import AttestationFailed

    with pytest.raises(AttestationFailed):  # not an agreed serve measurement at all
        h.attest(claims=SERVE_CLAIMS, measurement=OTHER_MR, enroll={"party": "alice"})
    w = h.attest(claims={**CLAIMS, "resources": [KEY]}, measurement=CLIENT_MR)
    with pytest.raises(PolicyDeny):
        h.service.get_resource(h.session(w), KEY)
    assert any("role client may not receive fl/serve-key/" in r
               for e in h.denies("release") for r in e.reasons)
    h.verify_audit()


def _report(w: Any, batch: UsageBatch, key: Any = None) -> UsageReport:
    private = (key or w.key).private_key
    sig = private.sign(usage_signing_input(batch), ec.ECDSA(hashes.SHA256()))
    return UsageReport(batch=batch, signature=b64url_encode(sig))


# party names that look like secret audit-data keys ("private-...", "key") are fine: they
# are values in the entry, never keys
BATCH = UsageBatch(model="mnist", model_digest="ab" * 32, seq=0,
                   counts={"bob": 7, "private-clinic": 0}, refused={"carol": 1, "key": 0})


def test_usage_batch_is_verified_and_audited(h: Harness) -> None:
    w = h.attest(claims=SERVE_CLAIMS, measurement=SERVE_MR, enroll={"party": "alice"})
    result = h.service.record_usage(h.session(w), _report(w, BATCH))
    entry = [e for e in h.store.audit_entries(0, 10_000) if e.kind == "usage"][-1]
    assert entry.seq == result["seq"] and entry.subject == f"serve:{'ab' * 32}"
    assert usage_of(entry.data) == ({"bob": 7, "private-clinic": 0}, {"carol": 1, "key": 0})
    assert entry.data["requests"] == 7
    # the entry holds what the workload signed: its signature re-verifies from the log
    signed = batch_of(entry.data)
    assert signed == BATCH
    w.key.private_key.public_key().verify(
        b64url_decode(entry.data["signature"]), usage_signing_input(signed),
        ec.ECDSA(hashes.SHA256()))
    assert entry.data["measurement"] == SERVE_MR.hex() and entry.data["party"] == "alice"
    h.verify_audit()


def test_usage_refused_from_other_roles_and_with_a_foreign_signature(h: Harness) -> None:
    """Attack: a client workload inflates/erases usage; a batch signed by another key."""
    client = h.attest(claims=CLAIMS, measurement=CLIENT_MR)
    with pytest.raises(PolicyDeny):
        h.service.record_usage(h.session(client), _report(client, BATCH))
    w = h.attest(claims=SERVE_CLAIMS, measurement=SERVE_MR, enroll={"party": "alice"})
    with pytest.raises(InvalidRequest):
        h.service.record_usage(h.session(w), _report(w, BATCH, key=client.key))
    changed = BATCH.model_copy(update={"counts": {"bob": 1}})
    good = _report(w, BATCH)
    with pytest.raises(InvalidRequest):
        h.service.record_usage(h.session(w), UsageReport(batch=changed,
                                                         signature=good.signature))
    assert [e.reasons for e in h.denies("usage")]
    h.verify_audit()
