"""FL transport over real gRPC + mutual TLS on 127.0.0.1, with certificates from a federation
CA made here (no KBS): who the peer is, framing of large payloads, disconnects, deadlines."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import FLError, VerificationError
from teeflow.fl.arrays import decode_arrays, encode_arrays
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.transport.client import AggregatorStream, RefusedByAggregator
from teeflow.fl.transport.framing import CHUNK_SIZE, TransportError
from teeflow.fl.transport.server import ClientHub, TransportServer
from teeflow.kbs.ca.authority import FederationCA, WorkloadIdentity

AGREEMENT = bytes.fromhex("cd" * 32)
PACKAGE = bytes.fromhex("ef" * 32)


@dataclass
class Pki:
    ca: FederationCA

    def issue(
        self, role: str, party: str | None, agreement: bytes = AGREEMENT
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        ident = WorkloadIdentity(
            role=role,
            party=party,
            measurement="ab" * 32,
            agreement_digest=agreement.hex(),
            tee="emulated-sgx",
            emulated=True,
        )
        cert = self.ca.issue(key.public_key(), ident, now=datetime.now(UTC))
        return cert.public_bytes(serialization.Encoding.PEM), key


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(FederationCA.generate("study", now=datetime.now(UTC)))


@pytest.fixture()
def server(pki: Pki) -> Iterator[tuple[ClientHub, str]]:
    cert, key = pki.issue("aggregator", None)
    events: list[tuple[str, dict[str, object]]] = []
    hub = ClientHub(
        session="s1",
        agreement_digest=AGREEMENT,
        package_digest=PACKAGE,
        ca=pki.ca.certificate,
        certificate_pem=cert,
        key=key,
        sealed_package=b"sealed-package-bytes" * 1000,
        on_event=lambda e, f: events.append((e, f)),
    )
    srv = TransportServer(hub, "127.0.0.1", 0, max_clients=8).start()
    try:
        yield hub, f"127.0.0.1:{srv.port}"
    finally:
        hub.shutdown(ok=True, reason="test over", rounds=0)
        srv.stop(0.5)


def stream(
    pki: Pki,
    address: str,
    party: str,
    *,
    role: str = "client",
    cert_party: str | None = None,
    agreement: bytes = AGREEMENT,
    want_package: bool = False,
) -> AggregatorStream:
    cert, key = pki.issue(role, cert_party if cert_party is not None else party, agreement)
    return AggregatorStream(
        address,
        certificate_pem=cert,
        key=key,
        ca=pki.ca.certificate,
        party=party,
        package_digest=PACKAGE,
        agreement_digest=AGREEMENT,
        want_package=want_package,
    )


def test_welcome_identity_and_package(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    with stream(pki, address, "alice", want_package=True) as s:
        welcome = s.open(10)
        assert welcome.session == "s1" and welcome.identity.role == "aggregator"
        assert s.sealed_package == b"sealed-package-bytes" * 1000
        assert hub.wait_for(1, 10) == 1
        assert hub.connected() == ["alice"]
        ident = hub.identity("alice")
        assert ident is not None and ident.party == "alice"


def test_party_comes_from_the_certificate(pki: Pki, server: tuple[ClientHub, str]) -> None:
    _, address = server
    with (
        stream(pki, address, "bob", cert_party="alice") as s,
        pytest.raises(RefusedByAggregator) as refused,
    ):
        s.open(10)
    assert refused.value.status == "PERMISSION_DENIED"


def test_other_roles_and_agreements_are_refused(pki: Pki, server: tuple[ClientHub, str]) -> None:
    _, address = server
    with (
        stream(pki, address, "alice", role="compute") as s,
        pytest.raises(RefusedByAggregator, match="PERMISSION_DENIED"),
    ):
        s.open(10)
    with (
        stream(pki, address, "alice", agreement=bytes(32)) as s,
        pytest.raises(RefusedByAggregator, match="another agreement"),
    ):
        s.open(10)


def test_second_stream_for_a_party_is_refused(pki: Pki, server: tuple[ClientHub, str]) -> None:
    _, address = server
    with stream(pki, address, "alice") as first:
        first.open(10)
        with (
            stream(pki, address, "alice") as second,
            pytest.raises(RefusedByAggregator, match="ALREADY_EXISTS"),
        ):
            second.open(10)


def test_certificate_from_another_ca_cannot_connect(server: tuple[ClientHub, str]) -> None:
    _, address = server
    other = Pki(FederationCA.generate("study", now=datetime.now(UTC)))
    cert, key = other.issue("client", "alice")
    s = AggregatorStream(
        address,
        certificate_pem=cert,
        key=key,
        ca=other.ca.certificate,
        party="alice",
        package_digest=PACKAGE,
        agreement_digest=AGREEMENT,
    )
    with s, pytest.raises(TransportError, match="cannot connect"):
        s.open(2)


def test_client_refuses_a_non_aggregator_server(pki: Pki) -> None:
    cert, key = pki.issue("client", "mallory")  # a client certificate serving "as aggregator"
    hub = ClientHub(
        session="s1",
        agreement_digest=AGREEMENT,
        package_digest=PACKAGE,
        ca=pki.ca.certificate,
        certificate_pem=cert,
        key=key,
    )
    srv = TransportServer(hub, "127.0.0.1", 0).start()
    try:
        with (
            stream(pki, f"127.0.0.1:{srv.port}", "alice") as s,
            pytest.raises(TransportError, match="cannot connect"),
        ):
            s.open(2)
    finally:
        srv.stop(0.2)


def _serve_tasks(s: AggregatorStream) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(TransportError):  # the test closes the channel
            serve()

    def serve() -> None:
        for task in s.tasks():
            if task.kind == "train":
                assert task.arrays is not None and task.config["lr"] == 0.5
                arrays = decode_arrays(task.arrays)
                out = {k: v + 1 for k, v in arrays.items()}
                s.send_result(
                    task.task_id, num_examples=7, metrics={"loss": 0.25}, arrays=encode_arrays(out)
                )
            elif task.kind == "evaluate":
                s.send_result(task.task_id, num_examples=3, metrics={"accuracy": 0.5})
            else:
                s.send_failure(task.task_id, "no init here")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_tasks_round_trip_with_chunked_arrays(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    big = {"w": np.arange(700_000, dtype=np.float32)}  # 2.8 MB: three chunks each way
    payload = encode_arrays(big)
    assert len(payload) > 2 * CHUNK_SIZE
    with stream(pki, address, "alice") as s:
        s.open(10)
        _serve_tasks(s)
        h = hub.submit("alice", pb.TASK_KIND_TRAIN, 1, {"lr": 0.5}, payload, deadline_seconds=9)
        done = list(hub.as_completed([h], time.monotonic() + 30))
        out = done[0].outcome()
        assert out.party == "alice" and out.num_examples == 7 and out.metrics == {"loss": 0.25}
        assert out.arrays is not None
        assert out.arrays_sha256 == hashlib.sha256(out.arrays).digest()
        np.testing.assert_array_equal(decode_arrays(out.arrays)["w"], big["w"] + 1)
        e = hub.submit("alice", pb.TASK_KIND_EVALUATE, 1, {}, payload, deadline_seconds=9)
        assert next(hub.as_completed([e], time.monotonic() + 30)).outcome().arrays is None
        f = hub.submit("alice", pb.TASK_KIND_INIT, 0, {}, None, deadline_seconds=9)
        failed = next(hub.as_completed([f], time.monotonic() + 30))
        with pytest.raises(FLError, match="no init here"):
            failed.outcome()


def test_disconnect_fails_pending_tasks(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    s = stream(pki, address, "carol")
    s.open(10)
    h = hub.submit("carol", pb.TASK_KIND_TRAIN, 1, {}, b"", deadline_seconds=9)
    s.close()  # the client goes away without answering
    done = list(hub.as_completed([h], time.monotonic() + 30))
    with pytest.raises(FLError, match="disconnected"):
        done[0].outcome()
    assert hub.wait_for(1, 0.01) == 0 and hub.connected() == []
    with pytest.raises(FLError, match="not connected"):
        hub.submit("carol", pb.TASK_KIND_TRAIN, 1, {}, b"", deadline_seconds=9)


def test_deadline_abandons_silent_clients(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    with stream(pki, address, "bob") as s:
        s.open(10)  # connected, but never answers
        h = hub.submit("bob", pb.TASK_KIND_EVALUATE, 1, {}, b"", deadline_seconds=0)
        assert list(hub.as_completed([h], time.monotonic() + 0.2)) == []
        assert h.done()
        with pytest.raises(FLError, match="deadline"):
            h.outcome()


def test_status_lists_modules(pki: Pki, server: tuple[ClientHub, str]) -> None:
    _, address = server
    with stream(pki, address, "alice") as s:
        s.open(10)
        status = s.status()
    assert status.session == "s1" and "teeflow" in status.modules and status.max_rss_bytes > 0


def test_welcome_signature_binds_the_client_certificate(pki: Pki) -> None:
    from teeflow.fl.transport.tls import sign_welcome, verify_welcome, welcome_message

    cert, key = pki.issue("aggregator", None)
    client_cert, _ = pki.issue("client", "alice")
    other_cert, _ = pki.issue("client", "bob")
    from teeflow.fl.transport.tls import certificate_digest, load_certificate

    nonce = b"n" * 32
    msg = welcome_message(
        nonce=nonce,
        client_cert_sha256=certificate_digest(load_certificate(client_cert)),
        session="s1",
        agreement_digest=AGREEMENT,
    )
    sig = sign_welcome(key, msg)
    args = dict(
        certificate_pem=cert.decode(),
        signature=sig,
        ca=pki.ca.certificate,
        now=datetime.now(UTC),
        nonce=nonce,
        session="s1",
        agreement_digest=AGREEMENT,
    )
    assert verify_welcome(client_cert=load_certificate(client_cert), **args).role == "aggregator"
    with pytest.raises(VerificationError, match="signature"):
        verify_welcome(client_cert=load_certificate(other_cert), **args)
    with pytest.raises(VerificationError):
        verify_welcome(
            client_cert=load_certificate(client_cert),
            **{**args, "certificate_pem": client_cert.decode()},
        )
