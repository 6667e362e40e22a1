"""KbsService: agreements, RCAR attestation, authorisation, certificates, counters, audit.

No HTTP: the service is called directly. Evidence is real-format emulated DCAP quotes
(teeflow.testing.evidence) whose REPORT_DATA binds the runtime data. The harness here is
also used by test_kbs_release.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey

from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.ear import generate_ear_signing_key
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import KbsError
from teeflow.kbs.api.problems import (
    AgreementRejected,
    AttestationFailed,
    Conflict,
    InvalidRequest,
    PolicyDeny,
    ProtocolVersion,
    TokenNotFound,
    TokenVerifierError,
    UnsupportedTee,
)
from teeflow.kbs.ca.authority import FederationCA, verify_workload_certificate
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    digest,
)
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.protocol import (
    RESOURCE_WRAP_INFO,
    AttestedSession,
    AttestRequest,
    AuthRequest,
    resource_wrap_aad,
    sign_resource_upload,
)
from teeflow.kbs.service.audit import verify_audit_chain
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.service.release import RELEASE_DENIED_DETAIL, open_jwe
from teeflow.kbs.store import (
    open_store,
)
from teeflow.kbs.store.interface import (
    KbsStore,
)
from teeflow.sealing.hpke import wrap_key
from teeflow.testing.enrollment import with_enrollment
from teeflow.testing.evidence import (
    DEFAULT_NOW,
    TEST_MEASUREMENT,
    emulated_authority,
    make_emulated_quote,
)

NOW = DEFAULT_NOW
CLIENT_MR = TEST_MEASUREMENT
AGG_MR = bytes.fromhex("a7" * 32)
OTHER_MR = bytes.fromhex("0b" * 32)
PKG = "c0" * 32
PKG_OTHER = "d1" * 32
PATH = "alice/dataset-key/v1"
CLAIMS: dict[str, Any] = {
    "role": "client",
    "party": "alice",
    "package_digest": PKG,
    "function": "train",
    "resources": [PATH],
    "recipients": ["alice"],
}


@dataclass(frozen=True)
class Keys:
    """Minimal KbsKeyMaterial for tests."""

    hpke: X25519PrivateKey
    ca: FederationCA
    ear: ECKey
    audit: Ed25519PrivateKey


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Workload:
    session_id: str
    key: ECKey
    token: str


#: the party that enrolls a workload of each role when the claims name none
ENROLLER = {"client": "alice", "aggregator": "carol"}
PARTIES = {
    "alice": PartyKeys.generate("alice"),
    "bob": PartyKeys.generate("bob"),
    "carol": PartyKeys.generate("carol"),
}


def agreement_doc(*, allow_emulated: bool = True, version: int = 1, previous: str | None = None,
                  **changes: Any) -> dict[str, Any]:
    roles = {"alice": ["data-owner"], "bob": ["data-owner"], "carol": ["aggregator-operator"]}
    doc: dict[str, Any] = {
        "federation": "study",
        "version": version,
        "previous": previous,
        "parties": {
            n: {
                "sign_key": PARTIES[n].public().sign_key,
                "recipient_key": PARTIES[n].public().recipient_key,
                "roles": r,
            }
            for n, r in roles.items()
        },
        "workloads": {
            "client": {"sgx": {"mrenclave": [CLIENT_MR.hex()]}},
            "aggregator": {"sgx": {"mrenclave": [AGG_MR.hex()]}},
        },
        "packages": {
            "trainer": {"digest": PKG, "entrypoints": ["train", "validate"],
                        "readers": ["alice", "bob"]},
            "stats": {"digest": PKG_OTHER, "functions": ["mean"], "readers": ["alice"]},
        },
        "outputs": {"model": ["alice", "bob"]},
        "allow_emulated": allow_emulated,
        "update_quorum": {"k": 2},
    }
    doc.update(changes)
    return doc


def signed_agreement(doc: dict[str, Any], signers: tuple[str, ...] = ("alice", "bob", "carol")
                     ) -> SignedAgreement:
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for name in signers:
        signed = signed.signed_by(PARTIES[name])
    return signed


class Harness:
    """A KbsService on a given store, with helpers for workloads and owners."""

    def __init__(self, store: KbsStore, *, allow_emulated: bool = True,
                 default_role: str | None = None) -> None:
        self.store = store
        self.clock = Clock(NOW)
        self.keys = Keys(
            hpke=X25519PrivateKey.generate(),
            ca=FederationCA.generate("study", now=NOW - timedelta(days=1)),
            ear=generate_ear_signing_key(),
            audit=Ed25519PrivateKey.generate(),
        )
        authority = emulated_authority()
        self.service = KbsService(
            store,
            self.keys,
            clock=self.clock,
            rng=os.urandom,
            anchors=[intel_sgx_root_ca(), authority.trust_anchor()],
            collateral=EmulatedCollateralProvider(authority),
            default_role=default_role,
        )
        self.signed = signed_agreement(agreement_doc(allow_emulated=allow_emulated))
        self.service.submit_agreement(self.signed)

    @property
    def agreement_digest(self) -> bytes:
        return digest(self.signed.agreement)

    # -- attester side ----------------------------------------------------------------------
    def attest_request(
        self,
        nonce: str,
        key: ECKey,
        *,
        claims: dict[str, Any] | None = CLAIMS,
        measurement: bytes = CLIENT_MR,
        bind_key: ECKey | None = None,
        bind_nonce: str | None = None,
        bare: bool = False,
        additional_evidence: str = "",
        enroll: dict[str, Any] | None = None,
    ) -> AttestRequest:
        """``claims`` get an enrollment by their party (or, without one, the party that may
        enroll the role: alice for clients, carol for aggregators) unless they carry an
        ``enrollment`` member already (``"enrollment": None`` sends none); ``enroll`` are
        options of the token (``party``, ``session``, ``uses``, ``workload_key``...)."""
        if claims is not None:
            claims = self.enrolled(claims, **(enroll or {}))
        jwk = dict(key.as_dict(private=False), alg="ECDH-ES+A256KW")
        bound_jwk = jwk if bind_key is None else dict(
            bind_key.as_dict(private=False), alg="ECDH-ES+A256KW")
        rd = runtime_data_digest(
            tee_pubkey=bound_jwk, nonce=bind_nonce or nonce, teeflow=claims,
            additional_evidence=additional_evidence,
        )
        quote, _, _ = make_emulated_quote(rd, measurement=measurement, now=self.clock.now)
        q = base64.b64encode(quote).decode()
        runtime: dict[str, Any] = {"nonce": nonce, "tee-pubkey": jwk}
        if claims is not None:
            runtime["teeflow"] = claims
        evidence: dict[str, Any] = (
            {"quote": q} if bare
            else {"primary_evidence": {"quote": q}, "additional_evidence": additional_evidence}
        )
        return AttestRequest.model_validate({"runtime-data": runtime, "tee-evidence": evidence})

    def enrolled(self, claims: dict[str, Any], **options: Any) -> dict[str, Any]:
        if "enrollment" in claims:
            return {k: v for k, v in claims.items() if v is not None or k != "enrollment"}
        role = claims.get("role", "client")
        party = options.pop("party", claims.get("party") or ENROLLER.get(role, "alice"))
        if party not in PARTIES:  # an impostor name: enrolled by nobody
            return claims
        return with_enrollment(claims, PARTIES[party], now=self.clock.now, **options)

    def auth(self, tee: str = "emulated-sgx") -> tuple[str, str]:
        sid, challenge = self.service.auth(AuthRequest(version="0.4.0", tee=tee))
        return sid, challenge.nonce

    def attest(self, tee: str = "emulated-sgx", **kw: Any) -> Workload:
        sid, nonce = self.auth(tee)
        key = ECKey.generate_key("P-256", private=True)
        token = self.service.attest(sid, self.attest_request(nonce, key, **kw)).token
        return Workload(sid, key, token)

    def session(self, w: Workload) -> AttestedSession:
        return self.service.authorize(session_id=w.session_id)

    # -- owner side ---------------------------------------------------------------------------
    def grant(self, **changes: Any) -> Grant:
        doc: dict[str, Any] = {
            "id": "grant-" + os.urandom(6).hex(),
            "resource": PATH,
            "owner": "alice",
            "agreement": self.agreement_digest.hex(),
            "roles": ["client"],
            "mrenclave": [CLIENT_MR.hex()],
            "packages": [PKG],
            "functions": ["train"],
            "recipients": ["alice"],
            "created_at": NOW - timedelta(days=1),
            "not_after": NOW + timedelta(days=30),
            "max_releases": 5,
        }
        doc.update(changes)
        return Grant.from_mapping(doc)

    def upload(self, data_key: bytes, *, owner: str = "alice", path: str = PATH,
               grant: Grant | None = None, aad_path: str | None = None) -> Any:
        g = grant if grant is not None else self.grant(resource=path, owner=owner)
        wrapped = wrap_key(data_key, self.keys.hpke.public_key(), info=RESOURCE_WRAP_INFO,
                           aad=resource_wrap_aad(aad_path or path))
        return sign_resource_upload(path, wrapped, sign_grant(g, PARTIES[owner]), PARTIES[owner])

    def denies(self, kind: str) -> list[Any]:
        return [e for e in self.store.audit_entries(0, 10_000)
                if e.kind == kind and e.decision == "deny"]

    def verify_audit(self) -> None:
        verify_audit_chain(self.store.audit_entries(0, 10_000), self.service.audit_public_key)


@pytest.fixture(params=["memory", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'kbs.db'}"
    store = open_store(url, bytes(32))
    try:
        yield Harness(store)
    finally:
        store.close()


@pytest.fixture()
def mem() -> Iterator[Harness]:
    store = open_store("memory://")
    yield Harness(store)
    store.close()


def csr_for(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM)


# -- the happy path ---------------------------------------------------------------------------


def test_full_flow_emulated(h: Harness) -> None:
    svc = h.service
    data_key = os.urandom(32)
    info = svc.put_resource(h.upload(data_key))
    assert (info.path, info.owner, info.generation, info.release_count) == (PATH, "alice", 1, 0)

    w = h.attest()
    session = h.session(w)
    assert session.role == "client" and session.party == "alice"
    assert session.tee == "emulated-sgx" and session.emulated
    assert session.measurement == CLIENT_MR.hex()
    assert session.agreement_digest == h.agreement_digest.hex()
    # token + its own session give the same identity as the session alone
    by_token = svc.authorize(session_id=w.session_id, token=w.token)
    assert by_token.measurement == session.measurement and by_token.session_id == w.session_id
    assert svc.authorize(session_id=w.session_id, token=w.token).role == "client"

    jwe_text = svc.get_resource(session, PATH)
    assert open_jwe(jwe_text, w.key) == data_key
    assert svc.resource_info(PATH).release_count == 1  # type: ignore[union-attr]

    # workload certificate for the attested key (the JWK -> cryptography key)
    priv = w.key.private_key
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    pem = svc.issue_certificate(session, csr_for(priv))
    cert = x509.load_pem_x509_certificate(pem)
    ident = verify_workload_certificate(
        cert, h.keys.ca.certificate, now=NOW,
        expected_agreement_digest=h.agreement_digest.hex(), required_role="client",
    )
    assert ident.measurement == CLIENT_MR.hex() and ident.emulated and ident.party == "alice"

    kinds = [(e.kind, e.decision) for e in h.store.audit_entries(0, 100)]
    assert kinds == [("agreement", "accept"), ("resource", "accept"), ("attestation", "accept"),
                     ("release", "accept"), ("certificate", "accept")]
    att = h.store.audit_entries(0, 100)[2]
    assert w.session_id not in att.subject  # the cookie value never reaches the audit log
    assert att.subject == "session:" + hashlib.sha256(w.session_id.encode()).hexdigest()[:32]
    assert att.data["measurement"] == CLIENT_MR.hex() and att.data["emulated"] is True
    assert att.data["status"] == "warning"
    assert any("emulated" in r for r in att.reasons)  # the warning is recorded
    h.verify_audit()
    assert svc.current_agreement() == h.signed and svc.agreement_history() == [h.signed]


def test_bare_trustee_sgx_evidence_shape_accepted(mem: Harness) -> None:
    w = mem.attest(bare=True)
    assert mem.session(w).role == "client"


def test_trustee_attester_without_teeflow_claims_needs_default_role() -> None:
    store = open_store("memory://")
    h = Harness(store)
    with pytest.raises(AttestationFailed) as exc:
        h.attest(claims=None)
    assert "no teeflow role claimed" in exc.value.detail
    h2 = Harness(open_store("memory://"), default_role="client")
    w = h2.attest(claims=None)
    s = h2.session(w)
    assert s.role == "client" and s.claims is None and s.party is None


# -- attestation denials ------------------------------------------------------------------------


def _assert_denied(h: Harness, sid: str, needle: str) -> None:
    deny = h.denies("attestation")[-1]
    assert any(needle in r for r in deny.reasons), deny.reasons
    rec = h.store.get_session(sid)
    assert rec is not None and rec.token_digest is None  # nothing bound
    with pytest.raises(TokenNotFound):
        h.service.authorize(session_id=sid)


def test_wrong_measurement_denied(h: Harness) -> None:
    sid, nonce = h.auth()
    req = h.attest_request(nonce, ECKey.generate_key("P-256", private=True),
                           measurement=OTHER_MR)
    with pytest.raises(AttestationFailed) as exc:
        h.service.attest(sid, req)
    assert exc.value.status == 401 and exc.value.type_uri().endswith("/AttestationError")
    assert "mrenclave" in exc.value.detail
    _assert_denied(h, sid, f"mrenclave {OTHER_MR.hex()} not in allowed list")
    h.verify_audit()


def test_replayed_nonce_denied(mem: Harness) -> None:
    sid, nonce = mem.auth()
    key = ECKey.generate_key("P-256", private=True)
    req = mem.attest_request(nonce, key)
    mem.service.attest(sid, req)
    with pytest.raises(AttestationFailed, match="replay"):
        mem.service.attest(sid, req)
    assert any("replay" in r for r in mem.denies("attestation")[-1].reasons)


def test_evidence_bound_to_another_key_denied(mem: Harness) -> None:
    sid, nonce = mem.auth()
    key, other = (ECKey.generate_key("P-256", private=True) for _ in range(2))
    req = mem.attest_request(nonce, key, bind_key=other)
    with pytest.raises(AttestationFailed, match="report_data does not match"):
        mem.service.attest(sid, req)
    _assert_denied(mem, sid, "report_data does not match expected value")


def test_evidence_bound_to_another_nonce_denied(mem: Harness) -> None:
    sid, nonce = mem.auth()
    _, other_nonce = mem.auth()
    req = mem.attest_request(nonce, ECKey.generate_key("P-256", private=True),
                             bind_nonce=other_nonce)
    with pytest.raises(AttestationFailed, match="report_data"):
        mem.service.attest(sid, req)


def test_nonce_of_another_session_is_refused_without_consuming(mem: Harness) -> None:
    sid, nonce = mem.auth()
    _, other_nonce = mem.auth()
    key = ECKey.generate_key("P-256", private=True)
    with pytest.raises(AttestationFailed, match="does not match the session nonce"):
        mem.service.attest(sid, mem.attest_request(other_nonce, key))
    rec = mem.store.get_session(sid)
    assert rec is not None and not rec.consumed
    mem.service.attest(sid, mem.attest_request(nonce, key))  # the right nonce still works


def test_expired_nonce_denied(mem: Harness) -> None:
    sid, nonce = mem.auth()
    req = mem.attest_request(nonce, ECKey.generate_key("P-256", private=True))
    mem.clock.now = NOW + timedelta(seconds=61)
    with pytest.raises(AttestationFailed, match="nonce expired"):
        mem.service.attest(sid, req)


def test_unknown_session_denied(mem: Harness) -> None:
    _, nonce = mem.auth()
    req = mem.attest_request(nonce, ECKey.generate_key("P-256", private=True))
    with pytest.raises(AttestationFailed, match="unknown session"):
        mem.service.attest("no-such-session", req)


def test_wrong_protocol_version_and_unknown_tee(mem: Harness) -> None:
    with pytest.raises(ProtocolVersion) as exc:
        mem.service.auth(AuthRequest(version="0.1.1", tee="sgx"))
    assert exc.value.status == 401 and exc.value.to_dict()["type"].endswith("/ProtocolVersion")
    for tee in ("csv", "cca", "sample", "az-snp-vtpm"):
        with pytest.raises(UnsupportedTee):
            mem.service.auth(AuthRequest(version="0.4.0", tee=tee))
    assert mem.store.purge_sessions(NOW + timedelta(days=1)) == 0  # no session was created


def test_emulated_evidence_denied_when_not_allowed() -> None:
    h = Harness(open_store("memory://"), allow_emulated=False)
    sid, nonce = h.auth()
    with pytest.raises(AttestationFailed, match="emulated evidence not allowed"):
        h.service.attest(sid, h.attest_request(nonce, ECKey.generate_key("P-256", private=True)))
    _assert_denied(h, sid, "emulated evidence not allowed")


def test_declared_hardware_tee_with_emulated_evidence_denied(mem: Harness) -> None:
    with pytest.raises(AttestationFailed, match="declared tee sgx but the evidence is emulated"):
        mem.attest(tee="sgx")


@pytest.mark.parametrize(
    "claims,needle",
    [
        ({**CLAIMS, "party": "mallory"}, "party mallory is not a party"),
        ({**CLAIMS, "package_digest": "ee" * 32}, "is not in the agreement"),
        ({**CLAIMS, "function": "exfiltrate"}, "function exfiltrate is not in package trainer"),
        ({**CLAIMS, "recipients": ["carol"]}, "recipient carol may not receive outputs"),
        ({"role": "compute"}, "no SGX reference values for role compute"),
    ],
)
def test_claims_outside_the_agreement_denied(mem: Harness, claims: dict[str, Any],
                                             needle: str) -> None:
    with pytest.raises(AttestationFailed, match=needle):
        mem.attest(claims=claims)


def test_additional_evidence_and_malformed_evidence_denied(mem: Harness) -> None:
    # Trustee's additional evidence is a TEE -> evidence map; the KBS appraises nvidia only
    with pytest.raises(AttestationFailed, match="additional evidence for TEE tdx is not supp"):
        mem.attest(additional_evidence='{"tdx": {}}')
    with pytest.raises(AttestationFailed, match="additional evidence rejected"):
        mem.attest(additional_evidence="[1]")
    sid, nonce = mem.auth()
    req = mem.attest_request(nonce, ECKey.generate_key("P-256", private=True))
    bad = AttestRequest.model_validate({
        "runtime-data": req.runtime_data.to_wire(),
        "tee-evidence": {"primary_evidence": {"quote": base64.b64encode(b"\x03\x00junk").decode()},
                         "additional_evidence": ""},
    })
    with pytest.raises(AttestationFailed, match="evidence rejected"):
        mem.service.attest(sid, bad)
    sid, nonce = mem.auth()
    odd = AttestRequest.model_validate({
        "runtime-data": req.runtime_data.to_wire() | {"nonce": nonce},
        "tee-evidence": {"primary_evidence": {"report": "x"}, "additional_evidence": ""},
    })
    with pytest.raises(AttestationFailed, match="not SGX evidence"):
        mem.service.attest(sid, odd)


# -- tokens and sessions ------------------------------------------------------------------------


def test_token_checks(mem: Harness) -> None:
    a, b = mem.attest(), mem.attest()
    with pytest.raises(TokenVerifierError, match="does not belong to this session"):
        mem.service.authorize(session_id=a.session_id, token=b.token)
    head, payload, sig = a.token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(TokenVerifierError) as exc:
        mem.service.authorize(session_id=a.session_id, token=f"{head}.{payload}.{flipped}")
    assert exc.value.status == 401
    with pytest.raises(TokenVerifierError):
        mem.service.authorize(session_id=a.session_id, token="not-a-jwt")
    # issue 10: a token travels in result lineage, so alone it is no credential
    with pytest.raises(TokenNotFound, match="session cookie"):
        mem.service.authorize(token=a.token)
    with pytest.raises(TokenNotFound):
        mem.service.authorize()
    sid, _ = mem.auth()
    with pytest.raises(TokenNotFound):
        mem.service.authorize(session_id=sid)
    mem.clock.now = NOW + timedelta(minutes=6)
    with pytest.raises(TokenVerifierError, match="expired"):
        mem.service.authorize(session_id=a.session_id)
    with pytest.raises(TokenVerifierError, match="expired"):
        mem.service.authorize(session_id=a.session_id, token=a.token)


def test_agreement_update_invalidates_tokens(mem: Harness) -> None:
    w = mem.attest()
    mem.service.authorize(session_id=w.session_id, token=w.token)
    v2 = signed_agreement(
        agreement_doc(version=2, previous=mem.agreement_digest.hex(),
                      outputs={"model": ["alice"]}),
        signers=("alice", "carol"),
    )
    record = mem.service.submit_agreement(v2)
    assert record.version == 2 and mem.service.current_agreement() == v2
    assert mem.service.agreement_history() == [mem.signed, v2]
    with pytest.raises(TokenVerifierError, match="agreement"):
        mem.service.authorize(session_id=w.session_id, token=w.token)
    with pytest.raises(TokenVerifierError, match="agreement"):
        mem.service.authorize(session_id=w.session_id)


def test_a_grant_made_before_an_agreement_update_is_refused_with_what_to_do(
    mem: Harness,
) -> None:
    """Issue 14, item 2: an agreement update invalidates every grant made before it. The
    refusal used to say only "Access denied by policy". Now the RFC 7807 detail says the
    common cause and what to run — the same text for a missing resource, so existence is
    not revealed — and the audit entry names the exact term (the grant's agreement)."""
    mem.service.put_resource(mem.upload(os.urandom(32)))
    v2 = signed_agreement(
        agreement_doc(version=2, previous=mem.agreement_digest.hex(),
                      outputs={"model": ["alice"]}),
        signers=("alice", "carol"),
    )
    mem.service.submit_agreement(v2)
    mem.signed = v2
    session = mem.session(mem.attest())
    with pytest.raises(PolicyDeny) as refused:
        mem.service.get_resource(session, PATH)
    body = refused.value.to_dict()
    assert body["detail"] == RELEASE_DENIED_DETAIL
    assert "agreement was updated" in body["detail"]
    assert "teeflow package publish" in body["detail"] and "teeflow kbs audit show" in body[
        "detail"]
    with pytest.raises(PolicyDeny) as missing:
        mem.service.get_resource(session, "alice/dataset-key/none")
    assert missing.value.to_dict() == body  # no existence oracle
    entry = mem.denies("release")[0]
    assert any(r.startswith("grant was made under another agreement (") and
               "teeflow package publish" in r for r in entry.reasons), entry.reasons


def test_agreement_rejections_are_audited(mem: Harness) -> None:
    # an update signed by one party (quorum 2) and a replayed initial agreement
    lone = signed_agreement(
        agreement_doc(version=2, previous=mem.agreement_digest.hex()), signers=("alice",))
    with pytest.raises(AgreementRejected) as exc:
        mem.service.submit_agreement(lone)
    assert exc.value.status == 403 and any("quorum is 2" in r for r in exc.value.reasons)
    with pytest.raises(AgreementRejected, match="version must be 2"):
        mem.service.submit_agreement(mem.signed)
    other = signed_agreement(agreement_doc(federation="other-study"))
    fresh = Harness(open_store("memory://"))
    with pytest.raises(AgreementRejected, match="this KBS serves study"):
        fresh.service.submit_agreement(other)
    assert len(mem.denies("agreement")) == 2
    assert len(mem.service.agreement_history()) == 1
    mem.verify_audit()


def test_no_agreement_means_no_attestation() -> None:
    h = Harness(open_store("memory://"))  # for its keys and request builder
    fresh = open_store("memory://")  # a KBS without any agreement
    svc = KbsService(fresh, h.keys, clock=h.clock, anchors=[emulated_authority().trust_anchor()],
                     collateral=EmulatedCollateralProvider(emulated_authority()))
    sid, ch = svc.auth(AuthRequest(version="0.4.0", tee="emulated-sgx"))
    req = h.attest_request(ch.nonce, ECKey.generate_key("P-256", private=True))
    with pytest.raises(AttestationFailed, match="no federation agreement"):
        svc.attest(sid, req)


# -- certificates and counters -----------------------------------------------------------------


def test_certificate_needs_the_attested_key(mem: Harness) -> None:
    session = mem.session(mem.attest())
    with pytest.raises(PolicyDeny, match="not the attested tee-pubkey"):
        mem.service.issue_certificate(session, csr_for(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(InvalidRequest):
        mem.service.issue_certificate(session, b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n")
    assert len(mem.denies("certificate")) == 1


def test_counters(mem: Harness) -> None:
    client = mem.session(mem.attest())
    with pytest.raises(PolicyDeny):
        mem.service.increment_counter(client, "session/s1", 0, b"\x01" * 32)
    assert mem.service.get_counter("session/s1") is None  # nothing written
    agg_claims = {"role": "aggregator", "party": "carol", "session": "s1"}
    agg = mem.session(mem.attest(claims=agg_claims, measurement=AGG_MR))
    st = mem.service.increment_counter(agg, "session/s1", 0, b"\x01" * 32)
    assert (st.value, st.digest) == (1, "01" * 32)
    with pytest.raises(Conflict) as exc:
        mem.service.increment_counter(agg, "session/s1", 0, b"\x02" * 32)
    assert exc.value.status == 409
    assert mem.service.get_counter("session/s1") == st
    assert mem.service.increment_counter(client, "client/alice", 0, b"\x03" * 16).value == 1
    # issue 10 (P): a counter belongs to one session/role/party scope
    other_agg = mem.session(mem.attest(claims={**agg_claims, "session": "s2"},
                                       measurement=AGG_MR))
    for who, name in ((other_agg, "session/s1"), (client, "client/bob"),
                      (client, "compute/" + "0" * 32), (agg, "elsewhere/x")):
        with pytest.raises(PolicyDeny):
            mem.service.increment_counter(who, name, 1, b"\x04" * 32)
    assert mem.service.get_counter("session/s1") == st  # untouched
    for bad in ("", "../x", "/abs", "a" * 129, "sp ace"):
        with pytest.raises(InvalidRequest):
            mem.service.increment_counter(agg, bad, 0, b"\x01" * 32)
    with pytest.raises(InvalidRequest):
        mem.service.increment_counter(agg, "session/s1", 1, b"\x01" * 8)
    assert [e.decision for e in mem.store.audit_entries(0, 100) if e.kind == "counter"] == [
        "deny", "accept", "deny", "accept", "deny", "deny", "deny", "deny"]
    mem.verify_audit()


def test_audit_entries_paging(mem: Harness) -> None:
    mem.attest()
    first = mem.service.audit_entries(0, 1)
    assert [e.seq for e in first] == [1]
    assert [e.seq for e in mem.service.audit_entries(1, 10)] == [2]


def test_first_agreement_is_fixed_at_start() -> None:
    """Issue 10 (N): anyone could submit the first agreement of a fresh KBS. With
    ``first_agreement`` only the agreed document founds the federation; a stranger's
    (validly self-signed) agreement is refused and audited."""
    h = Harness(open_store("memory://"))
    doc = agreement_doc()  # the same parties' names, with keys the stranger holds
    forged = {n: PartyKeys.generate(n) for n in doc["parties"]}
    for n, k in forged.items():
        doc["parties"][n] = {**doc["parties"][n], "sign_key": k.public().sign_key,
                             "recipient_key": k.public().recipient_key}
    stranger = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for k in forged.values():
        stranger = stranger.signed_by(k)
    authority = emulated_authority()
    fresh = open_store("memory://")
    svc = KbsService(fresh, h.keys, clock=h.clock, anchors=[authority.trust_anchor()],
                     collateral=EmulatedCollateralProvider(authority),
                     first_agreement=digest(h.signed.agreement))
    with pytest.raises(AgreementRejected, match="accepts as first agreement only"):
        svc.submit_agreement(stranger)
    assert svc.current_agreement() is None
    assert [(e.kind, e.decision) for e in fresh.audit_entries(0, 10)] == [("agreement", "deny")]
    assert svc.submit_agreement(h.signed).version == 1
    with pytest.raises(KbsError):
        KbsService(fresh, h.keys, clock=h.clock, anchors=[],
                   collateral=EmulatedCollateralProvider(authority), first_agreement=b"short")


def test_issued_token_cached_as_its_verified_session(h: Harness) -> None:
    """The session cached at issuance is exactly what full EAR verification rebuilds, so
    the first bearer use may skip ES256 (issue 10 performance) without changing meaning."""
    from teeflow.attestation.ear import verify_ear
    from teeflow.kbs.service.rcar import session_from_ear

    w = h.attest()
    ctx = h.service._ctx
    cached = ctx.tokens.get(w.token, h.clock.now)
    assert cached is not None
    rebuilt = session_from_ear(verify_ear(w.token, ctx.ear_public, now=h.clock.now, nonce=None),
                               w.token)
    assert cached == rebuilt
    assert h.service.authorize(session_id=w.session_id, token=w.token) == rebuilt
