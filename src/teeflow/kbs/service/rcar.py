"""RCAR attestation checks used by :class:`teeflow.kbs.service.core.KbsService` (pure functions).

* :func:`appraise_attestation` — an ``Attestation`` message against the active agreement:
  the declared ``tee`` selects the evidence type (:mod:`teeflow.kbs.service.evidence`: SGX,
  TDX, SEV-SNP, hardware or emulated), then evidence shape, parse → verify (anchors,
  collateral, ``now``) → appraise with the role's reference values for that platform and
  REPORT_DATA pinned to the runtime-data binding; returns every reason instead of raising.
* :func:`claim_problems` — runtime-data ``teeflow`` claims the agreement does not allow.
* :func:`session_from_ear` — rebuild an :class:`AttestedSession` from a verified EAR.
* :class:`TokenCache` — bearer tokens already verified by this process, until they expire.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from teeflow.attestation.additional_evidence import parse_additional_evidence
from teeflow.attestation.appraisal import AttestationResult
from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.composite import RuntimeData
from teeflow.attestation.ear import Ear
from teeflow.attestation.trust import TrustAnchor
from teeflow.attestation.trust.nvidia import nvidia_device_identity_ca
from teeflow.errors import ParseError, PolicyViolation, VerificationError
from teeflow.kbs.api.problems import TokenVerifierError
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.protocol import (
    AttestedSession,
    AttestRequest,
    TeeflowClaims,
)
from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider
from teeflow.kbs.service.evidence import VerifyInputs, evidence_platform, evidence_type
from teeflow.kbs.service.gpu import appraise_gpus, unsupported_additional

__all__ = [
    "ATTESTED_CLAIM",
    "Appraisal",
    "TokenCache",
    "appraise_attestation",
    "claim_problems",
    "session_from_ear",
]

#: EAR claim holding the attested session facts (see :mod:`teeflow.kbs.service.core`).
ATTESTED_CLAIM = "teeflow.attested"


@dataclass(frozen=True)
class Appraisal:
    """Outcome of :func:`appraise_attestation`.

    Attributes:
        reasons: every reason to deny (empty: accepted).
        result: the appraisal (None when the evidence did not get that far).
        measurement: MRENCLAVE / MRTD / MEASUREMENT hex of verified evidence, else None.
        warnings: verification notes (e.g. a TDX event log that was not replayed).
        submods: ``{"cpu0": ..., "gpu0": ...}`` when GPU evidence was appraised (the EAR
            then carries one submodule each), else empty.
    """

    reasons: tuple[str, ...]
    result: AttestationResult | None
    measurement: str | None
    warnings: tuple[str, ...] = ()
    submods: Mapping[str, AttestationResult] = field(default_factory=dict)


def claim_problems(
    claims: TeeflowClaims | None,
    role: str | None,
    agreement: FederationAgreement,
    platform: str = "sgx",
) -> list[str]:
    """Every way the role and runtime-data claims are not allowed by ``agreement``: no role,
    a role without reference values for ``platform`` (``sgx``, ``tdx``, ``snp``), an unknown
    party, a package not in the agreement, a function not in the claimed package, a
    recipient not named in ``outputs``."""
    if role is None:
        return ["no teeflow role claimed and no default role configured"]
    out: list[str] = []
    if agreement.reference_values(role, platform) is None:
        out.append(f"agreement has no {platform.upper()} reference values for role {role}")
    if claims is None:
        return out
    if claims.party is not None and claims.party not in agreement.parties:
        out.append(f"party {claims.party} is not a party of the agreement")
    package = None
    if claims.package_digest is not None:
        package = agreement.package_by_digest(claims.package_digest)
        if package is None:
            out.append(f"package {claims.package_digest} is not in the agreement")
    if claims.function is not None:
        if package is None:
            out.append("a function claim needs a package of the agreement")
        elif claims.function not in package[1].callables:
            out.append(f"function {claims.function} is not in package {package[0]}")
    allowed = agreement.output_recipients()
    out += [f"recipient {r} may not receive outputs" for r in claims.recipients if r not in allowed]
    return out


def _primary(
    request: AttestRequest,
) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """Primary evidence, the parsed additional-evidence map, and reasons to refuse."""
    if request.init_data is not None:
        return None, {}, ["init-data is not supported"]
    composite = request.composite()
    try:
        additional = parse_additional_evidence(composite.additional_evidence)
    except ParseError as exc:
        return None, {}, [f"additional evidence rejected: {exc}"]
    unsupported = unsupported_additional(additional)
    if unsupported:
        return None, {}, unsupported
    return dict(composite.primary_evidence), additional, []


def appraise_attestation(
    request: AttestRequest,
    *,
    declared_tee: str,
    agreement: FederationAgreement,
    role: str | None,
    anchors: Sequence[TrustAnchor],
    collateral: CollateralProvider,
    now: datetime,
    logger: logging.Logger | None = None,
    snp_endorsements: SnpEndorsementProvider | None = None,
    gpu_anchors: Sequence[TrustAnchor] | None = None,
) -> Appraisal:
    """Verify and appraise the evidence of an ``Attestation`` message.

    Steps (each failure is a reason; later steps run only when earlier ones passed): the
    declared TEE has an evidence type (:func:`teeflow.kbs.service.evidence.evidence_type`);
    no init-data (not supported: fail closed); additional evidence that parses
    (:func:`teeflow.attestation.additional_evidence.parse_additional_evidence`) and names
    only ``nvidia``; evidence that
    recognisably belongs to another platform (an SGX quote declared as ``tdx``, an SNP
    report declared as ``sgx`` …) is refused as such; the type's evidence shape, parse,
    collateral/endorsements and verify; agreement in force at ``now``; role and claims
    (:func:`claim_problems` for that platform); appraisal with the role's reference values
    for the platform (``allow_emulated`` from the agreement) and REPORT_DATA equal to
    :func:`runtime_data_digest` of the runtime data as sent; the declared TEE equals the
    appraised one (``tdx`` for hardware, ``emulated-tdx`` for an emulation root, …).

    Args:
        request: the message (nonce already checked by the caller).
        declared_tee: the session's ``tee``.
        agreement: the active agreement.
        role: the role to appraise (claims or the service's default), or None.
        anchors, collateral, now: verification inputs.
        logger: for the emulated-evidence warning.
        snp_endorsements: VCEK/VLEK source for SNP evidence sent without ``cert_chain``.
        gpu_anchors: roots for GPU evidence (default: the NVIDIA Device Identity CA);
            GPU evidence in ``additional_evidence`` is appraised with the CPU evidence
            (:func:`teeflow.kbs.service.gpu.appraise_gpus`).
    """
    kind = evidence_type(declared_tee)
    if kind is None:
        return Appraisal((f"TEE type {declared_tee} is not supported",), None, None)
    primary, additional, reasons = _primary(request)
    if primary is None:
        return Appraisal(tuple(reasons), None, None)
    found = evidence_platform(primary)
    if found is not None and found != kind.platform:
        reason = f"declared tee {declared_tee} but the evidence is {found.upper()} evidence"
        return Appraisal((reason,), None, None)
    inputs = VerifyInputs(anchors, collateral, snp_endorsements, now, tee=declared_tee)
    try:
        verified = kind.verify(primary, inputs)
    except ParseError as exc:
        reason = str(exc)
        if reason.startswith("primary_evidence is not"):
            return Appraisal((reason,), None, None)
        return Appraisal((f"evidence rejected: {reason}",), None, None)
    except VerificationError as exc:
        return Appraisal((f"evidence rejected: {exc}",), None, None)
    measurement = verified.measurement
    runtime = request.runtime_data
    reasons = agreement.time_violations(now) + claim_problems(
        runtime.teeflow, role, agreement, kind.platform
    )
    if reasons or role is None:
        return Appraisal(tuple(reasons), None, measurement, verified.warnings)
    binding = runtime_data_digest(
        tee_pubkey=runtime.tee_pubkey.as_jwk(),
        nonce=runtime.nonce,
        teeflow=runtime.teeflow_members(),
        additional_evidence=request.composite().additional_evidence,
    )
    try:
        result = kind.appraise(verified, agreement, role, binding, logger=logger)
    except PolicyViolation as exc:  # pragma: no cover - claim_problems checked the values
        return Appraisal((str(exc),), None, measurement, verified.warnings)
    reasons = list(result.violations)
    if declared_tee != result.tee:
        reasons.append(f"declared tee {declared_tee} but the evidence is {result.tee}")
    gpus = appraise_gpus(
        additional,
        agreement=agreement,
        role=role,
        cpu_result=result,
        runtime=RuntimeData(
            tee_pubkey=runtime.tee_pubkey.as_jwk(),
            nonce=runtime.nonce,
            teeflow=runtime.teeflow_members(),
            additional_evidence=request.composite().additional_evidence,
        ),
        anchors=gpu_anchors if gpu_anchors is not None else [nvidia_device_identity_ca()],
        now=now,
    )
    reasons += gpus.reasons
    return Appraisal(
        tuple(reasons), result, measurement, verified.warnings, submods=gpus.results
    )


def attested_claims(
    *,
    session_id: str,
    result: AttestationResult,
    measurement: str,
    agreement_digest: bytes,
    role: str,
    claims: Mapping[str, Any] | None,
    enrollment: Mapping[str, Any] | None = None,
    emulated: bool | None = None,
) -> dict[str, Any]:
    """The ``teeflow.attested`` EAR claim (and the stored session facts); ``enrollment``
    is the verified enrollment's facts (:class:`~teeflow.kbs.protocol.Enrolled` as JSON);
    ``emulated`` defaults to the result's (pass True when a GPU submodule is emulated)."""
    return {
        "enrollment": None if enrollment is None else dict(enrollment),
        "session_id": session_id,
        "tee": result.tee,
        "emulated": result.emulated if emulated is None else emulated,
        "measurement": measurement,
        "agreement_digest": agreement_digest.hex(),
        "role": role,
        "claims": None if claims is None else dict(claims),
    }


def session_from_ear(ear: Ear, token: str) -> AttestedSession:
    """Rebuild the attested session from a verified EAR (signature and expiry checked by
    :func:`teeflow.attestation.ear.verify_ear`).

    Raises:
        TokenVerifierError: a contraindicated submodule, or missing/malformed teeflow claims.
    """
    statuses = {str(s.status) for s in ear.submods.values()}
    attested = ear.claims.get(ATTESTED_CLAIM)
    if "contraindicated" in statuses or not isinstance(attested, Mapping):
        raise TokenVerifierError("token carries no accepted teeflow attestation")
    try:
        return AttestedSession.model_validate(
            {
                "session_id": attested.get("session_id"),
                "token_digest": hashlib.sha256(token.encode("ascii")).hexdigest(),
                "tee": attested.get("tee"),
                "emulated": attested.get("emulated"),
                "measurement": attested.get("measurement"),
                "agreement_digest": attested.get("agreement_digest"),
                "tee_pubkey": ear.claims.get("tee-pubkey"),
                "claims": attested.get("claims"),
                "role": attested.get("role"),
                "expires_at": ear.expires_at,
                "enrollment": attested.get("enrollment"),
            }
        )
    except (ValidationError, TypeError, UnicodeEncodeError):
        raise TokenVerifierError("token claims are malformed") from None


class TokenCache:
    """Bearer tokens this process has verified, each with its :class:`AttestedSession`,
    until the token expires (so a cached-token resource fetch skips the ES256 verification
    and claim parsing).

    Keys are SHA-256 digests of the exact token text: a hit is the same token, whose
    signature, profile and claims were already checked by
    :func:`teeflow.attestation.ear.verify_ear` and :func:`session_from_ear`. Expiry is
    re-checked on every hit (``now >= expires_at`` is a miss, and the caller's full
    verification then refuses the token). Whether the token's agreement is still the active
    one is *not* cached: the caller checks it on every request. At most ``max_entries``
    tokens are kept; when full, expired entries are dropped, and if none expired, all.
    Thread-safe.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        self._entries: dict[bytes, AttestedSession] = {}

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str, now: datetime) -> AttestedSession | None:
        """The cached session of ``token`` if it has not expired at ``now``, else None."""
        found = self._entries.get(self._key(token))
        if found is None or now >= found.expires_at:
            return None
        return found

    def put(self, token: str, session: AttestedSession, now: datetime) -> None:
        """Remember a token that just verified (``session`` from :func:`session_from_ear`)."""
        key = self._key(token)
        with self._lock:
            if len(self._entries) >= self._max:
                live = {k: v for k, v in self._entries.items() if now < v.expires_at}
                self._entries = live if len(live) < self._max else {}
            self._entries[key] = session
