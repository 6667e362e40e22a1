"""The KBS audit log: append-only, hash-chained, signed (DESIGN "Federation CA, counters, audit").

Every decision of the Key Broker Service - agreement changes, attestation accept/deny with all
reasons, resource releases, certificates, counter steps - becomes one :class:`AuditEntry`
stored through :meth:`KbsStore.append_audit` (:meth:`AuditLog.append`) or, in the same
transaction as the state change it records, through an :data:`AuditBuilder` from
:meth:`AuditLog.builder` handed to :meth:`KbsStore.append_audit_built`,
:meth:`KbsStore.consume_nonce_and_audit` or :meth:`KbsStore.record_release_and_audit`.

Entry hash (format ``teeflow-audit/1``)::

    hash = SHA-256( RFC 8785 canonical JSON of {
        "format":    "teeflow-audit/1",
        "seq":       <int, 1, 2, ...>,
        "time":      "YYYY-MM-DDTHH:MM:SS.ffffffZ"   (UTC, always 6 fraction digits),
        "kind":      <str>,  "subject": <str>,  "decision": "accept" | "deny" | "info",
        "reasons":   [<str>, ...],
        "data":      {<JSON object>},
        "prev_hash": <lower-case hex of the previous entry's hash; 64 zeros for seq 1>
    } )

i.e. every field except ``hash`` and ``signature``, plus a format label. RFC 8785 (JCS) fixes
member order, whitespace and number formatting, so the hash does not depend on how the entry
was stored; integers in ``data`` must stay within +-(2**53 - 1) and floats be finite (I-JSON,
RFC 7493).

Signature: Ed25519 (RFC 8032) by the KBS audit key over ``AUDIT_DOMAIN || hash``
(``b"teeflow-audit-v1\\0" + 32 bytes``), following the domain-separation rule of
:mod:`teeflow.kbs.policy.canonical`; Ed25519 is deterministic and its 64-byte signatures are small.

Because each entry commits to its predecessor's hash, changing, deleting, inserting or
reordering any entry breaks :func:`verify_audit_chain` at the first affected ``seq``.
Truncation of the newest entries is detected only against a known head
(``expected_head=``, e.g. a hash a party saved earlier).

No secrets in audit data: entries are readable by every party (``GET /v1/audit``). Put only
public facts in ``data`` - names, measurements, digests of keys, tokens and documents, counts,
times. Never keys (plain or wrapped), tokens, nonces' secrets, passwords or plaintext. As a
guard-rail :meth:`AuditLog.append` refuses ``data`` whose keys (at any depth) contain
``secret``, ``password``, ``passphrase``, ``private``, ``plaintext``, ``wrapped_key`` or
``data_key``, or are exactly ``key``, ``token``, ``jwe``, ``cookie`` or ``authorization`` -
unless the key ends with ``_digest``, ``_hash``, ``_sha256`` or ``_fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.store.interface import (
    GENESIS_HASH,
    MAX_AUDIT_DATA_BYTES,
    MAX_NAME_CHARS,
    AuditBuilder,
    AuditEntry,
    KbsStore,
    StorageConflict,
)

__all__ = [
    "AUDIT_DOMAIN",
    "AUDIT_FORMAT",
    "DECISIONS",
    "GENESIS_HASH",
    "AuditBuilder",
    "AuditChainError",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "audit_entry_from_json",
    "audit_entry_hash",
    "audit_entry_to_json",
    "audit_hash_input",
    "verify_audit_chain",
]

#: Format label inside every hashed entry.
AUDIT_FORMAT = "teeflow-audit/1"
#: Signing domain prefixed to the entry hash (17 bytes).
AUDIT_DOMAIN = b"teeflow-audit-v1\0"
#: Allowed ``decision`` values.
DECISIONS = ("accept", "deny", "info")
#: Most reasons per entry, and longest reason (characters).
MAX_REASONS = 64
MAX_REASON_CHARS = 1024

_EXACT_LIMIT = float(2**53)
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_SIG = re.compile(r"(?:[0-9a-f]{2}){1,256}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_SECRET_PARTS = (
    "secret",
    "password",
    "passphrase",
    "private",
    "plaintext",
    "wrapped_key",
    "data_key",
)
_SECRET_NAMES = frozenset({"key", "token", "jwe", "cookie", "authorization"})
_PUBLIC_SUFFIXES = ("_digest", "_hash", "_sha256", "_fingerprint")


class AuditError(KbsError):
    """An audit entry could not be built (bad kind/decision, oversized or secret-looking data)."""

    code = "kbs-audit"


class AuditChainError(VerificationError):
    """The audit chain does not verify; ``seq`` is the first bad entry's sequence number."""

    code = "audit-chain"

    def __init__(self, seq: int | None, reason: str) -> None:
        where = "audit chain" if seq is None else f"audit entry seq {seq}"
        super().__init__(f"{where}: {reason}")
        self.seq = seq
        self.reason = reason


