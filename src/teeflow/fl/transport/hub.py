"""The aggregator's hub of connected clients: streams, tasks, results (FL transport).

:class:`ClientHub` holds one :class:`ClientConnection` per connected party and turns the
message protocol (``teeflow_fl.proto``) into tasks: :meth:`ClientHub.submit` sends a task
(header, then the arrays in chunks) and returns a :class:`TaskHandle`;
:meth:`ClientHub.as_completed` yields handles as their results arrive, until a deadline. A
client whose stream ends (process killed, network lost) is removed at once and its pending
tasks fail with :class:`~teeflow.errors.FLError`; a result that arrives after its task was
abandoned is read and dropped.

:meth:`ClientHub.register` checks a Hello against the already verified peer certificate:
protocol ``teeflow-fl/1``, ``party`` equal to the certificate's party (else
``PERMISSION_DENIED``), the session's package digest (else ``FAILED_PRECONDITION``), a 32-byte
nonce; a second live stream for the same party is refused (``ALREADY_EXISTS``). It then queues
the signed Welcome (:mod:`teeflow.fl.transport.tls`) and the sealed package when asked.
The gRPC side is :mod:`teeflow.fl.transport.server`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import FLError, VerificationError
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.strategy.base import Config, Metrics, check_metrics
from teeflow.fl.transport.framing import (
    CHUNK_SIZE,
    DEFAULT_MAX_ARRAYS_BYTES,
    Reassembler,
    TransportError,
    encode_config,
    iter_chunks,
)
from teeflow.fl.transport.tls import (
    certificate_digest,
    sign_welcome,
    verify_reattested,
    welcome_message,
)
from teeflow.kbs.ca.authority import WorkloadIdentity

__all__ = [
    "PROTOCOL",
    "REATTEST",
    "ClientConnection",
    "ClientHub",
    "Refusal",
    "TaskHandle",
    "TaskOutcome",
]

PROTOCOL = "teeflow-fl/1"
_LOG = logging.getLogger("teeflow.fl.transport")
#: Task kind name of a re-attestation request (a Reattest message, not a Task; issue 11).
REATTEST = "reattest"
_KIND_NAMES: dict[int, str] = {
    pb.TASK_KIND_INIT: "init",
    pb.TASK_KIND_TRAIN: "train",
    pb.TASK_KIND_EVALUATE: "evaluate",
}


@dataclass(frozen=True)
class TaskOutcome:
    """A client's answer to one task.

    Attributes:
        party: the client's party (from its certificate).
        kind: ``init`` | ``train`` | ``evaluate``.
        num_examples: examples used (train) or evaluated (evaluate); 0 for init.
        metrics: checked metrics.
        arrays: canonical safetensors bytes (init/train), else None; SHA-256-checked.
        arrays_sha256: SHA-256 of ``arrays`` (32 bytes) or None.
    """

    party: str
    kind: str
    num_examples: int
    metrics: Metrics
    arrays: bytes | None
    arrays_sha256: bytes | None


class TaskHandle:
    """One task sent to one client; completed by the transport (thread-safe)."""

    def __init__(self, hub: ClientHub, party: str, task_id: int, kind: str) -> None:
        self.party = party
        self.task_id = task_id
        self.kind = kind
        self._hub = hub
        self._done = threading.Event()
        self._outcome: TaskOutcome | None = None
        self._error: str | None = None

    def done(self) -> bool:
        """True once a result, a failure or a disconnect was recorded."""
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Block until :meth:`done` or ``timeout`` seconds passed; return :meth:`done`."""
        return self._done.wait(max(timeout, 0.0))

    def _finish(self, outcome: TaskOutcome | None, error: str | None) -> None:
        with self._hub._cond:
            if self._done.is_set():
                return
            self._outcome, self._error = outcome, error
            self._done.set()
            self._hub._cond.notify_all()

    def outcome(self) -> TaskOutcome:
        """The result.

        Raises:
            FLError: the task failed, the client disconnected, or it is not done.
        """
        if not self._done.is_set():
            raise FLError(f"{self.kind} task of {self.party} is not done")
        if self._outcome is None:
            raise FLError(f"{self.kind} task of {self.party} failed: {self._error}")
        return self._outcome


