"""The strategy interface (Flower's template) and the records passed through it.

A round, as the aggregator runs it::

    instructions = strategy.configure_train(r, global_arrays, available_clients)
    # send each Instruction(client, arrays, config); collect FitResults (streamed)
    global_arrays, fit_metrics = strategy.aggregate_train(r, fit_results)
    instructions = strategy.configure_evaluate(r, global_arrays, available_clients)
    eval_metrics = strategy.aggregate_evaluate(r, eval_results)

Rounds are numbered from 1. Client identities are party names taken from the clients' attested
certificates (never from message fields). Client selection is deterministic: a function of the
strategy ``seed``, the round and the sorted client names (randomness is injected, and a
restarted aggregator selects the same clients).

The arithmetic lives in pure functions (:mod:`.fedavg`, :mod:`.robust`); strategies only check
inputs, sample clients and keep state (:meth:`Strategy.state_arrays` for checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict, Arrays, check_compatible

__all__ = [
    "MAX_METRICS",
    "MAX_NUM_EXAMPLES",
    "ClientSampler",
    "Config",
    "ConfigValue",
    "EvaluateResult",
    "FitResult",
    "Instruction",
    "Metrics",
    "Strategy",
    "check_metrics",
    "validate_evaluate_result",
    "validate_fit_result",
    "weighted_metrics",
]

#: A config value sent to clients (JSON scalar).
ConfigValue = str | int | float | bool
#: Per-instruction configuration (``{"round": 3, "lr": 0.01, "data": "digits?..."}``).
Config = dict[str, ConfigValue]
#: Named numeric metrics (``{"loss": 0.31, "accuracy": 0.92}``).
Metrics = dict[str, float]

#: Largest ``num_examples`` a client may claim (2**53 - 1, exact in float64 and I-JSON).
MAX_NUM_EXAMPLES = 2**53 - 1
#: Most metrics per result.
MAX_METRICS = 64


@dataclass(frozen=True)
class Instruction:
    """What the aggregator sends one client: the global arrays and a config."""

    client: str
    arrays: Arrays
    config: Config


@dataclass(frozen=True)
class FitResult:
    """A client's training update.

    Attributes:
        client: party name (from the client's certificate).
        arrays: the client's new local model (same names/shapes as the global one).
        num_examples: number of training examples used (FedAvg weight), ``1..2**53-1``.
        metrics: e.g. ``{"train_loss": 0.4}``.
    """

    client: str
    arrays: Arrays
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateResult:
    """A client's evaluation of the global model on its local test data.

    Attributes:
        client: party name.
        num_examples: number of test examples (weight), ``0..2**53-1``.
        metrics: e.g. ``{"loss": 0.3, "accuracy": 0.91}``.
    """

    client: str
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Strategy(Protocol):
    """Flower-style strategy. Implementations: :class:`~teeflow.fl.strategy.fedavg.FedAvg`,
    :class:`~teeflow.fl.strategy.robust.FedAdam`, ``FedMedian``, ``FedTrimmedAvg``, ``Krum``."""

    def configure_train(
        self, round: int, global_arrays: Arrays, clients: Sequence[str]
    ) -> list[Instruction]:
        """Select clients for round ``round`` and build their training instructions.

        Raises:
            FLError: fewer clients available than the strategy's minimum.
        """
        ...

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Fold the clients' updates into the new global arrays (and aggregated metrics).

        Raises:
            FLError: too few results, an invalid result (shapes, dtype, NaN, weight,
                duplicate client), or no ``configure_train`` for this round when needed.
        """
        ...

    def configure_evaluate(
        self, round: int, global_arrays: Arrays, clients: Sequence[str]
    ) -> list[Instruction]:
        """Select clients to evaluate the global arrays (may be empty).

        Raises:
            FLError: fewer clients available than the strategy's minimum.
        """
        ...

    def aggregate_evaluate(self, round: int, results: Iterable[EvaluateResult]) -> Metrics:
        """Example-weighted mean of the clients' evaluation metrics.

        Raises:
            FLError: an invalid result or too few results.
        """
        ...

    def state_arrays(self) -> ArrayDict:
        """Strategy state to put in a checkpoint (empty for stateless strategies)."""
        ...

    def load_state_arrays(self, state: Arrays) -> None:
        """Restore :meth:`state_arrays` output after a restart.

        Raises:
            FLError: the state does not fit this strategy.
        """
        ...


def check_metrics(metrics: Mapping[str, float], *, who: str) -> Metrics:
    """Copy ``metrics`` as ``{str: float}`` after checking it.

    Raises:
        FLError: more than :data:`MAX_METRICS` entries, a key that is not a 1..64 character
            string, or a value that is not a finite real number.
    """
    if not isinstance(metrics, Mapping) or len(metrics) > MAX_METRICS:
        raise FLError(f"{who}: metrics must be a mapping of at most {MAX_METRICS} entries")
    out: Metrics = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise FLError(f"{who}: metric names must be 1..64 character strings")
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise FLError(f"{who}: metric {key!r} is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise FLError(f"{who}: metric {key!r} is not finite")
        out[key] = number
    return out


def _check_count(value: object, *, who: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FLError(f"{who}: num_examples must be an integer")
    count = int(value)
    if not minimum <= count <= MAX_NUM_EXAMPLES:
        raise FLError(f"{who}: num_examples must be in {minimum}..{MAX_NUM_EXAMPLES}")
    return count


def validate_fit_result(result: FitResult, reference: Arrays | None = None) -> None:
    """Check one update before it is aggregated (runtimes call it to drop bad clients early).

    Args:
        result: the update.
        reference: the global arrays it must match (names, shapes); None skips that check
            but still requires float32 finite arrays.

    Raises:
        FLError: the client name is empty, ``num_examples`` is not in ``1..2**53-1``, the
            metrics are invalid, or the arrays do not match / are not float32 / not finite.
    """
    if not isinstance(result.client, str) or not result.client:
        raise FLError("update without a client name")
    who = f"update from {result.client[:64]!r}"
    _check_count(result.num_examples, who=who, minimum=1)
    check_metrics(result.metrics, who=who)
    check_compatible(reference if reference is not None else result.arrays, result.arrays, who=who)


def validate_evaluate_result(result: EvaluateResult) -> None:
    """Check one evaluation result before it is aggregated (runtimes drop a bad one and
    aggregate the others, so one client cannot switch federated evaluation off).

    Raises:
        FLError: the client name is empty, ``num_examples`` is not in ``0..2**53-1``, or the
            metrics are invalid (:func:`check_metrics`).
    """
    if not isinstance(result.client, str) or not result.client:
        raise FLError("evaluation without a client name")
    who = f"evaluation from {result.client[:64]!r}"
    _check_count(result.num_examples, who=who, minimum=0)
    check_metrics(result.metrics, who=who)


def weighted_metrics(pairs: Iterable[tuple[int, Mapping[str, float]]]) -> Metrics:
    """Per-metric mean weighted by example counts (streaming).

    Each metric is averaged over the results that report it, weighted by their counts;
    results with weight 0 do not contribute. ``num_examples`` (total weight) and
    ``num_clients`` are added.

    Args:
        pairs: ``(num_examples, metrics)`` per client.

    Raises:
        FLError: invalid metrics (see :func:`check_metrics`) or counts.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    total = 0
    clients = 0
    for count, metrics in pairs:
        n = _check_count(count, who="result", minimum=0)
        checked = check_metrics(metrics, who="result")
        total += n
        clients += 1
        for key, value in checked.items():
            sums[key] = sums.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    out: Metrics = {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}
    out["num_examples"] = float(total)
    out["num_clients"] = float(clients)
    return out


@dataclass(frozen=True)
class ClientSampler:
    """Deterministic client selection (Flower's ``fraction_fit`` / ``min_*_clients`` rules).

    ``k = min(n, max(ceil(fraction * n), min_clients))`` of the ``n`` available clients are
    drawn without replacement by a PCG64 generator seeded with ``(seed, round, stage)``.

    Attributes:
        fraction: share of available clients to select, in ``[0, 1]``.
        min_clients: fewest clients to select (and to accept results from).
        min_available: fewest clients that must be available.
        seed: selection seed.
    """

    fraction: float = 1.0
    min_clients: int = 2
    min_available: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise FLError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.min_clients < 0 or self.min_available < 0 or self.seed < 0:
            raise FLError("min_clients, min_available and seed must be >= 0")

    def sample(self, round: int, clients: Sequence[str], *, stage: int = 0) -> list[str]:
        """The selected client names, sorted.

        Raises:
            FLError: ``round < 1``, duplicate names, or fewer than ``max(min_available,
                min_clients)`` clients available.
        """
        if round < 1:
            raise FLError(f"rounds start at 1, got {round}")
        names = sorted(clients)
        if len(set(names)) != len(names):
            raise FLError("duplicate client names")
        need = max(self.min_available, self.min_clients)
        if len(names) < need:
            raise FLError(f"round {round}: {len(names)} clients available, {need} needed")
        if self.fraction == 0.0 and self.min_clients == 0:
            return []
        k = min(len(names), max(math.ceil(self.fraction * len(names)), self.min_clients))
        rng = np.random.default_rng([self.seed, round, stage])
        picked = rng.choice(len(names), size=k, replace=False)
        return sorted(names[int(i)] for i in picked)
