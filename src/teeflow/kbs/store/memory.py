"""In-memory :class:`~teeflow.kbs.store.interface.KbsStore` (tests, demos; not durable).

One :class:`threading.Lock` serialises every method, which makes each one atomic. Behaviour
(validation, errors, ordering) matches the SQL backends exactly; the contract suites
``tests/storage/test_store_contract.py`` and ``test_store_audited.py`` check that. Nothing
survives the process: use ``sqlite:///...`` for anything that must be durable (DESIGN,
security invariant 5).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime

from teeflow.kbs.store import _validate as validate
from teeflow.kbs.store.interface import (
    GENESIS_HASH,
    AgreementRecord,
    AuditBuilder,
    AuditEntry,
    EnrollmentRecord,
    EnrollmentUse,
    EnrollmentUseRefused,
    ResourceRecord,
    SessionRecord,
    StorageConflict,
    StorageError,
    StorageExpired,
    StorageNotFound,
    TokenBinding,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A thread-safe, non-durable :class:`KbsStore` held in dictionaries.

    See :class:`teeflow.kbs.store.interface.KbsStore` for every method's contract.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agreements: list[AgreementRecord] = []
        self._resources: dict[str, ResourceRecord] = {}
        self._counters: dict[str, tuple[int, bytes]] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._audit: list[tuple[AuditEntry, str, str]] = []
        self._enrollments: dict[str, EnrollmentRecord] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("store is closed")

    def _check_agreement(self, digest: bytes | None) -> None:
        if digest is not None and (not self._agreements or self._agreements[-1].digest != digest):
            raise StorageConflict("the active agreement changed")

    # -- agreements ---------------------------------------------------------------------
    def append_agreement(
        self, version: int, digest: bytes, document: bytes, created_at: datetime
    ) -> AgreementRecord:
        """See :meth:`KbsStore.append_agreement`."""
        record = validate.agreement(version, digest, document, created_at)
        with self._lock:
            self._check_open()
            expected = len(self._agreements) + 1
            if record.version != expected:
                raise StorageConflict(f"agreement version must be {expected}")
            if any(a.digest == record.digest for a in self._agreements):
                raise StorageConflict("agreement digest already in the history")
            self._agreements.append(record)
        return record

    def current_agreement(self) -> AgreementRecord | None:
        """See :meth:`KbsStore.current_agreement`."""
        with self._lock:
            self._check_open()
            return self._agreements[-1] if self._agreements else None

    def agreement_history(self) -> list[AgreementRecord]:
        """See :meth:`KbsStore.agreement_history`."""
        with self._lock:
            self._check_open()
            return list(self._agreements)

    # -- resources ----------------------------------------------------------------------
    def put_resource(
        self,
        path: str,
        owner: str,
        *,
        wrapped_key: bytes,
        grant: bytes,
        grant_digest: bytes,
        not_after: datetime | None,
        max_releases: int | None,
        created_at: datetime,
    ) -> ResourceRecord:
        """See :meth:`KbsStore.put_resource`."""
        record = validate.resource(
            path,
            owner,
            wrapped_key=wrapped_key,
            grant=grant,
            grant_digest=grant_digest,
            not_after=not_after,
            max_releases=max_releases,
            created_at=created_at,
        )
        with self._lock:
            self._check_open()
            old = self._resources.get(record.path)
            if old is not None:
                if old.owner != record.owner:
                    raise StorageConflict("resource belongs to another owner")
                record = replace(record, generation=old.generation + 1)
            self._resources[record.path] = record
        return record

    def get_resource(self, path: str) -> ResourceRecord | None:
        """See :meth:`KbsStore.get_resource`."""
        validate.path(path)
        with self._lock:
            self._check_open()
            return self._resources.get(path)

    def record_release(
        self, path: str, expected_count: int, *, generation: int | None = None
    ) -> int:
        """See :meth:`KbsStore.record_release`."""
        validate.release(path, expected_count, generation)
        with self._lock:
            self._check_open()
            new = self._released(path, expected_count, generation)
            self._resources[path] = new
            return new.release_count

    def record_release_and_audit(
        self,
        path: str,
        expected_count: int,
        build: AuditBuilder,
        *,
        generation: int | None = None,
        agreement_digest: bytes | None = None,
    ) -> tuple[int, AuditEntry]:
        """See :meth:`KbsStore.record_release_and_audit`."""
        validate.release(path, expected_count, generation)
        validate.builder(build)
        required = validate.optional_digest("agreement_digest", agreement_digest)
        with self._lock:
            self._check_open()
            self._check_agreement(required)
            new = self._released(path, expected_count, generation)
            row = self._build_audit(build)
            self._resources[path] = new
            self._audit.append(row)
            return new.release_count, row[0]

    def _released(self, path: str, expected_count: int, generation: int | None) -> ResourceRecord:
        """The resource after one more release (caller holds the lock; nothing changed)."""
        old = self._resources.get(path)
        if old is None:
            raise StorageNotFound("no such resource")
        if generation is not None and old.generation != generation:
            raise StorageConflict("resource was replaced")
        if old.max_releases is not None and old.release_count >= old.max_releases:
            raise StorageConflict("release budget used up")
        if old.release_count != expected_count:
            raise StorageConflict("stale release count")
        return replace(old, release_count=old.release_count + 1)

    # -- counters -----------------------------------------------------------------------
    def get_counter(self, name: str) -> tuple[int, bytes] | None:
        """See :meth:`KbsStore.get_counter`."""
        validate.name("name", name)
        with self._lock:
            self._check_open()
            return self._counters.get(name)

    def compare_and_increment(self, name: str, expected: int, new_digest: bytes) -> int:
        """See :meth:`KbsStore.compare_and_increment`."""
        digest = validate.counter_step(name, expected, new_digest)
        with self._lock:
            self._check_open()
            current = self._counters.get(name, (0, b""))[0]
            if current != expected:
                raise StorageConflict("counter is not at the expected value")
            self._counters[name] = (expected + 1, digest)
            return expected + 1

    # -- sessions -----------------------------------------------------------------------
    def create_session(
        self, session_id: str, nonce: bytes, tee: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.create_session`."""
        record = validate.session(session_id, nonce, tee, expires_at)
        with self._lock:
            self._check_open()
            if record.session_id in self._sessions:
                raise StorageConflict("session id already exists")
            self._sessions[record.session_id] = record
        return record

    def consume_nonce(self, session_id: str, now: datetime) -> SessionRecord:
        """See :meth:`KbsStore.consume_nonce`."""
        now = validate.consume(session_id, now)
        with self._lock:
            self._check_open()
            new = self._consumed(session_id, now, None)
            self._sessions[session_id] = new
            return new

    def consume_nonce_and_audit(
        self,
        session_id: str,
        now: datetime,
        build: AuditBuilder,
        *,
        token: TokenBinding | None = None,
        agreement_digest: bytes | None = None,
        enrollment: EnrollmentUse | None = None,
    ) -> tuple[SessionRecord, AuditEntry]:
        """See :meth:`KbsStore.consume_nonce_and_audit`."""
        now = validate.consume(session_id, now)
        binding = validate.token_binding(session_id, token)
        validate.builder(build)
        required = validate.optional_digest("agreement_digest", agreement_digest)
        use = validate.enrollment_use(enrollment)
        with self._lock:
            self._check_open()
            new = self._consumed(session_id, now, binding)
            self._check_agreement(required)
            used = None if use is None else self._used(use)
            row = self._build_audit(build)
            self._sessions[session_id] = new
            if used is not None:
                self._enrollments[used.key] = used
            self._audit.append(row)
            return new, row[0]

    def _used(self, use: EnrollmentUse) -> EnrollmentRecord:
        """The enrollment record after one more use; nothing changed."""
        old = self._enrollments.get(use.key) or EnrollmentRecord(use.key, 0, None, None)
        if old.revoked_at is not None:
            raise EnrollmentUseRefused("revoked")
        if use.max_uses is not None and old.uses >= use.max_uses:
            raise EnrollmentUseRefused("exhausted")
        return replace(old, uses=old.uses + 1)

    # -- enrollments --------------------------------------------------------------------
    def get_enrollment(self, key: str) -> EnrollmentRecord | None:
        """See :meth:`KbsStore.get_enrollment`."""
        validate.name("key", key)
        with self._lock:
            self._check_open()
            return self._enrollments.get(key)

    def revoke_enrollment_and_audit(
        self, key: str, revocation: bytes, now: datetime, build: AuditBuilder
    ) -> tuple[EnrollmentRecord, AuditEntry]:
        """See :meth:`KbsStore.revoke_enrollment_and_audit`."""
        key, document, now = validate.revocation(key, revocation, now)
        validate.builder(build)
        with self._lock:
            self._check_open()
            old = self._enrollments.get(key) or EnrollmentRecord(key, 0, None, None)
            new = old if old.revoked_at is not None else replace(
                old, revoked_at=now, revocation=document
            )
            row = self._build_audit(build)
            self._enrollments[key] = new
            self._audit.append(row)
            return new, row[0]

    def _consumed(
        self, session_id: str, now: datetime, binding: TokenBinding | None
    ) -> SessionRecord:
        """The session with its nonce consumed (and ``binding`` bound); nothing changed."""
        old = self._sessions.get(session_id)
        if old is None:
            raise StorageNotFound("no such session")
        if old.consumed:
            raise StorageConflict("nonce already consumed")
        if now >= old.expires_at:
            raise StorageExpired("nonce expired")
        if binding is None:
            return replace(old, consumed=True)
        return replace(
            old,
            consumed=True,
            token_digest=binding.token_digest,
            claims_json=binding.claims_json,
            token_expires_at=binding.expires_at,
        )

    def bind_token(
        self, session_id: str, token_digest: bytes, claims_json: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.bind_token`."""
        digest, expires = validate.token(session_id, token_digest, claims_json, expires_at)
        with self._lock:
            self._check_open()
            old = self._sessions.get(session_id)
            if old is None:
                raise StorageNotFound("no such session")
            if not old.consumed:
                raise StorageConflict("nonce not consumed yet")
            if old.token_digest is not None:
                raise StorageConflict("a token is already bound to the session")
            new = replace(
                old, token_digest=digest, claims_json=claims_json, token_expires_at=expires
            )
            self._sessions[session_id] = new
            return new

    def get_session(self, session_id: str) -> SessionRecord | None:
        """See :meth:`KbsStore.get_session`."""
        validate.name("session_id", session_id)
        with self._lock:
            self._check_open()
            return self._sessions.get(session_id)

    def purge_sessions(self, now: datetime) -> int:
        """See :meth:`KbsStore.purge_sessions`."""
        now = validate.time("now", now)
        with self._lock:
            self._check_open()
            dead = [
                sid
                for sid, s in self._sessions.items()
                if s.expires_at < now and (s.token_expires_at is None or s.token_expires_at < now)
            ]
            for sid in dead:
                del self._sessions[sid]
            return len(dead)

    # -- audit --------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        """See :meth:`KbsStore.append_audit`."""
        normalised, reasons_text, data_text = validate.check_audit_entry(entry)
        with self._lock:
            self._check_open()
            last = self._audit[-1][0] if self._audit else None
            expected_seq = 1 if last is None else last.seq + 1
            expected_prev = GENESIS_HASH if last is None else last.hash
            if normalised.seq != expected_seq:
                raise StorageConflict(f"audit seq must be {expected_seq}")
            if normalised.prev_hash != expected_prev:
                raise StorageConflict("audit prev_hash does not match the last entry")
            self._audit.append((normalised, reasons_text, data_text))

    def append_audit_built(self, build: AuditBuilder) -> AuditEntry:
        """See :meth:`KbsStore.append_audit_built`."""
        validate.builder(build)
        with self._lock:
            self._check_open()
            row = self._build_audit(build)
            self._audit.append(row)
            return row[0]

    def _build_audit(self, build: AuditBuilder) -> tuple[AuditEntry, str, str]:
        """Build and check the entry after the head (caller holds the lock; not appended)."""
        last = self._audit[-1][0] if self._audit else None
        seq = 1 if last is None else last.seq + 1
        prev = GENESIS_HASH if last is None else last.hash
        entry, reasons_text, data_text = validate.built_entry(build(seq, prev), seq, prev)
        reasons, data = validate.decode_audit_json(reasons_text, data_text)
        return replace(entry, reasons=reasons, data=data), reasons_text, data_text

    def _entry(self, row: tuple[AuditEntry, str, str]) -> AuditEntry:
        reasons, data = validate.decode_audit_json(row[1], row[2])
        return replace(row[0], reasons=reasons, data=data)

    def audit_entries(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """See :meth:`KbsStore.audit_entries`."""
        after_seq, limit = validate.check_page(after_seq, limit)
        with self._lock:
            self._check_open()
            rows = self._audit[after_seq : after_seq + limit]  # seq n is at index n - 1
        return [self._entry(r) for r in rows]

    def last_audit(self) -> AuditEntry | None:
        """See :meth:`KbsStore.last_audit`."""
        with self._lock:
            self._check_open()
            row = self._audit[-1] if self._audit else None
        return None if row is None else self._entry(row)

    def close(self) -> None:
        """Mark the store closed; later calls raise :class:`StorageError`."""
        with self._lock:
            self._closed = True
