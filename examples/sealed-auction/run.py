"""Sealed-bid auction on a partitioned enclave application, in one command.

    python examples/sealed-auction/run.py [--json] [--bidders 5] [--replicas 4]

Starts a NATS JetStream server, a KBS (emulated SGX) with an agreement naming this package
and n replicas, the n replicas (``python -m teeflow.app.replica``, emulated SGX), and then
the seller and the bidders as clients (:class:`teeflow.app.Client`): the seller opens the
lot, each bidder seals a bid to the application key, the seller closes the lot, and every
bidder asks for the result and checks that f + 1 replicas signed the same reply. The host
(this script, NATS, the replica machines) never sees a bid: NATS carries only HPKE
ciphertexts. Prints a summary (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def auction(dep, bidders: int, seed: int) -> dict:
    rng = random.Random(seed)  # noqa: S311 - demo bid amounts, not secrets
    seller = await dep.client().connect()
    opened = await seller.request({"op": "open", "lot": "lot-1"})
    clients = [await dep.client().connect() for _ in range(bidders)]
    bids = {}
    for i, c in enumerate(clients):
        amount = rng.randrange(100, 10_000)
        bids[c.id] = amount
        r = await c.request({"op": "bid", "amount": amount, "name": f"bidder-{i}"})
        assert r.value == {"accepted": True}, r.value
    closed = await seller.request({"op": "close"})
    checks = []
    for c in clients:
        r = await c.request({"op": "result"})
        checks.append({"client": c.id, "signers": list(r.signers), "faulty": list(r.faulty),
                       "matches": r.value == closed.value})
    ranked = sorted(bids.items(), key=lambda kv: (-kv[1], kv[0]))
    expected = {"winner": ranked[0][0], "price": ranked[1][1] if len(ranked) > 1 else ranked[0][1]}
    for c in [seller, *clients]:
        await c.close()
    return {
        "lot": opened.value["opened"],
        "winner": closed.value["winner"],
        "winner_name": closed.value["name"],
        "price": closed.value["price"],
        "second_price_correct": expected == {k: closed.value[k] for k in ("winner", "price")},
        "quorum": seller.quorum,
        "bidders_verified": sum(
            1 for c in checks if c["matches"] and len(c["signers"]) >= seller.quorum
        ),
        "bidders": bidders,
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON summary")
    p.add_argument("--bidders", type=int, default=5, help="number of bidders")
    p.add_argument("--replicas", type=int, default=4, help="number of replicas n (f = (n-1)//3)")
    p.add_argument("--seed", type=int, default=7, help="seed of the random bids")
    p.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temp dir)")
    a = p.parse_args(argv)
    from teeflow.demo.app_demo import deployment

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sealed-auction-") as tmp:
        work = a.workdir or Path(tmp)
        with deployment(work, HERE / "package", replicas=a.replicas) as dep:
            for i in range(a.replicas):
                dep.start_replica(i, wait=False)
            for proc in dep.replicas.values():
                proc.wait_event("ready", 120)
            summary = asyncio.run(auction(dep, a.bidders, a.seed))
    summary["seconds"] = round(time.monotonic() - start, 2)
    summary["platform"] = "emulated-sgx"
    ok = summary["second_price_correct"] and summary["bidders_verified"] == a.bidders
    summary["ok"] = ok
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"lot {summary['lot']}: winner {summary['winner_name']} ({summary['winner']}) "
              f"pays {summary['price']} (second price)")
        print(f"{summary['bidders_verified']}/{a.bidders} bidders verified >= f+1="
              f"{summary['quorum']} matching replica signatures; {summary['seconds']} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
