"""Attack tests (adversary H: the host reads and writes the KBS database) against every
backend: forged, moved or rolled-back rows are refused; secrets and session ids are not
stored in the clear. Tampering goes around the store: raw SQL on the same database, or the
memory store's row dictionaries."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from store_helpers import D1, D2, STORAGE_KEY, T0, Backend
from store_helpers import put as _put

from teeflow.kbs.client.heads import HeadTracker, StateRollback
from teeflow.kbs.policy.canonical import b64url_encode
from teeflow.kbs.service.audit import AuditLog
from teeflow.kbs.service.heads import HeadRecorder, KbsHeadFile, check_store_head
from teeflow.kbs.store import open_store
from teeflow.kbs.store.interface import (
    EnrollmentUse,
    EnrollmentUseRefused,
    KbsStore,
    StorageConflict,
    StorageRollback,
    StorageTampered,
    TokenBinding,
)
from teeflow.kbs.store.memory import MemoryStore

PATH = "repo/key/a"
SID = "session-id-secret-cookie-value"


def _exec(store: KbsStore, sql: str, **params: Any) -> list[Any]:
    from sqlalchemy import text

    engine = store.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        res = conn.execute(text(sql), params)
        return list(res) if res.returns_rows else []


def _log(store: KbsStore) -> AuditLog:
    return AuditLog(store, Ed25519PrivateKey.generate(), lambda: T0)


def _tamper(store: KbsStore, table: str, column: str, value: Any) -> None:
    """Set ``column`` of every row of ``table`` to ``value`` (tag left as it was)."""
    if isinstance(store, MemoryStore):
        rows: Any = {
            "kbs_agreements": store._agreements,
            "kbs_resources": list(store._resources.values()),
            "kbs_sessions": list(store._sessions.values()),
            "kbs_counters": list(store._counters.values()),
            "kbs_enrollments": list(store._enrollments.values()),
        }[table]
        for row in rows:
            row[column] = value
    else:
        _exec(store, f"UPDATE {table} SET {column} = :v", v=value)


def test_flipped_agreement_document_is_refused(store: KbsStore) -> None:
    log = _log(store)
    store.append_agreement_and_audit(1, D1, b'{"allow_emulated":false}', T0,
                                     log.builder("agreement", "a", "accept"))
    _tamper(store, "kbs_agreements", "document", b'{"allow_emulated":true}')
    with pytest.raises(StorageTampered):
        store.current_agreement()
    with pytest.raises(StorageTampered):
        store.agreement_history()


def test_widened_grant_is_refused(store: KbsStore) -> None:
    _put(store, max_releases=2)
    _tamper(store, "kbs_resources", "max_releases", 1000)
    with pytest.raises(StorageTampered):
        store.get_resource(PATH)
    # a release decides on the authentic row (re-read and refused, or this process's
    # verified copy, whose tag the update compares): never on the widened budget
    with pytest.raises((StorageTampered, StorageConflict)):
        for count in range(3):
            store.record_release(PATH, count)


def test_inserted_attested_session_is_refused(store: KbsStore) -> None:
    store.create_session(SID, b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    _tamper(store, "kbs_sessions", "token_digest", b"t" * 32)  # a token the KBS never bound
    with pytest.raises(StorageTampered):
        store.get_session(SID)


def test_rolled_back_release_count_is_refused(store: KbsStore, backend: Backend) -> None:
    log = _log(store)
    _put(store, max_releases=2)
    store.record_release_and_audit(PATH, 0, log.builder("release", PATH, "accept"))
    if isinstance(store, MemoryStore):
        old = dict(store._resources[PATH])
    else:
        rows = _exec(store, "SELECT release_count, audit_seq, tag FROM kbs_resources")
        old = dict(rows[0]._mapping)
    store.record_release_and_audit(PATH, 1, log.builder("release", PATH, "accept"))
    if isinstance(store, MemoryStore):
        store._resources[PATH] = old  # an older authentic row
    else:
        _exec(store, "UPDATE kbs_resources SET release_count = :c, audit_seq = :s, tag = :t",
              c=old["release_count"], s=old["audit_seq"], t=old["tag"])
    with pytest.raises(StorageRollback):  # the budget of 2 would be open again
        store.record_release_and_audit(PATH, 1, log.builder("release", PATH, "accept"))
    if backend.durable:  # a fresh open checks the rows against the state log
        store.close()
        with pytest.raises(StorageRollback):
            open_store(backend.url, STORAGE_KEY)


ENROLLMENT = "alice/" + "e" * 22


def _attest(store: KbsStore, sid: str, use: EnrollmentUse) -> None:
    """An accepted attestation counting one ``use`` (nonce, token, use and audit at once)."""
    store.create_session(sid, b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    store.consume_nonce_and_audit(
        sid, T0, _log(store).builder("attestation", sid, "accept"),
        token=TokenBinding(D1, '{"role":"client"}', T0 + timedelta(minutes=5)), enrollment=use,
    )


def _revoke(store: KbsStore) -> None:
    store.revoke_enrollment_and_audit(
        ENROLLMENT, b"revocation-jws", T0, _log(store).builder("enrollment", "e", "accept")
    )


def test_rolled_back_enrollment_use_count_is_refused(store: KbsStore, backend: Backend) -> None:
    use = EnrollmentUse(ENROLLMENT, 2)
    _attest(store, "s1", use)
    if isinstance(store, MemoryStore):
        old = dict(store._enrollments[ENROLLMENT])
    else:
        old = dict(_exec(store, "SELECT uses, audit_seq, tag FROM kbs_enrollments")[0]._mapping)
    _attest(store, "s2", use)  # the last of 2 uses
    if isinstance(store, MemoryStore):
        store._enrollments[ENROLLMENT] = old  # an older authentic row: 1 use
    else:
        _exec(store, "UPDATE kbs_enrollments SET uses = :u, audit_seq = :s, tag = :t",
              u=old["uses"], s=old["audit_seq"], t=old["tag"])
    with pytest.raises(StorageRollback):  # a third use would be admitted
        _attest(store, "s3", use)
    with pytest.raises(StorageRollback):
        store.get_enrollment(ENROLLMENT)
    if backend.durable:  # a fresh open checks the row against the state log
        store.close()
        with pytest.raises(StorageRollback):
            open_store(backend.url, STORAGE_KEY)


def test_edited_enrollment_use_count_is_refused(store: KbsStore) -> None:
    use = EnrollmentUse(ENROLLMENT, 2)
    _attest(store, "s1", use)
    _attest(store, "s2", use)
    _tamper(store, "kbs_enrollments", "uses", 0)  # the tag is left as it was
    with pytest.raises(StorageTampered):
        _attest(store, "s3", use)
    with pytest.raises(StorageTampered):
        store.get_enrollment(ENROLLMENT)


def test_deleted_revocation_is_refused(store: KbsStore, backend: Backend) -> None:
    use = EnrollmentUse(ENROLLMENT, None)
    _attest(store, "s1", use)
    _revoke(store)
    with pytest.raises(EnrollmentUseRefused):
        _attest(store, "s2", use)
    if isinstance(store, MemoryStore):
        del store._enrollments[ENROLLMENT]
    else:
        _exec(store, "DELETE FROM kbs_enrollments")
    with pytest.raises(StorageRollback):  # the revoked enrollment would be usable again
        _attest(store, "s3", use)
    if backend.durable:  # a fresh open finds the row the state log wrote missing
        store.close()
        with pytest.raises(StorageRollback):
            open_store(backend.url, STORAGE_KEY)


def test_cleared_revocation_is_refused(store: KbsStore) -> None:
    _revoke(store)
    _tamper(store, "kbs_enrollments", "revoked_at", None)
    _tamper(store, "kbs_enrollments", "revocation", None)
    with pytest.raises(StorageTampered):
        _attest(store, "s1", EnrollmentUse(ENROLLMENT, None))


def test_rolled_back_counter_is_refused_at_open(sql_backend: Backend) -> None:
    store = sql_backend.open()
    log = _log(store)
    store.compare_and_increment_and_audit("fl/x", 0, D1, log.builder("counter", "c", "accept"))
    old = dict(_exec(store, "SELECT value, digest, audit_seq, tag FROM kbs_counters")[0]._mapping)
    store.compare_and_increment_and_audit("fl/x", 1, D2, log.builder("counter", "c", "accept"))
    _exec(store, "UPDATE kbs_counters SET value = :v, digest = :d, audit_seq = :s, tag = :t",
          v=old["value"], d=old["digest"], s=old["audit_seq"], t=old["tag"])
    store.close()
    with pytest.raises(StorageRollback):
        open_store(sql_backend.url, STORAGE_KEY)


def test_truncated_audit_tail_is_refused_at_open(sql_backend: Backend) -> None:
    store = sql_backend.open()
    log = _log(store)
    _put(store)
    store.record_release_and_audit(PATH, 0, log.builder("release", PATH, "accept"))
    _exec(store, "DELETE FROM kbs_audit WHERE seq = (SELECT MAX(seq) FROM kbs_audit)")
    store.close()
    with pytest.raises(StorageRollback):
        open_store(sql_backend.url, STORAGE_KEY)


def test_session_ids_and_claims_are_not_stored_in_clear(sql_backend: Backend) -> None:
    store = sql_backend.open()
    store.create_session(SID, b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    store.consume_nonce(SID, T0)
    store.bind_token(SID, b"t" * 32, f'{{"session_id": "{SID}"}}', T0 + timedelta(minutes=5))
    rows = _exec(store, "SELECT * FROM kbs_sessions")
    assert SID.encode() not in repr(rows).encode()
    assert store.get_session(SID) is not None  # and the store still finds it by its id
    store.close()


def test_store_opened_with_another_key_is_refused(sql_backend: Backend) -> None:
    store = sql_backend.open()
    _put(store)
    store.close()
    with pytest.raises(StorageTampered):
        open_store(sql_backend.url, bytes(range(1, 33)))


def test_restored_sqlite_copy_is_detected(tmp_path: Path) -> None:
    """Copy the database, do work, restore the copy: the KBS refuses to start against its
    head file; with the head file restored too, the party's remembered head refuses it."""
    url, db = f"sqlite:///{tmp_path / 'kbs.db'}", tmp_path / "kbs.db"
    key = Ed25519PrivateKey.generate()
    tracker = HeadTracker(b64url_encode(key.public_key().public_bytes_raw()), None)

    def serve_once(work: bool) -> None:
        store = open_store(url, STORAGE_KEY)
        head_file = KbsHeadFile(tmp_path, STORAGE_KEY, interval=0)
        check_store_head(store.last_audit(), head_file.load())
        recorder = HeadRecorder(store, key, head_file)
        with recorder.capture() as box:
            if work:
                recorder.saw(AuditLog(store, key, lambda: T0).append("counter", "c", "accept"))
        before = tracker.head
        try:
            tracker.check(box.header, before)
        finally:
            recorder.close()
            store.close()

    serve_once(True)
    shutil.copy(db, tmp_path / "copy.db")
    shutil.copy(tmp_path / "kbs-head", tmp_path / "copy-head")
    serve_once(True)
    shutil.copy(tmp_path / "copy.db", db)  # the host restores the old database
    with pytest.raises(StorageRollback, match="the KBS state was rolled back"):
        serve_once(False)
    shutil.copy(tmp_path / "copy-head", tmp_path / "kbs-head")  # ... and the head file
    with pytest.raises(StateRollback, match="the KBS state was rolled back"):
        serve_once(False)


