"""The teeflow side of the federated MNIST benchmark: the full protocol, separate processes.

Run by ``bench/fl_mnist.py`` as a child process (teeflow's ``.venv``)::

    python bench/_fl_teeflow.py --data-dir DIR --hparams JSON --workdir DIR

What it does (everything counts in the parent's wall time, as ``teeflow demo`` would):

1. setup: a fresh ``TEEFLOW_HOME`` (emulation authority), ``clients`` parties with keys, the
   compute package ``examples/mnist`` built deterministically, ``teeflow kbs serve`` (SQLite,
   emulated TEE) as a child process (:meth:`teeflow.fl.session.LocalFederation.start_kbs`),
   the KBS verified and pinned (``verify_kbs``), the agreement (``allow_emulated: true``, the
   built-in aggregator and client measurements of the installed teeflow) signed by every party
   and submitted, the package sealed and published;
2. the federation: ``teeflow aggregator run`` and ``clients`` × ``teeflow client run`` as
   separate processes (:class:`~teeflow.fl.session.LocalFederation`): attestation, workload
   certificates, mutual TLS, the sealed package handed to the clients, sealed checkpoints and
   the KBS counter every round, the provenance log, the model sealed to the output recipient;
3. afterwards: ``verify_model`` (provenance chain, signatures, final digest).

Same federation as the bare loop and Flower: ``mnist:DIR?clients=N&index=i&seed=S`` gives each
client the same IID part as ``_fl_common.prepare_split``; the train config (``model``, ``lr``,
``batch_size``, ``epochs``, ``seed``, ``threads=1``) makes ``examples/mnist/task.py`` run the
same arithmetic (round numbers 1..R, initial model from ``init_arrays`` with the same seed).

``--reattest per_round`` gives the agreement ``attestation: {max_age: per_round}`` (issue 11):
the aggregator and every client attest again to the KBS before every round; the result then
carries ``reattestation`` (KBS flows, their latency p50/p99, flows per second).

Timing of the security work: the aggregator and clients run with ``bench/_fl_probe`` on
``PYTHONPATH`` (a ``sitecustomize`` that times the runtime's attestation, TLS-connect, sealing
and provenance functions and writes one JSON per process). Prints one ``FLBENCH_RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _fl_common as C  # noqa: E402

__all__ = ["available", "main", "run"]

PROBE = BENCH / "_fl_probe"
FEDERATION = "bench"
SESSION = "mnist-bench"


def available() -> tuple[bool, str]:
    """Whether the teeflow FL runtime this harness needs is importable (and why not)."""
    try:
        from teeflow.fl import session  # noqa: F401
        from teeflow.fl.aggregator import fl_measurement  # noqa: F401
        from teeflow.fl.outputs import verify_model  # noqa: F401
        from teeflow.fl.publish import publish_package  # noqa: F401
        from teeflow.fl.session import LocalFederation  # noqa: F401
    except Exception as exc:  # any import failure means "not available"
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def _party(i: int) -> str:
    return f"party-{i:02d}"


def _setup(hp: C.HParams, work: Path, lf: Any, reattest: str = "once") -> dict[str, Any]:
    from teeflow.fl.aggregator import fl_measurement
    from teeflow.fl.package import build_package
    from teeflow.fl.publish import publish_package
    from teeflow.kbs.client.sdk import KbsClient
    from teeflow.kbs.client.verification import verify_kbs
    from teeflow.kbs.policy.agreement import (
        FederationAgreement,
        SgxReferenceValues,
    )
    from teeflow.kbs.policy.agreement import digest as agreement_digest
    from teeflow.kbs.policy.parties import PartyKeys
    from teeflow.kbs.policy.signing import (
        SignedAgreement,
    )

    home = Path(os.environ["TEEFLOW_HOME"])
    parties = [_party(i) for i in range(hp.clients)]
    keys = {}
    for p in parties:
        keys[p] = PartyKeys.generate(p)
        keys[p].save(home / "parties" / p)
    archive_bytes, pkg_digest = build_package(C.ROOT / "examples" / "mnist")
    archive = work / "mnist.tar"
    archive.write_bytes(archive_bytes)
    # the agreement names the measurement the KBS reports, so the KBS starts first: the
    # benchmark accepts any first agreement (bootstrap is not what it measures)
    kbs = lf.start_kbs(platform="emulated-sgx", federation=FEDERATION, timeout=120.0,
                       insecure_first_agreement=True)
    manifests = {
        role: _manifest(work / f"{role}-workload", role) for role in ("aggregator", "client")
    }
    agg_mr = fl_measurement("aggregator", manifests["aggregator"]).hex()
    cli_mr = fl_measurement("client", manifests["client"]).hex()
    agreement = FederationAgreement.from_mapping(
        {
            "federation": FEDERATION,
            "version": 1,
            "previous": None,
            "parties": {
                p: {
                    "sign_key": keys[p].public().sign_key,
                    "recipient_key": keys[p].public().recipient_key,
                    "roles": ["data-owner", "model-owner", "aggregator-operator"]
                    if i == 0
                    else ["data-owner"],
                }
                for i, p in enumerate(parties)
            },
            "workloads": {
                "kbs": {"sgx": {"mrenclave": [kbs.measurement]}},
                "aggregator": {"sgx": {"mrenclave": [agg_mr]}},
                "client": {"sgx": {"mrenclave": [cli_mr]}},
            },
            "packages": {
                "mnist": {
                    "digest": pkg_digest.hex(),
                    "entrypoints": ["train", "validate"],
                    "functions": ["init"],
                    "readers": parties,
                }
            },
            "outputs": {"model": [parties[0]]},
            "allow_emulated": True,
            "update_quorum": {"k": min(2, len(parties))},
            # issue 11: every workload re-attests to the KBS before every round
            **({"attestation": {"max_age": reattest}} if reattest != "once" else {}),
        }
    )
    signed = SignedAgreement(agreement=agreement)
    for p in parties:
        signed = signed.signed_by(keys[p])
    pin = verify_kbs(
        kbs.url, SgxReferenceValues(mrenclave=(kbs.measurement,)), allow_emulated=True, home=home
    )
    pin_path = work / "pin.json"
    pin.save(pin_path)
    with KbsClient(None, pin) as owner:
        owner.submit_agreement(signed)
        published = publish_package(archive, owner, keys[parties[0]])
    return {
        "parties": parties,
        "pin": pin,
        "pin_path": pin_path,
        "published": published,
        "agreement_digest": agreement_digest(agreement),
        "kbs_pid": kbs.pid,
        "manifests": manifests,
        # each party enrolls its client, the first (aggregator operator) the aggregator
        "enrollments": {
            **{p: lf.enroll(keys[p], "client", federation=FEDERATION) for p in parties},
            "aggregator": lf.enroll(keys[parties[0]], "aggregator", federation=FEDERATION),
        },
    }


def _manifest(folder: Path, role: str) -> Path:
    """A small stand-in workload manifest for ``role`` (as the end-to-end tests use).

    The built-in manifest measures every source file of the installed teeflow, which changes
    whenever the work tree is edited; on real SGX the CPU measures the enclave at load time,
    so re-hashing sources in Python is an emulation artefact that the benchmark leaves out.
    """
    from teeflow.workload.manifest import WorkloadManifest

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(f"# teeflow {role} workload (benchmark stand-in)\n")
    manifest = WorkloadManifest.build(
        folder, ["teeflow", role, "run"], files=["main.py"], name=f"bench-{role}"
    )
    path = folder / "manifest.yaml"
    path.write_text(manifest.to_yaml())
    return path


def _wait_done(agg: Any, clients: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The aggregator's ``done`` event; fails fast when the aggregator or any client dies."""
    from teeflow.errors import FLError

    end = time.monotonic() + timeout
    while True:
        try:
            return agg.wait_event("done", 2.0)  # type: ignore[no-any-return]
        except FLError:
            if agg.returncode is not None or agg.error() is not None or time.monotonic() > end:
                raise
        for party, c in clients.items():
            if c.returncode not in (None, 0) or c.error() is not None:
                raise FLError(f"client {party} failed; log:\n{c.log_tail(10)}")


