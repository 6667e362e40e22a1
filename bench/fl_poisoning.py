#!/usr/bin/env python3
"""Poisoning benchmark (issue 13): aggregation rules, SECFL detection and central DP on MNIST.

Runs whole sessions through teeflow's production aggregator code path in one process
(:class:`teeflow.fl.inmemory.InMemoryAggregator` over an :class:`~teeflow.fl.inmemory.InMemoryHub`:
rules from a signed-shape agreement's ``training`` section, streamed aggregation, SECFL
detection, DP with dp-accounting, provenance) — no gRPC/TLS/KBS, so 30+ sessions fit on 2 cores.

Setup: MNIST (60,000 train / 10,000 test, ``../shared/data/mnist``), ``--clients`` clients
(default 10) with an IID split of the training set (each keeps 10 % as validation data for
federated evaluation), ``--rounds`` rounds (default 30), a numpy MLP 784-64-10 (ReLU, softmax
cross-entropy), 1 local epoch of SGD (batch 32, lr 0.1) per round. Accuracy = the final global
model on the 10,000 test images, computed by the harness.

Attacks (``--malicious`` of the clients, default 3: the last ones):

* ``signflip``: send ``global − 10 · Δ`` (Δ = its honest update);
* ``scale``: send ``global + 10 · Δ`` (boosted update);
* ``noise``: send ``global + N(0, 1)`` per parameter;
* ``labelflip``: train honestly on labels ``9 − y``.

Malicious clients also lie in federated evaluation (report ``1 − accuracy``), which SECFL's
median utility must withstand.

Rules: ``fedavg``, ``median``, ``trimmed-mean`` (β = 0.3), ``krum`` (f = 3), ``multi-krum``
(f = 3, m = 7 = n − f), ``fedavg+secfl`` (detection every round, 80 subsets of 2, threshold
``--secfl-threshold``, action exclude); and ``fedavg+dp`` at ε ∈ {1, 4, 8} (δ = 1e-5, clip 1.0,
noise calibrated by dp-accounting's RDP over the rounds, no attack). The clean FedAvg run is the
baseline of the same invocation. Detection precision/recall count (round, client) decisions.

Usage: ``.venv/bin/python bench/fl_poisoning.py [--rounds 30] [--clients 10] [--only RULE]
[--out FILE]``; results in ``bench/results/fl_poisoning.json`` and a table on stdout.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # tiny matrices: one BLAS thread is ~30x faster here

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402
from teeflow.datasets.mnist import load_mnist  # noqa: E402
from teeflow.fl.aggregator import AggregatorOptions  # noqa: E402
from teeflow.fl.events import EventLog  # noqa: E402
from teeflow.fl.inmemory import InMemoryAggregator, InMemoryHub, LocalTrust  # noqa: E402
from teeflow.kbs.policy.agreement import FederationAgreement  # noqa: E402
from teeflow.kbs.policy.parties import PartyKeys  # noqa: E402

SECFL = {"subsets": 80, "size": 2}
HIDDEN = 64
LR = 0.1
BATCH = 32
ATTACKS = ("none", "signflip", "scale", "noise", "labelflip")
RULES: dict[str, dict[str, Any]] = {
    "fedavg": {"name": "fedavg"},
    "median": {"name": "median"},
    "trimmed-mean": {"name": "trimmed-mean", "params": {"beta": 0.3}},
    "krum": {"name": "krum", "params": {"num_byzantine": 3, "num_selected": 1}},
    "multi-krum": {"name": "multi-krum"},  # filled in with m = n − f
    "fedavg+secfl": {"name": "fedavg"},
}


# -- model (numpy MLP) ---------------------------------------------------------------------


def init_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "b1": np.zeros(HIDDEN, np.float32),
        "b2": np.zeros(10, np.float32),
        "w1": (rng.normal(size=(784, HIDDEN)) * np.sqrt(2 / 784)).astype(np.float32),
        "w2": (rng.normal(size=(HIDDEN, 10)) * np.sqrt(2 / HIDDEN)).astype(np.float32),
    }


def forward(m: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.maximum(x @ m["w1"] + m["b1"], 0)
    return h, h @ m["w2"] + m["b2"]


def accuracy(m: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(forward(m, x)[1], axis=1) == y))


def sgd_epoch(m: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    m = {k: v.copy() for k, v in m.items()}
    order = np.random.default_rng(seed).permutation(len(y))
    for start in range(0, len(y), BATCH):
        idx = order[start : start + BATCH]
        xb, yb = x[idx], y[idx]
        h, logits = forward(m, xb)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1
        p /= len(yb)
        gw2, gb2 = h.T @ p, p.sum(axis=0)
        dh = (p @ m["w2"].T) * (h > 0)
        gw1, gb1 = xb.T @ dh, dh.sum(axis=0)
        m["w1"] -= LR * gw1
        m["b1"] -= LR * gb1
        m["w2"] -= LR * gw2
        m["b2"] -= LR * gb2
    return {k: v.astype(np.float32) for k, v in m.items()}


class MnistClient:
    """One party: train/validation split of its shard; ``attack`` (None: honest)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, index: int, attack: str | None) -> None:
        n_val = len(y) // 10
        self.x, self.y = x[n_val:], y[n_val:]
        self.vx, self.vy = x[:n_val], y[:n_val]
        self.index = index
        self.attack = attack
        self.rng = np.random.default_rng(1000 + index)

    def init(self, config: dict) -> dict:
        return init_model()

    def fit(self, arrays: dict, config: dict) -> tuple[dict, int, dict]:
        seed = self.index * 1_000_003 + int(config.get("round", 0))
        labels = 9 - self.y if self.attack == "labelflip" else self.y
        new = sgd_epoch(arrays, self.x, labels, seed)
        if self.attack == "signflip":
            new = {k: arrays[k] - 10 * (new[k] - arrays[k]) for k in arrays}
        elif self.attack == "scale":
            new = {k: arrays[k] + 10 * (new[k] - arrays[k]) for k in arrays}
        elif self.attack == "noise":
            new = {k: (arrays[k] + self.rng.normal(size=v.shape)).astype(np.float32)
                   for k, v in arrays.items()}
        return new, len(self.y), {}

    def evaluate(self, arrays: dict, config: dict) -> tuple[int, dict]:
        acc = accuracy(arrays, self.vx, self.vy)
        return len(self.vy), {"accuracy": 1.0 - acc if self.attack else acc}


