"""``teeflow demo``: a confidential federated-learning run on the emulated TEE, end to end.

:func:`run_fl_demo` plays every role of DESIGN's "Federated learning" flow on one machine, in
a fresh work directory, offline (the ``digits`` data set ships with teeflow):

1. starts the KBS (``teeflow kbs serve --platform emulated-sgx``, SQLite) as a child process;
2. creates three parties ``hospital-a/b/c`` (Ed25519 + X25519 keys under ``home/parties``);
3. builds the compute package (:func:`package_source`) and writes the agreement
   (``allow_emulated: true`` — EMULATED TEE, development only; the workloads' reference values
   are the measurements of the installed teeflow, :func:`~teeflow.fl.workload.fl_measurement`),
   which all three sign (``agreement.yaml`` + ``agreement.yaml.sigs.json``, as
   ``teeflow agreement sign`` writes them);
4. verifies the KBS (its evidence — of the demo platform's TEE — against the agreed KBS
   measurement) and pins it
   (``pin.json``), submits the agreement, and publishes the sealed package as hospital-a;
5. enrolls the workloads: each hospital signs the enrollment of its own client, hospital-a
   (the aggregator operator) that of the aggregator (:meth:`~teeflow.fl.session.
   LocalFederation.enroll`, the files ``teeflow party enroll`` writes); then starts the
   aggregator and one client per party as separate processes on 127.0.0.1
   (:class:`~teeflow.fl.session.LocalFederation`), each with its enrollment and with
   ``--platform`` of the demo platform (:mod:`teeflow.demo.platforms`: ``emulated-sgx`` by
   default, ``emulated-tdx``, ``emulated-snp``), and follows their progress events; the
   summary reports each workload's ``tee`` and ``attester`` (from its ``platform`` event /
   start-up line);
6. verifies the model's provenance log against the federation CA, opens the model as
   hospital-a, and evaluates it with the package's ``validate`` on the **whole held-out test
   split** in this process (``final_accuracy``); the aggregator's federated evaluation of the
   last round (the example-weighted mean over the clients' IID test parts, i.e. the same test
   set) is reported as ``federated_accuracy``.

Every child process is stopped when the demo ends, fails or is interrupted (Ctrl-C / SIGTERM).

Hyperparameters: MNIST uses the package defaults (SGD lr 0.01, 1 local epoch, batch 32). A
digits client holds only ~480 training images (15 SGD steps per epoch), so with those defaults
FedAvg reaches ~0.5 test accuracy in 5 rounds; the demo trains digits with lr 0.1 and 3 local
epochs (measured: ~0.94 after 5 rounds with 3 IID clients; examples/mnist/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import teeflow
from teeflow._fs import atomic_write, teeflow_home_env
from teeflow.demo.attestation_roundtrip import DemoStep
from teeflow.demo.fl_support import (
    RoundProgress,
    RoundTracker,
    Steps,
    manual_commands,
    prepare_workdir,
    restore_sigint,
    shield_stop,
    write_agreement,
)
from teeflow.errors import FLError

if TYPE_CHECKING:
    from teeflow.kbs.policy.parties import PartyKeys

__all__ = [
    "DIGITS_TRAIN_CONFIG",
    "MNIST_TRAIN_CONFIG",
    "PARTIES",
    "DemoOptions",
    "FlDemoSummary",
    "RoundProgress",
    "package_source",
    "run_fl_demo",
]

#: digits: larger step and more local work than the MNIST defaults (module docstring).
DIGITS_TRAIN_CONFIG: dict[str, Any] = {"lr": 0.1, "epochs": 3}
#: MNIST: the package defaults (the seed's benchmark hyperparameters).
MNIST_TRAIN_CONFIG: dict[str, Any] = {"lr": 0.01, "epochs": 1}
#: Party names; the first is the model owner and the output recipient.
PARTIES: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c")
SESSION = "demo"
FEDERATION = "teeflow-demo"
#: Partition seed shared by every client (parts are disjoint only with the same seed).
DATA_SEED = 7
#: The compute package shipped inside teeflow (``teeflow package build examples/mnist``).
SHIPPED_PACKAGE = "mnist-package.tar"


@dataclass(frozen=True)
class DemoOptions:
    """What to run (the ``teeflow demo`` options).

    Attributes:
        workdir: fresh work directory (a previous demo's folder is replaced).
        dataset: ``digits`` (offline) or ``mnist`` (IDX files in ``data_dir``; downloaded
            from the standard mirrors when absent).
        data_dir: MNIST folder (default ``~/.cache/teeflow/mnist``).
        clients: number of parties / clients, 1..26 (``hospital-a`` …).
        rounds: FedAvg rounds (≥ 1).
        model: ``mlp`` or ``cnn``.
        non_iid: Dirichlet α of a non-IID label partition (None: IID).
        package_dir: compute package folder (default: :func:`package_source`).
        round_timeout: round deadline of the aggregator (seconds).
        timeout: bound on the whole run (seconds; default 300 + 120 per round).
        platform: the workloads' platform, one of
            :data:`teeflow.demo.platforms.DEMO_PLATFORMS` (default ``emulated-sgx``).
        dp_epsilon: central differential privacy with this ε budget (δ = 1e-5, clip 1.0,
            noise calibrated over the rounds; the agreement's ``training.dp``), None: off.
            With 3 clients expect a large accuracy cost (client-level DP needs many clients).
        serve: after training, serve the model confidentially and have hospital-b query it
            (:mod:`teeflow.demo.serve_demo`).
    """

    workdir: Path
    dataset: str = "digits"
    data_dir: Path | None = None
    clients: int = 3
    rounds: int = 5
    model: str = "mlp"
    non_iid: float | None = None
    package_dir: Path | None = None
    round_timeout: float = 300.0
    timeout: float | None = None
    platform: str = "emulated-sgx"
    dp_epsilon: float | None = None
    serve: bool = False

    def check(self) -> None:
        """Raises FLError on an option outside its range."""
        if self.dataset not in ("digits", "mnist"):
            raise FLError(f"--dataset must be digits or mnist, not {self.dataset!r}")
        if self.model not in ("mlp", "cnn"):
            raise FLError(f"--model must be mlp or cnn, not {self.model!r}")
        if not 1 <= self.clients <= 26:
            raise FLError("--clients must be between 1 and 26")
        if self.rounds < 1:
            raise FLError("--rounds must be at least 1")
        if self.non_iid is not None and not self.non_iid > 0:
            raise FLError("--non-iid ALPHA must be > 0")
        if self.dp_epsilon is not None and not 0 < self.dp_epsilon <= 1e4:
            raise FLError("--dp-epsilon must be in (0, 10000]")
        from teeflow.demo.platforms import DEMO_PLATFORMS

        if self.platform not in DEMO_PLATFORMS:
            raise FLError(f"--platform must be one of {', '.join(DEMO_PLATFORMS)}")

    def parties(self) -> list[str]:
        """``hospital-a`` … one per client."""
        return [f"hospital-{chr(ord('a') + i)}" for i in range(self.clients)]

    def train_config(self) -> dict[str, Any]:
        """The train config the aggregator sends (lr/epochs per dataset, model, 1 thread)."""
        base = DIGITS_TRAIN_CONFIG if self.dataset == "digits" else MNIST_TRAIN_CONFIG
        return {**base, "model": self.model, "threads": 1}

    def mnist_dir(self) -> Path:
        """The MNIST folder (``data_dir`` or ``$XDG_CACHE_HOME/teeflow/mnist``)."""
        if self.data_dir is not None:
            return self.data_dir.resolve()
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache) / "teeflow" / "mnist"

    def source(self) -> str:
        """Data spec source: ``digits`` or ``mnist:DIR``."""
        return "digits" if self.dataset == "digits" else f"mnist:{self.mnist_dir()}"

    def data_spec(self, index: int) -> str:
        """The data spec of client ``index`` (same ``clients``/``seed`` for all)."""
        spec = f"{self.source()}?clients={self.clients}&index={index}&seed={DATA_SEED}"
        if self.non_iid is not None:
            spec += f"&partition=dirichlet&alpha={self.non_iid:g}"
        return spec


@dataclass
class FlDemoSummary:
    """What the demo did (``teeflow demo --json`` prints :meth:`to_json`)."""

    workdir: str
    options: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    rounds: int = 0
    initial_accuracy: float | None = None
    federated_accuracy: float | None = None
    final_accuracy: float | None = None
    final_loss: float | None = None
    test_examples: int = 0
    provenance_verified: bool = False
    model_opened: bool = False
    wall_seconds: float = 0.0
    training_seconds: float = 0.0
    round_table: list[dict[str, Any]] = field(default_factory=list)
    aggregator: dict[str, Any] = field(default_factory=dict)
    #: the agreement's training terms as run: strategy, strategy_params, epsilon (DP only)
    training: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, int] = field(default_factory=dict)
    package: dict[str, str] = field(default_factory=dict)
    agreement_digest: str = ""
    steps: list[DemoStep] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    commands: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    platform: str = "emulated-sgx"
    emulated: bool = True
    platform_notes: list[str] = field(default_factory=list)
    #: workload name (``kbs``, ``aggregator``, ``client-<party>``) -> {"tee", "attester"}
    workloads: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: the serving stage (``--serve``): requests, accuracy, p50/p99 ms, audited requests
    serve: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable view (accuracies in [0, 1], seconds as floats)."""
        return {
            "ok": self.ok,
            "emulated": self.emulated,
            "platform": self.platform,
            "platform_notes": self.platform_notes,
            "workloads": self.workloads,
            "workdir": self.workdir,
            **self.options,
            "rounds": self.rounds,
            "initial_accuracy": self.initial_accuracy,
            "federated_accuracy": self.federated_accuracy,
            "final_accuracy": self.final_accuracy,
            "final_accuracy_source": "package validate on the whole test split (hospital-a)",
            "final_loss": self.final_loss,
            "test_examples": self.test_examples,
            "provenance_verified": self.provenance_verified,
            "model_opened": self.model_opened,
            "wall_seconds": round(self.wall_seconds, 3),
            "training_seconds": round(self.training_seconds, 3),
            "round_table": self.round_table,
            "aggregator": self.aggregator,
            "training": self.training,
            "kbs_audit": self.audit,
            "package": self.package,
            "agreement_digest": self.agreement_digest,
            "steps": [s.__dict__ for s in self.steps],
            "files": self.files,
            "commands": [{"what": w, "command": c} for w, c in self.commands],
            "warnings": self.warnings,
            **({} if self.serve is None else {"serve": self.serve}),
        }


def package_source(package_dir: Path | None = None) -> tuple[str, bytes]:
    """The compute package archive the demo publishes: ``(where it came from, archive)``.

    Order: ``package_dir`` if given; the source checkout's ``examples/mnist`` (an editable
    install, ``make demo``), built with :func:`~teeflow.fl.package.build_package`; the archive
    shipped inside teeflow as package data (``teeflow/demo/mnist-package.tar``, built from
    ``examples/mnist`` — a test keeps the two identical), for an installed wheel.

    Raises:
        FLError: none is available. ParseError, PackageError: the folder is not a package.
    """
    from teeflow.fl.package import build_package

    if package_dir is not None:
        return str(package_dir), build_package(package_dir)[0]
    checkout = Path(teeflow.__file__).resolve().parents[2] / "examples" / "mnist"
    if (checkout / "teeflow.yaml").is_file():
        return str(checkout), build_package(checkout)[0]
    shipped = resources.files("teeflow.demo").joinpath(SHIPPED_PACKAGE)
    if shipped.is_file():
        return f"{shipped} (shipped with teeflow)", shipped.read_bytes()
    raise FLError("no compute package found: pass --package DIR (e.g. examples/mnist)")


def run_fl_demo(
    options: DemoOptions,
    *,
    on_step: Callable[[DemoStep], None] | None = None,
    on_progress: Callable[[RoundProgress], None] | None = None,
) -> FlDemoSummary:
    """Run the federated-learning demo (module docstring) and return its summary.

    Args:
        options: what to run.
        on_step: called after each setup/verification step.
        on_progress: called on every change of a round's progress (round start, a client
            starting or finishing a task, commit, the round's metrics).

    Raises:
        FLError: bad options, torch missing, a workload failed or the run exceeded its
            timeout (children are stopped first). KbsError, VerificationError, ParseError:
            a setup step failed. KeyboardInterrupt / SystemExit: interrupted (children
            stopped).
    """
    options.check()
    import importlib.util

    # the clients and the final evaluation need torch; imported only at the end, so that the
    # workloads start from a small parent process (ru_maxrss is inherited across fork+exec)
    if importlib.util.find_spec("torch") is None:
        raise FLError("the demo trains with PyTorch: pip install 'teeflow[torch]'")
    t_start = time.monotonic()
    workdir = options.workdir.resolve()
    summary = FlDemoSummary(
        workdir=str(workdir),
        options={
            "dataset": options.dataset,
            "model": options.model,
            "clients": options.clients,
            "non_iid_alpha": options.non_iid,
            "dp_epsilon": options.dp_epsilon,
            "train_config": options.train_config(),
        },
    )
    step = Steps(summary, on_step or (lambda s: None))
    home = workdir / "home"
    with prepare_workdir(workdir):  # held until the summary is written
        with teeflow_home_env(home):
            _run(
                options,
                workdir=workdir,
                home=home,
                summary=summary,
                step=step,
                on_progress=on_progress or (lambda p: None),
            )
        summary.wall_seconds = time.monotonic() - t_start
        summary.ok = bool(
            summary.provenance_verified
            and summary.model_opened
            and summary.rounds == options.rounds
            and summary.final_accuracy is not None
            and (not options.serve or (summary.serve or {}).get("audited_requests") is not None)
        )
        summary.files["summary"] = str(workdir / "summary.json")
        (workdir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _run(
    o: DemoOptions,
    *,
    workdir: Path,
    home: Path,
    summary: FlDemoSummary,
    step: Steps,
    on_progress: Callable[[RoundProgress], None],
) -> None:
    from teeflow.demo.platforms import demo_platform
    from teeflow.fl.session import LocalFederation
    from teeflow.kbs.policy.parties import PartyKeys

    parties = o.parties()
    files = summary.files
    with contextlib.ExitStack() as stack:  # exits in reverse: shield, stop children, restore
        stack.enter_context(restore_sigint())
        plat = demo_platform(o.platform, workdir, stack, serve=o.serve)
        summary.platform, summary.emulated = plat.name, plat.emulated
        summary.platform_notes = list(plat.notes)
        lf = stack.enter_context(
            LocalFederation(
                workdir,
                platform=plat.name,
                platform_args=plat.workload_args,
                home=home,
                handle_signals=True,
            )
        )
        stack.enter_context(shield_stop())
        with step(f"parties {', '.join(parties)} created") as d:
            keys = {}
            for p in parties:
                keys[p] = PartyKeys.generate(p)
                keys[p].save(home / "parties" / p)
            d.append(f"keys in {home / 'parties'}")
            files["party keys"] = str(home / "parties")
        if o.dataset == "mnist":
            with step("MNIST files present and checked") as d:
                from teeflow.datasets.mnist import load_mnist

                load_mnist(o.mnist_dir(), download=True)
                d.append(str(o.mnist_dir()))
        with step("compute package built") as d:
            source, archive = package_source(o.package_dir)
            from teeflow.fl.package import package_digest

            archive_path = workdir / "mnist.tar"
            archive_path.write_bytes(archive)
            pkg_digest = package_digest(archive).hex()
            summary.package = {"source": source, "digest": pkg_digest}
            d += [f"sha256 {pkg_digest[:16]}…", f"from {source}"]
            files["package"] = str(archive_path)
        with step("agreement written and signed by every party") as d:
            from teeflow.kbs.service.self_attestation import kbs_measurement

            kbs_mr = kbs_measurement().hex()
            agreement_path = workdir / "agreement.yaml"
            summary.agreement_digest = write_agreement(
                agreement_path,
                federation=FEDERATION,
                keys=[keys[p] for p in parties],
                kbs_measurement=kbs_mr,
                kbs_spec=plat.kbs_spec(bytes.fromhex(kbs_mr)),
                package_digest=pkg_digest,
                workload_spec=plat.workload_spec,
                training={
                    "strategy": {"name": "fedavg"},
                    "rounds": o.rounds,
                    "min_clients": o.clients // 2 + 1,
                    **({"dp": {"clip_norm": 1.0, "target_epsilon": o.dp_epsilon,
                               "delta": 1e-5, "budget_epsilon": o.dp_epsilon}}
                       if o.dp_epsilon is not None else {}),
                },
                serve=o.serve,
            )
            d += [
                "allow_emulated: true — EMULATED TEE, development only",
                f"digest {summary.agreement_digest[:16]}…",
            ]
            files["agreement"] = str(agreement_path)
        with step(f"KBS started ({plat.kbs_platform}, SQLite; first agreement fixed)") as d:
            # bootstrap: the KBS accepts only this agreement as its first and binds its
            # digest in its evidence, so nobody can found the federation before the parties
            kbs = lf.start_kbs(
                platform=plat.kbs_platform, platform_args=plat.kbs_args, federation=FEDERATION,
                expect_agreement=summary.agreement_digest,
            )
            if kbs.measurement != kbs_mr:
                raise FLError("the KBS measurement differs from the installed teeflow's")
            d += [kbs.url, f"measurement {kbs.measurement[:16]}…", *plat.notes]
            summary.workloads["kbs"] = {"tee": kbs.tee, "attester": kbs.attester}
            files["kbs database"] = str(workdir / "kbs.db")
        pin_path = workdir / "pin.json"
        with step(f"KBS verified ({kbs.tee} evidence) and pinned") as d:
            from teeflow.kbs.client.sdk import KbsClient
            from teeflow.kbs.client.verification import verify_kbs
            from teeflow.kbs.policy.kbs_reference import load_reference_values

            pin = verify_kbs(
                kbs.url, load_reference_values(agreement_path), allow_emulated=True, home=home
            )
            pin.save(pin_path)
            d.append(f"TLS key sha256 {pin.tls_spki_sha256[:16]}…")
            files["KBS pin"] = str(pin_path)
        with step(f"agreement submitted; package sealed and published by {parties[0]}") as d:
            from teeflow.fl.publish import publish_package
            from teeflow.kbs.policy.signature_files import load_signed

            with KbsClient(None, pin) as owner:
                owner.submit_agreement(load_signed(agreement_path))
                published = publish_package(archive_path, owner, keys[parties[0]])
            d.append(f"key released only to attested clients running {pkg_digest[:12]}…")
            d.append("checkpoint key: generated by the KBS, released to attested aggregators only")
            files["sealed package"] = str(published.sealed_path)
        with step("workloads enrolled: each hospital its client, "
                  f"{parties[0]} (aggregator operator) the aggregator") as d:
            enrollments = {
                p: lf.enroll(keys[p], "client", federation=FEDERATION, session=SESSION)
                for p in parties
            }
            agg_enrollment = lf.enroll(
                keys[parties[0]], "aggregator", federation=FEDERATION, session=SESSION
            )
            d.append(f"session {SESSION}, tokens in {agg_enrollment.parent}")
            files["enrollments"] = str(agg_enrollment.parent)
        t_train = time.monotonic()
        agg = lf.start_aggregator(
            pin=pin_path,
            enrollment=agg_enrollment,
            session=SESSION,
            rounds=o.rounds,
            min_clients=o.clients // 2 + 1,
            wait_clients=o.clients,
            package=published.sealed_path,
            train_config=o.train_config(),
            round_timeout=o.round_timeout,
            state_dir=workdir / "aggregator",
            extra=plat.role_args.get("aggregator", ()),
        )
        clients = {
            p: lf.start_client(
                party=p,
                pin=pin_path,
                enrollment=enrollments[p],
                aggregator=agg.address,
                data=o.data_spec(i),
                threads=1,
                workdir=workdir / "clients" / p,
                extra=plat.role_args.get("client", ()),
            )
            for i, p in enumerate(parties)
        }
        tracker = RoundTracker(agg, clients, on_progress)
        timeout = o.timeout if o.timeout is not None else 300.0 + 120.0 * o.rounds
        done = tracker.follow(timeout)
        summary.training_seconds = time.monotonic() - t_train
        for name, proc in (("aggregator", agg), *((f"client-{p}", c) for p, c in clients.items())):
            summary.workloads[name] = _attester_of(proc)
        for name, entry in summary.workloads.items():  # the interface stand-in it used
            entry["standin"] = plat.standins.get(name.split("-", 1)[0])
        summary.round_table = tracker.table()
        summary.warnings += tracker.warnings
        summary.rounds = int(done.get("rounds", 0))
        summary.aggregator = {
            "max_rss_bytes": done.get("max_rss_bytes"),
            "torch_imported": done.get("torch_imported"),
            "address": agg.address,
        }
        summary.training = {  # the agreed rule the aggregator ran, and ε when DP is on
            k: done[k]
            for k in ("strategy", "strategy_params", "epsilon", "delta", "budget_epsilon")
            if k in done
        }
        if summary.round_table:
            summary.initial_accuracy = summary.round_table[0].get("eval_accuracy")
            summary.federated_accuracy = summary.round_table[-1].get("eval_accuracy")
        model_path, prov_path = Path(done["model"]), Path(done["provenance"])
        files["sealed model"] = str(model_path)
        files["provenance log"] = str(prov_path)
        with step("KBS audit log fetched and verified") as d:
            with KbsClient(None, pin, party=keys[parties[0]]) as kbs_client:
                entries = kbs_client.audit()  # only parties may read it (signed requests)
            accepted = [e for e in entries if e.kind == "attestation" and e.decision == "accept"]
            summary.audit = {
                "entries": len(entries),
                "attestations_accepted": len(accepted),
                "denials": sum(1 for e in entries if e.decision == "deny"),
                "counter_increments": sum(1 for e in entries if e.kind == "counter"),
            }
            d.append(f"{len(entries)} entries, {len(accepted)} accepted attestations")
        if o.serve:
            from teeflow.demo.serve_demo import run_serve_stage

            files["serving model"] = str(done["serving_model"])
            summary.serve = run_serve_stage(
                lf=lf, step=step, keys=keys, parties=parties, pin_path=pin_path,
                serving_model=Path(done["serving_model"]), archive_path=archive_path,
                federation=FEDERATION, source=o.source(), model=o.model,
                platform_args=("--platform", plat.name, *plat.workload_args,
                               *plat.role_args.get("serve", ())))
        summary.commands = manual_commands(
            workdir=workdir,
            kbs_url=kbs.url,
            parties=parties,
            options=o,
            session=SESSION,
            federation=FEDERATION,
            min_clients=o.clients // 2 + 1,
            kbs_platform=("--platform", plat.kbs_platform, *plat.kbs_args),
            workload_platform=("--platform", plat.name, *plat.workload_args),
        )
        if o.serve:
            from teeflow.demo.serve_demo import serve_commands

            summary.commands += serve_commands(workdir, parties, files["serving model"],
                                               ("--platform", plat.name, *plat.workload_args))
    _outputs(
        o,
        workdir=workdir,
        summary=summary,
        step=step,
        owner=keys[parties[0]],
        pin_path=pin_path,
        archive=archive,
        pkg_digest=pkg_digest,
    )


def _attester_of(proc: Any) -> dict[str, str | None]:
    """``{"tee", "attester"}`` from a workload's ``platform`` event (None when absent)."""
    events: list[dict[str, Any]] = list(proc.events)
    event: dict[str, Any] = next((e for e in events if e.get("event") == "platform"), {})
    return {"tee": event.get("tee"), "attester": event.get("attester")}


def _outputs(
    o: DemoOptions,
    *,
    workdir: Path,
    summary: FlDemoSummary,
    step: Steps,
    owner: PartyKeys,
    pin_path: Path,
    archive: bytes,
    pkg_digest: str,
) -> None:
    from teeflow.fl.arrays import encode_arrays
    from teeflow.fl.outputs import open_model, verify_model
    from teeflow.fl.package import load_entrypoint, unpack_package
    from teeflow.kbs.client.pinning import Pin

    files = summary.files
    model_path = Path(files["sealed model"])
    with step(
        "provenance verified (chain, signatures, aggregator certificate, digest, "
        "the payload's AEAD tags)"
    ) as d:
        checked = verify_model(
            model_path,
            Path(files["provenance log"]),
            Pin.load(pin_path).ca(),
            expected_agreement_digest=summary.agreement_digest,
            party_keys=owner,
        )
        summary.provenance_verified = True
        d.append(f"{checked.rounds} rounds, aggregator {checked.aggregator.measurement[:16]}…")
        if checked.handovers:
            d.append(f"{checked.handovers} aggregator hand-over(s), each certificate checked")
    with step(f"model opened by {owner.name}") as d:
        arrays = open_model(model_path, owner)
        out = workdir / f"model.{owner.name}.safetensors"
        try:
            atomic_write(out, encode_arrays(arrays), mode=0o600)  # plaintext: owner only
        except OSError as exc:
            raise FLError(f"cannot write {out}: {exc.strerror or exc}") from None
        summary.model_opened = True
        files["opened model"] = str(out)
        d.append(str(out))
    with step("final model evaluated on the held-out test set") as d:
        pkg_dir = workdir / "evaluation-package"
        shutil.rmtree(pkg_dir, ignore_errors=True)
        unpack_package(archive, pkg_dir, pkg_digest)
        validate = load_entrypoint(pkg_dir, "validate")
        config = {"data": o.source(), "model": o.model, "threads": 0}
        n, metrics = validate(arrays, config)
        summary.test_examples = int(n)
        summary.final_accuracy = float(metrics["accuracy"])
        summary.final_loss = float(metrics["loss"])
        d.append(f"accuracy {summary.final_accuracy:.4f} on {n} test images")
    files["logs"] = str(workdir / "logs")
