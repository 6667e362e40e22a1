"""Helpers shared by the KbsStore contract suites (``tests/storage``)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from teeflow.kbs.store import (
    open_store,
)
from teeflow.kbs.store.interface import (
    AuditEntry,
    KbsStore,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
STORAGE_KEY = bytes(range(32))
D1, D2, D3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


@dataclass
class Backend:
    name: str
    url: str

    @property
    def durable(self) -> bool:
        return self.name != "memory"

    def open(self) -> KbsStore:
        return open_store(self.url, STORAGE_KEY)


def put(store: KbsStore, path: str = "repo/key/a", owner: str = "alice", **kw: Any) -> Any:
    args: dict[str, Any] = {
        "wrapped_key": b"wrapped-key-bytes",
        "grant": b"signed-grant",
        "grant_digest": D1,
        "not_after": T0 + timedelta(days=1),
        "max_releases": 2,
        "created_at": T0,
    }
    args.update(kw)
    return store.put_resource(path, owner, **args)


def race(n: int, fn: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``fn(i)`` in ``n`` threads released together; return (results, errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            r = fn(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(r)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


# -- agreements ------------------------------------------------------------------------------


def clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    return lambda: T0 + timedelta(microseconds=next(ticks))


def entry(seq: int, prev: bytes, **kw: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "seq": seq,
        "time": T0,
        "kind": "info",
        "subject": "s",
        "decision": "info",
        "reasons": [],
        "data": {},
        "prev_hash": prev,
        "hash": secrets.token_bytes(32),
        "signature": b"s" * 64,
    }
    fields.update(kw)
    return AuditEntry(**fields)
