"""Benchmark: teeflow serve against a plain FastAPI OIP endpoint, same model, same run.

teeflow serve is attested, end-to-end encrypted, caller-authenticated and on HTTPS; the plain
endpoint serves the same model over plain HTTP, without encryption or attestation; same
process layout, loopback.

teeflow is measured with the SDK's default end-to-end sessions (``session-v1``: one HPKE setup
and one party signature per client, AES-GCM per request) and with per-request envelopes
(``hpke-v1``: HPKE and an RFC 9421 party signature per request).

Models: the examples/mnist MLP and CNN (28x28 inputs, random weights: throughput does not
depend on the values), batch 1 and 32, ``--clients`` concurrent client processes each
sending ``--requests`` sequential requests (after 5 warm-up requests, started together).
Reports requests/s, p50/p99 latency (ms) per system and the ratios (targets: throughput
>= 0.8x plain, p99 <= 1.5x plain) and each server process's RSS (the teeflow process also
runs the KBS, in threads). Each server and each client runs in its own process, all on the
same machine (they share its cores). Because the machine is shared, CPU per request is
reported too: the server process's CPU time (user + system) over the measured window
(from the first client's start to the last client's end) divided by the requests, and the
clients' CPU time per request. JSON to ``bench/results/serve.json``.

    PYTHONPATH=src python bench/serve.py --clients 4 --requests 100
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
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


def _client_proc(kind: str, target: dict[str, str], batch: int, requests: int,
                 go: Any, server_pid: int) -> dict[str, Any]:
    """One client process: ``requests`` sequential requests → latencies (ms), start and end
    on the system-wide monotonic clock (comparable across processes), the server process's
    CPU seconds at start and end, and this process's CPU seconds for the requests."""
    import psutil

    server = psutil.Process(server_pid)
    x = np.random.default_rng(batch).random((batch, 28, 28), dtype=np.float32)
    if kind.startswith("teeflow"):
        from teeflow.kbs.policy.parties import PartyKeys

        party = PartyKeys.load_dir(Path(target["keys"]), "hospital-b")
        c = Client(target["url"], pin=target["pin"], party=party,
                   session=kind == "teeflow")
        c.verify_server()

        def call() -> Any:
            return c.infer({"input": x})
    else:
        h = httpx.Client(base_url=target["url"], timeout=60)
        body, n = encode_request({"input": x})
        hdr = {HEADER_LENGTH: str(n)}

        def call() -> Any:
            r = h.post("/v2/models/mnist/infer", content=body, headers=hdr)
            r.raise_for_status()
            return decode_response(r.content, r.headers.get(HEADER_LENGTH))
    for _ in range(5):  # warm up (connection, TLS, first inference)
        call()
    go.wait(120)

    def server_cpu() -> float:
        t = server.cpu_times()
        return float(t.user + t.system)

    lat = []
    t0, s0, c0 = time.monotonic(), server_cpu(), time.process_time()
    for _ in range(requests):
        t = time.perf_counter()
        call()
        lat.append((time.perf_counter() - t) * 1e3)
    c1, s1, t1 = time.process_time(), server_cpu(), time.monotonic()
    return {"lat": lat, "t0": t0, "t1": t1, "server0": s0, "server1": s1, "cpu": c1 - c0}