def _time_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def audit_hash_input(
    *,
    seq: int,
    time: datetime,
    kind: str,
    subject: str,
    decision: str,
    reasons: Sequence[str],
    data: Mapping[str, Any],
    prev_hash: bytes,
) -> bytes:
    """The canonical bytes hashed for an entry (see the module docstring for the shape).

    Raises:
        AuditError: a value is not representable in I-JSON (RFC 8785 refuses it) or ``time``
            is naive.
    """
    if time.tzinfo is None or time.utcoffset() is None:
        raise AuditError("audit time must be timezone-aware")
    body: dict[str, Any] = {
        "format": AUDIT_FORMAT,
        "seq": seq,
        "time": _time_text(time),
        "kind": kind,
        "subject": subject,
        "decision": decision,
        "reasons": list(reasons),
        "data": dict(data),
        "prev_hash": bytes(prev_hash).hex(),
    }
    try:
        return bytes(rfc8785.dumps(body))
    except (rfc8785.CanonicalizationError, TypeError, ValueError, OverflowError, RecursionError):
        raise AuditError("audit entry is not canonical-JSON serialisable") from None


def audit_entry_hash(entry: AuditEntry) -> bytes:
    """SHA-256 (32 bytes) of :func:`audit_hash_input` of ``entry``'s fields.

    Raises:
        AuditError: see :func:`audit_hash_input`.
    """
    return hashlib.sha256(
        audit_hash_input(
            seq=entry.seq,
            time=entry.time,
            kind=entry.kind,
            subject=entry.subject,
            decision=entry.decision,
            reasons=entry.reasons,
            data=entry.data,
            prev_hash=entry.prev_hash,
        )
    ).digest()