def test_writer_committing_behind_a_newer_writer_is_not_a_rollback(
    sql_backend: Backend,
) -> None:
    """Two honest writers of one counter: A commits seq n, B commits seq n+1 and remembers
    it, then A (after its commit, outside the write lock) records what it wrote. That is
    progress, not a rollback: A must succeed (a KBS under concurrent attestations returned
    "the KBS store failed an integrity check" here)."""
    import threading

    from teeflow.kbs.store import _codec as codec

    store = sql_backend.open()
    log = _log(store)
    key = codec.touch_key(codec.COUNTERS, "fl/race")
    real = store._seen  # type: ignore[attr-defined]
    a_committed, b_done = threading.Event(), threading.Event()
    a_thread: list[threading.Thread] = []

    class PausingSeen:
        """Holds writer A between its commit and its bookkeeping until B has finished."""

        def __getattr__(self, name: str) -> Any:
            attr = getattr(real, name)
            if name not in ("check", "remember"):
                return attr

            def call(k: str, *args: Any) -> Any:
                if k == key and a_thread and threading.current_thread() is a_thread[0]:
                    a_committed.set()
                    assert b_done.wait(10)
                return attr(k, *args)

            return call

    store._seen = PausingSeen()  # type: ignore[attr-defined]
    results: list[Any] = []

    def writer_a() -> None:
        try:
            results.append(store.compare_and_increment_and_audit(
                "fl/race", 0, D1, log.builder("counter", "race", "accept")))
        except BaseException as exc:  # reported below
            results.append(exc)

    a_thread.append(threading.Thread(target=writer_a))
    a_thread[0].start()
    assert a_committed.wait(10)
    value, _ = store.compare_and_increment_and_audit(
        "fl/race", 1, D2, log.builder("counter", "race", "accept"))
    b_done.set()
    a_thread[0].join(10)
    store.close()
    assert value == 2
    assert not isinstance(results[0], BaseException), repr(results[0])
