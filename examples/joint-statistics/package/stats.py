"""Joint statistics over several banks' customer tables, stacked row-wise (same columns).

Runs inside the attested compute worker; receives decrypted inputs, returns plain values the
worker seals to the agreed recipients. numpy only (tables arrive as pyarrow Tables or as
dicts of numpy columns).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURES = ("age", "income", "balance", "tenure")
LABEL = "defaulted"


def _columns(table: Any) -> dict[str, np.ndarray]:
    if isinstance(table, dict):
        return {k: np.asarray(v, dtype=np.float64) for k, v in table.items()}
    return {name: table.column(name).to_numpy().astype(np.float64) for name in table.column_names}


def _stack(*tables: Any) -> dict[str, np.ndarray]:
    cols = [_columns(t) for t in tables]
    names = set(cols[0])
    if any(set(c) != names for c in cols):
        raise ValueError("the tables must have the same columns")
    return {n: np.concatenate([c[n] for c in cols]) for n in sorted(names)}


def summary(*tables: Any) -> dict[str, Any]:
    """Row count, per-column mean and variance of the stacked tables."""
    data = _stack(*tables)
    return {
        "rows": len(next(iter(data.values()))),
        "mean": {n: float(v.mean()) for n, v in data.items()},
        "variance": {n: float(v.var()) for n, v in data.items()},
    }


def logistic_regression(*tables: Any, iterations: int = 25, l2: float = 1e-3) -> dict[str, Any]:
    """L2-regularised logistic regression of ``defaulted`` on the standardised features
    (Newton / IRLS), over the stacked tables."""
    data = _stack(*tables)
    x = np.column_stack([data[f] for f in FEATURES])
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    x = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    y = data[LABEL]
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-x @ w))
    return {
        "intercept": float(w[0]),
        "coefficients": {f: float(c) for f, c in zip(FEATURES, w[1:], strict=True)},
        "standardisation": {"mean": mu.tolist(), "std": sd.tolist()},
        "train_accuracy": float(((p > 0.5) == (y > 0.5)).mean()),
        "rows": len(y),
    }
