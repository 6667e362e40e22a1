"""FastAPI adapter of :class:`teeflow.kbs.service.core.KbsService` (issue 3; ``docs/kbs.md``).

Routes (Trustee KBS protocol 0.4.0 under ``/kbs/v0``, teeflow extensions under ``/v1``)::

    POST /kbs/v0/auth                      AuthRequest -> Challenge + cookie kbs-session-id
    POST /kbs/v0/attest        (cookie)    AttestRequest -> {"token": EAR}
    GET  /kbs/v0/resource/<repo>/<type>/<tag>  (cookie or Bearer) -> flattened JWE JSON
    POST /v1/agreement                     SignedAgreement -> {"version", "digest", ...}
    GET  /v1/agreement                     -> {"version", "digest", "signed"}
    GET  /v1/agreement/history             -> {"agreements": [...]}
    POST /v1/resources                     ResourceUpload (owner-signed) -> ResourceInfo (201)
    POST /v1/certificates      (Bearer or cookie) CertificateRequest | PEM CSR
                                           -> CertificateResponse
    GET  /v1/ca                            -> federation CA certificate (PEM)
    POST /v1/enrollments/revocations       EnrollmentRevocationRequest (party-signed)
                                           -> {"id", "party", "revoked_at", "uses"}
    POST /v1/counters/{name}   (Bearer or cookie) CounterIncrement -> CounterState
    GET  /v1/counters/{name}   (party-signed, or Bearer+cookie in scope) -> CounterState
                                           (404 if never stepped)
    GET  /v1/audit?after=&limit= (party-signed) -> {"entries": [audit entry JSON, ...]}
    GET  /v1/kbs/evidence?nonce=B64        -> the KBS's own evidence (self_attestation)
    GET  /metrics                          -> Prometheus metrics (:mod:`teeflow.kbs.api.metrics`)

*party-signed*: an RFC 9421 signature by a party of the agreement in force
(:mod:`teeflow.kbs.policy.request_signing`); otherwise 401 ``RequestUnsigned``. A workload
reads only counters of its own scope (:func:`teeflow.kbs.policy.namespaces.
counter_scope_problems`; otherwise 403 ``PolicyDeny``).

Bodies are read raw with a per-route byte limit (a larger ``Content-Length`` is refused with
413 before anything is read; streamed bodies are cut at the limit) and decoded with
:func:`teeflow.kbs.protocol.decode_json`. Service calls are synchronous and run in the
Starlette threadpool. Every response carries ``Cache-Control: no-store``. Errors: see
:mod:`teeflow.kbs.api.errors`. ``/openapi.json`` documents every body with the wire models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

import teeflow
from teeflow.errors import ParseError
from teeflow.kbs.api.errors import PROBLEM_MEDIA_TYPE, install_error_handlers, problem_response
from teeflow.kbs.api.problems import (
    AttestationFailed,
    InvalidRequest,
    NoAgreement,
    PayloadTooLarge,
    PolicyDeny,
    RequestUnsigned,
    ResourceNotFound,
    ServiceUnavailable,
    TokenVerifierError,
)
from teeflow.kbs.ca.authority import FederationCA
from teeflow.kbs.policy.agreement import (
    digest,
)
from teeflow.kbs.policy.heads import HEAD_HEADER
from teeflow.kbs.policy.namespaces import counter_scope_problems
from teeflow.kbs.policy.request_signing import (
    RequestSignatureError,
    RequestVerifier,
    SignedRequest,
    agreement_party_keys,
)
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.protocol import (
    MAX_ATTEST_BODY_BYTES,
    MAX_AUTH_BODY_BYTES,
    MAX_CSR_BODY_BYTES,
    MAX_REVOCATION_BODY_BYTES,
    MAX_UPLOAD_BODY_BYTES,
    AttestedSession,
    AttestRequest,
    AttestResponse,
    AuthRequest,
    CertificateRequest,
    CertificateResponse,
    Challenge,
    CounterIncrement,
    CounterState,
    EnrollmentRevocationRequest,
    JweResponse,
    ResourceInfo,
    ResourceUpload,
    decode_json,
)
from teeflow.kbs.service.audit import audit_entry_to_json
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.service.self_attestation import KbsEvidenceSource, decode_nonce
from teeflow.kbs.service.usage import MAX_USAGE_BODY_BYTES, UsageReport
from teeflow.kbs.store.interface import MAX_AGREEMENT_BYTES, MAX_AUDIT_PAGE

__all__ = [
    "MAX_COUNTER_BODY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_TOKEN_CHARS",
    "SESSION_COOKIE",
    "create_app",
]

#: RCAR session cookie (Trustee KBS).
SESSION_COOKIE = "kbs-session-id"
#: Largest body any route accepts (the agreement route); larger requests get 413 at once.
MAX_REQUEST_BYTES = MAX_AGREEMENT_BYTES
#: Largest ``POST /v1/counters`` body (bytes).
MAX_COUNTER_BODY_BYTES = 4096
#: Longest bearer token accepted (characters).
MAX_TOKEN_CHARS = 16 * 1024
_LOG = logging.getLogger("teeflow.kbs.api")
M = TypeVar("M", bound=BaseModel)


class _CaHolder(Protocol):
    @property
    def ca(self) -> FederationCA: ...


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode("utf-8")
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 otherwise, before reading when the
    ``Content-Length`` already says so)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 15:
            raise InvalidRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _decode(request: Request, model: type[M], limit: int) -> M:
    return decode_json(model, await _read_body(request, limit), max_bytes=limit)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenVerifierError("only 'Authorization: Bearer <token>' is supported")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenVerifierError("token rejected: malformed")
    return token


class _RequestSizeGuard:
    """ASGI middleware: refuse any request whose ``Content-Length`` exceeds
    :data:`MAX_REQUEST_BYTES` (413) before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and (
                    not value.isdigit() or len(value) > 15 or int(value) > MAX_REQUEST_BYTES
                ):
                    problem = (
                        PayloadTooLarge(f"request body larger than {MAX_REQUEST_BYTES} bytes")
                        if value.isdigit()
                        else InvalidRequest("invalid Content-Length")
                    )
                    await problem_response(problem)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# -- OpenAPI --------------------------------------------------------------------------------

