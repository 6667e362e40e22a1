"""Argument validation shared by every :class:`KbsStore` backend (private).

Each function returns the normalised value(s) (bytes as ``bytes``, times in UTC) or raises
:class:`~teeflow.kbs.store.interface.StorageInputError` naming the argument, never echoing
its value. Limits are the ``MAX_*`` constants of :mod:`teeflow.kbs.store.interface`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from teeflow.kbs.store.interface import (
    MAX_AGREEMENT_BYTES,
    MAX_AUDIT_DATA_BYTES,
    MAX_AUDIT_PAGE,
    MAX_CLAIMS_BYTES,
    MAX_COUNTER_VALUE,
    MAX_DIGEST_BYTES,
    MAX_GRANT_BYTES,
    MAX_NAME_CHARS,
    MAX_NONCE_BYTES,
    MAX_PATH_CHARS,
    MAX_REVOCATION_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_WRAPPED_KEY_BYTES,
    MIN_DIGEST_BYTES,
    AgreementRecord,
    AuditEntry,
    EnrollmentUse,
    ResourceRecord,
    SessionRecord,
    StorageError,
    StorageInputError,
    TokenBinding,
)

__all__ = [
    "agreement",
    "builder",
    "built_entry",
    "check_audit_entry",
    "check_bytes",
    "check_digest",
    "check_int",
    "check_page",
    "check_str",
    "check_time",
    "consume",
    "counter_step",
    "decode_audit_json",
    "enrollment_use",
    "name",
    "optional_digest",
    "path",
    "release",
    "resource",
    "revocation",
    "session",
    "time",
    "token",
    "token_binding",
]


def check_str(name: str, value: object, max_chars: int = MAX_NAME_CHARS) -> str:
    """Return ``value`` if it is a non-empty str of at most ``max_chars`` without NUL.

    Raises:
        StorageInputError: otherwise (the message names the argument, not the value).
    """
    if not isinstance(value, str) or not value:
        raise StorageInputError(f"{name} must be a non-empty string")
    if len(value) > max_chars:
        raise StorageInputError(f"{name} longer than {max_chars} characters")
    if "\x00" in value:
        raise StorageInputError(f"{name} contains NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StorageInputError(f"{name} is not valid Unicode text") from None
    return value


def check_bytes(name: str, value: object, max_len: int, min_len: int = 1) -> bytes:
    """Return ``bytes(value)`` if it is bytes of ``min_len..max_len`` bytes.

    Raises:
        StorageInputError: wrong type or length.
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StorageInputError(f"{name} must be bytes")
    raw = bytes(value)
    if not min_len <= len(raw) <= max_len:
        raise StorageInputError(f"{name} must be {min_len}..{max_len} bytes, got {len(raw)}")
    return raw


def check_digest(name: str, value: object) -> bytes:
    """Bytes of :data:`MIN_DIGEST_BYTES`..:data:`MAX_DIGEST_BYTES`; else StorageInputError."""
    return check_bytes(name, value, MAX_DIGEST_BYTES, MIN_DIGEST_BYTES)


