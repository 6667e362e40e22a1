"""RFC 7807 error rendering for the KBS HTTP adapter (DESIGN security invariant 6).

Every error response of the KBS is ``application/problem+json``::

    {"type": "<prefix>/<Name>", "title": "...", "status": <int>, "detail": "..."}

Mapping (see ``docs/kbs.md`` "Error catalog"):

* :class:`teeflow.kbs.api.problems.KbsProblem` → its own :meth:`~KbsProblem.to_dict` and status
  (the ``reasons`` list is never rendered; it goes to the audit log);
* FastAPI / pydantic request validation errors (query and path parameters; bodies are
  decoded by :func:`teeflow.kbs.protocol.decode_json`, which raises ``InvalidRequest``
  itself) → 400 :class:`~teeflow.kbs.api.problems.InvalidRequest` naming the invalid fields,
  never their values;
* Starlette HTTP errors: an unknown route → 404 ``InvalidRequestPath`` (as Trustee answers
  bad paths); a known route with another method → 405 ``MethodNotAllowed``; anything else
  with a 4xx status → 400 ``InvalidRequest``;
* any other exception → 500 ``InternalError`` with a fixed body; the exception and its
  traceback are logged on the server (logger ``teeflow.kbs.api``), never sent.

Handlers are installed by :func:`install_error_handlers`; the 500 guard is the pure ASGI
middleware :class:`InternalErrorGuard` (it also catches exceptions raised outside a route,
e.g. in other middleware, as long as the response has not started).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from teeflow.kbs.api.problems import (
    TEEFLOW_PREFIX,
    InvalidRequest,
    InvalidRequestPath,
    KbsProblem,
)

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "InternalErrorGuard",
    "MethodNotAllowed",
    "install_error_handlers",
    "internal_error_body",
    "problem_response",
]

#: RFC 7807 §3 media type.
PROBLEM_MEDIA_TYPE = "application/problem+json"
_LOG = logging.getLogger("teeflow.kbs.api")
_MAX_FIELDS = 16


class MethodNotAllowed(KbsProblem):
    """The route exists but not for this HTTP method (405)."""

    code = "kbs-method-not-allowed"
    name = "MethodNotAllowed"
    status = 405
    title = "Method not allowed"


def internal_error_body() -> dict[str, Any]:
    """The fixed 500 body (no detail about the failure, ever)."""
    return {
        "type": f"{TEEFLOW_PREFIX}/InternalError",
        "title": "Internal server error",
        "status": 500,
        "detail": "internal server error",
    }


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    if extra:
        headers.update(extra)
    return headers


def problem_response(problem: KbsProblem, headers: dict[str, str] | None = None) -> Response:
    """``problem`` as an ``application/problem+json`` response with its status."""
    body = json.dumps(problem.to_dict(), separators=(",", ":")).encode("utf-8")
    extra = dict(headers or {})
    if problem.status == 401:
        # RFC 9110 §11.6.1: a 401 carries a challenge; Bearer per RFC 6750
        extra.setdefault("WWW-Authenticate", 'Bearer realm="teeflow-kbs"')
    return Response(
        body, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=_headers(extra)
    )


def _field_names(exc: RequestValidationError) -> str:
    names: list[str] = []
    for err in exc.errors()[:_MAX_FIELDS]:
        loc = err.get("loc", ())
        names.append(".".join(str(part)[:64] for part in loc) or "request")
    return ", ".join(dict.fromkeys(names)) or "request"


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KbsProblem)
    return problem_response(exc)


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(InvalidRequest(f"invalid request parameters: {_field_names(exc)}"))


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    problem: KbsProblem
    if exc.status_code == 404:
        problem = InvalidRequestPath()
    elif exc.status_code == 405:
        problem = MethodNotAllowed()
        allow = (exc.headers or {}).get("Allow")
        return problem_response(problem, {"Allow": allow} if allow else None)
    elif 400 <= exc.status_code < 500:
        problem = InvalidRequest()
    else:
        _LOG.error("HTTP error %d raised inside the KBS", exc.status_code)
        return Response(
            json.dumps(internal_error_body()),
            status_code=500,
            media_type=PROBLEM_MEDIA_TYPE,
            headers=_headers(),
        )
    return problem_response(problem)


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem, validation and HTTP-error handlers and the 500 guard on ``app``."""
    app.add_exception_handler(KbsProblem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_middleware(InternalErrorGuard)


class InternalErrorGuard:
    """ASGI middleware: an unexpected exception becomes a fixed 500 problem response.

    The exception is logged with its traceback (server side only). When the response had
    already started, the connection is left to the server to abort (nothing more can be
    sent safely).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            _LOG.exception(
                "unhandled error in %s %s", scope.get("method", "?"), scope.get("path", "?")[:200]
            )
            if started:
                raise
            body = json.dumps(internal_error_body()).encode("utf-8")
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
