"""KBS multi-TEE attestation (no HTTP): emulated SGX, TDX and SEV-SNP evidence through
KbsService.auth/attest, typed TDX/SNP reference values, evidence shapes, collateral routing.

Evidence is real-format: DCAP quote v4 from EmulatedTdx (same emulation authority as SGX),
SNP ATTESTATION_REPORT v3 from EmulatedSnp; REPORT_DATA binds the runtime data.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import ECKey

from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.ear import generate_ear_signing_key, verify_ear
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import CollateralError, ParseError, PolicyViolation
from teeflow.kbs.api.problems import AttestationFailed, UnsupportedTee
from teeflow.kbs.ca.authority import FederationCA
from teeflow.kbs.client.sdk import primary_evidence
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    SnpReferenceValues,
    TdxReferenceValues,
)
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.protocol import SUPPORTED_TEES, AttestRequest, AuthRequest
from teeflow.kbs.service.collateral import (
    DirectoryCollateralProvider,
    EmulatedCollateralProvider,
    KdsSnpEndorsementProvider,
    SnpEndorsements,
)
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.service.evidence import EVIDENCE_TYPES, evidence_platform, evidence_type
from teeflow.kbs.store import (
    open_store,
)
from teeflow.kbs.store.interface import (
    KbsStore,
)
from teeflow.platform.emulated import EmulatedSgx
from teeflow.platform.emulated_snp import EmulatedSnp
from teeflow.platform.emulated_tdx import EmulatedTdx, make_tdx_collateral_files
from teeflow.testing.enrollment import with_enrollment
from teeflow.testing.evidence import DEFAULT_NOW, emulated_authority

NOW = DEFAULT_NOW
SGX_MR = hashlib.sha256(b"multitee sgx").digest()
MRTD = hashlib.sha384(b"multitee td").digest()
RTMR0 = hashlib.sha384(b"multitee rtmr0").digest()
SNP_MR = hashlib.sha384(b"multitee snp guest").digest()
OTHER48 = hashlib.sha384(b"someone else").digest()
PKG = "c0" * 32
CLAIMS: dict[str, Any] = {"role": "client", "party": "alice", "package_digest": PKG,
                          "function": "train", "recipients": ["alice"]}
PARTIES = {n: PartyKeys.generate(n) for n in ("alice", "bob")}
SNP = EmulatedSnp.generate(now=NOW - timedelta(days=1), measurement=SNP_MR)


class Keys:
    def __init__(self) -> None:
        self.hpke = X25519PrivateKey.generate()
        self.ca = FederationCA.generate("study", now=NOW - timedelta(days=1))
        self.ear = generate_ear_signing_key()
        self.audit = Ed25519PrivateKey.generate()


def agreement(*, allow_emulated: bool = True) -> SignedAgreement:
    doc = {
        "federation": "study", "version": 1, "previous": None,
        "parties": {n: {"sign_key": k.public().sign_key, "recipient_key": k.public().recipient_key,
                        "roles": ["data-owner"]} for n, k in PARTIES.items()},
        "workloads": {
            "client": {"sgx": {"mrenclave": [SGX_MR.hex()]},
                       "tdx": {"mrtd": [MRTD.hex()], "rtmr0": RTMR0.hex()},
                       "snp": {"measurement": [SNP_MR.hex()], "vmpl": 0}},
            "aggregator": {"sgx": {"mrenclave": [SGX_MR.hex()]}},
        },
        "packages": {"trainer": {"digest": PKG, "entrypoints": ["train"], "readers": ["alice"]}},
        "outputs": {"model": ["alice"]},
        "allow_emulated": allow_emulated,
        "update_quorum": {"k": 1},
    }
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for k in PARTIES.values():
        signed = signed.signed_by(k)
    return signed


class Kbs:
    def __init__(self, *, allow_emulated: bool = True, snp_endorsements: Any = None) -> None:
        self.store: KbsStore = open_store("memory://")
        self.keys = Keys()
        authority = emulated_authority()
        self.service = KbsService(
            self.store, self.keys, clock=lambda: NOW,
            anchors=[intel_sgx_root_ca(), authority.trust_anchor(), SNP.trust_anchor()],
            collateral=EmulatedCollateralProvider(authority),
            snp_endorsements=snp_endorsements,
        )
        self.service.submit_agreement(agreement(allow_emulated=allow_emulated))

    def attest(self, tee: str, platform: Any, *, claims: dict[str, Any] | None = None,
               evidence: Any = None, bind_nonce: str | None = None) -> tuple[str, str]:
        sid, challenge = self.service.auth(AuthRequest(version="0.4.0", tee=tee))
        key = ECKey.generate_key("P-256", private=True)
        jwk = {**key.as_dict(private=False), "alg": "ECDH-ES+A256KW"}
        teeflow = claims if claims is not None else CLAIMS
        if "enrollment" not in teeflow:
            teeflow = with_enrollment(teeflow, PARTIES["alice"], now=NOW)
        rd = runtime_data_digest(tee_pubkey=jwk, nonce=bind_nonce or challenge.nonce,
                                 teeflow=teeflow)
        primary = evidence(rd) if evidence is not None else primary_evidence(
            platform.evidence(rd))
        req = AttestRequest.model_validate({
            "runtime-data": {"nonce": challenge.nonce, "tee-pubkey": jwk, "teeflow": teeflow},
            "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
        })
        return sid, self.service.attest(sid, req).token

    def audit(self, decision: str) -> list[Any]:
        return [e for e in self.store.audit_entries(0, 10_000)
                if e.kind == "attestation" and e.decision == decision]


def tdx_platform(**kw: Any) -> EmulatedTdx:
    fields: dict[str, Any] = {"mrtd": MRTD, "rtmrs": (RTMR0, bytes(48), bytes(48), bytes(48))}
    fields.update(kw)
    return EmulatedTdx(emulated_authority(), **fields)


@pytest.fixture
def kbs() -> Kbs:
    return Kbs()


# -- accepted flows --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tee", "platform", "measurement"),
    [
        ("emulated-tdx", tdx_platform(), MRTD.hex()),
        ("emulated-snp", SNP, SNP_MR.hex()),
        ("emulated-sgx", EmulatedSgx(emulated_authority(), measurement=SGX_MR), SGX_MR.hex()),
    ],
)
def test_emulated_evidence_of_each_tee_is_accepted(kbs: Kbs, tee: str, platform: Any,
                                                   measurement: str) -> None:
    sid, token = kbs.attest(tee, platform)
    ear = verify_ear(token, kbs.keys.ear, now=NOW, nonce=None)
    attested = ear.claims["teeflow.attested"]
    assert attested["tee"] == tee and attested["emulated"] is True
    assert attested["measurement"] == measurement
    session = kbs.service.authorize(session_id=sid)
    assert session.tee == tee and session.measurement == measurement
    [entry] = kbs.audit("accept")
    assert entry.data["tee"] == tee and entry.data["measurement"] == measurement


def test_snp_evidence_forms_base64_and_provider(kbs: Kbs) -> None:
    der = [c.public_bytes(serialization.Encoding.DER)
           for c in (SNP.vcek_certificate, SNP.ask_certificate)]

    def b64_chain(rd: bytes) -> dict[str, Any]:
        return {"attestation_report": base64.b64encode(SNP.report(rd)).decode(),
                "cert_chain": [{"cert_type": "VCEK", "data": base64.b64encode(der[0]).decode()},
                               {"cert_type": {"OTHER": "00" * 16}, "data": [1, 2]},
                               {"cert_type": "ASK", "data": base64.b64encode(der[1]).decode()}]}

    kbs.attest("emulated-snp", SNP, evidence=b64_chain)

    class Provider:
        def for_report(self, report: Any, *, now: Any) -> SnpEndorsements:
            assert report.chip_id == SNP.keys.chip_id
            return SnpEndorsements(SNP.vcek_certificate, (SNP.ask_certificate,), SNP.crl(now))

    with_provider = Kbs(snp_endorsements=Provider())
    with_provider.attest("emulated-snp", SNP, evidence=lambda rd: {
        "attestation_report": list(SNP.report(rd))})


def test_tdx_event_log_is_not_replayed_but_noted(kbs: Kbs) -> None:
    td = tdx_platform()
    kbs.attest("emulated-tdx", td, evidence=lambda rd: {
        "quote": base64.b64encode(td.quote(rd)).decode(), "cc_eventlog": "AAAA"})
    [entry] = kbs.audit("accept")
    assert any("cc_eventlog not replayed" in r for r in entry.reasons)
    with pytest.raises(AttestationFailed, match="cc_eventlog is not valid base64"):
        kbs.attest("emulated-tdx", td, evidence=lambda rd: {
            "quote": base64.b64encode(td.quote(rd)).decode(), "cc_eventlog": "@@"})


# -- denials ---------------------------------------------------------------------------------


def _denied(kbs: Kbs, needle: str, tee: str, platform: Any, **kw: Any) -> None:
    before = len(kbs.audit("deny"))
    with pytest.raises(AttestationFailed) as exc:
        kbs.attest(tee, platform, **kw)
    assert needle in exc.value.detail
    denials = kbs.audit("deny")
    assert len(denials) == before + 1 and any(needle in r for r in denials[-1].reasons)
    assert not kbs.audit("accept")


@pytest.mark.parametrize(
    ("tee", "platform", "needle"),
    [
        ("emulated-tdx", EmulatedSgx(emulated_authority(), measurement=SGX_MR),
         "declared tee emulated-tdx but the evidence is SGX evidence"),
        ("emulated-sgx", tdx_platform(), "declared tee emulated-sgx but the evidence is TDX"),
        ("emulated-tdx", SNP, "declared tee emulated-tdx but the evidence is SNP evidence"),
        ("emulated-snp", tdx_platform(), "declared tee emulated-snp but the evidence is TDX"),
        ("tdx", tdx_platform(), "declared tee tdx but the evidence is emulated-tdx"),
        ("snp", SNP, "declared tee snp but the evidence is emulated-snp"),
    ],
)
def test_claimed_tee_must_match_the_evidence(kbs: Kbs, tee: str, platform: Any,
                                             needle: str) -> None:
    _denied(kbs, needle, tee, platform)


def test_wrong_measurements_are_denied(kbs: Kbs) -> None:
    _denied(kbs, f"mrtd {OTHER48.hex()} not in allowed list", "emulated-tdx",
            tdx_platform(mrtd=OTHER48))
    _denied(kbs, "rtmr0", "emulated-tdx", tdx_platform(rtmrs=(OTHER48,) + (bytes(48),) * 3))
    other = EmulatedSnp(SNP.keys, measurement=OTHER48)
    _denied(kbs, f"measurement {OTHER48.hex()} not in allowed list", "emulated-snp", other)
    _denied(kbs, "vmpl 2 not allowed", "emulated-snp", EmulatedSnp(SNP.keys, measurement=SNP_MR,
                                                                   vmpl=2))


def test_binding_role_and_emulation_rules() -> None:
    kbs = Kbs()
    _denied(kbs, "report_data does not match", "emulated-snp", SNP, bind_nonce="AAAA")
    _denied(kbs, "report_data does not match", "emulated-tdx", tdx_platform(), bind_nonce="AAAA")
    _denied(kbs, "agreement has no TDX reference values for role aggregator", "emulated-tdx",
            tdx_platform(), claims={"role": "aggregator"})
    strict = Kbs(allow_emulated=False)
    _denied(strict, "emulated evidence not allowed", "emulated-tdx", tdx_platform())
    _denied(strict, "emulated evidence not allowed", "emulated-snp", SNP)


@pytest.mark.parametrize(
    ("evidence", "needle"),
    [
        (lambda rd: {"attestation_report": {"version": 3}}, "object form is not supported"),
        (lambda rd: {"attestation_report": base64.b64encode(SNP.report(rd)).decode()},
         "no cert_chain in the evidence"),
        (lambda rd: {"attestation_report": "not base64!"}, "not valid base64"),
        (lambda rd: {"attestation_report": list(SNP.report(rd)), "cert_chain": [
            {"cert_type": "ASK", "data": list(SNP.ask_certificate.public_bytes(
                serialization.Encoding.DER))}]}, "exactly one VCEK or VLEK"),
        (lambda rd: {"attestation_report": list(SNP.report(rd))[:100],
                     "cert_chain": [{"cert_type": "VCEK", "data": [0]}]}, "evidence rejected"),
        (lambda rd: {"report": "x"}, "primary_evidence is not SNP evidence"),
    ],
)
def test_malformed_snp_evidence_is_denied(kbs: Kbs, evidence: Any, needle: str) -> None:
    _denied(kbs, needle, "emulated-snp", SNP, evidence=evidence)


def test_unsupported_tee_still_refused(kbs: Kbs) -> None:
    assert {"sgx", "tdx", "snp", "emulated-tdx", "emulated-snp"} <= SUPPORTED_TEES
    assert set(EVIDENCE_TYPES) == SUPPORTED_TEES
    for tee in ("csv", "az-snp-vtpm", "cca"):
        assert evidence_type(tee) is None
        with pytest.raises(UnsupportedTee):
            kbs.service.auth(AuthRequest(version="0.4.0", tee=tee))


# -- building blocks -----------------------------------------------------------------------------


def test_evidence_platform_sniffing() -> None:
    sgx_q = EmulatedSgx(emulated_authority(), measurement=SGX_MR).quote(b"")
    tdx_q = tdx_platform().quote(b"")
    assert evidence_platform({"quote": base64.b64encode(sgx_q).decode()}) == "sgx"
    assert evidence_platform({"quote": base64.b64encode(tdx_q).decode()}) == "tdx"
    assert evidence_platform({"attestation_report": "x"}) == "snp"
    assert evidence_platform({"quote": "%%%%%%%%%%%%%%"}) is None
    assert evidence_platform({"quote": 5}) is None


def test_typed_reference_values_to_policies() -> None:
    signed = agreement()
    tdx_pol = signed.agreement.tdx_policy("client")
    assert tdx_pol.mrtds == (MRTD.hex(),) and tdx_pol.rtmr0 == RTMR0.hex()
    assert tdx_pol.allow_emulated is True and not tdx_pol.allow_debug
    snp_pol = signed.agreement.snp_policy("client")
    assert snp_pol.measurements == (SNP_MR.hex(),) and snp_pol.vmpl == 0
    with pytest.raises(PolicyViolation, match="no SNP reference values for role aggregator"):
        signed.agreement.snp_policy("aggregator")
    with pytest.raises(ValueError, match="set mrtd and/or an rtmr"):
        TdxReferenceValues(xfam="00" * 8)
    with pytest.raises(ValueError, match="Revoked"):
        TdxReferenceValues(mrtd=(MRTD.hex(),), accepted_tcb_statuses=("Revoked",))
    with pytest.raises(ValueError):
        SnpReferenceValues(measurement=())
    upper = TdxReferenceValues(mrtd=(MRTD.hex().upper(), MRTD.hex()))
    assert upper.mrtd == (MRTD.hex(),)  # normalised: the agreement digest ignores case/dupes


def test_emulated_collateral_is_routed_by_tee() -> None:
    provider = EmulatedCollateralProvider(emulated_authority())
    sgx_q = parse_quote(EmulatedSgx(emulated_authority(), measurement=SGX_MR).quote(b""))
    tdx_q = parse_quote(tdx_platform().quote(b""))
    sgx_c, tdx_c = provider.for_quote(sgx_q, now=NOW), provider.for_quote(tdx_q, now=NOW)
    assert sgx_c is not None and tdx_c is not None
    assert sgx_c.tcb_info.id == "SGX" and tdx_c.tcb_info.id == "TDX"
    assert provider.for_quote(tdx_q, now=NOW) is tdx_c  # cached while fresh


def test_directory_collateral_keyed_by_fmspc_and_tee(tmp_path: Path) -> None:
    authority = emulated_authority()
    sgx_dir = authority.write_collateral_dir(tmp_path / "sgx", NOW)
    tdx_dir = tmp_path / "tdx"
    tdx_dir.mkdir()
    for name, data in make_tdx_collateral_files(authority.keys, NOW).files.items():
        (tdx_dir / name).write_bytes(data)
    provider = DirectoryCollateralProvider([sgx_dir, tdx_dir])
    assert len(provider.fmspcs) == 1
    tdx_q = parse_quote(tdx_platform().quote(b""))
    sgx_q = parse_quote(EmulatedSgx(authority, measurement=SGX_MR).quote(b""))
    got_tdx, got_sgx = provider.for_quote(tdx_q, now=NOW), provider.for_quote(sgx_q, now=NOW)
    assert got_tdx is not None and got_tdx.tcb_info.id == "TDX"
    assert got_sgx is not None and got_sgx.tcb_info.id == "SGX"


class FakeKds:
    """CachingAmdKdsClient stand-in serving the emulated platform's certificates."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def vcek(self, product: str, hwid: bytes, tcb: dict[str, int], *, now: Any) -> bytes:
        self.calls.append(("vcek", product, bytes(hwid), dict(tcb)))
        return SNP.vcek_certificate.public_bytes(serialization.Encoding.DER)

    def cert_chain(self, product: str, key: str = "vcek", *, now: Any) -> tuple[bytes, bytes]:
        pem = serialization.Encoding.PEM
        return SNP.ask_certificate.public_bytes(pem), SNP.ark_certificate.public_bytes(pem)

    def crl(self, product: str, key: str = "vcek", *, now: Any) -> bytes:
        return SNP.crl(now).public_bytes(serialization.Encoding.DER)


