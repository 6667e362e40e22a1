"""Benchmark: teeflow serve (attested, HPKE end to end, signed requests, HTTPS) against the same
model behind a plain FastAPI OIP endpoint (plain HTTP, no encryption, no attestation), same
run, same process layout, loopback.

Models: the examples/mnist MLP and CNN (28x28 inputs, random weights: throughput does not
depend on the values), batch 1 and 32, ``--clients`` concurrent client threads each sending
``--requests`` requests. Reports requests/s, p50/p99 latency (ms) per system and the ratios
(targets: throughput >= 0.8x plain, p99 <= 1.5x plain), and the benchmark process's RSS
(servers and clients share it). JSON to ``bench/results/serve.json``.

    PYTHONPATH=src python bench/serve.py --clients 4 --requests 100
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json
from teeflow.fl.package import build_package
from teeflow.kbs.api.server import BackgroundServer
from teeflow.serve.client import Client
from teeflow.serve.model import PackagePredictor
from teeflow.serve.oip import (
    HEADER_LENGTH,
    InferResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from teeflow.serve.sandbox import local_serving

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "examples" / "mnist"


def _arrays(model: str) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_bench_mnist_models", MNIST / "models.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    torch.manual_seed(0)
    return dict(mod.to_arrays(mod.build_model(model, (28, 28), 10)))


def _plain_app(predictor: PackagePredictor, name: str) -> Any:
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        req = decode_request(await request.body(), request.headers.get(HEADER_LENGTH))
        out = await run_in_threadpool(predictor.predict, req.inputs)
        body, n = encode_response(InferResponse(name, out), binary=req.binary_outputs)
        return Response(body, headers={} if n is None else {HEADER_LENGTH: str(n)})

    return app


def _drive(call: Any, clients: int, requests: int) -> dict[str, float]:
    lat: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        mine = []
        try:
            fn = call()
            for _ in range(requests):
                t0 = time.perf_counter()
                fn()
                mine.append((time.perf_counter() - t0) * 1e3)
        except BaseException as exc:
            errors.append(exc)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    lat.sort()
    return {"requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def run(clients: int, requests: int) -> dict[str, Any]:
    import uvicorn

    rows = []
    rng = np.random.default_rng(0)
    for model in ("mlp", "cnn"):
        arrays = _arrays(model)
        with tempfile.TemporaryDirectory() as tmp:
            serving = {"require_e2e": True, "usage_batch": 1000,
                       "callers": {"hospital-b": {"signed": True}}}
            cfg = {"model": model, "threads": 1}
            with local_serving(Path(tmp) / "fed", MNIST, arrays, owner="hospital-a",
                               parties={"hospital-a": ["model-owner"],
                                        "hospital-b": ["data-owner"]},
                               serving=serving, config=cfg) as srv:
                archive, digest = build_package(MNIST)
                plain_pred = PackagePredictor(archive, digest.hex(), arrays, cfg)
                config = uvicorn.Config(_plain_app(plain_pred, "mnist"), log_level="warning",
                                        lifespan="off", access_log=False)
                config.load()
                with BackgroundServer(uvicorn.Server(config)) as plain:
                    plain_url = plain.url.replace("https://", "http://")
                    for batch in (1, 32):
                        x = rng.random((batch, 28, 28), dtype=np.float32)

                        def teeflow_call(x: Any = x) -> Any:
                            c = Client(srv.url, pin=srv.pin, party=srv.keys["hospital-b"])
                            c.verify_server()
                            return lambda: c.infer({"input": x})

                        def plain_call(x: Any = x, plain_url: str = plain_url) -> Any:
                            h = httpx.Client(base_url=plain_url, timeout=60)
                            body, n = encode_request({"input": x})
                            hdr = {HEADER_LENGTH: str(n)}

                            def go() -> Any:
                                r = h.post("/v2/models/mnist/infer", content=body, headers=hdr)
                                r.raise_for_status()
                                return decode_response(r.content, r.headers.get(HEADER_LENGTH))
                            return go

                        _drive(plain_call, 1, 5)  # warm up both
                        _drive(teeflow_call, 1, 5)
                        base = _drive(plain_call, clients, requests)
                        tee = _drive(teeflow_call, clients, requests)
                        rows.append({
                            "model": model, "batch": batch, "clients": clients,
                            "plain": base, "teeflow": tee,
                            "throughput_ratio": tee["rps"] / base["rps"],
                            "p99_ratio": tee["p99_ms"] / base["p99_ms"],
                            "rss_bytes": _rss(),
                        })
                plain_pred.close()
    return {"benchmark": "serve", "machine": machine(), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--requests", type=int, default=100, help="requests per client")
    p.add_argument("--out", type=Path, default=None, help="JSON output file")
    a = p.parse_args()
    result = run(a.clients, a.requests)
    path = write_json("serve", result, a.out)
    print(f"{'model':5} {'batch':>5} {'plain rps':>10} {'tee rps':>8} {'ratio':>6} "
          f"{'plain p99':>10} {'tee p99':>8} {'ratio':>6} {'RSS MiB':>8}")
    for r in result["rows"]:
        print(f"{r['model']:5} {r['batch']:5d} {r['plain']['rps']:10.1f} "
              f"{r['teeflow']['rps']:8.1f} {r['throughput_ratio']:6.2f} "
              f"{r['plain']['p99_ms']:10.2f} {r['teeflow']['p99_ms']:8.2f} "
              f"{r['p99_ratio']:6.2f} {r['rss_bytes'] / 2**20:8.0f}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
