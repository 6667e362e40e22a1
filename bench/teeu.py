"""Benchmark: authorised compute (TEEU) ``average`` over two sealed float32 inputs, end to end.

Full path, on loopback, emulated TEE (``teeflow.compute.sandbox.local_federation``: a real
KBS on SQLite and a real compute worker, both over HTTPS):

1. each owner encodes + seals its array (``crypto``), uploads the blob to the worker
   (``transfer``) and the wrapped key + signed grant to the KBS (``kbs_upload``);
2. ``teeu.run("stats:average", x, y)``: the worker attests for the job (``attestation``:
   RCAR auth + quote + appraisal), receives both keys (``release``), unseals + decodes
   (``crypto``), runs ``(x + y) / 2`` (``compute``), seals the result to both recipients and
   records lineage (``crypto`` / ``record``); the rest of the request is ``transfer``;
3. a recipient fetches the sealed result (``transfer``) and verifies + unwraps + unseals it
   (``crypto``).

Baselines, in the same run, on the same arrays:

* ``plaintext_numpy`` — only ``(x + y) / 2`` in this process;
* ``plaintext_https`` — the same job without any protection: both arrays uploaded raw over
  the same transport (uvicorn + TLS 1.3 on loopback, httpx client), computed, the result
  downloaded raw — what a party would do with a trusted, non-TEE server.

Ratios are reported against both. Target (issue 6): full path ≤ 2 × plaintext end to end.
Medians over ``--reps`` runs after one warm-up. Writes ``bench/results/teeu.json``.

Usage: .venv/bin/python bench/teeu.py [--size-mib 128] [--reps 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json
from teeflow.compute.party import Party
from teeflow.compute.sandbox import local_federation
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, make_server

_PACKAGE = {
    "teeflow.yaml": "name: stats\nversion: 1.0.0\nfunctions:\n  average: funcs:average\n",
    "funcs.py": "def average(x, y):\n    return (x + y) / 2\n",
}


def _plain_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    store: dict[str, bytes] = {}

    @app.put("/in/{name}")
    async def put(name: str, request: Request) -> dict[str, int]:
        store[name] = await request.body()
        return {"size": len(store[name])}

    @app.post("/average")
    async def average() -> Response:
        x = np.frombuffer(store["x"], dtype=np.float32)
        y = np.frombuffer(store["y"], dtype=np.float32)
        return Response(((x + y) / 2).tobytes(), media_type="application/octet-stream")

    return app


def _plain_server(runtime: KbsRuntime) -> BackgroundServer:
    """The plaintext baseline server: same uvicorn + TLS settings as the KBS/worker."""
    server = make_server(runtime)
    server.config.app = _plain_app()
    server.config.loaded = False
    ssl_ctx = server.config.ssl
    server.config.load()
    server.config.ssl = ssl_ctx
    return BackgroundServer(server).start()


def _plaintext_https(url: str, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, verify=False, timeout=600) as http:
        http.put("/in/x", content=x.tobytes()).raise_for_status()
        http.put("/in/y", content=y.tobytes()).raise_for_status()
        body = http.post("/average").content
    out = np.frombuffer(body, dtype=np.float32)
    assert out.shape == x.shape
    return time.perf_counter() - t0


def _full_path(alice: Party, bob: Party, url: str, x: np.ndarray[Any, Any],
               y: np.ndarray[Any, Any]) -> dict[str, float]:
    start = time.perf_counter()
    ta, tb = alice.teeu(url), bob.teeu(url)
    t = {"crypto": 0.0, "transfer": 0.0, "kbs_upload": 0.0}
    inputs = []
    for party, teeu, arr in ((alice, ta, x), (bob, tb, y)):
        inputs.append(party.seal(arr, allow=["stats:average"], recipients=["alice", "bob"],
                                 to=teeu))
        t["crypto"] += party.last_timings["seal"]
        t["transfer"] += party.last_timings["upload"]
        t["kbs_upload"] += party.last_timings["kbs"]
    j0 = time.perf_counter()
    ref = ta.run("stats:average", *inputs)
    job = time.perf_counter() - j0
    w = ta.last_timings
    value = alice.open(ref)
    total = time.perf_counter() - start
    assert value.shape == x.shape
    o = alice.last_timings
    t["crypto"] += w.get("decrypt", 0) + w.get("seal", 0) + o["open"]
    t["attestation"] = w.get("attestation", 0) + w.get("release", 0) + o["verify"]
    t["compute"] = w.get("compute", 0)
    t["record"] = w.get("record", 0)
    t["transfer"] += job - sum(w.values()) + o["download"]
    t["total"] = total
    for k in ("attestation", "release", "decrypt", "compute", "seal", "record"):
        t[f"worker_{k}"] = w.get(k, 0)
    return t


def _serve(work: Path) -> None:
    """Child process: the federation and the plaintext server, until stdin closes."""
    pkg = work / "stats"
    pkg.mkdir()
    for name, text in _PACKAGE.items():
        (pkg / name).write_text(text)
    with local_federation(
        work / "fed", pkg, parties={"alice": ["data-owner"], "bob": ["data-owner"]},
        readers=["alice", "bob"], recipients=["alice", "bob"], platform="emulated-sgx",
    ) as fed:
        plain = _plain_server(fed.runtime)
        try:
            (work / "ready.json").write_text(json.dumps(
                {"worker": fed.worker_url, "plain": plain.url}))
            sys.stdin.read()
        finally:
            plain.stop()


def _measure(work: Path, args: argparse.Namespace, n: int) -> tuple[list[Any], ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    urls = json.loads((work / "ready.json").read_text())
    pin, home = work / "fed" / "pin.json", work / "fed" / "home"
    rows: list[dict[str, float]] = []
    numpy_s: list[float] = []
    https_s: list[float] = []
    with Party.load("alice", pin=pin, home=home) as alice, \
            Party.load("bob", pin=pin, home=home) as bob:
        for rep in range(args.reps + 1):
            t0 = time.perf_counter()
            (x + y) / 2
            numpy_s.append(time.perf_counter() - t0)
            https_s.append(_plaintext_https(urls["plain"], x, y))
            rows.append(_full_path(alice, bob, urls["worker"], x, y))
            print(f"rep {rep}: full {rows[-1]['total']:.3f} s, plaintext https "
                  f"{https_s[-1]:.3f} s, numpy {numpy_s[-1]:.3f} s", flush=True)
    return rows[1:], numpy_s[1:], https_s[1:]  # drop the warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        _serve(args.serve)
        return
    n = args.size_mib * (1 << 20) // 4
    work = Path(tempfile.mkdtemp(prefix="teeflow-bench-teeu-"))
    # the federation (KBS + worker + plaintext server) runs in a child process, so the
    # client does not share a GIL with the servers
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(work)],
                             stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (work / "ready.json").is_file():
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the federation did not start")
            time.sleep(0.1)
        rows, numpy_s, https_s = _measure(work, args, n)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    keys = ["crypto", "transfer", "kbs_upload", "attestation", "compute", "record", "total",
            "worker_attestation", "worker_release", "worker_decrypt", "worker_compute",
            "worker_seal", "worker_record"]
    breakdown = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}
    med_numpy, med_https = statistics.median(numpy_s), statistics.median(https_s)
    payload = {
        "benchmark": "teeu",
        "machine": machine(),
        "load_average_at_end": list(os.getloadavg()),
        "size_bytes_per_input": n * 4,
        "reps": args.reps,
        "full_path_s": breakdown,
        "plaintext_numpy_s": med_numpy,
        "plaintext_https_s": med_https,
        "ratio_vs_plaintext_https": breakdown["total"] / med_https,
        "ratio_vs_plaintext_numpy": breakdown["total"] / med_numpy,
        "target": "full path <= 2 x plaintext end to end",
        "samples": {"full": rows, "numpy": numpy_s, "https": https_s},
    }
    path = write_json("teeu", payload, args.out)
    b = breakdown
    print(f"full path {b['total']:.3f} s  (crypto {b['crypto']:.3f}, transfer "
          f"{b['transfer']:.3f}, kbs upload {b['kbs_upload']:.3f}, attestation+release "
          f"{b['attestation']:.3f}, compute {b['compute']:.3f}, record {b['record']:.3f})")
    print(f"plaintext over HTTPS {med_https:.3f} s -> ratio "
          f"{payload['ratio_vs_plaintext_https']:.2f}")
    print(f"plaintext numpy only {med_numpy:.3f} s -> ratio "
          f"{payload['ratio_vs_plaintext_numpy']:.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
