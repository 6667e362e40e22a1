"""Strategies: FedAvg arithmetic and streaming, robust rules against hand-computed cases,
FedAdam against its formula, client sampling, and the aggregator's torch-free import set."""

from __future__ import annotations

import subprocess
import sys
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.errors import FLError
from teeflow.fl.arrays import decode_arrays, encode_arrays
from teeflow.fl.strategy import (
    ClientSampler,
    EvaluateResult,
    FedAdam,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    FitResult,
    Krum,
    Strategy,
    WeightedAccumulator,
    coordinate_median,
    fedadam_update,
    krum,
    krum_scores,
    make_strategy,
    trimmed_mean,
    weighted_average,
    weighted_metrics,
)


def arr(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def upd(*values: float) -> dict[str, np.ndarray]:
    return {"w": arr(*values)}


# -- FedAvg arithmetic -------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3),
            st.integers(1, 10_000),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_average_equals_numpy(items: list[tuple[list[float], int]]) -> None:
    stream = [
        ({"w": np.array(v, np.float32), "b": np.array(v[0], np.float32)}, n) for v, n in items
    ]
    got = weighted_average(iter(stream))
    values = np.array([v for v, _ in items], np.float64)
    weights = np.array([n for _, n in items], np.float64)
    want = np.average(values, axis=0, weights=weights)
    assert got["w"].dtype == np.float32
    np.testing.assert_allclose(got["w"], want.astype(np.float32), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(got["b"], np.float32(want[0]), rtol=1e-6, atol=1e-4)


def test_weighted_average_hand_case() -> None:
    got = weighted_average([(upd(1, 2), 1), (upd(3, 6), 3)])
    assert got["w"].tolist() == [2.5, 5.0]


def test_streaming_memory_is_o_model() -> None:
    """1,000 updates: the accumulator allocates one sum per tensor plus one scratch buffer,
    and never holds more than the update being folded."""
    live: set[int] = set()
    peak = 0

    def stream() -> Iterator[tuple[dict[str, np.ndarray], float]]:
        nonlocal peak
        rng = np.random.default_rng(0)
        for i in range(1000):
            a = {
                "w": rng.standard_normal((16, 8)).astype(np.float32),
                "b": rng.standard_normal(16).astype(np.float32),
            }
            live.add(i)
            weakref.finalize(a["w"], live.discard, i)
            peak = max(peak, len(live))
            yield a, 1.0 + i % 7
            del a

    acc = WeightedAccumulator()
    for arrays, weight in stream():
        acc.add(arrays, weight)
        del arrays
    assert acc.count == 1000
    assert acc.buffers_allocated == 3  # 2 sums + 1 scratch, whatever the count
    assert peak <= 2  # the current update (and at most the one being dropped)
    assert acc.result()["w"].shape == (16, 8)


def test_accumulator_refuses_bad_input() -> None:
    acc = WeightedAccumulator()
    with pytest.raises(FLError):
        acc.result()
    acc.add(upd(1, 2), 1)
    for bad, w in (
        (upd(1, 2, 3), 1),
        ({"x": arr(1, 2)}, 1),
        (upd(np.nan, 1), 1),
        (upd(1, 2), 0),
        (upd(1, 2), float("inf")),
        (upd(1, 2), -1),
    ):
        with pytest.raises(FLError):
            acc.add(bad, w)
    with pytest.raises(FLError):
        acc.add({"w": np.array([1, 2], np.float64)}, 1)
    assert acc.count == 1
    with pytest.raises(FLError):
        weighted_average([])


# -- FedAvg strategy ---------------------------------------------------------------------


CLIENTS = [f"party-{c}" for c in "abcdefghij"]


def test_fedavg_round() -> None:
    s = FedAvg(min_fit_clients=2, min_available_clients=2, train_config={"lr": 0.1})
    assert isinstance(s, Strategy)
    g = upd(0, 0)
    ins = s.configure_train(1, g, ["b", "a", "c"])
    assert [i.client for i in ins] == ["a", "b", "c"]
    assert ins[0].config == {"lr": 0.1, "round": 1}
    results = (
        FitResult(c, upd(k, 2 * k), k, {"train_loss": float(k)})
        for c, k in zip("abc", (1, 2, 3), strict=True)
    )
    new, metrics = s.aggregate_train(1, results)
    assert new["w"].tolist() == pytest.approx([14 / 6, 28 / 6])
    assert metrics["train_loss"] == pytest.approx(14 / 6)
    assert metrics["num_examples"] == 6 and metrics["num_clients"] == 3
    ev = s.aggregate_evaluate(
        1,
        [
            EvaluateResult("a", 10, {"accuracy": 0.5, "loss": 1.0}),
            EvaluateResult("b", 30, {"accuracy": 0.9, "loss": 0.2}),
        ],
    )
    assert ev["accuracy"] == pytest.approx(0.8) and ev["loss"] == pytest.approx(0.4)
    assert s.state_arrays() == {}


def test_fedavg_refusals() -> None:
    s = FedAvg(min_fit_clients=2, min_available_clients=3)
    g = upd(0, 0)
    with pytest.raises(FLError, match="needed"):
        s.configure_train(1, g, ["a", "b"])
    s.configure_train(1, g, ["a", "b", "c"])
    with pytest.raises(FLError, match="at least 2"):
        s.aggregate_train(1, [FitResult("a", upd(1, 1), 1)])
    with pytest.raises(FLError, match="two updates"):
        s.aggregate_train(1, [FitResult("a", upd(1, 1), 1), FitResult("a", upd(1, 1), 1)])
    with pytest.raises(FLError, match="shape"):
        s.aggregate_train(1, [FitResult("a", upd(1, 1, 1), 1), FitResult("b", upd(1, 1), 1)])
    with pytest.raises(FLError, match="NaN"):
        s.aggregate_train(1, [FitResult("a", upd(1, np.inf), 1), FitResult("b", upd(1, 1), 1)])
    for n in (0, -5, True, 2**53, 1.5):
        with pytest.raises(FLError, match="num_examples"):
            s.aggregate_train(1, [FitResult("a", upd(1, 1), n), FitResult("b", upd(1, 1), 1)])  # type: ignore[arg-type]
    with pytest.raises(FLError, match="metric"):
        s.aggregate_train(
            1, [FitResult("a", upd(1, 1), 1, {"x": float("nan")}), FitResult("b", upd(1, 1), 1)]
        )
    with pytest.raises(FLError, match="evaluations"):
        s.aggregate_evaluate(1, [EvaluateResult("a", 1, {})])
    with pytest.raises(FLError):
        s.configure_train(0, g, ["a", "b", "c"])
    with pytest.raises(FLError):
        s.load_state_arrays(upd(1))


def test_client_sampling_is_deterministic_and_respects_minimums() -> None:
    s = ClientSampler(fraction=0.3, min_clients=2, min_available=2, seed=5)
    a = s.sample(3, CLIENTS)
    assert len(a) == 3 and a == sorted(a) and set(a) <= set(CLIENTS)
    assert s.sample(3, list(reversed(CLIENTS))) == a  # input order does not matter
    picks = {tuple(s.sample(r, CLIENTS)) for r in range(1, 20)}
    assert len(picks) > 1  # rounds differ
    assert len(ClientSampler(fraction=0.05, min_clients=4, min_available=2).sample(1, CLIENTS)) == 4
    assert ClientSampler(fraction=1.0).sample(1, CLIENTS) == CLIENTS
    assert ClientSampler(fraction=0.0, min_clients=0, min_available=0).sample(1, CLIENTS) == []
    with pytest.raises(FLError, match="duplicate"):
        s.sample(1, ["a", "a", "b"])
    with pytest.raises(FLError):
        ClientSampler(fraction=1.5)
    fed = FedAvg(fraction_fit=0.5, min_fit_clients=2, min_available_clients=2, seed=1)
    chosen = [i.client for i in fed.configure_train(2, upd(0), CLIENTS)]
    assert chosen == ClientSampler(0.5, 2, 2, 1).sample(2, CLIENTS) and len(chosen) == 5


# -- robust rules, hand-computed ----------------------------------------------------------


def test_coordinate_median() -> None:
    got = coordinate_median([upd(1, 10, -3), upd(2, 0, 100), upd(9, 5, 0)])
    assert got["w"].tolist() == [2, 5, 0]
    got = coordinate_median([upd(1, 10), upd(2, 0), upd(9, 5), upd(4, 4)])
    assert got["w"].tolist() == [3, 4.5]


def test_trimmed_mean() -> None:
    ups = [upd(1, -100), upd(2, 1), upd(3, 2), upd(4, 3), upd(1000, 4)]
    assert trimmed_mean(ups, 0.2)["w"].tolist() == [3, 2]  # drop 1 low + 1 high per coordinate
    assert trimmed_mean(ups, 0.0)["w"].tolist() == pytest.approx([202, -18])
    assert trimmed_mean(ups, 0.49)["w"].tolist() == [3, 2]  # floor(2.45) = 2 each side
    with pytest.raises(FLError):
        trimmed_mean(ups, 0.5)


def test_krum_picks_the_central_update() -> None:
    ups = [upd(0, 0), upd(1, 0), upd(0, 1), upd(1, 1), upd(100, 100)]
    # f=1: each score sums the n-f-2 = 2 smallest squared distances to the others
    scores = krum_scores(ups, 1)
    assert scores[:4] == [2.0, 2.0, 2.0, 2.0]
    assert scores[4] == (99**2 + 99**2) + (99**2 + 100**2)  # to (1,1), then (0,1) or (1,0)
    arrays, chosen = krum(ups, 1)
    assert chosen == [0] and arrays["w"].tolist() == [0, 0]
    arrays, chosen = krum(ups, 1, num_selected=4)
    assert chosen == [0, 1, 2, 3] and arrays["w"].tolist() == [0.5, 0.5]
    with pytest.raises(FLError, match="2f"):
        krum(ups, 2)


def test_robust_strategies() -> None:
    ups = [
        ("a", upd(0, 0)),
        ("b", upd(1, 0)),
        ("c", upd(0, 1)),
        ("d", upd(1, 1)),
        ("e", upd(100, 100)),
    ]
    results = [FitResult(c, u, 1) for c, u in ups]
    kw = {"min_fit_clients": 3, "min_available_clients": 3}
    assert FedMedian(**kw).aggregate_train(1, results)[0]["w"].tolist() == [1, 1]
    assert FedTrimmedAvg(beta=0.2, **kw).aggregate_train(1, results)[0]["w"].tolist() == [
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
    ]
    arrays, metrics = Krum(num_byzantine=1, num_selected=2, **kw).aggregate_train(
        1, reversed(results)
    )
    assert arrays["w"].tolist() == [0.5, 0] and metrics["krum_selected"] == 2
    with pytest.raises(FLError, match="at least 3"):
        FedMedian(**kw).aggregate_train(1, results[:2])


# -- FedAdam -----------------------------------------------------------------------------


def test_fedadam_step_matches_the_formula() -> None:
    x, mean = upd(1.0, -2.0), upd(1.5, -2.0)
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    new, m, v = fedadam_update(x, mean, None, None, eta=eta, beta1=b1, beta2=b2, tau=tau)
    delta = np.array([0.5, 0.0])
    m1 = (1 - b1) * delta
    v1 = b2 * tau**2 + (1 - b2) * delta**2
    want = np.array([1.0, -2.0]) + eta * m1 / (np.sqrt(v1) + tau)
    np.testing.assert_allclose(m["w"], m1, rtol=1e-6)
    np.testing.assert_allclose(v["w"], v1, rtol=1e-6)
    np.testing.assert_allclose(new["w"], want, rtol=1e-6)
    # second step from those moments
    new2, m2, v2 = fedadam_update(new, upd(2.0, -1.0), m, v, eta=eta, beta1=b1, beta2=b2, tau=tau)
    d2 = np.array([2.0, -1.0]) - new["w"].astype(np.float64)
    m2w = b1 * m["w"].astype(np.float64) + (1 - b1) * d2
    v2w = b2 * v["w"].astype(np.float64) + (1 - b2) * d2**2
    np.testing.assert_allclose(new2["w"], new["w"] + eta * m2w / (np.sqrt(v2w) + tau), rtol=1e-6)
    np.testing.assert_allclose(m2["w"], m2w, rtol=1e-6)
    np.testing.assert_allclose(v2["w"], v2w, rtol=1e-6)
    with pytest.raises(FLError):
        fedadam_update(x, mean, None, None, eta=0, beta1=b1, beta2=b2, tau=tau)


def test_fedadam_strategy_and_state_round_trip() -> None:
    kw = {"min_fit_clients": 2, "min_available_clients": 2, "eta": 0.1}
    s = FedAdam(**kw)
    g = upd(1.0, -2.0)
    with pytest.raises(FLError, match="configure_train"):
        s.aggregate_train(1, [])
    s.configure_train(1, g, ["a", "b"])
    new, _ = s.aggregate_train(
        1, [FitResult("a", upd(1.0, -2.0), 1), FitResult("b", upd(2.0, -2.0), 1)]
    )
    want, _, _ = fedadam_update(
        g, upd(1.5, -2.0), None, None, eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3
    )
    assert np.array_equal(new["w"], want["w"])
    state = decode_arrays(encode_arrays(s.state_arrays()))
    assert sorted(state) == ["m/w", "v/w"]
    restored = FedAdam(**kw)
    restored.load_state_arrays(state)
    for strat in (s, restored):
        strat.configure_train(2, new, ["a", "b"])
    r = [FitResult("a", upd(0.0, 0.0), 3), FitResult("b", upd(1.0, 1.0), 1)]
    assert np.array_equal(s.aggregate_train(2, r)[0]["w"], restored.aggregate_train(2, r)[0]["w"])
    with pytest.raises(FLError):
        restored.load_state_arrays({"x/w": arr(1)})


def test_weighted_metrics_and_make_strategy() -> None:
    m = weighted_metrics([(1, {"a": 1.0}), (3, {"a": 3.0, "b": 2.0}), (0, {"c": 5.0})])
    assert m == {"a": 2.5, "b": 2.0, "num_examples": 4.0, "num_clients": 3.0}
    assert isinstance(make_strategy("krum", num_byzantine=1), Krum)
    assert isinstance(make_strategy("fedadam"), FedAdam)
    with pytest.raises(FLError, match="unknown"):
        make_strategy("fedprox")
    with pytest.raises(FLError):
        make_strategy("fedavg", bogus=1)


def test_fl_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import teeflow.fl, teeflow.fl.arrays, teeflow.fl.strategy, teeflow.fl.package\n"
        "import teeflow.fl.provenance\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
