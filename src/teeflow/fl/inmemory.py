"""Whole FL sessions in one process, without gRPC or TLS (Flower's ``InMemoryGrid``).

:class:`InMemoryHub` has the interface of the gRPC :class:`~teeflow.fl.transport.hub.ClientHub`
the aggregator drives (``connected``, ``identity``, ``wait_for``, ``submit``, ``as_completed``,
``abandon``, ``shutdown``) but runs each task by calling a :class:`ClientApp` in the calling
thread. Results go through the same encoding as on the wire (canonical safetensors bytes and
their SHA-256), so the aggregator checks, weighs and records them exactly as in production.

:class:`InMemoryAggregator` is :class:`~teeflow.fl.aggregator.Aggregator` with the KBS and the
network taken out: the agreement, the provenance signing key and certificate, the measurement
and package digest are given (:class:`LocalTrust`), checkpoints stay in memory, the model is not
sealed. Everything between — rules from the agreement's ``training`` section, client selection,
streamed aggregation, outlier detection, differential privacy, evaluation, provenance — is the
production code path. Tests and benchmarks use it (``tests/unit/test_fl_engine.py``,
``bench/fl_poisoning.py``); it is not a deployment mode (nothing here is attested).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import FLError
from teeflow.fl.aggregator import Aggregator, AggregatorOptions
from teeflow.fl.arrays import ArrayDict, decode_arrays, encode_arrays
from teeflow.fl.checkpoint import Checkpoint
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.provenance import CertificateCheck, ProvenanceEntry
from teeflow.fl.strategy.base import Config, Metrics, Strategy, check_metrics
from teeflow.fl.transport.hub import TaskOutcome
from teeflow.fl.trust import RoundTrust
from teeflow.fl.workload import AggregatorResult
from teeflow.kbs.policy.agreement import FederationAgreement, digest

__all__ = [
    "ClientApp",
    "FixedTrust",
    "InMemoryAggregator",
    "InMemoryHub",
    "InMemoryResult",
    "LocalTrust",
    "MemoryIdentity",
    "MemoryTask",
]

_KINDS: dict[int, str] = {
    pb.TASK_KIND_INIT: "init",
    pb.TASK_KIND_TRAIN: "train",
    pb.TASK_KIND_EVALUATE: "evaluate",
}


class ClientApp(Protocol):
    """A client's code, called by :class:`InMemoryHub` (arrays: float32 named arrays)."""

    def init(self, config: Config) -> ArrayDict:
        """The initial model (the package's ``init`` function)."""
        ...

    def fit(self, arrays: ArrayDict, config: Config) -> tuple[ArrayDict, int, Metrics]:
        """Train from ``arrays``: ``(new arrays, num_examples, metrics)``."""
        ...

    def evaluate(self, arrays: ArrayDict, config: Config) -> tuple[int, Metrics]:
        """Evaluate ``arrays`` on local (validation) data: ``(num_examples, metrics)``."""
        ...


@dataclass(frozen=True)
class MemoryIdentity:
    """A stand-in for the attested workload identity: party and measurement (hex)."""

    party: str
    measurement: str


class MemoryTask:
    """One task; done when created (the hub runs it synchronously)."""

    def __init__(self, party: str, kind: str, outcome: TaskOutcome | None, error: str | None):
        self.party = party
        self.kind = kind
        self._outcome = outcome
        self._error = error

    def done(self) -> bool:
        """Always True."""
        return True

    def outcome(self) -> TaskOutcome:
        """The result.

        Raises:
            FLError: the client failed (its exception's message).
        """
        if self._outcome is None:
            raise FLError(f"{self.kind} task of {self.party} failed: {self._error}")
        return self._outcome