def _check_public(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise AuditError("audit data nested too deeply")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError("audit data keys must be strings")
            low = key.lower()
            if not low.endswith(_PUBLIC_SUFFIXES) and (
                low in _SECRET_NAMES or any(part in low for part in _SECRET_PARTS)
            ):
                raise AuditError(f"audit data key {key[:64]!r} looks secret; store a digest")
            _check_public(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_public(item, depth + 1)
    elif isinstance(value, float) and value.is_integer() and abs(value) >= _EXACT_LIMIT:
        # RFC 8785 writes it without a fraction, it reads back as an integer beyond the
        # I-JSON exact range (RFC 7493 §2.2), and the stored entry would not re-hash
        raise AuditError("audit data numbers must be below 2**53 in magnitude")


class AuditLog:
    """Writes signed, chained entries to a :class:`KbsStore`.

    Args:
        store: the KBS store (its ``append_audit`` enforces seq and prev_hash atomically).
        signing_key: the KBS audit key (Ed25519).
        clock: returns the current time (timezone-aware); injected, never read implicitly.
        max_attempts: how many times :meth:`append` re-reads the head after a
            :class:`StorageConflict` (another writer appended first) before giving up.
    """

    def __init__(
        self,
        store: KbsStore,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], datetime],
        *,
        max_attempts: int = 16,
    ) -> None:
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise AuditError("the audit signing key must be Ed25519")
        self._store = store
        self._key = signing_key
        self._clock = clock
        self._max_attempts = max(1, max_attempts)
        self._lock = threading.Lock()

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The audit verification key (publish it with the KBS evidence)."""
        return self._key.public_key()

    def append(
        self,
        kind: str,
        subject: str,
        decision: str,
        reasons: Sequence[str] = (),
        data: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one signed entry and return it (durable when this returns).

        Args:
            kind: lower-case token ``[a-z][a-z0-9_.-]{0,31}``: ``agreement``, ``attestation``,
                ``release``, ``certificate``, ``counter``, ...
            subject: what the event concerns (1..256 characters).
            decision: one of :data:`DECISIONS`.
            reasons: up to 64 strings of at most 1024 characters (every reason of a deny).
            data: JSON object of public facts (see the no-secrets rule in the module doc).

        Raises:
            AuditError: invalid kind/decision/subject/reasons, non-I-JSON or secret-looking
                data, or canonical size above ``MAX_AUDIT_DATA_BYTES``.
            StorageConflict: still conflicting after ``max_attempts`` tries.
            StorageInputError: the store's own bounds refused the entry.
            StorageError: the store failed.
        """
        prepared = self._validate(kind, subject, decision, reasons, data)
        with self._lock:
            for _ in range(self._max_attempts):
                entry = self._build(prepared)
                try:
                    self._store.append_audit(entry)
                except StorageConflict:
                    continue
                return entry
        raise StorageConflict("audit append kept conflicting with other writers")

    def builder(
        self,
        kind: str,
        subject: str,
        decision: str,
        reasons: Sequence[str] = (),
        data: Mapping[str, Any] | None = None,
    ) -> AuditBuilder:
        """Validate an entry now and return ``build(seq, prev_hash) -> AuditEntry``, which
        dates (this log's clock, read when called), hashes and signs it at that position.
        Give it to :meth:`KbsStore.append_audit_built` or an audited store write, which
        call it inside their transaction (so the entry always extends the current head).

        Args:
            kind, subject, decision, reasons, data: as :meth:`append`.

        Raises:
            AuditError: as :meth:`append` (here, before anything is written); the builder
                itself raises AuditError only for a clock returning naive datetimes.
        """
        prepared = self._validate(kind, subject, decision, reasons, data)

        def build(seq: int, prev_hash: bytes) -> AuditEntry:
            return self._signed(seq, prev_hash, prepared)

        return build

    @staticmethod
    def _validate(
        kind: object,
        subject: object,
        decision: object,
        reasons: object,
        data: object,
    ) -> _Prepared:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise AuditError("audit kind must match [a-z][a-z0-9_.-]{0,31}")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_NAME_CHARS:
            raise AuditError(f"audit subject must be 1..{MAX_NAME_CHARS} characters")
        if decision not in DECISIONS:
            raise AuditError(f"audit decision must be one of {', '.join(DECISIONS)}")
        if isinstance(reasons, str) or not isinstance(reasons, Sequence):
            raise AuditError("audit reasons must be a sequence of strings")
        reasons_list = list(reasons)
        if len(reasons_list) > MAX_REASONS or not all(
            isinstance(r, str) and len(r) <= MAX_REASON_CHARS for r in reasons_list
        ):
            raise AuditError(f"at most {MAX_REASONS} reasons of <= {MAX_REASON_CHARS} chars")
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise AuditError("audit data must be a JSON object")
        _check_public(data)
        try:
            reasons_c, data_c = rfc8785.dumps(reasons_list), rfc8785.dumps(dict(data))
        except (
            rfc8785.CanonicalizationError,
            TypeError,
            ValueError,
            OverflowError,
            RecursionError,
        ):
            raise AuditError("audit reasons/data are not I-JSON") from None
        if len(reasons_c) + len(data_c) + 3 > MAX_AUDIT_DATA_BYTES - 64:
            raise AuditError(f"audit reasons+data larger than {MAX_AUDIT_DATA_BYTES} bytes")
        # Normalise through canonical JSON: what we hash is exactly what the store returns.
        data_norm: dict[str, Any] = json.loads(data_c)
        return _Prepared(
            kind, subject, decision,
            reasons=reasons_list, data=data_norm, reasons_c=reasons_c, data_c=data_c,
        )  # fmt: skip

    def _build(self, prepared: _Prepared) -> AuditEntry:
        last = self._store.last_audit()
        seq = 1 if last is None else last.seq + 1
        prev = GENESIS_HASH if last is None else last.hash
        return self._signed(seq, prev, prepared)

    def _signed(self, seq: int, prev: bytes, prepared: _Prepared) -> AuditEntry:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
            raise AuditError("the audit clock must return timezone-aware datetimes")
        when = now.astimezone(UTC)
        digest = hashlib.sha256(prepared.hash_input(seq, when, prev)).digest()
        signature = self._key.sign(AUDIT_DOMAIN + digest)
        return AuditEntry(
            seq=seq,
            time=when,
            kind=prepared.kind,
            subject=prepared.subject,
            decision=prepared.decision,
            reasons=list(prepared.reasons),
            data=prepared.data,
            prev_hash=prev,
            hash=digest,
            signature=signature,
        )


