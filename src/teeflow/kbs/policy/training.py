"""The agreement's ``training`` section: how the aggregator trains.

The parties sign the aggregation rule and its parameters, the session shape and what happens
when a participant stops qualifying; the aggregator takes them from the agreement in force and
refuses to run anything else (issue 13), and drops or stops on revocation (issue 11)::

    training:
      strategy: {name: krum, params: {num_byzantine: 3, num_selected: 4}}
      rounds: 30            # most rounds a session may run
      min_clients: 3
      fraction_fit: 1.0
      on_revocation: drop   # drop the client (session goes on if >= min_clients) | stop

Outlier detection and differential-privacy terms are added by issue 13.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from teeflow.kbs.policy.canonical import DocumentModel

__all__ = ["ParamValue", "StrategyTerms", "TrainingTerms"]

#: One strategy parameter: a number, a flag or a short string.
ParamValue = float | int | bool | Annotated[str, StringConstraints(max_length=128)]


class StrategyTerms(DocumentModel):
    """The aggregation rule: ``name`` (``fedavg``, ``fedadam``, ``median``, ``trimmed-mean``,
    ``krum``, ...) and its keyword parameters (≤ 32; names as the strategy's constructor)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
    params: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,63}$")], ParamValue
    ] = Field(default_factory=dict, max_length=32)


class TrainingTerms(DocumentModel):
    """The ``training`` section (module docstring).

    Attributes:
        strategy: the aggregation rule and its parameters.
        rounds: the most rounds one session may run (1..100000).
        min_clients: fewest clients a round may aggregate (≥ 1).
        fraction_fit: fraction of connected clients selected per round (0 < f ≤ 1).
        on_revocation: ``drop`` a client that no longer satisfies the agreement in force
            (the session continues while ≥ ``min_clients`` remain) or ``stop`` the session.
    """

    strategy: StrategyTerms = Field(default_factory=lambda: StrategyTerms(name="fedavg"))
    rounds: int = Field(default=100, ge=1, le=100_000)
    min_clients: int = Field(default=1, ge=1, le=10_000)
    fraction_fit: float = Field(default=1.0, gt=0.0, le=1.0)
    on_revocation: Literal["drop", "stop"] = "drop"
