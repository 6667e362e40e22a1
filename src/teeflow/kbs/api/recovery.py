"""HTTP routes of KBS recovery (:mod:`teeflow.kbs.service.recovery_mode`).

Normal mode (:func:`install_recovery_routes`, added to the main app):

* ``GET /v1/recovery`` — status ``{"mode": "normal", "recovery_id", "k", "n", "parties",
  ...}``;
* ``GET /v1/recovery/record`` — the public share-set record (each share HPKE-sealed to its
  party; 409 ``NoAgreement`` before the first agreement).

Recovery mode (:func:`create_recovery_app`, the *only* app served until recovered):

* ``GET /v1/kbs/evidence?nonce=B64`` — the recovery evidence;
* ``GET /v1/recovery`` — status with ``mode: "recovery"`` and the parties that submitted;
* ``GET /v1/recovery/record`` — the record from the state directory;
* ``POST /v1/recovery/shares`` — a :class:`~teeflow.kbs.service.recovery.RecoverySubmission`
  (≤ 16 KiB): 200 with the status, 400 malformed, 403 refused, 409 another set / done;
* anything else — 503 ``ServiceUnavailable`` ("in recovery mode").
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import teeflow
from teeflow.errors import ParseError
from teeflow.kbs.api.errors import install_error_handlers
from teeflow.kbs.api.problems import (
    InvalidRequest,
    NoAgreement,
    PayloadTooLarge,
    ServiceUnavailable,
)
from teeflow.kbs.service.recovery_mode import RecoveryCoordinator, RecoveryManager
from teeflow.kbs.service.self_attestation import decode_nonce

__all__ = ["MAX_SUBMISSION_BYTES", "create_recovery_app", "install_recovery_routes"]

#: Largest recovery submission accepted (bytes).
MAX_SUBMISSION_BYTES = 16 * 1024


def _json(data: Any) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")).encode("utf-8"),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def install_recovery_routes(app: FastAPI, manager: RecoveryManager) -> None:
    """Add the normal-mode recovery routes (module docstring) to the KBS app."""

    @app.get("/v1/recovery")
    async def recovery_status() -> Response:
        return _json(manager.status())

    @app.get("/v1/recovery/record")
    async def recovery_record() -> Response:
        record = manager.record()
        if record is None:
            raise NoAgreement("no recovery share set yet (no agreement in force)")
        return _json(record.model_dump(mode="json"))


def create_recovery_app(coordinator: RecoveryCoordinator) -> FastAPI:
    """The recovery-mode app (module docstring)."""
    app = FastAPI(
        title="teeflow Key Broker Service (recovery mode)",
        version=teeflow.__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)

    @app.get("/v1/kbs/evidence")
    async def evidence(nonce: str = Query(..., min_length=1, max_length=2048)) -> Response:
        try:
            raw = decode_nonce(nonce)
        except ParseError as exc:
            raise InvalidRequest(str(exc)) from None
        return _json(await run_in_threadpool(coordinator.evidence, raw))

    @app.get("/v1/recovery")
    async def status() -> Response:
        return _json(coordinator.status())

    @app.get("/v1/recovery/record")
    async def record() -> Response:
        return _json(coordinator.needs.record.model_dump(mode="json"))

    @app.post("/v1/recovery/shares")
    async def submit(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > 15):
            raise InvalidRequest("invalid Content-Length")
        if declared is not None and int(declared) > MAX_SUBMISSION_BYTES:
            raise PayloadTooLarge(f"request body larger than {MAX_SUBMISSION_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SUBMISSION_BYTES:
                raise PayloadTooLarge(f"request body larger than {MAX_SUBMISSION_BYTES} bytes")
        return _json(await run_in_threadpool(coordinator.submit, body))

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unavailable(rest: str) -> Response:
        raise ServiceUnavailable(
            "the KBS is in recovery mode: the parties must submit their recovery shares "
            "('teeflow kbs recover')"
        )

    return app
