"""Partitioned enclave application vs a plaintext monolith (issue 15), measured in one run.

    python bench/partitioned_app.py [--requests 400] [--concurrency 8] [--rounds 3] [--out FILE]

**teeflow (n = 4, f = 1)**: the sealed-auction package run by 4 replica processes on the
emulated SGX platform behind a local NATS JetStream server; each request is sealed by the
client (HPKE), ordered by JetStream, opened/executed/encrypted/signed by every replica and
accepted by the client at f + 1 = 2 matching verified signatures (end to end).

**plaintext baseline**: the same app logic (``handle``/``init`` of the same package) in one
process behind one HTTP endpoint (a bare ASGI endpoint on uvicorn — teeflow's HTTP server
stack without framework overhead — JSON in and out, no TLS), driven by the same number of
concurrent clients (``httpx.AsyncClient``, keep-alive; ``TCP_NODELAY`` on both ends so that
no Nagle/delayed-ACK stall is measured).

Each side runs ``--rounds`` times, interleaved (teeflow, plaintext, teeflow, ...), so that
load from other processes on the machine hits both alike; the round with the median
throughput is reported per side, with every round's numbers in the JSON.

Both sides get the same bid workload: ``--concurrency`` clients each sending bids one at a
time until ``--requests`` were answered. Reports requests/s, p50/p99 latency (ms), the
throughput ratio, and the replicas' peak RSS (VmHWM). JSON to ``bench/results`` (or
``--out``); a table on stderr. Targets (issue 15): ratio ≥ 0.3, replica RSS ≤ 64 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "examples" / "sealed-auction" / "package"

BASELINE = r"""
import json, socket, sys
import uvicorn
from teeflow.app.package import load_app, package_digest
logic = load_app(sys.argv[1], package_digest(sys.argv[1]))
box = {"state": logic.init()}

async def app(scope, receive, send):  # one ASGI endpoint: POST / {"client", "body"}
    if scope["type"] != "http":
        return
    raw, more = b"", True
    while more:
        msg = await receive()
        raw, more = raw + msg.get("body", b""), msg.get("more_body", False)
    try:
        box["state"], reply = logic.handle(box["state"], json.loads(raw))
    except logic.refused as exc:
        reply = {"refused": str(exc)}
    out = json.dumps(reply).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})

sock = socket.socket()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets:
sock.bind(("127.0.0.1", 0))  # no Nagle/delayed-ACK stall between header and body writes
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


def stats(latencies: list[float], seconds: float) -> dict[str, float]:
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": round(seconds, 3),
        "req_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1e3, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, 2),
    }


async def drive(send: Any, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker(i: int) -> None:
        for n in counter:
            t0 = time.perf_counter()
            await send(i, {"op": "bid", "amount": 100 + n, "name": f"w{i}"})
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return stats(latencies, time.perf_counter() - start)


async def both_sides(
    dep: Any, url: str, requests: int, concurrency: int, rounds: int
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Connect both sides once, then run ``rounds`` interleaved rounds of each."""
    import httpx

    seller = await dep.client().connect()
    await seller.request({"op": "open", "lot": "bench"})
    clients = [await dep.client().connect() for _ in range(concurrency)]

    async def tee_send(i: int, body: dict[str, Any]) -> None:
        r = await clients[i].request(body, timeout=60)
        assert r.value == {"accepted": True}, r.value

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    nodelay = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    async with httpx.AsyncClient(transport=nodelay, timeout=60) as http:
        await http.post(url, json={"client": "seller", "body": {"op": "open", "lot": "b"}})

        async def http_send(i: int, body: dict[str, Any]) -> None:
            r = await http.post(url, json={"client": f"c{i}", "body": body})
            assert r.json() == {"accepted": True}, r.text

        for i in range(concurrency):  # warm-up: connections, keys, code paths
            await tee_send(i, {"op": "bid", "amount": 1})
            await http_send(i, {"op": "bid", "amount": 1})
        tee, base = [], []
        for _ in range(rounds):
            tee.append(await drive(tee_send, requests, concurrency))
            base.append(await drive(http_send, requests, concurrency))
    for c in [seller, *clients]:
        await c.close()
    return tee, base


def median_round(results: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median throughput."""
    ranked = sorted(results, key=lambda r: r["req_per_s"])
    return ranked[len(ranked) // 2]


def vmhwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=400, help="requests per side")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients per side")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    p.add_argument("--out", type=Path, default=None, help="JSON output file")
    a = p.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from teeflow.demo.app_demo import deployment

    baseline = subprocess.Popen(  # the plaintext endpoint, started first (same run)
        [sys.executable, "-c", BASELINE, str(PACKAGE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert baseline.stdout is not None
        url = f"http://127.0.0.1:{int(baseline.stdout.readline())}/"
        with (
            tempfile.TemporaryDirectory(prefix="bench-app-") as tmp,
            deployment(Path(tmp), PACKAGE, replicas=4) as dep,
        ):
            for i in range(4):
                dep.start_replica(i, wait=False, snapshot_every=1000)
            for proc in dep.replicas.values():
                proc.wait_event("ready", 120)
            tees, bases = asyncio.run(both_sides(dep, url, a.requests, a.concurrency, a.rounds))
            rss = [vmhwm_mb(proc.pid) for proc in dep.replicas.values()]
    finally:
        baseline.terminate()
        baseline.wait(10)
    tee, base = median_round(tees), median_round(bases)
    ratio = round(tee["req_per_s"] / base["req_per_s"], 3)
    payload = {
        "benchmark": "partitioned_app",
        "machine": machine(),
        "config": {"replicas": 4, "f": 1, "requests": a.requests, "rounds": a.rounds,
                   "concurrency": a.concurrency, "platform": "emulated-sgx",
                   "baseline": "uvicorn ASGI endpoint, httpx.AsyncClient"},
        "teeflow_n4": tee,
        "plaintext_http": base,
        "rounds": {"teeflow_n4": tees, "plaintext_http": bases},
        "throughput_ratio": ratio,
        "replica_peak_rss_mb": rss,
        "targets": {"throughput_ratio_min": 0.3, "replica_rss_max_mb": 64,
                    "ratio_met": ratio >= 0.3, "rss_met": max(rss) <= 64},
    }  # fmt: skip
    path = write_json("partitioned_app", payload, a.out)
    rows = [("teeflow n=4 (seal, order, execute x4, sign, verify f+1)", tee),
            ("plaintext, one process, one HTTP endpoint (uvicorn)", base)]  # fmt: skip
    print(f"{'side':<58} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}", file=sys.stderr)
    for name, s in rows:
        print(f"{name:<58} {s['req_per_s']:>8} {s['p50_ms']:>8} {s['p99_ms']:>8}",
              file=sys.stderr)  # fmt: skip
    print(f"throughput ratio {ratio}; replica peak RSS (MB) {rss}; JSON {path}", file=sys.stderr)
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
