"""RCAR attestation checks used by :class:`teeflow.kbs.service.KbsService` (pure functions).

* :func:`appraise_attestation` — an ``Attestation`` message against the active agreement:
  evidence shape (Trustee SGX ``{"quote": base64}``), parse → verify (anchors, collateral,
  ``now``) → appraise with the role's reference values and REPORT_DATA pinned to the
  runtime-data binding; returns every reason instead of raising.
* :func:`claim_problems` — runtime-data ``teeflow`` claims the agreement does not allow.
* :func:`session_from_ear` — rebuild an :class:`AttestedSession` from a verified EAR.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from teeflow.attestation import sgx
from teeflow.attestation.appraisal import AttestationResult
from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.ear import Ear
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError, VerificationError
from teeflow.kbs.agreement import FederationAgreement, WorkloadRole
from teeflow.kbs.collateral_provider import CollateralProvider
from teeflow.kbs.problems import TokenVerifierError
from teeflow.kbs.protocol import (
    AttestedSession,
    AttestRequest,
    SgxEvidence,
    TeeflowClaims,
)

__all__ = [
    "ATTESTED_CLAIM",
    "Appraisal",
    "appraise_attestation",
    "claim_problems",
    "session_from_ear",
]

#: EAR claim holding the attested session facts (see :mod:`teeflow.kbs.service`).
ATTESTED_CLAIM = "teeflow.attested"


@dataclass(frozen=True)
class Appraisal:
    """Outcome of :func:`appraise_attestation`.

    Attributes:
        reasons: every reason to deny (empty: accepted).
        result: the SGX appraisal (None when the evidence did not get that far).
        measurement: MRENCLAVE hex of verified evidence, else None.
    """

    reasons: tuple[str, ...]
    result: AttestationResult | None
    measurement: str | None


def claim_problems(
    claims: TeeflowClaims | None, role: str | None, agreement: FederationAgreement
) -> list[str]:
    """Every way the role and runtime-data claims are not allowed by ``agreement``: no role,
    a role without SGX reference values, an unknown party, a package not in the agreement, a
    function not in the claimed package, a recipient not named in ``outputs``."""
    if role is None:
        return ["no teeflow role claimed and no default role configured"]
    out: list[str] = []
    spec = agreement.workloads.get(WorkloadRole(role)) if role in set(WorkloadRole) else None
    if spec is None or spec.sgx is None:
        out.append(f"agreement has no SGX reference values for role {role}")
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


def _quote(request: AttestRequest) -> tuple[bytes | None, list[str]]:
    if request.init_data is not None:
        return None, ["init-data is not supported"]
    composite = request.composite()
    if composite.additional_evidence:
        return None, ["additional evidence is not supported"]
    try:
        evidence = SgxEvidence.model_validate(composite.primary_evidence)
        return evidence.quote_bytes(), []
    except (ValidationError, ValueError):
        return None, ['primary_evidence is not SGX evidence {"quote": "<base64>"}']


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
) -> Appraisal:
    """Verify and appraise the evidence of an ``Attestation`` message.

    Steps (each failure is a reason; later steps run only when earlier ones passed):
    no init-data and no additional evidence (not supported: fail closed); SGX evidence
    shape; :func:`teeflow.attestation.sgx.parse_quote`; collateral for the quote;
    :func:`teeflow.attestation.sgx.verify`; agreement in force at ``now``; role and claims
    (:func:`claim_problems`); :func:`teeflow.attestation.sgx.appraise` with the role's
    reference values (``allow_emulated`` from the agreement) and REPORT_DATA equal to
    :func:`runtime_data_digest` of the runtime data as sent; the declared TEE type equals the
    evidence type (``sgx`` for hardware, ``emulated-sgx`` for an emulation root).

    Args:
        request: the message (nonce already checked by the caller).
        declared_tee: the session's ``tee``.
        agreement: the active agreement.
        role: the role to appraise (claims or the service's default), or None.
        anchors, collateral, now: verification inputs.
        logger: for the emulated-evidence warning.
    """
    raw, reasons = _quote(request)
    if raw is None:
        return Appraisal(tuple(reasons), None, None)
    try:
        quote = sgx.parse_quote(raw)
        coll = collateral.for_quote(quote, now=now)
        verified = sgx.verify(quote, anchors=anchors, collateral=coll, now=now)
    except (ParseError, VerificationError) as exc:
        return Appraisal((f"evidence rejected: {exc}",), None, None)
    measurement = verified.report.mr_enclave.hex()
    runtime = request.runtime_data
    reasons = agreement.time_violations(now) + claim_problems(runtime.teeflow, role, agreement)
    if reasons or role is None:
        return Appraisal(tuple(reasons), None, measurement)
    binding = runtime_data_digest(
        tee_pubkey=runtime.tee_pubkey.as_jwk(),
        nonce=runtime.nonce,
        teeflow=runtime.teeflow_members(),
        additional_evidence=request.composite().additional_evidence,
    )
    policy = agreement.sgx_policy(role).with_report_data(binding)
    result = sgx.appraise(verified, policy, logger=logger)
    reasons = list(result.violations)
    if declared_tee != result.tee:
        reasons.append(f"declared tee {declared_tee} but the evidence is {result.tee}")
    return Appraisal(tuple(reasons), result, measurement)


def attested_claims(
    *,
    session_id: str,
    result: AttestationResult,
    measurement: str,
    agreement_digest: bytes,
    role: str,
    claims: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``teeflow.attested`` EAR claim (and the stored session facts)."""
    return {
        "session_id": session_id,
        "tee": result.tee,
        "emulated": result.emulated,
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
            }
        )
    except (ValidationError, TypeError, UnicodeEncodeError):
        raise TokenVerifierError("token claims are malformed") from None
