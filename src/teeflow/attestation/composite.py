"""Composite appraisal: a CPU TEE plus the GPUs it drives, as one attestation result.

The rule (issue 5, "NVIDIA H100 confidential computing"): accept only when **the CPU result
is affirming AND every GPU result is affirming AND every GPU's evidence digest is bound in
the CPU's REPORT_DATA**. The output is a mapping ``{"cpu0": ..., "gpu0": ..., "gpu1": ...}``
of :class:`~teeflow.attestation.appraisal.AttestationResult`, ready for
:func:`teeflow.attestation.ear.issue_ear` (one EAR submodule each). A failed rule adds a
violation to every submodule it concerns, so no submodule of a rejected composite reads as
accepted on its own.

Binding (how GPU evidence gets into the CPU REPORT_DATA). Two ways, checked in this order:

* **Trustee's** (what the KBS uses): the GPU evidence travels in RCAR
  ``additional_evidence`` (``{"nvidia": {"device_evidence_list": [...]}}``,
  :mod:`teeflow.attestation.nvidia.trustee`), and that text is the ``additional-evidence``
  member of the runtime data the CPU REPORT_DATA hashes. The Verifier checks the CPU
  REPORT_DATA against the runtime data it received and that each GPU's transcript is, in
  order, the one in that ``additional-evidence`` text. Freshness: the SPDM nonce is
  :func:`teeflow.attestation.nvidia.trustee.gpu_nonce` of the session.
* **teeflow claim** (when the runtime data's ``teeflow`` object has ``gpu_evidence``):

1. GPU evidence digest: ``SHA-384(raw SPDM transcript)`` (:func:`gpu_evidence_digest`),
   i.e. of the exact bytes ``GET_MEASUREMENTS request || MEASUREMENTS response`` including
   the signature (nvtrust's base64 ``evidence`` decoded; Trustee's hex decoded).
2. The Attester puts the list of lower-case hex digests, in submodule order ``gpu0, gpu1,
   ...``, into the RCAR runtime data's ``teeflow`` object as member ``"gpu_evidence"``
   (:data:`GPU_EVIDENCE_CLAIM`, :func:`gpu_evidence_claim`).
3. The CPU REPORT_DATA is, as for every RCAR attestation,
   :func:`teeflow.attestation.binding.runtime_data_digest` of the runtime data
   (``SHA-384(RFC 8785 JSON of {"tee-pubkey", "nonce", "additional-evidence", "teeflow"})``
   zero-padded to 64 bytes), so it covers the GPU digests.
4. The Verifier recomputes the digest from the runtime data it received
   (:class:`RuntimeData`), compares it in constant time with the verified CPU report's
   REPORT_DATA, and compares ``teeflow.gpu_evidence`` with the digests of the GPU evidence
   it verified.

Freshness: binding proves the CPU TEE saw that GPU evidence, not that the evidence is new;
the GPU's SPDM nonce must also be the Verifier's. teeflow derives it from the RCAR nonce as
``SHA-256(UTF-8 nonce text)`` (:func:`derive_gpu_nonce`; put it in ``GpuPolicy.nonce``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from teeflow.attestation.additional_evidence import parse_additional_evidence
from teeflow.attestation.appraisal import (
    AttestationResult,
    EarStatus,
    InstanceIdentityClaim,
    SourcedDataClaim,
    TrustworthinessVector,
    tier_of,
)
from teeflow.attestation.binding import REPORT_DATA_SIZE, runtime_data_digest
from teeflow.attestation.nvidia.trustee import NVIDIA_TEE, load_device_evidence_list
from teeflow.attestation.policy import PolicyModel
from teeflow.errors import ParseError

__all__ = [
    "CPU_SUBMODULE",
    "GPU_EVIDENCE_CLAIM",
    "CompositePolicy",
    "RuntimeData",
    "appraise_composite",
    "composite_accepted",
    "derive_gpu_nonce",
    "gpu_evidence_claim",
    "gpu_evidence_digest",
]

#: Submodule name of the CPU result.
CPU_SUBMODULE = "cpu0"
#: Member of the RCAR ``teeflow`` runtime-data object listing the GPU evidence digests.
GPU_EVIDENCE_CLAIM = "gpu_evidence"
_GPU_NAME = re.compile(r"gpu(0|[1-9][0-9]{0,2})")


def gpu_evidence_digest(evidence: bytes) -> bytes:
    """SHA-384 (48 bytes) of one GPU's raw SPDM transcript (request || signed response)."""
    return hashlib.sha384(bytes(evidence)).digest()


