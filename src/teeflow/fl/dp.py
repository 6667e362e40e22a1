"""Central client-level differential privacy in the aggregator (DP-FedAvg) and its accounting.

**Mechanism** (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, DP-FedAvg with fixed-size denominator): in round ``t`` the aggregator selects ``k``
of the ``N`` eligible clients; each update ``Δ_i = w_i − w_t`` is clipped to L2 norm ``C``
(:func:`~teeflow.fl.strategy.bounded.clip_update`), and::

    w_{t+1} = w_t + (Σ_i clip(Δ_i, C) + N(0, (z C)² I)) / k

Every client weighs the same (``num_examples`` is not used: it would raise the sensitivity).
A client that drops out lowers the sum, never the denominator ``k``, so the sensitivity of
the sum stays ``C`` under add/remove-one-client adjacency.

**Adaptive clipping** (Andrew et al., "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021, Algorithm 1): with ``b_i = 1[||Δ_i|| ≤ C]``, ``b̂ = (Σ b_i + N(0, σ_b²)) / k`` and
``C ← C · exp(−η_C (b̂ − γ))``. The updates get noise multiplier ``z_Δ = (z^-2 − (2σ_b)^-2)^-1/2``
so that the two Gaussian releases together are a Gaussian mechanism of multiplier ``z`` (the
paper's Theorem 1), and ``z`` is what is accounted.

**Accounting**: Google's ``dp-accounting`` (RDP, Mironov 2017, or PLD). Each round is a
``PoissonSampledDpEvent(q = k / N, GaussianDpEvent(z))`` (a plain Gaussian when ``q = 1``);
the aggregator samples a fixed-size subset, for which Poisson sampling is the standard
approximation (as TensorFlow Federated's DP-FedAvg). :meth:`PrivacyLedger.epsilon_after`
tells whether one more round still fits the agreed budget; the aggregator stops the session
before a round that would exceed it. With ``target_epsilon``, ``z`` is calibrated by
``dp_accounting.calibrate_dp_mechanism`` so that ``rounds`` rounds at the agreement's
``fraction_fit`` spend at most ``target_epsilon``.

Noise comes from a generator seeded from ``secrets`` (never from a recorded seed: whoever
knows the noise can remove it). Floating-point attacks on the Gaussian sampler (Mironov 2012)
are not mitigated.

**Local DP** (:func:`local_dp_update`): clients whose agreement sets ``dp.local`` clip their
own update and add ``N(0, (z_local C)²)`` before sending it, so the aggregator never sees an
un-noised update (no accounting of the local mechanism here: it is recorded, not composed).
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict, Arrays
from teeflow.fl.strategy.base import (
    EvaluateResult,
    FitResult,
    Instruction,
    Metrics,
    weighted_metrics,
)
from teeflow.fl.strategy.bounded import clip_update
from teeflow.fl.strategy.fedavg import FedAvg
from teeflow.kbs.policy.training import DpTerms

__all__ = [
    "DpFedAvg",
    "PrivacyLedger",
    "calibrate_noise",
    "local_dp_update",
    "round_event",
]


def _dp() -> Any:
    try:
        import dp_accounting
    except ImportError:  # pragma: no cover - the extra is part of dev installs
        raise FLError(
            "the agreement asks for differential privacy: install teeflow[dp] (dp-accounting)"
        ) from None
    return dp_accounting


def round_event(sampling_rate: float, noise_multiplier: float) -> Any:
    """The ``dp_accounting`` event of one round: Gaussian of multiplier ``z``, Poisson-sampled
    at ``q`` when ``q < 1``.

    Raises:
        FLError: ``q`` not in ``(0, 1]`` or ``z < 0``.
    """
    dpa = _dp()
    if not (0.0 < sampling_rate <= 1.0) or not (noise_multiplier >= 0.0):
        raise FLError("sampling rate must be in (0, 1] and the noise multiplier >= 0")
    gaussian = dpa.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1.0:
        return gaussian
    return dpa.PoissonSampledDpEvent(sampling_rate, gaussian)


def _accountant(kind: str) -> Any:
    dpa = _dp()
    if kind == "pld":
        return dpa.pld.PLDAccountant()
    return dpa.rdp.RdpAccountant()


def calibrate_noise(
    target_epsilon: float, delta: float, rounds: int, sampling_rate: float, kind: str = "rdp"
) -> float:
    """The smallest noise multiplier ``z`` with ε(``rounds`` rounds) ≤ ``target_epsilon``
    (``dp_accounting.calibrate_dp_mechanism``; bracket ``[0.05, 1000]``; then checked, and
    raised by 0.01 % steps if the search tolerance left ε above the target).

    Raises:
        FLError: no ``z`` in the bracket reaches the target.
    """
    dpa = _dp()

    def event(z: float) -> Any:
        return dpa.SelfComposedDpEvent(round_event(sampling_rate, z), rounds)

    try:
        z = dpa.calibrate_dp_mechanism(
            lambda: _accountant(kind),
            event,
            target_epsilon,
            delta,
            dpa.ExplicitBracketInterval(0.05, 1000.0),
        )
    except (ValueError, RuntimeError) as exc:
        raise FLError(f"cannot calibrate the noise for ε={target_epsilon}: {exc}") from None
    z = float(z)
    for _ in range(100):  # the search's tolerance must never put ε over the target (budget)
        acc = _accountant(kind)
        acc.compose(event(z))
        if acc.get_epsilon(delta) <= target_epsilon:
            return z
        z *= 1.0001
    raise FLError(f"cannot calibrate the noise for ε={target_epsilon}")


@dataclass
class PrivacyLedger:
    """The ε spent so far: the composed rounds ``(q, z)`` under the agreement's δ.

    Attributes:
        terms: the agreement's dp terms.
        rounds: ``(sampling_rate, noise_multiplier)`` of each round run.
    """

    terms: DpTerms
    rounds: list[tuple[float, float]]
    _cache: dict[tuple[tuple[tuple[float, float], int], ...], float] = field(
        default_factory=dict, repr=False
    )

    def epsilon_after(self, extra: Sequence[tuple[float, float]] = ()) -> float:
        """ε (at the agreement's δ) of the rounds so far plus ``extra`` ones; 0 before any.
        Identical rounds are composed as one self-composition (composition commutes)."""
        counts = Counter([*self.rounds, *extra])
        if not counts:
            return 0.0
        key = tuple(sorted(counts.items()))
        cached = self._cache.get(key)
        if cached is None:
            acc = _accountant(self.terms.accountant)
            for (q, z), count in sorted(counts.items()):
                acc.compose(round_event(q, z), count)
            cached = float(acc.get_epsilon(self.terms.delta))
            self._cache = {key: cached, **dict(list(self._cache.items())[:7])}
        return cached

    @property
    def spent(self) -> float:
        """ε spent so far."""
        return self.epsilon_after()


def local_dp_update(
    arrays: Arrays, reference: Arrays, terms: DpTerms, rng: np.random.Generator | None = None
) -> ArrayDict:
    """A client's locally privatised model: ``reference + clip(Δ, C) + N(0, (z_local C)² I)``.

    Raises:
        FLError: incompatible or non-finite arrays.
    """
    gen = rng or np.random.default_rng(secrets.randbits(128))
    clipped, _ = clip_update(arrays, reference, terms.clip_norm)
    std = terms.local_noise_multiplier * terms.clip_norm
    return {
        k: (np.asarray(v, np.float64) + gen.normal(0.0, std, v.shape)).astype(np.float32)
        for k, v in sorted(clipped.items())
    }


class DpFedAvg:
    """Central DP around a FedAvg-family strategy (module docstring); implements
    :class:`~teeflow.fl.strategy.base.Strategy`.

    Args:
        inner: the agreed FedAvg / norm-bounded FedAvg (client selection, evaluation, rule
            name and parameters come from it; its aggregation is replaced).
        terms: the agreement's dp terms.
        rounds: the agreement's ``training.rounds`` (for ``target_epsilon`` calibration).
        rng: noise generator (tests only; default seeded from ``secrets``).

    ``aggregate_train`` metrics add ``dp_epsilon`` (total), ``dp_clip_norm``,
    ``dp_noise_multiplier``, ``dp_sampling_rate``, ``dp_unclipped``.

    Raises:
        FLError: ``inner`` is not a FedAvg-family strategy.
    """

    def __init__(
        self,
        inner: FedAvg,
        terms: DpTerms,
        *,
        rounds: int,
        fraction_fit: float,
        rng: np.random.Generator | None = None,
    ) -> None:
        if inner.rule not in ("fedavg", "fedavg-norm-bounded"):
            raise FLError(f"central DP needs a FedAvg-family strategy, not {inner.rule}")
        self.inner = inner
        self.rule = inner.rule
        self.terms = terms
        self.ledger = PrivacyLedger(terms, [])
        self.clip_norm = terms.clip_norm
        if terms.noise_multiplier is not None:
            self.noise_multiplier = terms.noise_multiplier
        else:
            assert terms.target_epsilon is not None  # DpTerms validation
            self.noise_multiplier = calibrate_noise(
                terms.target_epsilon, terms.delta, rounds, fraction_fit, terms.accountant
            )
        self._rng = rng or np.random.default_rng(secrets.randbits(128))
        self._selected: tuple[int, int] | None = None  # (k, N) of the configured round
        self._round: int | None = None
        self._reference: Arrays = {}
        self.last_round: dict[str, float] = {}

    def rule_params(self) -> dict[str, float | int]:
        """The inner strategy's parameters."""
        return self.inner.rule_params()

    # -- budget --------------------------------------------------------------------------------

    def next_round_fits(self, sampling_rate: float) -> tuple[bool, float]:
        """``(fits, ε after)``: whether one more round at ``sampling_rate`` stays within the
        budget."""
        after = self.ledger.epsilon_after([(sampling_rate, self.noise_multiplier)])
        return after <= self.terms.budget_epsilon, after

    # -- Strategy --------------------------------------------------------------------------------

    def configure_train(
        self, round: int, global_arrays: Arrays, clients: Sequence[str]
    ) -> list[Instruction]:
        """The inner strategy's selection; remembers ``k`` and ``N`` for the noise and ε.

        Raises:
            FLError: as the inner strategy.
        """
        out = self.inner.configure_train(round, global_arrays, clients)
        self._selected = (len(out), len(set(clients)))
        self._round = round
        self._reference = global_arrays
        return out

    def aggregate_train(
        self, round: int, results: Iterable[FitResult]
    ) -> tuple[ArrayDict, Metrics]:
        """Clip, sum, noise, divide by ``k`` (module docstring); compose the round's event.

        Raises:
            FLError: no ``configure_train`` this round, fewer than ``min_fit_clients`` valid
                updates, or an invalid/duplicate update.
        """
        if self._round != round or self._selected is None:
            raise FLError(f"round {round}: DP needs configure_train for this round first")
        k, n_eligible = self._selected
        reference = self._reference
        c, z = self.clip_norm, self.noise_multiplier
        adaptive = self.terms.adaptive_clipping
        sums = {name: np.zeros(a.shape, np.float64) for name, a in sorted(reference.items())}
        unclipped = 0
        count = 0
        metric_pairs: list[tuple[int, Any]] = []
        for r in self.inner._checked(round, results):
            clipped, norm = clip_update(r.arrays, reference, c)
            unclipped += norm <= c
            count += 1
            for name in sums:
                sums[name] += np.asarray(clipped[name], np.float64) - reference[name]
            metric_pairs.append((r.num_examples, dict(r.metrics)))
        self.inner._enough(round, count)
        z_delta = z
        sigma_b = 0.0
        if adaptive is not None and z > 0:
            sigma_b = adaptive.count_stddev or max(k / 20.0, 1e-6)
            inv = z**-2 - (2.0 * sigma_b) ** -2
            if inv <= 0:
                raise FLError(
                    "adaptive clipping: count_stddev too small for this noise multiplier "
                    "(needs 2·count_stddev > noise_multiplier)"
                )
            z_delta = inv**-0.5
        new: ArrayDict = {}
        for name, total in sums.items():
            noise = self._rng.normal(0.0, z_delta * c, total.shape) if z_delta > 0 else 0.0
            new[name] = (np.asarray(reference[name], np.float64) + (total + noise) / k).astype(
                np.float32
            )
        q = k / n_eligible
        self.ledger.rounds.append((q, z))
        if adaptive is not None:
            b_hat = (unclipped + self._rng.normal(0.0, sigma_b)) / k
            step = adaptive.learning_rate * (b_hat - adaptive.target_quantile)
            self.clip_norm = c * math.exp(-step)
        metrics = weighted_metrics(metric_pairs)
        self.last_round = {
            "epsilon": self.ledger.spent,
            "clip_norm": c,
            "noise_multiplier": z,
            "sampling_rate": q,
            "unclipped": float(unclipped),
        }
        metrics.update({f"dp_{k_}": v for k_, v in self.last_round.items()})
        return new, metrics

    def configure_evaluate(
        self, round: int, global_arrays: Arrays, clients: Sequence[str]
    ) -> list[Instruction]:
        """As the inner strategy."""
        return self.inner.configure_evaluate(round, global_arrays, clients)

    def aggregate_evaluate(self, round: int, results: Iterable[EvaluateResult]) -> Metrics:
        """As the inner strategy."""
        return self.inner.aggregate_evaluate(round, results)

    # -- state -------------------------------------------------------------------------------------

    def state_arrays(self) -> ArrayDict:
        """``dp/rounds``: ``(q, z)`` of each round run, shape (rounds, 2); ``dp/clip_norm``:
        the current clip norm, shape (1,) (float32, as every checkpointed array)."""
        rounds = np.asarray(self.ledger.rounds or np.zeros((0, 2)), np.float32).reshape(-1, 2)
        return {"dp/clip_norm": np.asarray([self.clip_norm], np.float32), "dp/rounds": rounds}

    def load_state_arrays(self, state: Arrays) -> None:
        """Restore the ledger and clip norm after a restart.

        Raises:
            FLError: the state is not this strategy's.
        """
        if set(state) != {"dp/clip_norm", "dp/rounds"}:
            raise FLError("the checkpoint's strategy state is not a DP ledger")
        rounds = np.asarray(state["dp/rounds"], np.float64)
        clip = np.asarray(state["dp/clip_norm"], np.float64)
        if rounds.ndim != 2 or rounds.shape[1] != 2 or clip.shape != (1,) or clip[0] <= 0:
            raise FLError("malformed DP ledger in the checkpoint")
        self.ledger.rounds = [(float(q), float(z)) for q, z in rounds]
        self.clip_norm = float(clip[0])

