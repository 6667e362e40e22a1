"""Session requests of the control plane, and the agreement's ``training`` terms they must meet.

A party asks the aggregator service (:mod:`teeflow.fl.service`) to run an FL session with a
:class:`SessionRequest` (``teeflow session start``), signed with its key (RFC 9421,
:mod:`teeflow.kbs.policy.request_signing`). :func:`check_request` decides it against the
agreement in force — the parties agreed the ``training`` section
(:mod:`teeflow.kbs.policy.training`), a request cannot widen it:

- the agreement must have a ``training`` section (fail closed: no section, no sessions);
- ``package`` names (or is the digest of) a package of the agreement with a ``train``
  entrypoint;
- ``rounds`` ≤ ``training.rounds``; ``min_clients`` ≥ ``training.min_clients`` (default:
  the agreed value); ``wait_clients`` ≥ ``min_clients``;
- the strategy and ``fraction_fit`` are the agreed ones (a request names neither).

The result is a :class:`SessionPlan`, what the service runs. :class:`SessionInfo` and
:class:`SessionEvent` are the public views the control API returns (no secret: package
names, counts, metrics, reasons of at most 300 characters).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from teeflow.errors import FLError, PolicyViolation
from teeflow.fl.checkpoint import counter_name
from teeflow.fl.publish import choose_package
from teeflow.kbs.policy.agreement import FederationAgreement

__all__ = [
    "MAX_SEALED_PACKAGE_BYTES",
    "SESSION_STATES",
    "SessionConflict",
    "SessionEvent",
    "SessionInfo",
    "SessionNotFound",
    "SessionPlan",
    "SessionRefused",
    "SessionRequest",
    "check_request",
]

#: Largest sealed package a session request may carry (bytes, before base64).
MAX_SEALED_PACKAGE_BYTES = 32 << 20
#: Life cycle of a session: queued → running → done | failed | stopped.
SESSION_STATES = ("queued", "running", "done", "failed", "stopped")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

ConfigValue = float | int | bool | Annotated[str, StringConstraints(max_length=256)]


class SessionRefused(PolicyViolation):
    """The agreement in force does not allow the request (HTTP 403)."""

    status: ClassVar[int] = 403


class SessionNotFound(FLError):
    """No session of that id (HTTP 404)."""

    status: ClassVar[int] = 404


class SessionConflict(FLError):
    """The name is taken, the queue is full, or the session already ended (HTTP 409)."""

    status: ClassVar[int] = 409


class SessionRequest(BaseModel):
    """Body of ``POST /v1/sessions`` (JSON; unknown keys refused).

    Attributes:
        package: package name or digest (hex) in the agreement.
        rounds: rounds to run (1..100000; at most ``training.rounds``).
        name: session name (1..63 of ``A-Za-z0-9._-``), default ``s<n>-<time>``.
        min_clients: fewest updates a round aggregates (default ``training.min_clients``).
        wait_clients: clients to wait for before round 1 (default ``min_clients``).
        train_config: the package's training config (≤ 64 scalar entries).
        round_timeout, connect_timeout: seconds (1..86400).
        sealed_package: the sealed package archive, base64 (≤ 32 MiB decoded), sent to the
            clients after their Welcome; omit when clients bring ``--package-file``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    package: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    rounds: int = Field(ge=1, le=100_000)
    name: Annotated[str, StringConstraints(pattern=rf"^{_NAME.pattern}$")] | None = None
    min_clients: int | None = Field(default=None, ge=1, le=10_000)
    wait_clients: int | None = Field(default=None, ge=1, le=10_000)
    train_config: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")],
        ConfigValue,
    ] = Field(default_factory=dict, max_length=64)
    round_timeout: float = Field(default=300.0, ge=1.0, le=86_400.0)
    connect_timeout: float = Field(default=120.0, ge=1.0, le=86_400.0)
    sealed_package: Annotated[
        str, StringConstraints(max_length=(MAX_SEALED_PACKAGE_BYTES * 4) // 3 + 4)
    ] | None = None

    def sealed_bytes(self) -> bytes | None:
        """The decoded sealed package, or None.

        Raises:
            ParseError: not base64.
        """
        if self.sealed_package is None:
            return None
        try:
            return base64.b64decode(self.sealed_package, validate=True)
        except (binascii.Error, ValueError):
            from teeflow.errors import ParseError

            raise ParseError("sealed_package is not base64") from None


@dataclass(frozen=True)
class SessionPlan:
    """A request checked against the agreement: what the service runs.

    Attributes:
        name: session name; package: package name; package_digest: hex;
        rounds, min_clients, wait_clients: counts; strategy: the agreed rule's name;
        strategy_params: its agreed parameters; fraction_fit: agreed;
        agreement_digest: hex digest of the agreement the plan was checked against.
    """

    name: str
    package: str
    package_digest: str
    rounds: int
    min_clients: int
    wait_clients: int
    strategy: str
    strategy_params: dict[str, Any]
    fraction_fit: float
    agreement_digest: str


def check_request(
    request: SessionRequest, agreement: FederationAgreement, *, name: str, agreement_digest: str
) -> SessionPlan:
    """Decide ``request`` against the ``training`` section of ``agreement`` (module
    docstring); ``name`` is the session name to use (the request's or a generated one).

    Raises:
        SessionRefused: the agreement has no training section, or the request exceeds it;
            the package is not in the agreement.
    """
    terms = agreement.training
    if terms is None:
        raise SessionRefused(
            "the agreement has no training section: the parties must agree one before "
            "sessions can be started (docs/agreement.md, training)")
    try:
        counter_name(name)
        pkg, pkg_digest = choose_package(agreement, request.package)
    except FLError as exc:
        raise SessionRefused(str(exc)) from None
    if "train" not in agreement.packages[pkg].entrypoints:
        raise SessionRefused(f"package {pkg} has no train entrypoint")
    if request.rounds > terms.rounds:
        raise SessionRefused(
            f"{request.rounds} rounds requested, the agreement allows at most {terms.rounds}")
    min_clients = request.min_clients if request.min_clients is not None else terms.min_clients
    if min_clients < terms.min_clients:
        raise SessionRefused(
            f"min_clients {min_clients} is below the agreed {terms.min_clients}")
    wait = request.wait_clients if request.wait_clients is not None else min_clients
    if wait < min_clients:
        raise SessionRefused("wait_clients must be at least min_clients")
    return SessionPlan(
        name=name, package=pkg, package_digest=pkg_digest, rounds=request.rounds,
        min_clients=min_clients, wait_clients=wait, strategy=terms.strategy.name,
        strategy_params=dict(terms.strategy.params), fraction_fit=terms.fraction_fit,
        agreement_digest=agreement_digest,
    )


class SessionEvent(BaseModel):
    """One progress event of a session (the aggregator's ``emit``).

    Attributes:
        seq: 1, 2, … within the session; time: UTC, ISO 8601; event: its name
            (``listening``, ``round``, ``done``, ``error``, …); fields: its public fields.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    time: str
    event: str
    fields: dict[str, Any]


class SessionInfo(BaseModel):
    """A session as ``teeflow session ls`` shows it.

    Attributes:
        id: the session name; state: one of :data:`SESSION_STATES`; submitted_by: the
        party that started it; package, rounds, min_clients: the plan; round: last finished
        round (0 before round 1); address: ``host:port`` clients dial once it listens;
        created, started, ended: UTC ISO 8601 or None; reason: why it ended (≤ 300 chars);
        metrics: the last round's metrics; stopped_by: the party that stopped it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    state: Literal["queued", "running", "done", "failed", "stopped"]
    submitted_by: str
    package: str
    rounds: int
    min_clients: int
    round: int = 0
    address: str | None = None
    created: str
    started: str | None = None
    ended: str | None = None
    reason: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    stopped_by: str | None = None
