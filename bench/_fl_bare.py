"""The floor of the federated MNIST benchmark: the bare training loop, no framework.

All clients live in this one process and train one after the other; FedAvg is plain numpy
(:func:`_fl_common.fedavg`). Every round: each client trains ``epochs`` epochs from the global
model, the updates are averaged by ``num_examples``, and every client evaluates the new global
model on its test part (federated evaluation, as Flower's and teeflow's FedAvg do; the
example-weighted mean over the IID test parts is the accuracy on the whole 10,000-image test
set).

Run by ``bench/fl_mnist.py`` as a child process::

    python bench/_fl_bare.py --split FILE.npz --hparams JSON [--threads N]

and prints one ``FLBENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fl_common as C

__all__ = ["main", "run"]


def run(split: str, hp: C.HParams) -> dict[str, object]:
    """The federation; returns the measurements (seconds, accuracies per round)."""
    t_setup = time.perf_counter()
    clients = [C.load_split(split, i) for i in range(hp.clients)]
    model = C.build(hp)
    global_arrays = C.init_arrays(hp)
    setup_s = time.perf_counter() - t_setup

    history = []
    t_loop = time.perf_counter()
    for rnd in range(1, hp.rounds + 1):
        t0 = time.perf_counter()
        updates = []
        losses = []
        for data in clients:
            arrays, n, metrics = C.train_client(model, global_arrays, data, rnd, hp)
            updates.append((arrays, n))
            losses.append((metrics["train_loss"], n))
        t_fit = time.perf_counter()
        global_arrays = C.fedavg(updates)
        del updates
        t_agg = time.perf_counter()
        ev = [C.evaluate_client(model, global_arrays, data) for data in clients]
        n_eval = sum(n for n, _, _ in ev)
        acc = sum(n * a for n, _, a in ev) / n_eval
        loss = sum(n * lo for n, lo, _ in ev) / n_eval
        t_end = time.perf_counter()
        history.append(
            {
                "round": rnd,
                "seconds": round(t_end - t0, 4),
                "fit_s": round(t_fit - t0, 4),
                "aggregate_s": round(t_agg - t_fit, 4),
                "evaluate_s": round(t_end - t_agg, 4),
                "train_loss": sum(lo * n for lo, n in losses) / sum(n for _, n in losses),
                "eval_loss": loss,
                "eval_accuracy": acc,
            }
        )
        print(f"round {rnd:3d}  acc {acc:.4f}  {t_end - t0:.2f}s", file=sys.stderr, flush=True)
    loop_s = time.perf_counter() - t_loop
    return {
        "setup_seconds": setup_s,
        "loop_seconds": loop_s,
        "seconds_per_round": loop_s / hp.rounds,
        "final_accuracy": history[-1]["eval_accuracy"] if history else None,
        "final_loss": history[-1]["eval_loss"] if history else None,
        "history": history,
        "eval_examples": n_eval if history else 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, help="npz written by _fl_common.prepare_split")
    ap.add_argument("--hparams", required=True, help="HParams as JSON")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    hp = C.HParams.from_dict(json.loads(args.hparams))
    out = run(args.split, hp)
    out["torch_threads"] = torch.get_num_threads()
    out["torch_version"] = torch.__version__
    out["process_peak_rss_mb"] = C.self_peak_rss_mb()
    C.emit_result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
