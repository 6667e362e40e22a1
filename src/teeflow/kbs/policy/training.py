"""The agreement's ``training`` section: how the aggregator trains.

The parties sign the aggregation rule and its parameters, the session shape, outlier detection,
differential privacy and what happens when a participant stops qualifying; the aggregator takes
them from the agreement in force and refuses to run anything else (issue 13), and drops or stops
on revocation (issue 11)::

    training:
      strategy: {name: krum, params: {num_byzantine: 3, num_selected: 4}}
      rounds: 30            # most rounds a session may run
      min_clients: 3
      fraction_fit: 1.0
      on_revocation: drop   # drop the client (session goes on if >= min_clients) | stop
      outliers:             # SECFL-style detection by client sampling (teeflow.fl.outliers)
        every: 1            # detection every k rounds
        subsets: 40         # random subsets of the round's updates, each aggregated
        subset_size: 2      # updates per subset (default 2)
        seed: 7             # subsets are drawn from (seed, round): reproducible, recorded
        threshold: 0.1      # a client whose inclusion lowers utility by more is an outlier
        action: exclude     # flag (recorded only) | exclude (left out of the aggregate)
        drop_after: 3       # exclusions after which the client is dropped from the session
        utility: {source: federated, metric: accuracy}   # or source: evaluator, evaluator: P
      dp:                   # central client-level DP (teeflow.fl.dp; needs teeflow[dp])
        clip_norm: 1.0      # L2 bound of each update (model − global)
        adaptive_clipping: {target_quantile: 0.5, learning_rate: 0.2}   # optional
        noise_multiplier: 1.1   # or target_epsilon: 8 (calibrated over `rounds`)
        delta: 1.0e-5
        budget_epsilon: 8.0     # the session stops before a round would exceed it
        local: false            # clients also clip and noise their own update

Strategy parameters are checked against the strategy (:data:`STRATEGY_PARAMS`): names, types
and ranges; Krum's ``n ≥ 2f + 3`` against ``min_clients``. Sources: Reddi et al. 2021 (FedAdam),
Yin et al. 2018 (median, trimmed mean), Blanchard et al. 2017 / El Mhamdi et al. 2018 (Krum,
Multi-Krum), Sun et al. 2019 "Can You Really Backdoor Federated Learning?" (norm-bounded
FedAvg), McMahan et al. 2018 (DP-FedAvg), Andrew et al. 2021 (adaptive clipping).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, model_validator

from teeflow.kbs.policy.canonical import DocumentModel

__all__ = [
    "STRATEGY_PARAMS",
    "AdaptiveClipping",
    "DpTerms",
    "OutlierTerms",
    "ParamSpec",
    "ParamValue",
    "StrategyTerms",
    "TrainingTerms",
    "UtilitySource",
    "check_strategy_params",
]

#: One strategy parameter: a number, a flag or a short string.
ParamValue = float | int | bool | Annotated[str, StringConstraints(max_length=128)]

_Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class ParamSpec(DocumentModel):
    """One parameter a strategy takes: ``kind`` (``int`` | ``float``), inclusive ``low`` and
    (optional) ``high`` bounds, ``open_low`` for a strict lower bound, ``open_high`` for a strict
    upper bound."""

    kind: Literal["int", "float"]
    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def check(self, name: str, value: ParamValue) -> str | None:
        """None when ``value`` fits, else the problem (one line)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be a number"
        if self.kind == "int" and not isinstance(value, int):
            return f"{name} must be an integer"
        v = float(value)
        if not math.isfinite(v):
            return f"{name} must be finite"
        if v < self.low or (self.open_low and v == self.low):
            return f"{name} must be {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None and (v > self.high or (self.open_high and v == self.high)):
            return f"{name} must be {'<' if self.open_high else '<='} {self.high:g}"
        return None


def _f(low: float, high: float | None = None, **kw: bool) -> ParamSpec:
    return ParamSpec(kind="float", low=low, high=high, **kw)


def _i(low: int, high: int | None = None) -> ParamSpec:
    return ParamSpec(kind="int", low=low, high=high)


