"""The aggregator as a long-running attested service that runs party-submitted sessions.

``teeflow aggregator serve`` starts a :class:`SessionService`: it attests once as role
``aggregator`` (RCAR, its operator's *unscoped* enrollment) and gets a workload certificate
from the KBS; that certificate serves the control API over HTTPS (TLS 1.3, no client
certificates: every request is signed by a party, RFC 9421,
:mod:`teeflow.kbs.policy.request_signing`). Parties submit sessions
(:class:`~teeflow.fl.sessions.SessionRequest`); each is checked against the ``training``
section of the agreement in force (:func:`~teeflow.fl.sessions.check_request`) and queued.
One runner thread runs the queue *one session after another* — each as an
:class:`~teeflow.fl.aggregator.Aggregator` with its own attestation (claims naming the
session's package and checkpoint key), gRPC transport on ``transport_listen``, provenance
log, checkpoints and sealed model under ``state_dir/sessions/<id>`` — so the service never
restarts between sessions.

**Control API** (JSON; every route needs a party signature of the agreement in force, else
401; problems are RFC 7807 ``application/problem+json``)::

    POST /v1/sessions                  SessionRequest → 201 SessionInfo   (403: not allowed
                                       by the training terms; 409: name taken / queue full)
    GET  /v1/sessions                  → {"sessions": [SessionInfo, ...]}  (newest first)
    GET  /v1/sessions/{id}             → SessionInfo                       (404)
    GET  /v1/sessions/{id}/events?after=N&wait=S
                                       → {"events": [SessionEvent...], "next": M,
                                          "state": ...}  (long poll ≤ 30 s while running)
    POST /v1/sessions/{id}/stop        → SessionInfo (a queued session is dropped; a
                                       running one ends before its next round)
    GET  /v1/sessions/{id}/model       → the sealed model (application/octet-stream; only
                                       its recipients can open it; 409 until it is done)
    GET  /v1/sessions/{id}/provenance  → its signed provenance log (JSON lines)
    GET  /v1/service                   → {"role": "aggregator", "measurement", "agreement_digest",
                                          "transport": "host:port", "emulated"}

With ``metrics_listen`` a separate plain-HTTP listener serves ``GET /metrics`` (Prometheus:
``teeflow_fl_*`` of the sessions run, ``teeflow_aggregator_requests_total`` of this API;
``docs/metrics.md``): the control port itself stays party-signed only.

Any party of the agreement may start, list, read and stop sessions; the submitter and the
stopper are recorded (``submitted_by``, ``stopped_by``). Events are kept per session (at
most :data:`MAX_EVENTS`, oldest dropped) and the last :data:`MAX_SESSIONS` sessions.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from teeflow.errors import Error, FLError, ParseError
from teeflow.fl.aggregator import Aggregator, AggregatorOptions
from teeflow.fl.sessions import (
    SessionConflict,
    SessionEvent,
    SessionInfo,
    SessionNotFound,
    SessionPlan,
    SessionRequest,
    check_request,
)
from teeflow.fl.workload import fl_measurement, parse_listen
from teeflow.kbs.ca.authority import WorkloadIdentity
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.request_signing import (
    RequestVerifier,
    SignedRequest,
    agreement_party_keys,
)
from teeflow.observability.http import MetricsServer, instrument
from teeflow.observability.metrics import AggregatorMetrics, HttpMetrics, new_registry
from teeflow.platform.selection import PlatformOptions

__all__ = [
    "MAX_EVENTS",
    "MAX_QUEUED",
    "MAX_SESSIONS",
    "MAX_WAITERS",
    "PROBLEM_PREFIX",
    "ServiceOptions",
    "SessionService",
]

_LOG = logging.getLogger("teeflow.fl.service")
#: events kept per session; sessions kept; sessions waiting in the queue.
MAX_EVENTS = 10_000
MAX_SESSIONS = 100
MAX_QUEUED = 16
#: ``type`` URI prefix of the control API's RFC 7807 problems (an identifier, not a link)
PROBLEM_PREFIX = "https://teeflow.dev/fl/errors"
#: long polls that may wait at once (each holds a worker thread)
MAX_WAITERS = 16
_MAX_BODY = 48 << 20
_AGREEMENT_TTL = 5.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class ServiceOptions:
    """Options of ``teeflow aggregator serve`` (times in seconds).

    Attributes:
        pin: the pinned KBS; kbs_url: its URL (default the pin's).
        enrollment: token file of the operator's enrollment of role ``aggregator`` *without*
            a session scope (each session attests again with it).
        listen: ``host:port`` of the control API (HTTPS).
        transport_listen: ``host:port`` of the sessions' gRPC transport (clients dial it;
            port 0: a free port per session, reported as the session's ``address``).
        state_dir: checkpoints, provenance and sealed models (``sessions/<id>/``).
        platform: the attester; manifest: the workload manifest (default built-in);
        gpu: GPU attester name; seed: strategy seed.
        metrics_listen: ``host:port`` of the Prometheus ``/metrics`` listener (plain HTTP,
            not authenticated: loopback or the operator's monitoring network), None: none.
    """

    pin: Path
    enrollment: Path
    kbs_url: str | None = None
    listen: str = "127.0.0.1:8460"
    transport_listen: str = "127.0.0.1:0"
    state_dir: Path = Path("aggregator-service")
    platform: PlatformOptions = field(default_factory=PlatformOptions)
    manifest: Path | None = None
    gpu: str = "none"
    seed: int = 0
    metrics_listen: str | None = None


@dataclass
class _Session:
    info: dict[str, Any]
    plan: SessionPlan
    request: SessionRequest
    events: deque[SessionEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    seq: int = 0
    aggregator: Aggregator | None = None
    stop_reason: str | None = None

    def view(self) -> SessionInfo:
        return SessionInfo.model_validate(self.info)


class SessionService:
    """The session runner and its control API (module docstring).

    Call :meth:`start` (attests; raises the KBS's errors), then :meth:`make_server` for the
    HTTPS server, and :meth:`close` at the end (stops the running session, joins the runner).
    The methods :meth:`submit`, :meth:`sessions`, :meth:`get`, :meth:`events` and
    :meth:`stop` are what the routes call, with the verified party name.
    """

    def __init__(self, options: ServiceOptions) -> None:
        self.o = options
        self._lock = threading.Condition()
        self._sessions: dict[str, _Session] = {}
        self._queue: deque[str] = deque()
        self._closed = False
        self._counter = 0
        self._agreement: tuple[float, FederationAgreement, str] | None = None
        self._runner: threading.Thread | None = None
        self.certificate: x509.Certificate | None = None
        self.identity: WorkloadIdentity | None = None
        self._key: Any = None
        self._kbs_lock = threading.Lock()  # one KBS request at a time (state heads, RCAR)
        self.kbs: KbsClient | None = None
        self._ssl: ssl.SSLContext | None = None
        self._waiters = threading.BoundedSemaphore(MAX_WAITERS)
        self._registry = new_registry()  # served on metrics_listen (teeflow.observability)
        self.metrics = AggregatorMetrics(self._registry)
        self.metrics_server: MetricsServer | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> SessionService:
        """Attest as ``aggregator``, get the control certificate, start the runner thread.

        Raises:
            KbsError subclasses: the KBS refused attestation or the certificate.
            FLError: the KBS has no agreement; ParseError: the enrollment file.
        """
        from teeflow.kbs.policy.enrollment import load_enrollment
        from teeflow.platform.nvidia import gpu_attester_for

        o = self.o
        attester = o.platform.attester(fl_measurement("aggregator", o.manifest))
        self.kbs = KbsClient(o.kbs_url, o.pin, attester, enrollment=load_enrollment(o.enrollment),
                             gpu=gpu_attester_for(o.gpu))
        self._attest(self.agreement()[1])
        self._runner = threading.Thread(target=self._run_queue, name="sessions", daemon=True)
        self._runner.start()
        if o.metrics_listen is not None:
            host, port = parse_listen(o.metrics_listen)
            try:
                self.metrics_server = MetricsServer(self._registry, host, port)
            except OSError as exc:
                self.close()
                raise FLError(f"--metrics-listen {o.metrics_listen}: "
                              f"{exc.strerror or exc}") from None
        return self

    def _attest(self, agreement_digest: str) -> None:
        """Attest as ``aggregator`` and take the certificate the KBS issues (it names the
        agreement in force); a serving TLS context presents it from the next handshake."""
        from teeflow.kbs.ca.tls import load_credential

        assert self.kbs is not None
        with self._kbs_lock:
            self.kbs.attest("aggregator", {})
            cert_pem, key = self.kbs.get_certificate()
        cert = x509.load_pem_x509_certificate(cert_pem)
        identity = self.kbs.check_certificate(cert)
        if identity.agreement_digest != agreement_digest:
            raise FLError("the KBS certified the service under another agreement (changed "
                          "meanwhile?): it retries on its next check")
        if self._ssl is not None:
            load_credential(self._ssl, cert, key)
        self.certificate, self._key, self.identity = cert, key, identity

    def _follow_agreement(self) -> None:
        """Between sessions: after an agreement update, attest again so the control API's
        certificate names the agreement in force (parties' clients require it)."""
        try:
            _, d = self.agreement()
            if self.identity is not None and self.identity.agreement_digest != d:
                self._attest(d)
        except Error as exc:  # the KBS is unreachable or refused: keep serving, retry later
            _LOG.warning("re-attestation under the new agreement failed: %s", exc)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the running session (before its next round), drop the queue, join."""
        with self._lock:
            self._closed = True
            for sid in list(self._queue):
                self._end(self._sessions[sid], "stopped", "service shut down")
            self._queue.clear()
            for s in self._sessions.values():
                if s.aggregator is not None:
                    s.aggregator.stop("service shut down")
            self._lock.notify_all()
        if self._runner is not None:
            self._runner.join(timeout)
        if self.kbs is not None:
            self.kbs.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    def agreement(self) -> tuple[FederationAgreement, str]:
        """The agreement in force and its digest (hex), cached for 5 s (the request verifier
        asks for it per request: at most one KBS round trip per 5 s).

        Raises:
            FLError: the KBS has none; KbsError: the KBS is unreachable.
        """
        cached = self._agreement
        if cached is not None and time.monotonic() - cached[0] < _AGREEMENT_TTL:
            return cached[1], cached[2]
        assert self.kbs is not None
        with self._kbs_lock:
            signed = self.kbs.current_agreement()
        if signed is None:
            raise FLError("the KBS has no agreement")
        d = digest(signed.agreement).hex()
        self._agreement = (time.monotonic(), signed.agreement, d)
        return signed.agreement, d

    def party_keys(self) -> dict[str, Any]:
        """``{party: Ed25519 public key}`` of the agreement in force (request signatures)."""
        return agreement_party_keys(self.agreement()[0].parties)

    # -- the routes' operations ---------------------------------------------------------------

    def submit(self, request: SessionRequest, party: str) -> SessionInfo:
        """Check ``request`` (by ``party``) against the agreement in force and queue it.

        Raises:
            SessionRefused: not allowed by the training terms; SessionConflict: name taken,
            queue full or service closing; ParseError: bad sealed package.
        """
        agreement, agreement_digest = self.agreement()
        sealed = request.sealed_bytes()
        with self._lock:
            if self._closed:
                raise SessionConflict("the service is shutting down")
            self._counter += 1
            name = request.name or f"s{self._counter}-{datetime.now(UTC):%Y%m%d%H%M%S}"
            if name in self._sessions:
                raise SessionConflict(f"session {name} exists: choose another name")
            if len(self._queue) >= MAX_QUEUED:
                raise SessionConflict(f"{MAX_QUEUED} sessions are queued: try later")
            plan = check_request(request, agreement, name=name,
                                 agreement_digest=agreement_digest)
            folder = self.o.state_dir / "sessions" / name
            if sealed is not None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "package.sealed").write_bytes(sealed)
            info = {"id": name, "state": "queued", "submitted_by": party,
                    "package": plan.package, "rounds": plan.rounds,
                    "min_clients": plan.min_clients, "created": _now()}
            s = _Session(info, plan, request.model_copy(update={"sealed_package": None}))
            self._sessions[name] = s
            self._queue.append(name)
            self._trim()
            self._record(s, "queued", {"by": party, "package": plan.package,
                                       "rounds": plan.rounds})
            self._lock.notify_all()
            return s.view()

    def sessions(self) -> list[SessionInfo]:
        """Every kept session, newest first."""
        with self._lock:
            return [s.view() for s in reversed(self._sessions.values())]

    def get(self, sid: str) -> SessionInfo:
        """One session. Raises: SessionNotFound."""
        with self._lock:
            return self._find(sid).view()

    def events(self, sid: str, after: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """Events with ``seq > after``; waits up to ``wait`` seconds (≤ 30) for one while the
        session is queued or running — at most :data:`MAX_WAITERS` requests wait at once (a
        thread each), the others answer at once. Raises: SessionNotFound."""
        if wait > 0 and self._waiters.acquire(blocking=False):
            try:
                return self._events(sid, after, wait)
            finally:
                self._waiters.release()
        return self._events(sid, after, 0.0)

    def _events(self, sid: str, after: int, wait: float) -> dict[str, Any]:
        end = time.monotonic() + min(max(wait, 0.0), 30.0)
        with self._lock:
            s = self._find(sid)
            while s.seq <= after and s.info["state"] in ("queued", "running"):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            out = [e.model_dump() for e in s.events if e.seq > after]
            return {"events": out, "next": s.seq, "state": s.info["state"]}

    def stop(self, sid: str, party: str) -> SessionInfo:
        """Stop a session for ``party``: a queued one is dropped, a running one ends before
        its next round. Raises: SessionNotFound; SessionConflict: it already ended."""
        with self._lock:
            s = self._find(sid)
            state = s.info["state"]
            if state not in ("queued", "running"):
                raise SessionConflict(f"session {sid} already ended ({state})")
            s.info["stopped_by"] = party
            s.stop_reason = f"stopped by {party}"
            self._record(s, "stop-requested", {"by": party})
            if state == "queued":
                self._queue.remove(sid)
                self._end(s, "stopped", s.stop_reason)
            elif s.aggregator is not None:
                s.aggregator.stop(s.stop_reason)
            return s.view()

    def output(self, sid: str, kind: str) -> bytes:
        """The sealed model (``kind`` ``model``) or provenance log (``provenance``) of a
        finished session. Raises: SessionNotFound; SessionConflict: not done."""
        with self._lock:
            s = self._find(sid)
            if s.info["state"] != "done":
                raise SessionConflict(f"session {sid} has no model ({s.info['state']})")
        suffix = ".model" if kind == "model" else ".provenance.jsonl"
        path = self.o.state_dir / "sessions" / sid / f"{sid}{suffix}"
        try:
            return path.read_bytes()
        except OSError:
            raise SessionNotFound(f"session {sid}: its {kind} file is gone") from None

    # -- runner ---------------------------------------------------------------------------------

    def _find(self, sid: str) -> _Session:
        s = self._sessions.get(sid)
        if s is None:
            raise SessionNotFound(f"no session {sid[:64]!r}")
        return s

    def _trim(self) -> None:
        ended = [k for k, s in self._sessions.items() if s.info["state"] not in
                 ("queued", "running")]
        while len(self._sessions) > MAX_SESSIONS and ended:
            del self._sessions[ended.pop(0)]

    def _record(self, s: _Session, event: str, fields: dict[str, Any]) -> None:
        s.seq += 1
        s.events.append(SessionEvent(seq=s.seq, time=_now(), event=event,
                                     fields=json.loads(json.dumps(fields, default=str))))
        if event == "listening":
            host = self.o.transport_listen.rpartition(":")[0] or "127.0.0.1"
            s.info["address"] = f"{host}:{fields.get('port')}"
        elif event == "round":
            s.info["round"] = int(fields.get("round", 0))
            s.info["metrics"] = {k: float(v) for k, v in fields.items()
                                 if isinstance(v, int | float) and not isinstance(v, bool)
                                 and k not in ("round", "seconds")}
        self._lock.notify_all()

    def _end(self, s: _Session, state: str, reason: str) -> None:
        s.info.update(state=state, ended=_now(), reason=reason[:300])
        self._record(s, "ended", {"state": state, "reason": reason[:300]})
        self.metrics.clients_connected.set(0)  # the session's streams are closed

    def _emit_for(self, s: _Session) -> Callable[[str, dict[str, Any]], None]:
        def emit(event: str, fields: dict[str, Any]) -> None:
            with self._lock:
                self._record(s, event, fields)
            self.metrics.observe(event, fields)
        return emit

    def _run_queue(self) -> None:
        while True:
            self._follow_agreement()
            with self._lock:
                if not self._queue and not self._closed:
                    self._lock.wait(_AGREEMENT_TTL)
                    continue
                if self._closed:
                    return
                s = self._sessions[self._queue.popleft()]
                s.info.update(state="running", started=_now())
                s.aggregator = Aggregator(self._options(s), emit=self._emit_for(s))
            try:
                result = s.aggregator.run()
            except Error as exc:
                with self._lock:
                    stopped = s.stop_reason is not None
                    self._end(s, "stopped" if stopped else "failed",
                              s.stop_reason or f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # the service outlives a session's bug
                with self._lock:
                    self._end(s, "failed", f"internal error ({type(exc).__name__})")
            else:
                with self._lock:
                    self._end(s, "done", f"{result.rounds} rounds; model {result.model_path.name}")
            finally:
                s.aggregator = None

    def _options(self, s: _Session) -> AggregatorOptions:
        o, plan, req = self.o, s.plan, s.request
        folder = o.state_dir / "sessions" / plan.name
        sealed = folder / "package.sealed"
        return AggregatorOptions(
            pin=o.pin, session=plan.name, rounds=plan.rounds, min_clients=plan.min_clients,
            kbs_url=o.kbs_url, fraction_fit=plan.fraction_fit, strategy=plan.strategy,
            listen=o.transport_listen, state_dir=folder,
            package=sealed if sealed.exists() else None, package_ref=plan.package_digest,
            wait_clients=plan.wait_clients, connect_timeout=req.connect_timeout,
            round_timeout=req.round_timeout, train_config=dict(req.train_config),
            seed=o.seed, manifest=o.manifest, platform=o.platform, enrollment=o.enrollment,
            gpu=o.gpu,
        )

    # -- HTTPS ----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /v1/service``: the attested identity (public values)."""
        _, d = self.agreement()
        ident = self.identity
        return {"role": "aggregator", "measurement": None if ident is None else ident.measurement,
                "agreement_digest": d, "transport": self.o.transport_listen,
                "emulated": bool(ident is not None and ident.emulated)}

    def serve_in_background(self) -> Any:
        """Serve the control API in a daemon thread on ``listen`` (port 0: a free one);
        returns the started :class:`teeflow.kbs.api.server.BackgroundServer` (``.url``,
        ``.stop()``). Raises: KbsError: not started, or the server did not start."""
        from teeflow.kbs.api.server import BackgroundServer

        host, port = parse_listen(self.o.listen)
        return BackgroundServer(self.make_server(), host, port).start()

    def make_server(self, *, log_level: str = "warning") -> Any:
        """A uvicorn server of the control API on ``listen`` with the attested certificate
        (not started). Raises: KbsError: :meth:`start` not called."""
        import uvicorn

        from teeflow.errors import KbsError
        from teeflow.kbs.ca.tls import server_context

        if self.certificate is None or self._key is None:
            raise KbsError("start the service first")
        host, port = parse_listen(self.o.listen)
        config = uvicorn.Config(_create_app(self), host=host, port=port, log_level=log_level,
                                access_log=False, proxy_headers=False, server_header=False,
                                lifespan="off", timeout_graceful_shutdown=5)
        config.load()
        config.ssl = self._ssl = server_context(self.certificate, self._key)
        return uvicorn.Server(config)


def _problem(status: int, title: str, detail: str) -> Response:
    body = {"type": f"{PROBLEM_PREFIX}/{title.replace(' ', '')}", "title": title,
            "status": status, "detail": detail[:500]}
    return Response(json.dumps(body), status_code=status, media_type="application/problem+json")


def _create_app(service: SessionService) -> FastAPI:
    app = FastAPI(title="teeflow aggregator service", docs_url=None, redoc_url=None,
                  openapi_url=None)
    verifier = RequestVerifier(service.party_keys)
    instrument(app, HttpMetrics(service._registry, "aggregator"), expose=False)

    signed = verifier.dependency(max_body=_MAX_BODY)  # refusals: RequestSignatureError

    @app.exception_handler(Error)
    async def _error(_: Request, exc: Error) -> Response:
        status = int(getattr(exc, "status", 400 if isinstance(exc, ParseError) else 500))
        detail = str(exc) if status < 500 else type(exc).__name__
        return _problem(status, type(exc).__name__, detail)

    def dump(info: SessionInfo) -> dict[str, Any]:
        return info.model_dump()

    @app.get("/v1/service")
    async def svc(_: SignedRequest = Depends(signed)) -> dict[str, Any]:  # noqa: B008
        return await run_in_threadpool(service.info)

    @app.post("/v1/sessions", status_code=201)
    async def start(request: Request,
                    who: SignedRequest = Depends(signed)) -> dict[str, Any]:  # noqa: B008
        try:
            body = SessionRequest.model_validate_json(await request.body())
        except ValueError:
            raise ParseError("malformed session request (see docs/fl.md, control API)") from None
        return dump(await run_in_threadpool(service.submit, body, who.party))

    @app.get("/v1/sessions")
    async def ls(_: SignedRequest = Depends(signed)) -> dict[str, Any]:  # noqa: B008
        return {"sessions": [dump(i) for i in service.sessions()]}

    @app.get("/v1/sessions/{sid}")
    async def get(sid: str, _: SignedRequest = Depends(signed)) -> dict[str, Any]:  # noqa: B008
        return dump(service.get(sid))

    @app.get("/v1/sessions/{sid}/events")
    async def events(sid: str, after: int = 0, wait: float = 0.0,
                     _: SignedRequest = Depends(signed)) -> dict[str, Any]:  # noqa: B008
        return await run_in_threadpool(service.events, sid, after, wait)

    @app.post("/v1/sessions/{sid}/stop")
    async def stop(sid: str, who: SignedRequest = Depends(signed)) -> dict[str, Any]:  # noqa: B008
        return dump(service.stop(sid, who.party))

    @app.get("/v1/sessions/{sid}/model")
    async def model(sid: str, _: SignedRequest = Depends(signed)) -> Response:  # noqa: B008
        data = await run_in_threadpool(service.output, sid, "model")
        return Response(data, media_type="application/octet-stream")

    @app.get("/v1/sessions/{sid}/provenance")
    async def provenance(sid: str,
                         _: SignedRequest = Depends(signed)) -> Response:  # noqa: B008
        data = await run_in_threadpool(service.output, sid, "provenance")
        return Response(data, media_type="application/jsonl")

    return app
