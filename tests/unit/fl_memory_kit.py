"""Shared kit of the in-memory FL tests: a toy logistic-regression client (numpy), attackers,
agreements with a ``training`` section, and the LocalTrust of an in-memory aggregator."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeflow.fl.aggregator import AggregatorOptions
from teeflow.fl.arrays import ArrayDict
from teeflow.fl.events import EventLog
from teeflow.fl.inmemory import InMemoryAggregator, InMemoryHub, InMemoryResult, LocalTrust
from teeflow.fl.strategy.base import Config, Metrics, Strategy
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.parties import PartyKeys

DIM = 8
_KEYS: dict[str, Any] = {}


def parties(n: int) -> list[str]:
    return [f"p{i:02d}" for i in range(n)]


def agreement(n: int, training: dict[str, Any] | None) -> FederationAgreement:
    for name in parties(n):
        if name not in _KEYS:
            _KEYS[name] = PartyKeys.generate(name).public()
    doc: dict[str, Any] = {
        "federation": "study",
        "version": 1,
        "parties": {
            p: {
                "sign_key": _KEYS[p].sign_key,
                "recipient_key": _KEYS[p].recipient_key,
                "roles": ["data-owner"],
            }
            for p in parties(n)
        },
        "update_quorum": {"k": 1},
    }
    if training is not None:
        doc["training"] = training
    return FederationAgreement.from_mapping(doc)


def trust(agr: FederationAgreement) -> LocalTrust:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aggregator")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return LocalTrust(agr, key, cert.public_bytes(serialization.Encoding.PEM))


TRUE_W = np.random.default_rng(99).normal(size=DIM)


class ToyClient:
    """Logistic regression on a linearly separable-ish synthetic task (numpy)."""

    def __init__(self, seed: int, n: int = 200) -> None:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, DIM))
        y = (x @ TRUE_W + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
        self.x, self.y = x[: n // 2], y[: n // 2]
        self.vx, self.vy = x[n // 2 :], y[n // 2 :]

    def init(self, config: Config) -> ArrayDict:
        return {"b": np.zeros(1, np.float32), "w": np.zeros(DIM, np.float32)}

    def _train(self, arrays: ArrayDict, y: np.ndarray) -> ArrayDict:
        w = arrays["w"].astype(np.float64)
        b = float(arrays["b"][0])
        for _ in range(5):
            p = 1 / (1 + np.exp(-(self.x @ w + b)))
            w -= 0.5 * self.x.T @ (p - y) / len(y)
            b -= 0.5 * float(np.mean(p - y))
        return {"b": np.array([b], np.float32), "w": w.astype(np.float32)}

    def fit(self, arrays: ArrayDict, config: Config) -> tuple[ArrayDict, int, Metrics]:
        return self._train(arrays, self.y), len(self.y), {"loss": 0.0}

    def evaluate(self, arrays: ArrayDict, config: Config) -> tuple[int, Metrics]:
        logits = self.vx @ arrays["w"].astype(np.float64) + float(arrays["b"][0])
        acc = float(np.mean((logits > 0) == (self.vy > 0.5)))
        return len(self.vy), {"accuracy": acc}


class SignFlipClient(ToyClient):
    """Sends ``global − 10 · (honest update)`` and lies about evaluations."""

    def fit(self, arrays: ArrayDict, config: Config) -> tuple[ArrayDict, int, Metrics]:
        honest = self._train(arrays, self.y)
        return {k: arrays[k] - 10 * (honest[k] - arrays[k]) for k in arrays}, len(self.y), {}

    def evaluate(self, arrays: ArrayDict, config: Config) -> tuple[int, Metrics]:
        return len(self.vy), {"accuracy": 1.0}


def run(
    tmp_path: Path,
    agr: FederationAgreement,
    clients: dict[str, Any],
    *,
    rounds: int = 5,
    min_clients: int = 3,
    strategy_obj: Strategy | None = None,
    **options: Any,
) -> tuple[InMemoryResult, EventLog]:
    events = EventLog()
    opts = AggregatorOptions(
        pin=tmp_path / "unused.pin",
        session="s1",
        rounds=rounds,
        min_clients=min_clients,
        state_dir=tmp_path,
        **options,
    )
    hub = InMemoryHub(clients, on_event=events)
    agg = InMemoryAggregator(opts, trust(agr), hub, events, strategy=strategy_obj)
    return agg.run_in_memory(), events
