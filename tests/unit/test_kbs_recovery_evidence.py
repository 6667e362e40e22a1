"""Party-side appraisal of a recovering KBS's evidence on every TEE the KBS attests
(emulated SGX, TDX, SEV-SNP): accepted when the agreement names the KBS, refused otherwise,
and bound to the nonce, the TLS key and the declared TEE."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.errors import PolicyViolation, VerificationError
from teeflow.kbs.client.recovery import verify_recovery_evidence
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.kbs.service.recovery import create_share_set
from teeflow.kbs.service.recovery_mode import NeedsRecovery, RecoveryCoordinator
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority
from teeflow.platform.emulated_snp import EmulatedSnp
from teeflow.platform.emulated_tdx import EmulatedTdx

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
MR32 = bytes.fromhex("11" * 32)
MR48 = bytes.fromhex("22" * 48)
NONCE = b"n" * 32


def _agreement(parties: dict[str, PartyKeys], kbs: dict[str, Any]) -> FederationAgreement:
    return FederationAgreement.from_mapping(
        {
            "federation": "fed",
            "version": 1,
            "parties": {
                n: {
                    "sign_key": p.public().sign_key,
                    "recipient_key": p.public().recipient_key,
                    "roles": ["data-owner"],
                }
                for n, p in parties.items()
            },
            "workloads": {"kbs": kbs},
            "allow_emulated": True,
            "update_quorum": {"k": 1},
        }
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("home")
    authority = EmulationAuthority.load_or_create(home, now=NOW)
    snp = EmulatedSnp.load_or_create(home, now=NOW, measurement=MR48)
    parties = {"alice": PartyKeys.generate("alice")}
    return {"home": home, "authority": authority, "snp": snp, "parties": parties}


def _primary(world: dict[str, Any], tee: str) -> Any:
    authority = world["authority"]
    if tee == "emulated-sgx":
        sgx = EmulatedSgx(authority, measurement=MR32)
        return lambda rd: {"quote": base64.b64encode(sgx.quote(rd)).decode()}
    if tee == "emulated-tdx":
        td = EmulatedTdx(authority, mrtd=MR48)
        return lambda rd: {"quote": base64.b64encode(td.quote(rd)).decode()}
    snp: EmulatedSnp = world["snp"]
    chain = [
        ("VCEK", snp.vcek_certificate),
        ("ASK", snp.ask_certificate),
        ("ARK", snp.ark_certificate),
    ]
    return lambda rd: {
        "attestation_report": base64.b64encode(snp.report(rd)).decode(),
        "cert_chain": [
            {"cert_type": kind, "data": list(cert.public_bytes(Encoding.DER))}
            for kind, cert in chain
        ],
    }


KBS_VALUES = {
    "emulated-sgx": ({"sgx": {"mrenclave": [MR32.hex()]}}, {"sgx": {"mrenclave": ["33" * 32]}}),
    "emulated-tdx": ({"tdx": {"mrtd": [MR48.hex()]}}, {"tdx": {"mrtd": ["44" * 48]}}),
    "emulated-snp": (
        {"snp": {"measurement": [MR48.hex()]}},
        {"snp": {"measurement": ["44" * 48]}},
    ),
}


def _evidence(world: dict[str, Any], tee: str) -> tuple[bytes, str]:
    agreement = _agreement(world["parties"], KBS_VALUES[tee][0])
    made = create_share_set(agreement, bytes(32))
    coordinator = RecoveryCoordinator(
        NeedsRecovery(made.record, b"", "test"),
        federation="fed",
        primary_evidence=_primary(world, tee),
        tee=tee,
        now=NOW,
    )
    doc = coordinator.evidence(NONCE)
    return json.dumps(doc).encode(), doc["recovery"]["tls_spki_sha256"]


def _verify(
    world: dict[str, Any],
    document: bytes,
    spki: str,
    kbs: dict[str, Any],
    nonce: bytes = NONCE,
    allow_emulated: bool = True,
) -> dict[str, Any]:
    authority: EmulationAuthority = world["authority"]
    return verify_recovery_evidence(
        document,
        nonce=nonce,
        agreement=_agreement(world["parties"], kbs),
        allow_emulated=allow_emulated,
        anchors=[authority.trust_anchor(), world["snp"].trust_anchor()],
        collateral=EmulatedCollateralProvider(authority),
        now=NOW + timedelta(seconds=30),
        observed_tls_spki=[spki],
    )


@pytest.mark.parametrize("tee", sorted(KBS_VALUES))
def test_named_kbs_accepted_unnamed_refused(world: dict[str, Any], tee: str) -> None:
    document, spki = _evidence(world, tee)
    named, unnamed = KBS_VALUES[tee]
    bundle = _verify(world, document, spki, named)
    assert bundle["tls_spki_sha256"] == spki
    with pytest.raises(PolicyViolation):
        _verify(world, document, spki, unnamed)
    with pytest.raises(PolicyViolation):  # another nonce: REPORT_DATA differs
        _verify(world, document, spki, named, nonce=b"m" * 32)
    with pytest.raises(PolicyViolation):
        _verify(world, document, spki, named, allow_emulated=False)
    with pytest.raises(VerificationError):  # a TLS key other than the bound one
        _verify(world, document, "00" * 32, named)


def test_swapped_recovery_key_breaks_the_binding(world: dict[str, Any]) -> None:
    document, spki = _evidence(world, "emulated-sgx")
    doc = json.loads(document)
    doc["recovery"]["hpke_public_key"] = "A" * 43
    with pytest.raises(PolicyViolation):
        _verify(world, json.dumps(doc).encode(), spki, KBS_VALUES["emulated-sgx"][0])


def test_declared_tee_must_match(world: dict[str, Any]) -> None:
    document, spki = _evidence(world, "emulated-sgx")
    doc = json.loads(document)
    doc["tee"] = "sgx"  # claims hardware; the evidence chains to the emulation root
    with pytest.raises((VerificationError, PolicyViolation)):
        _verify(world, json.dumps(doc).encode(), spki, KBS_VALUES["emulated-sgx"][0])