# -- federation ----------------------------------------------------------------------------


def agreement(names: list[str], training: dict[str, Any]) -> FederationAgreement:
    keys = {n: PartyKeys.generate(n).public() for n in names}
    return FederationAgreement.from_mapping({
        "federation": "bench",
        "version": 1,
        "parties": {n: {"sign_key": k.sign_key, "recipient_key": k.recipient_key,
                        "roles": ["data-owner"]} for n, k in keys.items()},
        "update_quorum": {"k": 1},
        "training": training,
    })


def trust(agr: FederationAgreement) -> LocalTrust:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-aggregator")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return LocalTrust(agr, key, cert.public_bytes(serialization.Encoding.PEM))


def run_one(
    shards: list[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    *,
    rule: str,
    attack: str,
    malicious: int,
    rounds: int,
    secfl_threshold: float,
    dp_epsilon: float | None = None,
    fraction: float = 1.0,
    min_clients: int | None = None,
) -> dict[str, Any]:
    n = len(shards)
    names = [f"c{i:02d}" for i in range(n)]
    bad = set(names[n - malicious:]) if attack != "none" else set()
    clients = {p: MnistClient(x, y, i, attack if p in bad else None)
               for i, (p, (x, y)) in enumerate(zip(names, shards, strict=True))}
    strategy = dict(RULES[rule])
    if rule == "multi-krum":
        strategy = {"name": "krum", "params": {"num_byzantine": 3, "num_selected": n - 3}}
    # robust rules need every update (Krum: n >= 2f + 3); FedAvg(+SECFL) may aggregate fewer,
    # which lets detection exclude up to n − min_clients = 3 updates a round
    k = n if rule in ("krum", "multi-krum", "median", "trimmed-mean") else n - 3
    k = min_clients or k
    training: dict[str, Any] = {"strategy": strategy, "rounds": rounds, "min_clients": k,
                                "fraction_fit": fraction}
    if rule == "fedavg+secfl":
        training["outliers"] = {"subsets": SECFL["subsets"], "subset_size": SECFL["size"],
                                "seed": 1, "threshold": secfl_threshold, "action": "exclude"}
    if dp_epsilon is not None:
        training["dp"] = {"clip_norm": 1.0, "target_epsilon": dp_epsilon, "delta": 1e-5,
                          "budget_epsilon": dp_epsilon}
    agr = agreement(names, training)
    events = EventLog()
    with tempfile.TemporaryDirectory() as tmp:
        opts = AggregatorOptions(pin=Path(tmp) / "unused", session="bench", rounds=rounds,
                                 min_clients=k, state_dir=Path(tmp))
        t0 = time.perf_counter()
        agg = InMemoryAggregator(opts, trust(agr), InMemoryHub(clients, on_event=events), events)
        result = agg.run_in_memory()
        wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "clients": n,
        "fraction_fit": fraction,
        "rule": rule if dp_epsilon is None else "fedavg+dp",
        "attack": attack,
        "malicious": sorted(bad),
        "rounds_run": result.result.rounds,
        "accuracy": accuracy(result.arrays, *test),
        "wall_seconds": round(wall, 2),
    }
    if dp_epsilon is not None:
        last = [e.privacy for e in result.provenance if e.kind == "round" and e.privacy][-1]
        out.update(dp_target_epsilon=dp_epsilon, epsilon_spent=last.epsilon_total,
                   noise_multiplier=last.noise_multiplier, delta=last.delta)
    detections = [e.detection for e in result.provenance if e.kind == "round" and e.detection]
    if detections:
        tp = sum(len(set(d.flagged) & bad) for d in detections)
        fp = sum(len(set(d.flagged) - bad) for d in detections)
        positives = len(bad) * len(detections)
        negatives = (n - len(bad)) * len(detections)
        scores = [(p, s) for d in detections for p, s in d.scores.items() if s is not None]
        out["detection"] = {
            "mean_score_malicious": _mean([s for p, s in scores if p in bad]),
            "mean_score_honest": _mean([s for p, s in scores if p not in bad]),
            "min_score_honest": min((s for p, s in scores if p not in bad), default=None),
            "rounds": len(detections),
            "flagged": tp + fp,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / positives if positives else None,
            "false_positive_rate": fp / negatives if negatives else None,
        }
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="rounds per session")
    ap.add_argument("--clients", type=int, default=10, help="clients (IID shards)")
    ap.add_argument("--malicious", type=int, default=3, help="malicious clients")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared"
                                          / "data" / "mnist"), help="MNIST folder")
    ap.add_argument("--secfl-threshold", type=float, default=0.1,
                    help="SECFL threshold (utility = accuracy)")
    ap.add_argument("--secfl-subsets", type=int, default=80, help="SECFL subsets per round")
    ap.add_argument("--secfl-size", type=int, default=2, help="SECFL subset size")
    ap.add_argument("--dp-population", type=int, default=0,
                    help="also run no-DP and DP at ε 1/4/8 with this many clients (1/10 "
                    "sampled per round, ~60 examples each): client-level DP needs a population")
    ap.add_argument("--only", default=None, help="run only this rule (or 'dp')")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attacks")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    a = ap.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP order warnings
    SECFL.update(subsets=a.secfl_subsets, size=a.secfl_size)
    ds = load_mnist(a.data)
    x = (ds.train.x.reshape(len(ds.train.y), -1).astype(np.float32) / 255.0)
    y = ds.train.y.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    shards = [(x[idx], y[idx]) for idx in np.array_split(order, a.clients)]
    test = (ds.test.x.reshape(len(ds.test.y), -1).astype(np.float32) / 255.0,
            ds.test.y.astype(np.int64))
    results: list[dict[str, Any]] = []

    def record(r: dict[str, Any]) -> None:
        results.append(r)
        det = r.get("detection") or {}
        print(f"{r['clients']:>5} {r['rule']:>14} {r['attack']:>9}  acc {r['accuracy']:.4f}  "
              f"{r['wall_seconds']:7.1f}s  rounds {r['rounds_run']}"
              + (f"  P {det.get('precision')} R {det.get('recall')} "
                 f"FPR {det.get('false_positive_rate')}" if det else "")
              + (f"  eps {r['epsilon_spent']:.3f} z {r['noise_multiplier']:.3f}"
                 if "epsilon_spent" in r else ""), flush=True)

    attacks = a.attacks.split(",")
    for rule in RULES:
        if a.only not in (None, rule):
            continue
        for attack in attacks:
            record(run_one(shards, test, rule=rule, attack=attack, malicious=a.malicious,
                           rounds=a.rounds, secfl_threshold=a.secfl_threshold))
    if a.only in (None, "dp"):
        for eps in (1.0, 4.0, 8.0):
            record(run_one(shards, test, rule="fedavg", attack="none", malicious=0,
                           rounds=a.rounds, secfl_threshold=a.secfl_threshold, dp_epsilon=eps))
    if a.dp_population:
        population = [(x[idx], y[idx]) for idx in np.array_split(order, a.dp_population)]
        for eps in (None, 1.0, 4.0, 8.0):
            record(run_one(population, test, rule="fedavg", attack="none", malicious=0,
                           rounds=a.rounds, secfl_threshold=a.secfl_threshold, dp_epsilon=eps,
                           fraction=0.1, min_clients=10))
    path = write_json("fl_poisoning", {
        "machine": machine(),
        "setup": {"clients": a.clients, "malicious": a.malicious, "rounds": a.rounds,
                  "model": "MLP 784-64-10 numpy", "local": "1 epoch SGD lr 0.1 batch 32",
                  "split": "IID", "secfl": {**SECFL, "threshold": a.secfl_threshold}},
        "results": results,
    }, a.out)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