def _drive(kind: str, target: dict[str, str], batch: int, clients: int,
           requests: int, server_pid: int) -> dict[str, float]:
    """``clients`` client processes against one server, started together."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Barrier(clients)
        with ProcessPoolExecutor(clients, mp_context=ctx) as pool:
            futures = [pool.submit(_client_proc, kind, target, batch, requests, go, server_pid)
                       for _ in range(clients)]
            done = [f.result(timeout=900) for f in futures]
    lat = sorted(v for d in done for v in d["lat"])
    first = min(done, key=lambda d: d["t0"])
    last = max(done, key=lambda d: d["t1"])
    wall = last["t1"] - first["t0"]
    return {"requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "server_cpu_ms_per_request": 1e3 * (last["server1"] - first["server0"]) / len(lat),
            "client_cpu_ms_per_request": 1e3 * sum(d["cpu"] for d in done) / len(lat)}


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _teeflow_server(conn: Any, model: str, workdir: str) -> None:
    """Child process: a local serving federation (KBS + teeflow serve) for ``model``."""
    serving = {"require_e2e": True, "usage_batch": 1000,
               "callers": {"hospital-b": {"signed": True}}}
    with local_serving(Path(workdir) / "fed", MNIST, _arrays(model), owner="hospital-a",
                       parties={"hospital-a": ["model-owner"], "hospital-b": ["data-owner"]},
                       serving=serving, config={"model": model, "threads": 1}) as srv:
        srv.keys["hospital-b"].save(Path(workdir) / "hospital-b", overwrite=True)
        conn.send((srv.url, str(Path(workdir) / "fed" / "pin.json")))
        conn.recv()  # stop


def _plain_server(conn: Any, model: str) -> None:
    """Child process: the same predict behind a plain FastAPI OIP endpoint (HTTP)."""
    import uvicorn

    archive, digest = build_package(MNIST)
    pred = PackagePredictor(archive, digest.hex(), _arrays(model), {"model": model, "threads": 1})
    config = uvicorn.Config(_plain_app(pred, "mnist"), log_level="warning", lifespan="off",
                            access_log=False)
    config.load()
    with BackgroundServer(uvicorn.Server(config)) as plain:
        conn.send(plain.url.replace("https://", "http://"))
        conn.recv()
    pred.close()


def run(clients: int, requests: int, models: tuple[str, ...] = ("mlp", "cnn")) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = []
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            tee_conn, tee_child = ctx.Pipe()
            plain_conn, plain_child = ctx.Pipe()
            tee_proc = ctx.Process(target=_teeflow_server, args=(tee_child, model, tmp))
            plain_proc = ctx.Process(target=_plain_server, args=(plain_child, model))
            tee_proc.start()
            plain_proc.start()
            try:
                url, pin = tee_conn.recv()
                plain_url = plain_conn.recv()
                tee_target = {"url": url, "pin": pin, "keys": str(Path(tmp) / "hospital-b")}
                for batch in (1, 32):
                    base = _drive("plain", {"url": plain_url}, batch, clients, requests,
                                  plain_proc.pid or 0)
                    tee = _drive("teeflow", tee_target, batch, clients, requests,
                                 tee_proc.pid or 0)
                    per_request = _drive("teeflow-request", tee_target, batch, clients,
                                         requests, tee_proc.pid or 0)
                    rows.append({
                        "model": model, "batch": batch, "clients": clients,
                        "plain": base, "teeflow": tee, "teeflow_per_request": per_request,
                        "throughput_ratio": tee["rps"] / base["rps"],
                        "p99_ratio": tee["p99_ms"] / base["p99_ms"],
                        "per_request_throughput_ratio": per_request["rps"] / base["rps"],
                        "per_request_p99_ratio": per_request["p99_ms"] / base["p99_ms"],
                        # the teeflow process also runs the KBS (in threads)
                        "teeflow_server_rss_bytes": _rss(tee_proc.pid or 0),
                        "plain_server_rss_bytes": _rss(plain_proc.pid or 0),
                    })
            finally:
                for conn in (tee_conn, plain_conn):
                    conn.send("stop")
                tee_proc.join(60)
                plain_proc.join(60)
    return {"benchmark": "serve", "machine": machine(), "load_average": os.getloadavg(),
            "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    p.add_argument("--requests", type=int, default=100, help="requests per client")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--out", type=Path, default=None, help="JSON output file")
    a = p.parse_args()
    models = tuple(m for m in a.models.split(",") if m)
    if not models or set(models) - {"mlp", "cnn"}:
        p.error("--models takes mlp and/or cnn")
    result = run(a.clients, a.requests, models)
    path = write_json("serve", result, a.out)
    print("teeflow = end-to-end sessions (SDK default); per-request = hpke-v1 + RFC 9421 each")
    print(f"{'model':5} {'batch':>5} {'system':>11} {'rps':>8} {'ratio':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'ratio':>6} {'srv CPU ms/req':>14} {'cli CPU ms/req':>14}")
    for r in result["rows"]:
        for key, label, ratio, p99 in (
                ("plain", "plain", None, None),
                ("teeflow", "teeflow", "throughput_ratio", "p99_ratio"),
                ("teeflow_per_request", "per-request", "per_request_throughput_ratio",
                 "per_request_p99_ratio")):
            m = r[key]
            rt = f"{r[ratio]:6.2f}" if ratio else f"{'':6}"
            pr = f"{r[p99]:6.2f}" if p99 else f"{'':6}"
            print(f"{r['model']:5} {r['batch']:5d} {label:>11} {m['rps']:8.1f} {rt} "
                  f"{m['p50_ms']:7.2f} {m['p99_ms']:7.2f} {pr} "
                  f"{m['server_cpu_ms_per_request']:14.3f} "
                  f"{m['client_cpu_ms_per_request']:14.3f}")
        print(f"{'':11} server RSS MiB teeflow/plain "
              f"{r['teeflow_server_rss_bytes'] / 2**20:.0f}/"
              f"{r['plain_server_rss_bytes'] / 2**20:.0f}")
    print(f"load average {result['load_average']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
