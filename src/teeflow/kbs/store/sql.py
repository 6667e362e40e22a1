"""SQL :class:`~teeflow.kbs.store.interface.KbsStore` on SQLAlchemy 2 Core: SQLite and PostgreSQL.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and
``postgresql+psycopg://user:password@host:port/db`` (``postgresql://`` is taken to mean
psycopg 3). A PostgreSQL schema other than the default is chosen with libpq options, e.g.
``...?options=-csearch_path%3Dkbs``.

Durability (DESIGN, security invariant 5). A method returns only after its transaction
committed. Every SQLite connection is put in WAL mode with ``foreign_keys=ON`` and a 30 s busy
timeout by a connect-event listener; its ``synchronous`` level comes from the URL,
``sqlite:///kbs.db?synchronous=normal`` (the default) or ``?synchronous=full``:

* ``full`` - every commit is fsync'ed to the WAL before it returns: each acknowledged write
  survives a process crash, an OS crash and a power loss. Costs one fsync per write
  transaction (about 3 ms on the reference machine: at most ~300 writes/s, one at a time).
* ``normal`` (default) - a commit is written to the WAL (in the OS page cache) before it
  returns, so it survives a crash or SIGKILL of the KBS process; the WAL is fsync'ed before
  each checkpoint (about every 1000 pages) and by every *durable* operation: agreements
  (:meth:`SqlStore.append_agreement`), resource uploads with their grants
  (:meth:`SqlStore.put_resource`) and counter steps (:meth:`SqlStore.compare_and_increment`)
  still commit with ``synchronous=FULL``, which also makes every earlier commit durable. An
  OS crash or power loss can therefore lose only the newest *non-durable* commits - RCAR
  sessions, nonce consumptions, tokens, release counts and the audit entries written with
  them - never a grant, an agreement, a counter step, nor the audit entry committed with it;
  the database stays consistent (SQLite rolls the WAL back to its last valid commit) and
  the audit chain stays valid, only shorter. A lost release count can let a grant's
  ``max_releases`` be exceeded by the releases lost in that window; parties that saw the lost
  state see the KBS state head go back and refuse it as a rollback
  (:mod:`teeflow.kbs.service.heads`), exactly as they refuse a host restoring an old file.

PostgreSQL keeps its default durable commit (``synchronous_commit=on``, ``fsync=on``): every
acknowledged write survives a power loss; concurrent commits share fsyncs (group commit).

Atomicity: preconditions are checked inside one transaction. SQLite write transactions start
with ``BEGIN IMMEDIATE`` (one writer at a time; no lock upgrade deadlocks); on PostgreSQL
(READ COMMITTED) compare-and-set steps are single conditional ``UPDATE ... WHERE`` statements
whose row count decides success, rows read before a write are locked ``FOR UPDATE``, and
append-only tables rely on their primary key (a concurrent append of the same version / seq
fails with a unique violation, reported as :class:`StorageConflict`). Audit appends take a
transaction-scoped advisory lock on PostgreSQL (SQLite's writer lock already serialises them),
and the audited writes (``*_and_audit``, ``append_audit_built``) read the chain head and insert
the entry inside the same transaction as their state change (retried as a whole, bounded, if
the insert still loses a race).

Schema: created and upgraded by the Alembic migrations in ``migrations/`` (version table
``kbs_alembic_version``), run to head by :func:`open_sql_store`. Migrations are serialised
between processes: on SQLite by the ``BEGIN IMMEDIATE`` write lock, on PostgreSQL by a
transaction-scoped advisory lock.

Integrity: every row is tagged and checked (:mod:`teeflow.kbs.store.rows`,
:mod:`teeflow.kbs.store._codec`). A row is changed only by a compare-and-set on its old tag
(``UPDATE ... WHERE pk = :pk AND tag = :old``) after it was read and verified in the same
transaction (locked ``FOR UPDATE`` on PostgreSQL), so a concurrent writer makes the update
miss (a conflict), never mixes two versions. :func:`open_sql_store` runs
:meth:`SqlStore.check_state` before returning. SQLite database files are created 0600 in a
directory made 0700 when it does not exist.

Error hygiene: engines are created with ``hide_parameters=True`` and driver errors are
re-raised as :class:`StorageError` / :class:`StorageConflict` naming only the error class,
never SQL text, bound values or the connection URL.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from teeflow._fs import ensure_private_dir
from teeflow.kbs.store import _codec as codec
from teeflow.kbs.store import _statements as q
from teeflow.kbs.store import _validate as validate
from teeflow.kbs.store._engine import (
    MIGRATIONS_DIR,
    SQLITE_BEGIN_OPTION,
    SQLITE_SYNC_OPTION,
    VERSION_TABLE,
    agreements,
    audit,
    counters,
    enrollments,
    make_engine,
    metadata,
    migrate,
    resources,
    sessions,
)
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
    StorageInputError,
    StorageNotFound,
    TokenBinding,
)
from teeflow.kbs.store.rows import RowAuth

__all__ = ["MIGRATIONS_DIR", "VERSION_TABLE", "SqlStore", "metadata", "open_sql_store"]

T = TypeVar("T")
#: PostgreSQL transaction-scoped advisory lock serialising audit appends ("teeflowA").
_PG_AUDIT_LOCK = 0x746565666C6F7741
#: Most resource rows kept as this process's verified copies (all dropped when full).
_MAX_CACHED_ROWS = 4096
#: How often an audited write is retried when its audit insert lost a race.
_AUDIT_ATTEMPTS = 16


class _AuditRace(StorageError):
    """The audit insert of an audited write lost a race (retried by :meth:`SqlStore._audited`)."""


def _prepare_sqlite_file(url: str) -> None:
    """Create a SQLite database file 0600 (its directory 0700 when it does not exist) before
    SQLite does, and tighten an existing file to 0600; no-op for other URLs.

    Raises:
        StorageError: the file or directory cannot be created.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return  # make_engine reports the malformed URL
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return
    path = os.path.abspath(str(parsed.database))
    try:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            ensure_private_dir(parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot create the KBS database file ({exc.strerror})") from None


def open_sql_store(url: str, storage_key: bytes) -> SqlStore:
    """Open (creating or upgrading the schema with Alembic) a SQLite or PostgreSQL store and
    check it against its state log (:meth:`SqlStore.check_state`).

    Args:
        url: ``sqlite:///path`` or ``postgresql+psycopg://...`` (see the module docstring).
        storage_key: the KBS storage key (32 bytes) its rows are authenticated under.

    Raises:
        StorageInputError: unsupported or malformed URL, or a bad key.
        StorageError: the database is unreachable or the migration failed (the message names
            only the error class, never the URL or password).
        StorageTampered, StorageRollback: the stored state fails :meth:`SqlStore.check_state`.
    """
    auth = RowAuth(storage_key)
    engine = make_engine(url)  # validates the URL; connects later
    try:
        _prepare_sqlite_file(url)
    except BaseException:
        engine.dispose()
        raise
    try:
        migrate(engine)
        store = SqlStore(engine, auth)
        store.check_state()
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StorageError(f"cannot open the KBS database ({type(exc).__name__})") from None
    except BaseException:
        engine.dispose()
        raise
    return store


def _row(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


class SqlStore:
    """:class:`KbsStore` over a SQLAlchemy :class:`Engine` already migrated to head.

    Use :func:`open_sql_store` (or :func:`teeflow.kbs.store.open_store`) to get one.
    See :class:`teeflow.kbs.store.interface.KbsStore` for every method's contract.

    Args:
        engine: the migrated engine.
        auth: the row authenticator (storage key).
    """

    def __init__(self, engine: Engine, auth: RowAuth) -> None:
        if not isinstance(auth, RowAuth):
            raise StorageInputError("a SQL store needs the KBS storage key")
        self.engine = engine
        self._auth = auth
        self._seen = codec.Seen()
        self._local = threading.local()
        #: resource path -> the row this process last wrote (verified by construction)
        self._rows: dict[str, dict[str, Any]] = {}
        #: (version, tag) -> digest of the newest agreement row verified in this process
        self._agreement_tag: tuple[int, bytes, bytes] | None = None
        #: session id -> (record, tag) of sessions this process created and not yet consumed
        self._new_sessions: dict[str, tuple[SessionRecord, bytes]] = {}
        name = engine.dialect.name
        self._postgres = name == "postgresql"
        #: SQLite in ``synchronous=normal``: durable operations switch to FULL for their commit
        self.relaxed_sync = (
            name == "sqlite" and engine.get_execution_options().get(SQLITE_SYNC_OPTION) == "normal"
        )
        self._write_lock = threading.Lock() if name == "sqlite" else None
        #: (seq, hash) of the newest audit entry this process committed: an audited write
        #: appends after it without reading the head; the primary key on ``seq`` refuses
        #: the insert when another writer got there first, and the retry reads the head
        self._audit_head: tuple[int, bytes] | None = None
        self._head_lock = threading.Lock()

    @contextmanager
    def _tx(self, *, write: bool = True, durable: bool = False) -> Iterator[Connection]:
        """One transaction; ``durable`` commits with ``synchronous=FULL`` on a relaxed SQLite.

        SQLite admits one writer at a time; a writer that finds the database locked polls
        with sleeps of up to 100 ms (the busy handler). Writers of this process therefore
        queue on a lock first, so only other processes ever meet the busy handler.
        """
        self._local.notes, self._local.appended = [], None
        try:
            if write and self._write_lock is not None:
                with self._write_lock:
                    with self._tx_unlocked(write=True, durable=durable) as conn:
                        yield conn
                    self._committed_head()  # before the next writer of this process
            else:
                with self._tx_unlocked(write=write, durable=durable) as conn:
                    yield conn
                self._committed_head()
            for key, seq, version, row in self._local.notes:  # committed: remember them
                # after the commit and the write lock: another writer may have moved the
                # row on already, so remember (never check) what this one wrote
                self._seen.remember(key, seq, version)
                if row is not None:
                    if len(self._rows) >= _MAX_CACHED_ROWS:
                        self._rows.clear()
                    self._rows[row["path"]] = row
        finally:
            self._local.notes, self._local.appended = [], None

    def _committed_head(self) -> None:
        """Remember the audit entry the committed transaction appended (never lower)."""
        head = getattr(self._local, "appended", None)
        if head is None:
            return
        self._local.appended = None
        with self._head_lock:
            if self._audit_head is None or head[0] > self._audit_head[0]:
                self._audit_head = head

    def _note(
        self, key: str, seq: int, version: int = 0, *, row: dict[str, Any] | None = None
    ) -> None:
        """Remember a row written in the current transaction once it commits (``row``: a
        resource row to keep as this process's verified copy)."""
        self._local.notes.append((key, seq, version, row))

    @contextmanager
    def _tx_unlocked(self, *, write: bool, durable: bool) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if not write:
                    conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
                raw = conn.connection.dbapi_connection if durable and self.relaxed_sync else None
                if raw is None:
                    with conn.begin():
                        yield conn
                    return
                raw.execute("PRAGMA synchronous=FULL")  # isolation_level None: no implicit BEGIN
                try:
                    with conn.begin():
                        yield conn
                finally:
                    raw.execute("PRAGMA synchronous=NORMAL")
        except StorageError:
            raise
        except IntegrityError:
            raise StorageConflict("a concurrent write won (unique constraint)") from None
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"database error ({type(exc).__name__})") from None

    def _head_seq(self, c: Connection) -> int:
        last = c.execute(q.AUDIT_HEAD).first()
        return 0 if last is None else int(last.seq)

    def _audited(
        self,
        work: Callable[[Connection, int], T],
        build: AuditBuilder,
        touches: str | None,
        *,
        durable: bool = False,
    ) -> tuple[T, AuditEntry]:
        """``work(conn, seq of the new entry)`` then the entry ``build`` makes, in one write
        transaction; retried as a whole (bounded) when the audit insert lost a race. SQLite
        holds the write lock (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped
        advisory lock first, so audit writers queue instead of conflicting."""
        cached = True
        for _ in range(_AUDIT_ATTEMPTS):
            try:
                with self._tx(durable=durable) as c:
                    if self._postgres:
                        c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
                    known = self._audit_head if cached else None
                    if known is None:
                        last = c.execute(q.AUDIT_HEAD).first()
                        known = (0, GENESIS_HASH) if last is None else (
                            int(last.seq), bytes(last.hash))  # fmt: skip
                    seq, prev = known[0] + 1, known[1]
                    result = work(c, seq)
                    e, reasons_text, data_text = validate.built_entry(build(seq, prev), seq, prev)
                    built = codec.AuditRow(e, reasons_text, data_text, touches)
                    try:
                        c.execute(q.AUDIT_INSERT, codec.audit_row(self._auth, built))
                    except IntegrityError:
                        raise _AuditRace("audit head moved") from None
                    self._local.appended = (e.seq, e.hash)
                return result, codec.built_entry(built)
            except _AuditRace:
                cached = False  # another writer appended: read the head
                continue
        raise StorageConflict("audit append kept conflicting with other writers")

    # -- agreements ---------------------------------------------------------------------
    def _append_agreement(self, c: Connection, rec: AgreementRecord, seq: int) -> AgreementRecord:
        last = self._current(c)
        expected = 1 if last is None else last.version + 1
        if rec.version != expected:
            raise StorageConflict(f"agreement version must be {expected}")
        dup = c.execute(select(agreements.c.version).where(agreements.c.digest == rec.digest))
        if dup.first() is not None:
            raise StorageConflict("agreement digest already in the history")
        c.execute(q.AGREEMENT_INSERT, codec.agreement_row(self._auth, rec, seq))
        self._note(codec.touch_key(codec.AGREEMENTS, rec.version), seq, rec.version)
        return rec

    def append_agreement(
        self, version: int, digest: bytes, document: bytes, created_at: datetime
    ) -> AgreementRecord:
        """See :meth:`KbsStore.append_agreement`."""
        rec = validate.agreement(version, digest, document, created_at)
        with self._tx(durable=True) as c:
            return self._append_agreement(c, rec, self._head_seq(c))

    def append_agreement_and_audit(
        self,
        version: int,
        digest: bytes,
        document: bytes,
        created_at: datetime,
        build: AuditBuilder,
    ) -> tuple[AgreementRecord, AuditEntry]:
        """See :meth:`KbsStore.append_agreement_and_audit`."""
        rec = validate.agreement(version, digest, document, created_at)
        validate.builder(build)
        touches = codec.touch_key(codec.AGREEMENTS, rec.version)
        return self._audited(
            lambda c, seq: self._append_agreement(c, rec, seq), build, touches, durable=True
        )

    def _current(self, c: Connection, *, fresh: bool = True) -> AgreementRecord | None:
        """The newest agreement; ``fresh`` (inside a write transaction, which sees the latest
        commit) also checks it against the rollback memory - a plain read's snapshot may
        legitimately predate a concurrent commit."""
        row = c.execute(q.CURRENT_AGREEMENT).first()
        if row is None:
            if fresh:
                self._seen.check_agreement(0)
            return None
        data = _row(row)
        rec = codec.agreement_record(self._auth, data)
        self._agreement_tag = (rec.version, bytes(data["tag"]), rec.digest)
        if fresh:
            self._seen.check(codec.touch_key(codec.AGREEMENTS, rec.version), data["audit_seq"])
            self._seen.check_agreement(rec.version)
        return rec

    def current_agreement(self) -> AgreementRecord | None:
        """See :meth:`KbsStore.current_agreement`."""
        with self._tx(write=False) as c:
            return self._current(c, fresh=False)

    def agreement_history(self) -> list[AgreementRecord]:
        """See :meth:`KbsStore.agreement_history`."""
        with self._tx(write=False) as c:
            rows = c.execute(select(agreements).order_by(agreements.c.version)).all()
        return [codec.agreement_record(self._auth, _row(r)) for r in rows]

    # -- resources ----------------------------------------------------------------------
    def _resource_row(self, c: Connection, path: str, *, lock: bool) -> dict[str, Any] | None:
        stmt = q.GET_RESOURCE_FOR_UPDATE if lock and self._postgres else q.GET_RESOURCE
        row = c.execute(stmt, {"b_path": path}).first()
        return None if row is None else _row(row)

    def _resource(self, row: dict[str, Any], *, fresh: bool = True) -> ResourceRecord:
        rec = codec.resource_record(self._auth, row)
        if fresh:  # see _current
            self._seen.check(codec.touch_key(codec.RESOURCES, rec.path), row["audit_seq"])
        return rec

    def _cas(self, c: Connection, stmt: Any, key: dict[str, Any], new: dict[str, Any]) -> None:
        """Replace a verified row (``key``: ``b_*`` primary key and ``b_old`` tag)."""
        if c.execute(stmt, {**key, **new}).rowcount != 1:
            raise StorageConflict("the row was changed concurrently")

    def _put(self, c: Connection, rec: ResourceRecord, seq: int) -> ResourceRecord:
        old = self._resource_row(c, rec.path, lock=True)
        if old is None:
            written = codec.resource_row(self._auth, rec, seq)
            c.execute(q.RESOURCE_INSERT, written)
        else:
            previous = self._resource(old)
            if previous.owner != rec.owner:
                raise StorageConflict("resource belongs to another owner")
            rec = ResourceRecord(**{**_fields(rec), "generation": previous.generation + 1})
            written = codec.resource_row(self._auth, rec, seq)
            new = {k: v for k, v in written.items() if k != "path"}
            self._cas(c, q.RESOURCE_CAS, {"b_path": rec.path, "b_old": old["tag"]}, new)
        self._note(codec.touch_key(codec.RESOURCES, rec.path), seq, row=written)
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
        rec = validate.resource(
            path,
            owner,
            wrapped_key=wrapped_key,
            grant=grant,
            grant_digest=grant_digest,
            not_after=not_after,
            max_releases=max_releases,
            created_at=created_at,
        )
        with self._tx(durable=True) as c:
            return self._put(c, rec, self._head_seq(c))

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
        rec = validate.resource(
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
        touches = codec.touch_key(codec.RESOURCES, rec.path)
        return self._audited(lambda c, seq: self._put(c, rec, seq), build, touches, durable=True)

    def get_resource(self, path: str) -> ResourceRecord | None:
        """See :meth:`KbsStore.get_resource`."""
        validate.path(path)
        with self._tx(write=False) as c:
            row = self._resource_row(c, path, lock=False)
        return None if row is None else self._resource(row, fresh=False)

    def record_release(
        self, path: str, expected_count: int, *, generation: int | None = None
    ) -> int:
        """See :meth:`KbsStore.record_release`."""
        validate.release(path, expected_count, generation)
        with self._tx() as c:
            return self._release(c, path, expected_count, generation, self._head_seq(c))

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

        def work(c: Connection, seq: int) -> int:
            self._check_agreement(c, required)
            return self._release(c, path, expected_count, generation, seq)

        return self._audited(work, build, touches)

    def _release(
        self, c: Connection, path: str, expected_count: int, generation: int | None, seq: int
    ) -> int:
        """Verified compare-and-increment inside ``c``; raises (the caller rolls back)."""
        # steady state: the row this process last wrote or verified, no read; the update is
        # a compare-and-set on its tag, so a row changed since (by anyone) makes it miss and
        # the row is read and verified afresh
        cached = self._rows.get(path)
        for candidate in (cached, None) if cached is not None else (None,):
            row = candidate
            if row is None:
                row = self._resource_row(c, path, lock=True)
                if row is None:
                    raise StorageNotFound("no such resource")
                codec.check_resource(self._auth, row)
                self._seen.check(codec.touch_key(codec.RESOURCES, path), row["audit_seq"])
            if generation is not None and int(row["generation"]) != generation:
                if row is cached:
                    continue
                raise StorageConflict("resource was replaced")
            budget, count = row["max_releases"], int(row["release_count"])
            if count != expected_count or (budget is not None and count >= int(budget)):
                if row is cached:
                    continue
                if budget is not None and count >= int(budget):
                    raise StorageConflict("release budget used up")
                raise StorageConflict("stale release count")
            new = codec.released_row(self._auth, row, seq)
            update = {k: new[k] for k in ("release_count", "audit_seq", "tag")}
            hit = c.execute(q.RESOURCE_CAS, {"b_path": path, "b_old": row["tag"], **update})
            if hit.rowcount == 1:
                self._note(codec.touch_key(codec.RESOURCES, path), seq, row=new)
                return expected_count + 1
            if row is not cached:
                raise StorageConflict("the row was changed concurrently")
        raise StorageConflict("stale release count")  # pragma: no cover - loop always returns

    def _check_agreement(self, c: Connection, digest: bytes | None) -> None:
        """Inside ``c``: the newest agreement has ``digest`` (no check when None)."""
        if digest is None:
            return
        head = c.execute(q.AGREEMENT_HEAD_TAG).first()
        known = self._agreement_tag
        if head is not None and known is not None and (head.version, bytes(head.tag)) == known[:2]:
            if known[2] != digest:  # the row this process verified, unchanged (same tag)
                raise StorageConflict("the active agreement changed")
            return
        current = self._current(c)
        if current is None or current.digest != digest:
            raise StorageConflict("the active agreement changed")

    # -- counters -----------------------------------------------------------------------
    def _counter(
        self, c: Connection, name: str, *, fresh: bool = True
    ) -> tuple[tuple[int, bytes], bytes] | None:
        stmt = q.GET_COUNTER_FOR_UPDATE if fresh and self._postgres else q.GET_COUNTER
        row = c.execute(stmt, {"b_name": name}).first()
        if row is None:
            return None
        data = _row(row)
        found = codec.counter_value(self._auth, data)
        if fresh:  # see _current
            self._seen.check(codec.touch_key(codec.COUNTERS, name), data["audit_seq"])
        return found, bytes(data["tag"])

    def get_counter(self, name: str) -> tuple[int, bytes] | None:
        """See :meth:`KbsStore.get_counter`."""
        validate.name("name", name)
        with self._tx(write=False) as c:
            found = self._counter(c, name, fresh=False)
        return None if found is None else found[0]

    def _step(self, c: Connection, name: str, expected: int, digest: bytes, seq: int) -> int:
        found = self._counter(c, name)
        if (0 if found is None else found[0][0]) != expected:
            raise StorageConflict("counter is not at the expected value")
        row = codec.counter_row(self._auth, name, expected + 1, digest, seq)
        if found is None:
            c.execute(q.COUNTER_INSERT, row)  # a concurrent insert: unique violation
        else:
            del row["name"]
            self._cas(c, q.COUNTER_CAS, {"b_name": name, "b_old": found[1]}, row)
        self._note(codec.touch_key(codec.COUNTERS, name), seq)
        return expected + 1

    def compare_and_increment(self, name: str, expected: int, new_digest: bytes) -> int:
        """See :meth:`KbsStore.compare_and_increment`."""
        digest = validate.counter_step(name, expected, new_digest)
        with self._tx(durable=True) as c:
            return self._step(c, name, expected, digest, self._head_seq(c))

    def compare_and_increment_and_audit(
        self, name: str, expected: int, new_digest: bytes, build: AuditBuilder
    ) -> tuple[int, AuditEntry]:
        """See :meth:`KbsStore.compare_and_increment_and_audit`."""
        digest = validate.counter_step(name, expected, new_digest)
        validate.builder(build)
        touches = codec.touch_key(codec.COUNTERS, name)
        return self._audited(
            lambda c, seq: self._step(c, name, expected, digest, seq), build, touches, durable=True
        )

    # -- sessions -----------------------------------------------------------------------
    def create_session(
        self, session_id: str, nonce: bytes, tee: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.create_session`."""
        rec = validate.session(session_id, nonce, tee, expires_at)
        row = codec.session_row(self._auth, rec)
        with self._tx() as c:  # a duplicate id violates the primary key: StorageConflict
            c.execute(q.SESSION_INSERT, row)
        if len(self._new_sessions) >= _MAX_CACHED_ROWS:
            self._new_sessions.clear()
        self._new_sessions[rec.session_id] = (rec, row["tag"])
        return rec

    def _session(
        self, c: Connection, session_id: str, *, lock: bool = False
    ) -> tuple[SessionRecord, bytes] | None:
        stmt = q.GET_SESSION_FOR_UPDATE if lock and self._postgres else q.GET_SESSION
        row = c.execute(stmt, {"b_sid": self._auth.session_key(session_id)}).first()
        if row is None:
            return None
        data = _row(row)
        return codec.session_record(self._auth, session_id, data), bytes(data["tag"])

    def _replace_session(self, c: Connection, old_tag: bytes, new: SessionRecord) -> None:
        row = codec.session_row(self._auth, new)
        key = {"b_sid": row.pop("session_hash"), "b_old": old_tag}
        self._cas(c, q.SESSION_CAS, key, row)

    def consume_nonce(self, session_id: str, now: datetime) -> SessionRecord:
        """See :meth:`KbsStore.consume_nonce`."""
        now = validate.consume(session_id, now)
        with self._tx() as c:
            return self._consume(c, session_id, now, None)

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

        touches = None if use is None else codec.touch_key(codec.ENROLLMENTS, use.key)

        def work(c: Connection, seq: int) -> SessionRecord:
            session = self._consume(c, session_id, now, binding)
            self._check_agreement(c, required)
            if use is not None:
                self._use_enrollment(c, use, seq)
            return session

        return self._audited(work, build, touches)

    # -- enrollments --------------------------------------------------------------------
    def _enrollment(
        self, c: Connection, key: str, *, fresh: bool = True
    ) -> tuple[EnrollmentRecord, bytes] | None:
        """The verified enrollment row of ``key`` and its tag (locked on PostgreSQL when
        ``fresh``); a row older than one this process saw, or missing although it saw it,
        raises StorageRollback."""
        stmt = q.GET_ENROLLMENT_FOR_UPDATE if fresh and self._postgres else q.GET_ENROLLMENT
        row = c.execute(stmt, {"b_key": key}).first()
        if row is None:
            if fresh:  # a row this process wrote or read was deleted
                self._seen.check_absent(codec.touch_key(codec.ENROLLMENTS, key))
            return None
        data = _row(row)
        rec = codec.enrollment_record(self._auth, data)
        if fresh:  # see _current
            self._seen.check(codec.touch_key(codec.ENROLLMENTS, key), data["audit_seq"])
        return rec, bytes(data["tag"])

    def _write_enrollment(
        self, c: Connection, old_tag: bytes | None, new: EnrollmentRecord, seq: int
    ) -> None:
        """Insert (``old_tag`` None) or compare-and-set the enrollment row under entry ``seq``."""
        row = codec.enrollment_row(self._auth, new, seq)
        if old_tag is None:
            c.execute(q.ENROLLMENT_INSERT, row)  # a concurrent insert: unique violation
        else:
            del row["key"]
            self._cas(c, q.ENROLLMENT_CAS, {"b_key": new.key, "b_old": old_tag}, row)
        self._note(codec.touch_key(codec.ENROLLMENTS, new.key), seq)

    def _use_enrollment(self, c: Connection, use: EnrollmentUse, seq: int) -> None:
        """Count one use of ``use.key`` inside ``c`` (audited writers are serialised, so the
        verified row is compare-and-set on its tag; a first use inserts it).

        Raises:
            EnrollmentUseRefused: revoked, or ``max_uses`` reached.
        """
        found = self._enrollment(c, use.key)
        old = EnrollmentRecord(use.key, 0, None, None) if found is None else found[0]
        if old.revoked_at is not None:
            raise EnrollmentUseRefused("revoked")
        if use.max_uses is not None and old.uses >= use.max_uses:
            raise EnrollmentUseRefused("exhausted")
        new = EnrollmentRecord(old.key, old.uses + 1, None, None)
        self._write_enrollment(c, None if found is None else found[1], new, seq)

    def get_enrollment(self, key: str) -> EnrollmentRecord | None:
        """See :meth:`KbsStore.get_enrollment`."""
        validate.name("key", key)
        with self._tx(write=False) as c:
            found = self._enrollment(c, key)
        return None if found is None else found[0]

    def revoke_enrollment_and_audit(
        self, key: str, revocation: bytes, now: datetime, build: AuditBuilder
    ) -> tuple[EnrollmentRecord, AuditEntry]:
        """See :meth:`KbsStore.revoke_enrollment_and_audit` (the row is rewritten under the
        new entry even when it was already revoked, so the state log names it)."""
        key, document, now = validate.revocation(key, revocation, now)
        validate.builder(build)
        touches = codec.touch_key(codec.ENROLLMENTS, key)

        def work(c: Connection, seq: int) -> EnrollmentRecord:
            found = self._enrollment(c, key)
            old = EnrollmentRecord(key, 0, None, None) if found is None else found[0]
            new = old
            if old.revoked_at is None:
                new = EnrollmentRecord(key, old.uses, now, document)
            self._write_enrollment(c, None if found is None else found[1], new, seq)
            return new

        return self._audited(work, build, touches, durable=True)

    def _consume(
        self, c: Connection, session_id: str, now: datetime, binding: TokenBinding | None
    ) -> SessionRecord:
        """Consume the nonce (and bind ``binding``) inside ``c``; raises on failure."""
        # a session this process created (unconsumed, as written): no read; the update is a
        # compare-and-set on its tag, which misses if anyone changed the row since
        found = self._new_sessions.pop(session_id, None)
        if found is not None and now < found[0].expires_at:
            new = _consumed(found[0], binding)
            row = codec.session_row(self._auth, new)
            key = {"b_sid": row.pop("session_hash"), "b_old": found[1]}
            if c.execute(q.SESSION_CAS, {**key, **row}).rowcount == 1:
                return new
        found = self._session(c, session_id, lock=True)
        if found is None:
            raise StorageNotFound("no such session")
        old, tag = found
        if old.consumed:
            raise StorageConflict("nonce already consumed")
        if now >= old.expires_at:
            raise StorageExpired("nonce expired")
        new = _consumed(old, binding)
        try:
            self._replace_session(c, tag, new)
        except StorageConflict:
            raise StorageConflict("nonce already consumed") from None
        return new

    def bind_token(
        self, session_id: str, token_digest: bytes, claims_json: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.bind_token`."""
        digest, expires = validate.token(session_id, token_digest, claims_json, expires_at)
        with self._tx() as c:
            found = self._session(c, session_id, lock=True)
            if found is None:
                raise StorageNotFound("no such session")
            old, tag = found
            if not old.consumed:
                raise StorageConflict("nonce not consumed yet")
            if old.token_digest is not None:
                raise StorageConflict("a token is already bound to the session")
            new = SessionRecord(
                session_id=old.session_id,
                nonce=old.nonce,
                tee=old.tee,
                expires_at=old.expires_at,
                consumed=True,
                token_digest=digest,
                claims_json=claims_json,
                token_expires_at=expires,
            )
            self._replace_session(c, tag, new)
        return new

    def get_session(self, session_id: str) -> SessionRecord | None:
        """See :meth:`KbsStore.get_session`."""
        validate.name("session_id", session_id)
        with self._tx(write=False) as c:
            found = self._session(c, session_id)
        return None if found is None else found[0]

    def purge_sessions(self, now: datetime) -> int:
        """See :meth:`KbsStore.purge_sessions`."""
        now = validate.time("now", now)
        s = sessions.c
        with self._tx() as c:
            res = c.execute(
                delete(sessions).where(
                    s.expires_at < now,
                    or_(s.token_expires_at.is_(None), s.token_expires_at < now),
                )
            )
        return int(res.rowcount)

    # -- audit --------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        """See :meth:`KbsStore.append_audit`."""
        e, reasons_text, data_text = validate.check_audit_entry(entry)
        with self._tx() as c:
            if self._postgres:
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
            last = c.execute(q.AUDIT_HEAD).first()
            expected_seq = 1 if last is None else int(last.seq) + 1
            expected_prev = GENESIS_HASH if last is None else bytes(last.hash)
            if e.seq != expected_seq:
                raise StorageConflict(f"audit seq must be {expected_seq}")
            if e.prev_hash != expected_prev:
                raise StorageConflict("audit prev_hash does not match the last entry")
            row = codec.audit_row(self._auth, codec.AuditRow(e, reasons_text, data_text, None))
            c.execute(q.AUDIT_INSERT, row)
            self._local.appended = (e.seq, e.hash)

    def append_audit_built(self, build: AuditBuilder) -> AuditEntry:
        """See :meth:`KbsStore.append_audit_built`."""
        validate.builder(build)
        return self._audited(lambda _c, _seq: None, build, None)[1]

    def audit_entries(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """See :meth:`KbsStore.audit_entries`."""
        after_seq, limit = validate.check_page(after_seq, limit)
        page = select(audit).where(audit.c.seq > after_seq).order_by(audit.c.seq).limit(limit)
        with self._tx(write=False) as c:
            rows = c.execute(page).all()
        return [codec.audit_entry(self._auth, _row(r)) for r in rows]

    def last_audit(self) -> AuditEntry | None:
        """See :meth:`KbsStore.last_audit`."""
        last = select(audit).order_by(audit.c.seq.desc()).limit(1)
        with self._tx(write=False) as c:
            row = c.execute(last).first()
        return None if row is None else codec.audit_entry(self._auth, _row(row))

    def check_state(self) -> AuditEntry | None:
        """See :meth:`KbsStore.check_state` (one read transaction; audit rows in pages)."""
        with self._tx(write=False) as c:
            if self._postgres:  # one snapshot for the log and the rows
                c.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))

            def audit_rows() -> Iterator[dict[str, Any]]:
                after = 0
                while True:
                    page = c.execute(
                        select(audit).where(audit.c.seq > after).order_by(audit.c.seq).limit(5000)
                    ).all()
                    for r in page:
                        yield _row(r)
                    if len(page) < 5000:
                        return
                    after = int(page[-1].seq)

            def state_rows() -> Iterator[tuple[str, dict[str, Any]]]:
                for table, name in (
                    (agreements, codec.AGREEMENTS),
                    (resources, codec.RESOURCES),
                    (counters, codec.COUNTERS),
                    (enrollments, codec.ENROLLMENTS),
                ):
                    for r in c.execute(select(table)):
                        yield name, _row(r)

            return codec.check_state(self._auth, audit_rows(), state_rows(), self._seen)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()


def _consumed(old: SessionRecord, binding: TokenBinding | None) -> SessionRecord:
    """``old`` with its nonce consumed and ``binding`` (if any) bound."""
    return SessionRecord(
        session_id=old.session_id,
        nonce=old.nonce,
        tee=old.tee,
        expires_at=old.expires_at,
        consumed=True,
        token_digest=None if binding is None else binding.token_digest,
        claims_json=None if binding is None else binding.claims_json,
        token_expires_at=None if binding is None else binding.expires_at,
    )


def _fields(rec: ResourceRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in ResourceRecord.__dataclass_fields__}
