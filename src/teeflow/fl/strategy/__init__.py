"""Aggregation strategies (Flower's template; arithmetic in pure functions).

``make_strategy(name, **kwargs)`` builds one by name: ``fedavg``, ``fedadam``, ``median``,
``trimmed-mean``, ``krum``.
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
    "Strategy",
    "WeightedAccumulator",
    "check_metrics",
    "coordinate_median",
    "fedadam_update",
    "krum",
    "krum_scores",
    "make_strategy",
    "trimmed_mean",
    "validate_fit_result",
    "weighted_average",
    "weighted_metrics",
]

#: Strategy classes by CLI name (``--strategy``).
STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
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
