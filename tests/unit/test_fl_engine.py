"""Whole FL sessions through the in-memory hub: the agreement's training section drives the
aggregator (rule and parameters), a changed rule is refused, the provenance records the terms,
and typed events report progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from fl_memory_kit import SignFlipClient, ToyClient, agreement, parties, run
from pydantic import ValidationError

from teeflow.errors import FLError, ParseError
from teeflow.fl.events import EVENT_NAMES, event_from
from teeflow.fl.provenance import (
    ProvenanceEntry,
    ProvenanceError,
    load_provenance,
    verified_training,
    verify_provenance,
)
from teeflow.fl.strategy import FedAvg, FedMedian, Krum
from teeflow.kbs.policy.training import TrainingTerms


def honest(n: int) -> dict[str, ToyClient]:
    return {p: ToyClient(i) for i, p in enumerate(parties(n))}


def test_fedavg_session_runs_whole_and_records_the_terms(tmp_path: Path) -> None:
    training = {"strategy": {"name": "fedavg"}, "rounds": 10, "min_clients": 3}
    result, events = run(tmp_path, agreement(5, training), honest(5), rounds=4)
    acc = [e.fields["eval_accuracy"] for e in events.named("round")]
    assert len(acc) == 5 and acc[-1] > 0.85 > acc[0]  # round 0 + 4 rounds, it learns
    start = result.provenance[0]
    assert start.training == TrainingTerms.model_validate(training)
    assert [e.kind for e in result.provenance] == ["session-start"] + ["round"] * 4 + ["final"]
    verify_provenance(result.provenance, _cert(start))
    assert events.named("training")[0].fields["strategy"] == "fedavg"
    assert events.named("done")[0].fields["rounds"] == 4
    assert [e.round for e in events.named("committed")] == [1, 2, 3, 4]
    assert len(result.checkpoints) == 4


def _cert(entry: ProvenanceEntry) -> x509.Certificate:
    assert entry.aggregator_certificate is not None
    return x509.load_pem_x509_certificate(entry.aggregator_certificate.encode())


@pytest.mark.parametrize(
    ("name", "params", "metric"),
    [
        ("krum", {"num_byzantine": 1, "num_selected": 2}, "train_krum_selected"),
        ("trimmed-mean", {"beta": 0.2}, None),
        ("median", {}, None),
        ("fedadam", {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 0.01}, None),
        ("fedavg-norm-bounded", {"max_norm": 0.5}, "train_norm_clipped"),
    ],
)
def test_strategy_and_parameters_come_from_the_agreement(
    tmp_path: Path, name: str, params: dict[str, float], metric: str | None
) -> None:
    """Krum runs with the agreed f and m (not f = 0 as a CLI flag gave it), etc."""
    training = {"strategy": {"name": name, "params": params}, "rounds": 3, "min_clients": 5}
    result, events = run(tmp_path, agreement(5, training), honest(5), rounds=2, min_clients=5)
    assert events.named("training")[0].fields["strategy_params"] == params
    rounds = events.named("round")
    if metric == "train_krum_selected":
        assert rounds[-1].fields[metric] == 2.0  # m = 2 updates averaged
    elif metric is not None:
        assert metric in rounds[-1].fields
    assert result.provenance[0].training is not None
    assert result.provenance[0].training.strategy.params == params


def test_a_krum_f_that_the_agreed_clients_cannot_tolerate_is_refused() -> None:
    with pytest.raises(ParseError, match=r"n >= 2f \+ 3"):
        agreement(5, {"strategy": {"name": "krum", "params": {"num_byzantine": 2}},
                      "min_clients": 5})


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "krum", "params": {"f": 1}},
        {"name": "trimmed-mean", "params": {"beta": 0.5}},
        {"name": "fedadam", "params": {"beta1": 1.0}},
        {"name": "fedavg-norm-bounded", "params": {"max_norm": 0}},
        {"name": "krum", "params": {"num_byzantine": 1.5}},
        {"name": "secret-rule"},
    ],
)
def test_strategy_parameters_are_validated_against_the_strategy(strategy: dict) -> None:
    with pytest.raises(ValidationError):
        TrainingTerms.model_validate({"strategy": strategy, "min_clients": 9})


def test_a_session_asking_for_another_rule_is_refused(tmp_path: Path) -> None:
    """Attack: the aggregator operator runs median although the parties signed FedAvg."""
    agr = agreement(5, {"strategy": {"name": "fedavg"}, "rounds": 10, "min_clients": 3})
    with pytest.raises(FLError, match="differs from the agreement's rule fedavg"):
        run(tmp_path, agr, honest(5), strategy="median")


def test_another_rule_by_flag_object_or_parameters_is_refused(tmp_path: Path) -> None:
    agr = agreement(5, {"strategy": {"name": "krum", "params": {"num_byzantine": 1}},
                        "rounds": 10, "min_clients": 5})
    kw = {"min_clients": 5}
    with pytest.raises(FLError, match="differs from the agreement's rule krum"):
        run(tmp_path, agr, honest(5), **kw, strategy="median")
    # a strategy object: the right rule with f = 0 instead of the agreed f = 1
    with pytest.raises(FLError, match="is not the agreement's rule"):
        run(tmp_path, agr, honest(5), **kw, strategy_obj=Krum(num_byzantine=0))
    with pytest.raises(FLError, match="is not the agreement's rule"):
        run(tmp_path, agr, honest(5), **kw, strategy_obj=FedMedian())
    # a parameter the agreement left at its default (num_selected = 1) changed to 3
    with pytest.raises(FLError, match="is not the agreement's rule"):
        run(tmp_path, agr, honest(5), **kw, strategy_obj=Krum(num_byzantine=1, num_selected=3))
    with pytest.raises(FLError, match="fraction_fit"):
        run(tmp_path, agr, honest(5), **kw, fraction_fit=0.5)
    with pytest.raises(FLError, match="the agreement allows 10"):
        run(tmp_path, agr, honest(5), rounds=11, **kw)
    with pytest.raises(FLError, match="below the agreement's 5"):
        run(tmp_path, agr, honest(5), min_clients=4)


def test_the_agreed_strategy_object_runs(tmp_path: Path) -> None:
    agr = agreement(4, {"strategy": {"name": "fedavg"}, "rounds": 2, "min_clients": 3})
    obj = FedAvg(min_fit_clients=3, min_evaluate_clients=1, min_available_clients=3)
    result, _ = run(tmp_path, agr, honest(4), rounds=2, strategy_obj=obj)
    assert result.result.rounds == 2


def test_without_a_training_section_only_fedavg_runs(tmp_path: Path) -> None:
    agr = agreement(4, None)
    result, _ = run(tmp_path, agr, honest(4), rounds=1)
    assert result.provenance[0].training is not None
    assert result.provenance[0].training.strategy.name == "fedavg"
    with pytest.raises(FLError, match="differs from the agreement's rule fedavg"):
        run(tmp_path, agr, honest(4), rounds=1, strategy="krum")


def test_a_client_failing_is_dropped_and_the_session_goes_on(tmp_path: Path) -> None:
    class Crashing(ToyClient):
        def fit(self, arrays, config):  # type: ignore[no-untyped-def]
            raise RuntimeError("out of memory")

    clients: dict = honest(4)
    clients["p04"] = Crashing(4)
    agr = agreement(5, {"rounds": 5, "min_clients": 3})
    _, events = run(tmp_path, agr, clients, rounds=2)
    dropped = events.named("client-dropped")
    assert {e.fields["party"] for e in dropped} == {"p04"}
    assert all("p04" not in e.fields["clients"] for e in events.named("round"))


def test_tampered_training_terms_break_the_chain(tmp_path: Path) -> None:
    """Attack: rewrite the recorded rule (fedavg -> median) in the saved log."""
    agr = agreement(4, {"rounds": 5, "min_clients": 3})
    result, _ = run(tmp_path, agr, honest(4), rounds=1)
    path = result.result.provenance_path
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    first["training"]["strategy"]["name"] = "median"
    path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    entries = load_provenance(path)
    with pytest.raises(ProvenanceError, match="hash does not match"):
        verify_provenance(entries, _cert(entries[0]))


def test_verified_training_summarises_terms(tmp_path: Path) -> None:
    agr = agreement(4, {"strategy": {"name": "median"}, "rounds": 5, "min_clients": 3})
    result, _ = run(tmp_path, agr, honest(4), rounds=1)
    summary = verified_training(list(result.provenance))
    assert summary["training"]["strategy"] == {"name": "median", "params": {}}
    assert summary["privacy"] == {} and summary["outliers"] == []


def test_sign_flippers_wreck_fedavg_but_not_krum(tmp_path: Path) -> None:
    """The rule the parties sign matters: 2 of 7 sign-flippers with FedAvg vs Krum(f=2)."""
    clients: dict = honest(5)
    clients.update({"p05": SignFlipClient(5), "p06": SignFlipClient(6)})
    judge = ToyClient(99)  # an honest party's own validation of the final model
    accs = {}
    for name, params in (("fedavg", {}), ("krum", {"num_byzantine": 2, "num_selected": 3})):
        training = {"strategy": {"name": name, "params": params}, "rounds": 5, "min_clients": 7}
        result, _ = run(tmp_path, agreement(7, training), clients, rounds=4, min_clients=7)
        accs[name] = judge.evaluate(result.arrays, {})[1]["accuracy"]
    assert accs["krum"] > 0.85 > accs["fedavg"]


def test_progress_events_are_typed(tmp_path: Path) -> None:
    clients: dict = honest(4)
    clients["p04"] = SignFlipClient(4)
    agr = agreement(5, {"rounds": 5, "min_clients": 3,
                        "outliers": {"subset_size": 2, "threshold": 0.1}})
    _, events = run(tmp_path, agr, clients, rounds=2)
    names = {e.name for e in events}
    assert names <= EVENT_NAMES
    assert {"training", "initial-model", "round-start", "outlier-scores", "client-excluded",
            "round", "committed", "done"} <= names
    assert all(isinstance(e.round, int) for e in events.named("round"))
    with pytest.raises(FLError, match="unknown progress event"):
        event_from("made-up", {}, strict=True)
    with pytest.raises(FLError, match="round must be an integer"):
        event_from("round", {"round": "1"})


def test_norm_bounded_fedavg_bounds_one_clients_pull(tmp_path: Path) -> None:
    """Attack: a boosted update (×10); under the agreed norm bound the global model moves by
    at most M per round whatever one client sends."""
    import numpy as np

    from teeflow.fl.strategy import NormBoundedFedAvg, update_norm
    from teeflow.fl.strategy.base import FitResult

    s = NormBoundedFedAvg(max_norm=0.5, min_fit_clients=2, min_evaluate_clients=0,
                          min_available_clients=2)
    glob = {"w": np.zeros(100, np.float32)}
    s.configure_train(1, glob, ["a", "b"])
    boosted = FitResult("a", {"w": np.full(100, 50.0, np.float32)}, 1)
    quiet = FitResult("b", glob, 1)
    new, metrics = s.aggregate_train(1, [boosted, quiet])
    assert update_norm(new, glob) == pytest.approx(0.25, rel=1e-5)  # (0.5 + 0) / 2
    assert metrics["norm_clipped"] == 1.0
