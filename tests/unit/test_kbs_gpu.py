"""KBS: GPU evidence in RCAR additional_evidence, appraised with the CPU evidence.

A role whose agreement entry has ``gpu`` reference values needs CPU AND GPU evidence. GPU
evidence comes from the real GpuAttester over the emulated NVML stand-in (Hopper and
Blackwell), in Trustee's shape, with Trustee's device nonce; the CPU quote binds the
``additional-evidence`` text. Attack tests: missing GPU evidence, tampered transcript,
wrong nonce, evidence swapped after the CPU quote was made, emulated root without
allow_emulated, architecture/driver floor not met, GPU evidence for a role without GPU values.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import ECKey
from test_kbs_service import NOW, Clock, Harness, Keys, agreement_doc, signed_agreement

from teeflow.attestation.additional_evidence import encode_additional_evidence
from teeflow.attestation.ear import generate_ear_signing_key, verify_ear
from teeflow.attestation.nvidia.trustee import gpu_nonce
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.attestation.trust.nvidia import nvidia_device_identity_ca
from teeflow.kbs.api.problems import AttestationFailed
from teeflow.kbs.ca.authority import FederationCA
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.store import open_store
from teeflow.platform.emulated_nvidia import EmulatedNvidiaAuthority, EmulatedNvml
from teeflow.platform.nvidia import GpuAttester
from teeflow.testing.evidence import emulated_authority

GPU_VALUES: dict[str, Any] = {
    "architectures": ["HOPPER", "BLACKWELL"],
    "min_driver_version": "550.54",
}
NVIDIA = EmulatedNvidiaAuthority.generate(now=NOW)


class GpuHarness(Harness):
    """Harness whose agreement gives the client role GPU reference values."""

    def __init__(
        self,
        gpu: dict[str, Any] | None = GPU_VALUES,
        *,
        allow_emulated: bool = True,
        gpu_anchors: list[Any] | None = None,
    ) -> None:
        self.store = open_store("memory://")
        self.clock = Clock(NOW)
        self.keys = Keys(
            hpke=X25519PrivateKey.generate(),
            ca=FederationCA.generate("study", now=NOW - timedelta(days=1)),
            ear=generate_ear_signing_key(),
            audit=Ed25519PrivateKey.generate(),
        )
        authority = emulated_authority()
        self.service = KbsService(
            self.store,
            self.keys,
            clock=self.clock,
            rng=os.urandom,
            anchors=[intel_sgx_root_ca(), authority.trust_anchor()],
            collateral=EmulatedCollateralProvider(authority),
            gpu_anchors=gpu_anchors
            if gpu_anchors is not None
            else [nvidia_device_identity_ca(), NVIDIA.trust_anchor()],
        )
        doc = agreement_doc(allow_emulated=allow_emulated)
        if gpu is not None:
            doc["workloads"]["client"]["gpu"] = gpu
        self.signed = signed_agreement(doc)
        self.service.submit_agreement(self.signed)

    def gpu_attest(self, arch: str = "HOPPER", *, tamper: Any = None, nonce: bytes | None = None,
                   count: int = 1, bind_tampered: bool = False) -> str:  # fmt: skip
        """One RCAR round with GPU evidence; returns the EAR token."""
        sid, challenge = self.auth()
        key = ECKey.generate_key("P-256", private=True)
        jwk = dict(key.as_dict(private=False), alg="ECDH-ES+A256KW")
        spdm_nonce = nonce if nonce is not None else gpu_nonce(tee_pubkey=jwk, nonce=challenge)
        gpus = [NVIDIA.device(arch, index=i) for i in range(count)]
        evidence = GpuAttester(EmulatedNvml(gpus), kind="emulated").evidence(spdm_nonce)
        bound = encode_additional_evidence({"nvidia": evidence})
        sent = bound
        if tamper is not None:
            sent = encode_additional_evidence({"nvidia": tamper(json.loads(json.dumps(evidence)))})
            if bind_tampered:  # a compromised guest binds what it sends
                bound = sent
        request = self.attest_request(challenge, key, additional_evidence=bound)
        evidence_sent = request.composite().model_copy(update={"additional_evidence": sent})
        request = request.model_copy(update={"tee_evidence": evidence_sent})
        return self.service.attest(sid, request).token


def _flip_transcript(evidence: dict[str, Any]) -> dict[str, Any]:
    entry = evidence["device_evidence_list"][0]
    raw = bytearray(base64.b64decode(entry["evidence"]))
    raw[60] ^= 1
    entry["evidence"] = base64.b64encode(bytes(raw)).decode()
    return evidence


@pytest.mark.parametrize("arch", ["HOPPER", "BLACKWELL"])
def test_cpu_and_gpu_evidence_accepted(arch: str) -> None:
    h = GpuHarness()
    token = h.gpu_attest(arch, count=2)
    public = ECKey.import_key(h.keys.ear.as_dict(private=False))
    ear = verify_ear(token, public, now=h.clock.now, nonce=None)
    assert set(ear.submods) == {"cpu0", "gpu0", "gpu1"}
    assert ear.submods["gpu0"].claims["arch"] == arch
    assert ear.submods["cpu0"].claims["teeflow.composite"]["gpu_evidence_bound"] is True
    assert ear.claims["teeflow.attested"]["emulated"] is True


def test_role_requiring_gpu_refused_without_gpu_evidence() -> None:
    h = GpuHarness()
    with pytest.raises(AttestationFailed, match="requires GPU evidence"):
        h.attest()
    with pytest.raises(AttestationFailed, match="requires GPU evidence"):
        h.attest(additional_evidence="{}")


def test_tampered_gpu_evidence_refused() -> None:
    h = GpuHarness()
    # tampered in transit: the CPU quote no longer matches, and the signature fails
    with pytest.raises(AttestationFailed, match=r"report_data does not match.*signature"):
        h.gpu_attest(tamper=_flip_transcript)
    # tampered before binding (the CPU quote covers it): the GPU signature alone refuses it
    with pytest.raises(AttestationFailed, match="gpu0: SPDM MEASUREMENTS signature is invalid"):
        h.gpu_attest(tamper=_flip_transcript, bind_tampered=True)


def test_gpu_evidence_swapped_after_cpu_quote_refused() -> None:
    """Valid GPU evidence, but not the one the CPU quote bound: REPORT_DATA mismatch."""
    h = GpuHarness()
    other = NVIDIA.device("HOPPER")

    def swap(evidence: dict[str, Any]) -> dict[str, Any]:
        nonce = base64.b64decode(evidence["device_evidence_list"][0]["evidence"])[4:36]
        fresh = GpuAttester(EmulatedNvml([other])).evidence(nonce)
        return fresh

    with pytest.raises(AttestationFailed, match="report_data does not match"):
        h.gpu_attest(tamper=swap)


def test_stale_gpu_nonce_refused() -> None:
    h = GpuHarness()
    with pytest.raises(AttestationFailed, match="nonce"):
        h.gpu_attest(nonce=b"\x00" * 32)


def test_emulated_gpu_refused_without_allow_emulated() -> None:
    # the CPU is emulated too, so both are refused; the GPU reason must be among them
    h = GpuHarness(allow_emulated=False)
    with pytest.raises(AttestationFailed, match=r"gpu0: .*emulat"):
        h.gpu_attest()


def test_emulated_gpu_root_not_configured_refused() -> None:
    h = GpuHarness(gpu_anchors=[nvidia_device_identity_ca()])
    with pytest.raises(AttestationFailed, match="GPU evidence rejected: gpu0"):
        h.gpu_attest()


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"architectures": ["HOPPER"]}, "architecture BLACKWELL not allowed"),
        ({"architectures": ["BLACKWELL"], "min_driver_version": "600.1"}, "below the floor"),
        ({"architectures": ["BLACKWELL"], "min_count": 2}, "needs 2"),
    ],
)
def test_gpu_reference_values_enforced(values: dict[str, Any], needle: str) -> None:
    h = GpuHarness(values)
    with pytest.raises(AttestationFailed, match=needle):
        h.gpu_attest("BLACKWELL")


def test_gpu_evidence_for_role_without_gpu_values_refused() -> None:
    h = GpuHarness(None)
    with pytest.raises(AttestationFailed, match="no GPU reference values for role client"):
        h.gpu_attest()


def test_unset_gpu_values_keep_agreement_digests() -> None:
    """Adding the optional ``gpu`` field must not change digests of GPU-less agreements."""
    from teeflow.kbs.policy.agreement import FederationAgreement

    plain = FederationAgreement.from_mapping(agreement_doc())
    assert all("gpu" not in w for w in plain.to_document()["workloads"].values())
    doc = agreement_doc()
    doc["workloads"]["client"]["gpu"] = GPU_VALUES
    with_gpu = FederationAgreement.from_mapping(doc)
    assert with_gpu.to_document()["workloads"]["client"]["gpu"]["architectures"] == [
        "BLACKWELL", "HOPPER"]  # fmt: skip
    assert with_gpu.digest() != plain.digest()


def test_same_gpu_twice_does_not_count_twice() -> None:
    """Attack: one real GPU's entry duplicated to meet min_count 2."""
    h = GpuHarness({"architectures": ["HOPPER"], "min_count": 2})

    def duplicate(evidence: dict[str, Any]) -> dict[str, Any]:
        evidence["device_evidence_list"] *= 2
        return evidence

    with pytest.raises(AttestationFailed, match="gpu1 is a GPU already listed"):
        h.gpu_attest(tamper=duplicate, bind_tampered=True)
