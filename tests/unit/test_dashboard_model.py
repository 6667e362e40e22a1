"""The dashboard's model (issue 14): agreement history with re-checked signatures and diffs,
workloads and sessions from the audit log, and what it shows when a source lies or fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from teeflow.dashboard.model import (
    DashboardSource,
    agreement_versions,
    sessions_from_audit,
    workloads_from_audit,
)
from teeflow.fl.monitor import PROGRESS_FORMAT, PROGRESS_PATH
from teeflow.kbs.client.heads import StateRollback
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.service.audit import AuditChainError
from teeflow.kbs.store.interface import AuditEntry
from teeflow.observability.http import MetricsServer
from teeflow.observability.metrics import new_registry

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _agreement(keys: dict[str, PartyKeys], version: int, previous: str | None,
               emulated: bool) -> FederationAgreement:
    return FederationAgreement.from_mapping({
        "federation": "study", "version": version, "previous": previous,
        "parties": {p: {"sign_key": k.public().sign_key,
                        "recipient_key": k.public().recipient_key, "roles": ["data-owner"]}
                    for p, k in keys.items()},
        "allow_emulated": emulated, "update_quorum": {"k": 2},
    })


@pytest.fixture(scope="module")
def keys() -> dict[str, PartyKeys]:
    return {p: PartyKeys.generate(p) for p in ("alice", "bob")}


def _signed(a: FederationAgreement, keys: dict[str, PartyKeys]) -> SignedAgreement:
    s = SignedAgreement(agreement=a)
    for k in keys.values():
        s = s.signed_by(k)
    return s


def test_history_diff_and_verified_signatures(keys: dict[str, PartyKeys]) -> None:
    v1 = _signed(_agreement(keys, 1, None, True), keys)
    v2 = _signed(_agreement(keys, 2, digest(v1.agreement).hex(), False), keys)
    versions = agreement_versions([v1, v2])
    assert [v["version"] for v in versions] == [1, 2]
    assert all(v["signatures_verified"] for v in versions)
    assert versions[0]["diff"] == []
    assert "-allow_emulated: true" in versions[1]["diff"]
    assert "+allow_emulated: false" in versions[1]["diff"]


def test_history_with_a_forged_signature_is_flagged(keys: dict[str, PartyKeys]) -> None:
    """ATTACK: a KBS serving an update without the parties' quorum is shown NOT verified."""
    v1 = _signed(_agreement(keys, 1, None, True), keys)
    forged = SignedAgreement(agreement=_agreement(keys, 2, digest(v1.agreement).hex(), True))
    forged = forged.with_signature("alice", v1.signatures["alice"])  # a signature of v1
    versions = agreement_versions([v1, forged])
    assert versions[0]["signatures_verified"] is True
    assert versions[1]["signatures_verified"] is False and versions[1]["problem"]


def _entry(seq: int, kind: str, decision: str, subject: str = "s", **data: Any) -> AuditEntry:
    return AuditEntry(seq=seq, time=NOW - timedelta(seconds=60 - seq), kind=kind,
                      subject=subject, decision=decision, reasons=[], data=data,
                      prev_hash=bytes(32), hash=bytes([seq]) * 32, signature=b"\0" * 64)


def test_workloads_and_sessions_from_audit() -> None:
    entries = [
        _entry(1, "attestation", "accept", tee="emulated-sgx", role="client", party="bob",
               measurement="aa", status="affirming", emulated=True, enrollment_id="j1"),
        _entry(2, "attestation", "deny", tee="sgx", role="client", party="eve"),
        _entry(3, "attestation", "accept", tee="emulated-sgx", role="client", party="bob",
               measurement="aa", status="affirming", emulated=True, enrollment_id="j1"),
        _entry(4, "enrollment", "accept", party="bob", enrollment_id="j1", action="revoke"),
        _entry(5, "counter", "accept", "counter:session/s1", value=1, bound_digest="d1",
               measurement="mm"),
        _entry(6, "counter", "accept", "counter:compute/r1", value=1, bound_digest="x"),
    ]
    (w,) = workloads_from_audit(entries, NOW)
    assert (w["party"], w["attestations"], w["seq"], w["emulated"]) == ("bob", 2, 3, True)
    assert w["enrollment_revoked"] is True and w["age_seconds"] == 57
    assert sessions_from_audit(entries) == {
        "s1": {"session": "s1", "counter": {"1": "d1"}, "aggregator": "mm",
               "committed_at": "2026-12-07T11:59:05Z"},
    }


class _FakeClient:
    url = "https://kbs.example"

    def __init__(self, audit: list[AuditEntry], error: Exception | None = None) -> None:
        self._audit, self._error = audit, error
        self.heads = type("H", (), {"head": None})()

    def agreement_history(self) -> list[SignedAgreement]:
        return []

    def audit(self, after: AuditEntry | None = None) -> list[AuditEntry]:
        if self._error is not None:
            raise self._error
        start = 0 if after is None else after.seq
        return [e for e in self._audit if e.seq > start]


