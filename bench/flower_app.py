"""The Flower side of the federated MNIST benchmark: the same federation as the bare loop, on
Flower's Simulation Runtime (``flwr.simulation.run_simulation`` with the Ray backend).

Runs with the Flower virtual environment's Python (``bench/.venv-flower``, made by
``bench/fl_mnist.py``), never with teeflow's::

    bench/.venv-flower/bin/python bench/flower_app.py --split FILE.npz --hparams JSON \\
        [--client-cpus 1] [--ray-cpus 2]

Flower's message API (flwr >= 1.21): a ``ClientApp`` with ``@app.train()`` /
``@app.evaluate()`` and a ``ServerApp`` whose ``@app.main()`` runs
``flwr.serverapp.strategy.FedAvg.start`` — the pattern of Flower's PyTorch quickstart. Same
model (``examples/mnist/models.py``), same data split (the npz of ``_fl_common.prepare_split``,
indexed by Flower's ``partition-id``), same initial weights, same training and evaluation code
(``_fl_common.train_client`` / ``evaluate_client``) as the bare loop and teeflow's package.
Every round: all ``clients`` nodes train, Flower's FedAvg averages by ``num-examples``, and all
nodes evaluate (federated evaluation; the weighted mean over the IID test parts is the accuracy
on the whole test set).

Fairness settings (documented in ``bench/fl_mnist.py``): Ray gets the machine's CPUs
(``--ray-cpus``), each simulated client ``--client-cpus`` of them (so ``ray_cpus /
client_cpus`` actors train in parallel) and as many torch threads; the dashboard is off and
Flower's telemetry is disabled (``FLWR_TELEMETRY_ENABLED=0``, set by the parent).

Prints one ``FLBENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

_T_START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

import _fl_common as C  # noqa: E402

__all__ = ["client_app", "main", "server_app"]

# ----------------------------------------------------------------------------- ClientApp

client_app = ClientApp()


def _setup(config: ConfigRecord) -> tuple[C.HParams, str]:
    import torch

    threads = int(config["threads"])  # type: ignore[arg-type]
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return C.HParams.from_dict(json.loads(str(config["hparams"]))), str(config["split"])


def _to_numpy(record: ArrayRecord) -> dict[str, Any]:
    return {k: v.numpy() for k, v in record.items()}


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on this node's partition (``partition-id``)."""
    hp, split = _setup(msg.content["config"])  # type: ignore[arg-type]
    pid = int(context.node_config["partition-id"])
    data = C.load_split(split, pid)
    model = C.build(hp)
    rnd = int(msg.content["config"]["server-round"])  # type: ignore[index, arg-type]
    arrays, n, metrics = C.train_client(model, _to_numpy(msg.content["arrays"]), data, rnd, hp)  # type: ignore[arg-type]
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({**metrics, "num-examples": n}),
        }
    )
    del arrays
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this node's test part."""
    hp, split = _setup(msg.content["config"])  # type: ignore[arg-type]
    pid = int(context.node_config["partition-id"])
    data = C.load_split(split, pid)
    model = C.build(hp)
    n, loss, acc = C.evaluate_client(model, _to_numpy(msg.content["arrays"]), data)  # type: ignore[arg-type]
    content = RecordDict(
        {"metrics": MetricRecord({"eval_loss": loss, "accuracy": acc, "num-examples": n})}
    )
    return Message(content=content, reply_to=msg)


# ----------------------------------------------------------------------------- ServerApp

server_app = ServerApp()

#: Filled by the server app's main (same process as :func:`main`).
RUN: dict[str, Any] = {}


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """FedAvg over all nodes for ``rounds`` rounds; records timings and metrics in RUN."""
    hp: C.HParams = RUN["hp"]
    RUN["t_server_start"] = time.perf_counter()
    stamps: dict[int, float] = {}

    def round_done(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamps[server_round] = time.perf_counter()  # called before round 1 and after each
        return None

    config = ConfigRecord(
        {"split": RUN["split"], "hparams": json.dumps(hp.to_dict()), "threads": RUN["threads"]}
    )
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=hp.clients,
        min_evaluate_nodes=hp.clients,
        min_available_nodes=hp.clients,
    )
    init = C.init_arrays(hp)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: v for k, v in _torch_state(init).items()}),
        num_rounds=hp.rounds,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=round_done,
    )
    RUN["t_server_end"] = time.perf_counter()
    history = []
    for r in range(1, hp.rounds + 1):
        ev = result.evaluate_metrics_clientapp.get(r, {})
        tr = result.train_metrics_clientapp.get(r, {})
        history.append(
            {
                "round": r,
                "seconds": round(stamps.get(r, 0.0) - stamps.get(r - 1, 0.0), 4),
                "train_loss": tr.get("train_loss"),
                "eval_loss": ev.get("eval_loss"),
                "eval_accuracy": ev.get("accuracy"),
            }
        )
    RUN["history"] = history
    RUN["loop_seconds"] = stamps[hp.rounds] - stamps[0] if hp.rounds in stamps else None


def _torch_state(arrays: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v) for k, v in arrays.items()}


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True)
    ap.add_argument("--hparams", required=True)
    ap.add_argument("--client-cpus", type=float, default=1.0, help="Ray CPUs per client")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs Ray may schedule on")
    args = ap.parse_args(argv)

    import flwr
    import ray
    from flwr.simulation import run_simulation

    hp = C.HParams.from_dict(json.loads(args.hparams))
    threads = max(1, int(args.client_cpus))
    RUN.update({"hp": hp, "split": args.split, "threads": threads})
    t_sim = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=hp.clients,
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.ray_cpus, "include_dashboard": False},
        },
    )
    t_end = time.perf_counter()
    history = RUN.get("history", [])
    loop = RUN.get("loop_seconds")
    C.emit_result(
        {
            "flwr_version": flwr.__version__,
            "ray_version": ray.__version__,
            "backend": "ray",
            "client_cpus": args.client_cpus,
            "ray_cpus": args.ray_cpus,
            "parallel_clients": int(args.ray_cpus // args.client_cpus),
            "torch_threads_per_client": threads,
            "import_seconds": t_sim - _T_START,
            "simulation_seconds": t_end - t_sim,
            "startup_seconds": RUN.get("t_server_start", t_sim) - t_sim,
            "loop_seconds": loop,
            "seconds_per_round": loop / hp.rounds if loop else None,
            "final_accuracy": history[-1]["eval_accuracy"] if history else None,
            "final_loss": history[-1]["eval_loss"] if history else None,
            "history": history,
            "driver_peak_rss_mb": C.self_peak_rss_mb(),
        }
    )
    return 0 if history else 1


if __name__ == "__main__":
    # Ray workers import the apps by module name: run the copy imported as ``flower_app``,
    # not ``__main__``, so they pickle by reference.
    import flower_app

    raise SystemExit(flower_app.main())
