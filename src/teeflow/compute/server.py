"""The compute worker's HTTPS layer: FastAPI app, TLS context, uvicorn server, ``serve``.

Routes and the job flow are documented in :mod:`teeflow.compute.worker`; ``GET /metrics``
serves Prometheus metrics (``teeflow_compute_requests_total`` by route template, method and
status, ``teeflow_compute_request_seconds``; ``docs/metrics.md``).
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response

from teeflow.compute.jobs import (
    ComputeError,
    ExecutionLimits,
    InvalidJob,
    JobRequest,
    NotPermitted,
    PayloadTooLarge,
    Unauthenticated,
)
from teeflow.compute.worker import ComputeWorker, compute_measurement
from teeflow.errors import Error, KbsError
from teeflow.kbs.api.problems import KbsProblem
from teeflow.kbs.ca.tls import server_context
from teeflow.kbs.policy.request_signing import (
    RequestSignatureError,
    RequestVerifier,
    SignedRequest,
)
from teeflow.observability.http import instrument
from teeflow.observability.metrics import HttpMetrics, new_registry
from teeflow.platform.selection import PlatformOptions

__all__ = ["MAX_JOB_BYTES", "make_worker_server", "serve", "worker_tls_context"]

_INPUT_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/teeu-input/[0-9a-f]{64}")
#: Largest job request body (bytes).
MAX_JOB_BYTES = 64 * 1024


def _problem(exc: ComputeError) -> Response:
    return Response(json.dumps(exc.to_problem()), status_code=exc.status,
                    media_type="application/problem+json")


def _unauthenticated(exc: RequestSignatureError) -> ComputeError:
    return Unauthenticated(str(exc))


def _create_app(worker: ComputeWorker) -> FastAPI:
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="teeflow compute worker", docs_url=None, redoc_url=None,
                  openapi_url=None)
    verifier = RequestVerifier(worker.party_keys)
    signed_small = verifier.dependency(max_body=MAX_JOB_BYTES, on_error=_unauthenticated)
    instrument(app, HttpMetrics(new_registry(), "compute"))

    @app.exception_handler(ComputeError)
    async def _compute_error(_: Request, exc: ComputeError) -> Response:
        return _problem(exc)

    @app.exception_handler(Error)
    async def _other_error(_: Request, exc: Error) -> Response:
        status = exc.status if isinstance(exc, KbsProblem) else 500
        return _problem(ComputeError(f"{type(exc).__name__} (HTTP {status} upstream)"))

    @app.get("/v1/compute/info")
    async def info() -> dict[str, Any]:
        return worker.info()

    @app.put("/v1/compute/inputs/{owner}/teeu-input/{digest_hex}")
    async def put_input(owner: str, digest_hex: str, request: Request) -> dict[str, Any]:
        # order: signature (401) -> signer is the owner (403) -> declared size against the
        # agreement's limits and the owner's quota (413) -> stream, hashing, into a buffer
        # that grows with what really arrives (never Content-Length up front)
        try:
            signed = verifier.verify_headers(request.method, str(request.url), request.headers)
        except RequestSignatureError as exc:
            raise Unauthenticated(str(exc)) from None
        if signed.party != owner:
            raise NotPermitted(f"{signed.party} may not upload inputs of {owner}")
        input_id = f"{owner}/teeu-input/{digest_hex}"
        if _INPUT_ID.fullmatch(input_id) is None:
            raise InvalidJob("malformed input id")
        limits = worker.request_limits()
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or len(declared) > 15:
            raise InvalidJob("a sealed input needs a Content-Length")
        size = int(declared)
        if size > limits.max_input_bytes:
            raise PayloadTooLarge(
                f"a sealed input may have at most {limits.max_input_bytes} bytes")
        with worker.reserve_upload(owner, size):
            hasher = hashlib.sha256()
            buf = bytearray()
            async for chunk in request.stream():
                if len(buf) + len(chunk) > size:
                    raise InvalidJob("body longer than its Content-Length")
                hasher.update(chunk)
                buf += chunk
            if len(buf) != size:
                raise InvalidJob("body shorter than its Content-Length")
            try:
                verifier.check_content(signed, hasher.digest())
            except RequestSignatureError as exc:
                raise Unauthenticated(str(exc)) from None
            blob = bytes(buf)
            del buf
            await run_in_threadpool(worker.put_input, input_id, blob)
        return {"id": input_id, "size": len(blob)}

    @app.post("/v1/compute/jobs")
    async def run_job(request: Request,
                      signed: SignedRequest = Depends(signed_small)) -> Response:  # noqa: B008
        body = await request.body()
        try:
            job = JobRequest.model_validate_json(body)
        except ValueError:
            raise InvalidJob("malformed job request") from None
        timings: dict[str, float] = {}
        ref = await run_in_threadpool(worker.run_job, job, timings=timings,
                                      submitter=signed.party)
        server_timing = ", ".join(f"{k};dur={v * 1e3:.3f}" for k, v in timings.items())
        return Response(ref.model_dump_json(), media_type="application/json",
                        headers={"Server-Timing": server_timing})

    @app.get("/v1/compute/results/{result_id}")
    async def get_result(result_id: str,
                         _: SignedRequest = Depends(signed_small)) -> Response:  # noqa: B008
        blob, _ref = worker.get_result(result_id)
        return Response(blob, media_type="application/octet-stream")

    @app.get("/v1/compute/results/{result_id}/ref")
    async def get_ref(result_id: str,
                      _: SignedRequest = Depends(signed_small)) -> Response:  # noqa: B008
        _blob, ref = worker.get_result(result_id)
        return Response(ref.model_dump_json(), media_type="application/json")

    return app


def worker_tls_context(worker: ComputeWorker) -> ssl.SSLContext:
    """Server TLS 1.3 context with the worker's federation certificate (no client
    certificates: inputs are sealed, results sealed to recipients, requests party-signed;
    :func:`teeflow.kbs.ca.tls.server_context`).

    Raises:
        KbsError: not started, or OpenSSL refuses the credential.
    """
    if worker.certificate is None or worker._tls_key is None:
        raise KbsError("start the worker first")
    return server_context(worker.certificate, worker._tls_key)


def make_worker_server(
    worker: ComputeWorker, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> uvicorn.Server:
    """A uvicorn server for a started worker (not started; TLS from
    :func:`worker_tls_context`)."""
    config = uvicorn.Config(_create_app(worker), host=host, port=port, log_level=log_level,
                            access_log=log_level == "debug", proxy_headers=False,
                            server_header=False, lifespan="off", timeout_graceful_shutdown=5)
    config.load()
    config.ssl = worker_tls_context(worker)
    return uvicorn.Server(config)


def serve(
    kbs_url: str | None, pin: Path, package: Path, *, listen: str = "127.0.0.1:9443",
    platform: PlatformOptions | None = None, store_dir: Path | None = None,
    limits: ExecutionLimits | None = None, on_ready: Callable[[ComputeWorker], None] | None = None,
    log_level: str = "info", enrollment: str | None = None,
    gpu: str = "none",
) -> None:
    """Run a worker until interrupted (``teeflow compute serve``; blocking).

    ``gpu`` names the GPU attester (:func:`teeflow.platform.nvidia.gpu_attester_for`).

    The worker's attester comes from ``platform`` (:class:`PlatformOptions`, default
    ``auto``: the TEE found, else ``PlatformError``); an emulated platform reports
    :func:`compute_measurement`.
    ``enrollment`` is the compute operator's enrollment token (role ``compute``).

    Raises:
        PlatformError: unknown platform, no TEE for ``auto``, interface unusable.
        KbsError, AttestationFailed, PackageError: as :meth:`ComputeWorker.start`.
    """
    from teeflow.kbs.api.server import parse_listen

    host, port = parse_listen(listen)
    options = platform if platform is not None else PlatformOptions()
    attester = options.attester(compute_measurement())
    from teeflow.platform.nvidia import gpu_attester_for

    worker = ComputeWorker(pin, attester, package, kbs_url=kbs_url, store_dir=store_dir,
                           limits=limits, enrollment=enrollment,
                           gpu=gpu_attester_for(gpu))
    try:
        worker.start()
        worker.url = f"https://{host}:{port}"
        server = make_worker_server(worker, host, port, log_level=log_level)
        if on_ready is not None:
            on_ready(worker)
        server.run()
    finally:
        worker.close()
