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
  ``max_releases`` be exceeded by the releases lost in that window. (The untrusted host can
  roll the whole file back anyway: rollback protection of the store needs a TEE monotonic
  counter, which fsync does not give.)

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

Error hygiene: engines are created with ``hide_parameters=True`` and driver errors are
re-raised as :class:`StorageError` / :class:`StorageConflict` naming only the error class,
never SQL text, bound values or the connection URL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

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
    StorageNotFound,
    TokenBinding,
)

__all__ = ["MIGRATIONS_DIR", "VERSION_TABLE", "SqlStore", "metadata", "open_sql_store"]

T = TypeVar("T")
#: PostgreSQL transaction-scoped advisory lock serialising audit appends ("teeflowA").
_PG_AUDIT_LOCK = 0x746565666C6F7741
#: How often an audited write is retried when its audit insert lost a race.
_AUDIT_ATTEMPTS = 16


class _AuditRace(StorageError):
    """The audit insert of an audited write lost a race (retried by :meth:`SqlStore._audited`)."""


def open_sql_store(url: str) -> SqlStore:
    """Open (creating or upgrading the schema with Alembic) a SQLite or PostgreSQL store.

    Args:
        url: ``sqlite:///path`` or ``postgresql+psycopg://...`` (see the module docstring).

    Raises:
        StorageInputError: unsupported or malformed URL.
        StorageError: the database is unreachable or the migration failed (the message names
            only the error class, never the URL or password).
    """
    engine = make_engine(url)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StorageError(f"cannot open the KBS database ({type(exc).__name__})") from None
    except BaseException:
        engine.dispose()
        raise
    return SqlStore(engine)


