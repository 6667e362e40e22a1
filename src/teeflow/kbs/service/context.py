"""State and plumbing shared by the parts of the KBS core: the store, the keys, the clock,
the audit recorder, the caches and this process's copy of the agreement in force.

:class:`ServiceContext` is constructed by :class:`teeflow.kbs.service.core.KbsService`; its
arguments are documented there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import ECKey
from pydantic import ValidationError

from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import KbsError, PolicyViolation, VerificationError
from teeflow.kbs.api.problems import (
    InvalidRequest,
    KbsProblem,
    PolicyDeny,
    ServiceUnavailable,
)
from teeflow.kbs.ca.authority import FederationCA
from teeflow.kbs.policy.signing import (
    SignedAgreement,
    verify_initial,
    verify_update,
)
from teeflow.kbs.service.audit import (
    AuditError,
    AuditLog,
)
from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider
from teeflow.kbs.service.heads import HeadRecorder, KbsHeadFile
from teeflow.kbs.service.rcar import (
    TokenCache,
)
from teeflow.kbs.service.release import (
    RELEASE_DENIED_DETAIL,
    GrantCache,
    ResourceViews,
)
from teeflow.kbs.store.interface import (
    AgreementRecord,
    AuditBuilder,
    AuditEntry,
    KbsStore,
    StorageError,
    StorageInputError,
    StorageRollback,
    StorageTampered,
)

__all__ = ["MAX_ID", "KbsKeyMaterial", "RevocationCache", "ServiceContext", "sha256_hex"]

#: Longest session id, audit subject or other identifier the core accepts (characters).
MAX_ID = 256


class KbsKeyMaterial(Protocol):
    """The KBS keys the service uses (:class:`teeflow.kbs.service.identity.KbsKeys` fits)."""

    @property
    def hpke(self) -> X25519PrivateKey: ...  # data keys are wrapped to it
    @property
    def ca(self) -> FederationCA: ...  # issues workload certificates
    @property
    def ear(self) -> ECKey: ...  # signs EAR tokens (P-256)
    @property
    def audit(self) -> Ed25519PrivateKey: ...  # signs audit entries


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class RevocationCache:
    """Enrollment revocation states as this process last read them from the store.

    A revoked enrollment stays revoked (kept for good); a not-revoked one is answered from
    memory for ``max_age`` seconds (the agreement refresh interval), so a release does not pay
    a store read each time. A revocation accepted by *this* process is seen at once
    (:meth:`mark`); one accepted by another KBS process sharing the database within
    ``max_age`` seconds. At most ``max_entries`` states are kept (then all are dropped).
    Thread-safe.
    """

    def __init__(self, max_age: float, max_entries: int = 4096) -> None:
        self._max_age = max_age
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        self._states: dict[str, tuple[bool, float]] = {}

    def get(self, key: str) -> bool | None:
        """True (revoked), False (not revoked, read within ``max_age``) or None (read it)."""
        found = self._states.get(key)
        if found is None:
            return None
        revoked, read_at = found
        if revoked or time.monotonic() - read_at < self._max_age:
            return revoked
        return None

    def put(self, key: str, revoked: bool) -> None:
        """Remember a state just read from the store."""
        with self._lock:
            if len(self._states) >= self._max:
                self._states = {k: v for k, v in self._states.items() if v[0]}
                if len(self._states) >= self._max:
                    self._states = {}
            self._states[key] = (revoked, time.monotonic())

    def mark(self, key: str) -> None:
        """A revocation this process stored: revoked from now on."""
        self.put(key, True)


class ServiceContext:
    """What every part of the KBS core shares.

    The arguments are :class:`~teeflow.kbs.service.core.KbsService`'s.

    Raises:
        KbsError: non-positive ``nonce_ttl``/``token_ttl`` or a negative ``agreement_refresh``.
    """

    def __init__(
        self,
        store: KbsStore,
        keys: KbsKeyMaterial,
        *,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes] = os.urandom,
        anchors: Sequence[TrustAnchor],
        collateral: CollateralProvider,
        nonce_ttl: timedelta = timedelta(seconds=60),
        token_ttl: timedelta = timedelta(minutes=5),
        logger: logging.Logger | None = None,
        default_role: str | None = None,
        snp_endorsements: SnpEndorsementProvider | None = None,
        agreement_refresh: timedelta = timedelta(seconds=1),
        first_agreement: bytes | None = None,
        head_file: KbsHeadFile | None = None,
        gpu_anchors: Sequence[TrustAnchor] | None = None,
    ) -> None:
        if nonce_ttl <= timedelta(0) or token_ttl < timedelta(seconds=1):
            raise KbsError("nonce_ttl and token_ttl must be positive")
        if agreement_refresh < timedelta(0):
            raise KbsError("agreement_refresh must not be negative")
        self.store = store
        self.keys = keys
        self.clock = clock
        self.rng = rng
        self.anchors = tuple(anchors)
        self.collateral = collateral
        self.snp_endorsements = snp_endorsements
        self.gpu_anchors = None if gpu_anchors is None else tuple(gpu_anchors)
        self.nonce_ttl = nonce_ttl
        self.token_ttl = token_ttl
        self.log = logger if logger is not None else logging.getLogger("teeflow.kbs.service")
        self.default_role = default_role
        self.audit = AuditLog(store, keys.audit, self.now)
        self.ear_public = ECKey.import_key(keys.ear.as_dict(private=False))
        self._agreement_cache: tuple[bytes, SignedAgreement, float] | None = None
        self.agreement_max_age = agreement_refresh.total_seconds()
        self.tokens = TokenCache()
        self.grants = GrantCache()
        self.known = ResourceViews()
        self.revocations = RevocationCache(self.agreement_max_age)
        if first_agreement is not None and len(first_agreement) != 32:
            raise KbsError("first_agreement must be a 32-byte agreement digest")
        #: digest the first agreement must have (``kbs serve --expect-agreement``), or None
        self.first_agreement = first_agreement
        self.verified_agreements: set[bytes] = set()
        #: signs the state head of each response (:mod:`teeflow.kbs.service.heads`)
        self.heads = HeadRecorder(store, keys.audit, head_file)

    def forget_agreement(self) -> None:
        """Drop this process's copy of the agreement (the next hot-path read re-reads it)."""
        self._agreement_cache = None

    def now(self) -> datetime:
        """The injected clock's time in UTC.

        Raises:
            KbsError: the clock returned a naive datetime.
        """
        now = self.clock()
        if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
            raise KbsError("the KBS clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def storage(self, *expected: type[StorageError]) -> Iterator[None]:
        """Map storage failures to problems, except the ``expected`` ones the caller handles."""
        passthrough: tuple[type[BaseException], ...] = (KbsProblem, *expected)
        try:
            yield
        except passthrough:
            raise
        except StorageTampered as exc:
            self.tampered(exc)
        except StorageInputError as exc:
            raise InvalidRequest(str(exc)) from None
        except (StorageError, AuditError) as exc:
            self.log.error("KBS store failure: %s", type(exc).__name__)
            raise ServiceUnavailable() from None

    def tampered(self, exc: StorageTampered) -> NoReturn:
        """Refuse a request that met a tampered (or rolled-back) row: audit (kind ``store``,
        decision ``deny``), log, 503; the service keeps serving every other row."""
        kind = "rollback" if isinstance(exc, StorageRollback) else "tampered row"
        self.log.error("KBS store integrity failure: %s (%s)", kind, exc.table or "-")
        try:
            build = self.audit.builder("store", exc.table or "-", "deny", [str(exc)[:512]])
            self.heads.saw(self.store.append_audit_built(build))
        except (StorageError, AuditError) as again:
            self.log.error("audit of the integrity failure failed: %s", type(again).__name__)
        raise ServiceUnavailable(
            "the KBS store failed an integrity check (its database was changed outside the "
            "KBS); the operator must restore it"
        ) from None

    def record(
        self,
        kind: str,
        subject: str,
        decision: str,
        reasons: Sequence[str] = (),
        data: dict[str, Any] | None = None,
    ) -> AuditEntry:
        build = self.builder(kind, subject, decision, reasons, data)
        try:
            entry = self.store.append_audit_built(build)
        except StorageTampered as exc:
            self.tampered(exc)
        except (StorageError, AuditError) as exc:
            self.log.error("audit append failed: %s", type(exc).__name__)
            raise ServiceUnavailable() from None
        self.heads.saw(entry)
        return entry

    def builder(
        self,
        kind: str,
        subject: str,
        decision: str,
        reasons: Sequence[str] = (),
        data: dict[str, Any] | None = None,
    ) -> AuditBuilder:
        """An audit entry builder (validated now) for the store's audited writes."""
        subject = subject[:MAX_ID] or "-"
        reasons = [r[:1024] for r in list(reasons)[:64]]
        try:
            return self.audit.builder(kind, subject, decision, reasons, data)
        except AuditError as exc:
            self.log.error("audit entry refused: %s", type(exc).__name__)
            raise ServiceUnavailable() from None

    def deny(
        self,
        problem: type[KbsProblem],
        kind: str,
        subject: str,
        reasons: Sequence[str],
        data: dict[str, Any] | None = None,
        *,
        detail: str | None = None,
    ) -> NoReturn:
        self.record(kind, subject, "deny", reasons, data)
        self.log.info("%s %s denied: %s", kind, subject[:64], "; ".join(reasons)[:512])
        raise problem(detail, list(reasons))

    def deny_release(
        self, path: str, reasons: Sequence[str], data: dict[str, Any] | None = None
    ) -> NoReturn:
        """Refuse a resource release: audited with every reason, answered with
        :class:`~teeflow.kbs.api.problems.PolicyDeny` and the one public
        :data:`~teeflow.kbs.service.release.RELEASE_DENIED_DETAIL` (same body whatever the
        reason, whether the resource exists or not)."""
        self.deny(PolicyDeny, "release", path, reasons, data, detail=RELEASE_DENIED_DETAIL)

    # -- agreements -------------------------------------------------------------------------

    def current(self, max_age: float = 0.0) -> tuple[SignedAgreement, bytes] | None:
        """The active agreement and its digest: read from the store, or - on the hot paths,
        ``max_age > 0`` - the copy this process read (or accepted) less than ``max_age``
        seconds ago. Releases and token bindings re-check the digest inside their store
        transaction, so a stale copy can only make them fail, never succeed."""
        cached = self._agreement_cache
        if cached is not None and max_age > 0 and time.monotonic() - cached[2] < max_age:
            return cached[1], cached[0]
        with self.storage():
            record = self.store.current_agreement()
        if record is None:
            return None
        fetched = time.monotonic()
        if cached is not None and cached[0] == record.digest:
            self._agreement_cache = (record.digest, cached[1], fetched)
            return cached[1], record.digest
        try:
            signed = SignedAgreement.model_validate_json(record.document)
        except ValidationError:
            self.log.error("stored agreement version %d does not parse", record.version)
            raise ServiceUnavailable() from None
        self.verify_stored_agreement(record)
        self._agreement_cache = (record.digest, signed, fetched)
        return signed, record.digest

    def verify_stored_agreement(self, record: AgreementRecord) -> None:
        """Re-verify a stored agreement before its first use (cached by digest): the chain
        from version 1 (``verify_initial``, then ``verify_update`` of each version against
        its predecessor) must hold and end at ``record``'s digest, for this federation.

        Raises:
            ServiceUnavailable: it does not (audited as a tampered ``kbs_agreements`` row).
        """
        if record.digest in self.verified_agreements:
            return
        with self.storage():
            history = self.store.agreement_history()
        upto = history[: record.version]
        problem = ""
        previous: SignedAgreement | None = None
        try:
            for stored in upto:
                signed = SignedAgreement.model_validate_json(stored.document)
                if stored.digest not in self.verified_agreements:
                    if previous is None:
                        computed = verify_initial(signed)
                    else:
                        computed = verify_update(signed, previous)
                    if computed != stored.digest or signed.agreement.version != stored.version:
                        problem = f"agreement version {stored.version} is not what was signed"
                        break
                    if signed.agreement.federation != self.keys.ca.federation:
                        problem = f"agreement version {stored.version} names another federation"
                        break
                previous = signed
        except (ValidationError, PolicyViolation, VerificationError) as exc:
            problem = f"a stored agreement does not verify ({type(exc).__name__})"
        if not problem and (not upto or upto[-1].digest != record.digest):
            problem = "the agreement history does not lead to the active agreement"
        if problem:
            self.tampered(StorageTampered(problem, table="kbs_agreements"))
        self.verified_agreements.update(h.digest for h in upto)
