"""The aggregator's per-round admission (issue 11): :class:`LiveTrust`.

The rules are in :mod:`teeflow.fl.trust`; this module drives them against the pinned KBS and
the client hub. :meth:`LiveTrust.before_round` runs before a round's global model is sent;
:meth:`LiveTrust.admit` checks each update as it arrives (``ResultCollector.admit``).
Progress events: ``agreement-changed {version, digest}``, ``reattested {round, role,
party}``, ``client-dropped {round, party, reason}``, ``admission {round, seconds,
agreement_version, reattested, dropped}`` (the admission's wall time: it is on the round's
critical path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from teeflow.errors import Error, FLError
from teeflow.fl.provenance import DropRecord, RoundTrustRecord
from teeflow.fl.trust import (
    AgreementInForce,
    Drop,
    RoundTrust,
    attestation_age,
    qualifies,
    reattest_reason,
    stop_or_drop,
    update_problem,
    wait_all,
)
from teeflow.kbs.ca.authority import WorkloadIdentity
from teeflow.kbs.policy.signing import SignedAgreement

__all__ = ["LiveTrust", "SelfAttestation", "reattest_with"]


@dataclass(frozen=True)
class SelfAttestation:
    """The aggregator's own standing: certificate PEM, attested key, verified identity."""

    certificate_pem: bytes
    key: Any
    identity: WorkloadIdentity

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.certificate_pem)


class _Kbs(Protocol):
    def get_certificate(self) -> tuple[bytes, Any]: ...

    def check_certificate(self, cert: x509.Certificate) -> WorkloadIdentity: ...


def reattest_with(kbs: _Kbs, attest: Callable[[], object]) -> Callable[[], SelfAttestation]:
    """The aggregator's ``self_attest``: ``attest()`` (RCAR with a fresh nonce, as at start),
    then a workload certificate for the attested key from ``kbs``
    (:class:`~teeflow.kbs.client.sdk.KbsClient`), checked under the pinned CA.

    The returned callable raises what ``attest`` and ``KbsClient.get_certificate`` raise
    (KbsError subclasses, VerificationError, PlatformError).
    """

    def run() -> SelfAttestation:
        attest()
        pem, key = kbs.get_certificate()
        identity = kbs.check_certificate(x509.load_pem_x509_certificate(pem))
        return SelfAttestation(pem, key, identity)

    return run


class _Handle(Protocol):
    def done(self) -> bool: ...

    def outcome(self) -> Any: ...


class _Hub(Protocol):
    def connected(self) -> list[str]: ...

    def identity(self, party: str) -> WorkloadIdentity | None: ...

    def certificate(self, party: str) -> x509.Certificate | None: ...

    def reattest(self, party: str, round: int) -> Any: ...

    def drop(self, party: str, reason: str) -> None: ...

    def renew(self, *, agreement_digest: bytes, certificate_pem: bytes, key: Any) -> None: ...


def _wait_answers(asked: dict[str, Any], timeout: float) -> set[str]:
    """Wait (bounded by ``timeout`` seconds) for every re-attestation handle; return the
    parties whose answer is still missing. A handle with ``wait(timeout)``
    (:class:`~teeflow.fl.transport.hub.TaskHandle`) wakes this at once when it completes;
    others are polled (:func:`~teeflow.fl.trust.wait_all`)."""
    end = time.monotonic() + timeout
    for handle in asked.values():
        wait = getattr(handle, "wait", None)
        if callable(wait):
            wait(end - time.monotonic())
    return wait_all({p: h.done for p, h in asked.items()}, max(end - time.monotonic(), 0.0))