def gpu_evidence_claim(digests: Sequence[bytes]) -> list[str]:
    """The ``teeflow.gpu_evidence`` value: lower-case hex digests in order gpu0, gpu1, ...

    Raises:
        ValueError: a digest is not 48 bytes.
    """
    out = []
    for d in digests:
        if len(d) != 48:
            raise ValueError("GPU evidence digests are 48-byte SHA-384 values")
        out.append(bytes(d).hex())
    return out


def derive_gpu_nonce(rcar_nonce: str) -> bytes:
    """The 32-byte SPDM nonce for the GPUs of an RCAR session: SHA-256(UTF-8 ``rcar_nonce``)."""
    return hashlib.sha256(rcar_nonce.encode("utf-8")).digest()


@dataclass(frozen=True)
class RuntimeData:
    """The RCAR runtime-data object exactly as the Attester hashed it into REPORT_DATA.

    Attributes:
        tee_pubkey: the JWK (RFC 7517) mapping.
        nonce: the Verifier's nonce text.
        teeflow: the ``teeflow`` member (must hold :data:`GPU_EVIDENCE_CLAIM`), or None.
        additional_evidence: the ``additional-evidence`` text (``""`` when none).
    """

    tee_pubkey: Mapping[str, Any]
    nonce: str
    teeflow: Mapping[str, Any] | None
    additional_evidence: str = ""

    def report_data(self) -> bytes:
        """The 64-byte REPORT_DATA binding (:func:`runtime_data_digest`).

        Raises:
            ParseError: members not RFC 8785-serialisable.
        """
        return runtime_data_digest(
            tee_pubkey=self.tee_pubkey,
            nonce=self.nonce,
            teeflow=self.teeflow,
            additional_evidence=self.additional_evidence,
        )


class CompositePolicy(PolicyModel):
    """What a composite (CPU + GPUs) result requires.

    Attributes:
        worst_status: the worst acceptable ``ear.status`` of each component: ``"warning"``
            (default; a GPU result without pinned measurements is always ``warning``, see
            ``GpuPolicy``) or ``"affirming"`` (strict). A component with violations never
            passes.
        require_binding: every GPU evidence digest must be bound in the CPU REPORT_DATA
            (default True).
        min_gpus: the least number of GPU results (default 1).
    """

    worst_status: Literal["affirming", "warning"] = "warning"
    require_binding: bool = True
    min_gpus: int = Field(default=1, ge=0, le=1000)


def _passes(result: AttestationResult, worst: EarStatus) -> bool:
    return result.accepted and result.status.severity <= worst.severity


def _worse(vector: TrustworthinessVector, **updates: int) -> TrustworthinessVector:
    values = {f.name: getattr(vector, f.name) for f in dataclasses.fields(vector)}
    for name, value in updates.items():
        old = values[name]
        if (tier_of(value).severity, value) > (tier_of(old).severity, old):
            values[name] = value
    return TrustworthinessVector(**values)