class _Prepared:
    """A validated entry waiting for its position: the RFC 8785 text of every member but
    ``seq``, ``time`` and ``prev_hash`` is made once, before the store's write lock, and
    :meth:`hash_input` splices the three in (members in RFC 8785 §3.2.3 order: all keys are
    ASCII, so code-unit order is byte order). Equal to :func:`audit_hash_input` - tested."""

    __slots__ = ("_head", "_middle", "_tail", "data", "decision", "kind", "reasons", "subject")

    def __init__(
        self,
        kind: str,
        subject: str,
        decision: str,
        *,
        reasons: list[str],
        data: dict[str, Any],
        reasons_c: bytes,
        data_c: bytes,
    ) -> None:
        self.kind, self.subject, self.decision = kind, subject, decision
        self.reasons, self.data = reasons, data
        self._head = b"".join((
            b'{"data":', data_c, b',"decision":', rfc8785.dumps(decision),
            b',"format":', rfc8785.dumps(AUDIT_FORMAT), b',"kind":', rfc8785.dumps(kind),
            b',"prev_hash":"',
        ))  # fmt: skip
        self._middle = b'","reasons":' + reasons_c + b',"seq":'
        self._tail = b',"subject":' + rfc8785.dumps(subject) + b',"time":"'

    def hash_input(self, seq: int, when: datetime, prev: bytes) -> bytes:
        """:func:`audit_hash_input` of this entry at ``seq`` (an int below 2**53, as
        RFC 8785 numbers), ``when`` (aware) and ``prev`` (32 bytes)."""
        if not 0 <= seq < 1 << 53 or when.tzinfo is None:
            raise AuditError("audit seq or time out of range")
        return b"".join((
            self._head, bytes(prev).hex().encode("ascii"), self._middle,
            str(int(seq)).encode("ascii"), self._tail, _time_text(when).encode("ascii"), b'"}',
        ))  # fmt: skip


