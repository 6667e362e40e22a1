"""Composite appraisal: emulated SGX CPU evidence + synthetic NVIDIA GPU evidence, and EARs."""

from __future__ import annotations

import itertools

import pytest
from joserfc.jwk import ECKey
from test_nvidia_verify import make_evidence

from teeflow.attestation import sgx
from teeflow.attestation.appraisal import (
    AttestationResult,
    EarStatus,
    InstanceIdentityClaim,
    SourcedDataClaim,
)
from teeflow.attestation.composite import (
    GPU_EVIDENCE_CLAIM,
    CompositePolicy,
    RuntimeData,
    appraise_composite,
    composite_accepted,
    derive_gpu_nonce,
    gpu_evidence_claim,
    gpu_evidence_digest,
)
from teeflow.attestation.ear import generate_ear_signing_key, issue_ear, verify_ear
from teeflow.attestation.nvidia import GpuPolicy, appraise_gpu, verify
from teeflow.attestation.nvidia.verify import VerifiedGpuEvidence
from teeflow.testing.evidence import DEFAULT_NOW, make_emulated_quote

NOW = DEFAULT_NOW
RCAR_NONCE = "bm9uY2UtZm9yLXRoZS1zZXNzaW9u"
GPU_NONCE = derive_gpu_nonce(RCAR_NONCE)
JWK = {"kty": "OKP", "crv": "X25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


def gpu_verified() -> VerifiedGpuEvidence:
    gpu, ev = make_evidence(nonce=GPU_NONCE)
    return verify(ev, now=NOW, anchors=[gpu.anchor])


GPUS = [gpu_verified(), gpu_verified()]


def runtime_for(digests: list[bytes]) -> RuntimeData:
    teeflow = {"role": "aggregator", GPU_EVIDENCE_CLAIM: gpu_evidence_claim(digests)}
    return RuntimeData(tee_pubkey=JWK, nonce=RCAR_NONCE, teeflow=teeflow)


def cpu_result(report_data: bytes, *, ok: bool = True) -> tuple[AttestationResult, bytes]:
    """Emulated SGX quote binding ``report_data``, verified and appraised."""
    raw, anchor, collateral = make_emulated_quote(report_data, now=NOW)
    verified = sgx.verify(sgx.parse_quote(raw), anchors=[anchor], collateral=collateral, now=NOW)
    policy = sgx.SgxPolicy(allow_emulated=True, report_data=report_data.hex())
    if not ok:
        policy = policy.model_copy(update={"mrenclaves": ("00" * 32,)})
    return sgx.appraise(verified, policy), verified.report.report_data


def gpu_results(ok: bool, gpus: list[VerifiedGpuEvidence]) -> dict[str, AttestationResult]:
    policy = GpuPolicy().with_nonce(GPU_NONCE if ok else b"\x01" * 32)
    return {f"gpu{i}": appraise_gpu(v, policy) for i, v in enumerate(gpus)}


def digests_of(gpus: list[VerifiedGpuEvidence]) -> dict[str, bytes]:
    return {f"gpu{i}": v.evidence_digest for i, v in enumerate(gpus)}


@pytest.mark.parametrize(
    ("cpu_ok", "gpu_ok", "bound"), list(itertools.product([True, False], repeat=3))
)
def test_all_combinations(cpu_ok: bool, gpu_ok: bool, bound: bool) -> None:
    gpus = GPUS[:1]
    claimed = [v.evidence_digest for v in gpus] if bound else [b"\x33" * 48]
    runtime = runtime_for(claimed)
    cpu, report_data = cpu_result(runtime.report_data(), ok=cpu_ok)
    results = appraise_composite(
        cpu,
        gpu_results(gpu_ok, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=report_data,
        runtime_data=runtime,
    )
    assert list(results) == ["cpu0", "gpu0"]
    expected = cpu_ok and gpu_ok and bound
    assert composite_accepted(results) is expected
    for r in results.values():
        assert r.accepted is expected
    assert results["gpu0"].claims["teeflow.evidence_bound"] is bound
    assert results["cpu0"].claims["teeflow.composite"]["gpu_evidence_bound"] is bound
    if not cpu_ok:
        assert "composite: cpu0 is not warning or better" in results["gpu0"].violations
    if not gpu_ok:
        assert "composite: gpu0 is not warning or better" in results["cpu0"].violations
    if not bound:
        assert any("not bound" in v for v in results["gpu0"].violations)
        assert results["gpu0"].trust_vector.instance_identity == InstanceIdentityClaim.UNRECOGNIZED
    sourced = results["cpu0"].trust_vector.sourced_data
    good = SourcedDataClaim.TRUSTED_SOURCES
    assert sourced == (good if gpu_ok and bound else SourcedDataClaim.CONTRAINDICATED_SOURCES)
    if expected:
        assert results["cpu0"].status is EarStatus.WARNING  # emulated CPU, GPU without RIM


def test_two_gpus_and_order() -> None:
    digests = [v.evidence_digest for v in GPUS]
    for claimed, ok in ((digests, True), (digests[::-1], False), (digests[:1], False)):
        runtime = runtime_for(claimed)
        cpu, report_data = cpu_result(runtime.report_data())
        results = appraise_composite(
            cpu,
            gpu_results(True, GPUS),
            gpu_evidence_digests=digests_of(GPUS),
            cpu_report_data=report_data,
            runtime_data=runtime,
        )
        assert list(results) == ["cpu0", "gpu0", "gpu1"]
        assert composite_accepted(results) is ok


def test_report_data_must_match_runtime_data() -> None:
    gpus = GPUS[:1]
    runtime = runtime_for([gpus[0].evidence_digest])
    cpu, _ = cpu_result(runtime.report_data())
    other = RuntimeData(tee_pubkey=JWK, nonce="other", teeflow=runtime.teeflow)
    cpu2, other_report_data = cpu_result(other.report_data())
    for report_data, rt in ((other_report_data, runtime), (b"\0" * 64, runtime), (b"", runtime)):
        results = appraise_composite(
            cpu,
            gpu_results(True, gpus),
            gpu_evidence_digests=digests_of(gpus),
            cpu_report_data=report_data,
            runtime_data=rt,
        )
        assert not composite_accepted(results)
        assert any("does not match the runtime data" in v for v in results["cpu0"].violations)
    results = appraise_composite(
        cpu,
        gpu_results(True, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=b"\0" * 64,
        runtime_data=None,
    )
    assert any("no runtime data" in v for v in results["cpu0"].violations)
    no_claim = RuntimeData(tee_pubkey=JWK, nonce=RCAR_NONCE, teeflow={"role": "x"})
    cpu3, rd3 = cpu_result(no_claim.report_data())
    results = appraise_composite(
        cpu3,
        gpu_results(True, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=rd3,
        runtime_data=no_claim,
    )
    assert any("no teeflow.gpu_evidence list" in v for v in results["cpu0"].violations)
    del cpu2


def test_strict_affirming_rejects_warning_components() -> None:
    gpus = GPUS[:1]
    runtime = runtime_for([gpus[0].evidence_digest])
    cpu, report_data = cpu_result(runtime.report_data())
    results = appraise_composite(
        cpu,
        gpu_results(True, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=report_data,
        runtime_data=runtime,
        policy=CompositePolicy(worst_status="affirming"),
    )
    assert not composite_accepted(results)
    assert "composite: cpu0 status warning is worse than affirming" in results["cpu0"].violations
    assert "composite: gpu0 status warning is worse than affirming" in results["gpu0"].violations


def test_requirements_can_be_relaxed() -> None:
    gpus = GPUS[:1]
    runtime = runtime_for([b"\x44" * 48])
    cpu, report_data = cpu_result(runtime.report_data())
    results = appraise_composite(
        cpu,
        gpu_results(True, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=report_data,
        runtime_data=runtime,
        policy=CompositePolicy(require_binding=False),
    )
    assert composite_accepted(results)
    assert results["gpu0"].claims["teeflow.evidence_bound"] is False
    assert results["gpu0"].status is not EarStatus.CONTRAINDICATED


def test_min_gpus() -> None:
    runtime = runtime_for([])
    cpu, report_data = cpu_result(runtime.report_data())
    results = appraise_composite(
        cpu, {}, gpu_evidence_digests={}, cpu_report_data=report_data, runtime_data=runtime
    )
    assert list(results) == ["cpu0"] and not composite_accepted(results)
    relaxed = CompositePolicy(min_gpus=0)
    results = appraise_composite(
        cpu,
        {},
        gpu_evidence_digests={},
        cpu_report_data=report_data,
        runtime_data=runtime,
        policy=relaxed,
    )
    assert composite_accepted(results)


def test_caller_errors() -> None:
    cpu, report_data = cpu_result(b"x" * 64)
    gpu = gpu_results(True, GPUS[:1])
    with pytest.raises(ValueError, match="names"):
        appraise_composite(
            cpu,
            {"gpuX": gpu["gpu0"]},
            gpu_evidence_digests={"gpuX": b"\0" * 48},
            cpu_report_data=report_data,
            runtime_data=None,
        )
    with pytest.raises(ValueError, match="same keys"):
        appraise_composite(
            cpu, gpu, gpu_evidence_digests={}, cpu_report_data=report_data, runtime_data=None
        )
    with pytest.raises(ValueError, match="48-byte"):
        appraise_composite(
            cpu,
            gpu,
            gpu_evidence_digests={"gpu0": b"\0"},
            cpu_report_data=report_data,
            runtime_data=None,
        )
    with pytest.raises(ValueError):
        gpu_evidence_claim([b"short"])


def test_digest_definition() -> None:
    v = GPUS[0]
    assert gpu_evidence_digest(v.transcript.raw) == v.evidence_digest
    assert len(GPU_NONCE) == 32


def test_ear_round_trip_cpu0_gpu0() -> None:
    gpus = GPUS[:1]
    runtime = runtime_for([gpus[0].evidence_digest])
    cpu, report_data = cpu_result(runtime.report_data())
    results = appraise_composite(
        cpu,
        gpu_results(True, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=report_data,
        runtime_data=runtime,
    )
    key = generate_ear_signing_key()
    token = issue_ear(results, signing_key=key, now=NOW, nonce=RCAR_NONCE)
    public = ECKey.import_key(key.as_dict(private=False))
    ear = verify_ear(token, public, now=NOW, nonce=RCAR_NONCE)
    assert set(ear.submods) == {"cpu0", "gpu0"}
    gpu0 = ear.submods["gpu0"]
    assert gpu0.tee == "nvidia-gpu" and gpu0.status is EarStatus.WARNING
    assert gpu0.claims["evidence_digest"] == gpus[0].evidence_digest.hex()
    assert gpu0.claims["teeflow.evidence_bound"] is True
    assert gpu0.trust_vector == results["gpu0"].trust_vector
    cpu0 = ear.submods["cpu0"]
    assert cpu0.tee == "emulated-sgx" and cpu0.emulated
    assert cpu0.claims["teeflow.composite"] == {"gpus": ["gpu0"], "gpu_evidence_bound": True}
    assert cpu0.trust_vector.sourced_data == SourcedDataClaim.TRUSTED_SOURCES
    assert ear.status is EarStatus.WARNING

    # A rejected composite: every submodule in the EAR is contraindicated.
    bad = appraise_composite(
        cpu,
        gpu_results(False, gpus),
        gpu_evidence_digests=digests_of(gpus),
        cpu_report_data=report_data,
        runtime_data=runtime,
    )
    ear = verify_ear(
        issue_ear(bad, signing_key=key, now=NOW, nonce=None), public, now=NOW, nonce=None
    )
    assert {s.status for s in ear.submods.values()} == {EarStatus.CONTRAINDICATED}