#: The parameters each strategy takes (keyword names of its constructor in
#: :mod:`teeflow.fl.strategy`); anything else is refused.
STRATEGY_PARAMS: dict[str, dict[str, ParamSpec]] = {
    "fedavg": {},
    "fedavg-norm-bounded": {"max_norm": _f(0.0, open_low=True)},
    "fedadam": {
        "eta": _f(0.0, open_low=True),
        "beta1": _f(0.0, 1.0, open_high=True),
        "beta2": _f(0.0, 1.0, open_high=True),
        "tau": _f(0.0, open_low=True),
    },
    "median": {},
    "trimmed-mean": {"beta": _f(0.0, 0.5, open_high=True)},
    "krum": {"num_byzantine": _i(0, 10_000), "num_selected": _i(1, 10_000)},
}


def check_strategy_params(name: str, params: dict[str, ParamValue]) -> list[str]:
    """Problems of ``params`` for strategy ``name`` (empty: they fit :data:`STRATEGY_PARAMS`)."""
    specs = STRATEGY_PARAMS.get(name)
    if specs is None:
        return [f"unknown strategy {name!r} (one of {', '.join(sorted(STRATEGY_PARAMS))})"]
    problems = [
        f"strategy {name} takes no parameter {key!r} (takes: {', '.join(sorted(specs)) or '-'})"
        for key in sorted(params)
        if key not in specs
    ]
    for key in sorted(set(params) & set(specs)):
        problem = specs[key].check(key, params[key])
        if problem:
            problems.append(f"strategy {name}: {problem}")
    return problems


