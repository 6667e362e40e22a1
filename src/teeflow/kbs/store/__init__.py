"""KBS persistent storage: one contract (:class:`KbsStore`), three backends.

``open_store(url)`` picks the backend from the URL scheme:

* ``memory://`` - :class:`MemoryStore` (volatile; tests and demos),
* ``sqlite:///path.db[?synchronous=normal|full]`` - SQLite file in WAL mode; ``normal`` (the
  default) fsyncs agreements, grants and counter steps and survives process crashes for
  everything else, ``full`` fsyncs every commit (:mod:`teeflow.kbs.store.sql`),
* ``postgresql+psycopg://user@host:5432/db`` - PostgreSQL via psycopg 3.

SQL stores run the packaged Alembic migrations to head when opened (idempotent; concurrent
openers are serialised). The contract, record types, limits and errors are documented in
:mod:`teeflow.kbs.store.interface`.
"""

from __future__ import annotations

from teeflow.kbs.store.interface import KbsStore, StorageInputError
from teeflow.kbs.store.memory import MemoryStore

__all__ = ["open_store"]

#: Longest accepted store URL (characters).
_MAX_URL_CHARS = 4096


def open_store(url: str) -> KbsStore:
    """Open the KBS store named by ``url`` (see the module docstring for the schemes).

    SQL backends are migrated to the newest schema before this returns. SQLAlchemy is
    imported only for SQL URLs.

    Raises:
        StorageInputError: not a string, too long, or an unsupported scheme/driver.
        StorageError: the database cannot be opened or migrated (the message never contains
            the URL or its password).
    """
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        raise StorageInputError("store URL must be a non-empty string")
    if url == "memory://":
        return MemoryStore()
    from teeflow.kbs.store.sql import open_sql_store

    return open_sql_store(url)
