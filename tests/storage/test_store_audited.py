"""KbsStore audited writes: a state change and its audit entry in one transaction.

Runs against memory://, a SQLite file and PostgreSQL (fixtures in ``conftest.py``). Checked:
the entry is built for the current head and extends a chain that verifies; the state change
and the entry are written together or not at all (every failure of the state precondition,
a builder that raises, an entry built for another position); concurrent audited writers -
threads on one store and two stores on one database, as two KBS processes - keep a single
valid chain without losing any entry.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from store_helpers import D1, D2, T0, Backend, clock, put, race

from teeflow.kbs.service.audit import AuditError, AuditLog, verify_audit_chain
from teeflow.kbs.store.interface import (
    AuditEntry,
    KbsStore,
    StorageConflict,
    StorageExpired,
    StorageInputError,
    StorageNotFound,
    TokenBinding,
)

KEY = Ed25519PrivateKey.generate()
PATH = "repo/key/a"


def _log(store: KbsStore) -> AuditLog:
    return AuditLog(store, KEY, clock())


def _verify(store: KbsStore, count: int) -> list[AuditEntry]:
    entries = store.audit_entries(limit=10_000)
    assert len(entries) == count
    verify_audit_chain(entries, KEY.public_key())
    return entries


def test_append_audit_built_extends_the_chain(store: KbsStore) -> None:
    log = _log(store)
    first = store.append_audit_built(log.builder("agreement", "fed", "accept", [], {"v": 1}))
    assert first.seq == 1 and first.data == {"v": 1}
    log.append("info", "classic append", "info")  # mixes with AuditLog.append
    third = store.append_audit_built(log.builder("release", PATH, "deny", ["no grant"]))
    assert third.seq == 3 and third.reasons == ["no grant"]
    entries = _verify(store, 3)
    assert entries[0] == first and entries[2] == third and store.last_audit() == third


def test_built_entry_for_another_position_is_refused(store: KbsStore) -> None:
    log = _log(store)
    store.append_audit_built(log.builder("info", "s", "info"))
    good = log.builder("info", "s", "info")
    for bad in (
        lambda seq, prev: good(seq + 1, prev),
        lambda seq, prev: good(seq, bytes(32)),
        lambda seq, prev: replace(good(seq, prev), subject="x" * 300),
    ):
        with pytest.raises(StorageInputError):
            store.append_audit_built(bad)
    with pytest.raises(StorageInputError):
        store.append_audit_built("not callable")  # type: ignore[arg-type]
    _verify(store, 1)


def _raising(seq: int, prev: bytes) -> AuditEntry:
    raise AuditError("builder failed")


# -- nonce consumption + token + audit ---------------------------------------------------------


def test_consume_nonce_and_audit(store: KbsStore) -> None:
    log = _log(store)
    store.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    token = TokenBinding(D1, '{"role":"client"}', T0 + timedelta(minutes=5))
    session, entry = store.consume_nonce_and_audit(
        "sid", T0, log.builder("attestation", "session:x", "accept", [], {"tee": "sgx"}),
        token=token,
    )
    assert session.consumed and session.token_digest == D1
    assert session.claims_json == '{"role":"client"}'
    assert session.token_expires_at == T0 + timedelta(minutes=5)
    assert store.get_session("sid") == session
    assert entry.seq == 1 and entry.data == {"tee": "sgx"}
    with pytest.raises(StorageConflict, match="already consumed"):  # replay: nothing written
        store.consume_nonce_and_audit("sid", T0, log.builder("attestation", "s", "accept"))
    _verify(store, 1)


def test_consume_nonce_and_audit_without_token(store: KbsStore) -> None:
    store.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    session, _ = store.consume_nonce_and_audit(
        "sid", T0, _log(store).builder("attestation", "s", "deny", ["bad evidence"])
    )
    assert session.consumed and session.token_digest is None
    assert _verify(store, 1)[0].decision == "deny"


def test_consume_nonce_and_audit_writes_nothing_on_failure(store: KbsStore) -> None:
    log = _log(store)
    store.create_session("old", b"n" * 32, "sgx", T0)
    store.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    with pytest.raises(StorageExpired):
        store.consume_nonce_and_audit("old", T0, log.builder("attestation", "s", "accept"))
    with pytest.raises(StorageNotFound):
        store.consume_nonce_and_audit("nope", T0, log.builder("attestation", "s", "accept"))
    with pytest.raises(AuditError):  # the builder failed: the nonce stays unused
        store.consume_nonce_and_audit("sid", T0, _raising)
    with pytest.raises(StorageInputError):  # token out of bounds
        store.consume_nonce_and_audit(
            "sid", T0, log.builder("attestation", "s", "accept"),
            token=TokenBinding(b"short", "{}", T0),
        )
    assert not store.get_session("sid").consumed  # type: ignore[union-attr]
    assert not store.get_session("old").consumed  # type: ignore[union-attr]
    _verify(store, 0)


def test_concurrent_consume_nonce_and_audit_single_use(store: KbsStore) -> None:
    log = _log(store)
    store.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    results, errors = race(
        8,
        lambda i: store.consume_nonce_and_audit(
            "sid", T0, log.builder("attestation", f"w{i}", "accept"),
            token=TokenBinding(bytes([i + 1]) * 32, "{}", T0 + timedelta(minutes=5)),
        ),
    )
    assert len(results) == 1 and len(errors) == 7
    assert all(isinstance(e, StorageConflict) for e in errors)
    winner, entry = results[0]
    assert store.get_session("sid") == winner
    assert _verify(store, 1) == [entry]


# -- release count + audit -------------------------------------------------------------------


def test_record_release_and_audit(store: KbsStore) -> None:
    log = _log(store)
    put(store, max_releases=2)
    count, entry = store.record_release_and_audit(
        PATH, 0, log.builder("release", PATH, "accept", [], {"release_count": 1}), generation=1
    )
    assert count == 1 and entry.seq == 1
    with pytest.raises(StorageConflict, match="stale"):
        store.record_release_and_audit(PATH, 0, log.builder("release", PATH, "accept"))
    with pytest.raises(StorageConflict, match="replaced"):
        store.record_release_and_audit(PATH, 1, log.builder("release", PATH, "accept"),
                                       generation=2)
    with pytest.raises(AuditError):
        store.record_release_and_audit(PATH, 1, _raising)
    assert store.get_resource(PATH).release_count == 1  # type: ignore[union-attr]
    assert store.record_release_and_audit(PATH, 1, log.builder("release", PATH, "accept"))[0] == 2
    with pytest.raises(StorageConflict, match="used up"):
        store.record_release_and_audit(PATH, 2, log.builder("release", PATH, "accept"))
    with pytest.raises(StorageNotFound):
        store.record_release_and_audit("repo/key/none", 0, log.builder("release", PATH, "accept"))
    assert store.get_resource(PATH).release_count == 2  # type: ignore[union-attr]
    _verify(store, 2)


def test_concurrent_release_and_audit_exactly_one_winner(store: KbsStore) -> None:
    log = _log(store)
    put(store, max_releases=100)
    results, errors = race(
        8,
        lambda i: store.record_release_and_audit(PATH, 0, log.builder("release", f"w{i}", "info")),
    )
    assert [r[0] for r in results] == [1]
    assert len(errors) == 7 and all(isinstance(e, StorageConflict) for e in errors)
    _verify(store, 1)


def test_concurrent_audited_writers_keep_one_chain(backend: Backend, store: KbsStore) -> None:
    """Threads on two stores over one database (two KBS processes) mixing every audited
    write and the classic append: no entry lost, one valid chain."""
    other = store if backend.name == "memory" else backend.open()
    stores = [store, other]
    put(store, max_releases=None)
    for i in range(6):
        store.create_session(f"sid-{i}", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    logs = [AuditLog(s, KEY, clock(), max_attempts=500) for s in stores]

    def work(i: int) -> None:
        s, log = stores[i % 2], logs[i % 2]
        s.consume_nonce_and_audit(f"sid-{i}", T0, log.builder("attestation", f"a{i}", "info"))
        for _ in range(4):
            s.append_audit_built(log.builder("info", f"b{i}", "info"))
            log.append("info", f"c{i}", "info")
        while True:  # releases: retry stale counts like the service does
            current = s.get_resource(PATH).release_count  # type: ignore[union-attr]
            try:
                s.record_release_and_audit(PATH, current, log.builder("release", f"r{i}", "info"))
                break
            except StorageConflict:
                continue

    _results, errors = race(6, work)
    if other is not store:
        other.close()
    assert errors == []
    assert store.get_resource(PATH).release_count == 6  # type: ignore[union-attr]
    assert all(store.get_session(f"sid-{i}").consumed for i in range(6))  # type: ignore[union-attr]
    _verify(store, 6 * (1 + 8 + 1))


def test_audited_writes_survive_reopen(sql_backend: Backend) -> None:
    s = sql_backend.open()
    log = _log(s)
    put(s, max_releases=None)
    s.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    s.consume_nonce_and_audit("sid", T0, log.builder("attestation", "s", "accept"),
                              token=TokenBinding(D2, "{}", T0 + timedelta(minutes=5)))
    s.record_release_and_audit(PATH, 0, log.builder("release", PATH, "accept"))
    s.append_audit_built(log.builder("info", "s", "info"))
    before = s.audit_entries()
    s.close()
    s = sql_backend.open()
    try:
        assert s.audit_entries() == before and len(before) == 3
        verify_audit_chain(before, KEY.public_key())
        assert s.get_session("sid").token_digest == D2  # type: ignore[union-attr]
        assert s.get_resource(PATH).release_count == 1  # type: ignore[union-attr]
    finally:
        s.close()


def test_a_failed_commit_does_not_move_the_remembered_head(sql_backend: Backend) -> None:
    """An audited write remembers the head it appended only once it committed: an insert
    whose commit failed must not make the next entry skip a seq (a gap breaks the chain)."""
    from sqlalchemy import event

    store = sql_backend.open()
    log = _log(store)
    store.append_audit_built(log.builder("info", "first", "info"))
    engine = store.engine  # type: ignore[attr-defined]

    def fail(_conn: object) -> None:
        raise RuntimeError("disk full at commit")

    event.listen(engine, "commit", fail)
    with pytest.raises(RuntimeError):
        store.append_audit_built(log.builder("info", "lost", "info"))
    event.remove(engine, "commit", fail)
    third = store.append_audit_built(log.builder("info", "after", "info"))
    assert third.seq == 2
    _verify(store, 2)
    store.close()


def test_an_append_by_another_process_is_followed(sql_backend: Backend) -> None:
    """A store appends after the head it remembers; when another KBS process appended in
    between, the primary key refuses the insert and the store re-reads the head."""
    a, b = sql_backend.open(), sql_backend.open()
    log_a, log_b = _log(a), _log(b)
    a.append_audit_built(log_a.builder("info", "a1", "info"))
    b.append_audit_built(log_b.builder("info", "b1", "info"))
    b.append_audit_built(log_b.builder("info", "b2", "info"))
    entry = a.append_audit_built(log_a.builder("info", "a2", "info"))
    assert entry.seq == 4
    _verify(a, 4)
    a.close()
    b.close()
