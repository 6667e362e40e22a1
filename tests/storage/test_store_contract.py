"""One KbsStore contract suite, run against memory://, a SQLite file and PostgreSQL.

Backends and PostgreSQL set-up: ``conftest.py`` beside this file. The audited writes (state
change + audit entry in one transaction) have their own suite, ``test_store_audited.py``.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from store_helpers import D1, D2, D3, STORAGE_KEY, T0, Backend
from store_helpers import clock as _clock
from store_helpers import entry as _entry
from store_helpers import put as _put
from store_helpers import race as _race

from teeflow.errors import KbsError
from teeflow.kbs.service.audit import AuditLog, verify_audit_chain
from teeflow.kbs.store import (
    open_store,
)
from teeflow.kbs.store.interface import (
    GENESIS_HASH,
    MAX_AGREEMENT_BYTES,
    MAX_AUDIT_DATA_BYTES,
    MAX_CLAIMS_BYTES,
    MAX_GRANT_BYTES,
    MAX_PATH_CHARS,
    MAX_WRAPPED_KEY_BYTES,
    KbsStore,
    StorageConflict,
    StorageError,
    StorageExpired,
    StorageInputError,
    StorageNotFound,
)
from teeflow.kbs.store.memory import (
    MemoryStore,
)


def test_agreements_append_and_read(store: KbsStore) -> None:
    assert store.current_agreement() is None
    assert store.agreement_history() == []
    a1 = store.append_agreement(1, D1, b"doc-1", T0)
    # a non-UTC offset is normalised to UTC, same instant
    a2 = store.append_agreement(2, D2, b"doc-2", T0.astimezone(timezone(timedelta(hours=2))))
    assert store.current_agreement() == a2
    history = store.agreement_history()
    assert [a.version for a in history] == [1, 2]
    assert history[0] == a1
    assert history[1].document == b"doc-2" and history[1].digest == D2
    assert history[1].created_at == T0 and history[1].created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("version", "digest"),
    [(1, D3), (3, D3), (0, D3), (2, D1)],
    ids=["repeat-version", "skip-version", "version-zero", "duplicate-digest"],
)
def test_agreements_are_append_only(store: KbsStore, version: int, digest: bytes) -> None:
    store.append_agreement(1, D1, b"doc-1", T0)
    with pytest.raises((StorageConflict, StorageInputError)):
        store.append_agreement(version, digest, b"other", T0)
    assert [a.digest for a in store.agreement_history()] == [D1]


def test_first_agreement_must_be_version_1(store: KbsStore) -> None:
    with pytest.raises(StorageConflict):
        store.append_agreement(2, D1, b"doc", T0)
    assert store.current_agreement() is None


# -- resources -----------------------------------------------------------------------------


def test_resource_put_get_replace(store: KbsStore) -> None:
    assert store.get_resource("repo/key/a") is None
    r1 = _put(store)
    got = store.get_resource("repo/key/a")
    assert got == r1
    assert (got.generation, got.release_count, got.max_releases) == (1, 0, 2)
    assert got.not_after == T0 + timedelta(days=1)
    store.record_release("repo/key/a", 0)
    r2 = _put(store, grant=b"grant-2", grant_digest=D2, max_releases=None, not_after=None)
    assert (r2.generation, r2.release_count) == (2, 0)
    got = store.get_resource("repo/key/a")
    assert got == r2
    assert got.grant == b"grant-2" and got.max_releases is None and got.not_after is None


def test_resource_replace_by_other_owner_is_refused(store: KbsStore) -> None:
    r1 = _put(store)
    with pytest.raises(StorageConflict):
        _put(store, owner="mallory", wrapped_key=b"evil")
    assert store.get_resource("repo/key/a") == r1


def test_release_counting_up_to_max(store: KbsStore) -> None:
    _put(store, max_releases=2)
    assert store.record_release("repo/key/a", 0) == 1
    with pytest.raises(StorageConflict):  # stale expected count
        store.record_release("repo/key/a", 0)
    assert store.record_release("repo/key/a", 1) == 2
    with pytest.raises(StorageConflict, match="used up"):
        store.record_release("repo/key/a", 2)
    assert store.get_resource("repo/key/a").release_count == 2  # type: ignore[union-attr]


def test_release_zero_budget_unlimited_and_missing(store: KbsStore) -> None:
    _put(store, "repo/key/zero", max_releases=0)
    with pytest.raises(StorageConflict):
        store.record_release("repo/key/zero", 0)
    _put(store, "repo/key/free", max_releases=None)
    for i in range(5):
        assert store.record_release("repo/key/free", i) == i + 1
    with pytest.raises(StorageNotFound):
        store.record_release("repo/key/none", 0)


def test_release_checks_generation(store: KbsStore) -> None:
    _put(store)
    _put(store, grant_digest=D2)  # generation 2
    with pytest.raises(StorageConflict, match="replaced"):
        store.record_release("repo/key/a", 0, generation=1)
    assert store.record_release("repo/key/a", 0, generation=2) == 1


def test_concurrent_release_exactly_one_winner(store: KbsStore) -> None:
    _put(store, max_releases=100)
    results, errors = _race(8, lambda _i: store.record_release("repo/key/a", 0))
    assert results == [1]
    assert len(errors) == 7 and all(isinstance(e, StorageConflict) for e in errors)
    assert store.get_resource("repo/key/a").release_count == 1  # type: ignore[union-attr]


# -- counters --------------------------------------------------------------------------------


def test_counter_compare_and_increment(store: KbsStore) -> None:
    assert store.get_counter("fl/round") is None
    with pytest.raises(StorageConflict):  # a new counter starts at 0
        store.compare_and_increment("fl/round", 1, D1)
    assert store.get_counter("fl/round") is None
    assert store.compare_and_increment("fl/round", 0, D1) == 1
    assert store.get_counter("fl/round") == (1, D1)
    for stale in (0, 2, 7):
        with pytest.raises(StorageConflict):
            store.compare_and_increment("fl/round", stale, D3)
    assert store.compare_and_increment("fl/round", 1, D2) == 2
    assert store.get_counter("fl/round") == (2, D2)
    assert store.get_counter("other") is None


@pytest.mark.parametrize("start", [0, 1], ids=["create", "update"])
def test_concurrent_compare_and_increment_exactly_one_winner(store: KbsStore, start: int) -> None:
    if start:
        store.compare_and_increment("c", 0, D1)
    results, errors = _race(8, lambda i: store.compare_and_increment("c", start, bytes([i]) * 32))
    assert results == [start + 1]
    assert len(errors) == 7 and all(isinstance(e, StorageConflict) for e in errors)
    value, digest = store.get_counter("c")  # type: ignore[misc]
    assert value == start + 1 and digest[0] in range(8)


# -- sessions --------------------------------------------------------------------------------


def test_session_lifecycle(store: KbsStore) -> None:
    nonce = secrets.token_bytes(32)
    created = store.create_session("sid-1", nonce, "sgx", T0 + timedelta(seconds=60))
    assert store.get_session("sid-1") == created
    assert not created.consumed and created.token_digest is None
    with pytest.raises(StorageConflict):
        store.create_session("sid-1", nonce, "sgx", T0 + timedelta(seconds=60))
    with pytest.raises(StorageConflict, match="not consumed"):
        store.bind_token("sid-1", D1, "{}", T0 + timedelta(minutes=5))
    used = store.consume_nonce("sid-1", T0)
    assert used.consumed and used.nonce == nonce and used.tee == "sgx"
    with pytest.raises(StorageConflict, match="already consumed"):
        store.consume_nonce("sid-1", T0)
    bound = store.bind_token("sid-1", D1, '{"ear.status":"affirming"}', T0 + timedelta(minutes=5))
    assert bound.token_digest == D1 and bound.claims_json == '{"ear.status":"affirming"}'
    assert bound.token_expires_at == T0 + timedelta(minutes=5)
    assert store.get_session("sid-1") == bound
    with pytest.raises(StorageConflict, match="already bound"):
        store.bind_token("sid-1", D2, "{}", T0 + timedelta(minutes=5))


def test_expired_and_unknown_sessions(store: KbsStore) -> None:
    store.create_session("sid-x", b"n" * 32, "emulated-sgx", T0)
    with pytest.raises(StorageExpired):
        store.consume_nonce("sid-x", T0)  # at expiry: expired
    with pytest.raises(StorageExpired):
        store.consume_nonce("sid-x", T0 + timedelta(hours=1))
    assert not store.get_session("sid-x").consumed  # type: ignore[union-attr]
    with pytest.raises(StorageNotFound):
        store.consume_nonce("nope", T0)
    with pytest.raises(StorageNotFound):
        store.bind_token("nope", D1, "{}", T0)
    assert store.get_session("nope") is None


def test_concurrent_nonce_consumption_single_use(store: KbsStore) -> None:
    store.create_session("sid-r", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    results, errors = _race(8, lambda _i: store.consume_nonce("sid-r", T0))
    assert len(results) == 1 and results[0].consumed
    assert len(errors) == 7 and all(isinstance(e, StorageConflict) for e in errors)


def test_purge_sessions(store: KbsStore) -> None:
    store.create_session("old", b"n" * 32, "sgx", T0)
    store.create_session("fresh", b"n" * 32, "sgx", T0 + timedelta(hours=2))
    store.create_session("tok", b"n" * 32, "sgx", T0 - timedelta(minutes=1))
    store.consume_nonce("tok", T0 - timedelta(minutes=2))
    store.bind_token("tok", D1, "{}", T0 + timedelta(hours=2))
    assert store.purge_sessions(T0 + timedelta(hours=1)) == 1
    assert store.get_session("old") is None
    assert store.get_session("fresh") is not None and store.get_session("tok") is not None


# -- audit -----------------------------------------------------------------------------------


def test_audit_append_read_and_data_round_trip(store: KbsStore) -> None:
    key = Ed25519PrivateKey.generate()
    log = AuditLog(store, key, _clock())
    assert store.last_audit() is None and store.audit_entries() == []
    data = {"digest": "ab" * 32, "nested": {"ünïcode": ["✓", 1, 2.5, True, None]}, "n": -3}
    e1 = log.append("agreement", "federation", "accept", ["all parties signed"], data)
    e2 = log.append("attestation", "sid-1", "deny", ["mrenclave mismatch", "debug enclave"])
    e3 = log.append("release", "repo/key/a", "accept")
    assert store.last_audit() == e3
    assert store.audit_entries() == [e1, e2, e3]
    assert store.audit_entries(after_seq=1, limit=1) == [e2]
    assert store.audit_entries(after_seq=3) == []
    assert store.audit_entries()[0].data == data
    verify_audit_chain(store.audit_entries(), key.public_key())


def test_audit_append_conflicts(store: KbsStore) -> None:
    with pytest.raises(StorageConflict):
        store.append_audit(_entry(2, GENESIS_HASH))  # must start at 1
    with pytest.raises(StorageConflict):
        store.append_audit(_entry(1, b"\x01" * 32))  # must link to genesis
    first = _entry(1, GENESIS_HASH)
    store.append_audit(first)
    for bad in (
        _entry(1, GENESIS_HASH),  # replayed seq
        _entry(3, first.hash),  # gap
        _entry(2, GENESIS_HASH),  # wrong link
    ):
        with pytest.raises(StorageConflict):
            store.append_audit(bad)
    store.append_audit(_entry(2, first.hash))
    assert [e.seq for e in store.audit_entries()] == [1, 2]


def test_concurrent_audit_append_exactly_one_winner(store: KbsStore) -> None:
    results, errors = _race(6, lambda _i: store.append_audit(_entry(1, GENESIS_HASH)))
    assert len(results) == 1
    assert len(errors) == 5 and all(isinstance(e, StorageConflict) for e in errors)
    assert len(store.audit_entries()) == 1


def test_concurrent_audit_logs_retry_and_chain(backend: Backend, store: KbsStore) -> None:
    """Two writers (as two KBS processes would) interleave; retries keep one valid chain."""
    key = Ed25519PrivateKey.generate()
    other = store if backend.name == "memory" else backend.open()
    logs = [AuditLog(s, key, _clock(), max_attempts=200) for s in (store, other)]
    _results, errors = _race(
        2, lambda i: [logs[i].append("counter", f"w{i}", "info") for _ in range(10)]
    )
    if other is not store:
        other.close()
    assert errors == []
    entries = store.audit_entries()
    assert len(entries) == 20
    verify_audit_chain(entries, key.public_key())


# -- durability ------------------------------------------------------------------------------


def test_everything_survives_reopen(sql_backend: Backend) -> None:
    key = Ed25519PrivateKey.generate()
    s = sql_backend.open()
    s.append_agreement(1, D1, b"agreement", T0)
    _put(s)
    s.record_release("repo/key/a", 0)
    s.compare_and_increment("c", 0, D2)
    s.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    s.consume_nonce("sid", T0)
    log = AuditLog(s, key, _clock())
    for i in range(5):
        log.append("release", f"repo/key/{i}", "accept", [], {"i": i})
    before = s.audit_entries()
    s.close()

    s = sql_backend.open()  # migrations again: idempotent
    try:
        assert [a.digest for a in s.agreement_history()] == [D1]
        assert s.get_resource("repo/key/a").release_count == 1  # type: ignore[union-attr]
        assert s.get_counter("c") == (1, D2)
        assert s.get_session("sid").consumed  # type: ignore[union-attr]
        after = s.audit_entries()
        assert after == before
        verify_audit_chain(after, key.public_key())
        AuditLog(s, key, _clock()).append("info", "reopened", "info")
        verify_audit_chain(s.audit_entries(), key.public_key())
    finally:
        s.close()


def test_concurrent_open_migrates_once(sql_backend: Backend) -> None:
    results, errors = _race(4, lambda _i: sql_backend.open())
    assert errors == []
    results[0].compare_and_increment("c", 0, D1)
    assert all(r.get_counter("c") == (1, D1) for r in results)
    for r in results:
        r.close()


_CRASH_CHILD = """
import sys
from datetime import UTC, datetime, timedelta
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from teeflow.kbs.service.audit import AuditLog
from teeflow.kbs.store import open_store
key = load_pem_private_key(sys.stdin.buffer.read(), None)
store = open_store(sys.argv[1], bytes(range(32)))
log = AuditLog(store, key, lambda: datetime.now(UTC))
for i in range(100000):
    store.put_resource(f"repo/key/{i}", "alice", wrapped_key=b"k", grant=b"g",
                       grant_digest=bytes(32), not_after=None, max_releases=None,
                       created_at=datetime.now(UTC))
    log.append("resource", f"repo/key/{i}", "accept")
    print(i, flush=True)