def _probe_summary(probe_dir: Path, pids: dict[str, int]) -> dict[str, Any]:
    by_pid = {}
    for f in probe_dir.glob("*.json"):
        try:
            d = json.loads(f.read_text())
        except ValueError:
            continue
        by_pid[int(d["pid"])] = d
    agg = by_pid.get(pids["aggregator"], {})
    clients = [by_pid[p] for name, p in pids.items() if name != "aggregator" and p in by_pid]
    cats = ("attestation", "tls", "sealing", "provenance")

    def cat(d: dict[str, Any], c: str) -> float:
        return float(d.get("categories", {}).get(c, 0.0))

    client_tot = [sum(cat(d, c) for c in cats) for d in clients]
    return {
        "aggregator": {c: round(cat(agg, c), 4) for c in cats},
        "aggregator_calls": agg.get("calls", {}),
        "clients_mean": {
            c: round(sum(cat(d, c) for d in clients) / max(len(clients), 1), 4) for c in cats
        },
        "clients_max_total": round(max(client_tot, default=0.0), 4),
        "clients_sum_total": round(sum(client_tot), 4),
        "client_calls_example": clients[0].get("calls", {}) if clients else {},
        # per-round re-attestation (issue 11): inside the aggregator's admission, so not in
        # the clients' critical-path totals above
        "clients_reattest_max": round(max((cat(d, "reattest") for d in clients), default=0.0), 4),
        "clients_reattest_sum": round(sum(cat(d, "reattest") for d in clients), 4),
        "processes_reporting": len(by_pid),
        "missing_probes": sorted({m for d in by_pid.values() for m in d.get("missing", [])}),
    }


