"""The KBS storage contract: the :class:`KbsStore` protocol, its records, errors and limits.

Every backend (:mod:`.memory`, :mod:`.sql` for SQLite and PostgreSQL) implements
:class:`KbsStore` with the same observable behaviour; ``tests/storage/test_store_contract.py``
and ``tests/storage/test_store_audited.py`` run one suite against all of them. All methods
are synchronous and thread-safe (the service calls them from a thread pool). A method that
returns normally has committed its write; a method that raises has written nothing.

Durability of a committed write (DESIGN, security invariant 5) is the backend's: every
committed write survives a crash of the KBS process (SIGKILL) on every SQL backend; on SQLite
with the default ``synchronous=normal`` only the *durable* operations (agreements,
resources/grants, counters - and with them everything committed before) are also fsync'ed
before they return, while sessions, tokens, releases and their audit entries can lose their
last commits on an OS crash or power loss (see :mod:`teeflow.kbs.store.sql`);
``synchronous=full`` and PostgreSQL fsync every commit.

Audited writes: :meth:`KbsStore.append_audit_built`, :meth:`KbsStore.consume_nonce_and_audit`
and :meth:`KbsStore.record_release_and_audit` append an audit entry in the *same* transaction
as the state change (one commit, both or neither). The entry is made by an
:data:`AuditBuilder` called inside the transaction with the next ``seq`` and the head's hash,
so it always extends the chain; a store may call the builder again when a concurrent writer
forced a retry.

Times are timezone-aware :class:`datetime.datetime` values; stores keep them in UTC with
microsecond precision and return them in UTC. Naive datetimes are rejected.

Every input is bounded (the ``MAX_*`` constants below); an input out of bounds or of the wrong
type raises :class:`StorageInputError` before anything is written.

Errors (all :class:`StorageError`, a :class:`teeflow.errors.KbsError`):

* :class:`StorageConflict` - an atomic precondition failed: append-only order (version,
  sequence number, previous hash), duplicate key, stale expected value, release budget used up,
  nonce already consumed, resource owned by another party. Retrying with fresh state may work.
* :class:`StorageNotFound` - the named session or resource does not exist.
* :class:`StorageExpired` - the session's nonce has expired.
* :class:`StorageInputError` - an argument is out of bounds or malformed.
* :class:`StorageTampered` - a stored row failed authentication under the KBS storage key
  (:mod:`teeflow.kbs.store.rows`): the host edited, inserted or moved it;
  :class:`StorageRollback` - authentic rows older than the state log (a rolled-back row, a
  deleted row or a truncated audit tail). The store keeps working for every other row.

Integrity (adversary H, who reads and writes the database). Every row carries an HMAC tag
under the KBS storage key bound to its table and primary key; wrapped data keys and session
claims are AES-GCM encrypted; session ids are kept only as keyed hashes
(:mod:`teeflow.kbs.store.rows`). Every state change of an agreement, resource (upload or
release) or counter is made by an audited write (``*_and_audit``) and the changed row records
the ``seq`` of its audit entry (``audit_seq``), the entry the row it changed (``touches``):
the audit chain is the store's state log. :meth:`KbsStore.check_state` (run when a SQL store
is opened) verifies every audit row and chain link and that each agreement, resource and
counter row is the one the log's last entry for it wrote; afterwards the store remembers the
``audit_seq`` of every such row it wrote or checked and refuses an older one
(:class:`StorageRollback`). A rollback of the *whole* database to an earlier consistent state
passes these checks: it is detected by the signed state heads the parties remember
(:mod:`teeflow.kbs.service.heads`).

Messages never contain SQL text, bound parameters, key material or connection passwords.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from teeflow.errors import KbsError

__all__ = [
    "GENESIS_HASH",
    "MAX_AGREEMENT_BYTES",
    "MAX_AUDIT_DATA_BYTES",
    "MAX_AUDIT_PAGE",
    "MAX_CLAIMS_BYTES",
    "MAX_COUNTER_VALUE",
    "MAX_DIGEST_BYTES",
    "MAX_GRANT_BYTES",
    "MAX_NAME_CHARS",
    "MAX_NONCE_BYTES",
    "MAX_PATH_CHARS",
    "MAX_REVOCATION_BYTES",
    "MAX_SIGNATURE_BYTES",
    "MAX_WRAPPED_KEY_BYTES",
    "MIN_DIGEST_BYTES",
    "AgreementRecord",
    "AuditBuilder",
    "AuditEntry",
    "EnrollmentRecord",
    "EnrollmentUse",
    "EnrollmentUseRefused",
    "KbsStore",
    "ResourceRecord",
    "SessionRecord",
    "StorageConflict",
    "StorageError",
    "StorageExpired",
    "StorageInputError",
    "StorageNotFound",
    "StorageRollback",
    "StorageTampered",
    "TokenBinding",
]

#: Largest stored enrollment revocation (bytes of the compact JWS).
MAX_REVOCATION_BYTES = 4096
#: Largest canonical signed agreement envelope (bytes).
MAX_AGREEMENT_BYTES = 1 << 20
#: Largest signed grant document (bytes).
MAX_GRANT_BYTES = 64 << 10
#: Largest wrapped (HPKE-sealed) data key (bytes).
MAX_WRAPPED_KEY_BYTES = 8 << 10
#: Digests (agreement, grant, counter-bound, token) are 16..64 bytes (SHA-256 is 32).
MIN_DIGEST_BYTES = 16
MAX_DIGEST_BYTES = 64
#: Session nonces are 16..64 bytes (RCAR uses 32).
MAX_NONCE_BYTES = 64
#: Resource paths (``repo/type/tag``), in characters.
MAX_PATH_CHARS = 512
#: Owner names, counter names, session ids, TEE names, audit kinds/subjects, in characters.
MAX_NAME_CHARS = 256
#: Largest JSON text of token claims bound to a session (UTF-8 bytes).
MAX_CLAIMS_BYTES = 64 << 10
#: Largest canonical JSON of an audit entry's ``reasons`` plus ``data`` (bytes).
MAX_AUDIT_DATA_BYTES = 64 << 10
#: Largest audit signature (bytes; Ed25519 uses 64).
MAX_SIGNATURE_BYTES = 512
#: Largest ``limit`` of one :meth:`KbsStore.audit_entries` page.
MAX_AUDIT_PAGE = 10_000
#: Counters and release counts fit a signed 64-bit column.
MAX_COUNTER_VALUE = (1 << 63) - 1
#: ``prev_hash`` of the first audit entry (seq 1): 32 zero bytes.
GENESIS_HASH = bytes(32)


class StorageError(KbsError):
    """The KBS store failed (database unavailable, corrupt row, or a subclass below)."""

    code = "kbs-storage"


class StorageConflict(StorageError):
    """An atomic precondition failed (order, uniqueness, stale expected value, used up)."""

    code = "kbs-storage-conflict"


class StorageNotFound(StorageError):
    """The named row (session, resource) does not exist."""

    code = "kbs-storage-not-found"


class StorageExpired(StorageError):
    """The session's nonce expired before it was consumed."""

    code = "kbs-storage-expired"


