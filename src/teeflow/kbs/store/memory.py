"""In-memory :class:`~teeflow.kbs.store.interface.KbsStore` (tests, demos; not durable).

One :class:`threading.Lock` serialises every method, which makes each one atomic. Behaviour
(validation, errors, ordering, row authentication) matches the SQL backends exactly; the
contract suites ``tests/storage/test_store_contract.py``, ``test_store_audited.py`` and
``test_store_integrity.py`` check that. Rows are held as the same tagged row dictionaries
the SQL backends store (:mod:`teeflow.kbs.store._codec`), under the given storage key or an
ephemeral one. Nothing survives the process: use ``sqlite:///...`` for anything that must be
durable (DESIGN, security invariant 5).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from teeflow.kbs.store import _codec as codec
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
from teeflow.kbs.store.rows import RowAuth

__all__ = ["MemoryStore"]

T = TypeVar("T")


class MemoryStore:
    """A thread-safe, non-durable :class:`KbsStore` held in dictionaries of tagged rows.

    Args:
        storage_key: the KBS storage key (32 bytes); None uses a random one.

    See :class:`teeflow.kbs.store.interface.KbsStore` for every method's contract.
    """

    def __init__(self, storage_key: bytes | None = None) -> None:
        self._auth = RowAuth.ephemeral() if storage_key is None else RowAuth(storage_key)
        self._lock = threading.Lock()
        self._agreements: list[dict[str, Any]] = []
        self._resources: dict[str, dict[str, Any]] = {}
        self._counters: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._enrollments: dict[str, dict[str, Any]] = {}
        self._audit: list[dict[str, Any]] = []
        self._seen = codec.Seen()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("store is closed")

    def _head_seq(self) -> int:
        return int(self._audit[-1]["seq"]) if self._audit else 0

    def _current(self) -> AgreementRecord | None:
        if not self._agreements:
            self._seen.check_agreement(0)
            return None
        row = self._agreements[-1]
        rec = codec.agreement_record(self._auth, row)
        self._seen.check(codec.touch_key(codec.AGREEMENTS, rec.version), row["audit_seq"])
        self._seen.check_agreement(rec.version)
        return rec

    def _check_agreement(self, digest: bytes | None) -> None:
        if digest is None:
            return
        current = self._current()
        if current is None or current.digest != digest:
            raise StorageConflict("the active agreement changed")

    def _audited(
        self, work: Callable[[int], T], build: AuditBuilder, touches: str | None
    ) -> tuple[T, AuditEntry]:
        """``work(seq of the new entry)`` then the entry, atomically (caller holds the lock)."""
        seq = self._head_seq() + 1
        prev = GENESIS_HASH if not self._audit else bytes(self._audit[-1]["hash"])
        entry, reasons_text, data_text = validate.built_entry(build(seq, prev), seq, prev)
        result = work(seq)  # after the builder: a failing builder leaves nothing changed
        built = codec.AuditRow(entry, reasons_text, data_text, touches)
        self._audit.append(codec.audit_row(self._auth, built))
        return result, codec.built_entry(built)

    # -- agreements ---------------------------------------------------------------------
    def _append_agreement(self, record: AgreementRecord, seq: int) -> AgreementRecord:
        expected = len(self._agreements) + 1
        if record.version != expected:
            raise StorageConflict(f"agreement version must be {expected}")
        if any(bytes(a["digest"]) == record.digest for a in self._agreements):
            raise StorageConflict("agreement digest already in the history")
        self._agreements.append(codec.agreement_row(self._auth, record, seq))
        self._seen.check(codec.touch_key(codec.AGREEMENTS, record.version), seq)
        self._seen.check_agreement(record.version)
        return record

    def append_agreement(
        self, version: int, digest: bytes, document: bytes, created_at: datetime
    ) -> AgreementRecord:
        """See :meth:`KbsStore.append_agreement`."""
        record = validate.agreement(version, digest, document, created_at)
        with self._lock:
            self._check_open()
            return self._append_agreement(record, self._head_seq())

    def append_agreement_and_audit(
        self,
        version: int,
        digest: bytes,
        document: bytes,
        created_at: datetime,
        build: AuditBuilder,
    ) -> tuple[AgreementRecord, AuditEntry]:
        """See :meth:`KbsStore.append_agreement_and_audit`."""
        record = validate.agreement(version, digest, document, created_at)
        validate.builder(build)
        touches = codec.touch_key(codec.AGREEMENTS, record.version)
        with self._lock:
            self._check_open()
            return self._audited(lambda seq: self._append_agreement(record, seq), build, touches)

    def current_agreement(self) -> AgreementRecord | None:
        """See :meth:`KbsStore.current_agreement`."""
        with self._lock:
            self._check_open()
            return self._current()

    def agreement_history(self) -> list[AgreementRecord]:
        """See :meth:`KbsStore.agreement_history`."""
        with self._lock:
            self._check_open()
            rows = list(self._agreements)
        return [codec.agreement_record(self._auth, r) for r in rows]

    # -- resources ----------------------------------------------------------------------
    def _put(self, record: ResourceRecord, seq: int) -> ResourceRecord:
        old = self._resources.get(record.path)
        if old is not None:
            previous = self._resource(old)
            if previous.owner != record.owner:
                raise StorageConflict("resource belongs to another owner")
            record = replace(record, generation=previous.generation + 1)
        self._resources[record.path] = codec.resource_row(self._auth, record, seq)
        self._seen.check(codec.touch_key(codec.RESOURCES, record.path), seq)
        return record

    def _resource(self, row: dict[str, Any]) -> ResourceRecord:
        rec = codec.resource_record(self._auth, row)
        self._seen.check(codec.touch_key(codec.RESOURCES, rec.path), row["audit_seq"])
        return rec

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
            return self._put(record, self._head_seq())

    def put_resource_and_audit(
        self,
        path: str,
        owner: str,
        build: AuditBuilder,
        *,
        wrapped_key: bytes,
        grant: bytes,
        grant_digest: bytes,
        not_after: datetime | None,
        max_releases: int | None,
        created_at: datetime,
    ) -> tuple[ResourceRecord, AuditEntry]:
        """See :meth:`KbsStore.put_resource_and_audit`."""
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
        validate.builder(build)
        touches = codec.touch_key(codec.RESOURCES, record.path)
        with self._lock:
            self._check_open()
            return self._audited(lambda seq: self._put(record, seq), build, touches)

    def get_resource(self, path: str) -> ResourceRecord | None:
        """See :meth:`KbsStore.get_resource`."""
        validate.path(path)
        with self._lock:
            self._check_open()
            row = self._resources.get(path)
            return None if row is None else self._resource(row)

    def record_release(
        self, path: str, expected_count: int, *, generation: int | None = None
    ) -> int:
        """See :meth:`KbsStore.record_release`."""
        validate.release(path, expected_count, generation)
        with self._lock:
            self._check_open()
            return self._release(path, expected_count, generation, self._head_seq())

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
        touches = codec.touch_key(codec.RESOURCES, path)
        with self._lock:
            self._check_open()
            self._check_agreement(required)
            return self._audited(
                lambda seq: self._release(path, expected_count, generation, seq), build, touches
            )

    def _release(self, path: str, expected_count: int, generation: int | None, seq: int) -> int:
        """One more release (caller holds the lock); raises with nothing changed."""
        row = self._resources.get(path)
        if row is None:
            raise StorageNotFound("no such resource")
        old = self._resource(row)
        if generation is not None and old.generation != generation:
            raise StorageConflict("resource was replaced")
        if old.max_releases is not None and old.release_count >= old.max_releases:
            raise StorageConflict("release budget used up")
        if old.release_count != expected_count:
            raise StorageConflict("stale release count")
        self._resources[path] = codec.released_row(self._auth, row, seq)
        self._seen.check(codec.touch_key(codec.RESOURCES, path), seq)
        return old.release_count + 1

    # -- counters -----------------------------------------------------------------------
    def get_counter(self, name: str) -> tuple[int, bytes] | None:
        """See :meth:`KbsStore.get_counter`."""
        validate.name("name", name)
        with self._lock:
            self._check_open()
            return self._counter(name)

    def _counter(self, name: str) -> tuple[int, bytes] | None:
        row = self._counters.get(name)
        if row is None:
            return None
        found = codec.counter_value(self._auth, row)
        self._seen.check(codec.touch_key(codec.COUNTERS, name), row["audit_seq"])
        return found

    def _step(self, name: str, expected: int, digest: bytes, seq: int) -> int:
        found = self._counter(name)
        if (0 if found is None else found[0]) != expected:
            raise StorageConflict("counter is not at the expected value")
        self._counters[name] = codec.counter_row(self._auth, name, expected + 1, digest, seq)
        self._seen.check(codec.touch_key(codec.COUNTERS, name), seq)
        return expected + 1

    def compare_and_increment(self, name: str, expected: int, new_digest: bytes) -> int:
        """See :meth:`KbsStore.compare_and_increment`."""
        digest = validate.counter_step(name, expected, new_digest)
        with self._lock:
            self._check_open()
            return self._step(name, expected, digest, self._head_seq())

    def compare_and_increment_and_audit(
        self, name: str, expected: int, new_digest: bytes, build: AuditBuilder
    ) -> tuple[int, AuditEntry]:
        """See :meth:`KbsStore.compare_and_increment_and_audit`."""
        digest = validate.counter_step(name, expected, new_digest)
        validate.builder(build)
        touches = codec.touch_key(codec.COUNTERS, name)
        with self._lock:
            self._check_open()
            return self._audited(
                lambda seq: self._step(name, expected, digest, seq), build, touches
            )

    # -- sessions -----------------------------------------------------------------------
    def create_session(
        self, session_id: str, nonce: bytes, tee: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.create_session`."""
        record = validate.session(session_id, nonce, tee, expires_at)
        key = self._auth.session_key(record.session_id)
        with self._lock:
            self._check_open()
            if key in self._sessions:
                raise StorageConflict("session id already exists")
            self._sessions[key] = codec.session_row(self._auth, record)
        return record

    def _session(self, session_id: str) -> SessionRecord | None:
        row = self._sessions.get(self._auth.session_key(session_id))
        return None if row is None else codec.session_record(self._auth, session_id, row)

    def _store_session(self, record: SessionRecord) -> None:
        self._sessions[self._auth.session_key(record.session_id)] = codec.session_row(
            self._auth, record
        )

    def consume_nonce(self, session_id: str, now: datetime) -> SessionRecord:
        """See :meth:`KbsStore.consume_nonce`."""
        now = validate.consume(session_id, now)
        with self._lock:
            self._check_open()
            new = self._consumed(session_id, now, None)
            self._store_session(new)
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
            touches = None if use is None else codec.touch_key(codec.ENROLLMENTS, use.key)

            def work(seq: int) -> SessionRecord:
                if used is not None:
                    self._store_enrollment(used, seq)
                return new

            result = self._audited(work, build, touches)
            self._store_session(new)
            return result

    def _enrollment(self, key: str) -> EnrollmentRecord | None:
        """The verified enrollment row of ``key`` (caller holds the lock)."""
        row = self._enrollments.get(key)
        if row is None:
            self._seen.check_absent(codec.touch_key(codec.ENROLLMENTS, key))
            return None
        rec = codec.enrollment_record(self._auth, row)
        self._seen.check(codec.touch_key(codec.ENROLLMENTS, key), row["audit_seq"])
        return rec

    def _store_enrollment(self, record: EnrollmentRecord, seq: int) -> None:
        self._enrollments[record.key] = codec.enrollment_row(self._auth, record, seq)
        self._seen.check(codec.touch_key(codec.ENROLLMENTS, record.key), seq)

    def _used(self, use: EnrollmentUse) -> EnrollmentRecord:
        """The enrollment record after one more use; nothing changed."""
        old = self._enrollment(use.key) or EnrollmentRecord(use.key, 0, None, None)
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
            return self._enrollment(key)

    def revoke_enrollment_and_audit(
        self, key: str, revocation: bytes, now: datetime, build: AuditBuilder
    ) -> tuple[EnrollmentRecord, AuditEntry]:
        """See :meth:`KbsStore.revoke_enrollment_and_audit` (the row is rewritten under the
        new entry even when it was already revoked, so the state log names it)."""
        key, document, now = validate.revocation(key, revocation, now)
        validate.builder(build)
        touches = codec.touch_key(codec.ENROLLMENTS, key)
        with self._lock:
            self._check_open()
            old = self._enrollment(key) or EnrollmentRecord(key, 0, None, None)
            new = (
                old
                if old.revoked_at is not None
                else replace(old, revoked_at=now, revocation=document)
            )

            def work(seq: int) -> EnrollmentRecord:
                self._store_enrollment(new, seq)
                return new

            return self._audited(work, build, touches)

    def _consumed(
        self, session_id: str, now: datetime, binding: TokenBinding | None
    ) -> SessionRecord:
        """The session with its nonce consumed (and ``binding`` bound); nothing changed."""
        old = self._session(session_id)
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
            old = self._session(session_id)
            if old is None:
                raise StorageNotFound("no such session")
            if not old.consumed:
                raise StorageConflict("nonce not consumed yet")
            if old.token_digest is not None:
                raise StorageConflict("a token is already bound to the session")
            new = replace(
                old, token_digest=digest, claims_json=claims_json, token_expires_at=expires
            )
            self._store_session(new)
            return new

    def get_session(self, session_id: str) -> SessionRecord | None:
        """See :meth:`KbsStore.get_session`."""
        validate.name("session_id", session_id)
        with self._lock:
            self._check_open()
            return self._session(session_id)

    def purge_sessions(self, now: datetime) -> int:
        """See :meth:`KbsStore.purge_sessions`."""
        now = validate.time("now", now)
        with self._lock:
            self._check_open()
            dead = [
                key
                for key, s in self._sessions.items()
                if s["expires_at"] < now
                and (s["token_expires_at"] is None or s["token_expires_at"] < now)
            ]
            for key in dead:
                del self._sessions[key]
            return len(dead)

    # -- audit --------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        """See :meth:`KbsStore.append_audit`."""
        normalised, reasons_text, data_text = validate.check_audit_entry(entry)
        with self._lock:
            self._check_open()
            expected_seq = self._head_seq() + 1
            expected_prev = GENESIS_HASH if not self._audit else bytes(self._audit[-1]["hash"])
            if normalised.seq != expected_seq:
                raise StorageConflict(f"audit seq must be {expected_seq}")
            if normalised.prev_hash != expected_prev:
                raise StorageConflict("audit prev_hash does not match the last entry")
            row = codec.AuditRow(normalised, reasons_text, data_text, None)
            self._audit.append(codec.audit_row(self._auth, row))

    def append_audit_built(self, build: AuditBuilder) -> AuditEntry:
        """See :meth:`KbsStore.append_audit_built`."""
        validate.builder(build)
        with self._lock:
            self._check_open()
            return self._audited(lambda _seq: None, build, None)[1]

    def audit_entries(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """See :meth:`KbsStore.audit_entries`."""
        after_seq, limit = validate.check_page(after_seq, limit)
        with self._lock:
            self._check_open()
            rows = self._audit[after_seq : after_seq + limit]  # seq n is at index n - 1
        return [codec.audit_entry(self._auth, r) for r in rows]

    def last_audit(self) -> AuditEntry | None:
        """See :meth:`KbsStore.last_audit`."""
        with self._lock:
            self._check_open()
            row = self._audit[-1] if self._audit else None
        return None if row is None else codec.audit_entry(self._auth, row)

    def check_state(self) -> AuditEntry | None:
        """See :meth:`KbsStore.check_state`."""
        with self._lock:
            self._check_open()
            state: list[tuple[str, dict[str, Any]]] = [
                *((codec.AGREEMENTS, r) for r in self._agreements),
                *((codec.RESOURCES, r) for r in self._resources.values()),
                *((codec.COUNTERS, r) for r in self._counters.values()),
                *((codec.ENROLLMENTS, r) for r in self._enrollments.values()),
            ]
            return codec.check_state(self._auth, list(self._audit), state, self._seen)

    def close(self) -> None:
        """Mark the store closed; later calls raise :class:`StorageError`."""
        with self._lock:
            self._closed = True
