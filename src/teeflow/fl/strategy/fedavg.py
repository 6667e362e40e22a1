"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, Algorithm 1): the new global model is the mean of the
clients' models weighted by their ``num_examples``::

    w_{t+1} = sum_k n_k w_k / sum_k n_k

**Streaming.** :class:`WeightedAccumulator` folds one update at a time into float64 running
sums, so the aggregator holds the sums (8 bytes per parameter) plus one scratch buffer the size
of the largest tensor, plus the update being read — O(model) whatever the number of clients.
:func:`weighted_average` is the pure-function form; :class:`FedAvg` consumes
``aggregate_train``'s iterable lazily, so a runtime can decode each update just before it is
folded and drop it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict, Arrays, check_compatible
from teeflow.fl.strategy.base import (
    ClientSampler,
    Config,
    EvaluateResult,
    FitResult,
    Instruction,
    Metrics,
    validate_fit_result,
    weighted_metrics,
)

__all__ = ["FedAvg", "WeightedAccumulator", "weighted_average"]


class WeightedAccumulator:
    """Running ``sum_k w_k x_k`` and ``sum_k w_k`` in float64.

    Attributes:
        count: updates folded so far.
        total_weight: ``sum_k w_k``.
        buffers_allocated: array buffers this accumulator has allocated in its lifetime
            (one sum per tensor plus one scratch buffer; it never grows with ``count``).
    """

    def __init__(self) -> None:
        self._sums: dict[str, NDArray[np.float64]] | None = None
        self._scratch: NDArray[np.float64] | None = None
        self._shapes: dict[str, NDArray[np.float32]] = {}
        self.count = 0
        self.total_weight = 0.0
        self.buffers_allocated = 0

    def add(self, arrays: Arrays, weight: float) -> None:
        """Fold ``weight * arrays`` into the sums.

        Args:
            arrays: float32 named arrays; the first call fixes names and shapes.
            weight: finite, > 0.

        Raises:
            FLError: bad weight, or names/shapes/dtype differ from the first update, or
                NaN/infinite values.
        """
        w = float(weight)
        if not (np.isfinite(w) and w > 0):
            raise FLError("update weight must be a positive finite number")
        if self._sums is None:
            check_compatible(arrays, arrays)
            # zero-stride views: the names and shapes to check later updates against, no memory
            self._shapes = {
                k: np.broadcast_to(np.zeros((), np.float32), v.shape) for k, v in arrays.items()
            }
            self._sums = {k: np.zeros(v.shape, np.float64) for k, v in sorted(arrays.items())}
            largest = max((v.size for v in arrays.values()), default=0)
            self._scratch = np.empty(largest, np.float64)
            self.buffers_allocated += len(self._sums) + 1
        else:
            check_compatible(self._shapes, arrays)
        assert self._scratch is not None
        for name, total in self._sums.items():
            tmp = self._scratch[: total.size].reshape(total.shape)
            np.multiply(arrays[name], w, out=tmp, dtype=np.float64)
            np.add(total, tmp, out=total)
        self.count += 1
        self.total_weight += w

    def result(self) -> ArrayDict:
        """``sums / total_weight`` as float32 arrays.

        Raises:
            FLError: nothing was added.
        """
        if self._sums is None or self.total_weight <= 0:
            raise FLError("no updates to average")
        return {k: (v / self.total_weight).astype(np.float32) for k, v in self._sums.items()}


def weighted_average(stream: Iterable[tuple[Arrays, float]]) -> ArrayDict:
    """Weighted mean of named arrays, consuming ``stream`` one item at a time.

    Args:
        stream: ``(arrays, weight)`` pairs; weights finite and > 0; all arrays with the same
            names and shapes, float32.

    Returns:
        ``sum w_k x_k / sum w_k`` per name, computed in float64, returned as float32.

    Raises:
        FLError: empty stream, bad weight, incompatible or non-finite arrays.
    """
    acc = WeightedAccumulator()
    for arrays, weight in stream:
        acc.add(arrays, weight)
    return acc.result()