_BODY_MODELS: tuple[type[BaseModel], ...] = (
    AuthRequest,
    Challenge,
    AttestRequest,
    AttestResponse,
    JweResponse,
    SignedAgreement,
    ResourceUpload,
    ResourceInfo,
    CertificateRequest,
    CertificateResponse,
    CounterIncrement,
    CounterState,
    EnrollmentRevocationRequest,
)
_PROBLEM_SCHEMA = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 7807 problem details (docs/kbs.md, error catalog).",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _doc(
    body: type[BaseModel] | None = None,
    ok: type[BaseModel] | dict[str, Any] | None = None,
    *,
    status: int = 200,
    errors: tuple[int, ...] = (400,),
    media: str = "application/json",
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if body is not None:
        content = {media: {"schema": _ref(body.__name__)}}
        extra["requestBody"] = {"required": True, "content": content}
    schema = ok if isinstance(ok, dict) else (_ref(ok.__name__) if ok is not None else {})
    responses: dict[str, Any] = {
        str(status): {"description": "success", "content": {"application/json": {"schema": schema}}}
    }
    for code in (*errors, 500):
        responses[str(code)] = {
            "description": "problem (RFC 7807)",
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}},
        }
    extra["responses"] = responses
    return extra


def _install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        _, defs = models_json_schema(
            [(m, "validation") for m in _BODY_MODELS],
            ref_template="#/components/schemas/{model}",
            by_alias=True,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components.update(defs.get("$defs", {}))
        components["Problem"] = _PROBLEM_SCHEMA
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]


# -- application ------------------------------------------------------------------------------