class StorageTampered(StorageError):
    """A stored row failed authentication under the KBS storage key (edited, inserted, moved,
    or written under another key set): the host changed the database. Nothing was written.

    Attributes:
        table: the table of the refused row (no values: they are untrusted).
    """

    code = "kbs-storage-tampered"

    def __init__(self, message: str, *, table: str = "") -> None:
        super().__init__(message)
        self.table = table


class StorageRollback(StorageTampered):
    """Authentic rows are older than the state log says (a row or the audit tail was rolled
    back or deleted): the store is not the state the KBS last wrote."""

    code = "kbs-storage-rollback"


class StorageInputError(StorageError):
    """An argument is out of bounds (size, range) or has the wrong type; nothing was written."""

    code = "kbs-storage-input"


@dataclass(frozen=True, slots=True)
class AgreementRecord:
    """One accepted federation agreement version.

    Attributes:
        version: 1, 2, ... (each append is the previous version + 1).
        digest: canonical digest of the agreement (SHA-256, 32 bytes; unique across history).
        document: the canonical signed envelope, at most :data:`MAX_AGREEMENT_BYTES`.
        created_at: acceptance time (UTC).
    """

    version: int
    digest: bytes
    document: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    """A wrapped data key with the owner-signed grant that governs its release.

    Attributes:
        path: resource path ``repo/type/tag`` (at most :data:`MAX_PATH_CHARS`).
        owner: party name that uploaded it; only the same owner may replace it.
        wrapped_key: the data key HPKE-sealed to the KBS key (never plaintext).
        grant: the signed grant document; ``grant_digest`` its digest.
        not_after: grant expiry (UTC) or None; enforced by the service, stored here.
        max_releases: release budget, or None for unlimited.
        release_count: releases recorded so far under this generation.
        generation: 1 on first upload, +1 on every replacement (count restarts at 0).
        created_at: time of the upload that produced this generation (UTC).
    """

    path: str
    owner: str
    wrapped_key: bytes
    grant: bytes
    grant_digest: bytes
    not_after: datetime | None
    max_releases: int | None
    release_count: int
    generation: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """An RCAR session (``kbs-session-id`` cookie): its nonce and, after attestation, its token.

    Attributes:
        session_id: opaque session identifier (at most :data:`MAX_NAME_CHARS`).
        nonce: the challenge nonce (16..64 bytes).
        tee: the TEE type the client declared (``sgx``, ``emulated-sgx``, ...).
        expires_at: nonce expiry (UTC); the nonce cannot be consumed at or after it.
        consumed: the nonce has been used by an attestation (single use).
        token_digest: digest of the issued EAR token, once bound.
        claims_json: JSON text of the token's claims, once bound.
        token_expires_at: token expiry (UTC), once bound.
    """

    session_id: str
    nonce: bytes
    tee: str
    expires_at: datetime
    consumed: bool = False
    token_digest: bytes | None = None
    claims_json: str | None = None
    token_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the hash-chained, signed audit log (see :mod:`teeflow.kbs.service.audit`).

    Attributes:
        seq: 1, 2, ... without gaps.
        time: time of the event (UTC, microsecond precision).
        kind: event class: ``agreement``, ``attestation``, ``release``, ``certificate``,
            ``counter``, ... (lower-case token).
        subject: what the event is about (resource path, party, session id, counter name).
        decision: ``accept``, ``deny`` or ``info``.
        reasons: every reason for the decision (short strings).
        data: JSON object with public facts only (digests, measurements; never secrets).
        prev_hash: ``hash`` of entry ``seq - 1``, or :data:`GENESIS_HASH` for seq 1.
        hash: SHA-256 over the canonical JSON of the other fields (32 bytes).
        signature: the KBS audit key's signature over ``hash``.
    """

    seq: int
    time: datetime
    kind: str
    subject: str
    decision: str
    reasons: list[str]
    data: dict[str, Any]
    prev_hash: bytes
    hash: bytes
    signature: bytes


#: ``build(seq, prev_hash) -> AuditEntry``: the signed audit entry to append as number ``seq``
#: after the entry whose hash is ``prev_hash`` (:data:`GENESIS_HASH` for seq 1). Called by the
#: store inside the write transaction (see :meth:`teeflow.kbs.service.audit.AuditLog.builder`); must
#: not touch the store; may be called more than once.
AuditBuilder = Callable[[int, bytes], AuditEntry]


@dataclass(frozen=True, slots=True)
class TokenBinding:
    """A token to bind to a session together with the consumption of its nonce.

    Attributes:
        token_digest: digest of the issued EAR (16..64 bytes).
        claims_json: JSON text of the attested session (at most :data:`MAX_CLAIMS_BYTES`).
        expires_at: token expiry (timezone-aware).
    """

    token_digest: bytes
    claims_json: str
    expires_at: datetime


class EnrollmentUseRefused(StorageError):
    """An enrollment may not be used (again): ``reason`` is ``"revoked"`` or
    ``"exhausted"`` (its use count reached ``max_uses``). Nothing was written."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"enrollment {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnrollmentUse:
    """One use of an enrollment, counted with the attestation that accepts it.

    Attributes:
        key: ``party/jti`` (:func:`teeflow.kbs.policy.enrollment.use_key`), at most
            :data:`MAX_NAME_CHARS` characters.
        max_uses: the enrollment's ``uses`` (1..2**31-1), or None (not limited).
    """

    key: str
    max_uses: int | None


@dataclass(frozen=True, slots=True)
class EnrollmentRecord:
    """What the store knows of one enrollment.

    Attributes:
        key: ``party/jti``.
        uses: accepted attestations that used it.
        revoked_at: when its revocation was accepted (first time), or None.
        revocation: the party-signed revocation (compact JWS bytes), or None.
    """

    key: str
    uses: int
    revoked_at: datetime | None
    revocation: bytes | None


@runtime_checkable
class KbsStore(Protocol):
    """Persistent state of the Key Broker Service. See the module docstring for the contract."""

    # -- agreements (append-only) ------------------------------------------------------
    def append_agreement(
        self, version: int, digest: bytes, document: bytes, created_at: datetime
    ) -> AgreementRecord:
        """Append agreement ``version`` (must be the current version + 1, or 1 when empty).

        Raises:
            StorageConflict: wrong version or ``digest`` already in the history.
            StorageInputError: bounds (document size, digest length, naive time).
        """
        ...

    def append_agreement_and_audit(
        self,
        version: int,
        digest: bytes,
        document: bytes,
        created_at: datetime,
        build: AuditBuilder,
    ) -> tuple[AgreementRecord, AuditEntry]:
        """:meth:`append_agreement` and the audit entry ``build`` makes in one transaction.

        Raises:
            StorageConflict, StorageInputError: as :meth:`append_agreement` (nothing written).
        """
        ...

    def current_agreement(self) -> AgreementRecord | None:
        """The highest version, or None when no agreement was accepted yet."""
        ...

    def agreement_history(self) -> list[AgreementRecord]:
        """Every version, ascending."""
        ...

    # -- resources -----------------------------------------------------------------------
    def put_resource(
        self,
        path: str,
        owner: str,
        *,
        wrapped_key: bytes,
        grant: bytes,
        grant_digest: bytes,
        not_after: datetime | None,
        max_releases: int | None,
        created_at: datetime,
    ) -> ResourceRecord:
        """Create or replace a resource; a replacement bumps ``generation`` and resets the count.

        Raises:
            StorageConflict: the path exists with another owner (or a concurrent replace won).
            StorageInputError: bounds.
        """
        ...

    def put_resource_and_audit(
        self,
        path: str,
        owner: str,
        build: AuditBuilder,
        *,
        wrapped_key: bytes,
        grant: bytes,
        grant_digest: bytes,
        not_after: datetime | None,
        max_releases: int | None,
        created_at: datetime,
    ) -> tuple[ResourceRecord, AuditEntry]:
        """:meth:`put_resource` and the audit entry ``build`` makes in one transaction.

        Raises:
            StorageConflict, StorageInputError: as :meth:`put_resource` (nothing written).
        """
        ...

    def get_resource(self, path: str) -> ResourceRecord | None:
        """The resource at ``path`` or None.

        Raises:
            StorageTampered: the row fails authentication; StorageRollback: it is older than
                the state log.
        """
        ...

    def record_release(
        self, path: str, expected_count: int, *, generation: int | None = None
    ) -> int:
        """Atomically increment the release count from ``expected_count``; return the new count.

        Args:
            generation: when given, the resource must still be at this generation (the grant
                the caller checked has not been replaced meanwhile).

        Raises:
            StorageNotFound: no such resource.
            StorageConflict: stale ``expected_count`` or generation, or budget used up
                (``release_count >= max_releases``).
        """
        ...

    def record_release_and_audit(
        self,
        path: str,
        expected_count: int,
        build: AuditBuilder,
        *,
        generation: int | None = None,
        agreement_digest: bytes | None = None,
    ) -> tuple[int, AuditEntry]:
        """:meth:`record_release` and :meth:`append_audit_built` in one transaction: both
        or neither. Returns ``(new count, appended entry)``.

        Args:
            agreement_digest: when given, the newest agreement must have this digest
                (checked in the same transaction: no release under a superseded agreement).

        Raises:
            StorageNotFound, StorageConflict: as :meth:`record_release` (nothing written);
                also StorageConflict when ``agreement_digest`` is not the newest agreement's.
            StorageInputError: bounds, or a built entry that does not extend the chain.
        """
        ...

    # -- monotonic counters --------------------------------------------------------------
    def get_counter(self, name: str) -> tuple[int, bytes] | None:
        """``(value, digest)`` of the counter, or None if it was never incremented."""
        ...

    def compare_and_increment(self, name: str, expected: int, new_digest: bytes) -> int:
        """If the counter equals ``expected`` (0 for a new counter), set it to ``expected + 1``
        bound to ``new_digest``; return the new value. Atomic: of concurrent calls with the
        same ``expected`` exactly one succeeds.

        Raises:
            StorageConflict: the counter is not at ``expected``.
        """
        ...

    def compare_and_increment_and_audit(
        self, name: str, expected: int, new_digest: bytes, build: AuditBuilder
    ) -> tuple[int, AuditEntry]:
        """:meth:`compare_and_increment` and the audit entry ``build`` makes in one
        transaction.

        Raises:
            StorageConflict, StorageInputError: as :meth:`compare_and_increment`.
        """
        ...

    # -- RCAR sessions and nonces ---------------------------------------------------------
    def create_session(
        self, session_id: str, nonce: bytes, tee: str, expires_at: datetime
    ) -> SessionRecord:
        """Create a session with an unconsumed nonce.

        Raises:
            StorageConflict: the session id exists.
        """
        ...

    def consume_nonce(self, session_id: str, now: datetime) -> SessionRecord:
        """Mark the session's nonce used (once) and return the session.

        Raises:
            StorageNotFound: unknown session.
            StorageExpired: ``now >= expires_at``.
            StorageConflict: already consumed.
        """
        ...

    def consume_nonce_and_audit(
        self,
        session_id: str,
        now: datetime,
        build: AuditBuilder,
        *,
        token: TokenBinding | None = None,
        agreement_digest: bytes | None = None,
        enrollment: EnrollmentUse | None = None,
    ) -> tuple[SessionRecord, AuditEntry]:
        """In one transaction: consume the session's nonce (as :meth:`consume_nonce`), bind
        ``token`` when given (as :meth:`bind_token`), count one use of ``enrollment`` when
        given, and append the audit entry ``build`` makes (as :meth:`append_audit_built`).
        All or nothing.

        Args:
            agreement_digest: when given, the newest agreement must have this digest.
            enrollment: when given, the enrollment must not be revoked and its use count
                must be below ``max_uses``; the count then grows by one (a new key starts
                at 1). Of concurrent uses of the last one exactly one succeeds.

        Returns:
            ``(session after the change, appended entry)``.

        Raises:
            StorageNotFound, StorageExpired, StorageConflict: as :meth:`consume_nonce`
                (nothing written); also StorageConflict when ``agreement_digest`` is not
                the newest agreement's.
            EnrollmentUseRefused: the enrollment is revoked or its uses are exhausted
                (nothing written).
            StorageInputError: bounds of ``token``, or a built entry that does not extend
                the chain.
        """
        ...

    # -- enrollments -------------------------------------------------------------------
    def get_enrollment(self, key: str) -> EnrollmentRecord | None:
        """The uses and revocation of enrollment ``key`` (``party/jti``), or None."""
        ...

    def revoke_enrollment_and_audit(
        self, key: str, revocation: bytes, now: datetime, build: AuditBuilder
    ) -> tuple[EnrollmentRecord, AuditEntry]:
        """Record the revocation of enrollment ``key`` (the first revocation is kept; a
        repeated one changes nothing but is audited) and append ``build``'s entry, in one
        transaction. Every later :meth:`consume_nonce_and_audit` with this key fails.

        Raises:
            StorageInputError: bounds (key, revocation at most 4096 bytes, naive time).
        """
        ...

    def bind_token(
        self, session_id: str, token_digest: bytes, claims_json: str, expires_at: datetime
    ) -> SessionRecord:
        """Bind an issued token to a session whose nonce was consumed (once).

        Raises:
            StorageNotFound: unknown session.
            StorageConflict: nonce not consumed yet, or a token is already bound.
        """
        ...

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session or None."""
        ...

    def purge_sessions(self, now: datetime) -> int:
        """Delete sessions whose nonce and token (if any) both expired before ``now``;
        return how many were deleted."""
        ...

    # -- audit log ----------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        """Append ``entry``: ``entry.seq`` must be last seq + 1 (1 when empty) and
        ``entry.prev_hash`` the last entry's hash (:data:`GENESIS_HASH` when empty).
        The store does not check hashes or signatures (see ``verify_audit_chain``).

        Raises:
            StorageConflict: wrong seq or prev_hash (another writer appended first).
            StorageInputError: bounds.
        """
        ...

    def append_audit_built(self, build: AuditBuilder) -> AuditEntry:
        """Append ``build(seq, prev_hash)`` for the current head in one transaction (no
        separate read of the head, no conflict with other writers: a store that detects a
        concurrent append retries with the new head and calls ``build`` again).

        Raises:
            StorageInputError: the built entry is out of bounds or does not carry the
                ``seq`` / ``prev_hash`` it was built for.
            StorageConflict: still conflicting after the store's bounded retries.
        """
        ...

    def audit_entries(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Entries with ``seq > after_seq``, ascending, at most ``limit`` (1..MAX_AUDIT_PAGE)."""
        ...

    def last_audit(self) -> AuditEntry | None:
        """The entry with the highest seq, or None."""
        ...

    def check_state(self) -> AuditEntry | None:
        """Verify the whole store against its state log (module docstring, "Integrity") and
        return the audit head (None when empty). Bounded by the size of the store: one pass
        over the audit log and the agreement, resource and counter rows.

        Raises:
            StorageTampered: a row fails authentication or a chain link is broken.
            StorageRollback: a row is older than the log's last entry for it, a row the log
                wrote is missing, or a row names an audit entry past the head (truncated tail).
        """
        ...

    def close(self) -> None:
        """Release connections. The store must not be used afterwards."""
        ...
