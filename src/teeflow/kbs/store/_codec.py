"""Authenticated rows of the KBS store (private): record <-> row dictionaries with their tags,
the state-log check and the rollback memory, shared by :mod:`.memory` and :mod:`.sql`.

A *row* is a ``dict`` of column name -> value as stored (the columns of
:mod:`teeflow.kbs.store._engine`). Tags, encryption and keys: :mod:`teeflow.kbs.store.rows`.
Columns are tagged in the order of the ``*_COLUMNS`` tuples below (primary key first).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from teeflow.kbs.store import _validate as validate
from teeflow.kbs.store.interface import (
    GENESIS_HASH,
    AgreementRecord,
    AuditEntry,
    EnrollmentRecord,
    ResourceRecord,
    SessionRecord,
    StorageRollback,
    StorageTampered,
)
from teeflow.kbs.store.rows import RowAuth

__all__ = [
    "AGREEMENTS",
    "AUDIT",
    "COUNTERS",
    "ENROLLMENTS",
    "RESOURCES",
    "SESSIONS",
    "AuditRow",
    "Seen",
    "agreement_record",
    "agreement_row",
    "audit_entry",
    "audit_row",
    "built_entry",
    "check_resource",
    "check_state",
    "counter_row",
    "counter_value",
    "enrollment_record",
    "enrollment_row",
    "resource_record",
    "resource_row",
    "session_record",
    "session_row",
    "touch_key",
]

AGREEMENTS, RESOURCES, COUNTERS = "kbs_agreements", "kbs_resources", "kbs_counters"
SESSIONS, AUDIT, ENROLLMENTS = "kbs_sessions", "kbs_audit", "kbs_enrollments"
_AGREEMENT_COLUMNS = ("version", "digest", "document", "created_at", "audit_seq")
_RESOURCE_COLUMNS = (
    "path",
    "owner",
    "wrapped_key",
    "grant_doc",
    "grant_digest",
    "not_after",
    "max_releases",
    "release_count",
    "generation",
    "created_at",
    "audit_seq",
)
_COUNTER_COLUMNS = ("name", "value", "digest", "audit_seq")
_ENROLLMENT_COLUMNS = ("key", "uses", "revoked_at", "revocation", "audit_seq")
_SESSION_COLUMNS = (
    "session_hash",
    "nonce",
    "tee",
    "expires_at",
    "consumed",
    "token_digest",
    "claims",
    "token_expires_at",
)
_AUDIT_COLUMNS = (
    "seq",
    "time",
    "kind",
    "subject",
    "decision",
    "reasons",
    "data",
    "prev_hash",
    "hash",
    "signature",
    "touches",
)


def _values(row: Mapping[str, Any], columns: tuple[str, ...]) -> list[Any]:
    out = []
    for name in columns:
        v = row.get(name)
        out.append(bytes(v) if isinstance(v, bytearray | memoryview) else v)
    return out


def _tagged(
    auth: RowAuth, table: str, row: dict[str, Any], columns: tuple[str, ...]
) -> dict[str, Any]:
    row["tag"] = auth.tag(table, _values(row, columns))
    return row


def _check(auth: RowAuth, table: str, row: Mapping[str, Any], columns: tuple[str, ...]) -> None:
    tag = row.get("tag")
    auth.check(table, _values(row, columns), bytes(tag) if tag is not None else None)


def touch_key(table: str, key: object) -> str:
    """The state-log name of one row (``table:primary key``), stored in ``touches``."""
    return f"{table}:{key}"


# -- agreements ------------------------------------------------------------------------------


def agreement_row(auth: RowAuth, rec: AgreementRecord, audit_seq: int) -> dict[str, Any]:
    """The tagged row of an agreement version written with audit entry ``audit_seq``."""
    row = {
        "version": rec.version,
        "digest": rec.digest,
        "document": rec.document,
        "created_at": rec.created_at,
        "audit_seq": audit_seq,
    }
    return _tagged(auth, AGREEMENTS, row, _AGREEMENT_COLUMNS)


def agreement_record(auth: RowAuth, row: Mapping[str, Any]) -> AgreementRecord:
    """The record of a stored agreement row. Raises StorageTampered."""
    _check(auth, AGREEMENTS, row, _AGREEMENT_COLUMNS)
    return AgreementRecord(
        int(row["version"]), bytes(row["digest"]), bytes(row["document"]), row["created_at"]
    )


# -- resources -------------------------------------------------------------------------------


def _wrap_context(path: str, generation: int) -> list[Any]:
    return [path, "wrapped_key", generation]


def resource_row(auth: RowAuth, rec: ResourceRecord, audit_seq: int) -> dict[str, Any]:
    """The tagged row of a resource (wrapped key encrypted) after audit entry ``audit_seq``."""
    row = {
        "path": rec.path,
        "owner": rec.owner,
        "wrapped_key": auth.seal(
            RESOURCES, _wrap_context(rec.path, rec.generation), rec.wrapped_key
        ),
        "grant_doc": rec.grant,
        "grant_digest": rec.grant_digest,
        "not_after": rec.not_after,
        "max_releases": rec.max_releases,
        "release_count": rec.release_count,
        "generation": rec.generation,
        "created_at": rec.created_at,
        "audit_seq": audit_seq,
    }
    return _tagged(auth, RESOURCES, row, _RESOURCE_COLUMNS)


def released_row(auth: RowAuth, row: Mapping[str, Any], audit_seq: int) -> dict[str, Any]:
    """A verified resource row after one more release (same ciphertext, new tag)."""
    new = dict(row)
    new["release_count"] = int(row["release_count"]) + 1
    new["audit_seq"] = audit_seq
    new.pop("tag", None)
    return _tagged(auth, RESOURCES, new, _RESOURCE_COLUMNS)


def check_resource(auth: RowAuth, row: Mapping[str, Any]) -> None:
    """Verify a stored resource row's tag (no decryption). Raises StorageTampered."""
    _check(auth, RESOURCES, row, _RESOURCE_COLUMNS)


