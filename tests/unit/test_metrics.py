"""Metrics (issue 14): bounded label values, the audit-entry and progress-event mappings,
and the standalone metrics server scraped over a real socket and parsed with
prometheus_client's parser."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from teeflow.errors import FLError
from teeflow.fl.monitor import PROGRESS_PATH, monitor_aggregator
from teeflow.kbs.protocol import SUPPORTED_TEES
from teeflow.observability.http import MetricsServer, instrument
from teeflow.observability.metrics import (
    AGGREGATE_METRIC_NAMES,
    DENIAL_REASONS,
    OTHER,
    AggregatorMetrics,
    HttpMetrics,
    KbsMetrics,
    denial_reason,
    new_registry,
)

SECRETS = (
    "nonce-7f3a9c",
    "session:0123456789abcdef",
    "alice/teeu-input/" + "ab" * 32,
    "hospital-secret-party",
    "sk-live-TOKEN",
)
#: every label and the values it may take
VOCABULARY: dict[str, set[str]] = {
    "tee": set(SUPPORTED_TEES) | {OTHER},
    "result": {"accept", "deny"},
    "kind": {
        "agreement", "attestation", "release", "certificate", "counter", "resource",
        "enrollment", "store", "recovery-shares", "init", "train", "evaluate", OTHER,
    },
    "reason": {name for name, _ in DENIAL_REASONS} | {OTHER},
    "role": {"aggregator", "client", "compute", "kbs", "serve", "app", OTHER},
    "decision": {"accept", "deny", "info", OTHER},
    "outcome": {"committed", "retried"},
    "name": set(AGGREGATE_METRIC_NAMES),
    "method": {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", OTHER},
}


def _samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(text: str, name: str, /, **labels: str) -> float:
    for s in _samples(text):
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


def _assert_bounded(text: str, routes: set[str] | None = None) -> None:
    for s in _samples(text):
        for label, value in s.labels.items():
            if label == "le":
                continue
            if label == "route":
                assert routes is not None and value in routes, (s.name, value)
            elif label == "status":
                assert value.isdigit() or value == OTHER
            else:
                assert value in VOCABULARY[label], (s.name, label, value)
    for secret in SECRETS:
        assert secret not in text


def test_kbs_labels_stay_bounded_for_hostile_audit_data() -> None:
    """ATTACK: audit data chosen by a workload (declared TEE, claimed role, reasons naming
    resources and nonces) never becomes a label value."""
    registry = new_registry()
    m = KbsMetrics(registry, SUPPORTED_TEES)
    hostile = {
        "tee": SECRETS[0], "role": SECRETS[3], "party": SECRETS[3],
        "enrollment_id": SECRETS[4], "measurement": "ff" * 48,
    }
    m.observe_entry(seq=1, kind="attestation", decision="deny",
                    reasons=[f"unknown resource {SECRETS[2]} for {SECRETS[1]}"], data=hostile)
    m.observe_entry(seq=2, kind="attestation", decision="accept", reasons=[], data=hostile)
    m.observe_entry(seq=3, kind=SECRETS[1], decision=SECRETS[0], reasons=[SECRETS[4]], data=None)
    m.observe_entry(seq=4, kind="release", decision="accept", reasons=[], data={"path": SECRETS[2]})
    m.observe_entry(seq=5, kind="attestation", decision="accept", reasons=[],
                    data={"tee": "emulated-sgx", "role": "client", "enrollment_id": "j1"})
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    _assert_bounded(text)
    assert _value(text, "teeflow_kbs_attestations_total", tee=OTHER, result="deny") == 1
    assert _value(text, "teeflow_kbs_attestations_total", tee="emulated-sgx", result="accept") == 1
    assert _value(text, "teeflow_kbs_enrollment_uses_total", role=OTHER) == 1
    assert _value(text, "teeflow_kbs_enrollment_uses_total", role="client") == 1
    assert _value(text, "teeflow_kbs_key_releases_total") == 1
    assert _value(text, "teeflow_kbs_audit_head_seq") == 5
    assert _value(text, "teeflow_kbs_denials_total", kind="attestation", reason=OTHER) == 1


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        (["nonce already used (replay)"], "nonce"),
        (["no federation agreement"], "agreement"),
        (["enrollment revoked (uses are counted per accepted attestation)"], "enrollment"),
        (["emulated evidence is not allowed by the agreement"], "emulated"),
        (["mrenclave 00ff not in the agreement's reference values"], "measurement"),
        (["TCB status OutOfDate"], "tcb"),
        (["quote signature does not verify"], "evidence"),
        (["party bob is not a reader of this resource"], "policy"),
        (["something else entirely"], OTHER),
        ([], OTHER),
    ],
)
def test_denial_reason_classes(reasons: list[str], expected: str) -> None:
    assert denial_reason(reasons) == expected


def test_aggregator_metrics_drop_unlisted_metric_names() -> None:
    """ATTACK: a package reporting a metric named after a patient never creates a label."""
    registry = new_registry()
    m = AggregatorMetrics(registry)
    m.observe("client-connected", {"party": SECRETS[3]})
    m.observe("client-connected", {"party": "bob"})
    m.observe("client-disconnected", {"party": "bob"})
    m.observe("update-received", {"party": SECRETS[3], "kind": "train", "bytes": 4096})
    m.observe("update-received", {"party": "x", "kind": SECRETS[0], "bytes": 10})
    m.observe("round", {"round": 1, "clients": ["a", "b"], "seconds": 2.5, "digest": "00",
                        "eval_accuracy": 0.75, "patient-4711_loss": 0.1, SECRETS[4]: 1.0})
    m.observe("round-retry", {"round": 2, "reason": SECRETS[0]})
    m.observe("client-dropped", {"round": 2, "party": SECRETS[3]})
    m.observe("reattested", {"role": "aggregator"})
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    _assert_bounded(text)
    assert "patient-4711" not in text
    assert _value(text, "teeflow_fl_clients_connected") == 1
    assert _value(text, "teeflow_fl_client_connections_total") == 2
    assert _value(text, "teeflow_fl_update_bytes_total", kind="train") == 4096
    assert _value(text, "teeflow_fl_update_bytes_total", kind=OTHER) == 10
    assert _value(text, "teeflow_fl_round") == 1
    assert _value(text, "teeflow_fl_round_clients") == 2
    assert _value(text, "teeflow_fl_round_metric", name="eval_accuracy") == 0.75
    assert _value(text, "teeflow_fl_rounds_total", outcome="retried") == 1
    assert _value(text, "teeflow_fl_clients_dropped_total") == 1
    assert _value(text, "teeflow_fl_reattestations_total") == 1
    assert _value(text, "teeflow_fl_round_seconds_count") == 1


def test_metrics_server_routes() -> None:
    registry = new_registry()
    AggregatorMetrics(registry).observe("round", {"round": 3, "clients": [], "seconds": 1.0})
    doc = {"x": 1}
    with MetricsServer(registry, "127.0.0.1", 0, documents={"/v1/doc": lambda: doc}) as server:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(timeout=10) as http:
            scrape = http.get(base + "/metrics")
            assert scrape.status_code == 200
            assert scrape.headers["content-type"].startswith("text/plain")
            assert _value(scrape.text, "teeflow_fl_round") == 3
            assert http.get(base + "/v1/doc").json() == doc
            assert http.get(base + "/nope").status_code == 404
            assert http.post(base + "/metrics").status_code == 405


def test_monitor_progress_document_over_a_socket() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    with monitor_aggregator("127.0.0.1:0", "study-1", lambda e, f: lines.append((e, f))) as emit:
        port = lines[0][1]["port"]
        emit("attested", {"measurement": "aa" * 32, "emulated": True,
                          "agreement_digest": "bb" * 32, "package_digest": "cc" * 32})
        emit("listening", {"port": 1})
        emit("client-connected", {"party": "alice"})
        emit("round", {"round": 1, "clients": ["alice"], "seconds": 1.0, "digest": "dd" * 32,
                       "eval_accuracy": 0.5, "eval_loss": 1.5, "flag": True})
        with httpx.Client(timeout=10) as http:
            doc = http.get(f"http://127.0.0.1:{port}{PROGRESS_PATH}").json()
            text = http.get(f"http://127.0.0.1:{port}/metrics").text
    assert doc["session"] == "study-1" and doc["state"] == "running" and doc["round"] == 1
    assert doc["rounds"][0]["metrics"] == {"eval_accuracy": 0.5, "eval_loss": 1.5}
    assert doc["clients"] == ["alice"] and doc["emulated"] is True
    assert _value(text, "teeflow_fl_round_metric", name="eval_loss") == 1.5
    with pytest.raises(httpx.ConnectError):  # the server is gone with the session
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_monitor_refuses_a_bad_address() -> None:
    with pytest.raises(FLError), monitor_aggregator("nope", "s", lambda e, f: None):
        pass


@pytest.fixture
def instrumented() -> Iterator[str]:
    app = FastAPI()

    @app.get("/v1/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        if item_id == "boom":
            raise RuntimeError("boom")
        return {"id": item_id}

    instrument(app, HttpMetrics(new_registry(), "serve"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_requests_counted_by_route_template_not_path(instrumented: str) -> None:
    """ATTACK: the concrete path (a resource id) never becomes a label: route templates only."""
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{instrumented}/v1/items/{SECRETS[3]}").status_code == 200
        assert http.get(f"{instrumented}/v1/items/{SECRETS[0]}").status_code == 200
        assert http.get(f"{instrumented}/unknown/{SECRETS[1]}").status_code == 404
    # an app error (uvicorn drops that connection after the 500): counted as 500
    assert httpx.get(f"{instrumented}/v1/items/boom", timeout=10).status_code == 500
    text = httpx.get(f"{instrumented}/metrics", timeout=10).text
    _assert_bounded(text, routes={"/v1/items/{item_id}", "unmatched", "/metrics"})
    assert _value(text, "teeflow_serve_requests_total", route="/v1/items/{item_id}",
                  method="GET", status="200") == 2
    assert _value(text, "teeflow_serve_requests_total", route="unmatched", status="404") >= 1
    assert _value(text, "teeflow_serve_requests_total", status="500") == 1
