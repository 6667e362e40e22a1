"""Optional parts of provenance entries: the training terms (session-start), outlier detection
and differential privacy (rounds). Formats as in :mod:`teeflow.fl.provenance`; each is left out
of an entry's hashed body when unset, so logs written before they existed verify unchanged.

- ``training`` (session-start): the agreement's ``training`` section the session ran under
  (:class:`~teeflow.kbs.policy.training.TrainingTerms`: rule, parameters, outliers, dp).
- ``detection`` (round, :class:`DetectionRecord`): SECFL outlier detection
  (:mod:`teeflow.fl.outliers`) — parties, seed, subsets, utilities, scores, decisions.
- ``privacy`` (round, :class:`PrivacyRecord`): central DP (:mod:`teeflow.fl.dp`) — ε of the
  round and in total, δ, clip norm, noise multiplier, sampling rate.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from teeflow.kbs.policy.parties import Name

__all__ = ["DetectionRecord", "PrivacyRecord"]

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class DetectionRecord(BaseModel):
    """One round's outlier detection (:class:`teeflow.fl.outliers.Detection`).

    Attributes:
        parties: parties whose updates were received, sorted; ``subsets`` index into it.
        seed: the agreement's seed (subsets drawn from ``(seed, round)``).
        subsets: each subset's party indices.
        utilities: each subset aggregate's utility (None: not measured).
        scores: each party's score (None: undetermined).
        flagged, excluded, removed: the decisions (parties).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    parties: tuple[Name, ...] = Field(max_length=10_000)
    seed: int = Field(ge=0, le=2**63 - 1)
    subsets: tuple[tuple[Annotated[int, Field(ge=0, le=9_999)], ...], ...] = Field(
        max_length=1000
    )
    utilities: tuple[_Finite | None, ...] = Field(max_length=1000)
    scores: dict[Name, _Finite | None] = Field(max_length=10_000)
    flagged: tuple[Name, ...] = Field(default=(), max_length=10_000)
    excluded: tuple[Name, ...] = Field(default=(), max_length=10_000)
    removed: tuple[Name, ...] = Field(default=(), max_length=10_000)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = set(self.parties)
        if len(names) != len(self.parties) or set(self.scores) != names:
            raise ValueError("detection: parties must be distinct and each have a score")
        if len(self.subsets) != len(self.utilities):
            raise ValueError("detection: one utility per subset")
        if any(i >= len(self.parties) for s in self.subsets for i in s):
            raise ValueError("detection: subset index out of range")
        if not set(self.excluded) <= set(self.flagged) <= names or not set(self.removed) <= set(
            self.excluded
        ):
            raise ValueError("detection: removed ⊆ excluded ⊆ flagged ⊆ parties")
        return self


class PrivacyRecord(BaseModel):
    """One round's differential privacy.

    Attributes:
        epsilon_round: ε this round added (total after minus total before).
        epsilon_total: ε spent by the session so far (at ``delta``).
        delta: the agreement's δ.
        budget_epsilon: the agreed budget.
        clip_norm: L2 clip bound used this round.
        noise_multiplier: z (noise std on the sum = z · clip_norm).
        sampling_rate: q = selected / eligible clients.
        accountant: ``rdp`` | ``pld``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon_round: _NonNeg
    epsilon_total: _NonNeg
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    budget_epsilon: _NonNeg
    clip_norm: _NonNeg
    noise_multiplier: _NonNeg
    sampling_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    accountant: Annotated[str, Field(pattern=r"^(rdp|pld)$")]