"""


def test_acknowledged_writes_survive_sigkill(sql_backend: Backend) -> None:
    """A writer is SIGKILLed mid-burst: every write it acknowledged is present afterwards."""
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    open_store(sql_backend.url, STORAGE_KEY).close()  # migrate first
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, sql_backend.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(pem)
    child.stdin.close()
    acked = -1
    for line in child.stdout:
        acked = int(line)
        if acked >= 40:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert acked >= 40
    s = sql_backend.open()
    try:
        for i in range(acked + 1):
            assert s.get_resource(f"repo/key/{i}") is not None
        entries = s.audit_entries(limit=10_000)
        assert len(entries) >= acked + 1
        verify_audit_chain(entries, key.public_key())
    finally:
        s.close()


# -- bounds ----------------------------------------------------------------------------------

_BIG = MAX_AGREEMENT_BYTES + 1


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.append_agreement(1, D1, b"x" * _BIG, T0),
        lambda s: s.append_agreement(1, b"short", b"doc", T0),
        lambda s: s.append_agreement(1, b"x" * 65, b"doc", T0),
        lambda s: s.append_agreement(1, D1, b"", T0),
        lambda s: s.append_agreement(True, D1, b"doc", T0),
        lambda s: s.append_agreement(1, D1, b"doc", datetime(2026, 1, 1)),  # naive
        lambda s: s.append_agreement(1, D1, "doc", T0),
        lambda s: _put(s, wrapped_key=b"k" * (MAX_WRAPPED_KEY_BYTES + 1)),
        lambda s: _put(s, grant=b"g" * (MAX_GRANT_BYTES + 1)),
        lambda s: _put(s, path="p" * (MAX_PATH_CHARS + 1)),
        lambda s: _put(s, path="a\x00b"),
        lambda s: _put(s, owner=""),
        lambda s: _put(s, max_releases=-1),
        lambda s: s.compare_and_increment("c", -1, D1),
        lambda s: s.compare_and_increment("c" * 300, 0, D1),
        lambda s: s.compare_and_increment("c", 0, b"d"),
        lambda s: s.create_session("sid", b"n" * 65, "sgx", T0),
        lambda s: s.create_session("sid", b"n" * 8, "sgx", T0),
        lambda s: s.create_session("sid", b"n" * 32, "t" * 33, T0),
        lambda s: s.create_session("\ud800", b"n" * 32, "sgx", T0),
        lambda s: s.audit_entries(limit=0),
        lambda s: s.audit_entries(limit=10**6),
        lambda s: s.append_audit(_entry(1, GENESIS_HASH, data={"x": "y" * MAX_AUDIT_DATA_BYTES})),
        lambda s: s.append_audit(_entry(1, GENESIS_HASH, data={"x": b"bytes"})),
        lambda s: s.append_audit(_entry(1, GENESIS_HASH, hash=b"short")),
        lambda s: s.append_audit(_entry(1, GENESIS_HASH, kind="k" * 33)),
    ],
)
def test_out_of_bounds_inputs_rejected(store: KbsStore, call: Callable[[KbsStore], Any]) -> None:
    with pytest.raises(StorageInputError):
        call(store)
    assert store.current_agreement() is None
    assert store.get_resource("repo/key/a") is None
    assert store.get_counter("c") is None
    assert store.get_session("sid") is None
    assert store.last_audit() is None


def test_oversized_claims_rejected(store: KbsStore) -> None:
    store.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    store.consume_nonce("sid", T0)
    with pytest.raises(StorageInputError):
        store.bind_token("sid", D1, "x" * (MAX_CLAIMS_BYTES + 1), T0)
    assert store.get_session("sid").token_digest is None  # type: ignore[union-attr]


def test_errors_are_kbs_errors(store: KbsStore) -> None:
    store.append_agreement(1, D1, b"doc", T0)
    with pytest.raises(KbsError) as info:
        store.append_agreement(2, D1, b"doc", T0)
    text = str(info.value)
    assert "INSERT" not in text and "SELECT" not in text and "doc" not in text.split()


# -- SQL specifics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "level"), [("", 1), ("?synchronous=normal", 1), ("?synchronous=FULL", 2)]
)
def test_sqlite_is_wal_with_configured_sync(tmp_path: Path, query: str, level: int) -> None:
    from teeflow.kbs.store.sql import SqlStore

    s = open_store(f"sqlite:///{tmp_path / 'k.db'}{query}", STORAGE_KEY)
    assert isinstance(s, SqlStore) and s.relaxed_sync == (level == 1)
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level  # 1 NORMAL, 2 FULL
    s.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_sqlite_durable_operations_commit_with_full_sync(tmp_path: Path, sync: str) -> None:
    """Agreements, resources and counters fsync their commit (FULL) even in normal mode;
    sessions, releases and audit entries commit at the configured level."""
    from sqlalchemy import event

    from teeflow.kbs.store.sql import SqlStore

    s = open_store(f"sqlite:///{tmp_path / 'k.db'}?synchronous={sync}", STORAGE_KEY)
    assert isinstance(s, SqlStore)
    seen: list[int] = []

    @event.listens_for(s.engine, "commit")
    def _level(conn: Any) -> None:
        raw = conn.connection.dbapi_connection
        seen.append(raw.execute("PRAGMA synchronous").fetchone()[0])

    base = 1 if sync == "normal" else 2
    try:
        for op, level in [
            (lambda: s.append_agreement(1, D1, b"doc", T0), 2),
            (lambda: _put(s), 2),
            (lambda: s.compare_and_increment("c", 0, D2), 2),
            (lambda: s.record_release("repo/key/a", 0), base),
            (lambda: s.create_session("sid", b"n" * 32, "sgx", T0 + timedelta(minutes=1)), base),
            (lambda: s.append_audit(_entry(1, GENESIS_HASH)), base),
        ]:
            seen.clear()
            op()
            assert seen[-1] == level
            with s.engine.connect() as conn:  # the pooled connection is back at the default
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == base
    finally:
        s.close()


def test_synchronous_parameter_is_checked() -> None:
    for url in ["sqlite:///x.db?synchronous=off", "sqlite:///x.db?synchronous=extra",
                "postgresql+psycopg://h/db?synchronous=full"]:
        with pytest.raises(StorageInputError):
            open_store(url, STORAGE_KEY)


def _script_head() -> str:
    """The single head revision of the shipped migrations (two heads fail here)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from teeflow.kbs.store.sql import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_migrations_match_tables(sql_backend: Backend) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from teeflow.kbs.store._engine import (
        metadata,
    )
    from teeflow.kbs.store.sql import (
        VERSION_TABLE,
        SqlStore,
    )

    s = sql_backend.open()
    assert isinstance(s, SqlStore)
    with s.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert ctx.get_current_revision() == _script_head()
        assert compare_metadata(ctx, metadata) == []
    s.close()