class SqlStore:
    """:class:`KbsStore` over a SQLAlchemy :class:`Engine` already migrated to head.

    Use :func:`open_sql_store` (or :func:`teeflow.kbs.store.open_store`) to get one.
    See :class:`teeflow.kbs.store.interface.KbsStore` for every method's contract.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        name = engine.dialect.name
        self._postgres = name == "postgresql"
        #: SQLite in ``synchronous=normal``: durable operations switch to FULL for their commit
        self.relaxed_sync = (
            name == "sqlite" and engine.get_execution_options().get(SQLITE_SYNC_OPTION) == "normal"
        )
        self._write_lock = threading.Lock() if name == "sqlite" else None

    @contextmanager
    def _tx(self, *, write: bool = True, durable: bool = False) -> Iterator[Connection]:
        """One transaction; ``durable`` commits with ``synchronous=FULL`` on a relaxed SQLite.

        SQLite admits one writer at a time; a writer that finds the database locked polls
        with sleeps of up to 100 ms (the busy handler). Writers of this process therefore
        queue on a lock first, so only other processes ever meet the busy handler.
        """
        if write and self._write_lock is not None:
            with self._write_lock, self._tx_unlocked(write=True, durable=durable) as conn:
                yield conn
            return
        with self._tx_unlocked(write=write, durable=durable) as conn:
            yield conn

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

    def _audited(
        self, work: Callable[[Connection], T], build: AuditBuilder
    ) -> tuple[T, AuditEntry]:
        """``work(conn)`` then the audit entry ``build`` makes, in one write transaction;
        the whole transaction is retried (bounded) when the audit insert lost a race."""
        for _ in range(_AUDIT_ATTEMPTS):
            try:
                with self._tx() as c:
                    result = work(c)
                    entry = self._append_built(c, build)
                return result, entry
            except _AuditRace:
                continue
        raise StorageConflict("audit append kept conflicting with other writers")

    def _append_built(self, c: Connection, build: AuditBuilder) -> AuditEntry:
        """Insert ``build(next seq, head hash)`` inside the caller's transaction. SQLite holds
        the write lock (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock,
        so audit writers queue instead of conflicting."""
        if self._postgres:
            c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
        last = c.execute(q.AUDIT_HEAD).first()
        seq = 1 if last is None else int(last.seq) + 1
        prev = GENESIS_HASH if last is None else bytes(last.hash)
        e, reasons_text, data_text = validate.built_entry(build(seq, prev), seq, prev)
        try:
            c.execute(q.AUDIT_INSERT, q.audit_values(e, reasons_text, data_text))
        except IntegrityError:
            raise _AuditRace("audit head moved") from None
        return q.audit_entry(q.AuditRow(e, reasons_text, data_text))

    # -- agreements ---------------------------------------------------------------------
    def append_agreement(
        self, version: int, digest: bytes, document: bytes, created_at: datetime
    ) -> AgreementRecord:
        """See :meth:`KbsStore.append_agreement`."""
        rec = validate.agreement(version, digest, document, created_at)
        with self._tx(durable=True) as c:
            last = c.execute(select(func.max(agreements.c.version))).scalar()
            expected = int(last or 0) + 1
            if rec.version != expected:
                raise StorageConflict(f"agreement version must be {expected}")
            dup = c.execute(select(agreements.c.version).where(agreements.c.digest == rec.digest))
            if dup.first() is not None:
                raise StorageConflict("agreement digest already in the history")
            c.execute(
                insert(agreements).values(
                    version=rec.version,
                    digest=rec.digest,
                    document=rec.document,
                    created_at=rec.created_at,
                )
            )
        return rec

    def current_agreement(self) -> AgreementRecord | None:
        """See :meth:`KbsStore.current_agreement`."""
        with self._tx(write=False) as c:
            row = c.execute(q.CURRENT_AGREEMENT).first()
        return None if row is None else q.agreement_record(row)

    def agreement_history(self) -> list[AgreementRecord]:
        """See :meth:`KbsStore.agreement_history`."""
        with self._tx(write=False) as c:
            rows = c.execute(select(agreements).order_by(agreements.c.version)).all()
        return [q.agreement_record(r) for r in rows]

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
        values = {
            "owner": rec.owner,
            "wrapped_key": rec.wrapped_key,
            "grant_doc": rec.grant,
            "grant_digest": rec.grant_digest,
            "not_after": rec.not_after,
            "max_releases": rec.max_releases,
            "release_count": 0,
            "created_at": rec.created_at,
        }
        with self._tx(durable=True) as c:
            q = select(resources.c.owner, resources.c.generation).where(
                resources.c.path == rec.path
            )
            old = c.execute(q.with_for_update()).first()
            if old is None:
                c.execute(insert(resources).values(path=rec.path, generation=1, **values))
                return rec
            if old.owner != rec.owner:
                raise StorageConflict("resource belongs to another owner")
            generation = int(old.generation) + 1
            res = c.execute(
                update(resources)
                .where(resources.c.path == rec.path, resources.c.generation == old.generation)
                .values(generation=generation, **values)
            )
            if res.rowcount != 1:
                raise StorageConflict("resource was replaced concurrently")
        return ResourceRecord(**{**_fields(rec), "generation": generation})

    def get_resource(self, path: str) -> ResourceRecord | None:
        """See :meth:`KbsStore.get_resource`."""
        validate.path(path)
        with self._tx(write=False) as c:
            row = c.execute(q.GET_RESOURCE, {"b_path": path}).first()
        return None if row is None else q.resource_record(row)

    def record_release(
        self, path: str, expected_count: int, *, generation: int | None = None
    ) -> int:
        """See :meth:`KbsStore.record_release`."""
        validate.release(path, expected_count, generation)
        with self._tx() as c:
            return self._release(c, path, expected_count, generation)

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

        def work(c: Connection) -> int:
            _check_agreement(c, required)
            return self._release(c, path, expected_count, generation)

        return self._audited(work, build)

    @staticmethod
    def _release(c: Connection, path: str, expected_count: int, generation: int | None) -> int:
        """Compare-and-increment inside ``c``; raises (the caller rolls back) on failure."""
        params: dict[str, Any] = {"b_path": path, "b_expected": expected_count}
        if generation is None:
            res = c.execute(q.RELEASE, params)
        else:
            res = c.execute(q.RELEASE_AT_GENERATION, {**params, "b_generation": generation})
        if res.rowcount == 1:
            return expected_count + 1
        row = c.execute(q.RELEASE_STATE, {"b_path": path}).first()
        if row is None:
            raise StorageNotFound("no such resource")
        if generation is not None and row.generation != generation:
            raise StorageConflict("resource was replaced")
        if row.max_releases is not None and row.release_count >= row.max_releases:
            raise StorageConflict("release budget used up")
        raise StorageConflict("stale release count")

    # -- counters -----------------------------------------------------------------------
    def get_counter(self, name: str) -> tuple[int, bytes] | None:
        """See :meth:`KbsStore.get_counter`."""
        validate.name("name", name)
        with self._tx(write=False) as c:
            row = c.execute(select(counters).where(counters.c.name == name)).first()
        return None if row is None else (int(row.value), bytes(row.digest))

    def compare_and_increment(self, name: str, expected: int, new_digest: bytes) -> int:
        """See :meth:`KbsStore.compare_and_increment`."""
        digest = validate.counter_step(name, expected, new_digest)
        with self._tx(durable=True) as c:
            if expected == 0:
                exists = c.execute(select(counters.c.value).where(counters.c.name == name))
                if exists.first() is None:
                    c.execute(insert(counters).values(name=name, value=1, digest=digest))
                    return 1
                raise StorageConflict("counter is not at the expected value")
            res = c.execute(
                update(counters)
                .where(counters.c.name == name, counters.c.value == expected)
                .values(value=counters.c.value + 1, digest=digest)
            )
            if res.rowcount != 1:
                raise StorageConflict("counter is not at the expected value")
        return expected + 1

    # -- sessions -----------------------------------------------------------------------
    def create_session(
        self, session_id: str, nonce: bytes, tee: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.create_session`."""
        rec = validate.session(session_id, nonce, tee, expires_at)
        with self._tx() as c:  # a duplicate id violates the primary key: StorageConflict
            c.execute(
                q.SESSION_INSERT,
                {
                    "session_id": rec.session_id,
                    "nonce": rec.nonce,
                    "tee": rec.tee,
                    "expires_at": rec.expires_at,
                    "consumed": False,
                },
            )
        return rec

    def _get_session(self, c: Connection, session_id: str) -> SessionRecord | None:
        row = c.execute(q.GET_SESSION, {"b_sid": session_id}).first()
        return None if row is None else q.session_record(row)

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

        def work(c: Connection) -> SessionRecord:
            session = self._consume(c, session_id, now, binding)
            _check_agreement(c, required)
            if use is not None:
                _use_enrollment(c, use)
            return session

        return self._audited(work, build)

    # -- enrollments --------------------------------------------------------------------
    def get_enrollment(self, key: str) -> EnrollmentRecord | None:
        """See :meth:`KbsStore.get_enrollment`."""
        validate.name("key", key)
        with self._tx(write=False) as c:
            row = c.execute(select(enrollments).where(enrollments.c.key == key)).first()
        return None if row is None else _enrollment(row)

    def revoke_enrollment_and_audit(
        self, key: str, revocation: bytes, now: datetime, build: AuditBuilder
    ) -> tuple[EnrollmentRecord, AuditEntry]:
        """See :meth:`KbsStore.revoke_enrollment_and_audit`."""
        key, document, now = validate.revocation(key, revocation, now)
        validate.builder(build)
        e = enrollments.c

        def work(c: Connection) -> EnrollmentRecord:
            res = c.execute(
                update(enrollments)
                .where(e.key == key, e.revoked_at.is_(None))
                .values(revoked_at=now, revocation=document)
            )
            if res.rowcount != 1:
                found = c.execute(select(enrollments).where(e.key == key)).first()
                if found is None:
                    c.execute(
                        insert(enrollments).values(
                            key=key, uses=0, revoked_at=now, revocation=document
                        )
                    )
            row = c.execute(select(enrollments).where(e.key == key)).first()
            assert row is not None
            return _enrollment(row)

        return self._audited(work, build)

    def _consume(
        self, c: Connection, session_id: str, now: datetime, binding: TokenBinding | None
    ) -> SessionRecord:
        """Consume the nonce (and bind ``binding``) inside ``c``; raises on failure."""
        params: dict[str, Any] = {"b_sid": session_id, "b_now": now}
        if binding is None:
            res = c.execute(q.CONSUME_NONCE, params)
        else:
            params.update(
                b_digest=binding.token_digest,
                b_claims=binding.claims_json,
                b_expires=binding.expires_at,
            )
            res = c.execute(q.CONSUME_NONCE_BIND, params)
        rec = self._get_session(c, session_id)
        if rec is None:
            raise StorageNotFound("no such session")
        if res.rowcount == 1:
            return rec
        if rec.consumed:
            raise StorageConflict("nonce already consumed")
        raise StorageExpired("nonce expired")

    def bind_token(
        self, session_id: str, token_digest: bytes, claims_json: str, expires_at: datetime
    ) -> SessionRecord:
        """See :meth:`KbsStore.bind_token`."""
        digest, expires = validate.token(session_id, token_digest, claims_json, expires_at)
        s = sessions.c
        with self._tx() as c:
            res = c.execute(
                update(sessions)
                .where(s.session_id == session_id, s.consumed.is_(True), s.token_digest.is_(None))
                .values(token_digest=digest, claims_json=claims_json, token_expires_at=expires)
            )
            rec = self._get_session(c, session_id)
        if rec is None:
            raise StorageNotFound("no such session")
        if res.rowcount == 1:
            return rec
        if not rec.consumed:
            raise StorageConflict("nonce not consumed yet")
        raise StorageConflict("a token is already bound to the session")

    def get_session(self, session_id: str) -> SessionRecord | None:
        """See :meth:`KbsStore.get_session`."""
        validate.name("session_id", session_id)
        with self._tx(write=False) as c:
            return self._get_session(c, session_id)

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
            c.execute(q.AUDIT_INSERT, q.audit_values(e, reasons_text, data_text))

    def append_audit_built(self, build: AuditBuilder) -> AuditEntry:
        """See :meth:`KbsStore.append_audit_built`."""
        validate.builder(build)
        return self._audited(lambda _c: None, build)[1]

    def audit_entries(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """See :meth:`KbsStore.audit_entries`."""
        after_seq, limit = validate.check_page(after_seq, limit)
        page = select(audit).where(audit.c.seq > after_seq).order_by(audit.c.seq).limit(limit)
        with self._tx(write=False) as c:
            rows = c.execute(page).all()
        return [q.audit_entry(r) for r in rows]

    def last_audit(self) -> AuditEntry | None:
        """See :meth:`KbsStore.last_audit`."""
        last = select(audit).order_by(audit.c.seq.desc()).limit(1)
        with self._tx(write=False) as c:
            row = c.execute(last).first()
        return None if row is None else q.audit_entry(row)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()


def _fields(rec: ResourceRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in ResourceRecord.__dataclass_fields__}


def _check_agreement(c: Connection, digest: bytes | None) -> None:
    """Inside ``c``: the newest agreement has ``digest`` (no check when None)."""
    if digest is None:
        return
    row = c.execute(q.AGREEMENT_HEAD).first()
    if row is None or bytes(row.digest) != digest:
        raise StorageConflict("the active agreement changed")


def _enrollment(row: Any) -> EnrollmentRecord:
    return EnrollmentRecord(
        key=str(row.key),
        uses=int(row.uses),
        revoked_at=row.revoked_at,
        revocation=None if row.revocation is None else bytes(row.revocation),
    )


def _use_enrollment(c: Connection, use: EnrollmentUse) -> None:
    """Count one use of ``use.key`` inside ``c`` (a conditional UPDATE decides; a first use
    inserts the row, in a savepoint so a concurrent first use is retried as an update).

    Raises:
        EnrollmentUseRefused: revoked, or ``max_uses`` reached.
    """
    e = enrollments.c
    cond = [e.key == use.key, e.revoked_at.is_(None)]
    if use.max_uses is not None:
        cond.append(e.uses < use.max_uses)
    for _ in range(2):
        if c.execute(update(enrollments).where(*cond).values(uses=e.uses + 1)).rowcount == 1:
            return
        row = c.execute(select(e.uses, e.revoked_at).where(e.key == use.key)).first()
        if row is not None:
            raise EnrollmentUseRefused("revoked" if row.revoked_at is not None else "exhausted")
        try:
            with c.begin_nested():
                c.execute(insert(enrollments).values(key=use.key, uses=1))
            return
        except IntegrityError:  # a concurrent first use inserted it: count as an update
            continue
    raise StorageConflict("enrollment use kept conflicting")
