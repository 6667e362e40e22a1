"""GpuPolicy / appraise_gpu on synthetic verified GPU evidence."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_nvidia_verify import FWID, NONCE, NOW, make_evidence, make_gpu

from teeflow.attestation.appraisal import (
    EarStatus,
    ExecutablesClaim,
    HardwareClaim,
    InstanceIdentityClaim,
)
from teeflow.attestation.nvidia import RIM_WARNING, GpuPolicy, appraise_gpu, verify
from teeflow.attestation.nvidia.verify import VerifiedGpuEvidence
from teeflow.errors import ParseError, PolicyViolation


def verified(**kwargs: object) -> VerifiedGpuEvidence:
    gpu = kwargs.pop("gpu", None)
    g, ev = make_evidence(gpu)  # type: ignore[arg-type]
    return verify(ev, now=NOW, anchors=[g.anchor])


V = verified()
BASE = GpuPolicy(nonce=NONCE.hex())


def test_nonce_pinned_accepts_with_rim_warning() -> None:
    r = appraise_gpu(V, BASE)
    assert r.accepted and r.status is EarStatus.WARNING and r.tee == "nvidia-gpu"
    assert RIM_WARNING in r.warnings
    assert r.trust_vector.hardware == HardwareClaim.GENUINE
    assert r.trust_vector.instance_identity == InstanceIdentityClaim.RECOGNIZED
    assert r.trust_vector.executables == ExecutablesClaim.UNRECOGNIZED_RUNTIME
    claims = dict(r.claims)
    assert claims["arch"] == "HOPPER" and claims["fwid"] == FWID.hex()
    assert claims["nonce"] == NONCE.hex()
    assert claims["driver_version"] == "590.12" and claims["vbios_version"] == "96.00.A5.00.01"
    assert claims["measurements_digest"] == V.measurements_digest.hex()
    assert claims["evidence_digest"] == V.evidence_digest.hex()
    assert claims["measurement_blocks"] == 4 and claims["measurements_matched"] is False
    assert r.policy_id == BASE.identifier() and r.verified_at == NOW


def test_wrong_nonce_is_violation() -> None:
    r = appraise_gpu(V, GpuPolicy(nonce="11" * 32))
    assert not r.accepted and r.status is EarStatus.CONTRAINDICATED
    assert "GPU evidence nonce does not match the expected nonce" in r.violations
    assert r.trust_vector.instance_identity == InstanceIdentityClaim.UNRECOGNIZED
    with pytest.raises(PolicyViolation):
        r.raise_for_status()


def test_no_nonce_is_violation_unless_allowed() -> None:
    r = appraise_gpu(V, GpuPolicy())
    assert not r.accepted and any("no expected GPU nonce" in v for v in r.violations)
    r = appraise_gpu(V, GpuPolicy(allow_any_nonce=True))
    assert r.accepted and any("freshness not checked" in w for w in r.warnings)


def test_with_nonce() -> None:
    assert appraise_gpu(V, GpuPolicy().with_nonce(NONCE)).accepted
    with pytest.raises(ValueError):
        GpuPolicy().with_nonce(b"short")


def test_architecture() -> None:
    blackwell = verified(gpu=make_gpu(chip="GB100"))
    r = appraise_gpu(blackwell, BASE)
    assert "GPU architecture BLACKWELL not allowed" in r.violations
    assert r.trust_vector.hardware == HardwareClaim.CONTRAINDICATED
    allowed = BASE.model_copy(update={"allowed_architectures": frozenset({"BLACKWELL"})})
    assert appraise_gpu(blackwell, allowed).accepted
    unknown = verified(gpu=make_gpu(chip="ZZ999"))
    assert "GPU architecture None not allowed" in appraise_gpu(unknown, BASE).violations


def test_reference_values_match() -> None:
    policy = GpuPolicy.from_mapping(
        {
            "nonce": NONCE.hex().upper(),
            "allowed_driver_versions": ["590.12"],
            "allowed_vbios_versions": ["96.00.a5.00.01"],
            "allowed_fwids": [FWID.hex()],
        }
    )
    r = appraise_gpu(V, policy)
    assert r.accepted and r.trust_vector.executables == ExecutablesClaim.APPROVED_RUNTIME
    assert r.warnings == (RIM_WARNING,)


@pytest.mark.parametrize(
    ("update", "violation"),
    [
        ({"allowed_driver_versions": ["550.90.07"]}, "driver version 590.12 not in allowed list"),
        ({"allowed_vbios_versions": ["96.00.9F.00.01"]}, "VBIOS version 96.00.A5.00.01 not in"),
        ({"allowed_fwids": ["00" * 48]}, f"FWID {FWID.hex()} not in allowed list"),
        ({"allowed_measurements_digests": ["00" * 48]}, "measurements digest"),
    ],
)
def test_reference_value_mismatch(update: dict[str, object], violation: str) -> None:
    policy = GpuPolicy.from_mapping({"nonce": NONCE.hex(), **update})
    r = appraise_gpu(V, policy)
    assert not r.accepted and any(v.startswith(violation) for v in r.violations)
    assert r.trust_vector.executables == ExecutablesClaim.CONTRAINDICATED_RUNTIME


def test_pinned_measurements_make_it_affirming() -> None:
    policy = GpuPolicy(
        nonce=NONCE.hex(),
        allowed_measurements_digests=(V.measurements_digest.hex(),),
        allow_missing_rim=False,
    )
    r = appraise_gpu(V, policy)
    assert r.accepted and r.status is EarStatus.AFFIRMING and r.warnings == ()
    assert r.claims["measurements_matched"] is True


def test_missing_rim_can_be_a_violation() -> None:
    r = appraise_gpu(V, GpuPolicy(nonce=NONCE.hex(), allow_missing_rim=False))
    assert RIM_WARNING in r.violations and not r.accepted


def test_missing_opaque_field_with_pinned_value() -> None:
    from test_nvidia_verify import tlv

    gpu = make_gpu()
    g, ev = make_evidence(gpu, opaque=tlv(20, FWID))
    v = verify(ev, now=NOW, anchors=[g.anchor])
    assert v.driver_version is None and v.vbios_version is None
    r = appraise_gpu(v, GpuPolicy(nonce=NONCE.hex(), allowed_driver_versions=("590.12",)))
    assert "driver version not present in the evidence (policy pins it)" in r.violations
    assert r.claims["driver_version"] is None


def test_emulated_anchor() -> None:
    emu = verified(gpu=make_gpu(emulated=True))
    r = appraise_gpu(emu, BASE)
    assert "emulated GPU evidence not allowed" in r.violations
    r = appraise_gpu(emu, BASE.model_copy(update={"allow_emulated": True}))
    assert r.accepted and r.emulated and r.trust_vector.hardware == HardwareClaim.UNSAFE


@pytest.mark.parametrize(
    "doc",
    [
        {"allowed_fwids": []},
        {"allowed_fwids": ["00" * 47]},
        {"allowed_architectures": []},
        {"nonce": "00"},
        {"unknown_key": True},
        {"allowed_driver_versions": []},
    ],
)
def test_invalid_policies(doc: dict[str, object]) -> None:
    with pytest.raises(ParseError):
        GpuPolicy.from_mapping(doc)


def test_policy_file_round_trip(tmp_path: Path) -> None:
    policy = GpuPolicy(
        policy_id="gpu/h100",
        nonce=NONCE.hex(),
        allowed_architectures=frozenset({"hopper"}),
        allowed_fwids=(FWID.hex(),),
    )
    path = tmp_path / "gpu.yaml"
    path.write_text(policy.to_yaml())
    again = GpuPolicy.from_file(path)
    assert again == policy and again.allowed_architectures == frozenset({"HOPPER"})
    assert appraise_gpu(V, again).policy_id == "gpu/h100"
