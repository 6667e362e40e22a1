"""The framework-free KBS core: agreements, RCAR attestation, resources, certificates,
counters and the audit log (issue 3; DESIGN "RCAR attestation protocol").

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
  *one* store transaction consumes the nonce, binds the token (accept) and appends the
  audit entry of the decision (:meth:`KbsStore.consume_nonce_and_audit`). The nonce is used
  up by a refused attestation too (one piece of evidence per nonce), and of concurrent
  attestations with the same nonce exactly one gets past the store (the others are denied
  as replays). Every accept or deny, with all reasons, is audited;
* :meth:`~KbsService.authorize` — a session id (cookie) and/or bearer token →
  :class:`~teeflow.kbs.protocol.AttestedSession`; tokens carry the agreement digest and are
  refused once another agreement is active.

EAR extra claims (besides those of :func:`teeflow.attestation.ear.issue_ear`):
``tee-pubkey`` (the attested JWK, as Trustee's token carries it) and ``teeflow.attested``
``{session_id, tee, emulated, measurement, agreement_digest, role, claims}``.

Writes happen only for accepted requests, except audit entries of denials and the consumed
nonce of a refused attestation. Session ids are bearer credentials (the ``kbs-session-id``
cookie): audit entries name a session by the first 32 hex digits of its SHA-256 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import ECKey
from pydantic import ValidationError

from teeflow.attestation.ear import issue_ear, verify_ear
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import KbsError, PolicyViolation, SealingError, VerificationError
from teeflow.kbs.api.problems import (
    AgreementRejected,
    AttestationFailed,
    Conflict,
    GrantRejected,
    InvalidRequest,
    InvalidRequestPath,
    KbsProblem,
    NoAgreement,
    PolicyDeny,
    ProtocolVersion,
    ServiceUnavailable,
    TokenNotFound,
    TokenVerifierError,
    UnsupportedTee,
)
from teeflow.kbs.ca.authority import FederationCA, WorkloadIdentity
from teeflow.kbs.policy.canonical import b64url_encode, canonical_json
from teeflow.kbs.policy.grants import grant_digest
from teeflow.kbs.policy.signing import (
    SignedAgreement,
    verify_initial,
    verify_update,
)
from teeflow.kbs.protocol import (
    MAX_CSR_BODY_BYTES,
    PROTOCOL_VERSION,
    RESOURCE_WRAP_INFO,
    SUPPORTED_TEES,
    AttestedSession,
    AttestRequest,
    AttestResponse,
    AuthRequest,
    Challenge,
    CounterState,
    ResourceInfo,
    ResourceUpload,
    is_counter_name,
    is_resource_path,
    resource_wrap_aad,
)
from teeflow.kbs.service.audit import (
    AuditError,
    AuditLog,
)
from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider
from teeflow.kbs.service.rcar import (
    ATTESTED_CLAIM,
    TokenCache,
    appraise_attestation,
    attested_claims,
    session_from_ear,
)
from teeflow.kbs.service.release import (
    GrantCache,
    ReleaseDecision,
    ResourceViews,
    check_upload,
    decide,
    replacement_problems,
    resource_info,
    seal_for_tee,
    stored_grant,
)
from teeflow.kbs.store.interface import (
    AgreementRecord,
    AuditBuilder,
    AuditEntry,
    KbsStore,
    ResourceRecord,
    SessionRecord,
    StorageConflict,
    StorageError,
    StorageExpired,
    StorageInputError,
    StorageNotFound,
    TokenBinding,
)
from teeflow.sealing.hpke import unwrap_key

__all__ = ["AGGREGATOR_COUNTER_PREFIX", "RELEASE_ATTEMPTS", "KbsKeyMaterial", "KbsService"]

#: Counter names under this prefix may be stepped only by aggregator workloads.
AGGREGATOR_COUNTER_PREFIX = "session/"
_MAX_ID = 256
#: Attempts of a release's compare-and-increment before answering 503 (concurrent releases of
#: one resource make the count stale; each attempt re-reads it and re-decides).
RELEASE_ATTEMPTS = 64


class KbsKeyMaterial(Protocol):
    """The KBS keys the service uses (:class:`teeflow.kbs.service.identity.KbsKeys` fits)."""

    @property
    def hpke(self) -> X25519PrivateKey: ...  # data keys are wrapped to it
    @property
    def ca(self) -> FederationCA: ...  # issues workload certificates
    @property
    def ear(self) -> ECKey: ...  # signs EAR tokens (P-256)
    @property
    def audit(self) -> Ed25519PrivateKey: ...  # signs audit entries


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    ) -> None:
        if nonce_ttl <= timedelta(0) or token_ttl < timedelta(seconds=1):
            raise KbsError("nonce_ttl and token_ttl must be positive")
        if agreement_refresh < timedelta(0):
            raise KbsError("agreement_refresh must not be negative")
        self._store = store
        self._keys = keys
        self._clock = clock
        self._rng = rng
        self._anchors = tuple(anchors)
        self._collateral = collateral
        self._snp_endorsements = snp_endorsements
        self._nonce_ttl = nonce_ttl
        self._token_ttl = token_ttl
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._default_role = default_role
        self._audit = AuditLog(store, keys.audit, self._now)
        self._ear_public = ECKey.import_key(keys.ear.as_dict(private=False))
        self._agreement_cache: tuple[bytes, SignedAgreement, float] | None = None
        self._agreement_max_age = agreement_refresh.total_seconds()
        self._tokens = TokenCache()
        self._grants = GrantCache()
        self._known = ResourceViews()

    # -- plumbing ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
            raise KbsError("the KBS clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def _storage(self, *expected: type[StorageError]) -> Iterator[None]:
        """Map storage failures to problems, except the ``expected`` ones the caller handles."""
        passthrough: tuple[type[BaseException], ...] = (KbsProblem, *expected)
        try:
            yield
        except passthrough:
            raise
        except StorageInputError as exc:
            raise InvalidRequest(str(exc)) from None
        except (StorageError, AuditError) as exc:
            self._log.error("KBS store failure: %s", type(exc).__name__)
            raise ServiceUnavailable() from None

    def _record(
        self,
        kind: str,
        subject: str,
        decision: str,
        reasons: Sequence[str] = (),
        data: dict[str, Any] | None = None,
    ) -> AuditEntry:
        build = self._builder(kind, subject, decision, reasons, data)
        try:
            return self._store.append_audit_built(build)
        except (StorageError, AuditError) as exc:
            self._log.error("audit append failed: %s", type(exc).__name__)
            raise ServiceUnavailable() from None

    def _builder(
        self,
        kind: str,
        subject: str,
        decision: str,
        reasons: Sequence[str] = (),
        data: dict[str, Any] | None = None,
    ) -> AuditBuilder:
        """An audit entry builder (validated now) for the store's audited writes."""
        subject = subject[:_MAX_ID] or "-"
        reasons = [r[:1024] for r in list(reasons)[:64]]
        try:
            return self._audit.builder(kind, subject, decision, reasons, data)
        except AuditError as exc:
            self._log.error("audit entry refused: %s", type(exc).__name__)
            raise ServiceUnavailable() from None

    def _deny(
        self,
        problem: type[KbsProblem],
        kind: str,
        subject: str,
        reasons: Sequence[str],
        data: dict[str, Any] | None = None,
        *,
        detail: str | None = None,
    ) -> NoReturn:
        self._record(kind, subject, "deny", reasons, data)
        self._log.info("%s %s denied: %s", kind, subject[:64], "; ".join(reasons)[:512])
        raise problem(detail, list(reasons))

    # -- agreements -------------------------------------------------------------------------

    def _current(self, max_age: float = 0.0) -> tuple[SignedAgreement, bytes] | None:
        """The active agreement and its digest: read from the store, or - on the hot paths,
        ``max_age > 0`` - the copy this process read (or accepted) less than ``max_age``
        seconds ago. Releases and token bindings re-check the digest inside their store
        transaction, so a stale copy can only make them fail, never succeed."""
        cached = self._agreement_cache
        if cached is not None and max_age > 0 and time.monotonic() - cached[2] < max_age:
            return cached[1], cached[0]
        with self._storage():
            record = self._store.current_agreement()
        if record is None:
            return None
        fetched = time.monotonic()
        if cached is not None and cached[0] == record.digest:
            self._agreement_cache = (record.digest, cached[1], fetched)
            return cached[1], record.digest
        try:
            signed = SignedAgreement.model_validate_json(record.document)
        except ValidationError:
            self._log.error("stored agreement version %d does not parse", record.version)
            raise ServiceUnavailable() from None
        self._agreement_cache = (record.digest, signed, fetched)
        return signed, record.digest

    def current_agreement(self) -> SignedAgreement | None:
        """The active signed agreement, or None before the first one."""
        current = self._current()
        return None if current is None else current[0]

    def agreement_history(self) -> list[SignedAgreement]:
        """Every accepted agreement, oldest first.

        Raises:
            ServiceUnavailable: the store failed or holds an unparsable document.
        """
        with self._storage():
            records = self._store.agreement_history()
        try:
            return [SignedAgreement.model_validate_json(r.document) for r in records]
        except ValidationError:
            raise ServiceUnavailable() from None

    def submit_agreement(self, signed: SignedAgreement) -> AgreementRecord:
        """Accept the first agreement (every party signed: ``verify_initial``) or an update
        of the active one (k-of-n: ``verify_update``); store it append-only; audit.

        Tokens issued under the previous agreement stop being accepted (their agreement
        digest no longer matches); so do certificates checked with
        :func:`teeflow.kbs.ca.authority.verify_workload_certificate`.

        Raises:
            AgreementRejected: signatures or update rules fail (every reason), or the
                agreement names another federation than the KBS's CA.
            Conflict: a concurrent submission won.
        """
        now = self._now()
        current = self._current()
        subject = f"agreement:{signed.agreement.federation}"
        reasons: list[str] = []
        try:
            if current is None:
                digest = verify_initial(signed)
            else:
                digest = verify_update(signed, current[0])
        except PolicyViolation as exc:
            reasons += exc.violations
        except VerificationError as exc:
            reasons.append(str(exc))
        if signed.agreement.federation != self._keys.ca.federation:
            reasons.append(
                f"agreement is for federation {signed.agreement.federation}, "
                f"this KBS serves {self._keys.ca.federation}"
            )
        if reasons:
            self._deny(AgreementRejected, "agreement", subject, reasons, detail="; ".join(reasons))
        document = canonical_json(signed.model_dump(mode="json"))
        try:
            with self._storage(StorageConflict):
                record = self._store.append_agreement(
                    signed.agreement.version, digest, document, now
                )
        except StorageConflict:
            raise Conflict("another agreement version was accepted concurrently") from None
        finally:
            self._agreement_cache = None  # the hot paths re-read the (possibly new) agreement
        self._record(
            "agreement",
            subject,
            "accept",
            data={
                "version": record.version,
                "agreement_digest": digest.hex(),
                "signers": sorted(signed.signatures),
            },
        )
        return record

    # -- RCAR ---------------------------------------------------------------------------------

    def auth(self, request: AuthRequest) -> tuple[str, Challenge]:
        """RCAR ``/kbs/v0/auth``: start a session.

        Returns:
            ``(session_id, Challenge)``; the HTTP layer sets ``kbs-session-id=<session_id>``.

        Raises:
            ProtocolVersion: ``version`` is not ``0.4.0``.
            UnsupportedTee: ``tee`` is not one of ``sgx``, ``tdx``, ``snp`` or their
                ``emulated-`` variants (:data:`~teeflow.kbs.protocol.SUPPORTED_TEES`).
        """
        if request.version != PROTOCOL_VERSION:
            raise ProtocolVersion(
                f"KBS protocol version {request.version[:32]!r} not supported; "
                f"expected {PROTOCOL_VERSION}"
            )
        if request.tee not in SUPPORTED_TEES:
            raise UnsupportedTee(f"TEE type {request.tee!r} is not supported by this KBS")
        now = self._now()
        session_id = b64url_encode(self._rng(32))
        nonce = self._rng(32)
        with self._storage():
            self._store.create_session(session_id, nonce, request.tee, now + self._nonce_ttl)
        return session_id, Challenge(nonce=base64.b64encode(nonce).decode("ascii"))

    def purge_expired(self) -> int:
        """Delete sessions whose nonce and token both expired; returns how many."""
        with self._storage():
            return self._store.purge_sessions(self._now())

    def attest(self, session_id: str, request: AttestRequest) -> AttestResponse:
        """RCAR ``/kbs/v0/attest`` (see the module docstring for the order of checks and
        :func:`teeflow.kbs.service.rcar.appraise_attestation` for the appraisal).

        Raises:
            AttestationFailed: unknown session, nonce mismatch/replay/expiry, no agreement,
                init-data or additional evidence present, evidence that does not parse or
                verify, claims the agreement does not allow, or any appraisal violation.
        """
        now = self._now()
        # the session id is a bearer credential (cookie): the audit log gets a digest only
        subject = "session:" + _sha256_hex(str(session_id).encode("utf-8", "replace"))[:32]

        def deny(reasons: Sequence[str], data: dict[str, Any] | None = None) -> NoReturn:
            detail = "attestation denied: " + "; ".join(reasons)
            self._deny(AttestationFailed, "attestation", subject, reasons, data, detail=detail)

        if not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_ID:
            deny(["malformed session id"])
        with self._storage():
            session = self._store.get_session(session_id)
        if session is None:
            deny(["unknown session"])
        runtime = request.runtime_data
        expected_nonce = base64.b64encode(session.nonce).decode("ascii")
        if not hmac.compare_digest(runtime.nonce.encode(), expected_nonce.encode()):
            deny(["runtime-data nonce does not match the session nonce"])
        if session.consumed:  # cheap early refusal; the store re-checks atomically below
            deny(["nonce already used (replay)"])
        if now >= session.expires_at:
            deny(["nonce expired"])

        def conclude(
            decision: str,
            reasons: Sequence[str],
            data: dict[str, Any] | None,
            token: TokenBinding | None = None,
            agreement_digest: bytes | None = None,
        ) -> None:
            """Consume the nonce, bind ``token`` and audit the decision in one transaction;
            a nonce that another request consumed (or that expired) meanwhile is denied, as
            is a token whose agreement was superseded meanwhile."""
            build = self._builder("attestation", subject, decision, reasons, data)
            try:
                with self._storage(StorageExpired, StorageConflict, StorageNotFound):
                    self._store.consume_nonce_and_audit(
                        session_id, now, build, token=token, agreement_digest=agreement_digest
                    )
            except StorageExpired:
                deny(["nonce expired"])
            except StorageConflict:
                latest = self._current()
                changed = latest is None or latest[1] != agreement_digest
                if agreement_digest is not None and changed:
                    refuse(["the federation agreement changed during the attestation"])
                deny(["nonce already used (replay)"])
            except StorageNotFound:
                deny(["unknown session"])

        def refuse(reasons: Sequence[str], data: dict[str, Any] | None = None) -> NoReturn:
            conclude("deny", reasons, data)
            self._log.info("attestation %s denied: %s", subject, "; ".join(reasons)[:512])
            detail = "attestation denied: " + "; ".join(reasons)
            raise AttestationFailed(detail, list(reasons))

        current = self._current(self._agreement_max_age)
        if current is None:
            refuse(["no federation agreement"])
        signed, agreement_digest = current
        claims = runtime.teeflow
        role = claims.role if claims is not None else self._default_role
        data: dict[str, Any] = {
            "tee": session.tee,
            "role": role,
            "party": None if claims is None else claims.party,
            "agreement_digest": agreement_digest.hex(),
        }
        appraisal = appraise_attestation(
            request,
            declared_tee=session.tee,
            agreement=signed.agreement,
            role=role,
            anchors=self._anchors,
            collateral=self._collateral,
            now=now,
            logger=self._log,
            snp_endorsements=self._snp_endorsements,
        )
        data["measurement"] = appraisal.measurement
        result, measurement = appraisal.result, appraisal.measurement
        if appraisal.reasons or result is None or measurement is None or role is None:
            refuse(list(appraisal.reasons) or ["evidence not appraised"], data)
        attested = attested_claims(
            session_id=session_id,
            result=result,
            measurement=measurement,
            agreement_digest=agreement_digest,
            role=role,
            claims=runtime.teeflow_members(),
        )
        token = issue_ear(
            result,
            signing_key=self._keys.ear,
            now=now,
            nonce=runtime.nonce,
            ttl=self._token_ttl,
            extra_claims={"tee-pubkey": runtime.tee_pubkey.as_jwk(), ATTESTED_CLAIM: attested},
        )
        token_digest = hashlib.sha256(token.encode("ascii")).digest()
        expires = now.replace(microsecond=0) + self._token_ttl
        record = AttestedSession(
            session_id=session_id,
            token_digest=token_digest.hex(),
            tee=result.tee,
            emulated=result.emulated,
            measurement=measurement,
            agreement_digest=agreement_digest.hex(),
            tee_pubkey=runtime.tee_pubkey,
            claims=claims,
            role=role,
            expires_at=expires,
        )
        data.update(token_digest=token_digest.hex(), emulated=result.emulated)
        data["status"] = str(result.status)
        warnings = [*appraisal.warnings, *result.warnings]
        binding = TokenBinding(token_digest, record.model_dump_json(), expires)
        conclude("accept", warnings, data, binding, agreement_digest)
        return AttestResponse(token=token)

    def authorize(
        self, *, session_id: str | None = None, token: str | None = None
    ) -> AttestedSession:
        """Check a session cookie and/or bearer token; return the attested session.

        With both, the token must be the one bound to that session.

        Raises:
            TokenNotFound: neither given, or the session holds no token.
            TokenVerifierError: bad or expired token, token of another session, or a token
                issued under an agreement that is no longer active.
        """
        now = self._now()
        if session_id is None and token is None:
            raise TokenNotFound()
        if session_id is not None and (
            not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_ID
        ):
            raise TokenNotFound("unknown session")
        session: AttestedSession | None = None
        if token is not None:
            session = self._verified_token(token, now)
            if session_id is not None and not hmac.compare_digest(
                (session.session_id or "").encode(), session_id.encode()
            ):
                # the token names another session: refuse exactly as the stored session
                # (absent, token-less, or holding another token) makes us
                self._session_record(session_id)
                raise TokenVerifierError("token does not belong to this session")
            # (a token of this very session is the one bound to it: one token per session,
            # bound when its single-use nonce was consumed - no store read needed)
        else:
            assert session_id is not None
            record = self._session_record(session_id)
            if record.token_expires_at is None or now >= record.token_expires_at:
                raise TokenVerifierError("attestation token expired")
            try:
                session = AttestedSession.model_validate_json(record.claims_json or "")
            except ValidationError:
                raise TokenVerifierError("session record is invalid") from None
        current = self._current(self._agreement_max_age)
        if current is None or session.agreement_digest != current[1].hex():
            raise TokenVerifierError("token was issued under an agreement that is not active")
        return session

    def _session_record(self, session_id: str) -> SessionRecord:
        """The stored session holding a token.

        Raises:
            TokenNotFound: no such session, or it holds no token.
        """
        with self._storage():
            record = self._store.get_session(session_id)
        if record is None or record.token_digest is None or record.claims_json is None:
            raise TokenNotFound("session has no attestation token")
        return record

    def _verified_token(self, token: str, now: datetime) -> AttestedSession:
        """The session of a bearer EAR: from :class:`TokenCache` while it is unexpired, else
        :func:`verify_ear` (signature, profile, lifetime) + :func:`session_from_ear`."""
        cached = self._tokens.get(token, now)
        if cached is not None:
            return cached
        try:
            ear = verify_ear(token, self._ear_public, now=now, nonce=None)
        except VerificationError as exc:
            raise TokenVerifierError(f"token rejected: {exc}") from None
        session = session_from_ear(ear, token)
        self._tokens.put(token, session, now)
        return session

    # -- resources -----------------------------------------------------------------------------

    def put_resource(self, upload: ResourceUpload) -> ResourceInfo:
        """Store an owner's wrapped data key under its signed grant (still wrapped).

        Checks (every reason reported): :func:`teeflow.kbs.service.release.check_upload` under the
        active agreement; the wrapped key unwraps with the KBS HPKE key
        (``info=RESOURCE_WRAP_INFO``, ``aad=resource_wrap_aad(path)``); a replacement is by
        the same owner with a strictly newer grant.

        Raises:
            NoAgreement: no agreement yet.
            GrantRejected: grant, upload signature or expiry problems.
            InvalidRequest: the wrapped key does not unwrap.
            Conflict: the path belongs to another party, the grant is not newer, or a
                concurrent upload won.
        """
        now = self._now()
        current = self._current()
        if current is None:
            raise NoAgreement()
        signed = current[0]
        subject = upload.path
        grant, wrapped, reasons = check_upload(upload, signed.agreement, now)
        data: dict[str, Any] = {"owner": upload.owner}
        if reasons or grant is None or wrapped is None:
            self._deny(GrantRejected, "resource", subject, reasons, data, detail="; ".join(reasons))
        digest = grant_digest(grant)
        data.update(grant_digest=digest.hex(), grant_id=grant.id)
        try:
            aad = resource_wrap_aad(upload.path)
            unwrap_key(wrapped, self._keys.hpke, info=RESOURCE_WRAP_INFO, aad=aad)
        except SealingError:
            reason = "wrapped key does not unwrap with the KBS HPKE key for this path"
            self._deny(InvalidRequest, "resource", subject, [reason], data, detail=reason)
        with self._storage():
            existing = self._store.get_resource(upload.path)
        if existing is not None:
            old = stored_grant(existing)
            old_grant = None if old is None else old.grant
            problems = replacement_problems(old_grant, existing.owner, grant)
            if problems:
                self._deny(Conflict, "resource", subject, problems, data, detail=problems[0])
        try:
            with self._storage(StorageConflict):
                stored = self._store.put_resource(
                    upload.path,
                    upload.owner,
                    wrapped_key=wrapped,
                    grant=canonical_json(upload.signed_grant.model_dump(mode="json")),
                    grant_digest=digest,
                    not_after=grant.not_after,
                    max_releases=grant.max_releases,
                    created_at=now,
                )
        except StorageConflict:
            self._deny(Conflict, "resource", subject, ["concurrent upload"], data)
        self._known.drop(upload.path)
        data.update(generation=stored.generation, wrapped_key_sha256=_sha256_hex(wrapped))
        self._record("resource", subject, "accept", data=data)
        return resource_info(stored, grant.id)

    def resource_info(self, path: str) -> ResourceInfo | None:
        """Public facts about a stored resource (for its owner and the parties), or None."""
        with self._storage():
            record = self._store.get_resource(path)
        if record is None:
            return None
        stored = stored_grant(record)
        return resource_info(record, stored.grant.id if stored else "")

    def get_resource(self, session: AttestedSession, path: str) -> str:
        """Release resource ``path`` to an authorised session as a flattened JWE (JSON text)
        sealed to its attested ``tee-pubkey`` (see :mod:`teeflow.kbs.service.release`).

        The release count is a compare-and-increment committed together with the release's
        audit entry. When concurrent releases of the same resource make the count stale,
        the count is re-read and the decision re-made (up to :data:`RELEASE_ATTEMPTS` times,
        with a short random back-off): concurrent requests never exceed ``max_releases``,
        and none is refused unless the budget is really used up.

        Raises:
            InvalidRequestPath: ``path`` is not ``<repository>/<type>/<tag>``.
            PolicyDeny: not allowed, *or the resource does not exist* (same body); the
                reasons are in the audit log.
            ServiceUnavailable: still contended after :data:`RELEASE_ATTEMPTS` attempts.
        """
        now = self._now()
        if not isinstance(path, str) or not is_resource_path(path):
            raise InvalidRequestPath()
        data: dict[str, Any] = {
            "role": session.role,
            "measurement": session.measurement,
            "token_digest": session.token_digest,
        }
        sealed: tuple[bytes, str] | None = None  # (wrapped key, JWE) of the last attempt
        for attempt in range(RELEASE_ATTEMPTS):
            current = self._current(self._agreement_max_age if attempt == 0 else 0.0)
            if current is None:
                self._deny(PolicyDeny, "release", path, ["no federation agreement"], data)
            # this process's last view of the resource (steady state: no read at all); the
            # store re-checks generation and count in the release transaction, and a
            # refusal is only ever decided on a fresh read
            view = self._known.get(path) if attempt == 0 else None
            record, decision = self._decide(session, path, view, current[1], now)
            if view is not None and not decision.allowed:
                record, decision = self._decide(session, path, None, current[1], now)
            if not decision.allowed or record is None or decision.releases_so_far is None:
                self._deny(PolicyDeny, "release", path, decision.reasons or ["denied"], data)
            if sealed is None or sealed[0] != record.wrapped_key:
                try:
                    secret = unwrap_key(
                        record.wrapped_key,
                        self._keys.hpke,
                        info=RESOURCE_WRAP_INFO,
                        aad=resource_wrap_aad(path),
                    )
                    sealed = (record.wrapped_key, seal_for_tee(secret, session.tee_pubkey))
                except (SealingError, KbsError):
                    reason = "stored key cannot be released"
                    self._deny(PolicyDeny, "release", path, [reason], data)
            count = decision.releases_so_far + 1
            build = self._builder(
                "release",
                path,
                "accept",
                data={**data, "release_count": count, "generation": record.generation},
            )
            try:
                with self._storage(StorageConflict, StorageNotFound):
                    self._store.record_release_and_audit(
                        path,
                        decision.releases_so_far,
                        build,
                        generation=record.generation,
                        agreement_digest=current[1],
                    )
                self._known.put(replace(record, release_count=count))
                return sealed[1]
            except (StorageConflict, StorageNotFound):
                self._known.drop(path)
                # another release (or a replacement, or a new agreement) committed since the
                # read: re-read the count and the agreement and decide again; only a real
                # refusal (budget used up, grant replaced by one that denies, resource gone,
                # agreement superseded) denies
                if attempt >= 2:
                    time.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))  # noqa: S311
        reason = f"release count still contended after {RELEASE_ATTEMPTS} attempts"
        self._deny(ServiceUnavailable, "release", path, [reason], data)

    def _decide(
        self,
        session: AttestedSession,
        path: str,
        record: ResourceRecord | None,
        agreement_digest: bytes,
        now: datetime,
    ) -> tuple[ResourceRecord | None, ReleaseDecision]:
        """:func:`decide` on ``record``, or on a fresh read of ``path`` when None (which then
        becomes this process's view of the resource); returns the record decided on."""
        if record is None:
            with self._storage():
                record = self._store.get_resource(path)
            if record is None:
                self._known.drop(path)
            else:
                self._known.put(record)
        signed_grant = self._grants.get(record) if record is not None else None
        return record, decide(
            session=session,
            path=path,
            record=record,
            grant=None if signed_grant is None else signed_grant.grant,
            agreement_digest=agreement_digest,
            now=now,
        )

    # -- certificates ----------------------------------------------------------------------------

    def issue_certificate(self, session: AttestedSession, csr_pem: bytes | str) -> bytes:
        """Issue a workload certificate (PEM) for a CSR whose key is the attested tee-pubkey.

        The identity (role, party, measurement, agreement digest, tee, emulated) comes from
        the session, never from the CSR.

        Raises:
            InvalidRequest: not one PEM CSR, or larger than 16 KiB.
            PolicyDeny: bad CSR signature, or the CSR key is not the attested key.
        """
        now = self._now()
        raw = csr_pem.encode("ascii", "replace") if isinstance(csr_pem, str) else bytes(csr_pem)
        if len(raw) > MAX_CSR_BODY_BYTES:
            raise InvalidRequest("CSR larger than 16 KiB")
        try:
            csr = x509.load_pem_x509_csr(raw)
        except (ValueError, TypeError):
            raise InvalidRequest("not a PEM certificate signing request") from None
        subject = f"certificate:{session.role}:{session.party or '-'}"
        data: dict[str, Any] = {"role": session.role, "measurement": session.measurement}
        try:
            identity = WorkloadIdentity(
                role=session.role,
                party=session.party,
                measurement=session.measurement,
                agreement_digest=session.agreement_digest,
                tee=session.tee,
                emulated=session.emulated,
            )
            cert = self._keys.ca.issue_from_csr(
                csr, identity, now=now, expected_public_key=session.tee_pubkey.public_key()
            )
        except VerificationError as exc:
            self._deny(PolicyDeny, "certificate", subject, [str(exc)], data, detail=str(exc))
        except KbsError as exc:
            self._deny(PolicyDeny, "certificate", subject, [str(exc)], data)
        data.update(
            serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc.isoformat(),
            party=session.party,
        )
        self._record("certificate", subject, "accept", data=data)
        return cert.public_bytes(serialization.Encoding.PEM)

    # -- counters --------------------------------------------------------------------------------

    def increment_counter(
        self, session: AttestedSession, name: str, expected: int, digest: bytes
    ) -> CounterState:
        """Compare-and-increment counter ``name`` from ``expected`` to ``expected + 1``, bound
        to ``digest`` (16..64 bytes). Names under ``session/`` need role ``aggregator``.

        Raises:
            InvalidRequest: bad name, expected value or digest.
            PolicyDeny: the role may not step this counter.
            Conflict: the counter is not at ``expected``.
        """
        if not is_counter_name(name) or isinstance(expected, bool) or expected < 0:
            raise InvalidRequest("invalid counter name or expected value")
        if not isinstance(digest, bytes) or not 16 <= len(digest) <= 64:
            raise InvalidRequest("counter digest must be 16..64 bytes")
        subject = f"counter:{name}"
        data: dict[str, Any] = {
            "role": session.role,
            "expected": expected,
            "bound_digest": digest.hex(),
            "measurement": session.measurement,
        }
        if name.startswith(AGGREGATOR_COUNTER_PREFIX) and session.role != "aggregator":
            reason = f"role {session.role} may not step {name}"
            self._deny(PolicyDeny, "counter", subject, [reason], data)
        try:
            with self._storage(StorageConflict):
                value = self._store.compare_and_increment(name, expected, digest)
        except StorageConflict:
            self._deny(
                Conflict,
                "counter",
                subject,
                ["counter is not at the expected value"],
                data,
                detail="counter is not at the expected value",
            )
        data["value"] = value
        self._record("counter", subject, "accept", data=data)
        return CounterState(name=name, value=value, digest=digest.hex())

    def get_counter(self, name: str) -> CounterState | None:
        """The counter's value and bound digest, or None if never stepped.

        Raises:
            InvalidRequest: bad name.
        """
        if not is_counter_name(name):
            raise InvalidRequest("invalid counter name")
        with self._storage():
            found = self._store.get_counter(name)
        if found is None:
            return None
        return CounterState(name=name, value=found[0], digest=found[1].hex())

    # -- audit -------------------------------------------------------------------------------------

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key that verifies audit entries."""
        return self._audit.public_key

    def audit_entries(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with ``seq > after``, ascending, at most ``limit`` (1..10000).

        Raises:
            InvalidRequest: bad ``after``/``limit``.
        """
        with self._storage():
            return self._store.audit_entries(after, limit)