class StrategyTerms(DocumentModel):
    """The aggregation rule: ``name`` (a key of :data:`STRATEGY_PARAMS`) and its keyword
    parameters (≤ 32; names as the strategy's constructor, checked against the strategy)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
    params: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,63}$")], ParamValue
    ] = Field(default_factory=dict, max_length=32)

    @model_validator(mode="after")
    def _known(self) -> Self:
        problems = check_strategy_params(self.name, self.params)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class UtilitySource(DocumentModel):
    """Who measures a candidate aggregate's utility: ``federated`` evaluation on the clients'
    validation data (the median over evaluating clients, so lying evaluators do not steer it),
    or one attested ``evaluator`` party's client on the validation set ``dataset`` names.
    ``metric``: the evaluation metric (higher is better unless ``lower_is_better``)."""

    source: Literal["federated", "evaluator"] = "federated"
    metric: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,63}$")] = "accuracy"
    lower_is_better: bool = False
    evaluator: _Name | None = None
    dataset: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None

    @model_validator(mode="after")
    def _evaluator(self) -> Self:
        if (self.source == "evaluator") != (self.evaluator is not None):
            raise ValueError("utility.evaluator names the evaluator party exactly when "
                             "source is evaluator")
        return self


class OutlierTerms(DocumentModel):
    """SECFL outlier detection by client sampling (module docstring; :mod:`teeflow.fl.outliers`).

    Attributes:
        every: run detection every ``every`` rounds (round r with ``r % every == 0``).
        subsets: random subsets formed per detection round (2..1000).
        subset_size: updates per subset (default 2; below ``n``). Small subsets keep one
            attacker from masking another's effect (a subset's utility collapses with any
            strong attacker in it), so the inclusion effects are estimated more sharply.
        seed: seed of the subsets (drawn from ``(seed, round)``; recorded in the provenance).
        threshold: a client whose score (utility with it minus utility without it) is below
            ``-threshold`` is an outlier (utility units: the metric's, e.g. accuracy 0..1).
        action: ``flag`` (recorded only) or ``exclude`` (left out of the round's aggregate).
        drop_after: exclusions after which a client is dropped from the session (None: never).
        utility: how a candidate's utility is measured.
    """

    every: int = Field(default=1, ge=1, le=100_000)
    subsets: int = Field(default=40, ge=2, le=1000)
    subset_size: int | None = Field(default=None, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    threshold: float = Field(default=0.1, ge=0.0, le=1e9)
    action: Literal["flag", "exclude"] = "exclude"
    drop_after: int | None = Field(default=None, ge=1, le=100_000)
    utility: UtilitySource = Field(default_factory=UtilitySource)


class AdaptiveClipping(DocumentModel):
    """Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive
    Clipping", NeurIPS 2021): the clip norm follows the ``target_quantile`` of the update norms,
    ``C ← C · exp(−learning_rate · (b̂ − target_quantile))`` with ``b̂`` the noised fraction of
    unclipped updates (noise std ``count_stddev`` on the count; default ``expected clients /
    20``, as the paper)."""

    target_quantile: float = Field(default=0.5, gt=0.0, lt=1.0)
    learning_rate: float = Field(default=0.2, gt=0.0, le=10.0)
    count_stddev: float | None = Field(default=None, gt=0.0, le=1e6)


class DpTerms(DocumentModel):
    """Central client-level differential privacy (module docstring; :mod:`teeflow.fl.dp`).

    Attributes:
        clip_norm: L2 bound ``C`` of each client's update ``model − global`` (the initial
            bound with adaptive clipping).
        adaptive_clipping: None for a fixed ``C``.
        noise_multiplier: ``z``: the Gaussian noise on the sum of clipped updates has std
            ``z C``. Exactly one of ``noise_multiplier`` and ``target_epsilon``.
        target_epsilon: calibrate ``z`` so that ``rounds`` rounds spend at most this ε.
        delta: the δ of (ε, δ)-DP (0 < δ < 1e-2).
        budget_epsilon: the ε the session may spend in all; it stops before a round that
            would exceed it.
        accountant: ``rdp`` (Rényi DP, Mironov 2017) or ``pld`` (privacy loss
            distributions), both from Google's ``dp-accounting``.
        local: the clients also clip their update to ``clip_norm`` and add Gaussian noise of
            std ``local_noise_multiplier · clip_norm`` before sending it.
        local_noise_multiplier: the clients' noise multiplier (with ``local``).
    """

    clip_norm: float = Field(gt=0.0, le=1e9)
    adaptive_clipping: AdaptiveClipping | None = None
    noise_multiplier: float | None = Field(default=None, ge=0.0, le=1e6)
    target_epsilon: float | None = Field(default=None, gt=0.0, le=1e4)
    delta: float = Field(default=1e-5, gt=0.0, lt=1e-2)
    budget_epsilon: float = Field(gt=0.0, le=1e4)
    accountant: Literal["rdp", "pld"] = "rdp"
    local: bool = False
    local_noise_multiplier: float = Field(default=0.0, ge=0.0, le=1e6)

    @model_validator(mode="after")
    def _one_noise(self) -> Self:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("dp needs exactly one of noise_multiplier and target_epsilon")
        if self.target_epsilon is not None and self.target_epsilon > self.budget_epsilon:
            raise ValueError("dp.target_epsilon exceeds dp.budget_epsilon")
        if self.local_noise_multiplier > 0 and not self.local:
            raise ValueError("dp.local_noise_multiplier needs dp.local: true")
        return self


class TrainingTerms(DocumentModel):
    """The ``training`` section (module docstring).

    Attributes:
        strategy: the aggregation rule and its parameters.
        rounds: the most rounds one session may run (1..100000).
        min_clients: fewest clients a round may aggregate (≥ 1).
        fraction_fit: fraction of connected clients selected per round (0 < f ≤ 1).
        on_revocation: ``drop`` a client that no longer satisfies the agreement in force
            (the session continues while ≥ ``min_clients`` remain) or ``stop`` the session.
        outliers: SECFL outlier detection (None: off).
        dp: central differential privacy (None: off).
    """

    strategy: StrategyTerms = Field(default_factory=lambda: StrategyTerms(name="fedavg"))
    rounds: int = Field(default=100, ge=1, le=100_000)
    min_clients: int = Field(default=1, ge=1, le=10_000)
    fraction_fit: float = Field(default=1.0, gt=0.0, le=1.0)
    on_revocation: Literal["drop", "stop"] = "drop"
    outliers: OutlierTerms | None = None
    dp: DpTerms | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        s = self.strategy
        if s.name == "krum":
            f = int(s.params.get("num_byzantine", 0))
            m = int(s.params.get("num_selected", 1))
            if self.min_clients < 2 * f + 3:
                problems.append(
                    f"krum with num_byzantine={f} needs min_clients >= {2 * f + 3} (n >= 2f + 3)"
                )
            if m > self.min_clients - f:
                problems.append(f"krum num_selected={m} exceeds min_clients - num_byzantine")
        if self.dp is not None and s.name not in ("fedavg", "fedavg-norm-bounded"):
            problems.append(
                "dp needs strategy fedavg or fedavg-norm-bounded (the noised mean of clipped "
                f"updates), not {s.name}"
            )
        o = self.outliers
        if o is not None:
            if o.subset_size is not None and o.subset_size >= max(self.min_clients, 2):
                problems.append("outliers.subset_size must be below min_clients")
            if self.min_clients < 3:
                problems.append("outliers needs min_clients >= 3")
            if self.dp is not None:
                problems.append("outliers and dp cannot be combined (detection would see "
                                "each client's update outside the noised aggregate)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
