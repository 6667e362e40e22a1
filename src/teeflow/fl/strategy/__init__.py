"""Aggregation strategies (Flower's template; arithmetic in pure functions).

``make_strategy(name, **kwargs)`` builds one by name: ``fedavg``, ``fedavg-norm-bounded``,
``fedadam``, ``median``, ``trimmed-mean``, ``krum``; :func:`strategy_for_terms` builds the one
an agreement's ``training`` section names, with its parameters.
"""

from __future__ import annotations

from typing import Any

from teeflow.errors import FLError
from teeflow.fl.strategy.base import (
    ClientSampler,
    Config,
    ConfigValue,
    EvaluateResult,
    FitResult,
    Instruction,
    Metrics,
    Strategy,
    check_metrics,
    validate_fit_result,
    weighted_metrics,
)
from teeflow.fl.strategy.bounded import NormBoundedFedAvg, clip_update, update_norm
from teeflow.fl.strategy.fedavg import FedAvg, WeightedAccumulator, weighted_average
from teeflow.fl.strategy.robust import (
    FedAdam,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    coordinate_median,
    fedadam_update,
    krum,
    krum_scores,
    trimmed_mean,
)
from teeflow.kbs.policy.training import TrainingTerms, check_strategy_params

__all__ = [
    "STRATEGIES",
    "ClientSampler",
    "Config",
    "ConfigValue",
    "EvaluateResult",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedTrimmedAvg",
    "FitResult",
    "Instruction",
    "Krum",
    "Metrics",
    "NormBoundedFedAvg",
    "Strategy",
    "WeightedAccumulator",
    "check_metrics",
    "clip_update",
    "coordinate_median",
    "fedadam_update",
    "krum",
    "krum_scores",
    "make_strategy",
    "strategy_for_terms",
    "trimmed_mean",
    "update_norm",
    "validate_fit_result",
    "weighted_average",
    "weighted_metrics",
]

#: Strategy classes by agreement name (``training.strategy.name``).
STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavg-norm-bounded": NormBoundedFedAvg,
    "fedadam": FedAdam,
    "median": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
    "krum": Krum,
}


def make_strategy(name: str, **kwargs: Any) -> FedAvg:
    """Instantiate the strategy called ``name`` with keyword arguments.

    Raises:
        FLError: unknown name or arguments the strategy does not take.
    """
    cls = STRATEGIES.get(name)
    if cls is None:
        raise FLError(f"unknown strategy {name!r} (one of {', '.join(sorted(STRATEGIES))})")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise FLError(f"strategy {name!r}: {exc}") from None


def strategy_for_terms(
    terms: TrainingTerms,
    *,
    min_clients: int | None = None,
    seed: int = 0,
    train_config: Config | None = None,
    evaluate_config: Config | None = None,
) -> FedAvg:
    """The strategy ``terms.strategy`` names, with its agreed parameters, sampling
    ``terms.fraction_fit`` of the clients and accepting no fewer than ``min_clients`` updates
    (default ``terms.min_clients``; never fewer).

    Raises:
        FLError: the parameters do not fit the strategy (:func:`~teeflow.kbs.policy.training.
            check_strategy_params`), or ``min_clients`` is below the agreement's.
    """
    s = terms.strategy
    problems = check_strategy_params(s.name, dict(s.params))
    if problems:
        raise FLError("; ".join(problems))
    k = terms.min_clients if min_clients is None else min_clients
    if k < terms.min_clients:
        raise FLError(f"min_clients {k} is below the agreement's {terms.min_clients}")
    return make_strategy(
        s.name,
        **dict(s.params),
        fraction_fit=terms.fraction_fit,
        min_fit_clients=k,
        min_evaluate_clients=1,
        min_available_clients=k,
        seed=seed,
        train_config=dict(train_config or {}),
        evaluate_config=dict(evaluate_config or train_config or {}),
    )