class FedAvg:
    """Federated averaging strategy (implements :class:`~teeflow.fl.strategy.base.Strategy`).

    Args:
        fraction_fit: share of available clients selected for training each round.
        fraction_evaluate: share selected for evaluation (0 with ``min_evaluate_clients=0``
            disables federated evaluation).
        min_fit_clients: fewest clients selected for training, and fewest updates accepted
            (``K`` of ``--min-clients``).
        min_evaluate_clients: fewest evaluation results accepted.
        min_available_clients: fewest clients that must be connected to start a round.
        seed: client-selection seed.
        train_config: extra config sent with every training instruction (``lr``, ``data``...).
        evaluate_config: extra config sent with every evaluation instruction.

    Every instruction's config also carries ``round`` (int). :attr:`rule` and
    :meth:`rule_params` name the rule as the agreement's ``training.strategy`` does.
    """

    #: The rule's name in the agreement (``training.strategy.name``).
    rule: ClassVar[str] = "fedavg"

    def __init__(
        self,
        *,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 2,
        min_evaluate_clients: int = 2,
        min_available_clients: int = 2,
        seed: int = 0,
        train_config: Config | None = None,
        evaluate_config: Config | None = None,
    ) -> None:
        self.fit_sampler = ClientSampler(
            fraction_fit, min_fit_clients, max(min_available_clients, min_fit_clients), seed
        )
        self.evaluate_sampler = ClientSampler(
            fraction_evaluate, min_evaluate_clients, min_available_clients, seed
        )
        self.min_fit_clients = min_fit_clients
        self.min_evaluate_clients = min_evaluate_clients
        self.train_config: Config = dict(train_config or {})
        self.evaluate_config: Config = dict(evaluate_config or {})
        self._reference: Arrays | None = None
        self._reference_round: int | None = None

    def rule_params(self) -> dict[str, float | int]:
        """The rule's parameters as the agreement's ``training.strategy.params`` (FedAvg: none)."""
        return {}

    # -- configuration ---------------------------------------------------------------------

    def configure_train(
        self, round: int, global_arrays: Arrays, clients: Sequence[str]
    ) -> list[Instruction]:
        """Select ``fit_sampler.sample(round, clients)`` and send each the global arrays.

        Raises:
            FLError: not enough clients, or the global arrays are not float32/finite.
        """
        check_compatible(global_arrays, global_arrays, who="global model")
        chosen = self.fit_sampler.sample(round, clients, stage=0)
        self._reference = global_arrays
        self._reference_round = round
        config: Config = {**self.train_config, "round": round}
        return [Instruction(c, global_arrays, dict(config)) for c in chosen]

    def configure_evaluate(
        self, round: int, global_arrays: Arrays, clients: Sequence[str]
    ) -> list[Instruction]:
        """Select ``evaluate_sampler.sample(round, clients)`` (may be empty).

        Raises:
            FLError: not enough clients.
        """
        chosen = self.evaluate_sampler.sample(round, clients, stage=1)
        config: Config = {**self.evaluate_config, "round": round}
        return [Instruction(c, global_arrays, dict(config)) for c in chosen]

    # -- aggregation -----------------------------------------------------------------------

    def _checked(self, round: int, results: Iterable[FitResult]) -> Iterator[FitResult]:
        """Yield results after :func:`validate_fit_result`, refusing duplicate clients."""
        reference = self._reference if self._reference_round == round else None
        seen: set[str] = set()
        for result in results:
            validate_fit_result(result, reference)
            if result.client in seen:
                raise FLError(f"round {round}: two updates from {result.client[:64]!r}")
            seen.add(result.client)
            yield result

    def _enough(self, round: int, count: int) -> None:
        if count < max(1, self.min_fit_clients):
            raise FLError(
                f"round {round}: {count} updates, at least {max(1, self.min_fit_clients)} needed"
            )

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Streaming example-weighted mean of the updates; metrics weighted the same way.

        Raises:
            FLError: fewer than ``min_fit_clients`` updates, or an invalid/duplicate update.
        """
        acc = WeightedAccumulator()
        metric_pairs: list[tuple[int, Any]] = []
        for result in self._checked(round, results):
            acc.add(result.arrays, float(result.num_examples))
            metric_pairs.append((result.num_examples, dict(result.metrics)))
        self._enough(round, acc.count)
        return acc.result(), weighted_metrics(metric_pairs)

    def aggregate_evaluate(self, round: int, results: Iterable[EvaluateResult]) -> Metrics:
        """Example-weighted mean of each metric (``loss``, ``accuracy``...).

        Raises:
            FLError: fewer than ``min_evaluate_clients`` results, duplicates, invalid metrics.
        """
        seen: set[str] = set()
        pairs: list[tuple[int, Any]] = []
        for result in results:
            if result.client in seen:
                raise FLError(f"round {round}: two evaluations from {result.client[:64]!r}")
            seen.add(result.client)
            pairs.append((result.num_examples, dict(result.metrics)))
        if len(pairs) < self.min_evaluate_clients:
            raise FLError(
                f"round {round}: {len(pairs)} evaluations, {self.min_evaluate_clients} needed"
            )
        return weighted_metrics(pairs)

    # -- state -----------------------------------------------------------------------------

    def state_arrays(self) -> ArrayDict:
        """FedAvg is stateless: ``{}``."""
        return {}

    def load_state_arrays(self, state: Arrays) -> None:
        """Accept only an empty state.

        Raises:
            FLError: ``state`` is not empty.
        """
        if state:
            raise FLError("FedAvg has no state to load")