class LiveTrust:
    """Per-round admission of the aggregator and its clients (module docstring).

    Args:
        current: reads the signed agreement in force from the KBS (None: none).
        self_attest: re-attests the aggregator to the KBS and returns its new standing;
            raises a :class:`~teeflow.errors.Error` when the KBS refuses.
        hub: the client hub.
        force: the agreement at session start.
        me: the aggregator's standing at session start.
        min_clients: fewest clients the session may go on with.
        reattest_timeout: seconds clients get to answer a Reattest.
        emit: progress sink ``emit(event, fields)``.
        clock: time source (UTC).
    """

    def __init__(
        self,
        *,
        current: Callable[[], SignedAgreement | None],
        self_attest: Callable[[], SelfAttestation],
        hub: _Hub,
        force: AgreementInForce,
        me: SelfAttestation,
        min_clients: int,
        reattest_timeout: float,
        emit: Callable[[str, dict[str, Any]], None],
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._current = current
        self._self_attest = self_attest
        self.hub = hub
        self.force = force
        self.me = me
        self._min = min_clients
        self._timeout = reattest_timeout
        self._emit = emit
        self._clock = clock or (lambda: datetime.now(UTC))
        self.round: RoundTrust | None = None
        #: ``per_round`` freshness bound: the end of the last admission (first: now)
        self._since = self._clock()

    # -- before a round ----------------------------------------------------------------------

    def before_round(self, r: int, horizon: float) -> RoundTrust:
        """Admission for round ``r`` (``horizon``: seconds the round is expected to take).

        Raises:
            FLError: the KBS has no agreement; the aggregator no longer qualifies (the KBS
                refused its re-attestation); or a client was dropped and
                ``on_revocation`` is ``stop``, or too few clients remain.
            KbsError subclasses: the KBS could not be read (StateRollback included).
        """
        t0 = time.monotonic()
        changed = self._refresh_agreement()
        self._qualify_self()
        if changed:  # the hub must check answers against the new agreement: renew first
            self._renew_self(horizon)
        now = self._clock()
        trust = RoundTrust(self.force.version, self.force.digest.hex(), now, self._since)
        self.round = trust
        asked: dict[str, Any] = {}
        for party in self.hub.connected():
            cert, ident = self.hub.certificate(party), self.hub.identity(party)
            if cert is None or ident is None:
                continue
            problem = qualifies(ident, self.force.agreement)
            if problem is not None:
                trust.drops.append(Drop(party, problem))
                continue
            why = reattest_reason(
                cert, ident, self.force, now, horizon=horizon, since=self._since
            )
            if why is None:
                continue
            try:
                asked[party] = self.hub.reattest(party, r)
            except FLError:  # disconnected meanwhile
                continue
        if not changed:  # overlaps with the clients' re-attestations
            self._renew_self(horizon)
        late = _wait_answers(asked, self._timeout)
        for party, handle in asked.items():
            if party in late:
                trust.drops.append(Drop(party, "did not re-attest in time"))
                continue
            try:
                handle.outcome()
            except FLError as exc:
                trust.drops.append(Drop(party, str(exc)[:300]))
                continue
            trust.reattested.append(party)
            self._emit("reattested", {"round": r, "role": "client", "party": party})
            ident = self.hub.identity(party)
            problem = None if ident is None else qualifies(ident, self.force.agreement)
            if problem is not None:
                trust.drops.append(Drop(party, problem))
        for d in trust.drops:
            self.hub.drop(d.party, d.reason)
            self._emit("client-dropped", {"round": r, "party": d.party, "reason": d.reason})
        stop_or_drop(self.force, trust.drops, len(self.hub.connected()), self._min)
        now = self._clock()
        for party in self.hub.connected():
            cert = self.hub.certificate(party)
            if cert is not None:
                trust.ages[party] = round(attestation_age(cert, now), 3)
        trust.aggregator_age = round(attestation_age(self.me.certificate, now), 3)
        self._since = now
        self._emit(
            "admission",
            {
                "round": r,
                "seconds": round(time.monotonic() - t0, 4),
                "agreement_version": trust.version,
                "reattested": len(trust.reattested),
                "dropped": len(trust.drops),
            },
        )
        return trust

    def _refresh_agreement(self) -> bool:
        """Read the agreement in force; True when it changed."""
        signed = self._current()
        if signed is None:
            raise FLError("the KBS has no agreement")
        new = AgreementInForce.of(signed)
        if new.digest == self.force.digest:
            return False
        if new.version < self.force.version:
            raise FLError(
                f"the KBS serves agreement v{new.version} after v{self.force.version} — stopping"
            )
        self.force = new
        self._emit("agreement-changed", {"version": new.version, "digest": new.digest.hex()})
        return True

    def _qualify_self(self) -> None:
        problem = qualifies(self.me.identity, self.force.agreement, "aggregator")
        if problem is not None:
            raise FLError(f"the aggregator no longer satisfies the agreement in force: {problem}")

    def _renew_self(self, horizon: float) -> None:
        me = self.me
        why = reattest_reason(
            me.certificate, me.identity, self.force, self._clock(), horizon=horizon,
            since=self._since,
        )
        if why is None:
            return
        try:
            me = self._self_attest()
        except Error as exc:
            raise FLError(
                f"the aggregator no longer satisfies agreement v{self.force.version}: "
                f"the KBS refused its re-attestation ({exc})"[:500]
            ) from None
        if me.identity.agreement_digest != self.force.digest.hex():
            raise FLError("the aggregator's new certificate is bound to another agreement")
        self.me = me
        self.hub.renew(
            agreement_digest=self.force.digest, certificate_pem=me.certificate_pem, key=me.key
        )
        self._emit("reattested", {"role": "aggregator"})

    def record(self, trust: RoundTrust, clients: list[str]) -> RoundTrustRecord:
        """The provenance record of a round whose updates came from ``clients`` (a client
        that joined after admission gets its age now)."""
        now = self._clock()
        ages = dict(trust.ages)
        for party in clients:
            if party not in ages:
                cert = self.hub.certificate(party)
                ages[party] = 0.0 if cert is None else round(attestation_age(cert, now), 3)
        return RoundTrustRecord(
            agreement_version=trust.version,
            agreement_digest=trust.agreement_digest,
            attestation_age=ages,
            aggregator_attestation_age=trust.aggregator_age,
            dropped=tuple(DropRecord(party=d.party, reason=d.reason[:300]) for d in trust.drops),
        )

    # -- during a round ----------------------------------------------------------------------

    def admit(self, party: str) -> str | None:
        """Why ``party``'s update must be refused now (:func:`~teeflow.fl.trust.
        update_problem`), or None; a refusal is recorded as a drop of the round."""
        trust = self.round
        cert, ident = self.hub.certificate(party), self.hub.identity(party)
        if trust is None:
            return None
        if cert is None or ident is None:
            problem: str | None = "client no longer connected"
        else:
            problem = update_problem(cert, ident, self.force, self._clock(), trust.since)
        if problem is not None:
            trust.drops.append(Drop(party, problem))
            trust.ages.pop(party, None)
        return problem
