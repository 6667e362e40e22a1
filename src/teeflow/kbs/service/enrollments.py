"""The KBS side of party enrollments (pure helpers of the attestation and revocation paths).

* :func:`check_enrollment` — at attestation, before the evidence is appraised: the runtime
  data ``teeflow`` member must carry an enrollment
  (:mod:`teeflow.kbs.policy.enrollment`) that verifies against the agreement in force
  (party signature, federation, party role, validity) and matches the attestation (role,
  party claim, session scope, workload key). Returns every reason, never raises.
* :func:`enrollment_use` — the store's use-count step for an accepted attestation (counted
  in the transaction that binds the token: :meth:`KbsStore.consume_nonce_and_audit`, which
  also refuses revoked enrollments).
* :func:`enrolled` — the facts the attested session (EAR ``teeflow.attested.enrollment``,
  workload certificate ``party``) carries: the session's party comes only from here.
* :func:`verified_revocation` — a submitted revocation checked against the agreement;
  :class:`EnrollmentService` stores and audits it (``POST /v1/enrollments/revocations``).

Plain Trustee attesters (no ``teeflow`` member, the service's default role) attest without
an enrollment; their sessions have no party and get no certificate, key or counter step.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from teeflow.errors import ParseError, PolicyViolation, VerificationError
from teeflow.kbs.api.problems import InvalidRequest, NoAgreement
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.enrollment import (
    Enrollment,
    EnrollmentRevocation,
    binding_problems,
    enrollment_policy_problems,
    use_key,
    verify_enrollment_signature,
    verify_revocation,
)
from teeflow.kbs.protocol import Enrolled, RuntimeData
from teeflow.kbs.store.interface import EnrollmentUse

if TYPE_CHECKING:
    from teeflow.kbs.service.context import ServiceContext

__all__ = [
    "CERTIFICATE_PARTY_ROLES",
    "NO_ENROLLMENT",
    "EnrollmentCache",
    "EnrollmentService",
    "check_enrollment",
    "enrolled",
    "enrollment_revoked",
    "enrollment_use",
    "token_lifetime",
    "verified_revocation",
]

#: Roles whose workload certificate names the enrolled party: workloads that act *for* a
#: party. Federation-wide workloads (aggregator, compute worker) are enrolled by their
#: operator — recorded in the EAR (``teeflow.attested.enrollment``) and the audit log — but
#: their certificates name no party (``CN=aggregator:-``: the name FL clients check in the
#: TLS handshake, whoever operates the aggregator).
CERTIFICATE_PARTY_ROLES = frozenset({"client", "serve"})

#: The reason recorded when a workload with teeflow claims sends no enrollment.
NO_ENROLLMENT = (
    "no enrollment: a workload acts for a party only with that party's signed enrollment "
    "(teeflow party enroll; the role's --enrollment option)"
)


class EnrollmentCache:
    """Enrollments whose structure and signature this process verified, per token and
    agreement digest (the result of
    :func:`~teeflow.kbs.policy.enrollment.verify_enrollment_signature` depends on nothing
    else), so a token used for many attestations (a compute worker's jobs, re-attestations)
    is verified once; the policy checks (validity at ``now``, party roles), the binding, use
    counts and revocation are re-done every time. Failures are not cached. At most
    ``max_entries`` (all dropped when full). Thread-safe.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        self._entries: dict[tuple[bytes, bytes], Enrollment] = {}

    def verified(
        self, token: str, agreement: FederationAgreement, agreement_digest: bytes
    ) -> Enrollment:
        """The signature-checked enrollment of ``token`` under this agreement.

        Raises:
            ParseError, VerificationError, PolicyViolation: as
                :func:`~teeflow.kbs.policy.enrollment.verify_enrollment_signature`.
        """
        key = (hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest(), agreement_digest)
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        enrollment = verify_enrollment_signature(token, agreement)
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries = {}
            self._entries[key] = enrollment
        return enrollment


def check_enrollment(
    runtime: RuntimeData,
    role: str | None,
    agreement: FederationAgreement,
    now: datetime,
    *,
    cache: EnrollmentCache | None = None,
    agreement_digest: bytes | None = None,
) -> tuple[Enrollment | None, list[str]]:
    """The verified enrollment of an attestation and every reason to refuse it.

    Args:
        runtime: the runtime data as sent (``teeflow`` claims and ``tee-pubkey``).
        role: the role being appraised (claimed, or the service's default role).
        agreement: the agreement in force.
        now: the KBS time.
        cache, agreement_digest: a per-process :class:`EnrollmentCache` and the digest of
            ``agreement`` (both or neither).

    Returns:
        ``(enrollment, reasons)``: ``(None, [])`` for a plain attester without teeflow
        claims; ``(None, [NO_ENROLLMENT])`` for teeflow claims without an enrollment;
        otherwise the enrollment when it verified, and the reasons (empty: accepted).
    """
    claims = runtime.teeflow
    if claims is None:
        return None, []
    if claims.enrollment is None:
        return None, [NO_ENROLLMENT]
    try:
        if cache is not None and agreement_digest is not None:
            enrollment = cache.verified(claims.enrollment, agreement, agreement_digest)
        else:
            enrollment = verify_enrollment_signature(claims.enrollment, agreement)
    except PolicyViolation as exc:
        return None, list(exc.violations) or [str(exc)]
    except (ParseError, VerificationError) as exc:
        return None, [f"enrollment rejected: {exc}"]
    policy = enrollment_policy_problems(enrollment, agreement, now=now)
    if policy:
        return None, policy
    reasons = binding_problems(
        enrollment,
        role=role or "",
        party=claims.party,
        session=claims.session,
        tee_pubkey=runtime.tee_pubkey.as_jwk(),
    )
    return enrollment, reasons


def enrollment_use(enrollment: Enrollment) -> EnrollmentUse:
    """The store step of one use of ``enrollment`` (key ``party/jti``, its ``uses``)."""
    return EnrollmentUse(use_key(enrollment.party, enrollment.jti), enrollment.uses)


def enrolled(enrollment: Enrollment) -> Enrolled:
    """The attested session's enrollment facts."""
    return Enrolled(
        id=enrollment.jti,
        party=enrollment.party,
        session=enrollment.session,
        expires_at=enrollment.expires_at,
    )


def token_lifetime(ttl: timedelta, enrollment: Enrollment | None, now: datetime) -> timedelta:
    """The EAR lifetime: ``ttl``, cut to the enrollment's expiry (at least 1 s)."""
    if enrollment is None:
        return ttl
    left = int((enrollment.expires_at - now).total_seconds())
    return min(ttl, timedelta(seconds=max(1, left)))


def verified_revocation(
    token: str, agreement: FederationAgreement, now: datetime
) -> tuple[EnrollmentRevocation | None, list[str]]:
    """A submitted revocation checked against the agreement in force.

    Returns:
        ``(revocation, [])`` when the revoking party's signature verifies and the
        federation matches; else ``(None, reasons)``.
    """
    try:
        return verify_revocation(token, agreement, now=now), []
    except PolicyViolation as exc:
        return None, list(exc.violations) or [str(exc)]
    except (ParseError, VerificationError) as exc:
        return None, [f"revocation rejected: {exc}"]


class EnrollmentService:
    """Enrollment revocations: verified, stored and audited.

    Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def revoke_enrollment(self, revocation: str) -> dict[str, Any]:
        """Accept a party-signed enrollment revocation (``POST /v1/enrollments/revocations``):
        verified against the agreement in force (the revoking party's signature, the
        federation), stored, audited; every later attestation with that enrollment is
        refused. Sessions already attested keep their token until it expires (at most the
        token lifetime). Repeating a revocation is accepted and changes nothing.

        Returns:
            ``{"id", "party", "revoked_at", "uses"}``.

        Raises:
            NoAgreement: no agreement yet.
            InvalidRequest: the revocation does not verify (every reason, audited).
            ServiceUnavailable: the store failed.
        """
        now = self._ctx.now()
        current = self._ctx.current()
        if current is None:
            raise NoAgreement()
        revoked, reasons = verified_revocation(revocation, current[0].agreement, now)
        if revoked is None:
            self._ctx.deny(
                InvalidRequest, "enrollment", "revocation", reasons, detail="; ".join(reasons)
            )
        key = use_key(revoked.party, revoked.jti)
        data = {"party": revoked.party, "enrollment_id": revoked.jti, "action": "revoke"}
        build = self._ctx.builder("enrollment", f"enrollment:{key}", "accept", data=data)
        with self._ctx.storage():
            record, entry = self._ctx.store.revoke_enrollment_and_audit(
                key, revocation.encode("ascii"), now, build
            )
        self._ctx.heads.saw(entry)
        self._ctx.revocations.mark(key)
        self._ctx.log.info("enrollment %s of %s revoked", revoked.jti, revoked.party)
        return {
            "id": revoked.jti,
            "party": revoked.party,
            "revoked_at": None if record.revoked_at is None else record.revoked_at.isoformat(),
            "uses": record.uses,
        }


def enrollment_revoked(ctx: ServiceContext, enrollment: Enrolled | None) -> bool:
    """True when the enrollment an attested session acts under was revoked since it
    attested (issue 11: a revocation stops releases and certificates at once, not only when
    the session's token expires). One authenticated store read, remembered for the
    agreement refresh interval (:class:`~teeflow.kbs.service.context.RevocationCache`; a
    revocation through this KBS process is seen at once).

    Raises:
        ServiceUnavailable: the store failed.
    """
    if enrollment is None:
        return False
    key = use_key(enrollment.party, enrollment.id)
    cached = ctx.revocations.get(key)
    if cached is not None:
        return cached
    with ctx.storage():
        record = ctx.store.get_enrollment(key)
    revoked = record is not None and record.revoked_at is not None
    ctx.revocations.put(key, revoked)
    return revoked
