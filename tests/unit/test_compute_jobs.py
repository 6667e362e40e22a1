"""teeflow.compute.jobs: errors ↔ problems, identifiers, bounded execution; lineage audit join."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from teeflow.compute.jobs import (
    ERROR_TYPES,
    AttestationRefused,
    ComputeError,
    ExecutionLimits,
    FunctionFailed,
    InputTampered,
    InvalidJob,
    JobRefused,
    JobRequest,
    LimitExceeded,
    NotARecipient,
    ReleaseRefused,
    WorkerUnverified,
    error_from_problem,
    input_id,
    parse_function,
    run_bounded,
)
from teeflow.compute.lineage import (
    InputLineage,
    LineageRecord,
    PackageRef,
    ResultInfo,
    WorkerInfo,
    counter_name,
    lineage_digest,
    lineage_from_audit,
)
from teeflow.compute.values import decode_value, encode_value
from teeflow.errors import Error, SealingError, VerificationError
from teeflow.kbs.store.interface import AuditEntry


@pytest.mark.parametrize("cls", list(ERROR_TYPES.values()))
def test_problem_round_trip_keeps_the_class(cls: type[ComputeError]) -> None:
    exc = cls("public detail")
    back = error_from_problem(exc.status, exc.to_problem())
    assert type(back) is cls and str(back) == "public detail"
    assert isinstance(back, Error)


def test_error_tree() -> None:
    for cls in (AttestationRefused, ReleaseRefused, InputTampered, FunctionFailed, LimitExceeded):
        assert issubclass(cls, JobRefused)
    assert issubclass(LimitExceeded, FunctionFailed)
    assert issubclass(WorkerUnverified, VerificationError)
    assert issubclass(NotARecipient, SealingError)
    assert type(error_from_problem(500, {"type": "other"})) is ComputeError
    assert type(error_from_problem(502, "not json")) is ComputeError


def test_identifiers() -> None:
    assert parse_function("stats:average") == ("stats", "average")
    for bad in ("stats", "stats:", ":f", "a:b:c", "st ats:f", "stats:1f", 3):
        with pytest.raises(InvalidJob):
            parse_function(bad)  # type: ignore[arg-type]
    iid = input_id("alice", bytes(range(32)))
    assert iid == "alice/teeu-input/" + bytes(range(32)).hex()
    JobRequest(function="s:f", inputs=(iid,))
    with pytest.raises(ValueError):
        JobRequest(function="s:f", inputs=("alice/other/" + "0" * 64,))
    with pytest.raises(ValueError):
        JobRequest(function="s:f", inputs=())


def _avg(x: Any, y: Any) -> Any:
    return (x + y) / 2


def _boom(*_: Any) -> Any:
    raise RuntimeError("secret data in the message")


def _sleep(*_: Any) -> Any:
    time.sleep(30)


def _hog(*_: Any) -> Any:
    return np.ones(1 << 30, dtype=np.float64)  # 8 GiB


ISOLATIONS = ["thread"] + (["fork"] if sys.platform.startswith("linux") else [])


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_bounded(isolation: str) -> None:
    limits = ExecutionLimits(timeout=20, isolation=isolation)  # type: ignore[arg-type]
    out = run_bounded(_avg, [np.ones(4), np.zeros(4)], encode_value, limits)
    np.testing.assert_array_equal(decode_value(out), np.full(4, 0.5))
    with pytest.raises(FunctionFailed) as info:
        run_bounded(_boom, [], encode_value, limits)
    assert "secret" not in str(info.value)
    short = ExecutionLimits(timeout=0.5, isolation=isolation)  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded):
        run_bounded(_sleep, [], encode_value, short)
    small = ExecutionLimits(timeout=20, max_result_bytes=16,
                            isolation=isolation)  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded):
        run_bounded(_avg, [np.ones(64), np.ones(64)], encode_value, small)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS in a forked child")
def test_fork_memory_limit() -> None:
    limits = ExecutionLimits(timeout=20, max_memory=1 << 30, isolation="fork")
    with pytest.raises(LimitExceeded):
        run_bounded(_hog, [], encode_value, limits)


def _record() -> LineageRecord:
    return LineageRecord(
        result_id="ab" * 16, federation="f", agreement_digest="cd" * 32,
        package=PackageRef(name="stats", digest="ef" * 32), function="average",
        inputs=(InputLineage(id=input_id("alice", b"\x01" * 32), owner="alice"),),
        recipients=("alice",), result=ResultInfo(kind="array", sealed_sha256="00" * 32,
                                                 sealed_size=10),
        wrapped_keys={"alice": "AA"}, worker=WorkerInfo(measurement="11" * 32,
                                                        tee="emulated-sgx", emulated=True),
        attestation_token="tok", created_at=datetime(2026, 1, 1, tzinfo=UTC))


def _entry(seq: int, kind: str, subject: str, data: dict[str, Any],
           decision: str = "accept") -> AuditEntry:
    return AuditEntry(seq=seq, time=datetime(2026, 1, 1, tzinfo=UTC), kind=kind,
                      subject=subject, decision=decision, reasons=[], data=data,
                      prev_hash=b"", hash=b"", signature=b"")


def test_lineage_from_audit_joins_counter_releases_and_grants() -> None:
    import hashlib

    rec = _record()
    iid = rec.inputs[0].id
    token = hashlib.sha256(b"tok").hexdigest()
    entries = [
        _entry(1, "resource", iid, {"owner": "alice", "grant_digest": "99" * 32}),
        _entry(2, "release", iid, {"token_digest": token}),
        _entry(3, "counter", "counter:" + counter_name(rec.result_id),
               {"bound_digest": lineage_digest(rec).hex()}),
    ]
    got = lineage_from_audit(rec, entries)
    assert got.counter_seq == 3 and got.releases == ((iid, 2),)
    assert got.grants == {iid: ("alice", "99" * 32)}
    with pytest.raises(VerificationError):  # another digest bound
        lineage_from_audit(rec.model_copy(update={"function": "x"}), entries)
    with pytest.raises(VerificationError):  # the release went to another token
        lineage_from_audit(rec, [entries[0], _entry(2, "release", iid, {"token_digest": "0"}),
                                 entries[2]])
    # issue 10 (P): the owner is the audited uploader (the grant's signer), not a claim
    spoofed = [_entry(1, "resource", iid, {"owner": "mallory", "grant_digest": "99" * 32}),
               *entries[1:]]
    with pytest.raises(VerificationError, match="owners differ"):
        lineage_from_audit(rec, spoofed)
