"""The training rules of a session, taken from the agreement in force (issue 13).

:meth:`TrainingPlan.from_agreement` turns the agreement's ``training`` section
(:class:`~teeflow.kbs.policy.training.TrainingTerms`) into what the aggregator runs: the strategy
with its agreed parameters (:func:`~teeflow.fl.strategy.strategy_for_terms`), wrapped in central
DP (:class:`~teeflow.fl.dp.DpFedAvg`) when ``dp`` is set, and the outlier detector
(:class:`~teeflow.fl.outliers.OutlierDetector`) when ``outliers`` is set. It **refuses** (raises
:class:`~teeflow.errors.FLError`) a session that asks for anything else: a ``--strategy`` or
strategy object other than the agreed rule and parameters, a ``--fraction-fit`` other than the
agreed one, more rounds than agreed, fewer ``min_clients`` than agreed. An agreement without a
``training`` section runs FedAvg (only) with the options' session shape.

Per round the aggregator asks :meth:`TrainingPlan.budget_allows` (DP: would one more round
exceed the agreed ε budget? then the session ends before it), selects among
:meth:`TrainingPlan.eligible` clients (removed outliers left out) and aggregates with
:meth:`TrainingPlan.aggregate` (detection, exclusion, then the strategy), which returns the
round's provenance records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict
from teeflow.fl.dp import DpFedAvg
from teeflow.fl.outliers import OutlierDetector, measure_utilities
from teeflow.fl.provenance import ProvenanceEntry
from teeflow.fl.provenance_records import DetectionRecord, PrivacyRecord
from teeflow.fl.strategy import strategy_for_terms
from teeflow.fl.strategy.base import Config, FitResult, Metrics, Strategy
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.training import TrainingTerms

__all__ = ["RoundOutcome", "SessionOptions", "TrainingPlan", "rule_of"]

Emit = Callable[[str, dict[str, Any]], None]


class SessionOptions(Protocol):
    """What a plan reads from :class:`teeflow.fl.aggregator.AggregatorOptions`."""

    rounds: int
    min_clients: int
    fraction_fit: float | None
    strategy: str | None
    seed: int
    train_config: Config
    evaluate_config: Config


def rule_of(strategy: Strategy) -> tuple[str, dict[str, float | int]]:
    """``(name, params)`` of a strategy object (its ``rule`` and ``rule_params()``).

    Raises:
        FLError: the object does not name its rule.
    """
    name = getattr(strategy, "rule", None)
    params = getattr(strategy, "rule_params", None)
    if not isinstance(name, str) or not callable(params):
        raise FLError("the strategy does not name its rule (rule, rule_params())")
    return name, dict(params())


@dataclass
class RoundOutcome:
    """A round's aggregate, metrics, and provenance records."""

    arrays: ArrayDict
    metrics: Metrics
    excluded: frozenset[str]
    detection: DetectionRecord | None
    privacy: PrivacyRecord | None


