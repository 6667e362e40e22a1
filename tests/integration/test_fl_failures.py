"""Issue 14, items 4 and 5, end to end: a client's failure (type and message, no data)
reaches the aggregator, whose error names it instead of only "no client produced an initial
model"; the client does not report ``ok: true`` after failed tasks and exits 1; the workload
logs under ``logs/`` hold timestamped, human-readable event lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fl_helpers import federation

from teeflow.fl.session import LocalFederation

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

WAIT = 120.0  # bound on every wait (seconds): never reached on a healthy run


def test_client_failure_reaches_the_aggregator_and_the_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TEEFLOW_HOME", str(home))
    with federation(home, tmp_path) as fed, LocalFederation(
        tmp_path / "procs", platform="emulated-sgx", home=home
    ) as lf:
        agg = lf.start_aggregator(
            pin=fed.pin_path,
            enrollment=fed.enroll(lf, "alice", "aggregator", session="s-fail"),
            session="s-fail",
            rounds=1,
            min_clients=2,  # the agreement's training.min_clients
            wait_clients=1,
            manifest=fed.aggregator_manifest,
            package=fed.published.sealed_path,
            # the example package's init raises FLError("unknown model 'resnet-9000' ...")
            train_config={"model": "resnet-9000", "threads": 1},
            round_timeout=WAIT,
            connect_timeout=WAIT,
        )
        client = lf.start_client(
            party="bob",
            pin=fed.pin_path,
            enrollment=fed.enroll(lf, "bob"),
            aggregator=agg.address,
            data=fed.data(1),
            manifest=fed.client_manifest,
            threads=1,
            connect_timeout=WAIT,
        )
        assert agg.wait(WAIT) == 1
        error = agg.error()
        assert error is not None and error["type"] == "FLError"
        # the root cause from the client, not only "no client produced an initial model"
        assert "no client produced an initial model" in error["message"]
        assert "bob" in error["message"] and "unknown model 'resnet-9000'" in error["message"]
        assert "FLError" in error["message"]  # the client's exception type
        failed = [e for e in agg.events if e["event"] == "init-failed"]
        assert failed and "unknown model" in failed[0]["reason"]
        assert client.wait(WAIT) == 1  # a client whose task failed does not exit 0
        done = next(e for e in client.events if e["event"] == "done")
        assert done["ok"] is False and done["failed"] == 1
        assert all("time" in e for e in client.events)  # --json lines are timestamped
        for proc in (agg, client):
            log = proc.log_path.read_text()
            assert log.strip(), f"{proc.log_path} is empty"
            assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  \S", log, re.M)
        assert "ERROR (fl) FLError: no client produced" in agg.log_path.read_text()
