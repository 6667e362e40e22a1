"""Collecting a round's results from the clients (the aggregator's side; torch-free).

:class:`ResultCollector` turns finished hub tasks into what the strategy consumes:

* **updates** (:meth:`ResultCollector.updates`): decoded and checked one at a time as they
  arrive (:func:`~teeflow.fl.strategy.base.validate_fit_result`; a bad one drops its client
  from the round); each weighs its client's ``num_examples`` **clipped** to the agreement's
  cap for that party (``fl.max_examples_per_party``, else ``fl.max_examples``;
  :meth:`~teeflow.kbs.policy.agreement.FlLimits.cap`) — a clipped update still counts, at
  the cap; the clipping is reported (``weight-clipped``) and, with every weight used and the
  update digests, recorded in a :class:`RoundTally` for the round's provenance entry;
* **evaluations** (:meth:`ResultCollector.evaluate`): each result is checked alone
  (:func:`~teeflow.fl.strategy.base.validate_evaluate_result`) and a malformed one is dropped
  (``client-dropped``) while the others are aggregated, its count clipped like a training
  weight — so one client cannot switch federated evaluation off, nor dominate its mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from teeflow.errors import FLError, ParseError
from teeflow.fl.arrays import ArrayDict, decode_arrays, encode_arrays
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.strategy import EvaluateResult, FitResult, validate_fit_result
from teeflow.fl.strategy.base import Config, Metrics, validate_evaluate_result
from teeflow.kbs.policy.agreement import FlLimits

__all__ = ["Emit", "ResultCollector", "RoundHub", "RoundTally"]

#: Progress sink: ``emit(event, fields)``.
Emit = Callable[[str, dict[str, Any]], None]


class _Handle(Protocol):
    party: str

    def outcome(self) -> Any: ...


class RoundHub(Protocol):
    """What a round needs of the hub: submit tasks, wait for them as they complete."""

    def submit(
        self,
        party: str,
        kind: int,
        round: int,
        config: Config,
        arrays: bytes | None,
        *,
        deadline_seconds: float,
    ) -> Any: ...

    def as_completed(self, handles: Iterable[Any], deadline: float) -> Iterator[Any]: ...


@dataclass
class RoundTally:
    """What a round's accepted updates contributed: update digest, FedAvg weight used, and
    the parties whose ``num_examples`` was clipped."""

    digests: dict[str, bytes] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    clipped: set[str] = field(default_factory=set)


class ResultCollector:
    """Collects updates and evaluations from ``hub`` (module docstring).

    Args:
        hub: the client hub (:class:`teeflow.fl.transport.server.ClientHub`).
        limits: the agreement's FL limits (``agreement.fl``).
        emit: progress sink.
    """

    def __init__(self, hub: RoundHub, limits: FlLimits, emit: Emit) -> None:
        self._hub = hub
        self._limits = limits
        self._emit = emit
        #: ``admit(party) -> reason | None``: refuse an update whose client no longer stands
        #: on a valid attestation (issue 11: :meth:`teeflow.fl.liveness.LiveTrust.admit`).
        self.admit: Callable[[str], str | None] | None = None

    def weight(self, r: int, party: str, reported: int, stage: str) -> tuple[int, bool]:
        """``(weight, clipped)``: ``reported`` clipped to ``party``'s cap; a clipping is
        reported as ``weight-clipped {round, party, stage, reported, cap}``."""
        cap = self._limits.cap(party)
        if cap is None or reported <= cap:
            return reported, False
        fields = {"round": r, "party": party, "stage": stage, "reported": reported, "cap": cap}
        self._emit("weight-clipped", fields)
        return cap, True

    def updates(
        self,
        r: int,
        handles: list[Any],
        deadline: float,
        reference: ArrayDict,
        tally: RoundTally,
    ) -> Iterator[FitResult]:
        """The round's valid updates as they arrive (until the monotonic ``deadline``), each
        weighted by its clipped ``num_examples`` (recorded in ``tally``); ``reference``: the
        global arrays updates must match. Dropped clients are reported."""
        reported: set[str] = set()
        for handle in self._hub.as_completed(handles, deadline):
            try:
                out = handle.outcome()
                refused = self.admit(out.party) if self.admit is not None else None
                if refused is not None:
                    raise FLError(refused)
                assert out.arrays is not None and out.arrays_sha256 is not None
                result = FitResult(
                    out.party, decode_arrays(out.arrays), out.num_examples, out.metrics
                )
                validate_fit_result(result, reference)
            except (FLError, ParseError, AssertionError) as exc:
                reported.add(handle.party)
                self._drop(r, handle.party, str(exc))
                continue
            weight, was_clipped = self.weight(r, out.party, result.num_examples, "train")
            if was_clipped:
                tally.clipped.add(out.party)
                result = FitResult(out.party, result.arrays, weight, result.metrics)
            tally.digests[out.party] = out.arrays_sha256
            tally.weights[out.party] = weight
            yield result
        for h in handles:  # abandoned at the deadline
            if h.party not in tally.digests and h.party not in reported:
                self._drop(r, h.party, "missed the deadline")

    def evaluate(
        self,
        r: int,
        arrays: ArrayDict,
        configs: Mapping[str, Config],
        timeout: float,
        aggregate: Callable[[list[EvaluateResult]], Metrics],
    ) -> Metrics:
        """Send ``arrays`` for evaluation to each party of ``configs``, collect the valid
        results within ``timeout`` seconds (counts clipped) and return ``aggregate(results)``
        with ``eval_`` prefixed keys; ``{}`` (and ``evaluate-skipped``) when it refuses."""
        data = encode_arrays(arrays)
        handles = []
        for party, cfg in configs.items():
            try:
                handles.append(
                    self._hub.submit(
                        party, pb.TASK_KIND_EVALUATE, r, cfg, data, deadline_seconds=timeout
                    )
                )
            except FLError:
                continue
        results = []
        for h in self._hub.as_completed(handles, time.monotonic() + timeout):
            try:
                out = h.outcome()
                result = EvaluateResult(out.party, out.num_examples, out.metrics)
                validate_evaluate_result(result)
            except FLError as exc:
                self._drop(r, h.party, str(exc))  # this result only: the others still count
                continue
            weight, _ = self.weight(r, out.party, result.num_examples, "evaluate")
            results.append(EvaluateResult(out.party, weight, result.metrics))
        try:
            metrics = aggregate(results)
        except FLError as exc:
            self._emit("evaluate-skipped", {"round": r, "reason": str(exc)[:300]})
            return {}
        return {f"eval_{k}": v for k, v in metrics.items()}

    def _drop(self, r: int, party: str, reason: str) -> None:
        self._emit("client-dropped", {"round": r, "party": party, "reason": reason[:300]})
