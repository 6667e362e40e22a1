"""Adaptive and Byzantine-robust aggregation: FedAdam, coordinate-wise median, trimmed mean,
Krum — pure functions plus :class:`FedAvg`-derived strategies.

Sources:

- FedAdam: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2 (server
  Adam without bias correction)::

      Δ_t = x̄_t − x_t                      (x̄_t: example-weighted mean of client models)
      m_t = β1 m_{t−1} + (1 − β1) Δ_t
      v_t = β2 v_{t−1} + (1 − β2) Δ_t²
      x_{t+1} = x_t + η m_t / (√v_t + τ)

  with ``m_{-1} = 0`` and ``v_{-1} = τ²`` (the paper requires ``v_{-1} ≥ τ²``).
- Coordinate-wise median and β-trimmed mean: Yin et al., "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018 (unweighted: ``num_examples`` is a
  client's claim, and robust rules must not trust it). Trimmed mean drops the
  ``k = floor(β n)`` largest and ``k`` smallest values of each coordinate.
- Krum / Multi-Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS 2017: score(i) = sum of the squared distances from update ``i`` to
  its ``n − f − 2`` nearest other updates; the lowest score wins (``n ≥ 2f + 3``). Multi-Krum
  (El Mhamdi et al., ICML 2018) averages the ``m`` best.

The robust rules need all ``n`` updates at once: O(n × model) memory (FedAvg and FedAdam
stream). Each works tensor by tensor, so its working set beyond the inputs is O(n × largest
tensor). Ties are broken by the order of the updates; the strategies sort them by client name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict, Arrays, check_compatible
from teeflow.fl.strategy.base import FitResult, Metrics, weighted_metrics
from teeflow.fl.strategy.fedavg import FedAvg

__all__ = [
    "FedAdam",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "coordinate_median",
    "fedadam_update",
    "krum",
    "krum_scores",
    "trimmed_mean",
]


def _stackable(updates: Sequence[Arrays]) -> Arrays:
    if not updates:
        raise FLError("no updates to aggregate")
    first = updates[0]
    for i, u in enumerate(updates):
        check_compatible(first, u, who=f"update {i}")
    return first


def _stack(updates: Sequence[Arrays], name: str) -> NDArray[np.float64]:
    return np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])


def coordinate_median(updates: Sequence[Arrays]) -> ArrayDict:
    """Coordinate-wise median of ``n`` updates (mean of the two middle values when ``n`` is even).

    Raises:
        FLError: no updates, or incompatible / non-finite arrays.
    """
    first = _stackable(updates)
    return {k: np.median(_stack(updates, k), axis=0).astype(np.float32) for k in sorted(first)}


def trimmed_mean(updates: Sequence[Arrays], beta: float) -> ArrayDict:
    """Coordinate-wise β-trimmed mean: drop the ``floor(β n)`` largest and smallest values.

    Args:
        updates: ``n`` compatible float32 updates.
        beta: in ``[0, 0.5)``; ``n − 2 floor(β n) ≥ 1`` always holds then.

    Raises:
        FLError: bad ``beta``, no updates, or incompatible / non-finite arrays.
    """
    if not (math.isfinite(beta) and 0.0 <= beta < 0.5):
        raise FLError(f"trimmed mean beta must be in [0, 0.5), got {beta}")
    first = _stackable(updates)
    n = len(updates)
    k = math.floor(beta * n)
    out: ArrayDict = {}
    for name in sorted(first):
        stacked = np.sort(_stack(updates, name), axis=0)
        out[name] = stacked[k : n - k].mean(axis=0).astype(np.float32)
    return out


def krum_scores(updates: Sequence[Arrays], num_byzantine: int) -> list[float]:
    """Krum score of each update (lower is more central).

    Args:
        updates: ``n`` compatible updates.
        num_byzantine: ``f``, the number of Byzantine clients tolerated; ``n ≥ 2f + 3``.

    Raises:
        FLError: ``f < 0``, ``n < 2f + 3``, or incompatible / non-finite arrays.
    """
    first = _stackable(updates)
    n, f = len(updates), num_byzantine
    if f < 0 or n < 2 * f + 3:
        raise FLError(f"Krum needs n >= 2f + 3 updates (n={n}, f={f})")
    dist = np.zeros((n, n), np.float64)
    for name in sorted(first):
        flat = _stack(updates, name).reshape(n, -1)
        for i in range(n):
            diff = flat[i + 1 :] - flat[i]
            d = np.einsum("ij,ij->i", diff, diff)
            dist[i, i + 1 :] += d
            dist[i + 1 :, i] += d
    scores = []
    for i in range(n):
        others = np.delete(dist[i], i)
        scores.append(float(np.sort(others)[: n - f - 2].sum()))
    return scores


def krum(
    updates: Sequence[Arrays], num_byzantine: int, num_selected: int = 1
) -> tuple[ArrayDict, list[int]]:
    """Krum (``num_selected = 1``) or Multi-Krum: mean of the ``m`` lowest-scoring updates.

    Returns:
        ``(arrays, selected indices in score order)``.

    Raises:
        FLError: see :func:`krum_scores`, or ``num_selected`` not in ``1..n``.
    """
    scores = krum_scores(updates, num_byzantine)
    if not 1 <= num_selected <= len(updates):
        raise FLError(f"num_selected must be in 1..{len(updates)}")
    order = sorted(range(len(updates)), key=lambda i: (scores[i], i))[:num_selected]
    chosen = [updates[i] for i in order]
    out = {k: np.mean(_stack(chosen, k), axis=0).astype(np.float32) for k in sorted(chosen[0])}
    return out, order


def fedadam_update(
    current: Arrays,
    aggregate: Arrays,
    m: Arrays | None,
    v: Arrays | None,
    *,
    eta: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[ArrayDict, ArrayDict, ArrayDict]:
    """One server Adam step (formula in the module docstring), in float64.

    Args:
        current: global model ``x_t``.
        aggregate: mean of the client models ``x̄_t`` (so ``Δ_t = x̄_t − x_t``).
        m, v: moments from the previous step, or None for ``m = 0``, ``v = τ²``.
        eta: server learning rate η (> 0).
        beta1, beta2: moment decay rates in ``[0, 1)``.
        tau: adaptivity ``τ`` (> 0).

    Returns:
        ``(x_{t+1}, m_t, v_t)`` as float32 arrays.

    Raises:
        FLError: hyper-parameters out of range or incompatible / non-finite arrays.
    """
    if not (eta > 0 and tau > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise FLError("FedAdam needs eta > 0, tau > 0 and beta1, beta2 in [0, 1)")
    check_compatible(current, current, who="global model")
    check_compatible(current, aggregate, who="aggregate")
    if m is not None:
        check_compatible(current, m, who="FedAdam m")
    if v is not None:
        check_compatible(current, v, who="FedAdam v")
    new: ArrayDict = {}
    m_out: ArrayDict = {}
    v_out: ArrayDict = {}
    for name in sorted(current):
        x = np.asarray(current[name], np.float64)
        delta = np.asarray(aggregate[name], np.float64) - x
        m_prev = np.zeros_like(x) if m is None else np.asarray(m[name], np.float64)
        v_prev = np.full_like(x, tau * tau) if v is None else np.asarray(v[name], np.float64)
        m_t = beta1 * m_prev + (1.0 - beta1) * delta
        v_t = beta2 * v_prev + (1.0 - beta2) * delta * delta
        new[name] = (x + eta * m_t / (np.sqrt(v_t) + tau)).astype(np.float32)
        m_out[name] = m_t.astype(np.float32)
        v_out[name] = v_t.astype(np.float32)
    return new, m_out, v_out


class _Collecting(FedAvg):
    """FedAvg sampling and checks, but all updates gathered (sorted by client) first."""

    def _collect(self, round: int, results: Iterable[FitResult]) -> tuple[list[Arrays], Metrics]:
        gathered = sorted(self._checked(round, results), key=lambda r: r.client)
        self._enough(round, len(gathered))
        metrics = weighted_metrics((r.num_examples, dict(r.metrics)) for r in gathered)
        return [r.arrays for r in gathered], metrics


class FedMedian(_Collecting):
    """Coordinate-wise median of the updates (keyword arguments as :class:`FedAvg`)."""

    rule: ClassVar[str] = "median"

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Median of the updates. Raises FLError as :meth:`FedAvg.aggregate_train`."""
        updates, metrics = self._collect(round, results)
        return coordinate_median(updates), metrics


