"""KBS persistent storage: one contract (:class:`KbsStore`), three backends.

``open_store(url)`` picks the backend from the URL scheme:

* ``memory://`` - :class:`MemoryStore` (volatile; tests and demos),
* ``sqlite:///path.db[?synchronous=normal|full]`` - SQLite file in WAL mode; ``normal`` (the
  default) fsyncs agreements, grants and counter steps and survives process crashes for
  everything else, ``full`` fsyncs every commit (:mod:`teeflow.kbs.store.sql`),
* ``postgresql+psycopg://user@host:5432/db`` - PostgreSQL via psycopg 3.

Every row is authenticated under the KBS storage key (:mod:`teeflow.kbs.store.rows`). SQL
stores run the packaged Alembic migrations to head when opened (idempotent; concurrent
openers are serialised). The contract, record types, limits and errors are documented in
:mod:`teeflow.kbs.store.interface`.
"""

from __future__ import annotations

from teeflow.kbs.store.interface import KbsStore, StorageInputError

__all__ = ["open_store"]

#: Longest accepted store URL (characters).
_MAX_URL_CHARS = 4096


def open_store(url: str, storage_key: bytes | None = None) -> KbsStore:
    """Open the KBS store named by ``url`` (see the module docstring for the schemes).

    SQL backends are migrated to the newest schema and checked against their state log
    (:meth:`KbsStore.check_state`) before this returns. SQLAlchemy is imported only for SQL
    URLs.

    Args:
        url: the store URL.
        storage_key: the KBS storage key (32 bytes,
            :attr:`teeflow.kbs.service.identity.KbsKeys.storage_key`) every row is
            authenticated under (:mod:`teeflow.kbs.store.rows`). Required for SQL stores;
            ``memory://`` uses a random key when None.

    Raises:
        StorageInputError: not a string, too long, an unsupported scheme/driver, or a SQL
            URL without a 32-byte storage key.
        StorageError: the database cannot be opened or migrated (the message never contains
            the URL or its password).
        StorageTampered, StorageRollback: the stored state fails its integrity check.
    """
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        raise StorageInputError("store URL must be a non-empty string")
    if url == "memory://":
        from teeflow.kbs.store.memory import MemoryStore  # the backend opened, only

        return MemoryStore(storage_key)
    if storage_key is None:
        raise StorageInputError("a SQL store needs the KBS storage key")
    from teeflow.kbs.store.sql import open_sql_store

    return open_sql_store(url, storage_key)
