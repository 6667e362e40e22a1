"""Concurrent releases of the SAME resource (KbsService.get_resource).

Many workload sessions fetch one data key at once from a thread pool, as the HTTP server
does. The release count is a compare-and-increment: losers of a race must re-read the count
and retry, so with an unlimited (large) budget every release succeeds, and with
``max_releases = N`` exactly N succeed and the rest are denied because the budget is used
up - never because of the race. Runs on memory://, SQLite and PostgreSQL (when reachable).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_kbs_service import PATH, Harness, Workload

from teeflow.kbs.api.problems import PolicyDeny
from teeflow.kbs.service.release import open_jwe
from teeflow.kbs.store import open_store

THREADS = 12
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def _pg_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server (dropped afterwards), or skip."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("TEEFLOW_TEST_POSTGRES_URL", PG_DEFAULT)
    schema = "tf_race_" + secrets.token_hex(6)
    try:
        admin = create_engine(base, connect_args={"connect_timeout": 5})
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable ({type(exc).__name__}); "
                    "set TEEFLOW_TEST_POSTGRES_URL")
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "postgresql":
        with _pg_url() as url:
            store = open_store(url, bytes(32))
            try:
                yield Harness(store)
            finally:
                store.close()
        return
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'kbs.db'}"
    store = open_store(url, bytes(32))
    try:
        yield Harness(store)
    finally:
        store.close()


def _fetch_all(h: Harness, workloads: list[Workload]) -> tuple[list[bytes], list[Exception]]:
    """Every workload fetches PATH at the same moment; returns (plaintexts, errors)."""
    sessions = [h.session(w) for w in workloads]
    barrier = threading.Barrier(len(workloads))
    lock = threading.Lock()
    got: list[bytes] = []
    errors: list[Exception] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            body = h.service.get_resource(sessions[i], PATH)
            plain = open_jwe(body, workloads[i].key)
        except Exception as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                got.append(plain)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got, errors


def _releases(h: Harness, decision: str) -> list[object]:
    return [e for e in h.store.audit_entries(0, 10_000)
            if e.kind == "release" and e.decision == decision]


def test_concurrent_releases_all_succeed_with_a_large_budget(h: Harness) -> None:
    key = os.urandom(32)
    h.service.put_resource(h.upload(key, grant=h.grant(max_releases=1_000_000)))
    workloads = [h.attest() for _ in range(THREADS)]
    got, errors = _fetch_all(h, workloads)
    assert errors == []
    assert got == [key] * THREADS
    assert h.service.resource_info(PATH).release_count == THREADS  # type: ignore[union-attr]
    accepted = _releases(h, "accept")
    assert len(accepted) == THREADS and _releases(h, "deny") == []
    assert sorted(e.data["release_count"] for e in accepted) == list(range(1, THREADS + 1))  # type: ignore[attr-defined]
    h.verify_audit()


@pytest.mark.parametrize("budget", [1, 5])
def test_concurrent_releases_stop_exactly_at_max_releases(h: Harness, budget: int) -> None:
    key = os.urandom(32)
    h.service.put_resource(h.upload(key, grant=h.grant(max_releases=budget)))
    workloads = [h.attest() for _ in range(THREADS)]
    got, errors = _fetch_all(h, workloads)
    assert got == [key] * budget
    assert len(errors) == THREADS - budget
    assert all(isinstance(e, PolicyDeny) for e in errors)
    assert h.service.resource_info(PATH).release_count == budget  # type: ignore[union-attr]
    denied = _releases(h, "deny")
    assert len(_releases(h, "accept")) == budget and len(denied) == THREADS - budget
    for entry in denied:  # denied because the budget is used up, not because of the race
        assert entry.reasons == [f"release limit reached ({budget} of {budget})"]  # type: ignore[attr-defined]
    h.verify_audit()
