"""RCAR (Trustee KBS protocol 0.4.0): ``auth``, ``attest`` and ``authorize``.

Part of the KBS core behind :class:`teeflow.kbs.service.core.KbsService` (see that module for
the protocol and the order of checks); state and plumbing are shared through
:class:`teeflow.kbs.service.context.ServiceContext`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from pydantic import ValidationError

from teeflow.attestation.ear import issue_ear, verify_ear
from teeflow.errors import VerificationError
from teeflow.kbs.api.problems import (
    AttestationFailed,
    ProtocolVersion,
    TokenNotFound,
    TokenVerifierError,
    UnsupportedTee,
)
from teeflow.kbs.policy.canonical import b64url_encode
from teeflow.kbs.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_TEES,
    AttestedSession,
    AttestRequest,
    AttestResponse,
    AuthRequest,
    Challenge,
    protocol_version_accepted,
)
from teeflow.kbs.service.context import MAX_ID as _MAX_ID
from teeflow.kbs.service.context import ServiceContext
from teeflow.kbs.service.context import sha256_hex as _sha256_hex
from teeflow.kbs.service.enrollments import (
    EnrollmentCache,
    check_enrollment,
    enrolled,
    enrollment_use,
    token_lifetime,
)
from teeflow.kbs.service.rcar import (
    ATTESTED_CLAIM,
    appraise_attestation,
    attested_claims,
    session_from_ear,
)
from teeflow.kbs.store.interface import (
    EnrollmentUse,
    EnrollmentUseRefused,
    SessionRecord,
    StorageConflict,
    StorageExpired,
    StorageNotFound,
    TokenBinding,
)

__all__ = ["AttestationService"]


class AttestationService:
    """RCAR (Trustee KBS protocol 0.4.0): ``auth``, ``attest`` and ``authorize``.

    Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._enrollments = EnrollmentCache()

    def auth(self, request: AuthRequest) -> tuple[str, Challenge]:
        """RCAR ``/kbs/v0/auth``: start a session.

        Returns:
            ``(session_id, Challenge)``; the HTTP layer sets ``kbs-session-id=<session_id>``.

        Raises:
            ProtocolVersion: ``version`` does not satisfy Trustee's ``=0.4.0`` (build
                metadata such as ``0.4.0+build.1`` is accepted, a pre-release is not;
                :func:`~teeflow.kbs.protocol.protocol_version_accepted`).
            UnsupportedTee: ``tee`` is not one of ``sgx``, ``tdx``, ``snp`` or their
                ``emulated-`` variants (:data:`~teeflow.kbs.protocol.SUPPORTED_TEES`).
        """
        if not protocol_version_accepted(request.version):
            raise ProtocolVersion(
                f"KBS protocol version {request.version[:32]!r} not supported; "
                f"expected {PROTOCOL_VERSION}"
            )
        if request.tee not in SUPPORTED_TEES:
            raise UnsupportedTee(f"TEE type {request.tee!r} is not supported by this KBS")
        now = self._ctx.now()
        session_id = b64url_encode(self._ctx.rng(32))
        nonce = self._ctx.rng(32)
        with self._ctx.storage():
            self._ctx.store.create_session(
                session_id, nonce, request.tee, now + self._ctx.nonce_ttl
            )
        return session_id, Challenge(nonce=base64.b64encode(nonce).decode("ascii"))

    def purge_expired(self) -> int:
        """Delete sessions whose nonce and token both expired; returns how many."""
        with self._ctx.storage():
            return self._ctx.store.purge_sessions(self._ctx.now())

    def attest(self, session_id: str, request: AttestRequest) -> AttestResponse:
        """RCAR ``/kbs/v0/attest`` (see the module docstring for the order of checks and
        :func:`teeflow.kbs.service.rcar.appraise_attestation` for the appraisal).

        Raises:
            AttestationFailed: unknown session, nonce mismatch/replay/expiry, no agreement,
                init-data or additional evidence present, evidence that does not parse or
                verify, claims the agreement does not allow, or any appraisal violation.
        """
        now = self._ctx.now()
        # the session id is a bearer credential (cookie): the audit log gets a digest only
        subject = "session:" + _sha256_hex(str(session_id).encode("utf-8", "replace"))[:32]

        def deny(reasons: Sequence[str], data: dict[str, Any] | None = None) -> NoReturn:
            detail = "attestation denied: " + "; ".join(reasons)
            self._ctx.deny(AttestationFailed, "attestation", subject, reasons, data, detail=detail)

        if not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_ID:
            deny(["malformed session id"])
        with self._ctx.storage():
            session = self._ctx.store.get_session(session_id)
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
            *,
            use: EnrollmentUse | None = None,
        ) -> None:
            """Consume the nonce, bind ``token``, count one ``use`` of the enrollment and
            audit the decision in one transaction; a nonce that another request consumed
            (or that expired) meanwhile is denied, as is a token whose agreement was
            superseded meanwhile, and a revoked or used-up enrollment."""
            build = self._ctx.builder("attestation", subject, decision, reasons, data)
            try:
                with self._ctx.storage(
                    StorageExpired, StorageConflict, StorageNotFound, EnrollmentUseRefused
                ):
                    _, entry = self._ctx.store.consume_nonce_and_audit(
                        session_id,
                        now,
                        build,
                        token=token,
                        agreement_digest=agreement_digest,
                        enrollment=use,
                    )
                self._ctx.heads.saw(entry)
            except EnrollmentUseRefused as exc:
                refuse(
                    [f"enrollment {exc.reason} (uses are counted per accepted attestation)"],
                    data,
                )
            except StorageExpired:
                deny(["nonce expired"])
            except StorageConflict:
                latest = self._ctx.current()
                changed = latest is None or latest[1] != agreement_digest
                if agreement_digest is not None and changed:
                    refuse(["the federation agreement changed during the attestation"])
                deny(["nonce already used (replay)"])
            except StorageNotFound:
                deny(["unknown session"])

        def refuse(reasons: Sequence[str], data: dict[str, Any] | None = None) -> NoReturn:
            conclude("deny", reasons, data)
            self._ctx.log.info("attestation %s denied: %s", subject, "; ".join(reasons)[:512])
            detail = "attestation denied: " + "; ".join(reasons)
            raise AttestationFailed(detail, list(reasons))

        current = self._ctx.current(self._ctx.agreement_max_age)
        if current is None:
            refuse(["no federation agreement"])
        signed, agreement_digest = current
        claims = runtime.teeflow
        role = claims.role if claims is not None else self._ctx.default_role
        enrollment, enrollment_reasons = check_enrollment(
            runtime,
            role,
            signed.agreement,
            now,
            cache=self._enrollments,
            agreement_digest=agreement_digest,
        )
        data: dict[str, Any] = {
            "tee": session.tee,
            "role": role,
            "party": None if enrollment is None else enrollment.party,
            "claimed_party": None if claims is None else claims.party,
            "enrollment_id": None if enrollment is None else enrollment.jti,
            "agreement_digest": agreement_digest.hex(),
        }
        appraisal = appraise_attestation(
            request,
            declared_tee=session.tee,
            agreement=signed.agreement,
            role=role,
            anchors=self._ctx.anchors,
            collateral=self._ctx.collateral,
            now=now,
            logger=self._ctx.log,
            snp_endorsements=self._ctx.snp_endorsements,
            gpu_anchors=self._ctx.gpu_anchors,
        )
        data["measurement"] = appraisal.measurement
        result, measurement = appraisal.result, appraisal.measurement
        reasons = [*appraisal.reasons, *enrollment_reasons]
        if reasons or result is None or measurement is None or role is None:
            refuse(reasons or ["evidence not appraised"], data)
        facts = None if enrollment is None else enrolled(enrollment)
        ttl = token_lifetime(self._ctx.token_ttl, enrollment, now)
        emulated = result.emulated or any(r.emulated for r in appraisal.submods.values())
        if appraisal.submods:
            data["gpus"] = sorted(n for n in appraisal.submods if n != "cpu0")
        attested = attested_claims(
            session_id=session_id,
            result=result,
            measurement=measurement,
            agreement_digest=agreement_digest,
            role=role,
            claims=runtime.teeflow_members(),
            enrollment=None if facts is None else facts.model_dump(mode="json"),
            emulated=emulated,
        )
        token = issue_ear(
            appraisal.submods or result,
            signing_key=self._ctx.keys.ear,
            now=now,
            nonce=runtime.nonce,
            ttl=ttl,
            extra_claims={"tee-pubkey": runtime.tee_pubkey.as_jwk(), ATTESTED_CLAIM: attested},
        )
        token_digest = hashlib.sha256(token.encode("ascii")).digest()
        expires = now.replace(microsecond=0) + ttl
        record = AttestedSession(
            session_id=session_id,
            token_digest=token_digest.hex(),
            tee=result.tee,
            emulated=emulated,
            measurement=measurement,
            agreement_digest=agreement_digest.hex(),
            tee_pubkey=runtime.tee_pubkey,
            claims=claims,
            role=role,
            expires_at=expires,
            enrollment=facts,
        )
        data.update(token_digest=token_digest.hex(), emulated=emulated)
        data["status"] = str(result.status)
        warnings = [*appraisal.warnings, *result.warnings]
        binding = TokenBinding(token_digest, record.model_dump_json(), expires)
        use = None if enrollment is None else enrollment_use(enrollment)
        conclude("accept", warnings, data, binding, agreement_digest, use=use)
        # the token was built from exactly these claims and signed here: cache its session
        # (what verify_ear + session_from_ear would rebuild) so the first use skips ES256
        self._ctx.tokens.put(token, record, now)
        return AttestResponse(token=token)

    def authorize(
        self, *, session_id: str | None = None, token: str | None = None
    ) -> AttestedSession:
        """Check a session cookie and/or bearer token; return the attested session.

        With both, the token must be the one bound to that session.

        Raises:
            TokenNotFound: neither given, a token without its session cookie, or the session
                holds no token.
            TokenVerifierError: bad or expired token, token of another session, or a token
                issued under an agreement that is no longer active.
        """
        now = self._ctx.now()
        if session_id is None and token is None:
            raise TokenNotFound()
        if token is not None and session_id is None:
            # a token travels in result lineage: alone it is no credential, only with the
            # session cookie it was bound to (issue 10, "a ResultRef carries no bearer token")
            raise TokenNotFound("send the attestation token with its session cookie")
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
        current = self._ctx.current(self._ctx.agreement_max_age)
        if current is None or session.agreement_digest != current[1].hex():
            raise TokenVerifierError("token was issued under an agreement that is not active")
        return session

    def _session_record(self, session_id: str) -> SessionRecord:
        """The stored session holding a token.

        Raises:
            TokenNotFound: no such session, or it holds no token.
        """
        with self._ctx.storage():
            record = self._ctx.store.get_session(session_id)
        if record is None or record.token_digest is None or record.claims_json is None:
            raise TokenNotFound("session has no attestation token")
        return record

    def _verified_token(self, token: str, now: datetime) -> AttestedSession:
        """The session of a bearer EAR: from :class:`TokenCache` while it is unexpired, else
        :func:`verify_ear` (signature, profile, lifetime) + :func:`session_from_ear`."""
        cached = self._ctx.tokens.get(token, now)
        if cached is not None:
            return cached
        try:
            ear = verify_ear(token, self._ctx.ear_public, now=now, nonce=None)
        except VerificationError as exc:
            raise TokenVerifierError(f"token rejected: {exc}") from None
        session = session_from_ear(ear, token)
        self._ctx.tokens.put(token, session, now)
        return session
