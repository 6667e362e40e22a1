"""Partitions: every example exactly once, deterministic by seed, Dirichlet skew vs alpha."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.datasets import (
    DatasetError,
    dirichlet_partition,
    iid_partition,
    label_skew,
    partition,
    train_test_split,
)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert joined.dtype == np.int64
    assert np.array_equal(np.sort(joined), np.arange(n))
    for p in parts:
        assert np.array_equal(p, np.sort(p))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 500), clients=st.integers(1, 20), seed=st.integers(0, 2**32))
def test_iid_covers_each_index_once(n: int, clients: int, seed: int) -> None:
    if n < clients:
        with pytest.raises(DatasetError):
            iid_partition(n, clients, seed=seed)
        return
    parts = iid_partition(n, clients, seed=seed)
    assert len(parts) == clients
    assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 9), min_size=20, max_size=300),
    clients=st.integers(1, 8),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_covers_each_index_once(
    labels: list[int], clients: int, alpha: float, seed: int
) -> None:
    y = np.array(labels)
    try:
        parts = dirichlet_partition(y, clients, alpha=alpha, seed=seed, max_attempts=20)
    except DatasetError:
        return  # the min-size guard can refuse tiny, very skewed sets
    assert len(parts) == clients
    assert_exact_cover(parts, len(y))
    assert min(len(p) for p in parts) >= 1


def test_partitions_are_deterministic_by_seed() -> None:
    y = np.random.default_rng(0).integers(0, 10, 1000)
    for scheme in ("iid", "dirichlet"):
        a = partition(y, 5, scheme=scheme, alpha=0.5, seed=11)  # type: ignore[arg-type]
        b = partition(y, 5, scheme=scheme, alpha=0.5, seed=11)  # type: ignore[arg-type]
        c = partition(y, 5, scheme=scheme, alpha=0.5, seed=12)  # type: ignore[arg-type]
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
        assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_dirichlet_skew_increases_as_alpha_falls() -> None:
    y = np.random.default_rng(1).integers(0, 10, 5000)
    alphas = [1000.0, 10.0, 1.0, 0.3, 0.05]
    skews = [
        np.mean([label_skew(y, dirichlet_partition(y, 10, alpha=a, seed=s)) for s in range(5)])
        for a in alphas
    ]
    assert all(lo < hi for lo, hi in itertools.pairwise(skews)), skews
    assert skews[0] < 0.05 and skews[-1] > 0.6
    assert label_skew(y, iid_partition(len(y), 10, seed=0)) < 0.06


def test_min_size_guard() -> None:
    y = np.repeat(np.arange(10), 20)
    parts = dirichlet_partition(y, 10, alpha=0.1, seed=3, min_size=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(DatasetError, match="at least"):
        dirichlet_partition(y, 10, alpha=0.1, seed=3, min_size=21)  # 210 > 200
    with pytest.raises(DatasetError, match="attempts"):
        dirichlet_partition(y, 10, alpha=0.01, seed=3, min_size=19, max_attempts=3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": float("nan")},
        {"alpha": float("inf")},
        {"alpha": -1.0},
    ],
)
def test_bad_alpha(kwargs: dict[str, float]) -> None:
    with pytest.raises(DatasetError):
        dirichlet_partition(np.zeros(10, np.int64), 2, seed=0, **kwargs)


def test_bad_arguments() -> None:
    with pytest.raises(DatasetError):
        iid_partition(10, 0, seed=0)
    with pytest.raises(DatasetError):
        iid_partition(-1, 1, seed=0)
    with pytest.raises(DatasetError):
        partition([0, 1], 1, scheme="bogus")  # type: ignore[arg-type]
    with pytest.raises(DatasetError):
        partition(np.zeros((2, 2), np.int64), 1)
    with pytest.raises(DatasetError):
        partition([-1, 0], 1)
    with pytest.raises(DatasetError):
        partition(np.zeros(4, np.float32), 1)  # type: ignore[arg-type]


def test_train_test_split_is_stratified_and_exact() -> None:
    y = np.repeat(np.arange(5), [10, 20, 30, 40, 50])
    train, test = train_test_split(y, test_fraction=0.2, seed=0)
    assert_exact_cover([train, test], len(y))
    assert np.bincount(y[test]).tolist() == [2, 4, 6, 8, 10]
    again = train_test_split(y, test_fraction=0.2, seed=0)
    assert np.array_equal(again[1], test)
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(DatasetError):
            train_test_split(y, test_fraction=bad, seed=0)


def test_label_skew_bounds() -> None:
    y = np.array([0, 0, 1, 1])
    assert label_skew(y, [np.array([0, 2]), np.array([1, 3])]) == 0.0
    assert label_skew(y, [np.array([0, 1]), np.array([2, 3])]) == 0.5
    with pytest.raises(DatasetError):
        label_skew(y, [np.array([7])])