class InMemoryHub:
    """The clients of an in-memory session (module docstring).

    Args:
        clients: party name → :class:`ClientApp`.
        measurement: the measurement reported for every client (hex).
        on_event: progress sink (``client-disconnected`` on :meth:`disconnect`).

    Attributes:
        round: the round in progress (set by the aggregator).
        calls: tasks run per kind (``init``/``train``/``evaluate``).
    """

    def __init__(
        self,
        clients: Mapping[str, ClientApp],
        *,
        measurement: str = "00" * 32,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._clients = dict(clients)
        self._measurement = measurement
        self._on_event = on_event or (lambda event, fields: None)
        self.round = 0
        self.calls: dict[str, int] = {"init": 0, "train": 0, "evaluate": 0}
        self.closed: tuple[bool, str] | None = None

    def connected(self) -> list[str]:
        """Connected parties, sorted."""
        return sorted(self._clients)

    def identity(self, party: str) -> MemoryIdentity | None:
        """The party's identity, None when not connected."""
        return MemoryIdentity(party, self._measurement) if party in self._clients else None

    def wait_for(self, count: int, timeout: float) -> int:
        """The number connected (nobody connects later in memory)."""
        return len(self._clients)

    def disconnect(self, party: str) -> None:
        """Remove ``party`` (a client that went away)."""
        if self._clients.pop(party, None) is not None:
            self._on_event("client-disconnected", {"party": party, "reason": "disconnected"})

    def submit(
        self,
        party: str,
        kind: int,
        round: int,
        config: Config,
        arrays: bytes | None,
        *,
        deadline_seconds: float,
    ) -> MemoryTask:
        """Run one task now; a client exception fails the task (as a crashed client would).

        Raises:
            FLError: ``party`` is not connected or the hub is shut down.
        """
        app = self._clients.get(party)
        if app is None or self.closed is not None:
            raise FLError(f"{party} is not connected")
        name = _KINDS[kind]
        self.calls[name] += 1
        try:
            model = decode_arrays(arrays) if arrays is not None else None
            metrics: Metrics
            out: ArrayDict | None
            if name == "init":
                out, n, metrics = app.init(dict(config)), 0, {}
            elif name == "train":
                assert model is not None
                out, n, metrics = app.fit(model, dict(config))
            else:
                assert model is not None
                n, metrics = app.evaluate(model, dict(config))
                out = None
            data = encode_arrays(out) if out is not None else None
            outcome = TaskOutcome(
                party=party,
                kind=name,
                num_examples=n,
                metrics=check_metrics(metrics, who=party),
                arrays=data,
                arrays_sha256=hashlib.sha256(data).digest() if data is not None else None,
            )
        except Exception as exc:
            return MemoryTask(party, name, None, f"{type(exc).__name__}: {exc}"[:300])
        return MemoryTask(party, name, outcome, None)

    def as_completed(self, handles: Iterable[MemoryTask], deadline: float) -> Iterator[MemoryTask]:
        """The handles, in submission order (all are done)."""
        yield from handles

    def abandon(self, handle: MemoryTask, reason: str) -> None:
        """Nothing to abandon in memory."""

    def shutdown(self, *, ok: bool, reason: str, rounds: int) -> None:
        """Record the end of the session; later submissions fail."""
        self.closed = (ok, reason)


@dataclass(frozen=True)
class LocalTrust:
    """What the KBS would provide: the agreement, the provenance signing key and its
    certificate (PEM), the aggregator measurement, the package digest, and the certificate
    check of hand-overs (None: no hand-over possible)."""

    agreement: FederationAgreement
    key: ec.EllipticCurvePrivateKey
    certificate_pem: bytes
    measurement: str = "00" * 32
    package_digest: bytes = b"\0" * 32
    certify: CertificateCheck | None = None


@dataclass
class InMemoryResult:
    """An in-memory session's outcome: the final arrays, the provenance, the checkpoints."""

    arrays: ArrayDict
    provenance: tuple[ProvenanceEntry, ...]
    result: AggregatorResult
    checkpoints: list[Checkpoint] = field(default_factory=list)


@dataclass(frozen=True)
class _Identity:
    measurement: str
    agreement_digest: str
    emulated: bool = True


class FixedTrust:
    """The in-memory stand-in of :class:`teeflow.fl.liveness.LiveTrust`: no KBS, so the
    agreement given is in force for the whole session, nobody re-attests and no update is
    refused for freshness; rounds carry no ``trust`` provenance record (live trust is
    tested over real sockets, ``tests/integration/test_fl_live_trust.py``)."""

    def __init__(self, agreement: FederationAgreement) -> None:
        self.version = agreement.version
        self.digest = digest(agreement).hex()

    def before_round(self, r: int, horizon: float) -> RoundTrust:
        """Round ``r``'s (empty) admission: the fixed agreement, no drops."""
        now = datetime.now(UTC)
        return RoundTrust(self.version, self.digest, now, now)

    def record(self, trust: RoundTrust, clients: list[str]) -> None:
        """No trust record (None) in an in-memory session's provenance."""
        return None

    def admit(self, party: str) -> str | None:
        """Every update is admitted (None)."""
        return None


class InMemoryAggregator(Aggregator):
    """:class:`Aggregator` over an :class:`InMemoryHub` (module docstring).

    Args:
        options: as the aggregator's (``pin`` is not read; the KBS fields are ignored).
        trust: the agreement, key and certificate the KBS would provide.
        hub: the clients.
        emit: progress sink (e.g. :class:`teeflow.fl.events.EventLog`).
        strategy: a strategy object; it must be the agreement's rule with its parameters.
        resume: a checkpoint to resume from (as a restarted aggregator would).
    """

    def __init__(
        self,
        options: AggregatorOptions,
        trust: LocalTrust,
        hub: InMemoryHub,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        strategy: Strategy | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        super().__init__(options, emit, strategy=strategy)
        self._trust = trust
        self._memory_hub = hub
        self._resume_from = resume
        self.checkpoints: list[Checkpoint] = []

    def run_in_memory(self) -> InMemoryResult:
        """Run the session.

        Raises:
            FLError: the agreement refuses the options or strategy, too few clients, a
                round failed twice.
            CheckpointError: ``resume`` was made under another agreement or package.
        """
        t = self._trust
        self.agreement = t.agreement
        self.agreement_digest = digest(t.agreement)
        self.package_digest = t.package_digest
        self.key, self.cert_pem = t.key, t.certificate_pem
        self._certify = t.certify  # type: ignore[assignment]  # None: no hand-over possible
        self.identity = _Identity(t.measurement, self.agreement_digest.hex())  # type: ignore[assignment]
        self.o.state_dir.mkdir(parents=True, exist_ok=True)
        start_round = 0
        self._prepare_training()
        if self._resume_from is not None:
            start_round = self._resume(self._resume_from)
        self.hub = self._memory_hub  # type: ignore[assignment]
        self._collector()
        self.live = FixedTrust(t.agreement)  # type: ignore[assignment]  # no KBS in memory
        self.collect.admit = self.live.admit
        ok, reason = False, "aborted"
        try:
            result = self._session(start_round)
            ok, reason = True, "session complete"
        except FLError as exc:
            reason = str(exc)
            raise
        finally:
            self.hub.shutdown(ok=ok, reason=reason[:500], rounds=self.hub.round)
        return InMemoryResult(self.global_arrays, self.log.entries, result, self.checkpoints)

    def _commit(self, r: int, arrays: ArrayDict) -> None:
        ckpt = self._checkpoint(r, arrays)
        self.checkpoints.append(ckpt)
        self.emit("committed", round=r, digest=ckpt.arrays_digest.hex(), counter="memory")

    def _write_outputs(self, start_round: int) -> AggregatorResult:
        prov = self.o.state_dir / f"{self.o.session}.provenance.jsonl"
        self.log.save(prov)
        self._emit_done(prov, prov)
        return AggregatorResult(
            self.o.session, self._last_round, start_round, prov, prov, tuple(self._reports)
        )