def test_bad_urls_rejected() -> None:
    for url in [
        "",
        "mysql://x/y",
        "sqlite://",
        "sqlite:///:memory:",
        "not a url",
        "memory",
        "postgresql+psycopg2://h/db",
        "postgresql+asyncpg://h/db",
        "sqlite+aiosqlite:///x.db",
    ]:
        with pytest.raises(StorageInputError):
            open_store(url, STORAGE_KEY)


def test_unreachable_database_error_hides_password() -> None:
    with pytest.raises(StorageError) as info:
        open_store(
            "postgresql+psycopg://user:hunter2secret@127.0.0.1:1/db?connect_timeout=2",
            STORAGE_KEY,
        )
    assert "hunter2secret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_memory_store_is_a_kbs_store() -> None:
    assert isinstance(MemoryStore(), KbsStore)
    assert isinstance(open_store("memory://"), MemoryStore)
    s = MemoryStore()
    s.close()
    with pytest.raises(StorageError):
        s.get_counter("c")


def test_audit_entry_normalised_time(store: KbsStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    e = _entry(1, GENESIS_HASH, time=T0.astimezone(plus2))
    store.append_audit(e)
    got = store.last_audit()
    assert got is not None and got.time == T0 and got.time.tzinfo == UTC
    assert replace(got, time=e.time) == e
