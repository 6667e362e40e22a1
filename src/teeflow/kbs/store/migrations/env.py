"""Alembic environment for the KBS schema: online mode on a caller-provided connection.

``teeflow.kbs.store._engine.migrate`` opens a transaction (on PostgreSQL holding an advisory
lock, on SQLite ``BEGIN IMMEDIATE``) and passes its connection in
``config.attributes["connection"]``; this module runs the migrations inside that transaction.
Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from teeflow.kbs.store.interface import StorageError

__all__: list[str] = []

VERSION_TABLE = "kbs_alembic_version"  # keep equal to _engine.VERSION_TABLE


def run_migrations_online() -> None:
    """Run every pending revision on the connection handed over by the caller.

    Raises:
        StorageError: no connection was provided (offline mode, or Alembic's CLI).
    """
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise StorageError("KBS migrations run only via teeflow (open_store)")
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
