"""Session requests against the agreement's training terms (:mod:`teeflow.fl.sessions`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from teeflow.errors import ParseError
from teeflow.fl.sessions import SessionRefused, SessionRequest, check_request
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.parties import PartyKeys

KEYS = {p: PartyKeys.generate(p) for p in ("alice", "bob")}
# (Krum f=1 would need min_clients >= 5: the agreement refuses it with 2, issue 13)
TRAINING = {"strategy": {"name": "trimmed-mean", "params": {"beta": 0.2}}, "rounds": 5,
            "min_clients": 2, "fraction_fit": 0.5}


def agreement(training: dict[str, Any] | None = TRAINING) -> FederationAgreement:
    data: dict[str, Any] = {
        "federation": "f", "version": 1, "previous": None,
        "parties": {p: {"sign_key": k.public().sign_key,
                        "recipient_key": k.public().recipient_key, "roles": ["data-owner"]}
                    for p, k in KEYS.items()},
        "workloads": {"aggregator": {"sgx": {"mrenclave": ["11" * 32]}}},
        "packages": {
            "mnist": {"digest": "22" * 32, "entrypoints": ["train", "validate"],
                      "functions": ["init"], "readers": ["alice", "bob"]},
            "stats": {"digest": "33" * 32, "functions": ["average"], "readers": ["alice"]},
        },
        "outputs": {"model": ["alice"]},
        "update_quorum": {"k": 2},
    }
    if training is not None:
        data["training"] = training
    return FederationAgreement.from_mapping(data)


def check(training: dict[str, Any] | None = TRAINING, **request: Any) -> Any:
    req = SessionRequest.model_validate({"package": "mnist", "rounds": 3, **request})
    return check_request(req, agreement(training), name="s1", agreement_digest="ab" * 32)


def test_the_plan_takes_the_agreed_rule_and_defaults() -> None:
    plan = check()
    assert (plan.strategy, plan.strategy_params) == ("trimmed-mean", {"beta": 0.2})
    assert (plan.rounds, plan.min_clients, plan.wait_clients, plan.fraction_fit) == (3, 2, 2, 0.5)
    assert plan.package_digest == "22" * 32
    assert check(package="22" * 32).package == "mnist"  # by digest too


def test_no_training_section_means_no_sessions() -> None:
    with pytest.raises(SessionRefused, match="no training section"):
        check(None)


@pytest.mark.parametrize(("request_fields", "reason"), [
    ({"rounds": 6}, "at most 5"),
    ({"min_clients": 1}, "below the agreed 2"),
    ({"min_clients": 3, "wait_clients": 2}, "at least min_clients"),
    ({"package": "other"}, "not in the agreement"),
    ({"package": "stats"}, "no train entrypoint"),
])
def test_requests_beyond_the_terms_are_refused(request_fields: dict[str, Any],
                                               reason: str) -> None:
    with pytest.raises(SessionRefused, match=reason):
        check(**request_fields)


@pytest.mark.parametrize("fields", [
    {"rounds": 0}, {"strategy": "fedavg"}, {"fraction_fit": 1.0}, {"name": "../x"},
    {"train_config": {"a": {"nested": 1}}}, {"round_timeout": 0},
    {"train_config": {f"k{i}": i for i in range(65)}},
])
def test_malformed_requests_do_not_parse(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SessionRequest.model_validate({"package": "mnist", "rounds": 1, **fields})


def test_sealed_package_is_strict_base64() -> None:
    ok = SessionRequest(package="mnist", rounds=1,
                        sealed_package=base64.b64encode(b"sealed").decode())
    assert ok.sealed_bytes() == b"sealed"
    with pytest.raises(ParseError):
        SessionRequest(package="mnist", rounds=1, sealed_package="not base64!").sealed_bytes()
