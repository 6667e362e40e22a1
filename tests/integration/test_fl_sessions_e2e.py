"""The aggregator service end to end: party-signed session requests over HTTPS, sessions run one
after another by one service, logs followed, a running session stopped; attacks refused.

One module-scoped study (in-process KBS, emulated SGX) and one service; two parties (alice
operates the aggregator, bob), an outsider with keys of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teeflow.fl.control import ServiceUnverified, SessionControl, sealed_package_field
from teeflow.fl.service import ServiceOptions, SessionService
from teeflow.fl.sessions import SessionConflict, SessionRefused, SessionRequest
from teeflow.fl.simulation import LocalStudy
from teeflow.kbs.api.server import BackgroundServer
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.request_signing import RequestSignatureError, sign_request
from teeflow.platform.selection import PlatformOptions

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"lr": 0.1, "epochs": 1, "model": "mlp"}


class Env:
    def __init__(self, study: LocalStudy, url: str, service: SessionService) -> None:
        self.study, self.url, self.service = study, url, service

    def control(self, party: str) -> SessionControl:
        return SessionControl(self.url, self.study.pin, self.study.keys[party],
                              self.study.agreement_digest)

    def clients(self, address: str) -> list[threading.Thread]:
        threads = []
        for i, p in enumerate(self.study.parties):
            t = threading.Thread(target=self.study.run_client, args=(p, i, address),
                                 daemon=True)
            t.start()
            threads.append(t)
        return threads


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("sessions")
    training = {"strategy": {"name": "fedavg"}, "rounds": 3, "min_clients": 2}
    with LocalStudy(tmp, package=REPO / "examples" / "mnist", parties=("alice", "bob"),
                    package_name="mnist", training=training) as study:
        options = ServiceOptions(pin=study.pin_path, enrollment=study.enroll("alice", "aggregator"),
                                 listen="127.0.0.1:0", state_dir=tmp / "service",
                                 platform=PlatformOptions("emulated-sgx"),
                                 metrics_listen="127.0.0.1:0")
        service = SessionService(options).start()
        try:
            with BackgroundServer(service.make_server()) as server:
                yield Env(study, server.url, service)
        finally:
            service.close()


def _run(env: Env, ctl: SessionControl, rounds: int, **kw: Any) -> tuple[str, list[str]]:
    sealed = sealed_package_field(env.study.sealed_package)
    info = ctl.start(SessionRequest(package="mnist", rounds=rounds, train_config=CONFIG,
                                    sealed_package=sealed, round_timeout=120, **kw))
    listening = next(e for e in ctl.follow(info.id, timeout=120) if e.event == "listening")
    threads = env.clients(f"127.0.0.1:{listening.fields['port']}")
    events = [e.event for e in ctl.follow(info.id, timeout=300)]
    for t in threads:
        t.join(60)
    return info.id, events


def test_two_sessions_run_one_after_another_without_restart(env: Env) -> None:
    with env.control("bob") as ctl:
        assert ctl.service()["role"] == "aggregator"
        first, events = _run(env, ctl, 1)
        assert "round" in events and events[-1] == "ended"
        _run(env, ctl, 2, name="second")
        done = ctl.get("second")
        assert (done.state, done.round, done.submitted_by) == ("done", 2, "bob")
        assert "eval_accuracy" in done.metrics
        assert [s.id for s in ctl.sessions()][:2] == ["second", first]
        assert (env.service.o.state_dir / "sessions" / "second" / "second.model").is_file()
        with pytest.raises(SessionConflict):
            ctl.start(SessionRequest(package="mnist", rounds=1, name="second"))


def test_stop_drops_a_queued_session_and_ends_a_running_one(env: Env) -> None:
    with env.control("alice") as alice, env.control("bob") as bob:
        running = alice.start(SessionRequest(package="mnist", rounds=3, name="stopme"))
        follow = alice.follow(running.id, timeout=120)
        next(e for e in follow if e.event == "listening")  # no client comes: it waits
        queued = bob.start(SessionRequest(package="mnist", rounds=1, name="queued"))
        assert bob.get(queued.id).state == "queued"
        assert bob.stop(queued.id).state == "stopped"
        alice.stop(running.id)
        rest = list(follow)  # ends by itself: the aggregator checks the stop every second
        end = alice.get(running.id)
        assert (end.state, end.stopped_by, end.round) == ("stopped", "alice", 0)
        assert "stopped by alice" in (end.reason or "")
        assert rest[-1].event == "ended"
        with pytest.raises(SessionConflict, match="already ended"):
            bob.stop(running.id)
        assert bob.get(queued.id).stopped_by == "bob"


def test_request_beyond_the_training_terms_is_refused(env: Env) -> None:
    with env.control("bob") as ctl:
        with pytest.raises(SessionRefused, match="at most 3"):
            ctl.start(SessionRequest(package="mnist", rounds=4))
        with pytest.raises(SessionRefused, match="below the agreed 2"):
            ctl.start(SessionRequest(package="mnist", rounds=1, min_clients=1))
        with pytest.raises(SessionRefused, match="not in the agreement"):
            ctl.start(SessionRequest(package="other", rounds=1))


def test_non_party_is_refused(env: Env, tmp_path: Path) -> None:
    outsider = PartyKeys.generate("mallory")
    ctl = SessionControl(env.url, env.study.pin, outsider, env.study.agreement_digest)
    with ctl, pytest.raises(RequestSignatureError, match="not a party key"):
        ctl.start(SessionRequest(package="mnist", rounds=1))
    # a key that claims to be bob's name but is not bob's key
    impostor = PartyKeys.generate("bob")
    ctl = SessionControl(env.url, env.study.pin, impostor, env.study.agreement_digest)
    with ctl, pytest.raises(RequestSignatureError):
        ctl.sessions()


def _raw(env: Env) -> httpx.Client:
    from teeflow.kbs.ca.tls import workload_client_context

    ctx = workload_client_context(env.study.pin.ca(), env.study.agreement_digest, "aggregator")
    return httpx.Client(base_url=env.url, verify=ctx, trust_env=False)


def test_unsigned_and_tampered_requests_are_refused(env: Env) -> None:
    with _raw(env) as http:
        resp = http.get("/v1/sessions")
        assert resp.status_code == 401
        assert resp.headers["content-type"] == "application/problem+json"
        body = json.dumps({"package": "mnist", "rounds": 1}).encode()
        request = http.build_request("POST", "/v1/sessions", content=body)
        sign_request(request, "bob", env.study.keys["bob"].sign_key)
        request.stream = httpx.ByteStream(body.replace(b'"rounds": 1', b'"rounds": 3'))
        assert http.send(request).status_code == 401  # body differs from its signed digest
        replay = http.build_request("GET", "/v1/sessions")
        sign_request(replay, "bob", env.study.keys["bob"].sign_key)
        assert http.send(replay).status_code == 200
        assert http.send(replay).status_code == 401  # the same nonce again


def test_control_client_refuses_a_server_that_is_not_the_aggregator(env: Env) -> None:
    # the KBS's TLS certificate is not a federation workload certificate of role aggregator
    ctl = SessionControl(env.study.kbs_url, env.study.pin, env.study.keys["bob"],
                         env.study.agreement_digest)
    with ctl, pytest.raises(ServiceUnverified):
        ctl.sessions()


def test_session_commands(env: Env) -> None:
    from typer.testing import CliRunner

    from teeflow.cli.main import app

    runner = CliRunner()
    common = ["--url", env.url, "--party", "bob", "--pin", str(env.study.pin_path)]

    def run(*args: str) -> Any:
        result = runner.invoke(app, [*args, *common, "--json"])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    started = run("session", "start", "--package", "mnist", "--rounds", "1", "--name", "cli1")
    assert started[0]["submitted_by"] == "bob"
    assert "cli1" in [s["id"] for s in run("session", "ls")[0]]
    assert run("session", "stop", "cli1")[0]["stopped_by"] == "bob"
    events = run("session", "logs", "cli1", "--follow")
    assert events[0]["event"] == "queued" and events[-1]["event"] == "ended"
    refused = runner.invoke(app, ["session", "start", "--package", "mnist", "--rounds", "9",
                                  *common])
    assert refused.exit_code != 0 and "at most 3" in str(refused.exception)


def test_aggregator_serve_command_answers_and_stops_on_sigterm(env: Env) -> None:
    import os
    import signal
    import subprocess
    import sys

    study = env.study
    argv = [sys.executable, "-m", "teeflow", "aggregator", "serve",
            "--enrollment", str(study.enroll("alice", "aggregator")),
            "--pin", str(study.pin_path), "--listen", "127.0.0.1:0",
            "--transport-listen", "127.0.0.1:0", "--state-dir", str(study.workdir / "cli-svc"),
            "--platform", "emulated-sgx", "--json"]
    environ = {**os.environ, "TEEFLOW_HOME": str(study.home), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=environ, text=True)
    try:
        assert proc.stdout is not None
        serving = json.loads(proc.stdout.readline())
        assert serving["event"] == "serving" and serving["role"] == "aggregator"
        ctl = SessionControl(serving["url"], study.pin, study.keys["bob"],
                             serving["agreement_digest"])
        with ctl:
            assert ctl.sessions() == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_dashboard_reads_the_service_and_metrics_count_its_sessions(env: Env) -> None:
    """The dashboard (``--service``) reads sessions with bob's signed requests from the attested
    service; each round is confirmed by the KBS counter. The service's ``/metrics`` counts the
    rounds it ran and its control requests (by route template) on its own listener."""
    from prometheus_client.parser import text_string_to_metric_families

    from teeflow.dashboard.model import DashboardSource
    from teeflow.kbs.client.sdk import KbsClient

    with env.control("bob") as ctl:
        sid, _ = _run(env, ctl, 2, name="watched")
    keys = env.study.keys["bob"]
    with KbsClient(None, env.study.pin, party=keys) as kbs:
        source = DashboardSource(kbs, services=[env.url], keys=keys)
        try:
            doc = source.snapshot()
        finally:
            source.close()
    (session,) = [s for s in doc["sessions"] if s["session"] == sid]
    assert session["progress"]["reachable"] is True and session["progress"]["state"] == "done"
    assert [r["round"] for r in session["rounds"]] == [0, 1, 2]
    assert [r["confirmed"] for r in session["rounds"][1:]] == [True, True]
    assert sorted(session["rounds"][2]["clients"]) == ["alice", "bob"]
    with _raw(env) as http:  # the control port serves no unsigned route
        assert http.get("/metrics").status_code in (401, 404)
    assert env.service.metrics_server is not None
    scrape = f"http://127.0.0.1:{env.service.metrics_server.port}/metrics"
    text = httpx.get(scrape, timeout=10).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("teeflow_fl_rounds_total", (("outcome", "committed"),))] >= 3
    assert samples[("teeflow_fl_clients_connected", ())] == 0  # the session is over
    routes = {dict(labels).get("route") for name, labels in samples
              if name == "teeflow_aggregator_requests_total"}
    assert "/v1/sessions/{sid}/events" in routes and sid not in str(routes)


def test_after_an_agreement_update_the_service_follows_without_a_restart(env: Env) -> None:
    # last in this module: it changes the agreement in force
    import time

    from teeflow.errors import FLError
    from teeflow.kbs.client.sdk import KbsClient
    from teeflow.kbs.policy.agreement import FederationAgreement, digest
    from teeflow.kbs.policy.signing import SignedAgreement

    study = env.study
    data = study.agreement.model_dump(mode="json", exclude_none=True)
    data.update(version=2, previous=study.agreement_digest,
                training={"strategy": {"name": "fedavg"}, "rounds": 4, "min_clients": 2})
    new = FederationAgreement.from_mapping(data)
    signed = SignedAgreement(agreement=new)
    for keys in study.keys.values():
        signed = signed.signed_by(keys)
    with KbsClient(None, study.pin) as kbs:
        kbs.submit_agreement(signed)
    new_digest = digest(new).hex()
    # the old agreement's client now refuses the service only once it has followed; the new
    # one is accepted once the service re-attested (it checks every 5 s)
    end = time.monotonic() + 60
    while True:
        ctl = SessionControl(env.url, study.pin, study.keys["bob"], new_digest)
        try:
            with ctl:
                assert ctl.service()["agreement_digest"] == new_digest
                info = ctl.start(SessionRequest(package="mnist", rounds=4, name="after-update"))
                assert info.rounds == 4  # the new training terms apply
                ctl.stop(info.id)
            break
        except (ServiceUnverified, FLError):
            if time.monotonic() > end:
                raise
            time.sleep(0.5)
    with pytest.raises(ServiceUnverified):
        env.control("bob").sessions()  # a party still on the old agreement