def _percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or None."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def _reattest_stats(events: list[dict[str, Any]], client_events: list[list[dict[str, Any]]],
                    loop: float | None) -> dict[str, Any]:
    """KBS re-attestation flows during the rounds (issue 11): per-flow latency (a client's
    auth + attest + certificate, from its ``reattested`` events) p50/p99, flows per second
    during the admission windows and over the whole training loop, and the admission time
    (on the critical path) per round."""
    lat = [float(e["seconds"]) for ev in client_events for e in ev
           if e["event"] == "reattested" and "seconds" in e]
    adm = [e for e in events if e["event"] == "admission"]
    window = sum(float(e["seconds"]) for e in adm)
    flows = sum(int(e["reattested"]) for e in adm) + sum(
        1 for e in events if e["event"] == "reattested" and e.get("role") == "aggregator"
    )
    return {
        "flows": flows,
        "client_flows": len(lat),
        "flow_latency_p50_seconds": _percentile(lat, 0.5),
        "flow_latency_p99_seconds": _percentile(lat, 0.99),
        "flows_per_second_in_admission": round(flows / window, 2) if window else None,
        "flows_per_second_over_loop": round(flows / loop, 2) if loop else None,
        "admission_seconds_total": round(window, 3),
        "admission_seconds_per_round": round(window / len(adm), 4) if adm else None,
        "rounds_admitted": len(adm),
    }


