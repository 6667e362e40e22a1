"""FL transport hand-shake robustness over real gRPC + mutual TLS on 127.0.0.1: a task submitted
the moment a party registers never overtakes its Welcome; the client retries transient
failures (a stream that ends before Welcome, UNAVAILABLE) with backoff within its deadline and
never retries refusals; the server bounds the wait for a Hello and logs what it drops."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from test_fl_transport import AGREEMENT, PACKAGE, Pki, stream

from teeflow.errors import FLError
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.proto import teeflow_fl_pb2_grpc as pb_grpc
from teeflow.fl.transport import hub as hub_module
from teeflow.fl.transport import server as server_module
from teeflow.fl.transport.client import RefusedByAggregator
from teeflow.fl.transport.framing import TransportError
from teeflow.fl.transport.server import ClientHub, TransportServer
from teeflow.fl.transport.tls import channel_credentials, channel_options
from teeflow.kbs.ca.authority import FederationCA


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(FederationCA.generate("study", now=datetime.now(UTC)))


@pytest.fixture()
def server(pki: Pki) -> Iterator[tuple[ClientHub, str]]:
    with _serve(pki) as served:
        yield served


def test_task_submitted_at_registration_never_overtakes_the_welcome(
    pki: Pki, server: tuple[ClientHub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator submits the init task as soon as a party is connected; the Welcome (and
    package) must already be queued then."""
    hub, address = server
    seen: list[list[str]] = []
    real_sign = hub_module.sign_welcome

    def sign_and_race(key: Any, message: bytes) -> bytes:
        # while the Welcome is being signed, the party must not be visible yet
        seen.append(hub.connected())
        with pytest.raises(FLError, match="not connected"):
            hub.submit("alice", pb.TASK_KIND_INIT, 0, {}, None, deadline_seconds=5)
        return real_sign(key, message)

    monkeypatch.setattr(hub_module, "sign_welcome", sign_and_race)
    submitted: list[Any] = []
    hub._on_event = lambda event, fields: submitted.append(  # the session reacts at once
        hub.submit(fields["party"], pb.TASK_KIND_INIT, 0, {}, None, deadline_seconds=5)
    )
    with stream(pki, address, "alice", want_package=True) as s:
        s.open(10)
        assert s.sealed_package == b"sealed-package-bytes" * 1000
        task = next(s.tasks())
        assert task.kind == "init" and task.task_id == submitted[0].task_id
    assert seen == [[]]


def _flaky(monkeypatch: pytest.MonkeyPatch, failures: list[str]) -> list[int]:
    """Make the first ``len(failures)`` Connect calls fail: ``"silent"`` returns without a
    message (what the old server did on a broken Hello), a status name aborts with it."""
    real = server_module.FlServicer.Connect
    calls = [0]

    def connect(self: Any, request_iterator: Any, context: Any) -> Iterator[Any]:
        calls[0] += 1
        if calls[0] <= len(failures):
            how = failures[calls[0] - 1]
            if how == "silent":
                return
            context.abort(getattr(grpc.StatusCode, how), f"test: {how}")
        yield from real(self, request_iterator, context)

    monkeypatch.setattr(server_module.FlServicer, "Connect", connect)
    return calls


@contextlib.contextmanager
def _serve(pki: Pki) -> Iterator[tuple[ClientHub, str]]:
    """A server made *after* patching (gRPC binds the servicer's methods when it is added)."""
    cert, key = pki.issue("aggregator", None)
    hub = ClientHub(
        session="s1",
        agreement_digest=AGREEMENT,
        package_digest=PACKAGE,
        ca=pki.ca.certificate,
        certificate_pem=cert,
        key=key,
        sealed_package=b"sealed-package-bytes" * 1000,
    )
    srv = TransportServer(hub, "127.0.0.1", 0, max_clients=4).start()
    try:
        yield hub, f"127.0.0.1:{srv.port}"
    finally:
        hub.shutdown(ok=True, reason="test over", rounds=0)
        srv.stop(0.5)


