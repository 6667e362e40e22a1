"""SECFL outlier detection in whole in-memory sessions: malicious clients are flagged,
excluded and dropped per the agreement; every score and decision is in the provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fl_memory_kit import SignFlipClient, ToyClient, agreement, parties, run

from teeflow.errors import FLError, ParseError
from teeflow.fl.outliers import OutlierDetector, draw_subsets, score_clients
from teeflow.fl.provenance import verified_training
from teeflow.kbs.policy.training import OutlierTerms

MALICIOUS = {"p07", "p08", "p09"}


def federation() -> dict[str, Any]:
    clients: dict[str, Any] = {p: ToyClient(i) for i, p in enumerate(parties(7))}
    clients.update({p: SignFlipClient(i) for i, p in enumerate(sorted(MALICIOUS), start=7)})
    return clients


def training(**outliers: Any) -> dict[str, Any]:
    return {
        "strategy": {"name": "fedavg"},
        "rounds": 10,
        "min_clients": 5,
        "outliers": {"subsets": 40, "subset_size": 3, "seed": 7, "threshold": 0.1,
                     **outliers},
    }


def test_detection_excludes_the_sign_flippers_and_keeps_accuracy(tmp_path: Path) -> None:
    """Attack: 3 of 10 clients send −10 × their update and claim accuracy 1.0 on every
    candidate; detection (median utility over evaluators) excludes exactly them."""
    result, events = run(tmp_path, agreement(10, training()), federation(), rounds=4,
                         min_clients=5)
    rounds = [e for e in result.provenance if e.kind == "round"]
    for entry in rounds:
        d = entry.detection
        assert d is not None and d.seed == 7 and len(d.subsets) == 40
        assert set(d.flagged) == MALICIOUS and set(d.excluded) == MALICIOUS
        assert set(entry.weights) == set(parties(7))  # excluded updates carry no weight
        assert set(entry.update_digests) == set(parties(10))  # but were received
        assert all(d.scores[p] is not None and d.scores[p] < -0.1 for p in MALICIOUS)
    assert {e.fields["party"] for e in events.named("client-excluded")} == MALICIOUS
    assert ToyClient(99).evaluate(result.arrays, {})[1]["accuracy"] > 0.85


def test_flag_only_records_but_aggregates_everyone(tmp_path: Path) -> None:
    result, _ = run(tmp_path, agreement(10, training(action="flag")), federation(), rounds=1,
                    min_clients=5)
    entry = result.provenance[1]
    assert entry.detection is not None
    assert set(entry.detection.flagged) == MALICIOUS and entry.detection.excluded == ()
    assert set(entry.weights) == set(parties(10))
    assert ToyClient(99).evaluate(result.arrays, {})[1]["accuracy"] < 0.85


def test_repeated_exclusion_drops_the_client_from_the_session(tmp_path: Path) -> None:
    result, events = run(tmp_path, agreement(10, training(drop_after=2)), federation(),
                         rounds=4, min_clients=5)
    removed = {e.fields["party"] for e in events.named("client-removed")}
    assert removed == MALICIOUS
    assert [e.round for e in events.named("client-removed")] == [2, 2, 2]
    for entry in result.provenance[3:5]:  # rounds 3 and 4: not selected any more
        assert entry.kind == "round" and not set(entry.update_digests) & MALICIOUS
    summary = verified_training(list(result.provenance))
    assert summary["outliers"][1]["removed"] == sorted(MALICIOUS)


def test_every_k_rounds(tmp_path: Path) -> None:
    result, _ = run(tmp_path, agreement(10, training(every=2, action="flag")), federation(),
                    rounds=3, min_clients=5)
    assert [e.detection is not None for e in result.provenance if e.kind == "round"] == [
        False, True, False]


def test_no_false_positives_among_honest_clients(tmp_path: Path) -> None:
    clients = {p: ToyClient(i) for i, p in enumerate(parties(10))}
    result, _ = run(tmp_path, agreement(10, training()), clients, rounds=3, min_clients=5)
    assert all(e.detection is not None and e.detection.flagged == ()
               for e in result.provenance if e.kind == "round")


def test_evaluator_source_uses_only_the_named_party(tmp_path: Path) -> None:
    t = training(utility={"source": "evaluator", "evaluator": "p00", "dataset": "val.npz"})
    result, _ = run(tmp_path, agreement(10, t), federation(), rounds=1, min_clients=5)
    entry = result.provenance[1]
    assert entry.detection is not None and set(entry.detection.excluded) == MALICIOUS


def test_an_evaluator_that_is_not_a_party_is_refused() -> None:
    t = training(utility={"source": "evaluator", "evaluator": "stranger"})
    with pytest.raises(ParseError, match="stranger is not a party"):
        agreement(10, t)


def test_exclusion_never_goes_below_min_clients() -> None:
    det = OutlierDetector(OutlierTerms(threshold=0.0), min_clients=4)
    parties_ = ("a", "b", "c", "d", "e")
    d = det.decide(1, parties_, [(0,)], [0.5], [-0.5, -0.4, -0.3, 0.1, 0.2])
    assert d.flagged == ("a", "b", "c") and d.excluded == ("a",)


def test_subsets_are_reproducible_from_seed_and_round() -> None:
    names = [f"c{i}" for i in range(10)]
    assert draw_subsets(names, 5, 3, 7, 2) == draw_subsets(names, 5, 3, 7, 2)
    assert draw_subsets(names, 5, 3, 7, 2) != draw_subsets(names, 5, 3, 7, 3)
    with pytest.raises(FLError):
        draw_subsets(names, 5, 10, 7, 2)


def test_scores_are_inclusion_effects() -> None:
    # utility = 0.9 − 0.8 · [client 0 in the subset]: exactly linear, so recovered exactly
    subsets = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    utilities = [0.1 if 0 in s else 0.9 for s in subsets]
    scores = score_clients(4, subsets, utilities)
    assert scores[0] == pytest.approx(-0.8)
    assert scores[1:] == [pytest.approx(0.0)] * 3
    assert score_clients(2, [(0,)], [None]) == [None, None]
    assert score_clients(3, [(0, 1), (0, 2)], [0.5, 0.5])[0] is None  # always in


def test_a_restarted_aggregator_keeps_removed_clients_out(tmp_path: Path) -> None:
    """Resume from round 2's checkpoint in a new instance (new key, hand-over): the clients
    removed at round 2 stay removed — the detector's state comes back from the checkpoint's
    provenance log."""
    import dataclasses

    from fl_memory_kit import trust

    from teeflow.fl.aggregator import AggregatorOptions
    from teeflow.fl.events import EventLog
    from teeflow.fl.inmemory import InMemoryAggregator, InMemoryHub

    agr = agreement(10, training(drop_after=2))
    first, _ = run(tmp_path, agr, federation(), rounds=2, min_clients=5)
    second = dataclasses.replace(trust(agr), certify=lambda cert, entry: None)
    opts = AggregatorOptions(pin=tmp_path / "x", session="s1", rounds=4, min_clients=5,
                             state_dir=tmp_path)
    events = EventLog()
    agg = InMemoryAggregator(opts, second, InMemoryHub(federation()), events,
                             resume=first.checkpoints[-1])
    result = agg.run_in_memory()
    kinds = [e.kind for e in result.provenance]
    assert kinds == ["session-start", "round", "round", "handover", "round", "round", "final"]
    for entry in result.provenance[4:6]:
        assert not set(entry.update_digests) & MALICIOUS
