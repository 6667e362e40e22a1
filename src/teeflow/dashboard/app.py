"""The dashboard's web application: a static page and one JSON document (``docs/dashboard.md``).

Routes (all ``GET``; the dashboard changes nothing)::

    /                    the page (static HTML; its script polls /api/snapshot)
    /static/{file}       dashboard.js, dashboard.css (no third-party code, no CDN)
    /api/snapshot        DashboardSource.snapshot() as JSON

Served on loopback by default to the party's own browser. Every response carries a strict
Content-Security-Policy (``default-src 'self'``: no inline script, nothing from elsewhere),
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``;
requests whose ``Host`` is not the listening address (or ``localhost``) are refused (400), so
another web site cannot read the snapshot through DNS rebinding. The page renders every value
with ``textContent`` (never as HTML).

Specs: Content Security Policy Level 3 (W3C), RFC 7034 (X-Frame-Options), RFC 9110 (Host).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from teeflow.dashboard.model import DashboardSource
from teeflow.errors import Error

__all__ = ["SECURITY_HEADERS", "create_dashboard_app", "make_dashboard_server"]

#: Headers of every response.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return resources.files("teeflow.dashboard").joinpath("static", name).read_bytes()


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def create_dashboard_app(source: DashboardSource, *, party: str, hosts: list[str]) -> FastAPI:
    """The dashboard app for ``party`` reading ``source``; ``hosts``: the host names accepted
    in ``Host`` (the listening address; ``localhost``, ``127.0.0.1`` and ``[::1]`` are added;
    the port is not compared)."""
    app = FastAPI(title="teeflow dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    page = _asset("index.html")
    assets = {name: _asset(name) for name in _STATIC}

    @app.get("/")
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in assets:
            return Response(b"not found\n", status_code=404, media_type="text/plain")
        return Response(assets[name], media_type=_STATIC[name])

    @app.get("/api/snapshot")
    async def snapshot(_: Request) -> Response:
        try:
            doc: dict[str, Any] = await run_in_threadpool(source.snapshot)
        except Error as exc:  # the model reports source failures itself; this is a bug guard
            return JSONResponse({"error": type(exc).__name__}, status_code=503)
        return JSONResponse({**doc, "party": party})

    allowed = sorted({*hosts, "localhost", "127.0.0.1", "[::1]"})
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed)
    app.add_middleware(_SecurityHeaders)
    return app


def make_dashboard_server(
    source: DashboardSource, *, party: str, host: str, port: int, log_level: str = "warning"
) -> uvicorn.Server:
    """A uvicorn server (plain HTTP: loopback, the party's own browser) for the dashboard."""
    app = create_dashboard_app(source, party=party, hosts=[host])
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
        server_header=False, proxy_headers=False, timeout_graceful_shutdown=3,
    )
    return uvicorn.Server(config)
