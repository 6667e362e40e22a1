"""Fixtures of the KbsStore contract suites: one empty store per backend (memory://, a SQLite
file, PostgreSQL).

PostgreSQL comes from ``TEEFLOW_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); each test gets its own random schema
(selected with libpq ``options=-csearch_path=...``) which is dropped afterwards, so parallel
runs never collide. When no server answers, the PostgreSQL cases skip with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from store_helpers import Backend

from teeflow.kbs.store.interface import (
    KbsStore,
)

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    """A reachable PostgreSQL URL, or skip with the reason."""
    url = os.environ.get("TEEFLOW_TEST_POSTGRES_URL", PG_DEFAULT)
    from sqlalchemy import create_engine

    try:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        pytest.skip(
            f"PostgreSQL not reachable at {_redact(url)} ({type(exc).__name__}); "
            "set TEEFLOW_TEST_POSTGRES_URL to run the PostgreSQL contract tests"
        )
    return url


def _pg_schema_url(base: str, schema: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


@contextmanager
def _pg_schema(base: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    schema = "tf_test_" + secrets.token_hex(6)
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """One backend with an empty database (PostgreSQL: a fresh schema, dropped afterwards)."""
    if request.param == "memory":
        yield Backend("memory", "memory://")
    elif request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'kbs.db'}")
    else:
        with _pg_schema(request.getfixturevalue("pg_base_url")) as url:
            yield Backend("postgresql", url)


@pytest.fixture()
def store(backend: Backend) -> Iterator[KbsStore]:
    s = backend.open()
    yield s
    s.close()


@pytest.fixture()
def sql_backend(backend: Backend) -> Backend:
    if not backend.durable:
        pytest.skip("memory:// is volatile by design; durability applies to SQL backends")
    return backend