def run(data_dir: Path, hp: C.HParams, work: Path, reattest: str = "once") -> dict[str, Any]:
    """The whole teeflow federation; returns measurements (module docstring)."""
    from teeflow.fl.outputs import verify_model
    from teeflow.fl.session import LocalFederation

    t0 = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    home = work / "home"
    os.environ["TEEFLOW_HOME"] = str(home)
    probe_dir = work / "probe"
    probe_dir.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(PROBE), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "FLBENCH_PROBE_DIR": str(probe_dir),
    }
    train_config = {
        "model": hp.model,
        "lr": hp.lr,
        "momentum": 0.0,
        "batch_size": hp.batch_size,
        "epochs": hp.epochs,
        "seed": hp.seed,
        "threads": 1,
    }
    wait = 600.0
    with LocalFederation(work / "procs", platform="emulated-sgx", home=home, env=env) as lf:
        fed = _setup(hp, work, lf, reattest)
        t_setup = time.perf_counter()
        agg = lf.start_aggregator(
            pin=fed["pin_path"],
            enrollment=fed["enrollments"]["aggregator"],
            session=SESSION,
            rounds=hp.rounds,
            min_clients=hp.clients,
            wait_clients=hp.clients,
            package=fed["published"].sealed_path,
            train_config=train_config,
            round_timeout=wait,
            connect_timeout=wait,
            state_dir=work / "agg-state",
            manifest=fed["manifests"]["aggregator"],
            timeout=wait,
        )
        t_listening = time.perf_counter()
        clients = {
            p: lf.start_client(
                party=p,
                pin=fed["pin_path"],
                enrollment=fed["enrollments"][p],
                aggregator=agg.address,
                data=f"mnist:{data_dir}?clients={hp.clients}&index={i}&seed={hp.split_seed}",
                threads=1,
                connect_timeout=wait,
                manifest=fed["manifests"]["client"],
            )
            for i, p in enumerate(fed["parties"])
        }
        done = _wait_done(agg, clients, wait * max(1, hp.rounds))
        t_done = time.perf_counter()
        exits: dict[str, float] = {}
        codes: dict[str, int] = {}
        for name, proc in [*clients.items(), ("aggregator", agg)]:
            codes[name] = proc.wait(wait)
            exits[name] = round(time.perf_counter() - t_done, 3)
        rounds = agg.rounds()
        events = list(agg.events)
        client_events = [list(c.events) for c in clients.values()]
        pids = {"aggregator": agg.pid, **{p: c.pid for p, c in clients.items()}}
    t_stopped = time.perf_counter()
    checked = verify_model(
        Path(done["model"]),
        Path(done["provenance"]),
        fed["pin"].ca(),
        expected_agreement_digest=fed["agreement_digest"].hex(),
    )
    t_end = time.perf_counter()

    def t_of(name: str, pred: Any = None) -> float | None:
        e = next((e for e in events if e["event"] == name and (pred is None or pred(e))), None)
        return e["_time"] if e else None

    r1_start = t_of("round-start", lambda e: e["round"] == 1)
    last = next((e for e in reversed(rounds) if e["round"] == hp.rounds), None)
    loop = (last["_time"] - r1_start) if (last and r1_start) else None
    history = [
        {
            "round": e["round"],
            "seconds": e.get("seconds"),
            "clients": len(e.get("clients", [])),
            "train_loss": e.get("train_loss"),
            "eval_loss": e.get("eval_loss"),
            "eval_accuracy": e.get("eval_accuracy"),
        }
        for e in rounds
    ]
    probe = _probe_summary(probe_dir, pids)
    return {
        "exit_codes": codes,
        "setup_seconds": t_setup - t0,
        "aggregator_start_seconds": t_listening - t_setup,
        "federation_seconds": t_done - t_listening,
        "startup_to_round1_seconds": (r1_start - t_listening) if r1_start else None,
        "loop_seconds": loop,
        "seconds_per_round": loop / hp.rounds if loop else None,
        "stop_seconds": t_stopped - t_done,
        "exited_after_done_seconds": exits,
        "verify_seconds": t_end - t_stopped,
        "final_accuracy": last.get("eval_accuracy") if last else None,
        "final_loss": last.get("eval_loss") if last else None,
        "history": history,
        "provenance_verified": checked.rounds == hp.rounds,
        "aggregator_torch_imported": done.get("torch_imported"),
        # the aggregator's own peak (VmHWM of /proc/self/status; ru_maxrss would carry the
        # launching process's peak over fork/exec)
        "aggregator_vmhwm_mb": round(int(done.get("max_rss_bytes", 0)) / 2**20, 1),
        "security_probe": probe,
        "reattest": reattest,
        "reattestation": _reattest_stats(events, client_events, loop),
        "pids": pids,
        "kbs_pid": fed["kbs_pid"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--hparams", required=True)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--reattest", choices=["once", "per_round"], default="once",
                    help="agreement attestation.max_age: none (attest once) or per_round")
    args = ap.parse_args(argv)
    ok, why = available()
    if not ok:
        C.emit_result({"skipped": True, "reason": why})
        return 0
    hp = C.HParams.from_dict(json.loads(args.hparams))
    out = run(args.data_dir.resolve(), hp, args.workdir.resolve(), args.reattest)
    out["orchestrator_peak_rss_mb"] = C.self_peak_rss_mb()
    C.emit_result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