def check_int(name: str, value: object, minimum: int = 0, maximum: int = MAX_COUNTER_VALUE) -> int:
    """An ``int`` (not bool) in ``minimum..maximum``; else StorageInputError."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise StorageInputError(f"{name} must be an integer")
    if not minimum <= value <= maximum:
        raise StorageInputError(f"{name} must be in {minimum}..{maximum}")
    return value


def check_time(name: str, value: object) -> datetime:
    """A timezone-aware datetime, returned in UTC; else StorageInputError."""
    if not isinstance(value, datetime):
        raise StorageInputError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise StorageInputError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def check_audit_entry(entry: object) -> tuple[AuditEntry, str, str]:
    """Bounds of an :class:`AuditEntry` before it is stored (not its hash or signature).

    Returns:
        ``(normalised entry, reasons JSON text, data JSON text)``: the entry with its time in
        UTC and byte fields as ``bytes``; the JSON texts are compact with sorted keys, so
        decoding them gives back equal values (stores keep these texts, never the caller's
        mutable objects).

    Raises:
        StorageInputError: wrong type, field out of bounds, or reasons/data not JSON-encodable
            within :data:`MAX_AUDIT_DATA_BYTES`.
    """
    if not isinstance(entry, AuditEntry):
        raise StorageInputError("entry must be an AuditEntry")
    if not isinstance(entry.reasons, list) or not all(isinstance(r, str) for r in entry.reasons):
        raise StorageInputError("reasons must be a list of strings")
    if not isinstance(entry.data, dict):
        raise StorageInputError("data must be a JSON object")
    try:
        reasons_text = _json_text(entry.reasons)
        data_text = _json_text(entry.data)
        size = len(reasons_text.encode("utf-8")) + len(data_text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        raise StorageInputError("reasons/data are not JSON-encodable") from None
    if size > MAX_AUDIT_DATA_BYTES:
        raise StorageInputError(f"audit reasons+data larger than {MAX_AUDIT_DATA_BYTES} bytes")
    normalised = replace(
        entry,
        seq=check_int("seq", entry.seq, 1),
        time=check_time("time", entry.time),
        kind=check_str("kind", entry.kind, 32),
        subject=check_str("subject", entry.subject, MAX_NAME_CHARS),
        decision=check_str("decision", entry.decision, 16),
        prev_hash=check_bytes("prev_hash", entry.prev_hash, 32, 32),
        hash=check_bytes("hash", entry.hash, 32, 32),
        signature=check_bytes("signature", entry.signature, MAX_SIGNATURE_BYTES),
        reasons=list(entry.reasons),
    )
    return normalised, reasons_text, data_text


def optional_digest(name: str, value: object) -> bytes | None:
    """None, or :func:`check_digest`."""
    return None if value is None else check_digest(name, value)


def builder(build: object) -> None:
    """An :data:`~teeflow.kbs.store.interface.AuditBuilder` must be callable."""
    if not callable(build):
        raise StorageInputError("build must be callable")


def built_entry(entry: object, seq: int, prev_hash: bytes) -> tuple[AuditEntry, str, str]:
    """:func:`check_audit_entry` of an entry built for ``(seq, prev_hash)``, which it must
    carry.

    Raises:
        StorageInputError: bounds, or another ``seq`` / ``prev_hash``.
    """
    checked = check_audit_entry(entry)
    if checked[0].seq != seq or checked[0].prev_hash != prev_hash:
        raise StorageInputError("built audit entry does not extend the chain head")
    return checked


def _json_text(value: object) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def decode_audit_json(reasons_text: str, data_text: str) -> tuple[list[str], dict[str, Any]]:
    """Decode stored reasons/data texts (see :func:`check_audit_entry`).

    Raises:
        StorageError: a stored row is corrupt.
    """
    try:
        reasons = json.loads(reasons_text)
        data = json.loads(data_text)
    except (TypeError, ValueError, RecursionError):
        raise StorageError("corrupt audit row") from None
    if not isinstance(reasons, list) or not isinstance(data, dict):
        raise StorageError("corrupt audit row")
    return reasons, data


def check_page(after_seq: object, limit: object) -> tuple[int, int]:
    """Validate :meth:`KbsStore.audit_entries` arguments; else StorageInputError."""
    return check_int("after_seq", after_seq, 0), check_int("limit", limit, 1, MAX_AUDIT_PAGE)


# -- per-method validators -----------------------------------------------------------------


def name(arg: str, value: object) -> str:
    """A name (owner, counter, session id) of at most :data:`MAX_NAME_CHARS`."""
    return check_str(arg, value)


def path(value: object) -> str:
    """A resource path of at most :data:`MAX_PATH_CHARS`."""
    return check_str("path", value, MAX_PATH_CHARS)


def time(arg: str, value: object) -> datetime:
    """An aware datetime, in UTC."""
    return check_time(arg, value)


def agreement(
    version: object, digest: object, document: object, created_at: object
) -> AgreementRecord:
    """Arguments of ``append_agreement`` as a record."""
    return AgreementRecord(
        version=check_int("version", version, 1, 1 << 31),
        digest=check_digest("digest", digest),
        document=check_bytes("document", document, MAX_AGREEMENT_BYTES),
        created_at=check_time("created_at", created_at),
    )


def resource(
    path_: object,
    owner: object,
    *,
    wrapped_key: object,
    grant: object,
    grant_digest: object,
    not_after: object,
    max_releases: object,
    created_at: object,
) -> ResourceRecord:
    """Arguments of ``put_resource`` as a generation-1 record with a zero release count."""
    return ResourceRecord(
        path=path(path_),
        owner=check_str("owner", owner),
        wrapped_key=check_bytes("wrapped_key", wrapped_key, MAX_WRAPPED_KEY_BYTES),
        grant=check_bytes("grant", grant, MAX_GRANT_BYTES),
        grant_digest=check_digest("grant_digest", grant_digest),
        not_after=None if not_after is None else check_time("not_after", not_after),
        max_releases=None if max_releases is None else check_int("max_releases", max_releases),
        release_count=0,
        generation=1,
        created_at=check_time("created_at", created_at),
    )


def release(path_: object, expected_count: object, generation: object) -> None:
    """Arguments of ``record_release``."""
    path(path_)
    check_int("expected_count", expected_count, 0, MAX_COUNTER_VALUE - 1)
    if generation is not None:
        check_int("generation", generation, 1)


def counter_step(name_: object, expected: object, new_digest: object) -> bytes:
    """Arguments of ``compare_and_increment``; returns the digest as bytes."""
    check_str("name", name_)
    check_int("expected", expected, 0, MAX_COUNTER_VALUE - 1)
    return check_digest("new_digest", new_digest)


def session(session_id: object, nonce: object, tee: object, expires_at: object) -> SessionRecord:
    """Arguments of ``create_session`` as an unconsumed session record."""
    return SessionRecord(
        session_id=check_str("session_id", session_id),
        nonce=check_bytes("nonce", nonce, MAX_NONCE_BYTES, 16),
        tee=check_str("tee", tee, 32),
        expires_at=check_time("expires_at", expires_at),
    )


def consume(session_id: object, now: object) -> datetime:
    """Arguments of ``consume_nonce``; returns ``now`` in UTC."""
    check_str("session_id", session_id)
    return check_time("now", now)


def token(
    session_id: object, token_digest: object, claims_json: object, expires_at: object
) -> tuple[bytes, datetime]:
    """Arguments of ``bind_token``; returns ``(digest, expires_at in UTC)``."""
    check_str("session_id", session_id)
    digest = check_digest("token_digest", token_digest)
    claims = check_str("claims_json", claims_json, MAX_CLAIMS_BYTES)
    if len(claims.encode()) > MAX_CLAIMS_BYTES:
        raise StorageInputError(f"claims_json larger than {MAX_CLAIMS_BYTES} bytes")
    return digest, check_time("expires_at", expires_at)


def token_binding(session_id: object, binding: object) -> TokenBinding | None:
    """Optional ``token`` of ``consume_nonce_and_audit``: normalised, or None."""
    if binding is None:
        return None
    if not isinstance(binding, TokenBinding):
        raise StorageInputError("token must be a TokenBinding")
    digest, expires = token(
        session_id, binding.token_digest, binding.claims_json, binding.expires_at
    )
    return TokenBinding(digest, binding.claims_json, expires)


def enrollment_use(value: object) -> EnrollmentUse | None:
    """An :class:`EnrollmentUse` (key of at most :data:`MAX_NAME_CHARS`, ``max_uses``
    1..2**31-1 or None), or None."""
    if value is None:
        return None
    if not isinstance(value, EnrollmentUse):
        raise StorageInputError("enrollment must be an EnrollmentUse")
    name("enrollment key", value.key)
    if value.max_uses is not None:
        check_int("enrollment max_uses", value.max_uses, 1, 2**31 - 1)
    return value


def revocation(key: object, document: object, now: object) -> tuple[str, bytes, datetime]:
    """``(key, revocation bytes ≤ MAX_REVOCATION_BYTES, now in UTC)``."""
    return (
        name("enrollment key", key),
        check_bytes("revocation", document, MAX_REVOCATION_BYTES),
        check_time("now", now),
    )
