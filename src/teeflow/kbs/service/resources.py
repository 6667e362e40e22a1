"""Owners' wrapped data keys under signed grants, and their release to attested sessions.

Part of the KBS core behind :class:`teeflow.kbs.service.core.KbsService` (see that module for
the protocol and the order of checks); state and plumbing are shared through
:class:`teeflow.kbs.service.context.ServiceContext`.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from teeflow.errors import KbsError, SealingError
from teeflow.kbs.api.problems import (
    Conflict,
    GrantRejected,
    InvalidRequest,
    InvalidRequestPath,
    NoAgreement,
    ServiceUnavailable,
)
from teeflow.kbs.policy.canonical import canonical_json
from teeflow.kbs.policy.generated import generated_scope
from teeflow.kbs.policy.grants import grant_digest
from teeflow.kbs.protocol import (
    RESOURCE_WRAP_INFO,
    AttestedSession,
    ResourceInfo,
    ResourceUpload,
    is_resource_path,
    resource_wrap_aad,
)
from teeflow.kbs.service.context import ServiceContext
from teeflow.kbs.service.context import sha256_hex as _sha256_hex
from teeflow.kbs.service.enrollments import enrollment_revoked
from teeflow.kbs.service.generated import GeneratedSecretService
from teeflow.kbs.service.release import (
    ReleaseDecision,
    check_upload,
    decide,
    replacement_problems,
    resource_info,
    seal_for_tee,
    stored_grant,
)
from teeflow.kbs.store.interface import (
    ResourceRecord,
    StorageConflict,
    StorageNotFound,
)
from teeflow.sealing.hpke import unwrap_key

__all__ = ["RELEASE_ATTEMPTS", "ResourceService"]

#: Attempts of a release's compare-and-increment before answering 503 (concurrent releases of
#: one resource make the count stale; each attempt re-reads it and re-decides).
RELEASE_ATTEMPTS = 64
#: Data keys kept unwrapped (see ResourceService).
_MAX_UNWRAPPED = 4096
#: Locks serialising this process's releases of one path (see ResourceService).
_RELEASE_STRIPES = 256


class ResourceService:
    """Owners' wrapped data keys under signed grants, and their release to attested sessions.

    Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._generated = GeneratedSecretService(ctx)
        #: (path, wrapped key) -> data key, at most _MAX_UNWRAPPED (all dropped when full).
        #: No more exposure than the KBS HPKE private key itself, which this process holds
        #: in the same TEE memory and which unwraps every stored key; a replaced resource
        #: has another wrapped key, so its old entry is never used again.
        self._unwrapped: dict[tuple[str, bytes], bytes] = {}
        #: after a first optimistic attempt lost a race, releases of one path by this
        #: process decide and commit one at a time (striped by path): otherwise each queued
        #: release decides on a count the ones ahead of it in the store's write lock move
        #: on, an attempt wins with probability ~1/N under N-way contention, and some
        #: requests exhausted RELEASE_ATTEMPTS (503)
        self._release_locks = tuple(threading.Lock() for _ in range(_RELEASE_STRIPES))

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
        now = self._ctx.now()
        current = self._ctx.current()
        if current is None:
            raise NoAgreement()
        signed = current[0]
        subject = upload.path
        grant, wrapped, reasons = check_upload(upload, signed.agreement, now)
        data: dict[str, Any] = {"owner": upload.owner}
        if reasons or grant is None or wrapped is None:
            self._ctx.deny(
                GrantRejected, "resource", subject, reasons, data, detail="; ".join(reasons)
            )
        digest = grant_digest(grant)
        data.update(grant_digest=digest.hex(), grant_id=grant.id)
        try:
            aad = resource_wrap_aad(upload.path)
            unwrap_key(wrapped, self._ctx.keys.hpke, info=RESOURCE_WRAP_INFO, aad=aad)
        except SealingError:
            reason = "wrapped key does not unwrap with the KBS HPKE key for this path"
            self._ctx.deny(InvalidRequest, "resource", subject, [reason], data, detail=reason)
        with self._ctx.storage():
            existing = self._ctx.store.get_resource(upload.path)
        if existing is not None:
            old = stored_grant(existing)
            old_grant = None if old is None else old.grant
            problems = replacement_problems(old_grant, existing.owner, grant)
            if problems:
                self._ctx.deny(Conflict, "resource", subject, problems, data, detail=problems[0])
        generation = 1 if existing is None else existing.generation + 1
        build = self._ctx.builder(
            "resource",
            subject,
            "accept",
            data={**data, "generation": generation, "wrapped_key_sha256": _sha256_hex(wrapped)},
        )
        try:
            with self._ctx.storage(StorageConflict):
                stored, entry = self._ctx.store.put_resource_and_audit(
                    upload.path,
                    upload.owner,
                    build,
                    wrapped_key=wrapped,
                    grant=canonical_json(upload.signed_grant.model_dump(mode="json")),
                    grant_digest=digest,
                    not_after=grant.not_after,
                    max_releases=grant.max_releases,
                    created_at=now,
                )
        except StorageConflict:
            self._ctx.deny(Conflict, "resource", subject, ["concurrent upload"], data)
        self._ctx.heads.saw(entry)
        self._ctx.known.drop(upload.path)
        return resource_info(stored, grant.id)

    def resource_info(self, path: str) -> ResourceInfo | None:
        """Public facts about a stored resource (for its owner and the parties), or None."""
        with self._ctx.storage():
            record = self._ctx.store.get_resource(path)
        if record is None:
            return None
        stored = stored_grant(record)
        return resource_info(record, stored.grant.id if stored else "")

    def _data_key(self, path: str, wrapped: bytes) -> bytes:
        """The data key of a stored resource (HPKE unwrap once per wrapped key).

        Raises:
            SealingError: the wrapped key does not unwrap (never remembered).
        """
        known = self._unwrapped.get((path, wrapped))
        if known is not None:
            return known
        secret = unwrap_key(
            wrapped, self._ctx.keys.hpke, info=RESOURCE_WRAP_INFO, aad=resource_wrap_aad(path)
        )
        if len(self._unwrapped) >= _MAX_UNWRAPPED:
            self._unwrapped.clear()
        self._unwrapped[(path, wrapped)] = secret
        return secret

    def get_resource(self, session: AttestedSession, path: str) -> str:
        """Release resource ``path`` to an authorised session as a flattened JWE (JSON text)
        sealed to its attested ``tee-pubkey`` (see :mod:`teeflow.kbs.service.release`).

        The release count is a compare-and-increment committed together with the release's
        audit entry. When concurrent releases of the same resource make the count stale,
        the count is re-read and the decision re-made under the path's release lock (up to
        :data:`RELEASE_ATTEMPTS` times, with a short random back-off): concurrent requests
        never exceed ``max_releases``, and none is refused unless the budget is really used
        up.

        A path in a KBS-generated scope (``fl/checkpoint-key/<session>``) is created on first
        use and released by its own rules (:class:`~teeflow.kbs.service.generated.
        GeneratedSecretService`).

        Raises:
            InvalidRequestPath: ``path`` is not ``<repository>/<type>/<tag>``.
            PolicyDeny: not allowed, *or the resource does not exist* (same body); the
                reasons are in the audit log.
            ServiceUnavailable: still contended after :data:`RELEASE_ATTEMPTS` attempts.
        """
        now = self._ctx.now()
        if not isinstance(path, str) or not is_resource_path(path):
            raise InvalidRequestPath()
        data: dict[str, Any] = {
            "role": session.role,
            "measurement": session.measurement,
            "token_digest": session.token_digest,
        }
        if enrollment_revoked(self._ctx, session.enrollment):  # issue 11: at once
            self._ctx.deny_release(path, ["enrollment revoked"], data)
        scope = generated_scope(path)
        if scope is not None:
            return self._generated.release(session, path, scope)
        released = self._release(session, path, data, now, range(1))  # optimistic
        if released is None:  # contended: go on one at a time with this path's releases
            with self._release_locks[hash(path) % _RELEASE_STRIPES]:
                released = self._release(session, path, data, now, range(1, RELEASE_ATTEMPTS))
        if released is None:
            reason = f"release count still contended after {RELEASE_ATTEMPTS} attempts"
            self._ctx.deny(ServiceUnavailable, "release", path, [reason], data)
        return released

    def _release(
        self,
        session: AttestedSession,
        path: str,
        data: dict[str, Any],
        now: datetime,
        attempts: range,
    ) -> str | None:
        """Release attempts of :meth:`get_resource`: the JWE, or None when every attempt
        met a concurrent change (attempt 0 may decide on this process's view)."""
        sealed: tuple[bytes, str] | None = None  # (wrapped key, JWE) of the last attempt
        for attempt in attempts:
            current = self._ctx.current(self._ctx.agreement_max_age if attempt == 0 else 0.0)
            if current is None:
                self._ctx.deny_release(path, ["no federation agreement"], data)
            # this process's last view of the resource (steady state: no read at all); the
            # store re-checks generation and count in the release transaction, and a
            # refusal is only ever decided on a fresh read
            view = self._ctx.known.get(path) if attempt == 0 else None
            record, decision = self._decide(session, path, view, current[1], now)
            if view is not None and not decision.allowed:
                record, decision = self._decide(session, path, None, current[1], now)
            if not decision.allowed or record is None or decision.releases_so_far is None:
                self._ctx.deny_release(path, decision.reasons or ["denied"], data)
            if sealed is None or sealed[0] != record.wrapped_key:
                try:
                    secret = self._data_key(path, record.wrapped_key)
                    sealed = (record.wrapped_key, seal_for_tee(secret, session.tee_pubkey))
                except (SealingError, KbsError):
                    reason = "stored key cannot be released"
                    self._ctx.deny_release(path, [reason], data)
            count = decision.releases_so_far + 1
            build = self._ctx.builder(
                "release",
                path,
                "accept",
                data={**data, "release_count": count, "generation": record.generation},
            )
            try:
                with self._ctx.storage(StorageConflict, StorageNotFound):
                    _, entry = self._ctx.store.record_release_and_audit(
                        path,
                        decision.releases_so_far,
                        build,
                        generation=record.generation,
                        agreement_digest=current[1],
                    )
                self._ctx.heads.saw(entry)
                self._ctx.known.put(replace(record, release_count=count))
                return sealed[1]
            except (StorageConflict, StorageNotFound):
                self._ctx.known.drop(path)
                # another release (or a replacement, or a new agreement) committed since the
                # read: re-read the count and the agreement and decide again; only a real
                # refusal (budget used up, grant replaced by one that denies, resource gone,
                # agreement superseded) denies
                if attempt >= 2:
                    time.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))  # noqa: S311
        return None

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
            with self._ctx.storage():
                record = self._ctx.store.get_resource(path)
            if record is None:
                self._ctx.known.drop(path)
            else:
                self._ctx.known.put(record)
        signed_grant = None
        if record is not None:
            current = self._ctx.current(self._ctx.agreement_max_age)
            if current is not None and current[1] == agreement_digest:
                signed_grant = self._ctx.grants.get(record, current[0].agreement, agreement_digest)
        return record, decide(
            session=session,
            path=path,
            record=record,
            grant=None if signed_grant is None else signed_grant.grant,
            agreement_digest=agreement_digest,
            now=now,
        )
