"""Live trust (issue 11): the agreement in force and a bounded attestation age, every round.

The aggregator calls :class:`LiveTrust` at two points of every round:

* :meth:`LiveTrust.before_round` — before the global model is sent: it reads the agreement in
  force from the pinned KBS (a signed-head-checked ``GET /v1/agreement``, so it is never more
  than one round late), re-attests the aggregator itself when the agreement changed or its own
  attestation would outlive ``attestation.max_age`` (a refusal stops the session: the
  aggregator no longer qualifies), then has every connected client whose certificate is not
  bound to the agreement in force, or whose attestation would be older than ``max_age`` by the
  end of the round (``per_round``: every client), attest again to the KBS (fresh nonce; the
  KBS re-appraises measurement, platform, TCB status under fresh collateral, party and
  enrollment). A client whose re-attestation fails, times out, or whose identity does not
  qualify under the agreement in force (:func:`qualifies`) is dropped — or, with
  ``training.on_revocation: stop``, the session stops.
* :meth:`LiveTrust.accept_update` — when an update arrives: refused if the client's
  certificate is older than ``max_age`` or bound to an older agreement version
  (:func:`update_problem`).

Each round's provenance entry then records the agreement version in force, every
participant's attestation age and every drop with its reason (:class:`RoundTrust`).

Age of an attestation = now − the issue time of the certificate the KBS issued right after it
(``notBefore`` + the CA's clock-skew allowance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from teeflow.errors import FLError
from teeflow.kbs.ca.authority import CLOCK_SKEW, WorkloadIdentity
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.freshness import AttestationTerms
from teeflow.kbs.policy.signing import SignedAgreement

__all__ = [
    "AgreementInForce",
    "Drop",
    "RoundTrust",
    "attestation_age",
    "attested_at",
    "earlier_version",
    "qualifies",
    "reattest_reason",
    "stop_or_drop",
    "trust_summary",
    "update_problem",
    "wait_all",
]

#: Resolution of certificate times (whole seconds).
_RESOLUTION = timedelta(seconds=1)


def attested_at(cert: x509.Certificate) -> datetime:
    """When the KBS issued ``cert`` (right after the attestation it certifies), UTC."""
    return cert.not_valid_before_utc + CLOCK_SKEW


def attestation_age(cert: x509.Certificate, now: datetime) -> float:
    """Seconds since the attestation behind ``cert`` (≥ 0)."""
    return max((now - attested_at(cert)).total_seconds(), 0.0)


@dataclass(frozen=True)
class AgreementInForce:
    """The agreement the session runs under now.

    Attributes:
        signed: the signed agreement from the KBS.
        digest: its digest (32 bytes).
    """

    signed: SignedAgreement
    digest: bytes

    @classmethod
    def of(cls, signed: SignedAgreement) -> AgreementInForce:
        """Wrap a signed agreement (its digest computed here)."""
        return cls(signed, digest(signed.agreement))

    @property
    def agreement(self) -> FederationAgreement:
        """The agreement."""
        return self.signed.agreement

    @property
    def version(self) -> int:
        """Its version (1, 2, ...)."""
        return self.signed.agreement.version

    @property
    def terms(self) -> AttestationTerms | None:
        """Its ``attestation`` section, or None (no bound beyond certificate expiry)."""
        return self.signed.agreement.attestation

    @property
    def on_revocation(self) -> str:
        """``drop`` (default) or ``stop`` (``training.on_revocation``)."""
        t = self.signed.agreement.training
        return "drop" if t is None else t.on_revocation


@dataclass(frozen=True)
class Drop:
    """A participant removed from the session: party and reason (≤ 300 characters)."""

    party: str
    reason: str


def qualifies(
    identity: WorkloadIdentity, agreement: FederationAgreement, role: str = "client"
) -> str | None:
    """Why a certified workload no longer satisfies ``agreement`` as ``role``, or None.

    Checks what its certificate states against the agreement in force: the role; the party
    is still a party of the federation; emulated evidence still allowed; the measurement
    among the role's reference values of its platform (an SGX role that lists no MRENCLAVE
    but an MRSIGNER cannot be checked here — the KBS re-appraisal does). TCB status and
    enrollment are not in the certificate: the KBS re-checks them at re-attestation.
    """
    if identity.role != role:
        return f"certificate role {identity.role!r}, expected {role!r}"
    if role != "aggregator" and (identity.party is None or identity.party not in agreement.parties):
        return f"party {identity.party!r} is not a party of agreement v{agreement.version}"
    if identity.emulated and not agreement.allow_emulated:
        return f"agreement v{agreement.version} no longer allows emulated evidence"
    platform = identity.tee.removeprefix("emulated-")
    values = agreement.reference_values(role, platform)
    if values is None:
        return f"agreement v{agreement.version} has no {platform} reference values for {role}"
    listed: tuple[str, ...] = tuple(
        getattr(values, {"sgx": "mrenclave", "tdx": "mrtd", "snp": "measurement"}[platform])
    )
    if listed and identity.measurement not in listed:
        return (
            f"measurement {identity.measurement[:16]}… is not among the {role} reference values "
            f"of agreement v{agreement.version} (revoked build)"
        )
    return None


def reattest_reason(
    cert: x509.Certificate,
    identity: WorkloadIdentity,
    force: AgreementInForce,
    now: datetime,
    *,
    horizon: float,
    since: datetime | None = None,
) -> str | None:
    """Why a participant must attest again before this round, or None.

    Args:
        cert, identity: the certificate it stands on and its verified identity.
        force: the agreement in force.
        now: current time (UTC).
        horizon: seconds the coming round is expected to take (the last round's duration).
        since: ``per_round``: the end of the previous round (round 1: the session's start);
            an attestation from before it must be renewed. None: always renew.
    """
    if identity.agreement_digest != force.digest.hex():
        return f"certificate bound to another agreement version (v{force.version} in force)"
    terms = force.terms
    if terms is not None and terms.per_round:
        if since is not None and attested_at(cert) >= since:
            return None  # attested since the previous round ended: fresh for this one
        return "max_age per_round"
    max_age = terms.max_age_delta if terms is not None else None
    age = attestation_age(cert, now)
    if max_age is not None and age + horizon >= max_age.total_seconds():
        return f"attestation {age:.0f} s old, max_age {terms.max_age if terms else ''}"
    if cert.not_valid_after_utc <= now + timedelta(seconds=horizon):
        return "certificate expires during the round"
    return None


def update_problem(
    cert: x509.Certificate,
    identity: WorkloadIdentity,
    force: AgreementInForce,
    now: datetime,
    since: datetime,
) -> str | None:
    """Why an update from a client standing on ``cert`` must be refused, or None: the
    certificate is bound to an older agreement version, older than ``max_age``, expired, or
    (``per_round``) issued before ``since`` (the end of the previous round; round 1: the
    session's start)."""
    if identity.agreement_digest != force.digest.hex():
        return f"update from an older agreement version (v{force.version} in force)"
    if now > cert.not_valid_after_utc:
        return "update under an expired certificate"
    terms = force.terms
    if terms is None:
        return None
    if terms.per_round:
        # certificate times have a resolution of one second (RFC 5280 UTCTime): a certificate
        # issued in the second ``since`` falls in counts as fresh
        if attested_at(cert) < since - _RESOLUTION:
            return "update under a certificate from before this round (max_age per_round)"
        return None
    max_age = terms.max_age_delta
    if max_age is not None and attestation_age(cert, now) > max_age.total_seconds():
        return f"update under a certificate older than max_age {terms.max_age}"
    return None


@dataclass
class RoundTrust:
    """What one round's admission decided (recorded in its provenance entry).

    Attributes:
        version: agreement version in force.
        agreement_digest: its digest (hex).
        ages: attestation age in seconds of each admitted participant at round start.
        aggregator_age: the aggregator's own attestation age (seconds).
        drops: participants dropped before or during the round, with reasons.
        reattested: parties that re-attested for this round.
        started: round start (UTC).
        since: ``per_round`` freshness bound: attestations from before it were renewed
            (the end of the previous round; round 1: the session's start).
    """

    version: int
    agreement_digest: str
    started: datetime
    since: datetime
    ages: dict[str, float] = field(default_factory=dict)
    aggregator_age: float = 0.0
    drops: list[Drop] = field(default_factory=list)
    reattested: list[str] = field(default_factory=list)


def wait_all(
    pending: dict[str, Callable[[], bool]], timeout: float, poll: float = 0.05
) -> set[str]:
    """Wait (bounded by ``timeout`` seconds) until every ``done()`` of ``pending`` is true;
    return the names still not done."""
    end = time.monotonic() + timeout
    left = set(pending)
    while left:
        left = {p for p in left if not pending[p]()}
        if not left or time.monotonic() >= end:
            break
        time.sleep(poll)
    return left


def stop_or_drop(force: AgreementInForce, drops: list[Drop], remaining: int, minimum: int) -> None:
    """Apply ``training.on_revocation``: raise when the session must stop.

    Raises:
        FLError: ``stop`` and at least one drop, or fewer than ``minimum`` clients remain.
    """
    if not drops:
        return
    named = "; ".join(f"{d.party}: {d.reason}" for d in drops)[:500]
    if force.on_revocation == "stop":
        raise FLError(
            f"a client no longer satisfies agreement v{force.version} and "
            f"training.on_revocation is stop — session stopped ({named})"
        )
    if remaining < minimum:
        raise FLError(
            f"only {remaining} clients still satisfy agreement v{force.version}, "
            f"{minimum} needed — session stopped ({named})"
        )


def trust_summary(trust: RoundTrust | None, clients: tuple[str, ...]) -> dict[str, Any]:
    """The live-trust columns of a round report: ``agreement_version`` (None for round 0 /
    no record), ``attestation_age`` = the oldest participant attestation in seconds (None
    when unknown) and ``dropped`` = ``{party: reason}``."""
    if trust is None:
        return {}
    ages = [trust.ages[p] for p in clients if p in trust.ages]
    return {
        "agreement_version": trust.version,
        "attestation_age": max(ages) if ages else None,
        "dropped": {d.party: d.reason for d in trust.drops},
    }


def earlier_version(history: list[SignedAgreement], older_hex: str, current: bytes) -> bool:
    """True when the agreement with digest ``older_hex`` precedes ``current`` in the
    (verified) agreement ``history`` — a session begun under it may resume under the agreement
    in force (an aggregator restart after an update)."""
    versions = {digest(s.agreement).hex(): s.agreement.version for s in history}
    older, now = versions.get(older_hex.lower()), versions.get(current.hex())
    return older is not None and now is not None and older < now
