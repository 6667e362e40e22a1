"""Attack tests (adversary P, a party acting alone): a workload acts for a party only with that
party's signed enrollment, checked by the KBS at attestation.

Before enrollments, ``client run --party bob`` needed none of bob's keys: the KBS issued
``party=bob`` to any attested client, released alice's key to it, and the real bob was then
locked out. Each test below fails on that code. The KBS service is called directly (the
harness of test_kbs_service.py); the wire versions are in
tests/integration/test_kbs_enrollment_http.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from test_kbs_service import CLAIMS, NOW, PARTIES, PATH, Harness, csr_for

from teeflow.attestation.ear import verify_ear
from teeflow.kbs.api.problems import AttestationFailed, InvalidRequest, PolicyDeny
from teeflow.kbs.ca.authority import verify_workload_certificate
from teeflow.kbs.policy.enrollment import issue_enrollment, read_enrollment, sign_revocation
from teeflow.kbs.service.enrollments import NO_ENROLLMENT
from teeflow.kbs.service.release import open_jwe
from teeflow.kbs.store import open_store

BOB_CLAIMS = {**CLAIMS, "party": "bob", "recipients": ["bob"]}


@pytest.fixture()
def h() -> Iterator[Harness]:
    store = open_store("memory://")
    yield Harness(store)
    store.close()


def token(party: str, h: Harness, **kw: Any) -> str:
    args: dict[str, Any] = {"federation": "study", "role": "client", "now": h.clock.now,
                            "expires": timedelta(hours=1)}
    args.update(kw)
    return issue_enrollment(PARTIES[party], **args)


def denied(h: Harness, needle: str, **kw: Any) -> AttestationFailed:
    with pytest.raises(AttestationFailed) as exc:
        h.attest(**kw)
    assert any(needle in r for r in exc.value.reasons), exc.value.reasons
    return exc.value


def test_party_claim_with_another_partys_enrollment_is_refused(h: Harness) -> None:
    # an operator holding alice's enrollment claims to run bob's client
    denied(h, "enrollment is by alice, the workload claims party bob",
           claims={**BOB_CLAIMS, "enrollment": token("alice", h)})
    [deny] = h.denies("attestation")
    assert deny.data["claimed_party"] == "bob" and deny.data["party"] == "alice"


def test_party_claim_without_enrollment_is_refused(h: Harness) -> None:
    denied(h, NO_ENROLLMENT, claims={**BOB_CLAIMS, "enrollment": None})
    denied(h, NO_ENROLLMENT, claims={**CLAIMS, "party": None, "enrollment": None})


def test_a_forged_enrollment_is_refused(h: Harness) -> None:
    # mallory (no party) signs "bob" with her own key
    head, payload, _ = token("bob", h).split(".")
    _, _, alice_sig = token("alice", h).split(".")
    denied(h, "signature of bob does not verify",
           claims={**BOB_CLAIMS, "enrollment": f"{head}.{payload}.{alice_sig}"})


def test_unenrolled_session_gets_no_certificate_key_or_counter() -> None:
    store = open_store("memory://")
    h = Harness(store, default_role="client")  # a plain Trustee attester: no teeflow member
    h.service.put_resource(h.upload(os.urandom(32)))
    w = h.attest(claims=None)
    session = h.session(w)
    assert session.party is None and session.enrollment is None
    priv = w.key.private_key
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    with pytest.raises(PolicyDeny, match="no enrollment"):
        h.service.issue_certificate(session, csr_for(priv))
    with pytest.raises(PolicyDeny):
        h.service.get_resource(session, PATH)
    with pytest.raises(PolicyDeny):
        h.service.increment_counter(session, "jobs/x", 0, b"d" * 32)
    releases = [e for e in h.denies("release")]
    assert any("no enrollment" in r for r in releases[0].reasons)
    store.close()


@pytest.mark.parametrize(("kw", "needle"), [
    ({"federation": "other"}, "enrollment is for federation other"),
    ({"role": "aggregator", "party_": "carol"}, "enrollment is for role aggregator"),
    ({"session": "s1"}, "enrollment is scoped to session s1"),
])
def test_enrollment_for_another_federation_role_or_session_is_refused(
        h: Harness, kw: dict[str, Any], needle: str) -> None:
    party = kw.pop("party_", "alice")
    claims = {**CLAIMS, "party": None, "session": "s2",
              "enrollment": token(party, h, **kw)}
    denied(h, needle, claims=claims)


def test_a_data_owner_cannot_enroll_an_aggregator(h: Harness) -> None:
    denied(h, "party alice may not enroll a aggregator workload",
           claims={"role": "aggregator", "enrollment": token("alice", h, role="aggregator")},
           measurement=bytes.fromhex("a7" * 32))
    w = h.attest(claims={"role": "aggregator",
                         "enrollment": token("carol", h, role="aggregator")},
                 measurement=bytes.fromhex("a7" * 32))
    assert h.session(w).party == "carol"


def test_expired_enrollment_is_refused_and_caps_the_token(h: Harness) -> None:
    t = token("alice", h, expires=timedelta(seconds=90))
    w = h.attest(claims={**CLAIMS, "enrollment": t})
    session = h.session(w)
    assert session.expires_at <= read_enrollment(t).expires_at  # EAR ends with the enrollment
    ear = verify_ear(w.token, h.service._ctx.ear_public, now=h.clock.now, nonce=None)
    assert ear.expires_at <= read_enrollment(t).expires_at
    h.clock.now = NOW + timedelta(seconds=90)
    denied(h, "enrollment expired", claims={**CLAIMS, "enrollment": t})


def test_uses_exhausted_the_n_plus_first_attestation_is_refused(h: Harness) -> None:
    t = token("alice", h, uses=2)
    h.attest(claims={**CLAIMS, "enrollment": t})
    h.attest(claims={**CLAIMS, "enrollment": t})
    denied(h, "enrollment exhausted", claims={**CLAIMS, "enrollment": t})
    # refused attestations use nothing up
    t1 = token("alice", h, uses=1)
    denied(h, "does not match", claims={**CLAIMS, "enrollment": t1}, bind_nonce="AAAA")
    assert h.session(h.attest(claims={**CLAIMS, "enrollment": t1})).party == "alice"


def test_revoked_enrollment_is_refused_and_only_its_party_can_revoke(h: Harness) -> None:
    t = token("alice", h)
    h.attest(claims={**CLAIMS, "enrollment": t})
    jti = read_enrollment(t).jti
    # bob signs a revocation of alice's id: it revokes "bob/<id>", not alice's enrollment
    h.service.revoke_enrollment(
        sign_revocation(PARTIES["bob"], federation="study", enrollment_id=jti, now=NOW))
    h.attest(claims={**CLAIMS, "enrollment": t})
    # a revocation claiming alice but signed by bob is refused outright
    head, payload, _ = sign_revocation(
        PARTIES["alice"], federation="study", enrollment_id=jti, now=NOW).split(".")
    bob_sig = sign_revocation(PARTIES["bob"], federation="study", enrollment_id=jti,
                              now=NOW).split(".")[2]
    with pytest.raises(InvalidRequest):
        h.service.revoke_enrollment(f"{head}.{payload}.{bob_sig}")
    done = h.service.revoke_enrollment(
        sign_revocation(PARTIES["alice"], federation="study", enrollment_id=jti, now=NOW))
    assert done["party"] == "alice" and done["id"] == jti and done["uses"] == 2
    denied(h, "enrollment revoked", claims={**CLAIMS, "enrollment": t})
    revocations = [e for e in h.store.audit_entries(0, 100) if e.kind == "enrollment"]
    assert [e.decision for e in revocations] == ["accept", "deny", "accept"]
    h.verify_audit()


def test_workload_key_bound_enrollment(h: Harness) -> None:
    bound = ECKey.generate_key("P-256", private=True)
    t = token("alice", h, workload_key=bound.as_dict(private=False))
    denied(h, "bound to another workload key", claims={**CLAIMS, "enrollment": t})
    sid, nonce = h.auth()
    session_token = h.service.attest(
        sid, h.attest_request(nonce, bound, claims={**CLAIMS, "enrollment": t})).token
    assert h.service.authorize(session_id=sid, token=session_token).party == "alice"


def test_grant_restricted_to_alice_is_not_released_to_bobs_client(h: Harness) -> None:
    data_key = os.urandom(32)
    grant = h.grant(parties=["alice"], recipients=["alice", "bob"])
    h.service.put_resource(h.upload(data_key, grant=grant))
    bob = h.attest(claims={**BOB_CLAIMS, "recipients": ["bob"]})
    assert h.session(bob).party == "bob"
    with pytest.raises(PolicyDeny):
        h.service.get_resource(h.session(bob), PATH)
    assert any("party bob not granted" in r for r in h.denies("release")[0].reasons)
    alice = h.attest()
    assert open_jwe(h.service.get_resource(h.session(alice), PATH), alice.key) == data_key


def test_the_real_bob_is_not_locked_out_after_an_impostor_attempt(h: Harness) -> None:
    bobs = token("bob", h, uses=1)
    denied(h, "enrollment is by alice", claims={**BOB_CLAIMS, "enrollment": token("alice", h)})
    denied(h, NO_ENROLLMENT, claims={**BOB_CLAIMS, "enrollment": None})
    w = h.attest(claims={**BOB_CLAIMS, "enrollment": bobs})
    session = h.session(w)
    priv = w.key.private_key
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(h.service.issue_certificate(session, csr_for(priv)))
    ident = verify_workload_certificate(cert, h.keys.ca.certificate, now=NOW)
    assert ident.party == "bob" and ident.role == "client"


def test_party_comes_only_from_the_enrollment(h: Harness) -> None:
    w = h.attest(claims={**CLAIMS, "party": None, "enrollment": token("bob", h)})
    session = h.session(w)
    assert session.party == "bob" and session.claims is not None and session.claims.party is None
    assert session.enrollment is not None and session.enrollment.party == "bob"
    # the same facts after a round trip through the EAR (bearer token, fresh process cache)
    assert h.service.authorize(session_id=w.session_id, token=w.token).enrollment == (
        session.enrollment)


def test_enrollment_is_checked_against_the_key_in_the_agreement_in_force(h: Harness) -> None:
    """alice's key is replaced by an agreement update: her old enrollment (verified and
    cached under the previous agreement) no longer verifies."""
    from test_kbs_service import agreement_doc, signed_agreement

    from teeflow.kbs.policy.parties import PartyKeys

    old = token("alice", h)
    h.attest(claims={**CLAIMS, "enrollment": old})  # verified (and cached) under v1
    new_alice = PartyKeys.generate("alice")
    doc = agreement_doc(version=2, previous=h.agreement_digest.hex())
    doc["parties"]["alice"] = {"sign_key": new_alice.public().sign_key,
                               "recipient_key": new_alice.public().recipient_key,
                               "roles": ["data-owner"]}
    h.service.submit_agreement(signed_agreement(doc, ("bob", "carol")))
    denied(h, "signature of alice does not verify", claims={**CLAIMS, "enrollment": old})
    fresh = issue_enrollment(new_alice, federation="study", role="client", now=h.clock.now,
                             expires=timedelta(hours=1))
    assert h.session(h.attest(claims={**CLAIMS, "enrollment": fresh})).party == "alice"


def test_session_scoped_aggregator_gets_only_its_sessions_checkpoint_key(h: Harness) -> None:
    """An aggregator enrolled for session s1 cannot obtain session s2's checkpoint key (the
    operator's enrollment bounds what the attested aggregator may read)."""
    from teeflow.kbs.policy.generated import checkpoint_key_path

    agg_mr = bytes.fromhex("a7" * 32)
    paths = [checkpoint_key_path("s1"), checkpoint_key_path("s2")]
    claims = {"role": "aggregator", "package_digest": CLAIMS["package_digest"],
              "resources": paths, "recipients": ["alice"], "session": "s1",
              "enrollment": token("carol", h, role="aggregator", session="s1")}
    w = h.attest(claims=claims, measurement=agg_mr)
    session = h.session(w)
    assert session.enrollment is not None and session.enrollment.session == "s1"
    assert len(open_jwe(h.service.get_resource(session, paths[0]), w.key)) == 32
    with pytest.raises(PolicyDeny):
        h.service.get_resource(session, paths[1])
    assert any("scoped to session s1" in r for r in h.denies("release")[0].reasons)
    assert h.service.resource_info(paths[1]) is None  # a refusal creates nothing


def test_revocation_cache_keeps_revoked_and_rereads_not_revoked_after_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Releases do not read the store for every request, but a not-revoked state is only
    trusted for the agreement refresh interval; a revoked one never expires."""
    import teeflow.kbs.service.context as context

    clock = [100.0]
    monkeypatch.setattr(context.time, "monotonic", lambda: clock[0])
    cache = context.RevocationCache(max_age=1.0, max_entries=2)
    assert cache.get("alice:e1") is None
    cache.put("alice:e1", False)
    assert cache.get("alice:e1") is False
    clock[0] += 1.5
    assert cache.get("alice:e1") is None  # stale: read the store again
    cache.mark("alice:e2")
    clock[0] += 1000.0
    assert cache.get("alice:e2") is True
    cache.put("bob:e3", False)
    cache.put("bob:e4", False)  # full: only revoked states survive the trim
    assert cache.get("alice:e2") is True and cache.get("bob:e4") is False