def resource_record(auth: RowAuth, row: Mapping[str, Any]) -> ResourceRecord:
    """The record of a stored resource row (wrapped key decrypted). Raises StorageTampered."""
    _check(auth, RESOURCES, row, _RESOURCE_COLUMNS)
    path, generation = row["path"], int(row["generation"])
    wrapped = auth.open(RESOURCES, _wrap_context(path, generation), bytes(row["wrapped_key"]))
    max_releases = row["max_releases"]
    return ResourceRecord(
        path=path,
        owner=row["owner"],
        wrapped_key=wrapped,
        grant=bytes(row["grant_doc"]),
        grant_digest=bytes(row["grant_digest"]),
        not_after=row["not_after"],
        max_releases=None if max_releases is None else int(max_releases),
        release_count=int(row["release_count"]),
        generation=generation,
        created_at=row["created_at"],
    )


# -- counters --------------------------------------------------------------------------------


def counter_row(
    auth: RowAuth, name: str, value: int, digest: bytes, audit_seq: int
) -> dict[str, Any]:
    """The tagged row of counter ``name`` at ``value``."""
    row = {"name": name, "value": value, "digest": digest, "audit_seq": audit_seq}
    return _tagged(auth, COUNTERS, row, _COUNTER_COLUMNS)


def counter_value(auth: RowAuth, row: Mapping[str, Any]) -> tuple[int, bytes]:
    """``(value, digest)`` of a stored counter row. Raises StorageTampered."""
    _check(auth, COUNTERS, row, _COUNTER_COLUMNS)
    return int(row["value"]), bytes(row["digest"])


# -- enrollments -----------------------------------------------------------------------------


def enrollment_row(auth: RowAuth, rec: EnrollmentRecord, audit_seq: int) -> dict[str, Any]:
    """The tagged row of an enrollment's use count and revocation after entry ``audit_seq``."""
    row = {
        "key": rec.key,
        "uses": rec.uses,
        "revoked_at": rec.revoked_at,
        "revocation": rec.revocation,
        "audit_seq": audit_seq,
    }
    return _tagged(auth, ENROLLMENTS, row, _ENROLLMENT_COLUMNS)


