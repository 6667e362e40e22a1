"""Process orchestration helpers: JSON progress lines, bounded waits, stopping children."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from teeflow.errors import FLError
from teeflow.fl.session import LocalFederation, WorkloadProcess, _options

SCRIPT = """
import json, sys, time
print(json.dumps({"event": "listening", "port": 1234}), flush=True)
print("not json", flush=True)
print(json.dumps({"event": "round", "round": 1, "eval_accuracy": 0.5}), flush=True)
if sys.argv[1] == "fail":
    print(json.dumps({"event": "error", "type": "RollbackError", "message": "old"}), flush=True)
    sys.exit(1)
time.sleep(60)
"""


def start(tmp: Path, mode: str) -> WorkloadProcess:
    return WorkloadProcess("w", [sys.executable, "-c", SCRIPT, mode], env={}, logs=tmp / "logs")


def test_events_and_stop(tmp_path: Path) -> None:
    proc = start(tmp_path, "run")
    try:
        assert proc.wait_event("listening", 30)["port"] == 1234
        assert proc.wait_event("round", 30, lambda e: e["round"] == 1)["eval_accuracy"] == 0.5
        with pytest.raises(FLError, match="did not report"):
            proc.wait_event("done", 0.2)
        assert proc.lines == ["not json"]
    finally:
        proc.stop(timeout=5)
    assert proc.returncode is not None


def test_error_event_ends_waits(tmp_path: Path) -> None:
    proc = start(tmp_path, "fail")
    with pytest.raises(FLError, match="w failed: old"):
        proc.wait_event("done", 30)
    assert proc.wait(30) == 1
    assert proc.error() is not None
    proc.stop()


def test_federation_stops_every_child(tmp_path: Path) -> None:
    with LocalFederation(tmp_path, platform="emulated-sgx") as lf:
        procs = [
            lf._start(WorkloadProcess, f"p{i}", [sys.executable, "-c", SCRIPT, "run"])
            for i in range(2)
        ]
        for p in procs:
            p.wait_event("listening", 30)
    assert all(p.returncode is not None for p in procs)


def test_options_to_argv() -> None:
    argv = _options(
        {
            "wait_clients": 3,
            "train_config": {"lr": 0.1},
            "debug": True,
            "skip": None,
            "off": False,
            "state_dir": Path("/x"),
        }
    )
    assert argv == [
        "--wait-clients",
        "3",
        "--train-config",
        '{"lr": 0.1}',
        "--debug",
        "--state-dir",
        "/x",
    ]