def create_app(
    service: KbsService,
    keys: _CaHolder,
    *,
    evidence: KbsEvidenceSource | None = None,
    purge_interval: float | None = 60.0,
    metrics: bool = True,
) -> FastAPI:
    """Build the KBS ASGI application.

    Args:
        service: the KBS core.
        keys: the KBS keys (:class:`teeflow.kbs.service.identity.KbsKeys`; ``ca`` is served by
            ``GET /v1/ca``).
        evidence: the KBS's own evidence source; None answers ``/v1/kbs/evidence`` with 503.
        purge_interval: seconds between :meth:`KbsService.purge_expired` runs while the app
            is served (its lifespan); None disables the purge task.
        metrics: serve ``GET /metrics`` (:mod:`teeflow.kbs.api.metrics`).

    Returns:
        The FastAPI application (no TLS here: :mod:`teeflow.kbs.api.server` serves it).
    """
    if purge_interval is not None and not purge_interval > 0:
        raise ValueError("purge_interval must be positive")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_purge_loop()) if purge_interval is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _purge_loop() -> None:
        assert purge_interval is not None
        while True:
            await asyncio.sleep(purge_interval)
            try:
                count = await run_in_threadpool(service.purge_expired)
                if count:
                    _LOG.debug("purged %d expired sessions", count)
            except Exception:  # keep purging; the failure is logged
                _LOG.exception("session purge failed")

    app = FastAPI(
        title="teeflow Key Broker Service",
        version=teeflow.__version__,
        description="RCAR attestation (Trustee KBS protocol 0.4.0) and teeflow extensions.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(_RequestSizeGuard)
    _install_openapi(app)
    if metrics:
        from teeflow.kbs.api.metrics import install_metrics

        install_metrics(app, service)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    party_key_cache: dict[str, Any] = {}

    def party_keys() -> dict[str, Ed25519PublicKey]:
        """Signing keys of the agreement in force (re-derived when it changes)."""
        current = service.current_agreement()
        if current is None:
            return {}
        if party_key_cache.get("agreement") is not current:
            party_key_cache["keys"] = agreement_party_keys(current.agreement.parties)
            party_key_cache["agreement"] = current
        keys: dict[str, Ed25519PublicKey] = party_key_cache["keys"]
        return keys

    def unsigned(exc: RequestSignatureError) -> Exception:
        return RequestUnsigned(str(exc))

    verifier = RequestVerifier(party_keys)
    party_signed = verifier.dependency(max_body=0, on_error=unsigned)

    async def stateful(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str]:
        """``fn`` in a worker thread and the signed state head of its effects (the
        ``KBS-State-Head`` header; :mod:`teeflow.kbs.service.heads`)."""

        def run() -> tuple[Any, str]:
            with service.heads.capture() as box:
                result = fn(*args, **kwargs)
            assert box.header is not None
            return result, box.header

        return await run_in_threadpool(run)

    def headed(response: Response, head: str) -> Response:
        response.headers[HEAD_HEADER] = head
        return response

    async def authorized(request: Request) -> AttestedSession:
        session = await call(
            service.authorize,
            session_id=request.cookies.get(SESSION_COOKIE),
            token=_bearer(request),
        )
        assert isinstance(session, AttestedSession)
        return session

    # -- RCAR (Trustee KBS 0.4.0) ---------------------------------------------------------

    @app.post("/kbs/v0/auth", openapi_extra=_doc(AuthRequest, Challenge, errors=(400, 401, 413)))
    async def auth(request: Request) -> Response:
        body = await _decode(request, AuthRequest, MAX_AUTH_BODY_BYTES)
        session_id, challenge = await call(service.auth, body)
        response = _json(challenge.to_wire())
        response.set_cookie(
            SESSION_COOKIE, session_id, httponly=True, secure=True, samesite="strict", path="/"
        )
        return response

    @app.post(
        "/kbs/v0/attest", openapi_extra=_doc(AttestRequest, AttestResponse, errors=(400, 401, 413))
    )
    async def attest(request: Request) -> Response:
        # As Trustee (kbs/src/attestation/backend.rs): the session cookie is looked up
        # before the body is read or parsed, so a request without one is 401, never 400.
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            reason = f"no {SESSION_COOKIE} cookie: call POST /kbs/v0/auth first"
            raise AttestationFailed(f"attestation denied: {reason}", [reason])
        body = await _decode(request, AttestRequest, MAX_ATTEST_BODY_BYTES)
        result, head = await stateful(service.attest, session_id, body)
        return headed(_json(result.to_wire()), head)

    @app.get(
        "/kbs/v0/resource/{path:path}",
        openapi_extra=_doc(ok=JweResponse, errors=(401, 403, 404)),
    )
    async def get_resource(path: str, request: Request) -> Response:
        session_id, token = request.cookies.get(SESSION_COOKIE), _bearer(request)

        def release() -> str:  # authorise and release in one worker-thread hop
            session = service.authorize(session_id=session_id, token=token)
            return service.get_resource(session, path)

        jwe_text, head = await stateful(release)
        return Response(
            jwe_text,
            media_type="application/json",
            headers={"Cache-Control": "no-store", HEAD_HEADER: head},
        )

    # -- agreements -------------------------------------------------------------------------

    def _agreement_json(signed: SignedAgreement) -> dict[str, Any]:
        return {
            "version": signed.agreement.version,
            "digest": digest(signed.agreement).hex(),
            "signed": signed.model_dump(mode="json"),
        }

    @app.post(
        "/v1/agreement",
        openapi_extra=_doc(SignedAgreement, {"type": "object"}, errors=(400, 403, 409, 413)),
    )
    async def submit_agreement(request: Request) -> Response:
        signed = await _decode(request, SignedAgreement, MAX_AGREEMENT_BYTES)
        record, head = await stateful(service.submit_agreement, signed)
        return headed(
            _json(
                {
                    "version": record.version,
                    "digest": record.digest.hex(),
                    "created_at": record.created_at.isoformat(),
                }
            ),
            head,
        )

    @app.get("/v1/agreement", openapi_extra=_doc(ok={"type": "object"}, errors=(409,)))
    async def current_agreement() -> Response:
        signed, head = await stateful(service.current_agreement)
        if signed is None:
            raise NoAgreement()
        return headed(_json(_agreement_json(signed)), head)

    @app.get("/v1/agreement/history", openapi_extra=_doc(ok={"type": "object"}, errors=()))
    async def agreement_history() -> Response:
        history, head = await stateful(service.agreement_history)
        return headed(_json({"agreements": [_agreement_json(s) for s in history]}), head)

    # -- resources, certificates, counters ----------------------------------------------------

    @app.post(
        "/v1/resources",
        status_code=201,
        openapi_extra=_doc(ResourceUpload, ResourceInfo, status=201, errors=(400, 403, 409, 413)),
    )
    async def put_resource(request: Request) -> Response:
        upload = await _decode(request, ResourceUpload, MAX_UPLOAD_BODY_BYTES)
        info, head = await stateful(service.put_resource, upload)
        return headed(_json(info.to_wire(), status=201), head)

    @app.post(
        "/v1/certificates",
        openapi_extra=_doc(CertificateRequest, CertificateResponse, errors=(400, 401, 403, 413)),
    )
    async def issue_certificate(request: Request) -> Response:
        session = await authorized(request)
        raw = await _read_body(request, MAX_CSR_BODY_BYTES)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("", "application/json"):
            request_doc = decode_json(CertificateRequest, raw, max_bytes=MAX_CSR_BODY_BYTES)
            csr: bytes | str = request_doc.csr
        else:
            csr = raw  # application/pkcs10 or application/x-pem-file: the PEM itself
        pem, head = await stateful(service.issue_certificate, session, csr)
        ca_pem = keys.ca.certificate_pem().decode("ascii")
        body = CertificateResponse(certificate=pem.decode("ascii"), ca=ca_pem).to_wire()
        return headed(_json(body), head)

    @app.post(
        "/v1/enrollments/revocations",
        openapi_extra=_doc(EnrollmentRevocationRequest, ok={"type": "object"},
                           errors=(400, 413, 503)),
    )
    async def revoke_enrollment(request: Request) -> Response:
        body = await _decode(request, EnrollmentRevocationRequest, MAX_REVOCATION_BODY_BYTES)
        result, head = await stateful(service.revoke_enrollment, body.revocation)
        return headed(_json(result), head)

    @app.get(
        "/v1/ca",
        responses={200: {"content": {"application/x-pem-file": {}}, "description": "CA (PEM)"}},
    )
    async def ca_certificate() -> Response:
        return Response(
            keys.ca.certificate_pem(),
            media_type="application/x-pem-file",
            headers={"Cache-Control": "no-store"},
        )

    @app.post(
        "/v1/counters/{name:path}",
        openapi_extra=_doc(CounterIncrement, CounterState, errors=(400, 401, 403, 409, 413)),
    )
    async def increment_counter(name: str, request: Request) -> Response:
        session = await authorized(request)
        step = await _decode(request, CounterIncrement, MAX_COUNTER_BODY_BYTES)
        state, head = await stateful(
            service.increment_counter, session, name, step.expected, bytes.fromhex(step.digest)
        )
        return headed(_json(state.to_wire()), head)

    @app.get(
        "/v1/counters/{name:path}", openapi_extra=_doc(ok=CounterState, errors=(400, 401, 403, 404))
    )
    async def get_counter(name: str, request: Request) -> Response:
        if request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE):
            session = await authorized(request)
            claims = session.claims
            problems = counter_scope_problems(
                name,
                role=session.role,
                party=session.party,
                session=None if claims is None else claims.session,
            )
            if problems:
                raise PolicyDeny(problems[0])
        else:
            await party_signed(request)
        state, head = await stateful(service.get_counter, name)
        if state is None:
            raise ResourceNotFound("counter has never been stepped")
        return headed(_json(state.to_wire()), head)

    @app.post("/v1/usage", openapi_extra=_doc(UsageReport, ok={"type": "object"},
                                               errors=(400, 401, 403, 413)))
    async def record_usage(request: Request) -> Response:
        session = await authorized(request)  # a serving workload's signed usage batch
        report = await _decode(request, UsageReport, MAX_USAGE_BODY_BYTES)
        result, head = await stateful(service.record_usage, session, report)
        return headed(_json(result), head)

    # -- audit, evidence ----------------------------------------------------------------------

    @app.get("/v1/audit", openapi_extra=_doc(ok={"type": "object"}, errors=(400, 401)))
    async def audit(
        after: int = Query(0, ge=0, le=2**62),
        limit: int = Query(100, ge=1, le=MAX_AUDIT_PAGE),
        _: SignedRequest = Depends(party_signed),  # noqa: B008
    ) -> Response:
        entries, head = await stateful(service.audit_entries, after, limit)
        return headed(_json({"entries": [audit_entry_to_json(e) for e in entries]}), head)

    @app.get("/v1/kbs/evidence", openapi_extra=_doc(ok={"type": "object"}, errors=(400, 503)))
    async def kbs_evidence(nonce: str = Query(..., min_length=1, max_length=2048)) -> Response:
        if evidence is None:
            raise ServiceUnavailable("this KBS serves no evidence of its own")
        try:
            raw_nonce = decode_nonce(nonce)
        except ParseError as exc:
            raise InvalidRequest(str(exc)) from None

        def make() -> dict[str, Any]:
            # bound: the agreement in force, or before the first one the digest the first
            # agreement must have (kbs serve --expect-agreement), so parties see what the
            # KBS will enforce before they upload anything; null only when insecure
            current = service.current_agreement()
            agreement_digest = (
                service.first_agreement if current is None else digest(current.agreement)
            )
            return evidence.evidence(raw_nonce, agreement_digest)

        return _json(await call(make))

    return app
