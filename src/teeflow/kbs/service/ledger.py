"""Monotonic counters and the signed, hash-chained audit log.

Part of the KBS core behind :class:`teeflow.kbs.service.core.KbsService` (see that module for
the protocol and the order of checks); state and plumbing are shared through
:class:`teeflow.kbs.service.context.ServiceContext`.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from teeflow.kbs.api.problems import (
    Conflict,
    InvalidRequest,
    PolicyDeny,
)
from teeflow.kbs.policy.namespaces import counter_scope_problems
from teeflow.kbs.protocol import (
    AttestedSession,
    CounterState,
    is_counter_name,
)
from teeflow.kbs.service.context import ServiceContext
from teeflow.kbs.store.interface import (
    AuditEntry,
    StorageConflict,
)

__all__ = ["AGGREGATOR_COUNTER_PREFIX", "Ledger"]

#: Counter names under this prefix belong to aggregators (of the session they name).
AGGREGATOR_COUNTER_PREFIX = "session/"


class Ledger:
    """Monotonic counters and the signed, hash-chained audit log.

    Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def increment_counter(
        self, session: AttestedSession, name: str, expected: int, digest: bytes
    ) -> CounterState:
        """Compare-and-increment counter ``name`` from ``expected`` to ``expected + 1``, bound
        to ``digest`` (16..64 bytes). The name must be in the session's scope
        (:func:`teeflow.kbs.policy.namespaces.counter_scope_problems`: ``session/<its
        session claim>`` for an aggregator, ``compute/…`` for role compute,
        ``<role>/<its party>/…``).

        Raises:
            InvalidRequest: bad name, expected value or digest.
            PolicyDeny: no enrollment, or the counter is outside the session's scope.
            Conflict: the counter is not at ``expected``.
        """
        if not is_counter_name(name) or isinstance(expected, bool) or expected < 0:
            raise InvalidRequest("invalid counter name or expected value")
        if not isinstance(digest, bytes) or not 16 <= len(digest) <= 64:
            raise InvalidRequest("counter digest must be 16..64 bytes")
        subject = f"counter:{name}"
        data: dict[str, Any] = {
            "role": session.role,
            "expected": expected,
            "bound_digest": digest.hex(),
            "measurement": session.measurement,
        }
        if session.enrollment is None:
            reason = "the workload acts for no enrolled party (no enrollment)"
            self._ctx.deny(PolicyDeny, "counter", subject, [reason], data)
        claims = session.claims
        scope = counter_scope_problems(
            name,
            role=session.role,
            party=session.party,
            session=None if claims is None else claims.session,
        )
        if scope:  # a counter belongs to one session/role/party scope (namespaces.py)
            self._ctx.deny(PolicyDeny, "counter", subject, scope, data)
        build = self._ctx.builder(
            "counter", subject, "accept", data={**data, "value": expected + 1}
        )
        try:
            with self._ctx.storage(StorageConflict):
                value, entry = self._ctx.store.compare_and_increment_and_audit(
                    name, expected, digest, build
                )
        except StorageConflict:
            self._ctx.deny(
                Conflict,
                "counter",
                subject,
                ["counter is not at the expected value"],
                data,
                detail="counter is not at the expected value",
            )
        self._ctx.heads.saw(entry)
        return CounterState(name=name, value=value, digest=digest.hex())

    def get_counter(self, name: str) -> CounterState | None:
        """The counter's value and bound digest, or None if never stepped.

        Raises:
            InvalidRequest: bad name.
        """
        if not is_counter_name(name):
            raise InvalidRequest("invalid counter name")
        with self._ctx.storage():
            found = self._ctx.store.get_counter(name)
        if found is None:
            return None
        return CounterState(name=name, value=found[0], digest=found[1].hex())

    # -- audit -------------------------------------------------------------------------------------

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key that verifies audit entries."""
        return self._ctx.audit.public_key

    def audit_entries(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with ``seq > after``, ascending, at most ``limit`` (1..10000).

        Raises:
            InvalidRequest: bad ``after``/``limit``.
        """
        with self._ctx.storage():
            return self._ctx.store.audit_entries(after, limit)
