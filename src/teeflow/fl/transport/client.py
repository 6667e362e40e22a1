"""The client's side of the FL transport: dial out, authenticate the aggregator, run tasks.

:class:`AggregatorStream` opens one gRPC channel to the aggregator (mutual TLS,
:mod:`teeflow.fl.transport.tls`), waits (bounded) until the TLS connection is ready, opens the
``Connect`` stream and sends Hello (its party, a fresh 32-byte nonce, the package digest it
attested for). It then requires a Welcome whose aggregator certificate and signature verify
(:func:`~teeflow.fl.transport.tls.verify_welcome`), for the expected session (if given),
agreement and package. Afterwards :meth:`AggregatorStream.tasks` yields :class:`IncomingTask`
(arrays reassembled and SHA-256-checked, config parsed) until Goodbye. The client never opens
a port. :meth:`AggregatorStream.open` retries transient failures (the stream breaks or ends
before the Welcome, ``UNAVAILABLE``...) with exponential backoff until its overall deadline;
refusals and identity failures are final.

Errors: :class:`~teeflow.fl.transport.framing.TransportError` for refusals (with the gRPC
status the aggregator gave) and protocol violations; :class:`~teeflow.errors.VerificationError`
when the aggregator does not prove its identity.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import FLError, VerificationError
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.proto import teeflow_fl_pb2_grpc as _pb_grpc
from teeflow.fl.strategy.base import Config, check_metrics
from teeflow.fl.transport.framing import (
    DEFAULT_MAX_ARRAYS_BYTES,
    MAX_MESSAGE_BYTES,
    Reassembler,
    TransportError,
    decode_config,
    iter_chunks,
)
from teeflow.fl.transport.server import PROTOCOL
from teeflow.fl.transport.tls import (
    certificate_digest,
    channel_credentials,
    channel_options,
    load_certificate,
    reattest_message,
    sign_welcome,
    verify_welcome,
)
from teeflow.kbs.ca.authority import WorkloadIdentity

pb_grpc: Any = _pb_grpc  # generated code is untyped

__all__ = ["AggregatorStream", "IncomingTask", "RefusedByAggregator", "Welcome"]

_LOG = logging.getLogger("teeflow.fl.transport")

_KINDS: dict[int, str] = {
    pb.TASK_KIND_INIT: "init",
    pb.TASK_KIND_TRAIN: "train",
    pb.TASK_KIND_EVALUATE: "evaluate",
}


@dataclass(frozen=True)
class Welcome:
    """What the aggregator proved in its Welcome."""

    session: str
    identity: WorkloadIdentity
    chunk_size: int


@dataclass(frozen=True)
class IncomingTask:
    """One task from the aggregator.

    Attributes:
        task_id: id to answer with.
        kind: ``init`` | ``train`` | ``evaluate`` | ``reattest`` (attest again to the KBS
            and answer with :meth:`AggregatorStream.send_attested`; issue 11).
        round: round number (0 for init).
        config: the parsed config (empty for ``reattest``).
        arrays: canonical safetensors bytes of the global model (train/evaluate) or None.
        deadline_seconds: the aggregator's round deadline (informational).
        nonce: the aggregator's 32-byte nonce of a ``reattest``, else None.
    """

    task_id: int
    kind: str
    round: int
    config: Config
    arrays: bytes | None
    deadline_seconds: float
    nonce: bytes | None = None


class AggregatorStream:
    """One client connection (module docstring).

    Args:
        address: ``HOST:PORT`` of the aggregator.
        certificate_pem, key: this client's workload certificate and attested key.
        ca: the federation CA certificate (from the KBS pin).
        party: this client's party (must be its certificate's).
        package_digest: the package digest it attested for (32 bytes).
        agreement_digest: the current agreement digest (32 bytes).
        session: expected session name, or None to accept the aggregator's.
        want_package: ask for the sealed package after Welcome.
        max_arrays_bytes: bound on a received model or package (bytes).
        clock: time source for certificate checks.
        backoff: ``(first, most)`` seconds to wait between connection attempts (doubling).
    """

    def __init__(
        self,
        address: str,
        *,
        certificate_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        ca: x509.Certificate,
        party: str,
        package_digest: bytes,
        agreement_digest: bytes,
        session: str | None = None,
        want_package: bool = False,
        max_arrays_bytes: int = DEFAULT_MAX_ARRAYS_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        clock: Callable[[], datetime] | None = None,
        backoff: tuple[float, float] = (0.25, 5.0),
    ) -> None:
        import grpc
        from cryptography.hazmat.primitives import serialization

        self._grpc = grpc
        self.address = address
        self._cert = x509.load_pem_x509_certificate(certificate_pem)
        self._ca = ca
        self.party = party
        self.package_digest = package_digest
        self.agreement_digest = agreement_digest
        self.session = session
        self._want_package = want_package
        self._max = max_arrays_bytes
        self._clock = clock or (lambda: datetime.now(UTC))
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self._channel = grpc.secure_channel(
            address,
            channel_credentials(certificate_pem, key, ca_pem),
            options=channel_options(max_message_bytes),
        )
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._responses: Any = None
        self._backoff = backoff
        self.attempts = 0
        self.sealed_package: bytes | None = None
        self.welcome: Welcome | None = None
        self.goodbye: Any = None

    @staticmethod
    def _requests(outbox: queue.Queue[Any]) -> Iterator[Any]:
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    def _next(self) -> Any:
        try:
            return next(self._responses, None)
        except self._grpc.RpcError as exc:
            raise _rpc_error(exc) from None

    def open(self, connect_timeout: float = 60.0) -> Welcome:
        """Connect, send Hello, check Welcome, receive the sealed package when asked — retried
        with exponential backoff (``backoff``) until ``connect_timeout`` seconds have passed in
        all, while the failure is transient: no connection yet, the stream broke or ended
        before the Welcome (and package) arrived, or the aggregator answered ``UNAVAILABLE``,
        ``CANCELLED``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED`` or ``ABORTED`` (or
        ``ALREADY_EXISTS`` after a broken attempt: the aggregator may still hold the old
        stream). Every attempt uses a fresh nonce; retries are logged (``teeflow.fl.transport``).

        Raises:
            TransportError: no connection within ``connect_timeout`` (e.g. the TLS handshake
                is refused), or the last transient failure at the deadline.
            RefusedByAggregator: the aggregator refused the Hello (``PERMISSION_DENIED``,
                ``ALREADY_EXISTS``, ``FAILED_PRECONDITION``, ``INVALID_ARGUMENT``...).
            VerificationError: the aggregator's certificate or signature does not verify, or
                it serves another session/agreement/package.
        """
        end = time.monotonic() + connect_timeout
        delay, most = self._backoff
        while True:
            self.attempts += 1
            try:
                return self._attempt(end, connect_timeout)
            except _Transient as exc:
                self._abandon_stream()
                left = end - time.monotonic()
                if left <= 0:
                    raise exc.error from None
                wait = min(delay, left)
                _LOG.warning(
                    "connecting to the aggregator at %s (attempt %d): %s; again in %.1f s",
                    self.address,
                    self.attempts,
                    exc.error,
                    wait,
                )
                time.sleep(wait)
                delay = min(delay * 2, most)

    def _abandon_stream(self) -> None:
        self._outbox.put(None)
        if self._responses is not None:
            self._responses.cancel()
        self._responses = None
        self._outbox = queue.Queue()
        self.sealed_package = None
        self.welcome = None

    def _attempt(self, end: float, connect_timeout: float) -> Welcome:
        grpc = self._grpc
        if self.attempts == 1:  # later attempts: the call waits for the channel (below)
            ready = grpc.channel_ready_future(self._channel)
            try:
                ready.result(timeout=max(end - time.monotonic(), 0))
            except grpc.FutureTimeoutError:
                ready.cancel()  # stop its connectivity polling (the channel is closed next)
                raise TransportError(
                    f"cannot connect to the aggregator at {self.address} within "
                    f"{connect_timeout:g} s (not listening, or the mutual TLS handshake was "
                    "refused)"
                ) from None
        nonce = os.urandom(32)
        outbox = self._outbox
        outbox.put(
            pb.ClientMessage(
                hello=pb.Hello(
                    protocol=PROTOCOL,
                    party=self.party,
                    nonce=nonce,
                    package_digest=self.package_digest,
                    want_package=self._want_package,
                )
            )
        )
        stub = pb_grpc.FederatedLearningStub(self._channel)
        self._responses = call = stub.Connect(self._requests(outbox), wait_for_ready=True)
        # bound the wait for Welcome (and package) by the overall deadline
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            call.cancel()

        timer = threading.Timer(max(end - time.monotonic(), 0.0), expire)
        timer.daemon = True
        timer.start()
        try:
            return self._handshake(nonce)
        except RefusedByAggregator as exc:
            if fired.is_set():
                raise _Transient(
                    TransportError(
                        f"no Welcome from the aggregator at {self.address} within "
                        f"{connect_timeout:g} s"
                    )
                ) from None
            # ALREADY_EXISTS after a broken attempt: the aggregator may not have noticed yet
            # that the previous stream of this client is gone
            if exc.status in _TRANSIENT or (exc.status == "ALREADY_EXISTS" and self.attempts > 1):
                raise _Transient(exc) from None
            raise
        finally:
            timer.cancel()

    def _first(self, what: str) -> Any:
        msg = self._next()
        if msg is None:
            raise _Transient(TransportError(f"the stream ended before the aggregator sent {what}"))
        return msg

    def _handshake(self, nonce: bytes) -> Welcome:
        first = self._first("its Welcome")
        if first.WhichOneof("body") != "welcome":
            raise TransportError("the aggregator did not answer with Welcome")
        w = first.welcome
        identity = verify_welcome(
            certificate_pem=w.aggregator_certificate,
            signature=bytes(w.signature),
            ca=self._ca,
            now=self._clock(),
            nonce=nonce,
            client_cert=self._cert,
            session=w.session,
            agreement_digest=self.agreement_digest,
        )
        if bytes(w.agreement_digest) != self.agreement_digest:
            raise VerificationError("the aggregator runs under another agreement")
        if bytes(w.package_digest) != self.package_digest:
            raise VerificationError("the aggregator runs another package")
        if self.session is not None and w.session != self.session:
            raise VerificationError(
                f"the aggregator runs session {w.session!r}, not {self.session!r}"
            )
        if not 1 <= w.chunk_size <= (64 << 20):
            raise TransportError("the aggregator announced an invalid chunk size")
        welcome = Welcome(w.session, identity, int(w.chunk_size))
        if self._want_package:
            header = self._first("the package")
            if header.WhichOneof("body") != "package":
                raise TransportError("the aggregator has no sealed package to send")
            try:
                self.sealed_package = self._read_payload(
                    0, int(header.package.size), bytes(header.package.sha256)
                )
            except _StreamEnded as exc:
                raise _Transient(exc) from None
        self.welcome = welcome
        return welcome

    def _read_payload(self, task_id: int, size: int, sha256: bytes) -> bytes:
        assembler = Reassembler(size, sha256, max_bytes=self._max, chunk_size=64 << 20)
        while not assembler.complete:
            msg = self._next()
            if msg is None:
                raise _StreamEnded("payload interrupted: the stream ended")
            if msg.WhichOneof("body") != "chunk" or msg.chunk.task_id != task_id:
                raise TransportError("payload interrupted")
            assembler.add(bytes(msg.chunk.data))
        return assembler.result()

    def tasks(self) -> Iterator[IncomingTask]:
        """Tasks until Goodbye (then :attr:`goodbye` is set) or the stream ends.

        Raises:
            TransportError: the stream broke or the aggregator broke the protocol.
            ParseError: an invalid config.
        """
        if self.welcome is None:
            raise FLError("open() first")
        while True:
            msg = self._next()
            if msg is None:
                return
            body = msg.WhichOneof("body")
            if body == "goodbye":
                self.goodbye = msg.goodbye
                return
            if body == "reattest":
                r = msg.reattest
                if len(r.nonce) != 32:
                    raise TransportError("Reattest without a 32-byte nonce")
                yield IncomingTask(int(r.task_id), "reattest", int(r.round), {}, None, 0.0,
                                   bytes(r.nonce))
                continue
            if body != "task":
                raise TransportError(f"unexpected message {body!r} outside a task")
            t = msg.task
            kind = _KINDS.get(t.kind)
            if kind is None:
                raise TransportError("unknown task kind")
            size = int(t.arrays_size)
            arrays = self._read_payload(t.task_id, size, bytes(t.arrays_sha256)) if size else None
            yield IncomingTask(
                task_id=int(t.task_id),
                kind=kind,
                round=int(t.round),
                config=decode_config(t.config_json),
                arrays=arrays,
                deadline_seconds=float(t.deadline_seconds),
            )

    def send_result(
        self,
        task_id: int,
        *,
        num_examples: int,
        metrics: Mapping[str, float],
        arrays: bytes | None = None,
    ) -> None:
        """Send a result header, then ``arrays`` in chunks.

        Raises:
            FLError: invalid metrics.
        """
        import hashlib

        checked = check_metrics(metrics, who="result")
        payload = arrays or b""
        self._outbox.put(
            pb.ClientMessage(
                result=pb.Result(
                    task_id=task_id,
                    num_examples=num_examples,
                    metrics=checked,
                    arrays_size=len(payload),
                    arrays_sha256=hashlib.sha256(payload).digest(),
                )
            )
        )
        chunk = self.welcome.chunk_size if self.welcome else 1 << 20
        for piece in iter_chunks(payload, chunk):
            self._outbox.put(pb.ClientMessage(chunk=pb.Chunk(task_id=task_id, data=piece)))

    def send_attested(
        self, task: IncomingTask, certificate_pem: bytes, key: ec.EllipticCurvePrivateKey
    ) -> None:
        """Answer a ``reattest`` task with the new workload certificate, signed by its key
        over :func:`~teeflow.fl.transport.tls.reattest_message` (this connection's
        certificate, the nonce, session and agreement digest).

        Raises:
            FLError: not a reattest task, or no Welcome yet. VerificationError: not a
                certificate.
        """
        if task.kind != "reattest" or task.nonce is None or self.welcome is None:
            raise FLError("send_attested answers a reattest task after Welcome")
        new = load_certificate(certificate_pem)
        message = reattest_message(
            nonce=task.nonce,
            old_cert_sha256=certificate_digest(self._cert),
            new_cert_sha256=certificate_digest(new),
            session=self.welcome.session,
            agreement_digest=self.agreement_digest,
        )
        self._outbox.put(
            pb.ClientMessage(
                attested=pb.Attested(
                    task_id=task.task_id,
                    certificate=certificate_pem.decode("ascii"),
                    signature=sign_welcome(key, message),
                )
            )
        )

    def send_failure(self, task_id: int, reason: str) -> None:
        """Tell the aggregator this task failed (``reason`` ≤ 500 characters, no secrets)."""
        self._outbox.put(
            pb.ClientMessage(failed=pb.TaskFailed(task_id=task_id, reason=reason[:500]))
        )

    def status(self, timeout: float = 10.0) -> Any:
        """The aggregator's ``Status`` reply (session, round, clients, loaded modules).

        Raises:
            TransportError: the call failed.
        """
        stub = pb_grpc.FederatedLearningStub(self._channel)
        try:
            return stub.Status(pb.StatusRequest(), timeout=timeout)
        except self._grpc.RpcError as exc:
            raise _rpc_error(exc) from None

    def close(self) -> None:
        """End the stream (half-close: the aggregator sees a clean end) and close the channel
        (which cancels whatever is still in flight). Prompt: nothing here waits on the peer."""
        self._outbox.put(None)
        self._channel.close()

    def __enter__(self) -> AggregatorStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StreamEnded(TransportError):
    """The stream ended in the middle of a payload."""


class _Transient(Exception):
    """A connection attempt failed in a way worth retrying (``error``: what to report)."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


#: gRPC statuses of a Hello that are worth another attempt (the aggregator was busy, the
#: connection broke, or the stream was cancelled by the attempt's deadline).
_TRANSIENT = frozenset(
    {"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}
)


class RefusedByAggregator(TransportError):
    """The aggregator ended the stream with a gRPC error status (``status`` attribute)."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"aggregator refused: {status}: {detail}")
        self.status = status


def _rpc_error(exc: Any) -> TransportError:
    code = exc.code() if hasattr(exc, "code") else None
    name = getattr(code, "name", "UNKNOWN")
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    return RefusedByAggregator(str(name), str(detail or "")[:500])
