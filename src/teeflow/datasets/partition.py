"""Deterministic partitions of a data set among federated clients, and train/test splits.

All functions take an explicit ``seed`` (randomness is injected: a ``numpy`` PCG64 generator
seeded with it), return **sorted** int64 index arrays, and assign every example to exactly one
part.

- :func:`iid_partition`: a random permutation cut into ``num_clients`` parts whose sizes
  differ by at most one.
- :func:`dirichlet_partition`: label-skewed non-IID parts as in Hsu, Qi and Brown, "Measuring
  the Effects of Non-Identical Data Distribution for Federated Visual Classification" (2019)
  and NIID-Bench (Li et al., ICDE 2022, section 4.1): for each class ``k`` draw
  ``p_k ~ Dir(alpha * 1_C)`` and give client ``c`` a fraction ``p_k[c]`` of that class's
  examples. Small ``alpha`` → each client sees few classes; large ``alpha`` → close to IID.
  Draws are repeated (same generator, so still deterministic) until every part has at least
  ``min_size`` examples.
- :func:`train_test_split`: stratified hold-out split.
- :func:`label_skew`: mean total-variation distance between the clients' label
  distributions and the global one (0 = identical, → 1 = disjoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from teeflow.datasets.base import DatasetError

__all__ = [
    "MAX_CLIENTS",
    "Scheme",
    "dirichlet_partition",
    "iid_partition",
    "label_skew",
    "partition",
    "train_test_split",
]

#: Largest number of parts accepted.
MAX_CLIENTS = 100_000

#: Partition schemes understood by :func:`partition`.
Scheme = Literal["iid", "dirichlet"]

Indices = NDArray[np.int64]


def _check_clients(n: int, num_clients: int, min_size: int) -> None:
    if not 1 <= num_clients <= MAX_CLIENTS:
        raise DatasetError(f"num_clients must be in 1..{MAX_CLIENTS}, got {num_clients}")
    if min_size < 0:
        raise DatasetError("min_size must be >= 0")
    if num_clients * min_size > n:
        raise DatasetError(
            f"{n} examples cannot give {num_clients} clients at least {min_size} each"
        )


def _labels(labels: NDArray[np.integer] | Sequence[int]) -> NDArray[np.int64]:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError("labels must be a 1-D integer array")
    if arr.size and int(arr.min()) < 0:
        raise DatasetError("labels must be non-negative")
    return arr.astype(np.int64, copy=False)


def iid_partition(n: int, num_clients: int, *, seed: int, min_size: int = 1) -> list[Indices]:
    """Split ``range(n)`` uniformly at random into ``num_clients`` near-equal parts.

    Args:
        n: number of examples (>= 0).
        num_clients: number of parts (1..:data:`MAX_CLIENTS`).
        seed: generator seed (same seed → same parts).
        min_size: smallest acceptable part (checked up front: ``n >= num_clients*min_size``).

    Returns:
        ``num_clients`` sorted int64 arrays; sizes ``floor(n/C)`` or ``ceil(n/C)``.

    Raises:
        DatasetError: bad ``num_clients`` or too few examples.
    """
    if n < 0:
        raise DatasetError("n must be >= 0")
    _check_clients(n, num_clients, min_size)
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    labels: NDArray[np.integer] | Sequence[int],
    num_clients: int,
    *,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_attempts: int = 1000,
) -> list[Indices]:
    """Label-skewed non-IID partition with per-class Dirichlet(``alpha``) proportions.

    Args:
        labels: ``(n,)`` non-negative integer class labels.
        num_clients: number of parts.
        alpha: Dirichlet concentration (> 0, finite); smaller → more skew.
        seed: generator seed.
        min_size: every part gets at least this many examples (the guard).
        max_attempts: draws before giving up.

    Returns:
        ``num_clients`` sorted int64 arrays covering ``range(n)`` exactly once.

    Raises:
        DatasetError: bad arguments, or no draw met ``min_size`` within ``max_attempts``.
    """
    y = _labels(labels)
    n = int(y.size)
    if not (math.isfinite(alpha) and alpha > 0):
        raise DatasetError(f"alpha must be a positive finite number, got {alpha}")
    _check_clients(n, num_clients, min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == k) for k in classes]
    for _ in range(max(1, max_attempts)):
        parts: list[list[Indices]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shuffled = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            if not np.all(np.isfinite(p)):
                p = np.full(num_clients, 1.0 / num_clients)
            cuts = (np.cumsum(p)[:-1] * len(shuffled)).astype(np.int64)
            for c, chunk in enumerate(np.split(shuffled, cuts)):
                parts[c].append(chunk.astype(np.int64))
        result = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
        if min(len(r) for r in result) >= min_size:
            return result
    raise DatasetError(
        f"no Dirichlet(alpha={alpha}) draw gave every one of {num_clients} clients "
        f"at least {min_size} examples in {max_attempts} attempts"
    )


def partition(
    labels: NDArray[np.integer] | Sequence[int],
    num_clients: int,
    *,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[Indices]:
    """Dispatch to :func:`iid_partition` or :func:`dirichlet_partition`.

    Raises:
        DatasetError: unknown scheme, or see the two functions.
    """
    y = _labels(labels)
    if scheme == "iid":
        return iid_partition(int(y.size), num_clients, seed=seed, min_size=min_size)
    if scheme == "dirichlet":
        return dirichlet_partition(y, num_clients, alpha=alpha, seed=seed, min_size=min_size)
    raise DatasetError(f"unknown partition scheme {scheme!r} (iid or dirichlet)")


def train_test_split(
    labels: NDArray[np.integer] | Sequence[int],
    *,
    test_fraction: float,
    seed: int,
) -> tuple[Indices, Indices]:
    """Stratified split: from each class, ``round(test_fraction * n_k)`` examples go to test.

    Args:
        labels: ``(n,)`` class labels.
        test_fraction: in ``(0, 1)``.
        seed: generator seed.

    Returns:
        ``(train_indices, test_indices)``, sorted, disjoint, together ``range(n)``.

    Raises:
        DatasetError: ``test_fraction`` outside ``(0, 1)`` or bad labels.
    """
    y = _labels(labels)
    if not (math.isfinite(test_fraction) and 0.0 < test_fraction < 1.0):
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train: list[Indices] = []
    test: list[Indices] = []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k)).astype(np.int64)
        cut = round(test_fraction * len(idx))
        test.append(idx[:cut])
        train.append(idx[cut:])
    empty = np.zeros(0, np.int64)
    return (
        np.sort(np.concatenate(train)) if train else empty,
        np.sort(np.concatenate(test)) if test else empty,
    )


def label_skew(
    labels: NDArray[np.integer] | Sequence[int],
    parts: Sequence[Indices],
) -> float:
    """Mean total-variation distance between each non-empty part's label histogram and the
    whole set's (``0.5 * sum_k |q_k - p_k|``), in ``[0, 1]``.

    Raises:
        DatasetError: bad labels or an index out of range.
    """
    y = _labels(labels)
    if y.size == 0:
        return 0.0
    k = int(y.max()) + 1
    global_p = np.bincount(y, minlength=k) / y.size
    dists = []
    for part in parts:
        idx = np.asarray(part, dtype=np.int64)
        if idx.size == 0:
            continue
        if int(idx.min()) < 0 or int(idx.max()) >= y.size:
            raise DatasetError("partition index out of range")
        q = np.bincount(y[idx], minlength=k) / idx.size
        dists.append(0.5 * float(np.abs(q - global_p).sum()))
    return float(np.mean(dists)) if dists else 0.0
