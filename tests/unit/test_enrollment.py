"""Enrollment tokens (teeflow.kbs.policy.enrollment): format, signature, policy, binding.

The KBS-side checks at attestation (uses, revocation, party claims) are in
test_kbs_enrollment.py; these are the pure document rules.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey

from teeflow.errors import ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.canonical import b64url_encode, canonical_json
from teeflow.kbs.policy.enrollment import (
    MAX_ENROLLMENT_CHARS,
    binding_problems,
    issue_enrollment,
    jwk_thumbprint,
    read_enrollment,
    read_revocation,
    sign_revocation,
    use_key,
    verify_enrollment,
    verify_revocation,
)
from teeflow.kbs.policy.parties import PartyKeys

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEYS = {n: PartyKeys.generate(n) for n in ("alice", "bob", "carol")}
ROLES = {"alice": ["data-owner"], "bob": ["data-owner"], "carol": ["aggregator-operator"]}


def agreement(federation: str = "study") -> FederationAgreement:
    return FederationAgreement.from_mapping({
        "federation": federation,
        "version": 1,
        "parties": {n: {"sign_key": KEYS[n].public().sign_key,
                        "recipient_key": KEYS[n].public().recipient_key,
                        "roles": ROLES[n]} for n in KEYS},
        "workloads": {"client": {"sgx": {"mrenclave": ["aa" * 32]}}},
        "update_quorum": {"k": 1},
    })


def token(party: str = "alice", **kw: Any) -> str:
    args: dict[str, Any] = {"federation": "study", "role": "client", "now": NOW,
                            "expires": timedelta(hours=1)}
    args.update(kw)
    return issue_enrollment(KEYS[party], **args)


def _parts(t: str) -> list[str]:
    return t.split(".")


def test_round_trip_and_canonical_format() -> None:
    wkey = ECKey.generate_key("P-256", private=True)
    t = token(session="s1", uses=3, workload_key=wkey.as_dict(private=False))
    h, _p, _s = _parts(t)
    assert json.loads(base64.urlsafe_b64decode(h + "==")) == {
        "alg": "Ed25519", "typ": "teeflow-enrollment+jwt"}
    e = verify_enrollment(t, agreement(), now=NOW)
    assert (e.party, e.role, e.fed, e.session, e.uses, e.v) == ("alice", "client", "study",
                                                                "s1", 3, 1)
    assert e.exp - e.iat == 3600 and e.cnf is not None
    assert e.cnf.jkt == jwk_thumbprint(wkey) == wkey.thumbprint()
    assert use_key(e.party, e.jti) == f"alice/{e.jti}"
    assert len(t) < 600  # compact
    # unique ids
    assert read_enrollment(token()).jti != read_enrollment(token()).jti


def test_forged_signature_and_other_party_key_refused() -> None:
    t = token()
    h, p, _ = _parts(t)
    # bob signs a payload that says alice: bob's key is not alice's
    forged = token("bob")
    with pytest.raises(VerificationError):
        verify_enrollment(f"{h}.{p}.{_parts(forged)[2]}", agreement(), now=NOW)
    bad_sig = b64url_encode(bytes(64))
    with pytest.raises(VerificationError):
        verify_enrollment(f"{h}.{p}.{bad_sig}", agreement(), now=NOW)


def test_payload_tamper_refused() -> None:
    h, p, s = _parts(token())
    doc = json.loads(base64.urlsafe_b64decode(p + "=="))
    doc["party"] = "bob"
    p2 = b64url_encode(canonical_json(doc))
    with pytest.raises(VerificationError):
        verify_enrollment(f"{h}.{p2}.{s}", agreement(), now=NOW)


@pytest.mark.parametrize("mutate", [
    lambda doc: {**doc, "extra": 1},                       # unknown member
    lambda doc: {**doc, "v": 2},                           # other version
    lambda doc: {**doc, "uses": 0},                        # empty budget
    lambda doc: {**doc, "exp": doc["iat"]},                # empty window
    lambda doc: {**doc, "role": "admin"},                  # unknown role
    lambda doc: {k: v for k, v in doc.items() if k != "cnf"},  # member missing
])
def test_malformed_payloads_are_parse_errors(mutate: Any) -> None:
    h, p, s = _parts(token())
    doc = json.loads(base64.urlsafe_b64decode(p + "=="))
    p2 = b64url_encode(canonical_json(mutate(doc)))
    with pytest.raises(ParseError):
        read_enrollment(f"{h}.{p2}.{s}")


def test_non_canonical_encodings_refused() -> None:
    h, p, s = _parts(token())
    doc = json.loads(base64.urlsafe_b64decode(p + "=="))
    spaced = b64url_encode(json.dumps(doc, indent=1).encode())
    with pytest.raises(ParseError, match="canonical"):
        read_enrollment(f"{h}.{spaced}.{s}")
    other_header = b64url_encode(b'{"typ":"teeflow-enrollment+jwt","alg":"Ed25519"}')
    with pytest.raises(ParseError, match="header"):
        read_enrollment(f"{other_header}.{p}.{s}")
    none_header = b64url_encode(b'{"alg":"none","typ":"teeflow-enrollment+jwt"}')
    with pytest.raises(ParseError):
        read_enrollment(f"{none_header}.{p}.")
    # a revocation is not an enrollment (different typ)
    rev = sign_revocation(KEYS["alice"], federation="study", enrollment_id="a" * 22, now=NOW)
    with pytest.raises(ParseError):
        read_enrollment(rev)


@pytest.mark.parametrize("junk", ["", "a.b", "a.b.c.d", "x" * (MAX_ENROLLMENT_CHARS + 1),
                                  "é.é.é", None, 5, "..", "a..b"])
def test_junk_is_a_parse_error(junk: Any) -> None:
    with pytest.raises(ParseError):
        read_enrollment(junk)


def test_policy_reasons() -> None:
    with pytest.raises(PolicyViolation) as exc:
        verify_enrollment(token(), agreement("other"), now=NOW)
    assert "federation study" in exc.value.violations[0]
    with pytest.raises(PolicyViolation, match="expired"):
        verify_enrollment(token(), agreement(), now=NOW + timedelta(hours=1))
    with pytest.raises(PolicyViolation, match="not valid yet"):
        verify_enrollment(token(now=NOW + timedelta(hours=1)), agreement(), now=NOW)
    # a data owner may not enroll an aggregator; the aggregator operator may
    with pytest.raises(PolicyViolation, match="may not enroll a aggregator"):
        verify_enrollment(token(role="aggregator"), agreement(), now=NOW)
    assert verify_enrollment(token("carol", role="aggregator"), agreement(), now=NOW).role == (
        "aggregator")
    with pytest.raises(PolicyViolation, match="not a party"):
        verify_enrollment(issue_enrollment(PartyKeys.generate("mallory"), federation="study",
                                           role="client", now=NOW,
                                           expires=timedelta(hours=1)), agreement(), now=NOW)
    with pytest.raises(ParseError):
        token(expires=timedelta(days=400))
    with pytest.raises(ParseError):
        token(uses=0)


def test_binding_problems() -> None:
    wkey = ECKey.generate_key("P-256", private=True)
    other = ECKey.generate_key("P-256", private=True)
    e = read_enrollment(token(session="s1", workload_key=wkey))
    jwk = dict(wkey.as_dict(private=False), alg="ECDH-ES+A256KW")
    assert binding_problems(e, role="client", party=None, session="s1", tee_pubkey=jwk) == []
    assert binding_problems(e, role="client", party="alice", session="s1", tee_pubkey=jwk) == []
    assert binding_problems(e, role="aggregator", party=None, session="s1", tee_pubkey=jwk)
    assert binding_problems(e, role="client", party="bob", session="s1", tee_pubkey=jwk)
    assert binding_problems(e, role="client", party=None, session="s2", tee_pubkey=jwk)
    assert binding_problems(e, role="client", party=None, session=None, tee_pubkey=jwk)
    assert binding_problems(e, role="client", party=None, session="s1",
                            tee_pubkey=other.as_dict(private=False)) == [
        "enrollment is bound to another workload key"]
    unscoped = read_enrollment(token())
    assert binding_problems(unscoped, role="client", party=None, session="zz",
                            tee_pubkey=other.as_dict(private=False)) == []


def test_revocation_round_trip_and_forgery() -> None:
    jti = read_enrollment(token()).jti
    rev = sign_revocation(KEYS["alice"], federation="study", enrollment_id=jti, now=NOW)
    r = verify_revocation(rev, agreement(), now=NOW)
    assert (r.party, r.jti, r.fed) == ("alice", jti, "study")
    h, p, _s = _parts(rev)
    bob_rev = sign_revocation(KEYS["bob"], federation="study", enrollment_id=jti, now=NOW)
    with pytest.raises(VerificationError):  # bob cannot sign alice's revocation
        verify_revocation(f"{h}.{p}.{_parts(bob_rev)[2]}", agreement(), now=NOW)
    with pytest.raises(PolicyViolation):
        verify_revocation(rev, agreement("other"), now=NOW)
    assert read_revocation(rev).jti == jti