def enrollment_record(auth: RowAuth, row: Mapping[str, Any]) -> EnrollmentRecord:
    """The record of a stored enrollment row. Raises StorageTampered."""
    _check(auth, ENROLLMENTS, row, _ENROLLMENT_COLUMNS)
    revocation = row["revocation"]
    return EnrollmentRecord(
        key=str(row["key"]),
        uses=int(row["uses"]),
        revoked_at=row["revoked_at"],
        revocation=None if revocation is None else bytes(revocation),
    )


# -- sessions --------------------------------------------------------------------------------


def session_row(auth: RowAuth, rec: SessionRecord) -> dict[str, Any]:
    """The tagged row of a session: keyed hash of the id, claims encrypted."""
    key = auth.session_key(rec.session_id)
    claims = (
        None
        if rec.claims_json is None
        else auth.seal(SESSIONS, [key, "claims"], rec.claims_json.encode("utf-8"))
    )
    row = {
        "session_hash": key,
        "nonce": rec.nonce,
        "tee": rec.tee,
        "expires_at": rec.expires_at,
        "consumed": rec.consumed,
        "token_digest": rec.token_digest,
        "claims": claims,
        "token_expires_at": rec.token_expires_at,
    }
    return _tagged(auth, SESSIONS, row, _SESSION_COLUMNS)


def session_record(auth: RowAuth, session_id: str, row: Mapping[str, Any]) -> SessionRecord:
    """The record of the stored row of ``session_id``. Raises StorageTampered."""
    _check(auth, SESSIONS, row, _SESSION_COLUMNS)
    if row["session_hash"] != auth.session_key(session_id):
        raise StorageTampered("a kbs_sessions row is under another id", table=SESSIONS)
    claims = row["claims"]
    claims_json = None
    if claims is not None:
        claims_json = auth.open(SESSIONS, [row["session_hash"], "claims"], bytes(claims)).decode()
    token_digest = row["token_digest"]
    return SessionRecord(
        session_id=session_id,
        nonce=bytes(row["nonce"]),
        tee=row["tee"],
        expires_at=row["expires_at"],
        consumed=bool(row["consumed"]),
        token_digest=None if token_digest is None else bytes(token_digest),
        claims_json=claims_json,
        token_expires_at=row["token_expires_at"],
    )


# -- audit -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A checked audit entry with its stored JSON texts and the row it changed (if any)."""

    entry: AuditEntry
    reasons: str
    data: str
    touches: str | None


def audit_row(auth: RowAuth, a: AuditRow) -> dict[str, Any]:
    """The tagged row of a checked audit entry."""
    e = a.entry
    row = {
        "seq": e.seq,
        "time": e.time,
        "kind": e.kind,
        "subject": e.subject,
        "decision": e.decision,
        "reasons": a.reasons,
        "data": a.data,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
        "signature": e.signature,
        "touches": a.touches,
    }
    return _tagged(auth, AUDIT, row, _AUDIT_COLUMNS)


def built_entry(a: AuditRow) -> AuditEntry:
    """The entry an audited write just inserted, as a reader would get it (JSON decoded);
    no tag check: it never left the KBS."""
    reasons, data = validate.decode_audit_json(a.reasons, a.data)
    e = a.entry
    return AuditEntry(
        seq=e.seq,
        time=e.time,
        kind=e.kind,
        subject=e.subject,
        decision=e.decision,
        reasons=reasons,
        data=data,
        prev_hash=e.prev_hash,
        hash=e.hash,
        signature=e.signature,
    )


def audit_entry(auth: RowAuth, row: Mapping[str, Any]) -> AuditEntry:
    """The entry of a stored audit row. Raises StorageTampered."""
    _check(auth, AUDIT, row, _AUDIT_COLUMNS)
    reasons, data = validate.decode_audit_json(row["reasons"], row["data"])
    return AuditEntry(
        seq=int(row["seq"]),
        time=row["time"],
        kind=row["kind"],
        subject=row["subject"],
        decision=row["decision"],
        reasons=reasons,
        data=data,
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
        signature=bytes(row["signature"]),
    )


# -- rollback memory and the state-log check -------------------------------------------------


