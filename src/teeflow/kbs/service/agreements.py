"""The federation agreement in force: submission (first agreement, k-of-n updates) and history.

Part of the KBS core behind :class:`teeflow.kbs.service.core.KbsService` (see that module for
the protocol and the order of checks); state and plumbing are shared through
:class:`teeflow.kbs.service.context.ServiceContext`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from pydantic import ValidationError

from teeflow.errors import KbsError, PolicyViolation, SealingError, VerificationError
from teeflow.kbs.api.problems import (
    AgreementRejected,
    Conflict,
    ServiceUnavailable,
)
from teeflow.kbs.policy.canonical import canonical_json
from teeflow.kbs.policy.signing import (
    SignedAgreement,
    verify_initial,
    verify_update,
)
from teeflow.kbs.service.context import ServiceContext
from teeflow.kbs.store.interface import (
    AgreementRecord,
    StorageConflict,
)

__all__ = ["AgreementService"]


class AgreementService:
    """The federation agreement in force: submission (first agreement, k-of-n updates) and history.

    Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
        on_agreement: called with each accepted agreement and its digest after it is stored
            and audited (the recovery share set follows it:
            :class:`teeflow.kbs.service.recovery_mode.RecoveryManager`); a failure is logged
            and answered 503 — the agreement stays accepted.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        on_agreement: Callable[[SignedAgreement, bytes], None] | None = None,
    ) -> None:
        self._ctx = ctx
        self._on_agreement = on_agreement

    def current_agreement(self) -> SignedAgreement | None:
        """The active signed agreement, or None before the first one."""
        current = self._ctx.current()
        return None if current is None else current[0]

    def agreement_history(self) -> list[SignedAgreement]:
        """Every accepted agreement, oldest first.

        Raises:
            ServiceUnavailable: the store failed or holds an unparsable document.
        """
        with self._ctx.storage():
            records = self._ctx.store.agreement_history()
        try:
            return [SignedAgreement.model_validate_json(r.document) for r in records]
        except ValidationError:
            raise ServiceUnavailable() from None

    def submit_agreement(self, signed: SignedAgreement) -> AgreementRecord:
        """Accept the first agreement (every party signed: ``verify_initial``) or an update
        of the active one (k-of-n: ``verify_update``); store it append-only; audit.

        Tokens issued under the previous agreement stop being accepted (their agreement
        digest no longer matches); so do certificates checked with
        :func:`teeflow.kbs.ca.authority.verify_workload_certificate`.

        Raises:
            AgreementRejected: signatures or update rules fail (every reason), or the
                agreement names another federation than the KBS's CA.
            Conflict: a concurrent submission won.
        """
        now = self._ctx.now()
        current = self._ctx.current()
        subject = f"agreement:{signed.agreement.federation}"
        reasons: list[str] = []
        try:
            if current is None:
                digest = verify_initial(signed)
                first = self._ctx.first_agreement
                if first is not None and not hmac.compare_digest(digest, first):
                    # bootstrap (N): only the agreed first agreement founds the federation
                    reasons.append(f"this KBS accepts as first agreement only {first.hex()}")
            else:
                digest = verify_update(signed, current[0])
        except PolicyViolation as exc:
            reasons += exc.violations
        except VerificationError as exc:
            reasons.append(str(exc))
        if signed.agreement.federation != self._ctx.keys.ca.federation:
            reasons.append(
                f"agreement is for federation {signed.agreement.federation}, "
                f"this KBS serves {self._ctx.keys.ca.federation}"
            )
        if reasons:
            self._ctx.deny(
                AgreementRejected, "agreement", subject, reasons, detail="; ".join(reasons)
            )
        document = canonical_json(signed.model_dump(mode="json"))
        build = self._ctx.builder(
            "agreement",
            subject,
            "accept",
            data={
                "version": signed.agreement.version,
                "agreement_digest": digest.hex(),
                "signers": sorted(signed.signatures),
            },
        )
        try:
            with self._ctx.storage(StorageConflict):
                record, entry = self._ctx.store.append_agreement_and_audit(
                    signed.agreement.version, digest, document, now, build
                )
        except StorageConflict:
            raise Conflict("another agreement version was accepted concurrently") from None
        finally:
            self._ctx.forget_agreement()  # the hot paths re-read the (possibly new) agreement
        self._ctx.verified_agreements.add(digest)
        self._ctx.heads.saw(entry)
        if self._on_agreement is not None:
            try:
                self._on_agreement(signed, digest)
            except (KbsError, SealingError) as exc:
                self._ctx.log.error("agreement hook failed: %s", type(exc).__name__)
                raise ServiceUnavailable("the recovery share set could not be updated") from None
        return record