class TrainingPlan:
    """The rules the aggregator runs (module docstring).

    Attributes:
        terms: the effective training terms (the agreement's, or FedAvg defaults).
        strategy: the strategy (DP-wrapped when the agreement sets ``dp``).
        detector: the outlier detector or None.
        dp: the DP wrapper or None.
    """

    def __init__(
        self,
        terms: TrainingTerms,
        strategy: Strategy,
        detector: OutlierDetector | None,
        dp: DpFedAvg | None,
        emit: Emit,
    ) -> None:
        self.terms = terms
        self.strategy = strategy
        self.detector = detector
        self.dp = dp
        self._emit = emit

    @classmethod
    def for_options(
        cls,
        agreement: FederationAgreement,
        options: SessionOptions,
        strategy: Strategy | None,
        emit: Emit,
    ) -> TrainingPlan:
        """:meth:`from_agreement` with the aggregator's options (rounds, min_clients,
        fraction_fit and strategy as checks, seed, train and evaluate configs).

        Raises:
            FLError: as :meth:`from_agreement`.
        """
        o = options
        return cls.from_agreement(
            agreement,
            rounds=o.rounds,
            min_clients=o.min_clients,
            fraction_fit=o.fraction_fit,
            strategy_name=o.strategy,
            strategy=strategy,
            seed=o.seed,
            train_config=dict(o.train_config),
            evaluate_config=dict(o.evaluate_config or o.train_config),
            emit=emit,
        )

    @classmethod
    def from_agreement(
        cls,
        agreement: FederationAgreement,
        *,
        rounds: int,
        min_clients: int,
        fraction_fit: float | None,
        strategy_name: str | None,
        strategy: Strategy | None,
        seed: int,
        train_config: Config,
        evaluate_config: Config,
        emit: Emit,
    ) -> TrainingPlan:
        """The plan for a session of ``rounds`` rounds with at least ``min_clients`` updates.

        Args:
            strategy_name: the ``--strategy`` flag (None: not given) — a consistency check.
            strategy: a strategy object to run instead of building one; it must be the
                agreed rule with the agreed parameters (tests, embedders).

        Raises:
            FLError: the request differs from the agreement (module docstring).
        """
        terms = agreement.training
        if terms is None:
            terms = TrainingTerms(
                rounds=max(rounds, 1),
                min_clients=min_clients,
                fraction_fit=1.0 if fraction_fit is None else fraction_fit,
            )
        agreed = terms.strategy
        if strategy_name is not None and strategy_name != agreed.name:
            raise FLError(
                f"--strategy {strategy_name} differs from the agreement's rule {agreed.name}: "
                "the aggregation rule is an agreement term (training.strategy); drop the flag "
                "or propose an agreement update"
            )
        if fraction_fit is not None and fraction_fit != terms.fraction_fit:
            raise FLError(
                f"--fraction-fit {fraction_fit} differs from the agreement's "
                f"training.fraction_fit {terms.fraction_fit}"
            )
        if rounds > terms.rounds:
            raise FLError(f"{rounds} rounds requested, the agreement allows {terms.rounds}")
        if min_clients < terms.min_clients:
            raise FLError(
                f"--min-clients {min_clients} is below the agreement's {terms.min_clients}"
            )
        built = strategy_for_terms(
            terms,
            min_clients=min_clients,
            seed=seed,
            train_config=train_config,
            evaluate_config=evaluate_config or train_config,
        )
        if strategy is None:
            strategy = built
        # the agreed rule with every parameter (defaults included) must be what runs
        name, params = rule_of(strategy)
        if (name, params) != rule_of(built):
            raise FLError(
                f"the strategy {name} {params} is not the agreement's rule "
                f"{agreed.name} {rule_of(built)[1]}: refused"
            )
        dp = None
        if terms.dp is not None:
            from teeflow.fl.strategy.fedavg import FedAvg

            if not isinstance(strategy, FedAvg):
                raise FLError("central DP needs a FedAvg-family strategy object")
            dp = DpFedAvg(strategy, terms.dp, rounds=terms.rounds,
                          fraction_fit=terms.fraction_fit)
            strategy = dp
        detector = None
        if terms.outliers is not None:
            detector = OutlierDetector(terms.outliers, min_clients)
        return cls(terms, strategy, detector, dp, emit)

    def restore(self, entries: Iterable[ProvenanceEntry]) -> None:
        """After a restart: the exclusion counts and removed clients from the (verified)
        provenance log of the checkpoint, so a removed client stays removed."""
        if self.detector is None:
            return
        for e in entries:
            if e.kind != "round" or e.detection is None:
                continue
            for p in e.detection.excluded:
                self.detector.exclusions[p] = self.detector.exclusions.get(p, 0) + 1
            self.detector.removed.update(e.detection.removed)

    # -- per round ---------------------------------------------------------------------------

    def eligible(self, connected: Sequence[str]) -> list[str]:
        """Connected clients minus those removed by outlier detection."""
        removed = self.detector.removed if self.detector is not None else set()
        return [c for c in connected if c not in removed]

    def budget_allows(self, r: int, eligible: int) -> bool:
        """False (and ``dp-budget-exhausted``) when round ``r`` at the expected sampling rate
        would take ε over the agreed budget; True without DP."""
        if self.dp is None or eligible < 1:
            return True
        f, k_min = self.terms.fraction_fit, self.strategy_min_clients
        k = min(eligible, max(math.ceil(f * eligible), k_min))
        fits, after = self.dp.next_round_fits(k / eligible)
        if not fits:
            self._emit(
                "dp-budget-exhausted",
                {
                    "round": r,
                    "epsilon_spent": self.dp.ledger.spent,
                    "epsilon_after": after,
                    "budget_epsilon": self.dp.terms.budget_epsilon,
                },
            )
        return fits

    @property
    def strategy_min_clients(self) -> int:
        """The fewest updates a round aggregates."""
        inner = self.dp.inner if self.dp is not None else self.strategy
        return int(getattr(inner, "min_fit_clients", self.terms.min_clients))

    def aggregate(
        self,
        r: int,
        updates: Iterable[FitResult],
        utilities_of: Callable[[list[ArrayDict]], list[float | None]],
    ) -> RoundOutcome:
        """Detection (when due), exclusion, then the strategy's aggregation.

        Raises:
            FLError: as the strategy's ``aggregate_train`` and the detector.
        """
        detection = None
        excluded: frozenset[str] = frozenset()
        if self.detector is not None:
            received = list(updates)
            if self.detector.due(r, len(received)):
                d = self.detector.run(r, received, utilities_of)
                excluded = frozenset(d.excluded)
                detection = DetectionRecord(
                    parties=d.parties,
                    seed=d.seed,
                    subsets=d.subsets,
                    utilities=d.utilities,
                    scores=d.scores,
                    flagged=d.flagged,
                    excluded=d.excluded,
                    removed=d.removed,
                )
                scores = {p: s for p, s in d.scores.items()}
                self._emit("outlier-scores", {"round": r, "scores": scores})
                for p in d.flagged:
                    self._emit("client-flagged", {"round": r, "party": p, "score": scores[p]})
                for p in d.excluded:
                    self._emit("client-excluded", {"round": r, "party": p, "score": scores[p]})
                for p in d.removed:
                    self._emit("client-removed", {"round": r, "party": p})
            updates = [u for u in received if u.client not in excluded]
        before = self.dp.ledger.spent if self.dp is not None else 0.0
        arrays, metrics = self.strategy.aggregate_train(r, updates)
        privacy = None
        if self.dp is not None:
            last = self.dp.last_round
            t = self.dp.terms
            privacy = PrivacyRecord(
                epsilon_round=max(0.0, last["epsilon"] - before),
                epsilon_total=last["epsilon"],
                delta=t.delta,
                budget_epsilon=t.budget_epsilon,
                clip_norm=last["clip_norm"],
                noise_multiplier=last["noise_multiplier"],
                sampling_rate=last["sampling_rate"],
                accountant=t.accountant,
            )
            self._emit("dp-round", {"round": r, **privacy.model_dump()})
        if excluded:
            metrics["outliers_excluded"] = float(len(excluded))
        return RoundOutcome(arrays, metrics, excluded, detection, privacy)

    def utilities(
        self,
        hub: Any,
        r: int,
        candidates: list[ArrayDict],
        *,
        evaluators: Sequence[str],
        config: Config,
        timeout: float,
    ) -> list[float | None]:
        """Utility of round ``r``'s detection candidates, measured through ``hub`` by
        ``evaluators`` (:func:`~teeflow.fl.outliers.measure_utilities`)."""
        assert self.detector is not None  # only called when detection runs
        return measure_utilities(
            hub,
            r,
            candidates,
            evaluators,
            config=config,
            utility=self.detector.terms.utility,
            timeout=timeout,
            emit=self._emit,
        )

    def summary(self) -> dict[str, Any]:
        """The rule and its parameters, and ε spent / budget when DP is on (``done`` event,
        demo summary)."""
        out: dict[str, Any] = {
            "strategy": self.terms.strategy.name,
            "strategy_params": dict(self.terms.strategy.params),
        }
        if self.dp is not None:
            out["epsilon"] = self.dp.ledger.spent
            out["delta"] = self.dp.terms.delta
            out["budget_epsilon"] = self.dp.terms.budget_epsilon
        if self.detector is not None:
            out["outliers_removed"] = sorted(self.detector.removed)
        return out
