"""Live trust (issue 11), fast: ``attestation.max_age`` terms, the admission rules, the
aggregator's per-round driver against a fake hub, certificates that expire with max_age at
the KBS, and the agreement-history check of a model's rounds (the failing half of test (f):
a round that used a workload the agreement in force did not allow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from test_kbs_service import (
    AGG_MR,
    CLIENT_MR,
    NOW,
    Harness,
    agreement_doc,
    csr_for,
    signed_agreement,
)
from test_provenance import COMMON, KEY, d, start

from teeflow.errors import FLError, ParseError, PolicyViolation, VerificationError
from teeflow.fl.history import (
    RoundViolation,
    check_rounds,
    history_document,
    load_history,
    parse_history,
)
from teeflow.fl.liveness import LiveTrust, SelfAttestation
from teeflow.fl.provenance import ClientRecord, DropRecord, RoundTrustRecord, verify_provenance
from teeflow.fl.provenance_log import ProvenanceLog
from teeflow.fl.trust import (
    AgreementInForce,
    earlier_version,
    qualifies,
    reattest_reason,
    update_problem,
)
from teeflow.kbs.ca.authority import FederationCA, WorkloadIdentity
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.freshness import AttestationTerms, parse_max_age
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.store import open_store

CA = FederationCA.generate("study", now=NOW - timedelta(days=1), lifetime=timedelta(days=3650))
REVOKED_MR = "77" * 32


# -- attestation.max_age ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("24h", 86400)]
)
def test_max_age_durations(text: str, seconds: int) -> None:
    assert parse_max_age(text) == timedelta(seconds=seconds)
    lifetime = AttestationTerms(max_age=text).certificate_lifetime(timedelta(hours=24))
    assert lifetime.total_seconds() == seconds


@pytest.mark.parametrize("text", ["0s", "25h", "10", "10d", "-5m", "1e3s", "per-round", "9" * 20])
def test_max_age_is_bounded_and_total(text: str) -> None:
    with pytest.raises(ParseError):
        parse_max_age(text)
    with pytest.raises(ValueError, match="max_age"):
        AttestationTerms(max_age=text)


def test_per_round_and_digest() -> None:
    terms = AttestationTerms(max_age="per_round")
    assert terms.per_round and terms.max_age_delta is None
    assert terms.certificate_lifetime(timedelta(hours=24)) == timedelta(hours=24)
    base = FederationAgreement.from_mapping(agreement_doc())
    with_terms = FederationAgreement.from_mapping(agreement_doc(attestation={"max_age": "10m"}))
    assert digest(base) != digest(with_terms)
    assert "attestation" not in base.to_document()  # optional section: old digests unchanged


# -- rules ----------------------------------------------------------------------------------


def agreement(version: int = 1, clients: tuple[str, ...] = (CLIENT_MR.hex(),), **kw: Any
              ) -> FederationAgreement:
    doc = agreement_doc(version=version, previous=None if version == 1 else "00" * 32, **kw)
    doc["workloads"]["client"]["sgx"]["mrenclave"] = list(clients)
    return FederationAgreement.from_mapping(doc)


def force(a: FederationAgreement) -> AgreementInForce:
    return AgreementInForce.of(SignedAgreement(agreement=a))


def cert(
    party: str | None, a: FederationAgreement, *, role: str = "client",
    mr: str = CLIENT_MR.hex(), at: datetime = NOW,
) -> tuple[x509.Certificate, WorkloadIdentity]:
    ident = WorkloadIdentity(role=role, party=party, measurement=mr,
                             agreement_digest=digest(a).hex(), tee="emulated-sgx", emulated=True)
    key = ec.generate_private_key(ec.SECP256R1())
    return CA.issue(key.public_key(), ident, now=at), ident


def test_qualifies_names_what_was_revoked() -> None:
    a = agreement()
    _, ok = cert("alice", a)
    assert qualifies(ok, a) is None
    _, revoked = cert("alice", a, mr=REVOKED_MR)
    assert "revoked build" in (qualifies(revoked, a) or "")
    _, stranger = cert("mallory", a)
    assert "not a party" in (qualifies(stranger, a) or "")
    no_emulation = agreement(allow_emulated=False)
    assert "emulated" in (qualifies(ok, no_emulation) or "")
    _, agg = cert(None, a, role="aggregator", mr=AGG_MR.hex())
    assert qualifies(agg, a, "aggregator") is None
    assert "reference values" in (qualifies(agg, agreement(2, workloads={
        "client": {"sgx": {"mrenclave": [CLIENT_MR.hex()]}},
        "aggregator": {"sgx": {"mrenclave": ["66" * 32]}},
    }), "aggregator") or "")


def test_reattest_when_the_agreement_changed_or_the_age_would_pass_max_age() -> None:
    a = agreement(attestation={"max_age": "10m"})
    c, i = cert("alice", a)
    assert reattest_reason(c, i, force(a), NOW + timedelta(minutes=1), horizon=60) is None
    late = NOW + timedelta(minutes=9)
    assert "max_age" in (reattest_reason(c, i, force(a), late, horizon=61) or "")
    b = agreement(2, attestation={"max_age": "10m"})
    assert "another agreement" in (reattest_reason(c, i, force(b), NOW, horizon=0) or "")
    p = agreement(attestation={"max_age": "per_round"})
    cp, ip = cert("alice", p)
    assert reattest_reason(cp, ip, force(p), NOW, horizon=0) == "max_age per_round"
    # attested since the previous round ended: fresh for this round
    assert reattest_reason(cp, ip, force(p), NOW, horizon=0, since=NOW) is None
    assert reattest_reason(cp, ip, force(p), NOW, horizon=0,
                           since=NOW + timedelta(seconds=1)) == "max_age per_round"
    none = agreement()
    cn, i_n = cert("alice", none)
    assert reattest_reason(cn, i_n, force(none), NOW + timedelta(hours=1), horizon=60) is None
    day = NOW + timedelta(hours=24)
    assert "expires" in (reattest_reason(cn, i_n, force(none), day, horizon=60) or "")


def test_update_under_a_stale_or_old_agreement_certificate_is_refused() -> None:
    """ATTACK: an update signed (sent) under a certificate older than max_age, from an older
    agreement version, or (per_round) from before the round."""
    a = agreement(attestation={"max_age": "10m"})
    c, i = cert("alice", a)
    assert update_problem(c, i, force(a), NOW + timedelta(minutes=5), NOW) is None
    assert "older than max_age" in (
        update_problem(c, i, force(a), NOW + timedelta(minutes=11), NOW) or "")
    b = agreement(2, attestation={"max_age": "10m"})
    assert "older agreement version" in (update_problem(c, i, force(b), NOW, NOW) or "")
    p = agreement(attestation={"max_age": "per_round"})
    cp, ip = cert("alice", p)
    assert "before this round" in (
        update_problem(cp, ip, force(p), NOW + timedelta(minutes=5), NOW + timedelta(minutes=4))
        or "")
    assert update_problem(cp, ip, force(p), NOW, NOW) is None


# -- the per-round driver ----------------------------------------------------------------------


class Handle:
    def __init__(self, error: str | None = None, done: bool = True) -> None:
        self.error, self._done = error, done

    def done(self) -> bool:
        return self._done

    def outcome(self) -> Any:
        if self.error:
            raise FLError(self.error)
        return object()


class FakeHub:
    """Connected parties with certificates; re-attestation answers scripted per party."""

    def __init__(self, a: FederationAgreement, parties: dict[str, str]) -> None:
        self.conns = {p: cert(p, a, mr=mr) for p, mr in parties.items()}
        self.answers: dict[str, Handle] = {}
        self.fresh: dict[str, FederationAgreement] = {}
        self.dropped: dict[str, str] = {}
        self.asked: list[str] = []
        self.renewed: bytes | None = None

    def connected(self) -> list[str]:
        return sorted(self.conns)

    def identity(self, party: str) -> WorkloadIdentity | None:
        return self.conns[party][1] if party in self.conns else None

    def certificate(self, party: str) -> x509.Certificate | None:
        return self.conns[party][0] if party in self.conns else None

    def reattest(self, party: str, round: int) -> Handle:
        self.asked.append(party)
        h = self.answers.get(party, Handle())
        if h.error is None and h.done():
            mr = self.conns[party][1].measurement
            self.conns[party] = cert(party, self.fresh[party], mr=mr, at=datetime.now(UTC))
        return h

    def drop(self, party: str, reason: str) -> None:
        self.dropped[party] = reason
        self.conns.pop(party, None)

    def renew(self, *, agreement_digest: bytes, certificate_pem: bytes, key: Any) -> None:
        self.renewed = agreement_digest


def live(current: list[FederationAgreement], hub: FakeHub, *, refuse_self: bool = False,
         min_clients: int = 1) -> LiveTrust:
    a0 = current[0]
    agg_cert, agg_ident = cert(None, a0, role="aggregator", mr=AGG_MR.hex(),
                               at=datetime.now(UTC))

    def self_attest() -> SelfAttestation:
        if refuse_self:
            raise VerificationError("attestation denied: tcb status OutOfDate not accepted")
        c, i = cert(None, current[-1], role="aggregator", mr=AGG_MR.hex(), at=datetime.now(UTC))
        return SelfAttestation(c.public_bytes(serialization_pem()), None, i)

    return LiveTrust(
        current=lambda: SignedAgreement(agreement=current[-1]),
        self_attest=self_attest,
        hub=hub,  # type: ignore[arg-type]
        force=force(a0),
        me=SelfAttestation(agg_cert.public_bytes(serialization_pem()), None, agg_ident),
        min_clients=min_clients,
        reattest_timeout=0.2,
        emit=lambda e, f: None,
    )


def serialization_pem() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM


def test_revoked_build_dropped_and_the_others_reattest_under_the_new_version() -> None:
    v1 = agreement(1, (CLIENT_MR.hex(), REVOKED_MR), training={"on_revocation": "drop"})
    v2 = agreement(2, (CLIENT_MR.hex(),), training={"on_revocation": "drop"})
    hub = FakeHub(v1, {"alice": CLIENT_MR.hex(), "bob": REVOKED_MR})
    hub.fresh = {"alice": v2, "bob": v2}
    lt = live([v1, v2], hub)
    trust = lt.before_round(2, 1.0)
    assert trust.version == 2 and hub.renewed == digest(v2)
    assert hub.asked == ["alice"]  # bob was dropped without asking
    assert "revoked build" in hub.dropped["bob"]
    assert set(trust.ages) == {"alice"}
    record = lt.record(trust, ["alice"])
    assert record.agreement_version == 2 and record.dropped[0].party == "bob"


def test_on_revocation_stop_stops_the_session() -> None:
    v1 = agreement(1, (CLIENT_MR.hex(), REVOKED_MR), training={"on_revocation": "stop"})
    v2 = agreement(2, (CLIENT_MR.hex(),), training={"on_revocation": "stop"})
    hub = FakeHub(v1, {"alice": CLIENT_MR.hex(), "bob": REVOKED_MR})
    hub.fresh = {"alice": v2}
    with pytest.raises(FLError, match="on_revocation is stop"):
        live([v1, v2], hub).before_round(2, 1.0)


def test_client_that_stops_reattesting_is_dropped() -> None:
    p = agreement(attestation={"max_age": "per_round"})
    hub = FakeHub(p, {"alice": CLIENT_MR.hex(), "bob": CLIENT_MR.hex(), "carol": CLIENT_MR.hex()})
    hub.fresh = {"alice": p}
    hub.answers = {"bob": Handle(done=False), "carol": Handle("re-attestation failed: denied")}
    trust = live([p], hub).before_round(1, 0.0)
    assert hub.dropped["bob"] == "did not re-attest in time"
    assert "denied" in hub.dropped["carol"]
    assert hub.connected() == ["alice"] and [d.party for d in trust.drops] == ["bob", "carol"]


def test_too_few_clients_left_stops() -> None:
    p = agreement(attestation={"max_age": "per_round"})
    hub = FakeHub(p, {"alice": CLIENT_MR.hex(), "bob": CLIENT_MR.hex()})
    hub.fresh = {"alice": p}
    hub.answers = {"bob": Handle("denied")}
    with pytest.raises(FLError, match="only 1 clients"):
        live([p], hub, min_clients=2).before_round(1, 0.0)


def test_aggregator_that_no_longer_qualifies_stops_and_says_why() -> None:
    v1 = agreement(1)
    v2 = agreement(2)
    hub = FakeHub(v1, {"alice": CLIENT_MR.hex()})
    with pytest.raises(FLError, match=r"aggregator no longer satisfies agreement v2.*OutOfDate"):
        live([v1, v2], hub, refuse_self=True).before_round(2, 0.0)


def test_agreement_rollback_is_refused() -> None:
    v1, v2 = agreement(1), agreement(2)
    hub = FakeHub(v2, {})
    lt = live([v2], hub)
    lt._current = lambda: SignedAgreement(agreement=v1)
    with pytest.raises(FLError, match="v1 after v2"):
        lt.before_round(3, 0.0)


def test_refused_update_is_recorded_as_a_drop() -> None:
    a = agreement(attestation={"max_age": "90s"})
    hub = FakeHub(a, {"alice": CLIENT_MR.hex()})
    hub.conns["alice"] = cert("alice", a, at=datetime.now(UTC) - timedelta(seconds=100))
    hub.fresh = {"alice": a}
    lt = live([a], hub)
    trust = lt.before_round(1, 0.0)  # re-attested: fresh
    assert lt.admit("alice") is None
    hub.conns["alice"] = cert("alice", a, at=datetime.now(UTC) - timedelta(seconds=100))
    assert "older than max_age" in (lt.admit("alice") or "")
    assert trust.drops[-1].party == "alice" and "alice" not in trust.ages


# -- the KBS: certificates expire with max_age ---------------------------------------------------


def test_kbs_certificate_lifetime_follows_max_age() -> None:
    store = open_store("memory://")
    try:
        h = Harness(store)
        v2 = signed_agreement(
            agreement_doc(version=2, previous=h.agreement_digest.hex(),
                          attestation={"max_age": "10m"}),
            ("alice", "bob"),
        )
        h.service.submit_agreement(v2)
        w = h.attest()
        priv = w.key.private_key
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
        pem = h.service.issue_certificate(h.session(w), csr_for(priv))
        c = x509.load_pem_x509_certificate(pem)
        assert c.not_valid_after_utc - c.not_valid_before_utc == timedelta(minutes=11)  # + skew
    finally:
        store.close()


# -- the agreement history and a model's rounds (test f) ---------------------------------------


def history() -> tuple[list[SignedAgreement], FederationAgreement, FederationAgreement]:
    v1 = FederationAgreement.from_mapping(agreement_doc())
    doc2 = agreement_doc(version=2, previous=digest(v1).hex())
    doc2["workloads"]["client"]["sgx"]["mrenclave"] = ["55" * 32]  # revokes CLIENT_MR
    v2 = FederationAgreement.from_mapping(doc2)
    signed = [
        signed_agreement(v1.to_document()),
        signed_agreement(v2.to_document(), ("alice", "bob")),
    ]
    return signed, v1, v2


def log_with(rounds: list[tuple[FederationAgreement | None, list[str]]], v1: FederationAgreement
             ) -> list[Any]:
    log = ProvenanceLog(KEY)
    log.start(**{**COMMON, "agreement_digest": digest(v1), "aggregator_measurement": AGG_MR.hex()},
              aggregator_certificate=_pem(), initial_digest=d("m0"))
    for r, (a, parties) in enumerate(rounds, start=1):
        trust = None if a is None else RoundTrustRecord(
            agreement_version=a.version, agreement_digest=digest(a).hex(),
            attestation_age={p: 1.0 for p in parties},
            dropped=(DropRecord(party="carol", reason="revoked build"),),
        )
        log.record_round(
            r,
            clients=[ClientRecord(party=p, measurement=CLIENT_MR.hex()) for p in parties],
            update_digests={p: d(f"u{r}{p}") for p in parties},
            aggregate_digest=d(f"m{r}"),
            trust=trust,
        )
    return list(log.entries)


def _pem() -> str:
    from test_provenance import CERT, pem

    return pem(CERT)


def test_round_that_used_a_revoked_build_fails_naming_the_round(tmp_path: Path) -> None:
    signed, v1, v2 = history()
    path = tmp_path / "history.json"
    import json

    path.write_text(json.dumps(history_document(signed)))
    loaded = load_history(path)
    ok = log_with([(v1, ["alice", "bob"])], v1)
    checks = check_rounds(ok, loaded)
    assert [(c.round, c.version) for c in checks] == [(1, 1)]
    assert checks[0].dropped == {"carol": "revoked build"}
    bad = log_with([(v1, ["alice", "bob"]), (v2, ["alice", "bob"])], v1)
    verify_provenance(bad, KEY.public_key())  # the chain itself is fine
    with pytest.raises(RoundViolation, match=r"^round 2: client alice .* by agreement v2"):
        check_rounds(bad, loaded)


def test_version_going_back_fails() -> None:
    signed, v1, v2 = history()
    doc2 = v2.to_document()
    doc2["workloads"]["client"]["sgx"]["mrenclave"] = [CLIENT_MR.hex()]
    v2_ok = FederationAgreement.from_mapping(doc2)
    signed = [signed[0], signed_agreement(v2_ok.to_document(), ("alice", "bob"))]
    entries = log_with([(v2_ok, ["alice"]), (v1, ["alice"])], v1)
    with pytest.raises(RoundViolation, match="round 2: agreement v1 after v2"):
        check_rounds(entries, signed)


def test_old_log_without_versions_fails_when_a_later_version_revoked_its_client() -> None:
    """The issue's scenario: the log records no version per round (pre-issue-11 aggregator);
    a later agreement revoked the build it kept using — nothing shows the revocation came
    after the round, so verification fails naming the first such round."""
    signed, v1, _ = history()
    entries = log_with([(None, ["alice", "bob"]), (None, ["alice", "bob"])], v1)
    with pytest.raises(RoundViolation, match=r"round 1: .*does not record the version"):
        check_rounds(entries, signed)
    assert [c.version for c in check_rounds(entries, signed[:1])] == [None, None]


def test_history_must_be_a_signed_chain() -> None:
    """ATTACK: a history whose update lacks the quorum (one signature) or was tampered."""
    signed, _, v2 = history()
    import json

    short = [signed[0], signed_agreement(v2.to_document(), ("alice",))]
    with pytest.raises(PolicyViolation, match="quorum is 2"):
        parse_history(json.dumps(history_document(short)).encode())
    doc = history_document(signed)
    doc["agreements"][1]["signed"]["agreement"]["allow_emulated"] = False
    with pytest.raises(VerificationError):
        parse_history(json.dumps(doc).encode())
    with pytest.raises(ParseError):
        parse_history(b"[1, 2]")
    with pytest.raises(ParseError):
        parse_history(json.dumps({"format": "x", "agreements": []}).encode())


def test_old_provenance_entries_hash_as_before() -> None:
    """Entries without a trust record keep the pre-issue-11 hash (old logs verify)."""
    log = ProvenanceLog(KEY)
    start(log)
    e = log.record_round(1, clients=[ClientRecord(party="a", measurement=d("c").hex())],
                         update_digests={"a": d("u")}, aggregate_digest=d("m1"))
    assert "trust" not in e.body()


# -- an aggregator restart after an agreement update ----------------------------------------


def test_a_session_resumes_only_from_an_earlier_version_of_the_chain() -> None:
    signed, v1, v2 = history()
    assert earlier_version(signed, digest(v1).hex(), digest(v2))
    assert not earlier_version(signed, digest(v2).hex(), digest(v1))  # newer checkpoint
    assert not earlier_version(signed, "00" * 32, digest(v2))  # another federation's


def test_handover_after_an_update_is_certified_under_the_agreement_in_force() -> None:
    """The restarted instance's certificate is bound to the agreement in force (v2); the
    hand-over records it, and the CA check accepts it — only with that record (ATTACK: a
    hand-over certificate of another agreement is refused)."""
    from teeflow.fl.outputs import aggregator_certificate_check

    _, v1, v2 = history()
    log = ProvenanceLog(KEY)
    log.start(**{**COMMON, "agreement_digest": digest(v1), "aggregator_measurement": AGG_MR.hex()},
              aggregator_certificate=_pem(), initial_digest=d("m0"))
    log.record_round(1, clients=[ClientRecord(party="alice", measurement=CLIENT_MR.hex())],
                     update_digests={"alice": d("u1")}, aggregate_digest=d("m1"))
    new_key = ec.generate_private_key(ec.SECP256R1())
    ident = WorkloadIdentity(role="aggregator", party=None, measurement=AGG_MR.hex(),
                             agreement_digest=digest(v2).hex(), tee="emulated-sgx",
                             emulated=True)
    new_cert = CA.issue(new_key.public_key(), ident, now=datetime.now(UTC))
    from cryptography.hazmat.primitives import serialization

    new_pem = new_cert.public_bytes(serialization.Encoding.PEM).decode()
    certify = aggregator_certificate_check(CA.certificate)
    cont = ProvenanceLog(new_key, log.entries, certify=certify)
    with pytest.raises(FLError, match="hand-over certificate"):
        cont.handover(aggregator_certificate=new_pem, aggregator_measurement=AGG_MR.hex())
    h = cont.handover(aggregator_certificate=new_pem, aggregator_measurement=AGG_MR.hex(),
                      agreement_in_force=digest(v2))
    assert h.agreement_in_force == digest(v2).hex()
    verify_provenance(list(cont.entries), KEY.public_key(), certify=certify)


# -- revoking an enrollment stops releases and certificates at once --------------------------


def test_revoked_enrollment_stops_releases_and_certificates_at_once() -> None:
    """ATTACK: a workload whose enrollment was revoked keeps using its still-valid token to
    fetch keys or certificates (the token lives up to 5 min)."""
    import os

    from test_kbs_service import CLAIMS, PARTIES, PATH

    from teeflow.kbs.api.problems import PolicyDeny
    from teeflow.kbs.policy.enrollment import issue_enrollment, read_enrollment, sign_revocation

    store = open_store("memory://")
    try:
        h = Harness(store)
        h.service.put_resource(h.upload(os.urandom(32)))
        t = issue_enrollment(PARTIES["alice"], federation="study", role="client",
                             now=h.clock.now, expires=timedelta(hours=1))
        w = h.attest(claims={**CLAIMS, "enrollment": t})
        session = h.session(w)
        priv = w.key.private_key
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
        h.service.get_resource(session, PATH)  # allowed before the revocation
        h.service.revoke_enrollment(sign_revocation(
            PARTIES["alice"], federation="study", enrollment_id=read_enrollment(t).jti,
            now=NOW))
        with pytest.raises(PolicyDeny):
            h.service.get_resource(session, PATH)
        with pytest.raises(PolicyDeny, match="enrollment revoked"):
            h.service.issue_certificate(session, csr_for(priv))
        denies = [e for e in store.audit_entries(0, 100) if e.decision == "deny"]
        revoked = [e.kind for e in denies if "enrollment revoked" in e.reasons]
        assert revoked == ["release", "certificate"]
    finally:
        store.close()
