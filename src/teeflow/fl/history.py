"""Checking a model's rounds against the federation's agreement history (issue 11).

``teeflow model verify MODEL PROVENANCE --ca CA.pem --agreements HISTORY`` proves more than the
provenance chain: every round's participants were allowed by the agreement *in force* for that
round. The history is the list of signed agreements — from the KBS (``GET
/v1/agreement/history``) or a file exported with ``teeflow agreement history -o FILE`` — and
is self-authenticating: the first agreement must carry every party's signature and each later
one ``update_quorum.k`` signatures of the parties of its predecessor
(:class:`~teeflow.kbs.policy.signing.AgreementHistory`), so no KBS or file host can forge or
drop a link without breaking the chain.

History file (JSON, ≤ 16 MiB; the KBS endpoint's body plus a format tag)::

    {"format": "teeflow-agreement-history/1",
     "agreements": [{"version": 1, "digest": "<hex>", "signed": {agreement, signatures}}, ...]}

Rules (:func:`check_rounds`), each failure a :class:`RoundViolation` naming the round:

* the session's agreement (session-start entry) is in the history;
* a round with a live-trust record (:class:`~teeflow.fl.provenance.RoundTrustRecord`) names an
  agreement of the history (digest and version agree), and versions never go back from round
  to round;
* each participant is allowed by that agreement: its party is a party and its measurement is
  among the client reference values (of any platform; a role that lists no measurement for a
  platform is not checked here); the aggregator measurement likewise for the aggregator role;
* with a duration ``attestation.max_age``, each participant's recorded attestation age is
  within it;
* a round *without* a trust record (logs from before issue 11) is bound to no version: its
  participants must be allowed by the session's agreement **and by every later version**
  of the history — otherwise nothing shows the revocation came after the round, and it fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from teeflow.errors import ParseError, VerificationError
from teeflow.fl.provenance import ProvenanceEntry
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.signing import AgreementHistory, SignedAgreement

__all__ = [
    "HISTORY_FORMAT",
    "RoundCheck",
    "RoundViolation",
    "check_rounds",
    "history_document",
    "load_history",
    "parse_history",
]

HISTORY_FORMAT = "teeflow-agreement-history/1"
MAX_HISTORY_BYTES = 16 << 20
MAX_AGREEMENTS = 10_000


class RoundViolation(VerificationError):
    """A round used a workload the agreement in force did not allow (``round`` names it)."""

    code = "fl-round-not-allowed"

    def __init__(self, round: int, reason: str) -> None:
        super().__init__(f"round {round}: {reason}")
        self.round = round
        self.reason = reason


@dataclass(frozen=True)
class RoundCheck:
    """One verified round: agreement version in force (None: not recorded), participants,
    their attestation ages (seconds) and the drops recorded."""

    round: int
    version: int | None
    agreement_digest: str | None
    clients: tuple[str, ...]
    ages: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """JSON form (``teeflow model verify --json``)."""
        return {
            "round": self.round,
            "agreement_version": self.version,
            "agreement_digest": self.agreement_digest,
            "clients": list(self.clients),
            "attestation_age": self.ages,
            "dropped": self.dropped,
        }


def history_document(signed: list[SignedAgreement]) -> dict[str, Any]:
    """The history file body for ``signed`` (oldest first)."""
    return {
        "format": HISTORY_FORMAT,
        "agreements": [
            {
                "version": s.agreement.version,
                "digest": s.agreement.digest().hex(),
                "signed": s.model_dump(mode="json"),
            }
            for s in signed
        ],
    }


def parse_history(data: bytes) -> list[SignedAgreement]:
    """Parse and verify a history (the file body or the KBS endpoint's); the chain must
    verify from the first agreement (module docstring).

    Raises:
        ParseError: too large, not JSON, wrong shape or format tag, too many agreements.
        VerificationError, PolicyViolation: a signature or an update rule of the chain fails.
    """
    if len(data) > MAX_HISTORY_BYTES:
        raise ParseError("agreement history larger than 16 MiB")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ParseError("agreement history is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("agreements"), list):
        raise ParseError('agreement history must be {"agreements": [...]}')
    if doc.get("format", HISTORY_FORMAT) != HISTORY_FORMAT:
        raise ParseError(f"unknown agreement history format {str(doc.get('format'))[:40]!r}")
    items = doc["agreements"]
    if not items or len(items) > MAX_AGREEMENTS:
        raise ParseError(f"agreement history must hold 1..{MAX_AGREEMENTS} agreements")
    signed: list[SignedAgreement] = []
    for i, item in enumerate(items):
        body = item.get("signed") if isinstance(item, dict) else None
        if not isinstance(body, dict):
            raise ParseError(f"agreement history entry {i + 1} has no signed agreement")
        try:
            signed.append(SignedAgreement.from_mapping(body))
        except (ParseError, ValidationError) as exc:
            raise ParseError(f"agreement history entry {i + 1}: {exc}"[:300]) from None
    AgreementHistory(signed)  # the chain: every party for v1, k-of-n of the previous after
    return signed


def load_history(path: Path) -> list[SignedAgreement]:
    """Read and verify a history file (:func:`parse_history`).

    Raises:
        ParseError: unreadable or malformed. VerificationError, PolicyViolation: the chain.
    """
    try:
        with path.open("rb") as f:
            data = f.read(MAX_HISTORY_BYTES + 1)
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_history(data)


_LISTS = {"sgx": "mrenclave", "tdx": "mrtd", "snp": "measurement"}


def _allowed(agreement: FederationAgreement, role: str, measurement: str) -> bool:
    """True when some platform of ``role`` lists ``measurement`` or lists none."""
    spec = agreement.workloads.get(role)  # type: ignore[call-overload]
    if spec is None:
        return False
    for platform, attr in _LISTS.items():
        values = getattr(spec, platform)
        if values is None:
            continue
        listed = getattr(values, attr)
        if not listed or measurement in listed:
            return True
    return False


def _problem(agreement: FederationAgreement, party: str, measurement: str) -> str | None:
    if party not in agreement.parties:
        return f"client {party} is not a party of agreement v{agreement.version}"
    if not _allowed(agreement, "client", measurement):
        return (
            f"client {party} (measurement {measurement[:16]}…) is not allowed by agreement "
            f"v{agreement.version}"
        )
    return None


def check_rounds(
    entries: list[ProvenanceEntry] | tuple[ProvenanceEntry, ...], history: list[SignedAgreement]
) -> list[RoundCheck]:
    """Check every round of a (verified) provenance log against the agreement history
    (module docstring rules).

    Raises:
        RoundViolation: the first round that breaks a rule (its number in the message).
        VerificationError: the session's agreement is not in the history.
    """
    by_digest = {s.agreement.digest().hex(): s.agreement for s in history}
    start = entries[0]
    session_agreement = by_digest.get(start.agreement_digest)
    if session_agreement is None:
        raise VerificationError("the session's agreement is not in the agreement history")
    later = [s.agreement for s in history if s.agreement.version > session_agreement.version]
    last_version = session_agreement.version
    out: list[RoundCheck] = []
    for e in entries:
        if e.kind != "round" or e.round is None:
            continue
        r = e.round
        clients = {c.party: c.measurement for c in e.clients}
        if e.trust is None:  # before issue 11: bound to no version
            for agreement in (session_agreement, *later):
                for party, mr in sorted(clients.items()):
                    problem = _problem(agreement, party, mr)
                    if problem is not None:
                        raise RoundViolation(
                            r, f"{problem}, and the log does not record the version in force"
                        )
            out.append(RoundCheck(r, None, None, tuple(sorted(clients))))
            continue
        t = e.trust
        in_force = by_digest.get(t.agreement_digest)
        if in_force is None or in_force.version != t.agreement_version:
            raise RoundViolation(
                r, f"agreement v{t.agreement_version} ({t.agreement_digest[:16]}…) is not in the "
                "history"
            )
        agreement = in_force
        if agreement.version < last_version:
            raise RoundViolation(
                r, f"agreement v{agreement.version} after v{last_version} (version went back)"
            )
        last_version = agreement.version
        if not _allowed(agreement, "aggregator", e.aggregator_measurement):
            raise RoundViolation(
                r, f"the aggregator is not allowed by agreement v{agreement.version}"
            )
        for party, mr in sorted(clients.items()):
            problem = _problem(agreement, party, mr)
            if problem is not None:
                raise RoundViolation(r, problem)
        terms = agreement.attestation
        max_age = None if terms is None else terms.max_age_delta
        if max_age is not None:
            for party in sorted(clients):
                age = t.attestation_age.get(party, 0.0)
                if age > max_age.total_seconds():
                    raise RoundViolation(
                        r, f"client {party} attested {age:.0f} s before the round, "
                        f"max_age {terms.max_age if terms else ''}"
                    )
        out.append(
            RoundCheck(
                r,
                agreement.version,
                t.agreement_digest,
                tuple(sorted(clients)),
                {p: t.attestation_age[p] for p in sorted(clients) if p in t.attestation_age},
                {d.party: d.reason for d in t.dropped},
            )
        )
    return out

