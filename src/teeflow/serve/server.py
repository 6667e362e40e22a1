"""The serving workload's HTTPS API: the Open Inference Protocol plus ``teeflow-e2e``.

Routes (``docs/serve.md``; errors are RFC 7807 :class:`~teeflow.serve.access.ServeError`):

* ``GET /v2`` — server metadata (extensions ``binary_tensor_data``, ``teeflow_e2e``);
* ``GET /v2/health/live``, ``GET /v2/health/ready``;
* ``GET /v2/models/{name}`` — model metadata (platform, inputs, outputs; ``parameters``:
  ``teeflow_e2e`` scheme, ``require_e2e``, the model digest);
* ``GET /v2/models/{name}/ready``;
* ``POST /v2/models/{name}/infer`` — JSON or binary-extension tensors; an HPKE envelope
  (:mod:`teeflow.serve.e2e`) when the ``teeflow_e2e`` parameter is set;
* ``POST /v2/models/{name}/session`` — set up an end-to-end session (body: the HPKE setup
  envelope, :mod:`teeflow.serve.session`; the caller is identified here, once);
* ``GET /v2/attestation?nonce=...`` — the certificate, HPKE key and signed statement
  (:meth:`teeflow.serve.workload.ServeWorkload.attestation`).

**Infer order**: model name (404) → body bound (400) → party signature if present (401) →
decode (400) → envelope open, fresh and not replayed (400) or plaintext refused under
``require_e2e`` (403) →
caller (401/403) → quota (429) → predict (500) → response (sealed to the request's key).
A ``session-v1`` request: session known (400 ``SessionUnknown``) → sequence number above the
last accepted one (400) → AEAD opens and fresh (400) → the session's party → quota → predict →
response sealed under the session's response key. **Session setup**: model → body bound →
party signature if present (401) → envelope opens, fresh, not replayed (400) → caller
(401/403) → session opened (no quota is charged; requests are).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Query, Request, Response

import teeflow
from teeflow.errors import Error, KbsError, SealingError
from teeflow.kbs.policy.request_signing import (
    NonceCache,
    RequestSignatureError,
    RequestVerifier,
    agreement_party_keys,
)
from teeflow.platform.selection import PlatformOptions
from teeflow.serve.access import (
    BadRequest,
    InferenceFailed,
    ModelNotFound,
    NotReady,
    PlaintextRefused,
    ServeError,
    Unauthorized,
    UnknownSession,
)
from teeflow.serve.e2e import (
    E2E_PARAMETER,
    E2E_SCHEME,
    E2E_SCHEMES,
    E2E_TENSOR,
    MAX_ENVELOPE_AGE,
    envelope_of,
    open_request,
    seal_response,
)
from teeflow.serve.oip import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    OipError,
    decode_request,
    encode_response,
)
from teeflow.serve.session import (
    SEQ_PARAMETER,
    SESSION_PARAMETER,
    SESSION_SCHEME,
    ServerSession,
    SessionKeys,
    SessionTable,
    SessionUnknown,
    open_setup,
)
from teeflow.serve.workload import ServeWorkload

__all__ = ["MAX_INFER_BYTES", "MAX_SETUP_BYTES", "create_app", "make_server", "serve",
           "tls_context"]

#: Largest inference request body (bytes).
MAX_INFER_BYTES = 64 << 20
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_LENGTH = re.compile(r"[0-9]{1,12}")  # ASCII digits only (str.isdigit() accepts "¹")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: Largest session setup body (bytes).
MAX_SETUP_BYTES = 4096


def _problem(exc: ServeError) -> Response:
    return Response(json.dumps(exc.to_problem()), status_code=exc.status,
                    media_type="application/problem+json")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("only 'Authorization: Bearer <API key>' is supported")
    return token.strip()[:512]


def _oip(body: bytes, length: int | None, media: str = "application/json") -> Response:
    headers = {} if length is None else {HEADER_LENGTH: str(length)}
    return Response(body, media_type="application/octet-stream" if length else media,
                    headers=headers)


def create_app(workload: ServeWorkload) -> FastAPI:
    """The FastAPI app of a started :class:`ServeWorkload` (module docstring)."""
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="teeflow serve", docs_url=None, redoc_url=None, openapi_url=None)
    assert workload.agreement is not None and workload.access is not None
    keys = agreement_party_keys(workload.agreement.parties)
    verifier = RequestVerifier(lambda: keys)
    access = workload.access
    flushing = threading.Lock()
    envelopes = NonceCache()  # each envelope is accepted once (teeflow.serve.e2e)
    sessions = SessionTable()  # teeflow.serve.session

    def flush() -> None:
        if flushing.acquire(blocking=False):
            try:
                workload.flush_usage()
            finally:
                flushing.release()

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> Response:
        return _problem(exc)

    @app.exception_handler(Error)
    async def _other(_: Request, exc: Error) -> Response:
        return _problem(ServeError(f"{type(exc).__name__}"))

    def model(name: str) -> None:
        if name != workload.name:
            raise ModelNotFound(f"no model {name[:64]!r} here")
        if not workload.ready:
            raise NotReady("the model is not loaded")

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "teeflow", "version": teeflow.__version__,
                "extensions": ["binary_tensor_data", "teeflow_e2e"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(json.dumps({"ready": workload.ready}),
                        status_code=200 if workload.ready else 503,
                        media_type="application/json")

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> dict[str, Any]:
        model(name)
        assert workload.predictor is not None
        return {"name": name, "versions": ["1"], "platform": workload.predictor.platform,
                "inputs": workload.predictor.inputs, "outputs": workload.predictor.outputs,
                "parameters": {E2E_PARAMETER: E2E_SCHEME,
                               "teeflow_e2e_schemes": list(E2E_SCHEMES),
                               "require_e2e": access.require_e2e,
                               "model_digest": workload.header.digest}}

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> dict[str, Any]:
        model(name)
        return {"name": name, "ready": True}

    @app.get("/v2/attestation")
    async def attestation(nonce: str | None = Query(None, max_length=128)) -> dict[str, Any]:
        if nonce is not None and not _NONCE.fullmatch(nonce):
            raise BadRequest("nonce must be 16..128 base64url characters")
        return workload.attestation(nonce)

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length", "")
        if not _LENGTH.fullmatch(declared) or int(declared) > limit:
            raise BadRequest(f"give Content-Length ≤ {limit} bytes")
        body = await request.body()
        if len(body) > limit:
            raise BadRequest(f"body larger than {limit} bytes")
        return body

    def signer(request: Request, body: bytes) -> str | None:
        if "signature-input" not in request.headers:
            return None
        try:
            return verifier.verify(request.method, str(request.url), request.headers,
                                   body).party
        except RequestSignatureError as exc:
            raise Unauthorized(str(exc)) from None

    @app.post("/v2/models/{name}/session")
    async def session_setup(name: str, request: Request) -> Response:
        model(name)
        body = await read_body(request, MAX_SETUP_BYTES)
        signed_party = signer(request, body)
        try:
            secret, api_key, created = open_setup(body, workload.hpke_key, name)
            now = time.time()
            if abs(now - created) > MAX_ENVELOPE_AGE:
                raise SealingError("the session setup is stale or from the future (clock?)")
            envelopes.remember("session", hashlib.sha256(body).hexdigest(), now=now,
                               until=created + MAX_ENVELOPE_AGE)
        except (SealingError, RequestSignatureError) as exc:
            raise BadRequest(str(exc)) from None
        party = access.identify(signed_party=signed_party,
                                api_key=api_key or _bearer(request))
        keys = SessionKeys(secret, body, name)
        sid, expires = sessions.open(keys, party, now=now)
        return Response(keys.seal_ok(sid, expires), media_type="application/octet-stream")

    def open_session(outer: InferRequest, ct: bytes
                     ) -> tuple[ServerSession, InferRequest, str, int]:
        sid, seq = outer.parameters.get(SESSION_PARAMETER), outer.parameters.get(SEQ_PARAMETER)
        if (not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid)
                or type(seq) is not int or seq < 1):
            raise BadRequest(f"a {SESSION_SCHEME} request needs {SESSION_PARAMETER} and "
                             f"{SEQ_PARAMETER} (an integer ≥ 1)")
        try:
            entry, body, length = sessions.accept(sid, seq, ct, now=time.time())
            inner = decode_request(body, length)
        except SessionUnknown as exc:
            raise UnknownSession(str(exc)) from None
        except (SealingError, OipError) as exc:
            raise BadRequest(str(exc)) from None
        return entry, inner, sid, seq

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        model(name)
        body = await read_body(request, MAX_INFER_BYTES)
        signed_party = signer(request, body)
        try:
            outer = decode_request(body, request.headers.get(HEADER_LENGTH))
            ct = envelope_of(outer)
        except OipError as exc:
            raise BadRequest(str(exc)) from None
        if ct is not None and outer.parameters[E2E_PARAMETER] == SESSION_SCHEME:
            # the session's party, authenticated at setup (a signature here adds nothing)
            entry, inner, sid, seq = open_session(outer, ct)

            def seal_in_session(b: bytes, n: int | None) -> tuple[bytes, str]:
                return entry.keys.seal_response(sid, seq, b, n), SESSION_SCHEME

            return await answer(name, inner, entry.party, seal_in_session)
        api_key = _bearer(request)
        if ct is not None:
            try:
                opened = open_request(ct, workload.hpke_key, name)
                inner = decode_request(opened.body, opened.header_length)
                now = time.time()
                if abs(now - opened.created) > MAX_ENVELOPE_AGE:
                    raise SealingError("the envelope is stale or from the future (clock?)")
                envelopes.remember("e2e", hashlib.sha256(ct).hexdigest(), now=now,
                                   until=opened.created + MAX_ENVELOPE_AGE)
            except (SealingError, OipError, RequestSignatureError) as exc:
                raise BadRequest(str(exc)) from None
            api_key = opened.api_key or api_key
        elif access.require_e2e:
            raise PlaintextRefused("send the request sealed to the attested key (teeflow_e2e)")
        else:
            inner = outer
        party = access.identify(signed_party=signed_party, api_key=api_key)
        if ct is None:
            return await answer(name, inner, party, None)
        client_key, request_ct = opened.client_key, ct

        def seal_per_request(b: bytes, n: int | None) -> tuple[bytes, str]:
            return seal_response(b, n, client_key, request_ct), E2E_SCHEME

        return await answer(name, inner, party, seal_per_request)

    async def answer(name: str, inner: InferRequest, party: str,
                     seal: Callable[[bytes, int | None], tuple[bytes, str]] | None) -> Response:
        access.admit(party)
        predictor = workload.predictor
        assert predictor is not None
        try:
            outputs = await run_in_threadpool(predictor.predict, inner.inputs)
        except Error as exc:
            access.refused(party)
            raise InferenceFailed(str(exc)) from None
        if inner.outputs:
            outputs = {k: v for k, v in outputs.items() if k in inner.outputs}
        resp = InferResponse(name, outputs, id=inner.id, model_version="1")
        try:
            out_body, out_len = encode_response(resp, binary=inner.binary_outputs)
        except OipError as exc:
            raise InferenceFailed(str(exc)) from None
        if seal is not None:
            sealed, scheme = seal(out_body, out_len)
            env = InferResponse(name, {E2E_TENSOR: np.frombuffer(sealed, dtype=np.uint8)},
                                parameters={E2E_PARAMETER: scheme})
            out_body, out_len = encode_response(env, binary=True)
        if access.answered(party):
            threading.Thread(target=flush, name="teeflow-serve-usage", daemon=True).start()
        return _oip(out_body, out_len)

    return app


def tls_context(workload: ServeWorkload) -> ssl.SSLContext:
    """Server TLS 1.3 context with the workload's ``serve`` certificate (the key reaches
    OpenSSL encrypted under a one-time password, through an anonymous memory file where
    available).

    Raises:
        KbsError: not started, or OpenSSL refuses the credential.
    """
    if workload.tls_key is None:
        raise KbsError("start the workload first")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    password = os.urandom(32).hex().encode()
    key_pem = workload.tls_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password))
    pem = workload.certificate_pem + key_pem
    memfd = getattr(os, "memfd_create", None)
    try:
        if memfd is not None and Path("/proc/self/fd").is_dir():
            fd = memfd("teeflow-serve-tls", 0)
            try:
                os.write(fd, pem)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=password)
            finally:
                os.close(fd)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "chain.pem"
                path.write_bytes(pem)
                path.chmod(0o600)
                ctx.load_cert_chain(str(path), password=password)
    except (ssl.SSLError, OSError) as exc:
        raise KbsError(f"cannot load the serve TLS credential: {type(exc).__name__}") from None
    return ctx


def make_server(workload: ServeWorkload, host: str = "127.0.0.1", port: int = 0, *,
                log_level: str = "warning",
                app_factory: Callable[[ServeWorkload], FastAPI] = create_app) -> uvicorn.Server:
    """A uvicorn server (HTTPS, not started) for a started workload."""
    config = uvicorn.Config(app_factory(workload), host=host, port=port, log_level=log_level,
                            access_log=log_level == "debug", proxy_headers=False,
                            server_header=False, lifespan="off", timeout_graceful_shutdown=5)
    config.load()
    config.ssl = tls_context(workload)
    return uvicorn.Server(config)


def serve(
    kbs_url: str | None, pin: Path, model: Path, *, package: Path | None = None,
    listen: str = "127.0.0.1:8443", platform: PlatformOptions | None = None,
    enrollment: str | None = None, config: dict[str, Any] | None = None,
    on_ready: Callable[[ServeWorkload], None] | None = None, log_level: str = "info",
) -> None:
    """Run a serving workload until interrupted (``teeflow serve``; blocking). The attester
    comes from ``platform`` (:class:`~teeflow.platform.selection.PlatformOptions`, default
    ``auto``); an emulated platform reports :func:`~teeflow.serve.workload.serve_measurement`.
    The last usage batch is written at shutdown.

    Raises:
        PlatformError: unknown platform, no TEE for ``auto``.
        KbsError, AttestationFailed, PolicyDeny, SealingError, PackageError: as
            :meth:`ServeWorkload.start`.
    """
    from teeflow.kbs.api.server import parse_listen
    from teeflow.serve.workload import serve_measurement

    host, port = parse_listen(listen)
    options = platform if platform is not None else PlatformOptions()
    attester = options.attester(serve_measurement())
    workload = ServeWorkload(pin, attester, model, package=package, kbs_url=kbs_url,
                             enrollment=enrollment, config=config)
    try:
        workload.start()
        server = make_server(workload, host, port, log_level=log_level)
        if on_ready is not None:
            on_ready(workload)
        server.run()
    finally:
        workload.close()
