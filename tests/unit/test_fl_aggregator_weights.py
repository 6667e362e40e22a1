"""The aggregator's update weights and federated evaluation against a lying client (P).

:class:`~teeflow.fl.collect.ResultCollector` (and the aggregator's evaluation around it) run
here without network: a fake hub hands them finished tasks, as the gRPC transport would.
Attacks:

* a client reports ``num_examples = 10**9`` to dominate FedAvg: its weight is clipped to the
  agreement's cap (``fl.max_examples_per_party`` / ``fl.max_examples``), the clipping is
  reported and recorded in the round tally (and so in the provenance round entry);
* a client sends a malformed evaluation result every round: that result alone is dropped,
  the other clients' evaluation is still aggregated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeflow.errors import FLError
from teeflow.fl.aggregator import Aggregator, AggregatorOptions
from teeflow.fl.arrays import encode_arrays
from teeflow.fl.collect import ResultCollector, RoundTally
from teeflow.fl.strategy import EvaluateResult
from teeflow.fl.strategy.base import validate_evaluate_result
from teeflow.fl.transport.hub import TaskOutcome
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.parties import PartyKeys

GLOBAL = {"w": np.zeros((2, 2), np.float32)}


@dataclass
class Done:
    party: str
    result: TaskOutcome

    def outcome(self) -> TaskOutcome:
        return self.result


class FakeHub:
    """Completes every submitted task at once with the prepared outcome."""

    def __init__(self, outcomes: dict[str, TaskOutcome]) -> None:
        self.outcomes = outcomes

    def connected(self) -> list[str]:
        return sorted(self.outcomes)

    def submit(self, party: str, *args: Any, **kwargs: Any) -> Done:
        return Done(party, self.outcomes[party])

    def as_completed(self, handles: Iterable[Done], deadline: float) -> Iterator[Done]:
        yield from handles


def agreement(fl: dict[str, Any]) -> FederationAgreement:
    keys = {n: PartyKeys.generate(n).public() for n in ("alice", "bob", "mallory")}
    return FederationAgreement.from_mapping(
        {
            "federation": "study",
            "version": 1,
            "parties": {
                n: {
                    "sign_key": k.sign_key,
                    "recipient_key": k.recipient_key,
                    "roles": ["data-owner"],
                }
                for n, k in keys.items()
            },
            "fl": fl,
            "update_quorum": {"k": 1},
        }
    )


def aggregator(tmp_path: Path, fl: dict[str, Any], outcomes: dict[str, TaskOutcome]) -> tuple:
    events: list[tuple[str, dict[str, Any]]] = []
    agg = Aggregator(
        AggregatorOptions(pin=tmp_path / "pin.json", session="s1", rounds=1, min_clients=2),
        emit=lambda e, f: events.append((e, f)),
    )
    agg.agreement = agreement(fl)
    agg.hub = FakeHub(outcomes)  # type: ignore[assignment]
    agg.collect = ResultCollector(agg.hub, agg.agreement.fl, lambda e, f: events.append((e, f)))
    agg.global_arrays = GLOBAL
    agg._prepare_training()  # the agreement has no training section: FedAvg, K = 2
    return agg, events


def fold(agg: Aggregator, tally: RoundTally) -> Any:
    """One FedAvg round over every connected client's outcome."""
    agg.strategy.configure_train(1, GLOBAL, agg.hub.connected())
    handles = [agg.hub.submit(p) for p in agg.hub.connected()]
    updates = agg.collect.updates(1, handles, 0.0, GLOBAL, tally)
    return agg.strategy.aggregate_train(1, updates)[0]


def train(party: str, value: float, n: int) -> TaskOutcome:
    data = encode_arrays({"w": np.full((2, 2), value, np.float32)})
    return TaskOutcome(party, "train", n, {}, data, hashlib.sha256(data).digest())


def test_inflated_num_examples_is_clipped_to_the_agreed_cap(tmp_path: Path) -> None:
    """Attack (P): mallory claims 10**9 examples; with a cap of 100 (alice and mallory
    train on 100 examples each) the aggregate is the plain mean, not mallory's model."""
    outcomes = {"alice": train("alice", 0.0, 100), "mallory": train("mallory", 1.0, 10**9)}
    agg, events = aggregator(tmp_path, {"max_examples": 100}, outcomes)
    tally = RoundTally()
    new_global = fold(agg, tally)
    np.testing.assert_allclose(new_global["w"], 0.5)  # unclipped: 1 - 1e-7
    assert tally.weights == {"alice": 100, "mallory": 100}
    assert tally.clipped == {"mallory"}
    clipped = [f for e, f in events if e == "weight-clipped"]
    assert clipped == [
        {"round": 1, "party": "mallory", "stage": "train", "reported": 10**9, "cap": 100}
    ]


def test_per_party_cap_overrides_the_global_cap(tmp_path: Path) -> None:
    outcomes = {"alice": train("alice", 0.0, 300), "mallory": train("mallory", 1.0, 10**9)}
    fl = {"max_examples": 10, "max_examples_per_party": {"alice": 300, "mallory": 100}}
    agg, _ = aggregator(tmp_path, fl, outcomes)
    tally = RoundTally()
    new_global = fold(agg, tally)
    np.testing.assert_allclose(new_global["w"], 0.25)  # 100 / (300 + 100)
    assert tally.weights == {"alice": 300, "mallory": 100} and tally.clipped == {"mallory"}


def test_without_a_cap_weights_are_as_reported(tmp_path: Path) -> None:
    outcomes = {"alice": train("alice", 0.0, 100), "bob": train("bob", 1.0, 300)}
    agg, events = aggregator(tmp_path, {}, outcomes)
    tally = RoundTally()
    new_global = fold(agg, tally)
    np.testing.assert_allclose(new_global["w"], 0.75)
    assert not tally.clipped and not [e for e, _ in events if e == "weight-clipped"]


def evaluate(party: str, n: int, accuracy: float) -> TaskOutcome:
    return TaskOutcome(party, "evaluate", n, {"accuracy": accuracy}, None, None)


@pytest.mark.parametrize("round_", [0, 1, 2])
def test_one_malformed_evaluation_does_not_switch_evaluation_off(
    tmp_path: Path, round_: int
) -> None:
    """Attack (P): mallory answers every evaluation with an out-of-range count; only its
    result is dropped, every round still gets the others' evaluation (and a huge but valid
    count is clipped like a training weight)."""
    outcomes = {
        "alice": evaluate("alice", 100, 0.9),
        "bob": evaluate("bob", 10**9, 0.5),
        "mallory": evaluate("mallory", 2**60, 0.0),
    }
    agg, events = aggregator(tmp_path, {"max_examples": 100}, outcomes)
    metrics = agg._evaluate(round_, GLOBAL)
    assert metrics["eval_accuracy"] == pytest.approx(0.7)  # (100*0.9 + 100*0.5) / 200
    assert metrics["eval_num_clients"] == 2.0
    dropped = [f for e, f in events if e == "client-dropped"]
    assert [d["party"] for d in dropped] == ["mallory"]
    assert not [e for e, _ in events if e == "evaluate-skipped"]


def test_validate_evaluate_result() -> None:
    validate_evaluate_result(EvaluateResult("a", 0, {"loss": 1.0}))
    for bad in (
        EvaluateResult("", 1, {}),
        EvaluateResult("a", -1, {}),
        EvaluateResult("a", 2**53, {}),
        EvaluateResult("a", 1, {"loss": float("nan")}),
    ):
        with pytest.raises(FLError):
            validate_evaluate_result(bad)