def _bound_names(
    gpu_names: Sequence[str],
    digests: Mapping[str, bytes],
    cpu_report_data: bytes,
    runtime_data: RuntimeData | None,
) -> tuple[set[str], str | None]:
    """GPU names whose digest is bound, and a reason when the binding as a whole fails."""
    if runtime_data is None:
        return set(), "no runtime data to check the binding"
    try:
        expected = runtime_data.report_data()
    except ParseError as exc:
        return set(), f"runtime data unusable: {exc}"
    if len(cpu_report_data) != REPORT_DATA_SIZE or not hmac.compare_digest(
        expected, bytes(cpu_report_data)
    ):
        return set(), "CPU REPORT_DATA does not match the runtime data"
    claimed = (runtime_data.teeflow or {}).get(GPU_EVIDENCE_CLAIM)
    if claimed is None:
        claimed = _additional_digests(runtime_data.additional_evidence)
    if not isinstance(claimed, list | tuple) or not all(isinstance(c, str) for c in claimed):
        return set(), (
            f"runtime data has no teeflow.{GPU_EVIDENCE_CLAIM} list and no nvidia "
            "additional evidence"
        )
    bound = set()
    for i, name in enumerate(gpu_names):
        want = digests[name].hex()
        if i < len(claimed) and hmac.compare_digest(claimed[i].lower(), want):
            bound.add(name)
    if len(claimed) != len(gpu_names):
        return (
            bound,
            f"teeflow.{GPU_EVIDENCE_CLAIM} lists {len(claimed)} digests for {len(gpu_names)} GPUs",
        )
    return bound, None


def _additional_digests(additional_evidence: str) -> list[str] | None:
    """Hex SHA-384 digests of the GPU transcripts in Trustee ``additional-evidence`` text, in
    list order; None when it holds no (parsable) nvidia evidence."""
    try:
        doc = parse_additional_evidence(additional_evidence)
        if NVIDIA_TEE not in doc:
            return None
        devices = load_device_evidence_list(doc[NVIDIA_TEE])
    except ParseError:
        return None
    return [d.evidence_digest.hex() for d in devices]


