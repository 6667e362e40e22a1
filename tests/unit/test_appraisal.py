"""AR4SI tiers, trustworthiness vectors and AttestationResult status derivation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from teeflow.attestation.appraisal import (
    AttestationResult,
    EarStatus,
    ExecutablesClaim,
    HardwareClaim,
    TrustworthinessVector,
    tier_of,
)
from teeflow.errors import ParseError, PolicyViolation

NOW = datetime(2025, 7, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "tier"),
    [
        (0, EarStatus.NONE),
        (1, EarStatus.NONE),
        (-1, EarStatus.NONE),
        (2, EarStatus.AFFIRMING),
        (31, EarStatus.AFFIRMING),
        (-2, EarStatus.AFFIRMING),
        (-32, EarStatus.AFFIRMING),
        (32, EarStatus.WARNING),
        (95, EarStatus.WARNING),
        (-33, EarStatus.WARNING),
        (-96, EarStatus.WARNING),
        (96, EarStatus.CONTRAINDICATED),
        (127, EarStatus.CONTRAINDICATED),
        (-97, EarStatus.CONTRAINDICATED),
        (-128, EarStatus.CONTRAINDICATED),
    ],
)
def test_ar4si_tiers(value: int, tier: EarStatus) -> None:
    assert tier_of(value) is tier


@pytest.mark.parametrize("value", [128, -129, 1000])
def test_tier_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        tier_of(value)


def test_standard_code_points() -> None:
    assert ExecutablesClaim.APPROVED_RUNTIME == 2
    assert ExecutablesClaim.UNRECOGNIZED_RUNTIME == 33
    assert ExecutablesClaim.CONTRAINDICATED_RUNTIME == 96
    assert HardwareClaim.GENUINE == 2
    assert HardwareClaim.UNSAFE == 32
    assert HardwareClaim.UNRECOGNIZED == 97


def test_vector_status_is_worst_claim() -> None:
    assert TrustworthinessVector().status is EarStatus.NONE
    assert TrustworthinessVector(hardware=2, executables=2).status is EarStatus.AFFIRMING
    assert TrustworthinessVector(hardware=32, executables=2).status is EarStatus.WARNING
    assert TrustworthinessVector(hardware=32, executables=96).status is EarStatus.CONTRAINDICATED


def test_vector_json_round_trip() -> None:
    tv = TrustworthinessVector(
        instance_identity=2, configuration=3, executables=33, hardware=32, runtime_opaque=2
    )
    data = tv.to_json()
    assert data == {
        "instance-identity": 2,
        "configuration": 3,
        "executables": 33,
        "hardware": 32,
        "runtime-opaque": 2,
    }
    assert TrustworthinessVector.from_json(data) == tv
    assert list(dict(tv.items())) == [
        "instance-identity", "configuration", "executables", "file-system",
        "hardware", "runtime-opaque", "storage-opaque", "sourced-data",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"hardwear": 2},
        {"hardware": "2"},
        {"hardware": True},
        {"hardware": 128},
        {"hardware": 2.0},
    ],
)
def test_vector_from_json_rejects(data: object) -> None:
    with pytest.raises(ParseError):
        TrustworthinessVector.from_json(data)


def test_vector_constructor_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        TrustworthinessVector(hardware=200)
    with pytest.raises(ValueError, match="must be an int"):
        TrustworthinessVector(hardware=True)


def _result(
    violations: tuple[str, ...] = (),
    warnings: tuple[str, ...] = (),
    tv: TrustworthinessVector | None = None,
) -> AttestationResult:
    return AttestationResult(
        tee="test",
        violations=violations,
        warnings=warnings,
        trust_vector=tv or TrustworthinessVector(executables=2, hardware=2),
        claims={"x": [1, 2], "nested": {"a": 1}},
        policy_id="p1",
        verified_at=NOW,
    )


def test_status_affirming() -> None:
    r = _result()
    assert (r.status, r.accepted) == (EarStatus.AFFIRMING, True)
    assert r.raise_for_status() is r


def test_status_warning_from_vector_or_warnings() -> None:
    assert _result(tv=TrustworthinessVector(hardware=32)).status is EarStatus.WARNING
    r = _result(warnings=("careful",))
    assert (r.status, r.accepted) == (EarStatus.WARNING, True)


def test_status_none_when_nothing_claimed() -> None:
    r = _result(tv=TrustworthinessVector())
    assert (r.status, r.accepted) == (EarStatus.NONE, True)


def test_status_contraindicated_on_violation() -> None:
    r = _result(violations=("a", "b"), tv=TrustworthinessVector(executables=96))
    assert (r.status, r.accepted) == (EarStatus.CONTRAINDICATED, False)
    with pytest.raises(PolicyViolation, match="test evidence rejected by policy p1: a; b") as info:
        r.raise_for_status()
    assert info.value.violations == ["a", "b"]


def test_violation_wins_over_affirming_vector() -> None:
    # Fail closed: a violation makes the result contraindicated whatever the vector says.
    r = _result(violations=("x",))
    assert r.status is EarStatus.CONTRAINDICATED
    assert not r.accepted


def test_contraindicated_vector_without_violation_is_a_bug() -> None:
    with pytest.raises(ValueError, match="without any violation"):
        _result(tv=TrustworthinessVector(hardware=96))


def test_claims_frozen_deeply() -> None:
    r = _result()
    assert r.claims["x"] == (1, 2)
    with pytest.raises(TypeError):
        r.claims["nested"]["a"] = 2  # type: ignore[index]
    assert not r.emulated
