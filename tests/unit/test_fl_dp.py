"""Central DP in whole in-memory sessions: clipping + Gaussian noise, ε accounted with Google's
dp-accounting (RDP/PLD), the agreed budget stops the session, ε per round and in total in the
provenance; adaptive clipping; local DP on the client side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from fl_memory_kit import ToyClient, agreement, parties, run
from pydantic import ValidationError

from teeflow.errors import FLError
from teeflow.fl.dp import DpFedAvg, calibrate_noise, local_dp_update
from teeflow.fl.provenance import verified_training
from teeflow.fl.strategy import FedAvg, FitResult, update_norm
from teeflow.kbs.policy.training import DpTerms, TrainingTerms


def honest(n: int) -> dict[str, ToyClient]:
    return {p: ToyClient(i) for i, p in enumerate(parties(n))}


def training(rounds: int = 20, fraction: float = 1.0, **dp: Any) -> dict[str, Any]:
    terms = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "budget_epsilon": 50.0}
    terms.update(dp)
    return {"strategy": {"name": "fedavg"}, "rounds": rounds, "min_clients": 2,
            "fraction_fit": fraction, "dp": terms}


def rdp_epsilon(q: float, z: float, rounds: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def test_epsilon_per_round_and_total_match_dp_accounting(tmp_path: Path) -> None:
    result, events = run(tmp_path, agreement(10, training(fraction=0.5)), honest(10), rounds=3,
                         min_clients=2)
    records = [e.privacy for e in result.provenance if e.kind == "round"]
    assert all(r is not None for r in records)
    totals = [r.epsilon_total for r in records if r is not None]
    for i, total in enumerate(totals, start=1):
        assert total == pytest.approx(rdp_epsilon(0.5, 1.0, i, 1e-5), rel=1e-9)
    first = records[0]
    assert first is not None and first.epsilon_round == pytest.approx(totals[0])
    assert first.sampling_rate == 0.5 and first.noise_multiplier == 1.0
    assert events.named("done")[0].fields["epsilon"] == pytest.approx(totals[-1])
    summary = verified_training(list(result.provenance))
    assert summary["privacy"]["epsilon_total"] == pytest.approx(totals[-1])
    assert len(summary["privacy"]["per_round"]) == 3


def test_the_budget_stops_the_session_before_it_is_exceeded(tmp_path: Path) -> None:
    """The operator asks for 20 rounds; the signed budget allows only as many as fit."""
    budget = 5.0
    fit = max(r for r in range(1, 21) if rdp_epsilon(1.0, 1.0, r, 1e-5) <= budget)
    assert fit < 20
    result, events = run(tmp_path, agreement(4, training(budget_epsilon=budget)), honest(4),
                         rounds=20, min_clients=2)
    rounds = [e for e in result.provenance if e.kind == "round"]
    assert len(rounds) == fit
    assert result.provenance[-1].kind == "final" and result.provenance[-1].round == fit
    stop = events.named("dp-budget-exhausted")
    assert [e.round for e in stop] == [fit + 1]
    assert stop[0].fields["epsilon_after"] > budget >= rounds[-1].privacy.epsilon_total  # type: ignore[union-attr]
    assert result.result.rounds == fit


def test_pld_accountant(tmp_path: Path) -> None:
    result, _ = run(tmp_path, agreement(4, training(accountant="pld")), honest(4), rounds=2,
                    min_clients=2)
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.0), 2)
    last = result.provenance[-2].privacy
    assert last is not None and last.accountant == "pld"
    assert last.epsilon_total == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_target_epsilon_is_calibrated_over_the_agreed_rounds() -> None:
    z = calibrate_noise(4.0, 1e-5, 30, 1.0)
    assert rdp_epsilon(1.0, z, 30, 1e-5) <= 4.0 + 1e-6
    assert rdp_epsilon(1.0, z * 0.95, 30, 1e-5) > 4.0


def test_dp_terms_are_validated() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        DpTerms(clip_norm=1.0, budget_epsilon=8.0)
    with pytest.raises(ValidationError, match=r"exceeds dp\.budget_epsilon"):
        DpTerms(clip_norm=1.0, target_epsilon=9.0, budget_epsilon=8.0)
    with pytest.raises(ValidationError, match="needs strategy fedavg"):
        TrainingTerms.model_validate({**training(), "strategy": {"name": "median"}})


def strategy(terms: DpTerms, **kw: Any) -> DpFedAvg:
    inner = FedAvg(min_fit_clients=1, min_evaluate_clients=0, min_available_clients=1)
    return DpFedAvg(inner, terms, rounds=10, fraction_fit=1.0, **kw)


def test_each_update_is_clipped_and_noise_has_the_calibrated_scale() -> None:
    """Attack: one client sends a huge update; its influence is bounded by C / k."""
    glob = {"w": np.zeros(1000, np.float32)}
    terms = DpTerms(clip_norm=1.0, noise_multiplier=0.0, budget_epsilon=1e4)
    s = strategy(terms)
    s.configure_train(1, glob, ["a", "b"])
    huge = FitResult("a", {"w": np.full(1000, 100.0, np.float32)}, 10)
    small = FitResult("b", {"w": np.full(1000, 0.001, np.float32)}, 10)
    new, metrics = s.aggregate_train(1, [huge, small])
    assert update_norm(new, glob) <= (1.0 + update_norm(small.arrays, glob)) / 2 + 1e-5
    assert metrics["dp_unclipped"] == 1.0
    noisy = strategy(DpTerms(clip_norm=2.0, noise_multiplier=3.0, budget_epsilon=1e4),
                     rng=np.random.default_rng(0))
    noisy.configure_train(1, glob, ["a", "b"])
    out, _ = noisy.aggregate_train(1, [FitResult("a", glob, 1), FitResult("b", glob, 1)])
    assert float(np.std(out["w"])) == pytest.approx(3.0 * 2.0 / 2, rel=0.1)  # z C / k


def test_adaptive_clipping_follows_the_update_norm_quantile() -> None:
    glob = {"w": np.zeros(4, np.float32)}
    terms = DpTerms(clip_norm=10.0, noise_multiplier=0.0, budget_epsilon=1e4,
                    adaptive_clipping={"target_quantile": 0.5, "learning_rate": 0.5})
    s = strategy(terms)
    for r in range(1, 30):
        s.configure_train(r, glob, ["a", "b", "c"])
        updates = [FitResult(c, {"w": np.full(4, v, np.float32)}, 1)
                   for c, v in (("a", 0.5), ("b", 1.0), ("c", 1.5))]  # norms 1, 2, 3
        s.aggregate_train(r, updates)
    assert 1.0 < s.clip_norm < 3.0  # from 10 towards the median norm 2


def test_adaptive_clipping_refuses_a_count_noise_too_small() -> None:
    glob = {"w": np.zeros(4, np.float32)}
    terms = DpTerms(clip_norm=1.0, noise_multiplier=1.0, budget_epsilon=1e4,
                    adaptive_clipping={"count_stddev": 0.1})
    s = strategy(terms)
    s.configure_train(1, glob, ["a"])
    with pytest.raises(FLError, match="count_stddev too small"):
        s.aggregate_train(1, [FitResult("a", glob, 1)])


def test_ledger_survives_a_restart_through_the_checkpoint_state() -> None:
    terms = DpTerms(clip_norm=1.0, noise_multiplier=1.0, budget_epsilon=1e4)
    glob = {"w": np.zeros(4, np.float32)}
    s = strategy(terms)
    for r in (1, 2):
        s.configure_train(r, glob, ["a", "b"])
        s.aggregate_train(r, [FitResult("a", glob, 1), FitResult("b", glob, 1)])
    restarted = strategy(terms)
    restarted.load_state_arrays(s.state_arrays())
    assert restarted.ledger.spent == pytest.approx(s.ledger.spent, rel=1e-6)
    with pytest.raises(FLError):
        restarted.load_state_arrays({})


def test_local_dp_clips_and_noises_the_clients_update() -> None:
    terms = DpTerms(clip_norm=1.0, noise_multiplier=1.0, budget_epsilon=10, local=True,
                    local_noise_multiplier=0.5)
    glob = {"w": np.zeros(10_000, np.float32)}
    out = local_dp_update({"w": np.full(10_000, 5.0, np.float32)}, glob, terms,
                          np.random.default_rng(1))
    noise = out["w"] - 1.0 / np.sqrt(10_000) * np.ones(10_000)  # clipped to norm 1
    assert float(np.std(noise)) == pytest.approx(0.5, rel=0.05)


def test_outlier_detection_and_dp_cannot_be_combined() -> None:
    """Detection evaluates un-noised subset aggregates: with DP it would leak around the
    noise, so the agreement refuses both together."""
    with pytest.raises(ValidationError, match="outliers and dp cannot be combined"):
        TrainingTerms.model_validate({**training(), "min_clients": 5,
                                      "outliers": {"threshold": 0.1}})
