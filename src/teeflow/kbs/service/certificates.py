"""Workload certificates from the federation CA for attested sessions.

Part of the KBS core behind :class:`teeflow.kbs.service.core.KbsService` (see that module for
the protocol and the order of checks); state and plumbing are shared through
:class:`teeflow.kbs.service.context.ServiceContext`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teeflow.errors import KbsError, VerificationError
from teeflow.kbs.api.problems import (
    InvalidRequest,
    PolicyDeny,
)
from teeflow.kbs.ca.authority import MAX_CERT_LIFETIME, WorkloadIdentity
from teeflow.kbs.protocol import (
    MAX_CSR_BODY_BYTES,
    AttestedSession,
)
from teeflow.kbs.service.context import ServiceContext
from teeflow.kbs.service.enrollments import CERTIFICATE_PARTY_ROLES, enrollment_revoked

__all__ = ["CertificateService"]


class CertificateService:
    """Workload certificates from the federation CA for attested sessions.

    Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def issue_certificate(self, session: AttestedSession, csr_pem: bytes | str) -> bytes:
        """Issue a workload certificate (PEM) for a CSR whose key is the attested tee-pubkey.

        The identity (role, party, measurement, agreement digest, tee, emulated) comes from
        the session, never from the CSR; the party is the enrolled party, for the roles of
        :data:`~teeflow.kbs.service.enrollments.CERTIFICATE_PARTY_ROLES` only. The
        certificate expires with the agreement's ``attestation.max_age`` (issue 11:
        :meth:`~teeflow.kbs.policy.freshness.AttestationTerms.certificate_lifetime`), at most
        24 h.

        Raises:
            InvalidRequest: not one PEM CSR, or larger than 16 KiB.
            PolicyDeny: no enrollment (the session acts for no party), bad CSR signature,
                or the CSR key is not the attested key.
        """
        now = self._ctx.now()
        raw = csr_pem.encode("ascii", "replace") if isinstance(csr_pem, str) else bytes(csr_pem)
        if len(raw) > MAX_CSR_BODY_BYTES:
            raise InvalidRequest("CSR larger than 16 KiB")
        try:
            csr = x509.load_pem_x509_csr(raw)
        except (ValueError, TypeError):
            raise InvalidRequest("not a PEM certificate signing request") from None
        subject = f"certificate:{session.role}:{session.party or '-'}"
        data: dict[str, Any] = {"role": session.role, "measurement": session.measurement}
        if session.enrollment is None:
            reason = "the workload acts for no enrolled party (no enrollment)"
            self._ctx.deny(PolicyDeny, "certificate", subject, [reason], data, detail=reason)
        if enrollment_revoked(self._ctx, session.enrollment):  # issue 11: at once
            reason = "enrollment revoked"
            self._ctx.deny(PolicyDeny, "certificate", subject, [reason], data, detail=reason)
        try:
            identity = WorkloadIdentity(
                role=session.role,
                party=session.party if session.role in CERTIFICATE_PARTY_ROLES else None,
                measurement=session.measurement,
                agreement_digest=session.agreement_digest,
                tee=session.tee,
                emulated=session.emulated,
            )
            cert = self._ctx.keys.ca.issue_from_csr(
                csr,
                identity,
                now=now,
                expected_public_key=session.tee_pubkey.public_key(),
                lifetime=self._lifetime(),
            )
        except VerificationError as exc:
            self._ctx.deny(PolicyDeny, "certificate", subject, [str(exc)], data, detail=str(exc))
        except KbsError as exc:
            self._ctx.deny(PolicyDeny, "certificate", subject, [str(exc)], data)
        data.update(
            serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc.isoformat(),
            party=session.party,
            certificate_party=identity.party,
        )
        self._ctx.record("certificate", subject, "accept", data=data)
        return cert.public_bytes(serialization.Encoding.PEM)

    def _lifetime(self) -> timedelta:
        """Certificate lifetime under the agreement in force (``attestation.max_age``)."""
        current = self._ctx.current(max_age=1.0)
        terms = None if current is None else current[0].agreement.attestation
        return MAX_CERT_LIFETIME if terms is None else terms.certificate_lifetime(MAX_CERT_LIFETIME)
