"""Exposing metrics: ``GET /metrics`` on an ASGI app, or a small standalone server.

* :func:`instrument` adds ``GET /metrics`` (Prometheus text format 0.0.4, from
  :func:`prometheus_client.generate_latest`) to a FastAPI/Starlette app and an ASGI middleware
  that counts every request in an :class:`~teeflow.observability.metrics.HttpMetrics` by the
  *route template* the router matched (``/v1/counters/{name:path}``, never the concrete path).
  The KBS, the compute worker and the serving workload use it.
* :class:`MetricsServer` serves ``GET /metrics`` (and optional read-only JSON documents) from
  a thread, for processes without an HTTP server of their own (the FL aggregator,
  ``--metrics-listen HOST:PORT``). It is :mod:`wsgiref` with a thread per request, as
  :func:`prometheus_client.start_http_server`, plus the JSON routes.

Spec: Prometheus exposition formats (https://prometheus.io/docs/instrumenting/exposition_formats/).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from teeflow.observability.metrics import HttpMetrics

__all__ = ["METRICS_PATH", "MetricsServer", "RequestMetricsMiddleware", "instrument"]

#: Path of the metrics endpoint.
METRICS_PATH = "/metrics"
_UNMATCHED = "unmatched"


class RequestMetricsMiddleware:
    """ASGI middleware counting each HTTP request in ``metrics`` by route template, method
    and status (``unmatched`` when no route matched; status 500 when the app raised)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            self.metrics.observe(
                template if isinstance(template, str) else _UNMATCHED,
                str(scope.get("method", "")),
                status,
                time.perf_counter() - started,
            )


def instrument(app: Any, metrics: HttpMetrics, *, expose: bool = True) -> None:
    """Add :class:`RequestMetricsMiddleware` and - with ``expose`` - ``GET /metrics``
    (``metrics.registry``) to ``app`` (a FastAPI or Starlette application, before it starts
    serving). Without ``expose`` the registry is served elsewhere (:class:`MetricsServer`).

    The endpoint carries no authentication, like every Prometheus target: its label values
    are bounded vocabularies (:mod:`teeflow.observability.metrics`), never secrets or ids.
    """
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if not expose:
        return
    registry = metrics.registry

    async def scrape(_: Request) -> Response:
        return Response(
            generate_latest(registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )

    app.add_route(METRICS_PATH, scrape, methods=["GET"], include_in_schema=False)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """``GET /metrics`` and read-only JSON documents served from a daemon thread.

    Args:
        registry: the metrics to serve.
        host, port: where to listen (port 0: any free port; see :attr:`port`).
        documents: extra ``path -> producer`` routes; each GET calls the producer and
            answers its JSON-serialisable result (``application/json``).

    Use as a context manager or call :meth:`close`.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        documents: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        self._registry = registry
        self._documents = dict(documents or {})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(_ThreadingServer):
            address_family = family

        self._server = make_server(host, port, self._app, Server, _QuietHandler)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="teeflow-metrics", daemon=True
        )
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET")])
            return [b""]
        if path == METRICS_PATH:
            body = generate_latest(self._registry)
            content_type = CONTENT_TYPE_LATEST
        elif path in self._documents:
            body = json.dumps(self._documents[path](), separators=(",", ":")).encode("utf-8")
            content_type = "application/json"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        start_response(
            "200 OK",
            [("Content-Type", content_type), ("Cache-Control", "no-store"),
             ("Content-Length", str(len(body)))],
        )
        return [body]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
