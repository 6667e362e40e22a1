"""Prepared SQLAlchemy Core statements of the KBS store (private).

Built once at import with named bind parameters (``b_*``), so each call only binds values
and hits SQLAlchemy's compiled-statement cache instead of constructing, and computing the
cache key of, a new statement tree. Row changes are compare-and-set on the row's old tag
(``*_CAS``: execute with ``b_<pk>``, ``b_old`` and the new column values). Used by
:mod:`teeflow.kbs.store.sql`.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, update

from teeflow.kbs.store._engine import agreements, audit, counters, enrollments, resources, sessions

__all__ = [
    "AGREEMENT_HEAD_TAG",
    "AGREEMENT_INSERT",
    "AUDIT_HEAD",
    "AUDIT_INSERT",
    "COUNTER_CAS",
    "COUNTER_INSERT",
    "CURRENT_AGREEMENT",
    "ENROLLMENT_CAS",
    "ENROLLMENT_INSERT",
    "GET_COUNTER",
    "GET_COUNTER_FOR_UPDATE",
    "GET_ENROLLMENT",
    "GET_ENROLLMENT_FOR_UPDATE",
    "GET_RESOURCE",
    "GET_RESOURCE_FOR_UPDATE",
    "GET_SESSION",
    "GET_SESSION_FOR_UPDATE",
    "RESOURCE_CAS",
    "RESOURCE_INSERT",
    "SESSION_CAS",
    "SESSION_INSERT",
]

_s, _r, _a, _c = sessions.c, resources.c, audit.c, counters.c

#: ``{"b_sid"}`` (the keyed hash of the session id) -> the session row.
GET_SESSION = select(sessions).where(_s.session_hash == bindparam("b_sid"))
GET_SESSION_FOR_UPDATE = GET_SESSION.with_for_update()
SESSION_INSERT = insert(sessions)
SESSION_CAS = update(sessions).where(
    _s.session_hash == bindparam("b_sid"), _s.tag == bindparam("b_old")
)

#: ``{"b_path"}`` -> the resource row.
GET_RESOURCE = select(resources).where(_r.path == bindparam("b_path"))
GET_RESOURCE_FOR_UPDATE = GET_RESOURCE.with_for_update()
RESOURCE_INSERT = insert(resources)
RESOURCE_CAS = update(resources).where(_r.path == bindparam("b_path"), _r.tag == bindparam("b_old"))

#: ``{"b_name"}`` -> the counter row.
GET_COUNTER = select(counters).where(_c.name == bindparam("b_name"))
GET_COUNTER_FOR_UPDATE = GET_COUNTER.with_for_update()
COUNTER_INSERT = insert(counters)
COUNTER_CAS = update(counters).where(_c.name == bindparam("b_name"), _c.tag == bindparam("b_old"))

#: ``{"b_key"}`` (``party/jti``) -> the enrollment row.
GET_ENROLLMENT = select(enrollments).where(enrollments.c.key == bindparam("b_key"))
GET_ENROLLMENT_FOR_UPDATE = GET_ENROLLMENT.with_for_update()
ENROLLMENT_INSERT = insert(enrollments)
ENROLLMENT_CAS = update(enrollments).where(
    enrollments.c.key == bindparam("b_key"), enrollments.c.tag == bindparam("b_old")
)

#: the newest agreement row.
CURRENT_AGREEMENT = select(agreements).order_by(agreements.c.version.desc()).limit(1)
#: version and tag of the newest agreement row (compared with the verified copy).
AGREEMENT_HEAD_TAG = (
    select(agreements.c.version, agreements.c.tag).order_by(agreements.c.version.desc()).limit(1)
)
AGREEMENT_INSERT = insert(agreements)

#: ``seq`` and ``hash`` of the newest audit entry.
AUDIT_HEAD = select(_a.seq, _a.hash).order_by(_a.seq.desc()).limit(1)
AUDIT_INSERT = insert(audit)
