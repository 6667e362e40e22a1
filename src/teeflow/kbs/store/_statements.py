"""Prepared SQLAlchemy Core statements of the KBS store's hot paths, and row -> record
conversions (private).

Built once at import with named bind parameters (``b_*``), so each call only binds values
and hits SQLAlchemy's compiled-statement cache instead of constructing, and computing the
cache key of, a new statement tree. Used by :mod:`teeflow.kbs.store.sql`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update

from teeflow.kbs.store import _validate as validate
from teeflow.kbs.store._engine import agreements, audit, resources, sessions
from teeflow.kbs.store.interface import (
    AgreementRecord,
    AuditEntry,
    ResourceRecord,
    SessionRecord,
)

__all__ = [
    "AGREEMENT_HEAD",
    "AUDIT_HEAD",
    "AUDIT_INSERT",
    "CONSUME_NONCE",
    "CONSUME_NONCE_BIND",
    "CURRENT_AGREEMENT",
    "GET_RESOURCE",
    "GET_SESSION",
    "RELEASE",
    "RELEASE_AT_GENERATION",
    "RELEASE_STATE",
    "SESSION_INSERT",
    "AuditRow",
    "agreement_record",
    "audit_entry",
    "audit_values",
    "resource_record",
    "session_record",
]

_s, _r, _a = sessions.c, resources.c, audit.c

#: ``{"b_sid"}`` -> the session row.
GET_SESSION = select(sessions).where(_s.session_id == bindparam("b_sid"))
#: a single-row insert: execute with the column values.
SESSION_INSERT = insert(sessions)
_consume_where = (
    _s.session_id == bindparam("b_sid"),
    _s.consumed.is_(False),
    _s.expires_at > bindparam("b_now"),
)
#: ``{"b_sid", "b_now"}``: consume an unexpired, unused nonce (rowcount 1 on success).
CONSUME_NONCE = update(sessions).where(*_consume_where).values(consumed=True)
#: as :data:`CONSUME_NONCE`, binding the token (``b_digest``, ``b_claims``, ``b_expires``).
CONSUME_NONCE_BIND = (
    update(sessions)
    .where(*_consume_where)
    .values(
        consumed=True,
        token_digest=bindparam("b_digest"),
        claims_json=bindparam("b_claims"),
        token_expires_at=bindparam("b_expires", type_=sessions.c.token_expires_at.type),
    )
)

#: ``{"b_path"}`` -> the resource row.
GET_RESOURCE = select(resources).where(_r.path == bindparam("b_path"))
#: ``{"b_path"}`` -> generation, budget and count (to explain a failed release).
RELEASE_STATE = select(_r.generation, _r.max_releases, _r.release_count).where(
    _r.path == bindparam("b_path")
)
_release_where = (
    _r.path == bindparam("b_path"),
    _r.release_count == bindparam("b_expected"),
    or_(_r.max_releases.is_(None), _r.release_count < _r.max_releases),
)
#: ``{"b_path", "b_expected"}``: compare-and-increment within the budget.
RELEASE = update(resources).where(*_release_where).values(release_count=_r.release_count + 1)
#: as :data:`RELEASE`, also requiring ``generation == b_generation``.
RELEASE_AT_GENERATION = (
    update(resources)
    .where(*_release_where, _r.generation == bindparam("b_generation"))
    .values(release_count=_r.release_count + 1)
)

#: the newest agreement row.
CURRENT_AGREEMENT = select(agreements).order_by(agreements.c.version.desc()).limit(1)
#: the newest agreement's digest.
AGREEMENT_HEAD = select(agreements.c.digest).order_by(agreements.c.version.desc()).limit(1)

#: ``seq`` and ``hash`` of the newest audit entry.
AUDIT_HEAD = select(_a.seq, _a.hash).order_by(_a.seq.desc()).limit(1)
#: a single-row insert: execute with :func:`audit_values`.
AUDIT_INSERT = insert(audit)


def audit_values(e: AuditEntry, reasons_text: str, data_text: str) -> dict[str, Any]:
    """Column values of a checked entry (reasons and data as their canonical JSON texts)."""
    return {
        "seq": e.seq,
        "time": e.time,
        "kind": e.kind,
        "subject": e.subject,
        "decision": e.decision,
        "reasons": reasons_text,
        "data": data_text,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
        "signature": e.signature,
    }


class AuditRow:
    """An entry just inserted, shaped like a selected audit row."""

    def __init__(self, e: AuditEntry, reasons: str, data: str) -> None:
        self.seq, self.time, self.kind, self.subject = e.seq, e.time, e.kind, e.subject
        self.decision, self.reasons, self.data = e.decision, reasons, data
        self.prev_hash, self.hash, self.signature = e.prev_hash, e.hash, e.signature


def agreement_record(row: Any) -> AgreementRecord:
    """A selected agreement row as a record."""
    return AgreementRecord(int(row.version), bytes(row.digest), bytes(row.document), row.created_at)


def session_record(row: Any) -> SessionRecord:
    """A selected session row as a record."""
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


def audit_entry(row: Any) -> AuditEntry:
    """A selected audit row (reasons and data as JSON texts) as an entry."""
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


def resource_record(row: Any) -> ResourceRecord:
    """A selected resource row as a record."""
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