def appraise_composite(
    cpu_result: AttestationResult,
    gpu_results: Mapping[str, AttestationResult],
    *,
    gpu_evidence_digests: Mapping[str, bytes],
    cpu_report_data: bytes,
    runtime_data: RuntimeData | None,
    policy: CompositePolicy | None = None,
) -> dict[str, AttestationResult]:
    """Combine a CPU result and GPU results under the composite rule (module docstring).

    Args:
        cpu_result: the appraised CPU evidence (SGX, TDX, SNP ...).
        gpu_results: ``{"gpu0": result, "gpu1": ...}`` from ``appraise_gpu``.
        gpu_evidence_digests: ``{"gpu0": SHA-384 of its raw transcript, ...}`` (same keys).
        cpu_report_data: the 64-byte REPORT_DATA of the *verified* CPU evidence.
        runtime_data: the RCAR runtime data the Attester hashed, or None (binding fails).
        policy: :class:`CompositePolicy` (default: all three requirements, worst status
            ``warning``, at least one GPU).

    Returns:
        ``{"cpu0": ..., "gpu0": ..., ...}``: each input result plus the composite violations
        that concern it (``"composite: ..."``), claims ``teeflow.composite`` (cpu0: GPU names
        and ``gpu_evidence_bound``) / ``teeflow.bound_in`` and ``teeflow.evidence_bound``
        (GPUs), and trust-vector claims: cpu0 ``sourced-data`` 2 (all GPUs pass and are bound)
        or 96; an unbound GPU ``instance-identity`` 97.

    Raises:
        ValueError: GPU names not ``gpu<N>``, digest keys different from the result keys, or
            a digest that is not 48 bytes (caller errors, not evidence problems).
    """
    pol = policy if policy is not None else CompositePolicy()
    worst = EarStatus(pol.worst_status)
    names = sorted(gpu_results, key=lambda n: int(n[3:]) if _GPU_NAME.fullmatch(n) else -1)
    if any(_GPU_NAME.fullmatch(n) is None for n in names):
        raise ValueError("GPU submodule names must be gpu0, gpu1, ...")
    if set(gpu_evidence_digests) != set(names):
        raise ValueError("gpu_evidence_digests must have the same keys as gpu_results")
    if any(len(d) != 48 for d in gpu_evidence_digests.values()):
        raise ValueError("GPU evidence digests are 48-byte SHA-384 values")

    bound, binding_problem = _bound_names(
        names, gpu_evidence_digests, cpu_report_data, runtime_data
    )
    cpu_ok = _passes(cpu_result, worst)
    gpu_ok = {n: _passes(gpu_results[n], worst) for n in names}

    cpu_violations: list[str] = []
    per_gpu: dict[str, list[str]] = {n: [] for n in names}
    if len(names) < pol.min_gpus:
        cpu_violations.append(f"composite: {len(names)} GPU results, policy needs {pol.min_gpus}")
    if not cpu_ok:
        if cpu_result.accepted:
            cpu_violations.append(
                f"composite: {CPU_SUBMODULE} status {cpu_result.status} is worse than {worst}"
            )
        for n in names:
            per_gpu[n].append(f"composite: {CPU_SUBMODULE} is not {worst} or better")
    for n in names:
        if gpu_ok[n]:
            continue
        if gpu_results[n].accepted:
            per_gpu[n].append(
                f"composite: {n} status {gpu_results[n].status} is worse than {worst}"
            )
        cpu_violations.append(f"composite: {n} is not {worst} or better")
        for other in names:
            if other != n:
                per_gpu[other].append(f"composite: {n} is not {worst} or better")
    if pol.require_binding:
        if binding_problem is not None:
            cpu_violations.append(f"composite: GPU evidence binding: {binding_problem}")
        for n in names:
            if n not in bound:
                per_gpu[n].append(
                    f"composite: {n} evidence digest not bound in {CPU_SUBMODULE} REPORT_DATA"
                )
                cpu_violations.append(f"composite: {n} evidence digest not bound")

    all_bound = len(bound) == len(names) and binding_problem is None
    all_good = all(gpu_ok.values()) and all_bound
    cpu_claims = dict(cpu_result.claims)
    cpu_claims["teeflow.composite"] = {"gpus": names, "gpu_evidence_bound": all_bound}
    sourced = (
        SourcedDataClaim.TRUSTED_SOURCES
        if all_good and names
        else (SourcedDataClaim.CONTRAINDICATED_SOURCES if names else SourcedDataClaim.NO_CLAIM)
    )
    out: dict[str, AttestationResult] = {}
    cpu_vec = cpu_result.trust_vector
    if sourced is not SourcedDataClaim.NO_CLAIM:
        cpu_vec = _worse(cpu_vec, sourced_data=int(sourced))
    out[CPU_SUBMODULE] = _rebuild(cpu_result, _dedupe(cpu_violations), cpu_vec, cpu_claims)
    for n in names:
        result = gpu_results[n]
        vec = result.trust_vector
        if n not in bound:
            vec = _worse(vec, instance_identity=int(InstanceIdentityClaim.UNRECOGNIZED))
        claims = dict(result.claims)
        claims["teeflow.bound_in"] = CPU_SUBMODULE
        claims["teeflow.evidence_bound"] = n in bound
        out[n] = _rebuild(result, _dedupe(per_gpu[n]), vec, claims)
    return out


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _rebuild(
    result: AttestationResult,
    extra_violations: list[str],
    vector: TrustworthinessVector,
    claims: Mapping[str, Any],
) -> AttestationResult:
    violations = (*result.violations, *extra_violations)
    if not violations and vector.status is EarStatus.CONTRAINDICATED:
        # Only reachable with an unrequired failed rule (e.g. require_binding False):
        # keep the original vector so an accepted result is never contraindicated.
        vector = result.trust_vector
    return dataclasses.replace(result, violations=violations, trust_vector=vector, claims=claims)


def composite_accepted(results: Mapping[str, AttestationResult]) -> bool:
    """True iff every submodule of a composite result is accepted (no violations)."""
    return bool(results) and all(r.accepted for r in results.values())
