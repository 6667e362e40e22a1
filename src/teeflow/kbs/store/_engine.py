"""SQL schema (SQLAlchemy Core tables), engine set-up and Alembic migration for the KBS store.

Private to :mod:`teeflow.kbs.store.sql` (see its docstring for durability and atomicity).
The tables here describe the schema at Alembic head; ``migrations/versions`` creates it and
``tests/storage`` checks that the two do not drift apart.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic, sleep
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError

from teeflow.kbs.store.interface import StorageError, StorageInputError

__all__ = [
    "MIGRATIONS_DIR",
    "SQLITE_BEGIN_OPTION",
    "SQLITE_SYNC_MODES",
    "SQLITE_SYNC_OPTION",
    "VERSION_TABLE",
    "UtcDateTime",
    "agreements",
    "audit",
    "counters",
    "enrollments",
    "make_engine",
    "metadata",
    "migrate",
    "resources",
    "sessions",
]

#: Directory of the Alembic environment shipped inside the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Alembic version table of the KBS schema.
VERSION_TABLE = "kbs_alembic_version"
#: How long an opener waits for another one holding a fresh SQLite file (seconds).
_SQLITE_LOCK_WAIT_SECONDS = 30.0
#: PostgreSQL advisory lock key serialising migrations (ASCII "teeflowK").
_PG_MIGRATION_LOCK = 0x746565666C6F774B
SQLITE_BEGIN_OPTION = "teeflow_sqlite_begin"
#: Engine execution option holding the SQLite ``synchronous`` mode (``normal`` or ``full``).
SQLITE_SYNC_OPTION = "teeflow_sqlite_synchronous"
#: Accepted values of the ``?synchronous=`` URL parameter -> PRAGMA value.
SQLITE_SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}
#: Default SQLite durability (see :mod:`teeflow.kbs.store.sql`).
_DEFAULT_SYNC = "normal"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

agreements = Table(
    "kbs_agreements",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("digest", LargeBinary(64), nullable=False, unique=True),
    Column("document", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("audit_seq", BigInteger, nullable=True),
    Column("tag", LargeBinary(32), nullable=True),
)

resources = Table(
    "kbs_resources",
    metadata,
    Column("path", String(512), primary_key=True),
    Column("owner", String(256), nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("grant_doc", LargeBinary, nullable=False),
    Column("grant_digest", LargeBinary(64), nullable=False),
    Column("not_after", UtcDateTime, nullable=True),
    Column("max_releases", BigInteger, nullable=True),
    Column("release_count", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("audit_seq", BigInteger, nullable=True),
    Column("tag", LargeBinary(32), nullable=True),
)

counters = Table(
    "kbs_counters",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("digest", LargeBinary(64), nullable=False),
    Column("audit_seq", BigInteger, nullable=True),
    Column("tag", LargeBinary(32), nullable=True),
)

sessions = Table(
    "kbs_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("nonce", LargeBinary(64), nullable=False),
    Column("tee", String(32), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("consumed", Boolean, nullable=False),
    Column("token_digest", LargeBinary(64), nullable=True),
    Column("claims", LargeBinary, nullable=True),
    Column("token_expires_at", UtcDateTime, nullable=True),
    Column("tag", LargeBinary(32), nullable=True),
    Index("ix_kbs_sessions_expires_at", "expires_at"),
)

enrollments = Table(
    "kbs_enrollments",
    metadata,
    Column("key", String(256), primary_key=True),
    Column("uses", BigInteger, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revocation", LargeBinary, nullable=True),
    Column("audit_seq", BigInteger, nullable=True),
    Column("tag", LargeBinary(32), nullable=True),
)

audit = Table(
    "kbs_audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", UtcDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("reasons", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False, unique=True),
    Column("signature", LargeBinary, nullable=False),
    Column("touches", String(600), nullable=True),
    Column("tag", LargeBinary(32), nullable=True),
)


def _enable_wal(cur: Any) -> None:
    """Switch the database file to WAL (persistent), retrying while another opener holds it.

    Changing the journal mode of a fresh file needs an exclusive lock and SQLite reports
    "database is locked" without calling the busy handler, so two processes opening a new
    database at once must retry here.

    Raises:
        StorageError: WAL mode is unavailable (e.g. a file system without shared memory).
    """
    delay, deadline = 0.002, monotonic() + _SQLITE_LOCK_WAIT_SECONDS
    while True:
        try:
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or monotonic() > deadline:
                raise
            sleep(delay)
            delay = min(delay * 2, 0.1)
    if str(mode).lower() != "wal":
        raise StorageError("SQLite database could not be switched to WAL mode")


def _install_sqlite_listeners(engine: Engine, synchronous: str) -> None:
    pragma = f"PRAGMA synchronous={SQLITE_SYNC_MODES[synchronous]}"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not BEGIN by itself: see _on_begin
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout=30000")
            _enable_wal(cur)
            cur.execute(pragma)
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN DEFERRED" if mode == "DEFERRED" else "BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for ``sqlite:///file[?synchronous=normal|full]`` or
    ``postgresql[+psycopg]://...``.

    SQLite engines get the WAL / ``synchronous`` / ``BEGIN IMMEDIATE`` listeners and carry
    the mode (``normal``, the default, or ``full``) in the execution option
    :data:`SQLITE_SYNC_OPTION`; every engine hides bound parameters from error messages.
    No connection is made yet.

    Raises:
        StorageInputError: malformed URL, in-memory SQLite, an unknown ``synchronous``
            value (or ``synchronous`` on PostgreSQL), or another dialect/driver.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        raise StorageInputError("not a database URL") from None
    try:
        if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
            if parsed.database in (None, "", ":memory:"):
                raise StorageInputError("SQLite needs a file: sqlite:///path.db (or memory://)")
            mode = parsed.query.get("synchronous", _DEFAULT_SYNC)
            if not isinstance(mode, str) or mode.lower() not in SQLITE_SYNC_MODES:
                raise StorageInputError("SQLite synchronous must be normal or full")
            mode = mode.lower()
            engine = create_engine(
                parsed.difference_update_query(["synchronous"]),
                hide_parameters=True,
                connect_args={"check_same_thread": False, "timeout": 30},
                execution_options={SQLITE_SYNC_OPTION: mode},
            )
            _install_sqlite_listeners(engine, mode)
            return engine
        if "synchronous" in parsed.query:
            raise StorageInputError("synchronous= applies to SQLite URLs only")
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")
            return create_engine(parsed, hide_parameters=True, pool_pre_ping=True)
    except (ArgumentError, ValueError, TypeError):
        raise StorageInputError("invalid database URL options") from None
    raise StorageInputError("unsupported database URL (use memory://, sqlite:/// or postgresql://)")


def migrate(engine: Engine) -> None:
    """Upgrade the schema to Alembic head in one transaction, serialised between processes.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the caller (:func:`open_sql_store`) maps it to
            :class:`StorageError`.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