@dataclass
class _Incoming:
    handle: TaskHandle
    header: Any
    metrics: Metrics
    assembler: Reassembler | None


@dataclass
class ClientConnection:
    """A live stream of one party."""

    party: str
    identity: WorkloadIdentity
    certificate: x509.Certificate
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    tasks: dict[int, TaskHandle] = field(default_factory=dict)
    incoming: _Incoming | None = None
    alive: bool = True
    error: str | None = None
    nonces: dict[int, bytes] = field(default_factory=dict)
    #: the certificate of the TLS channel (``certificate`` moves on with re-attestation)
    channel_certificate: x509.Certificate | None = None

    def __post_init__(self) -> None:
        if self.channel_certificate is None:
            self.channel_certificate = self.certificate


class ClientHub:
    """Connected clients and their tasks (module docstring).

    Args:
        session: session name (in Welcome).
        agreement_digest: the current agreement digest (32 bytes).
        package_digest: the session's package digest (32 bytes).
        ca: the federation CA certificate.
        certificate_pem, key: the aggregator's workload certificate and attested key.
        sealed_package: the sealed package sent to clients that ask, or None.
        max_arrays_bytes: bound on one received update (bytes).
        clock: time source (timezone-aware UTC).
        on_event: called with ``(event, fields)`` on connect/disconnect and for each result
            received (``update-received {party, kind, bytes}``; progress lines, metrics).
    """

    def __init__(
        self,
        *,
        session: str,
        agreement_digest: bytes,
        package_digest: bytes,
        ca: x509.Certificate,
        certificate_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        sealed_package: bytes | None = None,
        max_arrays_bytes: int = DEFAULT_MAX_ARRAYS_BYTES,
        clock: Callable[[], datetime] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.session = session
        self.agreement_digest = agreement_digest
        self.package_digest = package_digest
        self.ca = ca
        self.certificate_pem = certificate_pem
        self._key = key
        self.sealed_package = sealed_package
        self.max_arrays_bytes = max_arrays_bytes
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_event = on_event or (lambda event, fields: None)
        self._cond = threading.Condition()
        self._conns: dict[str, ClientConnection] = {}
        self._next_task = 1
        self.round = 0
        self.closed = False

    # -- queries ----------------------------------------------------------------------------

    def connected(self) -> list[str]:
        """Parties with a live stream, sorted."""
        with self._cond:
            return sorted(p for p, c in self._conns.items() if c.alive)

    def identity(self, party: str) -> WorkloadIdentity | None:
        """The attested identity of a connected party, or None."""
        with self._cond:
            conn = self._conns.get(party)
            return conn.identity if conn is not None else None

    def certificate(self, party: str) -> x509.Certificate | None:
        """The workload certificate a connected party currently stands on (its TLS one, or
        the newest it proved with Attested), or None."""
        with self._cond:
            conn = self._conns.get(party)
            return conn.certificate if conn is not None and conn.alive else None

    def renew(
        self,
        *,
        agreement_digest: bytes,
        certificate_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
    ) -> None:
        """Switch to the agreement in force and the aggregator's renewed certificate (issue
        11): new streams are checked against ``agreement_digest`` and welcomed (and, at their
        TLS handshake, served) with the new certificate."""
        with self._cond:
            self.agreement_digest = agreement_digest
            self.certificate_pem = certificate_pem
            self._key = key

    def reattest(self, party: str, round: int) -> TaskHandle:
        """Ask ``party`` to attest again to the KBS (a Reattest with a fresh 32-byte nonce);
        the handle completes when its Attested answer was verified and the connection now
        stands on the new certificate (:meth:`certificate`), or fails (TaskFailed, a
        certificate that does not verify, disconnect).

        Raises:
            FLError: the party is not connected.
        """
        import secrets

        nonce = secrets.token_bytes(32)
        with self._cond:
            conn = self._conns.get(party)
            if conn is None or not conn.alive:
                raise FLError(f"client {party} is not connected")
            task_id = self._next_task
            self._next_task += 1
            handle = TaskHandle(self, party, task_id, REATTEST)
            conn.tasks[task_id] = handle
            conn.nonces[task_id] = nonce
            conn.outbox.put(
                pb.ServerMessage(reattest=pb.Reattest(task_id=task_id, round=round, nonce=nonce))
            )
        return handle

    def drop(self, party: str, reason: str) -> None:
        """End ``party``'s stream with ``Goodbye(ok=false, reason="dropped: ...")`` (it no
        longer satisfies the agreement in force); it may attest again and reconnect."""
        with self._cond:
            conn = self._conns.get(party)
            if conn is None or not conn.alive:
                return
            bye = pb.Goodbye(ok=False, reason=f"dropped: {reason}"[:500], rounds=self.round)
            conn.outbox.put(pb.ServerMessage(goodbye=bye))
        self.disconnect(conn, f"dropped: {reason}"[:300])

    def wait_for(self, count: int, timeout: float) -> int:
        """Wait until ``count`` clients are connected or ``timeout`` seconds passed; return
        how many are connected."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                n = sum(1 for c in self._conns.values() if c.alive)
                left = end - time.monotonic()
                if n >= count or left <= 0:
                    return n
                self._cond.wait(min(left, 1.0))

    # -- tasks -----------------------------------------------------------------------------

    def submit(
        self,
        party: str,
        kind: int,
        round: int,
        config: Config,
        arrays: bytes | None,
        *,
        deadline_seconds: float,
    ) -> TaskHandle:
        """Send one task to ``party``: the header, then ``arrays`` in chunks.

        Raises:
            FLError: the party is not connected, or the config is invalid.
        """
        payload = arrays or b""
        header_config = encode_config(config)
        with self._cond:
            conn = self._conns.get(party)
            if conn is None or not conn.alive:
                raise FLError(f"client {party} is not connected")
            task_id = self._next_task
            self._next_task += 1
            handle = TaskHandle(self, party, task_id, _KIND_NAMES.get(kind, "?"))
            conn.tasks[task_id] = handle
            conn.outbox.put(
                pb.ServerMessage(
                    task=pb.Task(
                        task_id=task_id,
                        kind=kind,  # type: ignore[arg-type]
                        round=round,
                        config_json=header_config,
                        arrays_size=len(payload),
                        arrays_sha256=hashlib.sha256(payload).digest(),
                        deadline_seconds=deadline_seconds,
                    )
                )
            )
            for piece in iter_chunks(payload):
                conn.outbox.put(pb.ServerMessage(chunk=pb.Chunk(task_id=task_id, data=piece)))
        return handle

    def as_completed(self, handles: Iterable[TaskHandle], deadline: float) -> Iterator[TaskHandle]:
        """Yield each handle once it is done (completion order), until all are done or the
        monotonic-clock ``deadline`` passes; unfinished handles are then abandoned (their
        late results are dropped)."""
        pending = list(handles)
        while pending:
            with self._cond:
                ready = [h for h in pending if h.done()]
                if not ready:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.5))
                    continue
            for h in ready:
                pending.remove(h)
                yield h
        for h in pending:
            self.abandon(h, "missed the round deadline")

    def abandon(self, handle: TaskHandle, reason: str) -> None:
        """Give up on a task (its result, if it ever comes, is dropped)."""
        with self._cond:
            conn = self._conns.get(handle.party)
            if conn is not None:
                conn.tasks.pop(handle.task_id, None)
                if conn.incoming is not None and conn.incoming.handle is handle:
                    conn.incoming = None
        handle._finish(None, reason)

    def shutdown(self, *, ok: bool, reason: str, rounds: int) -> None:
        """Send Goodbye to every client and end their streams."""
        with self._cond:
            self.closed = True
            for conn in self._conns.values():
                conn.outbox.put(
                    pb.ServerMessage(goodbye=pb.Goodbye(ok=ok, reason=reason, rounds=rounds))
                )
                conn.outbox.put(None)

    # -- stream side ---------------------------------------------------------------------------

    def register(
        self, identity: WorkloadIdentity, cert: x509.Certificate, hello: Any
    ) -> ClientConnection:
        """Check a Hello against the certificate and register the stream.

        Raises:
            TransportError: bad protocol, nonce or package digest (``code`` attribute set
                for the gRPC status), party mismatch, duplicate stream.
        """
        if hello.protocol != PROTOCOL or len(hello.nonce) != 32:
            raise Refusal(
                "INVALID_ARGUMENT", "Hello must name protocol teeflow-fl/1 with a 32-byte nonce"
            )
        if identity.party is None or hello.party != identity.party:
            raise Refusal(
                "PERMISSION_DENIED",
                f"the client certificate is for party {identity.party!r}, "
                f"the Hello names {hello.party[:63]!r}",
            )
        if bytes(hello.package_digest) != self.package_digest:
            raise Refusal("FAILED_PRECONDITION", "the client attested for another package")
        with self._cond:
            self._check_open(identity.party)
        # Everything the stream must start with (Welcome, then the package) is queued
        # *before* the connection becomes visible to the session: a task submitted the moment
        # the party is registered can never overtake its Welcome.
        conn = ClientConnection(identity.party, identity, cert)
        message = welcome_message(
            nonce=bytes(hello.nonce),
            client_cert_sha256=certificate_digest(cert),
            session=self.session,
            agreement_digest=self.agreement_digest,
        )
        conn.outbox.put(
            pb.ServerMessage(
                welcome=pb.Welcome(
                    session=self.session,
                    agreement_digest=self.agreement_digest,
                    package_digest=self.package_digest,
                    aggregator_certificate=self.certificate_pem.decode("ascii"),
                    signature=sign_welcome(self._key, message),
                    chunk_size=CHUNK_SIZE,
                    max_arrays_bytes=self.max_arrays_bytes,
                )
            )
        )
        if hello.want_package and self.sealed_package is not None:
            data = self.sealed_package
            conn.outbox.put(
                pb.ServerMessage(
                    package=pb.Package(size=len(data), sha256=hashlib.sha256(data).digest())
                )
            )
            for piece in iter_chunks(data):
                conn.outbox.put(pb.ServerMessage(chunk=pb.Chunk(task_id=0, data=piece)))
        with self._cond:
            self._check_open(identity.party)
            self._conns[identity.party] = conn
            self._cond.notify_all()
        self._on_event(
            "client-connected", {"party": identity.party, "measurement": identity.measurement}
        )
        return conn

    def _check_open(self, party: str) -> None:
        """Refuse a new stream when the session is over or ``party`` is connected (lock held)."""
        if self.closed:
            raise Refusal("FAILED_PRECONDITION", "the session is over")
        old = self._conns.get(party)
        if old is not None and old.alive:
            raise Refusal("ALREADY_EXISTS", f"party {party} is already connected")

    def disconnect(self, conn: ClientConnection, reason: str) -> None:
        """Mark a stream dead and fail its pending tasks."""
        with self._cond:
            if not conn.alive:
                return
            conn.alive = False
            if self._conns.get(conn.party) is conn:
                del self._conns[conn.party]
            pending = list(conn.tasks.values())
            conn.tasks.clear()
            conn.incoming = None
            conn.outbox.put(None)
            self._cond.notify_all()
        for handle in pending:
            handle._finish(None, f"client disconnected ({reason})")
        if not self.closed:
            self._on_event("client-disconnected", {"party": conn.party, "reason": reason})

    def receive(self, conn: ClientConnection, message: Any) -> None:
        """Handle one client message.

        Raises:
            TransportError: a protocol violation (the stream is then closed).
        """
        body = message.WhichOneof("body")
        if body == "result":
            self._on_result(conn, message.result)
        elif body == "chunk":
            self._on_chunk(conn, message.chunk)
        elif body == "failed":
            with self._cond:
                handle = conn.tasks.pop(message.failed.task_id, None)
                conn.nonces.pop(message.failed.task_id, None)
            if handle is not None:
                handle._finish(None, message.failed.reason[:500])
        elif body == "attested":
            self._on_attested(conn, message.attested)
        else:
            raise TransportError(f"unexpected client message {body!r}")

    def _on_attested(self, conn: ClientConnection, msg: Any) -> None:
        """A client's answer to Reattest: verified (:func:`~teeflow.fl.transport.tls.
        verify_reattested`) against the agreement in force; the connection then stands on
        the new certificate. An answer to no pending request is ignored."""
        with self._cond:
            handle = conn.tasks.get(msg.task_id)
            nonce = conn.nonces.pop(msg.task_id, None)
            if handle is None or handle.kind != REATTEST or nonce is None:
                return
            conn.tasks.pop(msg.task_id, None)
            agreement_digest = self.agreement_digest
        try:
            identity, cert = verify_reattested(
                certificate_pem=str(msg.certificate),
                signature=bytes(msg.signature),
                ca=self.ca,
                now=self._clock(),
                nonce=nonce,
                old_cert=conn.channel_certificate or conn.certificate,
                session=self.session,
                agreement_digest=agreement_digest,
                party=conn.party,
            )
        except VerificationError as exc:
            handle._finish(None, f"re-attestation refused: {exc}")
            return
        with self._cond:
            conn.identity, conn.certificate = identity, cert
        handle._finish(TaskOutcome(conn.party, REATTEST, 0, {}, None, None), None)

    def _on_result(self, conn: ClientConnection, header: Any) -> None:
        if conn.incoming is not None:
            raise TransportError("a new result started before the previous one completed")
        with self._cond:
            handle = conn.tasks.get(header.task_id)
        try:
            metrics = check_metrics(dict(header.metrics), who=f"result of {conn.party}")
        except FLError as exc:
            if handle is not None:
                with self._cond:
                    conn.tasks.pop(header.task_id, None)
                handle._finish(None, str(exc))
            metrics = {}
            handle = None
        wants_arrays = handle is not None and handle.kind in ("init", "train")
        size = int(header.arrays_size)
        if handle is not None and not wants_arrays and size:
            raise TransportError("an evaluate result carries no arrays")
        digest = bytes(header.arrays_sha256) if size else hashlib.sha256(b"").digest()
        assembler = Reassembler(size, digest, max_bytes=self.max_arrays_bytes)
        if handle is None:  # late or refused: read and drop its chunks
            conn.incoming = _Incoming(
                TaskHandle(self, conn.party, 0, "dropped"), header, {}, assembler
            )
        else:
            conn.incoming = _Incoming(handle, header, metrics, assembler)
        if assembler.complete:
            self._complete(conn)

    def _on_chunk(self, conn: ClientConnection, chunk: Any) -> None:
        incoming = conn.incoming
        if (
            incoming is None
            or incoming.assembler is None
            or chunk.task_id != incoming.header.task_id
        ):
            raise TransportError("chunk outside a result")
        if incoming.assembler.add(bytes(chunk.data)):
            self._complete(conn)

    def _complete(self, conn: ClientConnection) -> None:
        incoming = conn.incoming
        conn.incoming = None
        assert incoming is not None and incoming.assembler is not None
        data = incoming.assembler.result()
        handle = incoming.handle
        if handle.task_id == 0:
            return
        with self._cond:
            known = conn.tasks.pop(handle.task_id, None) is handle
        if not known:
            return
        has_arrays = handle.kind in ("init", "train")
        self._on_event(
            "update-received", {"party": conn.party, "kind": handle.kind, "bytes": len(data)}
        )
        num = int(incoming.header.num_examples)
        if handle.kind == "train" and not 1 <= num <= 2**53 - 1:
            handle._finish(None, "num_examples out of range")
            return
        handle._finish(
            TaskOutcome(
                party=conn.party,
                kind=handle.kind,
                num_examples=num,
                metrics=incoming.metrics,
                arrays=data if has_arrays else None,
                arrays_sha256=incoming.assembler.sha256 if has_arrays else None,
            ),
            None,
        )


class Refusal(TransportError):
    """A Hello refused with the gRPC status ``status`` (a ``grpc.StatusCode`` name)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