class Seen:
    """The ``audit_seq`` of every agreement, resource, counter and enrollment row this store
    wrote or checked (``touch_key`` -> seq) and the highest agreement version: a later read of
    an older row raises :class:`StorageRollback`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self.agreement_version = 0

    def check(self, key: str, audit_seq: object) -> None:
        """Refuse a row older than the one seen; remember the newer one."""
        seq = int(audit_seq) if isinstance(audit_seq, int) else -1
        known = self._rows.get(key)
        if known is not None and seq < known:
            table = key.split(":", 1)[0]
            raise StorageRollback(f"a {table} row is older than the state log", table=table)
        if known is None or seq > known:
            with self._lock:
                if seq > self._rows.get(key, -1):
                    self._rows[key] = seq

    def remember(self, key: str, audit_seq: int, version: int = 0) -> None:
        """Raise the memory to a row this store just committed, without checking it: a
        concurrent writer may already have committed (and remembered) a newer one, which
        is progress, not a rollback."""
        with self._lock:
            if audit_seq > self._rows.get(key, -1):
                self._rows[key] = audit_seq
            self.agreement_version = max(self.agreement_version, version)

    def check_absent(self, key: str) -> None:
        """Refuse a missing row this store wrote or checked (it was deleted)."""
        if key in self._rows:
            table = key.split(":", 1)[0]
            raise StorageRollback(f"a {table} row the state log wrote is missing", table=table)

    def check_agreement(self, version: int) -> None:
        """Refuse a newest agreement older than one seen."""
        if version < self.agreement_version:
            raise StorageRollback("agreement versions were removed", table=AGREEMENTS)
        with self._lock:
            self.agreement_version = max(self.agreement_version, version)

    def forget(self) -> None:
        """Drop everything (the store was checked afresh)."""
        with self._lock:
            self._rows.clear()
            self.agreement_version = 0


def check_state(
    auth: RowAuth,
    audit_rows: Iterable[Mapping[str, Any]],
    state_rows: Iterable[tuple[str, Mapping[str, Any]]],
    seen: Seen,
) -> AuditEntry | None:
    """Verify the audit log (tags, seq order, links) and the state rows against it; fill
    ``seen``. Returns the head entry.

    Args:
        audit_rows: every audit row, ascending seq.
        state_rows: ``(table, row)`` for every agreement, resource, counter and enrollment
            row.

    Raises:
        StorageTampered, StorageRollback: see :meth:`KbsStore.check_state`.
    """
    last_touch: dict[str, int] = {}
    head: AuditEntry | None = None
    expected_prev, expected_seq = GENESIS_HASH, 1
    for row in audit_rows:
        entry = audit_entry(auth, row)
        if entry.seq != expected_seq or entry.prev_hash != expected_prev:
            raise StorageTampered("the audit chain is broken", table=AUDIT)
        touches = row.get("touches")
        if touches:
            last_touch[str(touches)] = entry.seq
        head, expected_prev, expected_seq = entry, entry.hash, entry.seq + 1
    head_seq = 0 if head is None else head.seq
    present: set[str] = set()
    seen.forget()
    version = 0
    for table, row in state_rows:
        if table == AGREEMENTS:
            agreement_record(auth, row)
            key = touch_key(table, int(row["version"]))
            version = max(version, int(row["version"]))
        elif table == RESOURCES:
            resource_record(auth, row)
            key = touch_key(table, row["path"])
        elif table == ENROLLMENTS:
            enrollment_record(auth, row)
            key = touch_key(table, row["key"])
        else:
            counter_value(auth, row)
            key = touch_key(table, row["name"])
        present.add(key)
        seq = row["audit_seq"]
        seq = -1 if seq is None else int(seq)
        if seq > head_seq:
            raise StorageRollback("a row names an audit entry past the head", table=table)
        if key in last_touch and seq < last_touch[key]:
            raise StorageRollback(f"a {table} row is not the state the log wrote", table=table)
        seen.check(key, seq)
    missing = [k for k in last_touch if k not in present and not k.startswith(SESSIONS)]
    if missing:
        raise StorageRollback(
            "rows the state log wrote are missing", table=missing[0].split(":")[0]
        )
    seen.check_agreement(version)
    return head
