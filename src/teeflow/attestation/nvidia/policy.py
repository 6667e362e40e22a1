"""Appraisal of verified NVIDIA GPU evidence (parse -> verify -> **appraise**).

:func:`appraise_gpu` evaluates every rule of a :class:`GpuPolicy` and returns an
:class:`~teeflow.attestation.appraisal.AttestationResult` with ``tee`` ``"nvidia-gpu"``,
meant as EAR submodule ``gpu0``, ``gpu1``, ... next to the CPU's ``cpu0``
(:mod:`teeflow.attestation.composite`).

Trustworthiness vector (draft-ietf-rats-ar4si-09 §2.3): hardware 2 (genuine: the transcript
is signed by a device key certified by the NVIDIA Device Identity CA), 96 for an
architecture the policy does not allow, 97 for an emulation anchor the policy does not
allow; instance-identity 2 when the request nonce equals the policy's nonce (97 when it
differs); executables 2 when every pinned reference value (FWID, driver, VBIOS,
measurement-record digest) matches, 96 when one does not, 33 (warning) when nothing is
pinned.

What is *not* appraised offline: the measurement blocks are not compared with NVIDIA's
Reference Integrity Manifests (the RIM service serves the driver and VBIOS RIMs online), and
certificate revocation (NVIDIA OCSP) is not checked. Unless the policy pins the whole
measurement record (``allowed_measurements_digests``), every result carries the warning
:data:`RIM_WARNING` (``allow_missing_rim: true``, the default) or the same text as a
violation (``allow_missing_rim: false``). The GPU result's status is therefore at best
``warning`` unless the measurement record is pinned.
"""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import field_validator

from teeflow.attestation.appraisal import AttestationResult, HardwareClaim, InstanceIdentityClaim
from teeflow.attestation.appraise_common import Findings, check_emulation, rate_executables
from teeflow.attestation.nvidia.verify import VerifiedGpuEvidence
from teeflow.attestation.policy import Hex32, Hex48, PolicyModel

__all__ = ["RIM_WARNING", "TEE_NAME", "GpuPolicy", "Hex48", "appraise_gpu"]

#: ``AttestationResult.tee`` of GPU results.
TEE_NAME = "nvidia-gpu"
#: Warning (or violation text) when no reference comparison of the measurements was done.
RIM_WARNING = "RIM measurement comparison not performed (needs NVIDIA RIM service)"