@pytest.mark.parametrize(("error", "state"), [
    (AuditChainError(3, "bad hash"), "broken"),
    (StateRollback("the KBS state was rolled back"), "rollback"),
])
def test_broken_or_rolled_back_audit_is_shown(error: Exception, state: str) -> None:
    """ATTACK: a tampered or rolled-back audit log is shown as such, never as verified."""
    source = DashboardSource(_FakeClient([], error), clock=lambda: NOW)  # type: ignore[arg-type]
    doc = source.snapshot()
    assert doc["audit_status"]["state"] == state and doc["audit"] == []
    source.close()


def test_progress_digest_not_in_the_kbs_counter_is_not_confirmed() -> None:
    """ATTACK: an aggregator (unauthenticated endpoint) reporting a round the KBS counter did
    not record, or with another model digest, gets no confirmation."""
    progress = {
        "format": PROGRESS_FORMAT, "session": "s1", "state": "running", "round": 2,
        "rounds": [
            {"round": 1, "clients": ["bob"], "seconds": 1.0, "digest": "d1",
             "metrics": {"eval_accuracy": 0.5}},
            {"round": 2, "clients": ["bob"], "seconds": 1.0, "digest": "forged",
             "metrics": {"eval_accuracy": 0.99}},
        ],
        "clients": ["bob"],
    }
    entries = [_entry(1, "counter", "accept", "counter:session/s1", value=1, bound_digest="d1",
                      measurement="mm"),
               _entry(2, "counter", "accept", "counter:session/s1", value=2, bound_digest="d2",
                      measurement="mm")]
    with MetricsServer(new_registry(), "127.0.0.1", 0,
                       documents={PROGRESS_PATH: lambda: progress}) as server:
        source = DashboardSource(_FakeClient(entries), [f"http://127.0.0.1:{server.port}"],
                                 clock=lambda: NOW)  # type: ignore[arg-type]
        doc = source.snapshot()
        source.close()
    (session,) = doc["sessions"]
    assert [r["confirmed"] for r in session["rounds"]] == [True, False]
    assert session["progress"]["reachable"] is True


def test_unreachable_aggregator_is_reported() -> None:
    source = DashboardSource(_FakeClient([]), ["http://127.0.0.1:9"], clock=lambda: NOW)  # type: ignore[arg-type]
    (session,) = source.snapshot()["sessions"]
    source.close()
    assert session["progress"]["reachable"] is False and session["progress"]["error"]


def test_app_headers_and_host_check() -> None:
    """ATTACK: a page of another site that rebinds its name to 127.0.0.1 sends its own Host:
    refused; every response forbids framing, inline script and foreign sources."""
    import httpx

    from teeflow.dashboard.app import make_dashboard_server
    from teeflow.kbs.api.server import BackgroundServer

    source = DashboardSource(_FakeClient([]), clock=lambda: NOW)  # type: ignore[arg-type]
    server = make_dashboard_server(source, party="bob", host="127.0.0.1", port=0)
    with BackgroundServer(server) as bg, httpx.Client(
        base_url=f"http://127.0.0.1:{bg.port}", timeout=10
    ) as http:
        page = http.get("/")
        assert page.status_code == 200 and b"/static/dashboard.js" in page.content
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        snap = http.get("/api/snapshot").json()
        assert snap["party"] == "bob" and snap["audit_status"]["state"] == "verified"
        script = http.get("/static/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert http.get("/static/..%2Fmodel.py").status_code == 404
        assert http.get("/static/missing.js").status_code == 404
        assert http.post("/api/snapshot").status_code == 405
        rebound = http.get("/api/snapshot", headers={"Host": "attacker.example"})
        assert rebound.status_code == 400
    source.close()


def test_polling_keeps_the_last_progress_after_the_aggregator_ends() -> None:
    """The poller reads progress without a browser; once the endpoint is gone (session over)
    the rounds read stay shown, marked unreachable."""
    import threading

    progress = {"format": PROGRESS_FORMAT, "session": "s1", "state": "running", "round": 1,
                "rounds": [{"round": 1, "clients": ["bob"], "seconds": 1.0, "digest": "d1",
                            "metrics": {"eval_loss": 0.5}}], "clients": ["bob"]}
    read = threading.Event()

    def produce() -> dict[str, Any]:
        read.set()
        return progress

    server = MetricsServer(new_registry(), "127.0.0.1", 0, documents={PROGRESS_PATH: produce})
    source = DashboardSource(_FakeClient([]), [f"http://127.0.0.1:{server.port}"],
                             clock=lambda: NOW, min_interval=0.05)  # type: ignore[arg-type]
    try:
        source.start_polling()
        assert read.wait(30)
        server.close()
        doc = source.snapshot()
    finally:
        source.close()
    (session,) = doc["sessions"]
    assert session["progress"]["reachable"] is False
    assert [r["round"] for r in session["rounds"]] == [1]
    assert session["rounds"][0]["confirmed"] is False  # the KBS counter has no step
