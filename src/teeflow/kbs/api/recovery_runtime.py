"""The recovery-mode KBS runtime (:func:`teeflow.kbs.api.server.build_kbs` raises
:class:`RecoveryRequired` carrying one; :func:`teeflow.kbs.api.server.serve` serves it until
the parties' shares recombine the secret, then completes the recovery and serves the KBS).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pydantic import ValidationError

from teeflow.errors import KbsError
from teeflow.kbs.api.recovery import create_recovery_app
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.service.audit import AuditLog
from teeflow.kbs.service.identity import KbsKeys, parse_key_state
from teeflow.kbs.service.recovery import RecoveryRecord, open_recovery_state
from teeflow.kbs.service.recovery_mode import (
    RecoveryCoordinator,
    RecoveryManager,
    audit_recovery_data,
    finish_recovery,
    kbs_named_by,
)
from teeflow.kbs.store.interface import KbsStore

if TYPE_CHECKING:
    from teeflow.kbs.api.server import KbsRuntime
from teeflow.platform.sealing import PlatformSealer

__all__ = [
    "RecoveredKeys",
    "RecoveryRequired",
    "RecoveryRuntime",
    "audit_share_set",
    "complete_recovery",
    "ensure_share_set",
    "resume_after_recovery",
]
_LOG = logging.getLogger("teeflow.kbs.server")


@dataclass(frozen=True)
class RecoveredKeys:
    """A recovered key set: the keys, the measurement recorded before, the share set and
    the parties whose shares were used."""

    keys: KbsKeys = field(repr=False)
    previous_measurement: bytes
    record: RecoveryRecord
    parties: Sequence[str]


@dataclass
class RecoveryRuntime:
    """A KBS in recovery mode: the coordinator, its app, and what completing needs."""

    coordinator: RecoveryCoordinator
    state_dir: Path
    sealer: PlatformSealer | None
    measurement: bytes
    federation: str
    tls_hosts: tuple[str, ...]
    now: Callable[[], datetime]
    tee: str = "emulated-sgx"
    #: the code identity the platform attests (MRENCLAVE / MRTD / MEASUREMENT) that the
    #: agreement in force must name after an upgrade; None: ``measurement`` itself
    identity: bytes | None = None
    app: FastAPI = field(init=False)

    def __post_init__(self) -> None:
        self.app = create_recovery_app(self.coordinator)

    @property
    def needs_record(self) -> RecoveryRecord:
        """The share-set record being recovered."""
        return self.coordinator.needs.record

    def tls_context(self) -> ssl.SSLContext:
        """Server TLS context with the ephemeral recovery TLS key.

        Raises:
            KbsError: OpenSSL refuses the credential.
        """
        from teeflow.kbs.api.server import tls_context_for

        return tls_context_for(self.coordinator.tls_certificate, self.coordinator.tls_key)

    def close(self) -> None:
        """Nothing to close (no store is open in recovery mode)."""


class RecoveryRequired(KbsError):
    """The KBS must start in recovery mode; ``runtime`` is the recovery-mode KBS."""

    code = "kbs-recovery-required"

    def __init__(self, runtime: RecoveryRuntime) -> None:
        super().__init__(
            "the KBS key set must be recovered from the parties' shares "
            f"({runtime.coordinator.needs.reason})"
        )
        self.runtime = runtime


def audit_share_set(audit: AuditLog, record: RecoveryRecord) -> None:
    """Append the ``recovery-shares`` audit entry of a new share set (public facts only)."""
    audit.append(
        "recovery-shares",
        f"kbs:{record.federation}",
        "info",
        data={
            "recovery_id": record.recovery_id().hex(),
            "k": record.k,
            "n": len(record.parties),
            "parties": sorted(record.parties),
            "agreement_version": record.agreement_version,
        },
    )


def ensure_share_set(
    manager: RecoveryManager, signed: SignedAgreement, agreement_digest: bytes
) -> None:
    """Agreement hook: keep the recovery share set matching the accepted agreement."""
    manager.ensure(signed.agreement, agreement_digest)


def resume_after_recovery(
    store: KbsStore,
    *,
    keys: KbsKeys,
    recovered: RecoveredKeys,
    current: SignedAgreement | None,
    measurement: bytes,
    tee: str,
    clock: Callable[[], datetime],
    identity: bytes | None = None,
) -> None:
    """After a recovery: the agreement in force must name this KBS (its attested
    ``identity`` for ``tee``: MRENCLAVE, MRTD or MEASUREMENT; default ``measurement``);
    audit the recovery."""
    shown = (identity if identity is not None else measurement).hex()
    named = None if current is None else kbs_named_by(current.agreement, tee, shown)
    upgrade = recovered.previous_measurement != measurement
    if upgrade and named is not True:
        raise KbsError(
            f"the agreement in force does not name KBS measurement {shown}: "
            "an upgraded KBS needs a quorum-signed agreement update listing it"
        )
    data = audit_recovery_data(
        recovered.record, recovered.previous_measurement, measurement, recovered.parties
    )
    AuditLog(store, keys.audit, clock).append(
        "kbs-upgrade" if upgrade else "kbs-recovery",
        f"kbs:{keys.federation}",
        "accept",
        data=data,
    )
    _LOG.info("KBS state recovered (%s)", "upgrade" if upgrade else "same measurement")


def _check_resume_allowed(rt: RecoveryRuntime, db_url: str) -> None:
    from teeflow.kbs.store import open_store

    plain = open_recovery_state(rt.coordinator.needs.blob, rt.coordinator.secret, rt.needs_record)
    recovered_keys, previous = parse_key_state(plain)
    if previous == rt.measurement:
        return
    store = open_store(db_url, recovered_keys.storage_key)  # rows are authenticated under it
    try:
        record = store.current_agreement()
    finally:
        store.close()
    named = None
    shown = (rt.identity if rt.identity is not None else rt.measurement).hex()
    if record is not None:
        try:
            signed = SignedAgreement.model_validate_json(record.document)
        except ValidationError:
            raise KbsError("the stored agreement does not parse") from None
        named = kbs_named_by(signed.agreement, rt.tee, shown)
    if named is not True:
        raise KbsError(
            f"the agreement in force does not name KBS measurement {shown}: "
            "an upgraded KBS needs a quorum-signed agreement update listing it"
        )


def complete_recovery(rt: RecoveryRuntime, db_url: str, **kwargs: Any) -> KbsRuntime:
    """After ``rt.coordinator`` recombined the secret: reseal the recovered key set to this
    platform (:func:`~teeflow.kbs.service.recovery_mode.finish_recovery`) and build the
    normal KBS (:func:`build_kbs` with the same arguments), which checks that the agreement
    in force names this measurement and audits the recovery (``kbs-recovery``, or
    ``kbs-upgrade`` when the measurement changed).

    Before anything is written, an upgraded KBS (another measurement than the recovered
    state records) must be named by the agreement in force in the store; otherwise nothing
    changes on disk and :class:`KbsError` is raised (the old KBS still starts).

    Raises:
        KbsError: not recovered yet, an upgrade the agreement in force does not name, or as
            :func:`build_kbs`.
        SealingError, ParseError: the recovery copy does not open or is malformed.
        StorageError: the database cannot be read.
    """
    _check_resume_allowed(rt, db_url)
    keys, previous = finish_recovery(
        rt.state_dir,
        needs=rt.coordinator.needs,
        secret=rt.coordinator.secret,
        sealer=rt.sealer,
        measurement=rt.measurement,
        federation=rt.federation,
        now=rt.now(),
        tls_hosts=rt.tls_hosts,
    )
    recovered = RecoveredKeys(keys, previous, rt.coordinator.needs.record, rt.coordinator.used)
    from teeflow.kbs.api.server import build_kbs

    return build_kbs(db_url, recovered=recovered, sealer=rt.sealer, **kwargs)