def test_kds_endorsement_provider_serves_reports_without_a_chain() -> None:
    kds = FakeKds()
    provider = KdsSnpEndorsementProvider(kds)  # type: ignore[arg-type]
    kbs = Kbs(snp_endorsements=provider)
    kbs.attest("emulated-snp", SNP, evidence=lambda rd: {
        "attestation_report": base64.b64encode(SNP.report(rd)).decode()})
    [(kind, product, hwid, tcb)] = kds.calls
    assert kind == "vcek" and product == str(SNP.product) and hwid == SNP.keys.chip_id
    assert set(tcb) >= {"bl", "tee", "snp", "ucode"}

    class Broken(FakeKds):
        def crl(self, product: str, key: str = "vcek", *, now: Any) -> bytes:
            return b"not a crl"

    with pytest.raises(CollateralError, match="malformed"):
        KdsSnpEndorsementProvider(Broken()).for_report(  # type: ignore[arg-type]
            __import__("teeflow.attestation.snp", fromlist=["parse_report"]).parse_report(
                SNP.report(os.urandom(64))), now=NOW)


def test_primary_evidence_shapes() -> None:
    rd = os.urandom(64)
    snp_ev = primary_evidence(SNP.evidence(rd))
    assert [e["cert_type"] for e in snp_ev["cert_chain"]] == ["VCEK", "ASK", "ARK"]
    assert all(isinstance(b, int) for b in snp_ev["cert_chain"][0]["data"])
    assert base64.b64decode(snp_ev["attestation_report"])[0x50:0x90] == rd
    assert set(primary_evidence(tdx_platform().evidence(rd))) == {"quote"}
    # the Attester protocol: tee and kind (the RCAR tee a client declares by default)
    assert (SNP.tee, SNP.kind) == ("emulated-snp", "emulated")
    assert (tdx_platform().tee, tdx_platform().kind) == ("emulated-tdx", "emulated")
    with pytest.raises(ParseError):
        EVIDENCE_TYPES["snp"].verify({"attestation_report": {}}, None)  # type: ignore[arg-type]
