"""The framework-free KBS core: agreements, RCAR attestation, resources, certificates,
counters and the audit log (DESIGN "RCAR attestation protocol").

:class:`KbsService` is a thin facade over the parts, each in its own module and sharing one
:class:`~teeflow.kbs.service.context.ServiceContext`: :attr:`~KbsService.agreements`
(:mod:`.agreements`), :attr:`~KbsService.attestation` (:mod:`.attestation`),
:attr:`~KbsService.resources` (:mod:`.resources`), :attr:`~KbsService.certificates`
(:mod:`.certificates`), :attr:`~KbsService.ledger` (:mod:`.ledger`: counters, audit) and
:attr:`~KbsService.enrollments` (:mod:`.enrollments`: revocations).

:class:`KbsService` holds no network code. Every operation is a method taking and returning
pydantic models (:mod:`teeflow.kbs.protocol`), ``str`` or ``bytes``; every refusal is a
:class:`teeflow.kbs.api.problems.KbsProblem` carrying its RFC 7807 type and HTTP status, so an
HTTP adapter only maps routes, cookies and bodies. Time (``clock``), randomness (``rng``),
trust anchors and collateral are injected.

RCAR, as in Trustee KBS 0.4.0:

* :meth:`~KbsService.auth` — ``Request`` → new session id + ``Challenge`` (nonce: base64 of
  32 random bytes, single use, expires after ``nonce_ttl``);
* :meth:`~KbsService.attest` — session id + ``Attestation`` → ``{"token": EAR}``. Order: the
  session must exist and ``runtime-data.nonce`` equal its nonce (a mismatch consumes
  nothing), and the nonce must be unused and unexpired; then parse → verify (anchors,
  collateral provider, ``now``) → appraise against the active agreement's reference values
  for the claimed role with REPORT_DATA pinned to
  :func:`~teeflow.attestation.binding.runtime_data_digest` of the runtime data as sent; then
  *one* store transaction consumes the nonce, binds the token (accept), counts one use of
  the party's enrollment (refusing a revoked or used-up one) and appends the audit entry of
  the decision (:meth:`KbsStore.consume_nonce_and_audit`). A workload with teeflow claims
  needs its party's enrollment (:mod:`teeflow.kbs.policy.enrollment`), checked against the
  agreement with the evidence; the session's party comes only from it. The nonce is used
  up by a refused attestation too (one piece of evidence per nonce), and of concurrent
  attestations with the same nonce exactly one gets past the store (the others are denied
  as replays). Every accept or deny, with all reasons, is audited;
* :meth:`~KbsService.authorize` — a session id (cookie) and/or bearer token →
  :class:`~teeflow.kbs.protocol.AttestedSession`; tokens carry the agreement digest and are
  refused once another agreement is active.

EAR extra claims (besides those of :func:`teeflow.attestation.ear.issue_ear`):
``tee-pubkey`` (the attested JWK, as Trustee's token carries it) and ``teeflow.attested``
``{session_id, tee, emulated, measurement, agreement_digest, role, claims, enrollment}``
(``enrollment``: ``{id, party, session, expires_at}`` of the verified enrollment, or null).

Writes happen only for accepted requests, except audit entries of denials and the consumed
nonce of a refused attestation. Session ids are bearer credentials (the ``kbs-session-id``
cookie): audit entries name a session by the first 32 hex digits of its SHA-256 only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from teeflow.attestation.trust import TrustAnchor
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.service.agreements import AgreementService
from teeflow.kbs.service.attestation import AttestationService
from teeflow.kbs.service.certificates import CertificateService
from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider
from teeflow.kbs.service.context import KbsKeyMaterial, ServiceContext
from teeflow.kbs.service.enrollments import EnrollmentService
from teeflow.kbs.service.heads import KbsHeadFile
from teeflow.kbs.service.ledger import Ledger
from teeflow.kbs.service.resources import ResourceService
from teeflow.kbs.service.usage import UsageService
from teeflow.kbs.store.interface import KbsStore

__all__ = ["KbsService"]


class KbsService:
    """The KBS core (module docstring). Thread-safe as far as the store is.

    Args:
        store: persistent state (:func:`teeflow.kbs.store.open_store`).
        keys: the KBS keys (:class:`KbsKeyMaterial`).
        clock: returns the current time, timezone-aware.
        rng: ``rng(n) -> n random bytes`` (session ids, nonces); default ``os.urandom``.
        anchors: trust anchors for evidence (Intel SGX Root CA; emulation roots — the SGX/TDX
            authority, the emulated AMD ARK — only when emulated evidence may be verified at
            all: the agreement still decides). AMD's pinned ARKs are always trusted for SNP.
        collateral: collateral provider for SGX and TDX quotes.
        snp_endorsements: VCEK/VLEK source for SNP reports sent without ``cert_chain``
            (e.g. :class:`~teeflow.kbs.service.collateral.KdsSnpEndorsementProvider`);
            None refuses such reports.
        nonce_ttl: challenge lifetime (default 60 s).
        token_ttl: EAR lifetime (default 5 min).
        logger: where decisions are logged (no secrets); default this module's logger.
        default_role: role appraised for attesters that send no ``teeflow`` claims (plain
            Trustee attesters); None (default) refuses them.
        agreement_refresh: how long the RCAR hot paths (attest, authorize, release) may use
            this process's copy of the active agreement before reading it again (default
            1 s; 0 reads it every time). Agreements accepted by this process take effect at
            once; one accepted by another KBS process sharing the database is seen within
            this time - and never allows a release or token binding under a superseded
            agreement, which the store re-checks in the same transaction.
        on_agreement: called after each accepted agreement
            (:class:`~teeflow.kbs.service.agreements.AgreementService`).
        first_agreement: the digest (32 bytes) the first agreement must have (``kbs serve
            --expect-agreement``: bootstrap, issue 10 (N)); None accepts any first agreement.
        head_file: where the newest signed state head is kept across restarts
            (:class:`~teeflow.kbs.service.heads.KbsHeadFile`); None keeps none.
        gpu_anchors: roots for NVIDIA GPU evidence in ``additional_evidence`` (default: the
            pinned NVIDIA Device Identity CA; add the emulated NVIDIA root for emulation,
            which the agreement must still allow).

    Integrity (adversary H): every agreement, upload, release, counter step, enrollment use
    and revocation is an audited store write, so the audit chain is the state log;
    :attr:`heads` signs its head for the responses. A row that fails authentication
    (``StorageTampered``, incl. rollbacks) is refused with 503 and an audit entry (kind
    ``store``); the service keeps running. Stored agreements (signature chain) and grants
    (owner signature) are re-verified when first loaded, cached by digest.
    """

    def __init__(
        self,
        store: KbsStore,
        keys: KbsKeyMaterial,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
        anchors: Sequence[TrustAnchor],
        collateral: CollateralProvider,
        nonce_ttl: timedelta = timedelta(seconds=60),
        token_ttl: timedelta = timedelta(minutes=5),
        logger: logging.Logger | None = None,
        default_role: str | None = None,
        snp_endorsements: SnpEndorsementProvider | None = None,
        agreement_refresh: timedelta = timedelta(seconds=1),
        on_agreement: Callable[[SignedAgreement, bytes], None] | None = None,
        first_agreement: bytes | None = None,
        head_file: KbsHeadFile | None = None,
        gpu_anchors: Sequence[TrustAnchor] | None = None,
    ) -> None:
        self._ctx = ServiceContext(
            store,
            keys,
            clock=clock,
            rng=rng,
            anchors=anchors,
            collateral=collateral,
            nonce_ttl=nonce_ttl,
            token_ttl=token_ttl,
            logger=logger,
            default_role=default_role,
            snp_endorsements=snp_endorsements,
            agreement_refresh=agreement_refresh,
            first_agreement=first_agreement,
            head_file=head_file,
            gpu_anchors=gpu_anchors,
        )
        #: Signs the state head of each response (``KBS-State-Head``).
        self.heads = self._ctx.heads
        #: The agreement in force and its history.
        self.agreements = AgreementService(self._ctx, on_agreement=on_agreement)
        #: RCAR sessions, attestation and token checks.
        self.attestation = AttestationService(self._ctx)
        #: Owners' resources and their release.
        self.resources = ResourceService(self._ctx)
        #: Workload certificates.
        self.certificates = CertificateService(self._ctx)
        #: Counters and the audit log.
        self.ledger = Ledger(self._ctx)
        #: Enrollment revocations (enrollments themselves are checked at attestation).
        self.enrollments = EnrollmentService(self._ctx)
        # the facade's operations (one home each: the parts above)
        self.current_agreement = self.agreements.current_agreement
        self.agreement_history = self.agreements.agreement_history
        self.submit_agreement = self.agreements.submit_agreement
        self.auth = self.attestation.auth
        self.purge_expired = self.attestation.purge_expired
        self.attest = self.attestation.attest
        self.authorize = self.attestation.authorize
        self.put_resource = self.resources.put_resource
        self.resource_info = self.resources.resource_info
        self.get_resource = self.resources.get_resource
        self.issue_certificate = self.certificates.issue_certificate
        self.increment_counter = self.ledger.increment_counter
        self.get_counter = self.ledger.get_counter
        self.audit_entries = self.ledger.audit_entries
        self.revoke_enrollment = self.enrollments.revoke_enrollment
        #: Signed usage batches of served models (issue 12).
        self.usage = UsageService(self._ctx)
        self.record_usage = self.usage.record_usage

    @property
    def first_agreement(self) -> bytes | None:
        """The digest the first agreement must have, or None (any)."""
        return self._ctx.first_agreement

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key that verifies audit entries."""
        return self.ledger.audit_public_key
