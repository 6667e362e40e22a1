"""SQL :class:`~teeflow.kbs.storage.interface.KbsStore` on SQLAlchemy 2 Core: SQLite and PostgreSQL.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and
``postgresql+psycopg://user:password@host:port/db`` (``postgresql://`` is taken to mean
psycopg 3). A PostgreSQL schema other than the default is chosen with libpq options, e.g.
``...?options=-csearch_path%3Dkbs``.

Durability (DESIGN, security invariant 5): every SQLite connection is put in WAL mode with
``synchronous=FULL`` (each commit is fsync'ed to the WAL before it returns), ``foreign_keys=ON``
and a 30 s busy timeout by a connect-event listener; PostgreSQL keeps its default durable
commit. A method returns only after its transaction committed.

Atomicity: preconditions are checked inside one transaction. SQLite write transactions start
with ``BEGIN IMMEDIATE`` (one writer at a time; no lock upgrade deadlocks); on PostgreSQL
(READ COMMITTED) compare-and-set steps are single conditional ``UPDATE ... WHERE`` statements
whose row count decides success, rows read before a write are locked ``FOR UPDATE``, and
append-only tables rely on their primary key (a concurrent append of the same version / seq
fails with a unique violation, reported as :class:`StorageConflict`).

Schema: created and upgraded by the Alembic migrations in ``migrations/`` (version table
``kbs_alembic_version``), run to head by :func:`open_sql_store`. Migrations are serialised
between processes: on SQLite by the ``BEGIN IMMEDIATE`` write lock, on PostgreSQL by a
transaction-scoped advisory lock.

Error hygiene: engines are created with ``hide_parameters=True`` and driver errors are
re-raised as :class:`StorageError` / :class:`StorageConflict` naming only the error class,
never SQL text, bound values or the connection URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from teeflow.kbs.storage import _validate as validate
from teeflow.kbs.storage._engine import (
    MIGRATIONS_DIR,
    SQLITE_BEGIN_OPTION,
    VERSION_TABLE,
    agreements,
    audit,
    counters,
    make_engine,
    metadata,
    migrate,
    resources,
    sessions,
)
from teeflow.kbs.storage.interface import (
    GENESIS_HASH,
    AgreementRecord,
    AuditEntry,
    ResourceRecord,
    SessionRecord,
    StorageConflict,
    StorageError,
    StorageExpired,
    StorageNotFound,
)

__all__ = ["MIGRATIONS_DIR", "VERSION_TABLE", "SqlStore", "metadata", "open_sql_store"]


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

    Use :func:`open_sql_store` (or :func:`teeflow.kbs.storage.open_store`) to get one.
    See :class:`teeflow.kbs.storage.interface.KbsStore` for every method's contract.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if not write:
                    conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
                with conn.begin():
                    yield conn
        except StorageError:
            raise
        except IntegrityError:
            raise StorageConflict("a concurrent write won (unique constraint)") from None
        except SQLAlchemyError as exc:
            raise StorageError(f"database error ({type(exc).__name__})") from None

    # -- agreements ---------------------------------------------------------------------
    def append_agreement(
        self, version: int, digest: bytes, document: bytes, created_at: datetime
    ) -> AgreementRecord:
        """See :meth:`KbsStore.append_agreement`."""
        rec = validate.agreement(version, digest, document, created_at)
        with self._tx() as c:
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

    @staticmethod
    def _agreement(row: Any) -> AgreementRecord:
        return AgreementRecord(
            int(row.version), bytes(row.digest), bytes(row.document), row.created_at
        )

    def current_agreement(self) -> AgreementRecord | None:
        """See :meth:`KbsStore.current_agreement`."""
        q = select(agreements).order_by(agreements.c.version.desc()).limit(1)
        with self._tx(write=False) as c:
            row = c.execute(q).first()
        return None if row is None else self._agreement(row)

    def agreement_history(self) -> list[AgreementRecord]:
        """See :meth:`KbsStore.agreement_history`."""
        with self._tx(write=False) as c:
            rows = c.execute(select(agreements).order_by(agreements.c.version)).all()
        return [self._agreement(r) for r in rows]

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
        with self._tx() as c:
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
            row = c.execute(select(resources).where(resources.c.path == path)).first()
        if row is None:
            return None
        return ResourceRecord(
            path=row.path,
            owner=row.owner,
            wrapped_key=bytes(row.wrapped_key),
            grant=bytes(row.grant_doc),
            grant_digest=bytes(row.grant_digest),
            not_after=row.not_after,
            max_releases=None if row.max_releases is None else int(row.max_releases),
            release_count=int(row.release_count),
            generation=int(row.generation),
            created_at=row.created_at,
        )

    def record_release(
        self, path: str, expected_count: int, *, generation: int | None = None
    ) -> int:
        """See :meth:`KbsStore.record_release`."""
        validate.release(path, expected_count, generation)
        r = resources.c
        cond = and_(
            r.path == path,
            r.release_count == expected_count,
            or_(r.max_releases.is_(None), r.release_count < r.max_releases),
        )
        if generation is not None:
            cond = and_(cond, r.generation == generation)
        with self._tx() as c:
            res = c.execute(update(resources).where(cond).values(release_count=r.release_count + 1))
            if res.rowcount == 1:
                return expected_count + 1
            row = c.execute(
                select(r.generation, r.max_releases, r.release_count).where(r.path == path)
            ).first()
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
        with self._tx() as c:
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
        with self._tx() as c:
            dup = c.execute(select(sessions.c.tee).where(sessions.c.session_id == session_id))
            if dup.first() is not None:
                raise StorageConflict("session id already exists")
            c.execute(
                insert(sessions).values(
                    session_id=rec.session_id,
                    nonce=rec.nonce,
                    tee=rec.tee,
                    expires_at=rec.expires_at,
                    consumed=False,
                )
            )
        return rec

    @staticmethod
    def _session(row: Any) -> SessionRecord:
        return SessionRecord(
            session_id=row.session_id,
            nonce=bytes(row.nonce),
            tee=row.tee,
            expires_at=row.expires_at,
            consumed=bool(row.consumed),
            token_digest=None if row.token_digest is None else bytes(row.token_digest),
            claims_json=row.claims_json,
            token_expires_at=row.token_expires_at,
        )

    def _get_session(self, c: Connection, session_id: str) -> SessionRecord | None:
        row = c.execute(select(sessions).where(sessions.c.session_id == session_id)).first()
        return None if row is None else self._session(row)

    def consume_nonce(self, session_id: str, now: datetime) -> SessionRecord:
        """See :meth:`KbsStore.consume_nonce`."""
        now = validate.consume(session_id, now)
        s = sessions.c
        with self._tx() as c:
            res = c.execute(
                update(sessions)
                .where(s.session_id == session_id, s.consumed.is_(False), s.expires_at > now)
                .values(consumed=True)
            )
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
            last = c.execute(
                select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)
            ).first()
            expected_seq = 1 if last is None else int(last.seq) + 1
            expected_prev = GENESIS_HASH if last is None else bytes(last.hash)
            if e.seq != expected_seq:
                raise StorageConflict(f"audit seq must be {expected_seq}")
            if e.prev_hash != expected_prev:
                raise StorageConflict("audit prev_hash does not match the last entry")
            c.execute(
                insert(audit).values(
                    seq=e.seq,
                    time=e.time,
                    kind=e.kind,
                    subject=e.subject,
                    decision=e.decision,
                    reasons=reasons_text,
                    data=data_text,
                    prev_hash=e.prev_hash,
                    hash=e.hash,
                    signature=e.signature,
                )
            )

    @staticmethod
    def _audit(row: Any) -> AuditEntry:
        reasons, data = validate.decode_audit_json(row.reasons, row.data)
        return AuditEntry(
            seq=int(row.seq),
            time=row.time,
            kind=row.kind,
            subject=row.subject,
            decision=row.decision,
            reasons=reasons,
            data=data,
            prev_hash=bytes(row.prev_hash),
            hash=bytes(row.hash),
            signature=bytes(row.signature),
        )

    def audit_entries(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """See :meth:`KbsStore.audit_entries`."""
        after_seq, limit = validate.check_page(after_seq, limit)
        q = select(audit).where(audit.c.seq > after_seq).order_by(audit.c.seq).limit(limit)
        with self._tx(write=False) as c:
            rows = c.execute(q).all()
        return [self._audit(r) for r in rows]

    def last_audit(self) -> AuditEntry | None:
        """See :meth:`KbsStore.last_audit`."""
        q = select(audit).order_by(audit.c.seq.desc()).limit(1)
        with self._tx(write=False) as c:
            row = c.execute(q).first()
        return None if row is None else self._audit(row)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()


def _fields(rec: ResourceRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in ResourceRecord.__dataclass_fields__}
