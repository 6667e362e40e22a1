"""Norm-bounded FedAvg (Sun et al., "Can You Really Backdoor Federated Learning?", 2019): each
client's update ``Δ_k = w_k − w_t`` is scaled down to L2 norm at most ``M`` before the FedAvg
mean, so no single client can move the model by more than ``M``::

    w_{t+1} = w_t + sum_k n_k · Δ_k · min(1, M / ||Δ_k||) / sum_k n_k

The norm is taken over all tensors of the update together (the model as one vector), in float64.
:func:`clip_update` is also the per-update clipping of central DP (:mod:`teeflow.fl.dp`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict, Arrays, check_compatible
from teeflow.fl.strategy.base import FitResult, Metrics
from teeflow.fl.strategy.fedavg import FedAvg

__all__ = ["NormBoundedFedAvg", "clip_update", "update_norm"]


def update_norm(arrays: Arrays, reference: Arrays) -> float:
    """L2 norm of ``arrays − reference`` over all tensors (float64).

    Raises:
        FLError: incompatible or non-finite arrays.
    """
    check_compatible(reference, arrays, who="update")
    total = 0.0
    for name in sorted(reference):
        d = np.asarray(arrays[name], np.float64) - np.asarray(reference[name], np.float64)
        total += float(np.einsum("i,i->", d.ravel(), d.ravel()))
    return math.sqrt(total)


def clip_update(arrays: Arrays, reference: Arrays, bound: float) -> tuple[ArrayDict, float]:
    """``(reference + Δ · min(1, bound / ||Δ||), ||Δ||)`` with ``Δ = arrays − reference``.

    Args:
        arrays: a client's model (float32, as ``reference``).
        reference: the round's global model.
        bound: the L2 bound (> 0, finite).

    Raises:
        FLError: bad bound, incompatible or non-finite arrays.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise FLError("the clipping bound must be a positive finite number")
    norm = update_norm(arrays, reference)
    if norm <= bound:
        return {k: np.asarray(v, np.float32) for k, v in arrays.items()}, norm
    scale = bound / norm
    out: ArrayDict = {}
    for name in sorted(reference):
        ref = np.asarray(reference[name], np.float64)
        out[name] = (ref + (np.asarray(arrays[name], np.float64) - ref) * scale).astype(
            np.float32
        )
    return out, norm


class NormBoundedFedAvg(FedAvg):
    """FedAvg over updates clipped to L2 norm ``max_norm`` (streaming, O(model)).

    Args:
        max_norm: ``M`` (> 0).
        **kwargs: as :class:`FedAvg`.

    ``metrics["norm_clipped"]``: the number of updates scaled down this round.
    """

    rule: ClassVar[str] = "fedavg-norm-bounded"

    def __init__(self, *, max_norm: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(max_norm) and max_norm > 0):
            raise FLError("fedavg-norm-bounded needs max_norm > 0")
        self.max_norm = float(max_norm)

    def rule_params(self) -> dict[str, float | int]:
        """``{"max_norm": M}``."""
        return {"max_norm": self.max_norm}

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Clip each update, then FedAvg.

        Raises:
            FLError: as :meth:`FedAvg.aggregate_train`, or no ``configure_train`` this round.
        """
        if self._reference is None or self._reference_round != round:
            raise FLError(f"round {round}: {self.rule} needs configure_train for this round")
        reference = self._reference
        count = [0]

        def clipped() -> Iterator[FitResult]:
            for r in self._checked(round, results):
                arrays, norm = clip_update(r.arrays, reference, self.max_norm)
                count[0] += norm > self.max_norm
                yield FitResult(r.client, arrays, r.num_examples, r.metrics)

        new, metrics = super().aggregate_train(round, clipped())
        metrics["norm_clipped"] = float(count[0])
        return new, metrics
