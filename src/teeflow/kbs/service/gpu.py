"""GPU evidence in an RCAR attestation: parse, verify and appraise it with the CPU result.

Called by :func:`teeflow.kbs.service.rcar.appraise_attestation` once the CPU evidence has
been appraised (its REPORT_DATA pinned to the runtime data, whose ``additional-evidence``
member is the very text the GPU evidence came from: the CPU TEE vouches for it, as in
Trustee). Rules (fail closed, every reason collected):

* additional evidence other than ``"nvidia"`` is refused (not supported);
* a role whose agreement entry has ``gpu`` reference values must send NVIDIA evidence for
  at least ``min_count`` GPUs; GPU evidence for a role without ``gpu`` values is refused;
* every GPU is verified (SPDM signature, chain to the NVIDIA Device Identity CA or, only
  when the agreement allows emulation, to the emulated NVIDIA root; FWID; the session's
  SPDM nonce :func:`teeflow.attestation.nvidia.trustee.gpu_nonce`) and appraised with
  :meth:`GpuReferenceValues.to_policy`; the same device certificate twice is refused, so
  one GPU cannot stand in for ``min_count`` of them;
* the results are combined with :func:`teeflow.attestation.composite.appraise_composite`
  (CPU and every GPU must pass; each GPU transcript bound through ``additional-evidence``).
  The CPU REPORT_DATA itself was compared with ``runtime.report_data()`` by the CPU
  appraisal (a mismatch is a CPU violation), so that value is what the composite gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization

from teeflow.attestation.appraisal import AttestationResult
from teeflow.attestation.composite import (
    CompositePolicy,
    RuntimeData,
    appraise_composite,
    gpu_evidence_digest,
)
from teeflow.attestation.nvidia import appraise_gpu, verify
from teeflow.attestation.nvidia.trustee import NVIDIA_TEE, gpu_nonce, load_device_evidence_list
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError, VerificationError
from teeflow.kbs.policy.agreement import FederationAgreement

__all__ = ["GpuAppraisal", "appraise_gpus", "unsupported_additional"]


@dataclass(frozen=True)
class GpuAppraisal:
    """Outcome of :func:`appraise_gpus`.

    Attributes:
        reasons: every reason to deny (empty: accepted or no GPU involved).
        results: ``{"cpu0": ..., "gpu0": ...}`` composite results, or empty when no GPU
            evidence was appraised.
    """

    reasons: tuple[str, ...]
    results: Mapping[str, AttestationResult] = field(default_factory=dict)


def unsupported_additional(additional: Mapping[str, Any]) -> list[str]:
    """Reasons for additional evidence of TEEs the KBS does not appraise (all but nvidia)."""
    return [
        f"additional evidence for TEE {tee} is not supported"
        for tee in sorted(additional)
        if tee != NVIDIA_TEE
    ]


def appraise_gpus(
    additional: Mapping[str, Any],
    *,
    agreement: FederationAgreement,
    role: str,
    cpu_result: AttestationResult,
    runtime: RuntimeData,
    anchors: Sequence[TrustAnchor],
    now: datetime,
) -> GpuAppraisal:
    """GPU part of an attestation (module docstring).

    Args:
        additional: the parsed ``additional_evidence`` map (TEE -> evidence).
        agreement, role: the active agreement and the appraised role.
        cpu_result: the CPU appraisal (REPORT_DATA already pinned to ``runtime``).
        runtime: the runtime data as received (``additional_evidence`` = the text).
        anchors: GPU trust anchors (NVIDIA's root; the emulated root when configured).
        now: verification time.
    """
    values = agreement.gpu_reference_values(role)
    raw = additional.get(NVIDIA_TEE)
    if raw is None:
        if values is not None:
            return GpuAppraisal(
                (
                    f"role {role} requires GPU evidence (agreement gpu reference values) "
                    "but the attestation carries none",
                )
            )
        return GpuAppraisal(())
    if values is None:
        return GpuAppraisal((f"agreement has no GPU reference values for role {role}",))
    try:
        devices = load_device_evidence_list(raw)
        nonce = gpu_nonce(tee_pubkey=runtime.tee_pubkey, nonce=runtime.nonce)
    except ParseError as exc:
        return GpuAppraisal((f"GPU evidence rejected: {exc}",))
    if len(devices) < values.min_count:
        return GpuAppraisal(
            (f"GPU evidence covers {len(devices)} GPUs, role {role} needs {values.min_count}",)
        )
    policy = values.to_policy(nonce=nonce, allow_emulated=agreement.allow_emulated)
    results: dict[str, AttestationResult] = {}
    digests: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for i, device in enumerate(devices):
        try:
            verified = verify(device, now=now, anchors=anchors, nonce=nonce)
        except VerificationError as exc:
            return GpuAppraisal((f"GPU evidence rejected: gpu{i}: {exc}",))
        identity = verified.leaf.public_bytes(serialization.Encoding.DER)
        if identity in seen:  # one GPU listed twice must not count towards min_count
            return GpuAppraisal((f"GPU evidence rejected: gpu{i} is a GPU already listed",))
        seen.add(identity)
        results[f"gpu{i}"] = appraise_gpu(verified, policy)
        digests[f"gpu{i}"] = gpu_evidence_digest(device.transcript.raw)
    combined = appraise_composite(
        cpu_result,
        results,
        gpu_evidence_digests=digests,
        cpu_report_data=runtime.report_data(),
        runtime_data=runtime,
        policy=CompositePolicy(min_gpus=values.min_count),
    )
    already = set(cpu_result.violations)  # reported by the CPU appraisal itself
    reasons = [
        f"{name}: {v}"
        for name, r in combined.items()
        for v in r.violations
        if not (name == "cpu0" and v in already)
    ]
    return GpuAppraisal(tuple(dict.fromkeys(reasons)), combined)