class GpuPolicy(PolicyModel):
    """Appraisal Policy for NVIDIA GPU evidence (data: load it with ``from_file``).

    Attributes:
        policy_id: optional identifier (``ear.appraisal-policy-id``).
        nonce: the verifier's 32-byte nonce (hex) the GET_MEASUREMENTS request must carry,
            or None. Without it the evidence could be replayed: None is a violation unless
            ``allow_any_nonce``.
        allow_any_nonce: accept evidence without a nonce check (a warning), default False.
        allowed_architectures: GPU architectures (from the leaf certificate), default
            ``{"HOPPER"}``; upper-case names.
        allowed_driver_versions: driver versions from the signed opaque data (``"590.12"``),
            or None = any. A listed value requires the field to be present.
        allowed_vbios_versions: VBIOS versions (``"96.00.A5.00.01"``, case-insensitive), or
            None = any.
        min_driver_version: driver floor (``"550.54.15"``: dot-separated decimal numbers,
            compared component-wise), or None. Requires the field in the evidence.
        min_vbios_version: VBIOS floor (``"96.00.A5.00.01"``: dot-separated hex numbers,
            compared component-wise), or None. A floor of another VBIOS family (first
            component) is never met.
        allowed_fwids: leaf-certificate FWIDs (48-byte hex), or None = any.
        allowed_measurements_digests: SHA-384 of the whole signed measurement record (48-byte
            hex) from a known-good GPU, or None. Pinning it is the offline substitute for
            NVIDIA's RIM comparison (exact reference values for every block).
        allow_missing_rim: True (default): accept without RIM comparison, with the warning
            :data:`RIM_WARNING`; False: that is a violation unless
            ``allowed_measurements_digests`` is set and matches.
        allow_emulated: accept a chain ending in an emulation anchor (tests), default False.
    """

    nonce: Hex32 | None = None
    allow_any_nonce: bool = False
    allowed_architectures: frozenset[str] = frozenset({"HOPPER"})
    allowed_driver_versions: tuple[str, ...] | None = None
    allowed_vbios_versions: tuple[str, ...] | None = None
    min_driver_version: str | None = None
    min_vbios_version: str | None = None
    allowed_fwids: tuple[Hex48, ...] | None = None
    allowed_measurements_digests: tuple[Hex48, ...] | None = None
    allow_missing_rim: bool = True
    allow_emulated: bool = False

    @field_validator("allowed_architectures", mode="after")
    @classmethod
    def _upper_arch(cls, value: frozenset[str]) -> frozenset[str]:
        if not value:
            raise ValueError("allowed_architectures may not be empty")
        return frozenset(v.strip().upper() for v in value)

    @field_validator(
        "allowed_driver_versions",
        "allowed_vbios_versions",
        "allowed_fwids",
        "allowed_measurements_digests",
        mode="after",
    )
    @classmethod
    def _non_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("use null (any) instead of an empty list")
        return value

    @field_validator("min_driver_version", mode="after")
    @classmethod
    def _driver_floor(cls, value: str | None) -> str | None:
        if value is not None and _version(value, 10) is None:
            raise ValueError("min_driver_version must look like 550.54.15")
        return value

    @field_validator("min_vbios_version", mode="after")
    @classmethod
    def _vbios_floor(cls, value: str | None) -> str | None:
        if value is not None and _version(value, 16) is None:
            raise ValueError("min_vbios_version must look like 96.00.A5.00.01")
        return None if value is None else value.strip().upper()

    @field_validator("allowed_vbios_versions", mode="after")
    @classmethod
    def _upper_vbios(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(v.strip().upper() for v in value)

    def with_nonce(self, nonce: bytes) -> GpuPolicy:
        """A copy requiring the 32-byte ``nonce`` in the GET_MEASUREMENTS request.

        Raises:
            ValueError: ``nonce`` is not 32 bytes.
        """
        if len(nonce) != 32:
            raise ValueError("GPU nonce must be 32 bytes")
        return self.model_copy(update={"nonce": nonce.hex()})


def _version(text: str, base: int) -> tuple[int, ...] | None:
    """``"550.54.15"`` -> (550, 54, 15) (``base`` 10) / hex components (``base`` 16); None
    when malformed (1..8 components of 1..8 digits)."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 8 or not all(0 < len(p) <= 8 for p in parts):
        return None
    try:
        return tuple(int(p, base) for p in parts)
    except ValueError:
        return None


def _floor(
    name: str, actual: str | None, floor: str | None, base: int, violations: list[str]
) -> bool | None:
    """None: no floor; True: at or above it; False: violation appended."""
    if floor is None:
        return None
    have = None if actual is None else _version(actual, base)
    want = _version(floor, base)
    if have is None or want is None:
        violations.append(f"{name} not present or malformed in the evidence (policy sets a floor)")
        return False
    if base == 16 and have[:1] != want[:1]:
        violations.append(f"{name} {actual} is not of the family of the floor {floor}")
        return False
    if have < want:
        violations.append(f"{name} {actual} is below the floor {floor}")
        return False
    return True


def _pinned(
    name: str, actual: str | None, allowed: tuple[str, ...] | None, violations: list[str]
) -> bool | None:
    """None: not pinned; True: matches; False: violation appended."""
    if allowed is None:
        return None
    if actual is None:
        violations.append(f"{name} not present in the evidence (policy pins it)")
        return False
    if actual not in allowed:
        violations.append(f"{name} {actual} not in allowed list")
        return False
    return True


def appraise_gpu(verified: VerifiedGpuEvidence, policy: GpuPolicy) -> AttestationResult:
    """Appraise verified GPU evidence against ``policy``; evaluate every rule.

    Args:
        verified: from :func:`teeflow.attestation.nvidia.verify`.
        policy: the Appraisal Policy.

    Returns:
        ``AttestationResult`` (tee ``"nvidia-gpu"``); ``violations`` lists every failed rule;
        claims ``arch``, ``fwid``, ``fwid_hash_algorithm``, ``measurements_digest``,
        ``measurement_blocks``, ``nonce``, ``evidence_digest``, ``driver_version``,
        ``vbios_version`` (None when not in the opaque data), ``measurements_matched``.
    """
    f = Findings()
    violations = f.violations
    nonce = verified.nonce

    if verified.emulated:
        check_emulation(f, allowed=policy.allow_emulated, what="GPU evidence")
    else:
        f.put("hardware", HardwareClaim.GENUINE)
    if verified.arch is None or verified.arch not in policy.allowed_architectures:
        violations.append(f"GPU architecture {verified.arch} not allowed")
        f.put("hardware", HardwareClaim.CONTRAINDICATED)

    if policy.nonce is not None:
        if hmac.compare_digest(nonce.hex(), policy.nonce):
            f.put("instance_identity", InstanceIdentityClaim.RECOGNIZED)
        else:
            violations.append("GPU evidence nonce does not match the expected nonce")
            f.put("instance_identity", InstanceIdentityClaim.UNRECOGNIZED)
    elif policy.allow_any_nonce:
        f.warnings.append("GPU evidence freshness not checked (no expected nonce)")
    else:
        violations.append("no expected GPU nonce in the policy (freshness unchecked)")

    vbios = verified.vbios_version.upper() if verified.vbios_version is not None else None
    measurements = verified.measurements_digest.hex()
    checks = [
        _pinned("FWID", verified.fwid.digest.hex(), policy.allowed_fwids, violations),
        _pinned(
            "driver version", verified.driver_version, policy.allowed_driver_versions, violations
        ),
        _pinned("VBIOS version", vbios, policy.allowed_vbios_versions, violations),
        _pinned(
            "measurements digest", measurements, policy.allowed_measurements_digests, violations
        ),
        _floor(
            "driver version", verified.driver_version, policy.min_driver_version, 10, violations
        ),
        _floor("VBIOS version", vbios, policy.min_vbios_version, 16, violations),
    ]
    rate_executables(
        f,
        ok=False not in checks,
        pinned=True in checks,
        unpinned_warning="policy pins no GPU firmware or driver reference value",
    )

    measurements_matched = checks[3] is True
    if not measurements_matched:
        if policy.allow_missing_rim:
            f.warnings.append(RIM_WARNING)
        else:
            violations.append(RIM_WARNING)

    claims: dict[str, Any] = {
        "arch": verified.arch,
        "fwid": verified.fwid.digest.hex(),
        "fwid_hash_algorithm": verified.fwid.hash_algorithm,
        "measurements_digest": measurements,
        "measurement_blocks": len(verified.transcript.response.blocks),
        "nonce": nonce.hex(),
        "evidence_digest": verified.evidence_digest.hex(),
        "driver_version": verified.driver_version,
        "vbios_version": vbios,
        "measurements_matched": measurements_matched,
    }
    if verified.emulated:
        claims["teeflow.emulated"] = True
    return f.result(
        tee=TEE_NAME,
        claims=claims,
        policy_id=policy.identifier(),
        verified_at=verified.verified_at,
    )
