"""Re-attestation over the FL stream (issue 11), real gRPC + mutual TLS on 127.0.0.1 with a
federation CA made here: a client proves a fresh certificate on its live connection; forged
answers are refused; a renewed agreement and aggregator certificate apply to new streams; a
dropped client hears why."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import FLError
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.transport.client import AggregatorStream, IncomingTask, RefusedByAggregator
from teeflow.fl.transport.framing import TransportError
from teeflow.fl.transport.server import ClientHub, TransportServer
from teeflow.fl.transport.tls import certificate_digest, reattest_message, sign_welcome
from teeflow.kbs.ca.authority import FederationCA, WorkloadIdentity

AGREEMENT = bytes.fromhex("cd" * 32)
NEW_AGREEMENT = bytes.fromhex("ce" * 32)
PACKAGE = bytes.fromhex("ef" * 32)
WAIT = 30.0


@dataclass
class Pki:
    ca: FederationCA

    def issue(
        self, role: str, party: str | None, agreement: bytes = AGREEMENT
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        ident = WorkloadIdentity(
            role=role, party=party, measurement="ab" * 32, agreement_digest=agreement.hex(),
            tee="emulated-sgx", emulated=True,
        )
        cert = self.ca.issue(key.public_key(), ident, now=datetime.now(UTC))
        return cert.public_bytes(serialization.Encoding.PEM), key


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(FederationCA.generate("study", now=datetime.now(UTC)))


@pytest.fixture()
def server(pki: Pki) -> Iterator[tuple[ClientHub, str]]:
    cert, key = pki.issue("aggregator", None)
    hub = ClientHub(
        session="s1", agreement_digest=AGREEMENT, package_digest=PACKAGE,
        ca=pki.ca.certificate, certificate_pem=cert, key=key,
    )
    srv = TransportServer(hub, "127.0.0.1", 0, max_clients=8).start()
    try:
        yield hub, f"127.0.0.1:{srv.port}"
    finally:
        hub.shutdown(ok=True, reason="test over", rounds=0)
        srv.stop(0.5)


def connect(pki: Pki, address: str, party: str, agreement: bytes = AGREEMENT) -> AggregatorStream:
    cert, key = pki.issue("client", party, agreement)
    s = AggregatorStream(
        address, certificate_pem=cert, key=key, ca=pki.ca.certificate, party=party,
        package_digest=PACKAGE, agreement_digest=agreement,
    )
    s.open(WAIT)
    return s


def answer_with(s: AggregatorStream, reply: Callable[[IncomingTask], None]) -> threading.Thread:
    """Answer every reattest task of ``s`` with ``reply`` (in a thread)."""

    def run() -> None:
        with contextlib.suppress(TransportError):
            for task in s.tasks():
                if task.kind == "reattest":
                    reply(task)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_done(handle: object) -> None:
    end = time.monotonic() + WAIT
    while not handle.done() and time.monotonic() < end:  # type: ignore[attr-defined]
        time.sleep(0.02)


def test_fresh_certificate_replaces_the_connection_standing(
    pki: Pki, server: tuple[ClientHub, str]
) -> None:
    hub, address = server
    with connect(pki, address, "alice") as s:
        old = hub.certificate("alice")
        new_pem, new_key = pki.issue("client", "alice")
        answer_with(s, lambda task: s.send_attested(task, new_pem, new_key))
        h = hub.reattest("alice", 3)
        wait_done(h)
        assert h.outcome().kind == "reattest"
        now = hub.certificate("alice")
        assert now is not None and old is not None and now != old
        assert now.public_bytes(serialization.Encoding.PEM) == new_pem


def _forge(
    s: AggregatorStream,
    task: IncomingTask,
    cert_pem: bytes,
    signer: ec.EllipticCurvePrivateKey,
    old: x509.Certificate | None = None,
) -> None:
    message = reattest_message(
        nonce=task.nonce or b"",
        old_cert_sha256=certificate_digest(old or s._cert),
        new_cert_sha256=certificate_digest(x509.load_pem_x509_certificate(cert_pem)),
        session="s1",
        agreement_digest=AGREEMENT,
    )
    s._outbox.put(
        pb.ClientMessage(
            attested=pb.Attested(
                task_id=task.task_id, certificate=cert_pem.decode(),
                signature=sign_welcome(signer, message),
            )
        )
    )


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("other-party", "for party 'bob'"),
        ("wrong-key", "signature does not verify"),
        ("other-agreement", "agreement"),
        ("other-ca", "not signed by the federation CA"),
        ("other-connection", "signature does not verify"),
        ("aggregator-role", "role"),
    ],
)
def test_forged_reattestation_is_refused(
    pki: Pki, server: tuple[ClientHub, str], case: str, match: str
) -> None:
    """ATTACK: a client answers Reattest with a certificate that is not a fresh attestation of
    its own party under this agreement, bound to this connection."""
    hub, address = server
    with connect(pki, address, "alice") as s:
        before = hub.certificate("alice")
        other_ca = Pki(FederationCA.generate("study", now=datetime.now(UTC)))
        stranger_cert = x509.load_pem_x509_certificate(pki.issue("client", "alice")[0])

        def reply(task: IncomingTask) -> None:
            if case == "other-party":
                pem, key = pki.issue("client", "bob")
                _forge(s, task, pem, key)
            elif case == "wrong-key":
                pem, _ = pki.issue("client", "alice")
                _forge(s, task, pem, ec.generate_private_key(ec.SECP256R1()))
            elif case == "other-agreement":
                pem, key = pki.issue("client", "alice", NEW_AGREEMENT)
                _forge(s, task, pem, key)
            elif case == "other-ca":
                pem, key = other_ca.issue("client", "alice")
                _forge(s, task, pem, key)
            elif case == "other-connection":  # a fresh certificate signed for another channel
                pem, key = pki.issue("client", "alice")
                _forge(s, task, pem, key, old=stranger_cert)
            else:
                pem, key = pki.issue("aggregator", None)
                _forge(s, task, pem, key)

        answer_with(s, reply)
        h = hub.reattest("alice", 1)
        wait_done(h)
        with pytest.raises(FLError, match=match):
            h.outcome()
        assert hub.certificate("alice") == before  # the standing did not move


def test_refused_reattestation_is_reported(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    with connect(pki, address, "carol") as s:
        answer_with(s, lambda task: s.send_failure(task.task_id, "KBS said no"))
        h = hub.reattest("carol", 1)
        wait_done(h)
        with pytest.raises(FLError, match="KBS said no"):
            h.outcome()


def test_renewed_agreement_applies_to_new_streams(
    pki: Pki, server: tuple[ClientHub, str]
) -> None:
    """After an agreement update, a stream under the old agreement is refused and the
    aggregator serves (TLS) and signs (Welcome) with its renewed certificate."""
    hub, address = server
    cert, key = pki.issue("aggregator", None, NEW_AGREEMENT)
    hub.renew(agreement_digest=NEW_AGREEMENT, certificate_pem=cert, key=key)
    with pytest.raises(RefusedByAggregator):
        connect(pki, address, "alice")
    with connect(pki, address, "bob", NEW_AGREEMENT) as s:
        assert s.welcome is not None
        assert s.welcome.identity.agreement_digest == NEW_AGREEMENT.hex()


def test_dropped_client_hears_why(pki: Pki, server: tuple[ClientHub, str]) -> None:
    hub, address = server
    with connect(pki, address, "alice") as s:
        hub.drop("alice", "revoked build")
        assert list(s.tasks()) == []
        assert s.goodbye is not None and not s.goodbye.ok
        assert s.goodbye.reason == "dropped: revoked build"
    assert hub.connected() == []
