"""SECFL outlier detection by client sampling, inside the attested aggregator (torch-free).

SECFL (Secure and Efficient Confidential FL) answers malicious clients by "cloning the global
training computation and randomly taking a sample of clients … to detect outliers regarding the
utility". Per detection round (every ``every`` rounds of the agreement's ``training.outliers``):

1. **subsets** (:func:`draw_subsets`): ``subsets`` random subsets of the ``n`` received updates,
   each of ``subset_size`` (default 2) parties, drawn by a PCG64 generator seeded
   with ``(seed, round)`` — reproducible by anyone holding the provenance;
2. **candidates**: each subset aggregated (example-weighted mean of its updates, the FedAvg
   computation cloned);
3. **utility** (:func:`measure_utilities`): each candidate evaluated — by federated evaluation
   on the clients' validation data (the *median* of the clients' ``metric``, so a minority of
   lying evaluators cannot steer it) or by the agreement's evaluator party alone; a metric where
   lower is better is negated;
4. **scores** (:func:`score_clients`): how client ``i``'s inclusion moves utility — its
   coefficient when the subsets' utilities are regressed on who is in them (least squares),
   minus the median coefficient (None when it is in all or none of the subsets);
5. **decision** (:meth:`OutlierDetector.decide`): a score below ``−threshold`` makes the client
   an outlier: ``flag`` records it, ``exclude`` also leaves its update out of the round's
   aggregate (worst first, never below ``min_clients`` updates: the rest are only flagged);
   after ``drop_after`` exclusions a client is removed from the session (not selected again).

Every subset, utility, score and decision goes into the round's provenance entry
(:class:`~teeflow.fl.provenance.DetectionRecord`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict, encode_arrays
from teeflow.fl.collect import Emit, RoundHub
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.strategy.base import Config, FitResult, check_metrics
from teeflow.fl.strategy.fedavg import weighted_average
from teeflow.kbs.policy.training import OutlierTerms, UtilitySource

__all__ = [
    "Detection",
    "OutlierDetector",
    "draw_subsets",
    "measure_utilities",
    "score_clients",
]

def draw_subsets(
    parties: Sequence[str], count: int, size: int, seed: int, round: int
) -> list[tuple[int, ...]]:
    """``count`` subsets of ``size`` indices into sorted ``parties``, each sorted, drawn
    without replacement by PCG64 seeded with ``(seed, round)``.

    Raises:
        FLError: ``size`` not in ``1..n−1`` or ``count < 1``.
    """
    n = len(parties)
    if not 1 <= size < n or count < 1:
        raise FLError(f"subsets of {size} out of {n} updates: need 1 <= size < n, count >= 1")
    rng = np.random.default_rng([seed, round])
    return [tuple(sorted(int(i) for i in rng.choice(n, size, replace=False))) for _ in range(count)]


def score_clients(
    n: int, subsets: Sequence[tuple[int, ...]], utilities: Sequence[float | None]
) -> list[float | None]:
    """Score of each of ``n`` clients: how its inclusion moves utility, relative to the
    typical client.

    The utilities are regressed on the inclusion indicators (least squares on the centred
    design, ``numpy.linalg.lstsq`` minimum-norm solution: ``U_S ≈ b_0 + Σ_{i ∈ S} b_i``), so
    each ``b_i`` is client ``i``'s marginal effect with the other members of its subsets
    accounted for; the score is ``b_i − median_j b_j`` (with equal-size subsets the ``b``
    are defined up to a common shift, and an honest majority puts the median at a benign
    client). Subsets whose utility is None are ignored; a client in all or none of the
    measured subsets scores None.

    Raises:
        FLError: ``subsets`` and ``utilities`` differ in length.
    """
    if len(subsets) != len(utilities):
        raise FLError("one utility per subset needed")
    rows = [(s, u) for s, u in zip(subsets, utilities, strict=True) if u is not None]
    if len(rows) < 2:
        return [None] * n
    x = np.zeros((len(rows), n), np.float64)
    for j, (s, _) in enumerate(rows):
        x[j, list(s)] = 1.0
    u = np.asarray([float(v) for _, v in rows], np.float64)
    varies = [bool(0 < x[:, i].sum() < len(rows)) for i in range(n)]
    xc = x - x.mean(axis=0)
    b = np.linalg.lstsq(xc, u - u.mean(), rcond=None)[0]
    known = [float(b[i]) for i in range(n) if varies[i]]
    if not known:
        return [None] * n
    mid = statistics.median(known)
    return [float(b[i]) - mid if varies[i] else None for i in range(n)]


def measure_utilities(
    hub: RoundHub,
    round: int,
    candidates: Sequence[ArrayDict],
    evaluators: Sequence[str],
    *,
    config: Config,
    utility: UtilitySource,
    timeout: float,
    emit: Emit,
) -> list[float | None]:
    """Utility of each candidate: evaluation tasks to ``evaluators`` (the agreement's evaluator
    party alone when ``utility.source`` is ``evaluator``), then the median of their
    ``utility.metric`` (negated when lower is better); None when no evaluator answered.

    Evaluation tasks carry ``config`` plus ``round``, ``candidate`` (index) and, for an
    evaluator, ``validation`` = the agreement's validation dataset reference. A malformed or
    missing result is ignored (reported as ``client-dropped``). Bounded by ``timeout`` seconds
    per candidate.
    """
    if utility.source == "evaluator":
        assert utility.evaluator is not None  # UtilitySource validation
        evaluators = [utility.evaluator] if utility.evaluator in evaluators else []
        if utility.dataset is not None:
            config = {**config, "validation": utility.dataset}
    out: list[float | None] = []
    for j, arrays in enumerate(candidates):
        data = encode_arrays(arrays)
        handles = []
        for party in evaluators:
            cfg: Config = {**config, "round": round, "candidate": j}
            try:
                handles.append(
                    hub.submit(party, pb.TASK_KIND_EVALUATE, round, cfg, data,
                               deadline_seconds=timeout)
                )
            except FLError:
                continue
        values: list[float] = []
        for h in hub.as_completed(handles, time.monotonic() + timeout):
            try:
                metrics = check_metrics(h.outcome().metrics, who=f"evaluation by {h.party}")
                value = metrics[utility.metric]
            except (FLError, KeyError) as exc:
                reason = f"candidate evaluation: {exc}"[:300]
                emit("client-dropped", {"round": round, "party": h.party, "reason": reason})
                continue
            values.append(-value if utility.lower_is_better else value)
        out.append(statistics.median(values) if values else None)
    return out


@dataclass(frozen=True)
class Detection:
    """One detection round's outcome (what the provenance records).

    Attributes:
        parties: the parties whose updates were received, sorted (subsets index into it).
        seed: the agreement's seed (subsets drawn from ``(seed, round)``).
        subsets: party indices of each subset.
        utilities: utility of each subset's aggregate (None: unmeasured).
        scores: score per party (None: undetermined).
        flagged: outliers (all of them, whatever the action).
        excluded: outliers left out of this round's aggregate.
        removed: parties removed from the session at this round.
    """

    parties: tuple[str, ...]
    seed: int
    subsets: tuple[tuple[int, ...], ...]
    utilities: tuple[float | None, ...]
    scores: dict[str, float | None]
    flagged: tuple[str, ...]
    excluded: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass
class OutlierDetector:
    """Runs detection per the agreement's ``training.outliers`` (module docstring).

    Attributes:
        terms: the agreement's outlier terms.
        min_clients: fewest updates an aggregate may have (exclusion never goes below).
        exclusions: exclusions so far per party.
        removed: parties removed from the session.
    """

    terms: OutlierTerms
    min_clients: int
    exclusions: dict[str, int] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def due(self, round: int, received: int) -> bool:
        """Whether round ``round`` runs detection (``round % every == 0`` and ≥ 3 updates)."""
        return round % self.terms.every == 0 and received >= 3

    def subset_size(self, n: int) -> int:
        """The agreed size, else 2; always in ``1..n−1``."""
        size = self.terms.subset_size or 2
        return max(1, min(size, n - 1))

    def run(
        self,
        round: int,
        updates: Sequence[FitResult],
        utilities_of: Callable[[list[ArrayDict]], list[float | None]],
    ) -> Detection:
        """Draw subsets of ``updates``, aggregate each, measure them with ``utilities_of``,
        score and decide.

        Raises:
            FLError: fewer than 3 updates, or the candidates cannot be aggregated.
        """
        ordered = sorted(updates, key=lambda u: u.client)
        parties = tuple(u.client for u in ordered)
        n = len(parties)
        if n < 3:
            raise FLError(f"round {round}: outlier detection needs >= 3 updates, got {n}")
        subsets = draw_subsets(parties, self.terms.subsets, self.subset_size(n),
                               self.terms.seed, round)
        candidates = [
            weighted_average((ordered[i].arrays, float(ordered[i].num_examples)) for i in s)
            for s in subsets
        ]
        utilities = utilities_of(candidates)
        del candidates
        scores = score_clients(n, subsets, utilities)
        return self.decide(round, parties, subsets, utilities, scores)

    def decide(
        self,
        round: int,
        parties: tuple[str, ...],
        subsets: Sequence[tuple[int, ...]],
        utilities: Sequence[float | None],
        scores: Sequence[float | None],
    ) -> Detection:
        """Apply the threshold and action to ``scores`` (module docstring, step 5)."""
        t = self.terms
        outliers = sorted(
            (s, p)
            for p, s in zip(parties, scores, strict=True)
            if s is not None and s < -t.threshold
        )
        excluded: list[str] = []
        if t.action == "exclude":
            room = max(0, len(parties) - self.min_clients)
            excluded = [p for _, p in outliers[:room]]
        removed: list[str] = []
        for p in excluded:
            self.exclusions[p] = self.exclusions.get(p, 0) + 1
            if t.drop_after is not None and self.exclusions[p] >= t.drop_after:
                self.removed.add(p)
                removed.append(p)
        return Detection(
            parties=parties,
            seed=t.seed,
            subsets=tuple(tuple(s) for s in subsets),
            utilities=tuple(utilities),
            scores=dict(zip(parties, scores, strict=True)),
            flagged=tuple(sorted(p for _, p in outliers)),
            excluded=tuple(sorted(excluded)),
            removed=tuple(sorted(removed)),
        )