class FedTrimmedAvg(_Collecting):
    """β-trimmed mean of the updates.

    Args:
        beta: share trimmed at each end, in ``[0, 0.5)`` (default 0.2).
        **kwargs: as :class:`FedAvg`.
    """

    def __init__(self, *, beta: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(beta) and 0.0 <= beta < 0.5):
            raise FLError(f"trimmed mean beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    rule: ClassVar[str] = "trimmed-mean"

    def rule_params(self) -> dict[str, float | int]:
        """``{"beta": β}``."""
        return {"beta": self.beta}

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Trimmed mean of the updates. Raises FLError as :meth:`FedAvg.aggregate_train`."""
        updates, metrics = self._collect(round, results)
        return trimmed_mean(updates, self.beta), metrics


class Krum(_Collecting):
    """Krum / Multi-Krum.

    Args:
        num_byzantine: ``f`` (default 0); rounds need ``n ≥ 2f + 3`` updates.
        num_selected: ``m`` updates averaged (1 = Krum).
        **kwargs: as :class:`FedAvg`.

    ``metrics["krum_selected"]`` is the number of updates kept.
    """

    def __init__(self, *, num_byzantine: int = 0, num_selected: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_byzantine < 0 or num_selected < 1:
            raise FLError("Krum needs num_byzantine >= 0 and num_selected >= 1")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected

    rule: ClassVar[str] = "krum"

    def rule_params(self) -> dict[str, float | int]:
        """``{"num_byzantine": f, "num_selected": m}``."""
        return {"num_byzantine": self.num_byzantine, "num_selected": self.num_selected}

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Krum selection. Raises FLError as :meth:`FedAvg.aggregate_train` and
        :func:`krum`."""
        updates, metrics = self._collect(round, results)
        arrays, chosen = krum(updates, self.num_byzantine, min(self.num_selected, len(updates)))
        metrics["krum_selected"] = float(len(chosen))
        return arrays, metrics


class FedAdam(FedAvg):
    """Server-side Adam over the FedAvg aggregate (streaming, O(model) + moments).

    Args:
        eta: server learning rate (default 0.01).
        beta1, beta2: moment decays (0.9, 0.99).
        tau: adaptivity (1e-3).
        **kwargs: as :class:`FedAvg`.

    State for checkpoints: ``m/<name>`` and ``v/<name>`` arrays.
    """

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (eta > 0 and tau > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise FLError("FedAdam needs eta > 0, tau > 0 and beta1, beta2 in [0, 1)")
        self.eta, self.beta1, self.beta2, self.tau = eta, beta1, beta2, tau
        self.m: ArrayDict | None = None
        self.v: ArrayDict | None = None

    rule: ClassVar[str] = "fedadam"

    def rule_params(self) -> dict[str, float | int]:
        """``{"eta", "beta1", "beta2", "tau"}``."""
        return {"eta": self.eta, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """FedAvg aggregate, then one :func:`fedadam_update` step from the round's global model.

        Raises:
            FLError: as :meth:`FedAvg.aggregate_train`, or no ``configure_train`` for this
                round (the current global model is needed).
        """
        if self._reference is None or self._reference_round != round:
            raise FLError(f"round {round}: FedAdam needs configure_train for this round first")
        current = self._reference
        mean, metrics = super().aggregate_train(round, results)
        new, self.m, self.v = fedadam_update(
            current,
            mean,
            self.m,
            self.v,
            eta=self.eta,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )
        return new, metrics

    def state_arrays(self) -> ArrayDict:
        """``{"m/<name>": ..., "v/<name>": ...}`` or ``{}`` before the first step."""
        if self.m is None or self.v is None:
            return {}
        out = {f"m/{k}": a for k, a in self.m.items()}
        out.update({f"v/{k}": a for k, a in self.v.items()})
        return out

    def load_state_arrays(self, state: Arrays) -> None:
        """Restore the moments.

        Raises:
            FLError: keys other than ``m/*`` and ``v/*``, or m and v names differ.
        """
        if not state:
            self.m = self.v = None
            return
        m = {k[2:]: np.asarray(a, np.float32) for k, a in state.items() if k.startswith("m/")}
        v = {k[2:]: np.asarray(a, np.float32) for k, a in state.items() if k.startswith("v/")}
        if len(m) + len(v) != len(state):
            raise FLError("FedAdam state holds arrays other than m/* and v/*")
        check_compatible(m, v, who="FedAdam state")
        self.m, self.v = m, v