def verify_audit_chain(
    entries: Iterable[AuditEntry],
    public_key: Ed25519PublicKey,
    *,
    after: AuditEntry | None = None,
    expected_head: bytes | None = None,
) -> None:
    """Check that ``entries`` form an unbroken, correctly hashed and signed chain.

    Args:
        entries: entries in the order read (ascending seq).
        public_key: the KBS audit key (Ed25519).
        after: the trusted entry just before ``entries`` (to verify a page); None means the
            chain must start at seq 1 with :data:`GENESIS_HASH`.
        expected_head: if given, the hash the last entry must have (detects truncation).

    Raises:
        AuditChainError (a :class:`VerificationError`): names the first bad ``seq`` and why -
            gap or reordering (unexpected seq), broken link (prev_hash), bad hash, bad
            signature, not an entry - or a head mismatch.
    """
    expected_seq = 1 if after is None else after.seq + 1
    expected_prev = GENESIS_HASH if after is None else after.hash
    for entry in entries:
        if not isinstance(entry, AuditEntry):
            raise AuditChainError(expected_seq, "not an audit entry")
        if entry.seq != expected_seq:
            raise AuditChainError(entry.seq, f"gap or reordering (expected seq {expected_seq})")
        if entry.prev_hash != expected_prev:
            raise AuditChainError(entry.seq, "broken link (prev_hash differs)")
        try:
            digest = audit_entry_hash(entry)
        except (AuditError, AttributeError, TypeError):
            raise AuditChainError(entry.seq, "bad hash (fields not canonical)") from None
        if digest != entry.hash:
            raise AuditChainError(entry.seq, "bad hash")
        try:
            public_key.verify(bytes(entry.signature), AUDIT_DOMAIN + digest)
        except (InvalidSignature, TypeError):
            raise AuditChainError(entry.seq, "bad signature") from None
        expected_seq, expected_prev = entry.seq + 1, entry.hash
    if expected_head is not None and expected_prev != expected_head:
        raise AuditChainError(None, "chain does not end at the expected head (truncated?)")


def audit_entry_to_json(entry: AuditEntry) -> dict[str, Any]:
    """JSON form (``GET /v1/audit``): times as in the hash input, bytes as lower-case hex."""
    return {
        "seq": entry.seq,
        "time": _time_text(entry.time),
        "kind": entry.kind,
        "subject": entry.subject,
        "decision": entry.decision,
        "reasons": list(entry.reasons),
        "data": entry.data,
        "prev_hash": entry.prev_hash.hex(),
        "hash": entry.hash.hex(),
        "signature": entry.signature.hex(),
    }


def audit_entry_from_json(obj: object) -> AuditEntry:
    """Parse :func:`audit_entry_to_json` output (total; does not verify the chain).

    Raises:
        ParseError: missing/extra members, wrong types, bad hex or time format.
    """
    keys = {
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
    }
    if not isinstance(obj, dict) or set(obj) != keys:
        raise ParseError("audit entry must be an object with exactly the audit members")
    seq, time_text = obj["seq"], obj["time"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ParseError("audit seq must be a positive integer")
    if not isinstance(time_text, str) or len(time_text) != 27:
        raise ParseError("audit time must be YYYY-MM-DDTHH:MM:SS.ffffffZ")
    try:
        time = datetime.strptime(time_text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ParseError("audit time must be YYYY-MM-DDTHH:MM:SS.ffffffZ") from None
    for name in ("kind", "subject", "decision"):
        if not isinstance(obj[name], str):
            raise ParseError(f"audit {name} must be a string")
    reasons, data = obj["reasons"], obj["data"]
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise ParseError("audit reasons must be a list of strings")
    if not isinstance(data, dict):
        raise ParseError("audit data must be an object")
    raw: dict[str, bytes] = {}
    for name, pattern in (("prev_hash", _HEX64), ("hash", _HEX64), ("signature", _HEX_SIG)):
        value = obj[name]
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ParseError(f"audit {name} must be lower-case hex")
        raw[name] = bytes.fromhex(value)
    return AuditEntry(
        seq=seq,
        time=time,
        kind=obj["kind"],
        subject=obj["subject"],
        decision=obj["decision"],
        reasons=list(reasons),
        data=data,
        prev_hash=raw["prev_hash"],
        hash=raw["hash"],
        signature=raw["signature"],
    )
