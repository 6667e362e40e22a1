"""The aggregator's gRPC server of the FL transport (``teeflow_fl.proto``).

Per stream (:meth:`FlServicer.Connect`): the peer certificate is checked first
(:func:`teeflow.fl.transport.tls.peer_identity_from_context`: federation CA, current agreement
digest, role ``client``) — a failure aborts with ``PERMISSION_DENIED`` before any message is
read. The first message must be a Hello (else ``INVALID_ARGUMENT``), sent within
``hello_timeout`` seconds: a stream that breaks or stays silent before its Hello is cancelled
and ends with ``UNAVAILABLE`` (clients retry that), never silently. :meth:`teeflow.fl.
transport.hub.ClientHub.register` checks the Hello and queues Welcome (+ package) before the
party becomes visible to the session; a reader thread then feeds the client's messages to the
hub while the handler streams the connection's outbox (Welcome, package, tasks, Goodbye).
Every refusal or drop is logged (logger ``teeflow.fl.transport.server``, WARNING) with the
party and peer address. ``Status`` answers any federation certificate with the session, round,
connected parties, the top-level modules loaded in this process (tests check that torch is
absent) and the peak RSS (``VmHWM``, :func:`teeflow.fl.memory.peak_rss_bytes`).

:class:`TransportServer` runs the servicer on ``grpc.server`` with explicit message bounds
(:data:`~teeflow.fl.transport.framing.MAX_MESSAGE_BYTES`), server keepalive (generous: a client
busy training on a loaded machine answers pings late), and one worker thread per stream
(``max_clients`` streams plus a few for ``Status``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

from cryptography import x509

from teeflow.errors import Error, FLError, VerificationError
from teeflow.fl.memory import peak_rss_bytes
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.proto import teeflow_fl_pb2_grpc as _pb_grpc
from teeflow.fl.transport.framing import MAX_MESSAGE_BYTES, TransportError
from teeflow.fl.transport.hub import (
    PROTOCOL,
    ClientConnection,
    ClientHub,
    Refusal,
    TaskHandle,
    TaskOutcome,
)
from teeflow.fl.transport.tls import peer_identity_from_context, server_credentials

_LOG = logging.getLogger("teeflow.fl.transport.server")
pb_grpc: Any = _pb_grpc  # generated code is untyped

__all__ = [
    "PROTOCOL",
    "ClientConnection",
    "ClientHub",
    "FlServicer",
    "TaskHandle",
    "TaskOutcome",
    "TransportServer",
]


#: Seconds a new stream may take to send its Hello (the aggregator passes its connect timeout).
DEFAULT_HELLO_TIMEOUT = 60.0
#: Seconds between server keepalive pings, and how long an unanswered ping is tolerated: a
#: client busy training on a loaded machine must not be dropped for a late ping ack.
KEEPALIVE_TIME = 60.0
KEEPALIVE_TIMEOUT = 60.0


class FlServicer(pb_grpc.FederatedLearningServicer):  # type: ignore[misc]
    """gRPC servicer over a :class:`ClientHub` (module docstring)."""

    def __init__(
        self,
        hub: ClientHub,
        *,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
    ) -> None:
        self.hub = hub
        self._hello_timeout = hello_timeout

    @property
    def _agreement(self) -> str:
        """The agreement in force (the hub's; it changes when the agreement is updated)."""
        return self.hub.agreement_digest.hex()

    def Connect(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        import grpc

        hub = self.hub
        peer = str(context.peer())[:80]
        try:
            identity, cert = peer_identity_from_context(
                context, hub.ca, now=hub._clock(), agreement_digest=self._agreement
            )
        except (VerificationError, Error) as exc:
            _LOG.warning("stream from %s refused: client certificate: %s", peer, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"client certificate refused: {exc}")
            return
        # a client that never sends its Hello must not hold a worker thread forever
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            context.cancel()

        timer = threading.Timer(self._hello_timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            first = next(request_iterator, None)
        except Exception as exc:  # RpcError: cancelled (Hello timeout) or connection lost
            timer.cancel()
            why = (
                f"no Hello within {self._hello_timeout:g} s"
                if expired.is_set()
                else f"the stream broke before its Hello ({type(exc).__name__})"
            )
            _LOG.warning("stream of %s from %s dropped: %s", identity.party, peer, why)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{why}; connect again")
            return
        timer.cancel()
        if first is None and expired.is_set():  # the cancel ended the stream without an error
            why = f"no Hello within {self._hello_timeout:g} s"
            _LOG.warning("stream of %s from %s dropped: %s", identity.party, peer, why)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{why}; connect again")
            return
        if first is None or first.WhichOneof("body") != "hello":
            _LOG.warning("stream of %s from %s refused: no Hello first", identity.party, peer)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
            return
        try:
            conn = hub.register(identity, cert, first.hello)
        except Refusal as exc:
            _LOG.warning("Hello of %s from %s refused: %s", identity.party, peer, exc)
            context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
            return
        context.add_callback(lambda: hub.disconnect(conn, "stream closed"))

        def reader() -> None:
            reason = "stream ended"
            try:
                for message in request_iterator:
                    hub.receive(conn, message)
            except TransportError as exc:
                conn.error = str(exc)
                reason = f"protocol error: {exc}"
            except Exception as exc:  # RpcError on cancellation: the client is gone
                reason = type(exc).__name__
            hub.disconnect(conn, reason)

        threading.Thread(target=reader, name=f"fl-reader-{conn.party}", daemon=True).start()
        while True:
            item = conn.outbox.get()
            if item is None:
                break
            yield item
        if conn.error is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, conn.error)

    def Status(self, request: Any, context: Any) -> Any:
        import grpc

        try:
            peer_identity_from_context(
                context,
                self.hub.ca,
                now=self.hub._clock(),
                agreement_digest=self._agreement,
                role=None,
            )
        except (VerificationError, Error) as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate refused: {exc}")
        modules = sorted({name.split(".", 1)[0] for name in list(sys.modules)})
        return pb.StatusReply(
            session=self.hub.session,
            round=self.hub.round,
            clients=self.hub.connected(),
            modules=modules,
            max_rss_bytes=peak_rss_bytes(),
        )


class TransportServer:
    """``grpc.server`` with TLS from :func:`~teeflow.fl.transport.tls.server_credentials`.

    Args:
        hub: the client hub.
        host, port: where to listen (port 0: ephemeral).
        max_clients: most simultaneous client streams (one worker thread each, plus 4 for
            ``Status`` calls and streams being refused).
        max_message_bytes: gRPC max send/receive message length.
        hello_timeout: seconds a new stream may take to send its Hello (then ``UNAVAILABLE``).
        keepalive_time, keepalive_timeout: seconds between server pings on an idle
            connection, and before an unanswered ping drops it.

    Raises:
        FLError: the address cannot be bound.
    """

    def __init__(
        self,
        hub: ClientHub,
        host: str,
        port: int,
        *,
        max_clients: int = 64,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        keepalive_time: float = KEEPALIVE_TIME,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        import grpc

        self.hub = hub
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ]
        workers = max_clients + 4
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fl-rpc"),
            options=options,
            maximum_concurrent_rpcs=workers,
        )
        pb_grpc.add_FederatedLearningServicer_to_server(
            FlServicer(hub, hello_timeout=hello_timeout),
            self._server,
        )
        creds = server_credentials(
            hub.certificate_pem,
            hub._key,
            _ca_pem(hub.ca),
            current=lambda: (hub.certificate_pem, hub._key),
        )
        shown = f"[{host}]" if ":" in host else host
        try:
            self.port: int = self._server.add_secure_port(f"{shown}:{port}", creds)
        except RuntimeError as exc:
            raise FLError(f"cannot listen on {shown}:{port}: {exc}") from None
        if not self.port:
            raise FLError(f"cannot listen on {shown}:{port}")
        self.host = host

    def start(self) -> TransportServer:
        """Start serving."""
        self._server.start()
        return self

    def stop(self, grace: float = 1.0) -> bool:
        """Stop: no new streams; in-flight streams get ``grace`` seconds to finish (the
        clients close theirs on Goodbye), then are cancelled. Returns whether the server shut
        down within ``grace`` + 1 seconds."""
        return bool(self._server.stop(grace).wait(grace + 1.0))


def _ca_pem(ca: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return ca.public_bytes(serialization.Encoding.PEM)