@pytest.mark.parametrize("failures", [["silent"], ["UNAVAILABLE", "silent"]])
def test_client_retries_transient_failures(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, failures: list[str]
) -> None:
    calls = _flaky(monkeypatch, failures)
    with _serve(pki) as (hub, address):
        _retried(pki, hub, address, calls, failures)


def _retried(pki: Pki, hub: ClientHub, address: str, calls: list[int], failures: list[str]) -> None:
    s = stream(pki, address, "alice", want_package=True)
    s._backoff = (0.01, 0.05)
    with s:
        welcome = s.open(30)
        assert welcome.session == "s1" and s.sealed_package == b"sealed-package-bytes" * 1000
        assert s.attempts == len(failures) + 1 == calls[0]
        assert hub.wait_for(1, 10) == 1


def test_transient_failures_stop_at_the_deadline(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    _flaky(monkeypatch, ["UNAVAILABLE"] * 1000)
    with _serve(pki) as (_, address):
        s = stream(pki, address, "alice")
        s._backoff = (0.05, 0.2)
        with s, pytest.raises(TransportError, match=r"UNAVAILABLE|no Welcome .* within 1\.5 s"):
            s.open(1.5)
    assert 2 <= s.attempts < 1000


def test_refusals_are_not_retried(pki: Pki, server: tuple[ClientHub, str]) -> None:
    _, address = server
    s = stream(pki, address, "bob", cert_party="alice")
    with s, pytest.raises(RefusedByAggregator) as refused:
        s.open(30)
    assert refused.value.status == "PERMISSION_DENIED" and s.attempts == 1


def test_session_over_is_refused_without_retry(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    hub.shutdown(ok=True, reason="over", rounds=0)
    s = stream(pki, address, "alice")
    with s, pytest.raises(RefusedByAggregator, match="session is over") as refused:
        s.open(30)
    assert refused.value.status == "FAILED_PRECONDITION" and s.attempts == 1


def test_server_bounds_the_wait_for_a_hello_and_logs_it(pki: Pki) -> None:
    cert, key = pki.issue("aggregator", None)
    hub = ClientHub(
        session="s1",
        agreement_digest=AGREEMENT,
        package_digest=PACKAGE,
        ca=pki.ca.certificate,
        certificate_pem=cert,
        key=key,
    )
    srv = TransportServer(hub, "127.0.0.1", 0, max_clients=2, hello_timeout=0.3).start()
    ccert, ckey = pki.issue("client", "alice")
    from cryptography.hazmat.primitives import serialization

    ca_pem = pki.ca.certificate.public_bytes(serialization.Encoding.PEM)
    channel = grpc.secure_channel(
        f"127.0.0.1:{srv.port}",
        channel_credentials(ccert, ckey, ca_pem),
        options=channel_options(1 << 20),
    )
    silent: queue.Queue[Any] = queue.Queue()

    def never() -> Iterator[Any]:  # a client that connects and never says Hello
        item = silent.get()
        if item is not None:
            yield item

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("teeflow.fl.transport.server")
    log.addHandler(handler)
    was_disabled, log.disabled = log.disabled, False

    def logged() -> bool:
        return any(
            "alice" in r.getMessage() and "no Hello within" in r.getMessage() for r in records
        )

    try:
        responses = pb_grpc.FederatedLearningStub(channel).Connect(never())
        with pytest.raises(grpc.RpcError) as ended:
            next(responses)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        done = threading.Event()
        for _ in range(200):  # the handler logs right after the cancel
            if logged():
                break
            done.wait(0.05)
        assert logged()
        assert hub.connected() == []
    finally:
        log.removeHandler(handler)
        log.disabled = was_disabled
        silent.put(None)
        channel.close()
        srv.stop(0.2)


def test_cannot_connect_reports_the_deadline(pki: Pki) -> None:
    s = stream(pki, "127.0.0.1:9", "alice")  # nothing listens on the discard port
    s._backoff = (0.05, 0.1)
    with s, pytest.raises(TransportError, match=r"cannot connect .* within 0\.5 s"):
        s.open(0.5)
