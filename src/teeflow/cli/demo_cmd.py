"""``teeflow demo``: the main job — confidential federated learning on the emulated TEE.

``teeflow demo [--dataset digits|mnist] [--clients N] [--rounds R] [--model mlp|cnn]
[--non-iid ALPHA] [--data-dir DIR] [--workdir DIR] [--platform NAME] [--json]`` runs
:func:`teeflow.demo.fl_demo.run_fl_demo` (KBS, three parties, agreement, sealed package, an
attested aggregator and clients as separate processes, provenance, the opened model's test
accuracy) with a progress bar per round; ``teeflow demo attestation`` (or
``--attestation-only``) runs the attestation round trip of
:mod:`teeflow.demo.attestation_roundtrip`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from teeflow.demo import DemoStep, FlDemoSummary, RoundProgress

__all__ = ["register"]

console = Console()

_EMULATED = (
    "[bold yellow]EMULATED TEE — development only.[/] Evidence is signed by a local emulation "
    "root (under the work directory), never by Intel; the agreement says allow_emulated: true, "
    "which no production federation should."
)


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command (and ``demo attestation``) to the root app."""
    grp = typer.Typer(
        name="demo",
        help="The main job: confidential federated learning on the EMULATED TEE (offline).",
        invoke_without_command=True,
    )
    grp.callback()(demo)
    grp.command("attestation")(attestation)
    app.add_typer(grp, name="demo")


def demo(
    ctx: typer.Context,
    workdir: Path = typer.Option(
        Path(".teeflow-demo"),
        "--workdir",
        help="Fresh work directory (replaces a previous demo's).",
    ),
    dataset: str = typer.Option("digits", "--dataset", help="digits (offline) or mnist."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="MNIST IDX folder (default ~/.cache/teeflow/mnist)."
    ),
    clients: int = typer.Option(3, "--clients", help="Parties / clients (hospital-a, -b, ...)."),
    rounds: int = typer.Option(5, "--rounds", help="FedAvg rounds."),
    model: str = typer.Option("mlp", "--model", help="mlp or cnn."),
    non_iid: float | None = typer.Option(
        None, "--non-iid", metavar="ALPHA", help="Dirichlet(ALPHA) label skew (default IID)."
    ),
    package: Path | None = typer.Option(
        None, "--package", help="Compute package folder (default examples/mnist / shipped copy)."
    ),
    dp_epsilon: float | None = typer.Option(
        None,
        "--dp-epsilon",
        metavar="EPS",
        help="Sign central differential privacy into the agreement with this ε budget "
        "(δ 1e-5, clip 1.0); the summary shows the ε spent. Costs accuracy with few clients.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
    serve: bool = typer.Option(
        False, "--serve", help="After training, serve the model in an attested serving "
        "workload and send 100 end-to-end encrypted requests as hospital-b."),
    attestation_only: bool = typer.Option(
        False, "--attestation-only", help="Run the attestation round trip instead."
    ),
    platform: str = typer.Option(
        "emulated-sgx",
        "--platform",
        help=(
            "Platform of the aggregator and clients: emulated-sgx, emulated-tdx or "
            "emulated-snp (software TEEs), or tdx, sev-snp, gramine-sgx: the real "
            "configfs-tsm / Gramine attesters against interface stand-ins the demo starts "
            "(EMULATED evidence; needs FUSE). --json reports each workload's tee and attester."
        ),
    ),
) -> None:
    """Run a confidential federated-learning session end to end on the EMULATED TEE."""
    if ctx.invoked_subcommand is not None:
        return
    if attestation_only:
        default = workdir == Path(".teeflow-demo")
        attestation(
            workdir=Path(".teeflow-demo-attestation") if default else workdir, as_json=as_json
        )
        return
    from teeflow.demo import DemoOptions, run_fl_demo

    options = DemoOptions(
        workdir=workdir,
        dataset=dataset,
        data_dir=data_dir,
        clients=clients,
        rounds=rounds,
        model=model,
        non_iid=non_iid,
        package_dir=package,
        platform=platform,
        dp_epsilon=dp_epsilon,
        serve=serve,
    )
    options.check()
    view = _View(quiet=as_json, rounds=rounds)
    if not as_json:
        console.print(Panel.fit(_EMULATED, title="teeflow demo — confidential federated learning"))
        if platform in ("tdx", "sev-snp", "gramine-sgx"):
            kind = "Gramine /dev/attestation" if platform == "gramine-sgx" else "configfs-tsm"
            console.print(
                f"[bold yellow]EMULATED:[/] the demo starts {kind} stand-ins (FUSE, not "
                f"hardware); the real {platform} attesters run against them.",
                highlight=False,
            )
        console.print(
            f"{clients} hospitals train one {model.upper()} on {dataset} "
            f"({'IID' if non_iid is None else f'non-IID, Dirichlet α={non_iid:g}'}), "
            f"{rounds} FedAvg rounds on {platform}; work directory {workdir.resolve()}",
            highlight=False,
        )
    try:
        summary = run_fl_demo(options, on_step=view.step, on_progress=view.progress)
    except KeyboardInterrupt:
        view.close()
        console.print("[yellow]interrupted[/]: every child process was stopped", highlight=False)
        raise typer.Exit(130) from None
    finally:
        view.close()
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        _report(summary)
    raise typer.Exit(0 if summary.ok else 1)


class _View:
    """Steps as check-marked lines; one rich progress bar per round (started lazily)."""

    def __init__(self, *, quiet: bool, rounds: int) -> None:
        self.quiet, self.rounds = quiet, rounds
        self.bars: Progress | None = None
        self.tasks: dict[int, TaskID] = {}

    def step(self, step: DemoStep) -> None:
        if self.quiet:
            return
        if self.bars is not None and self.tasks.keys() >= set(range(self.rounds + 1)):
            self.close()
        mark = "[green]✓[/]" if step.ok else "[red]✗[/]"
        console.print(f"{mark} {step.title} [dim]({step.seconds:.1f} s)[/]")
        if step.detail:
            console.print(f"    [dim]{step.detail}[/]", highlight=False)

    def progress(self, p: RoundProgress) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if self.bars is None:
            self.bars = Progress(
                SpinnerColumn(finished_text="[green]✓[/]"),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.bars.start()
        title = "initial model" if p.round == 0 else f"round {p.round}/{self.rounds}"
        status = p.phase
        if p.result is not None:
            acc = p.result.get("eval_accuracy")
            status = f"eval accuracy {acc:.3f}" if isinstance(acc, float) else "done"
        if p.round not in self.tasks:
            self.tasks[p.round] = self.bars.add_task(title, total=p.total, status=status)
        self.bars.update(self.tasks[p.round], total=p.total, completed=p.done, status=status)
        if p.result is not None:
            self.bars.stop_task(self.tasks[p.round])

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def _training_line(t: dict[str, Any]) -> str:
    """The agreed aggregation rule and the privacy spent (from the aggregator's done event)."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(t.get("strategy_params", {}).items()))
    rule = f"{t.get('strategy', '?')}({params})"
    eps = t.get("epsilon")
    dp = (
        f"ε = {eps:.3g} of {t.get('budget_epsilon')} (δ = {t.get('delta')})"
        if isinstance(eps, int | float)
        else "ε: none (no differential privacy in the agreement)"
    )
    return f"aggregation rule (agreed, in the provenance header): {rule}; {dp}"


def _report(s: FlDemoSummary) -> None:
    table = Table(title="federated training (aggregator's round events)")
    columns = ("round", "clients", "agreement", "attestation age (s)", "train loss",
               "eval accuracy", "seconds")
    for col in columns:
        table.add_column(col, justify="left" if col == "clients" else "right")
    for r in s.round_table:
        version = r.get("agreement_version")
        table.add_row(
            str(r["round"]) + (" (initial)" if r["round"] == 0 else ""),
            ", ".join(r.get("clients", [])) or "-",
            f"v{version}" if isinstance(version, int) else "-",
            _fmt(r.get("attestation_age"), ".1f"),  # the oldest participant's, at round start
            _fmt(r.get("train_loss"), ".4f"),
            _fmt(r.get("eval_accuracy"), ".4f"),
            _fmt(r.get("seconds"), ".2f"),
        )
    console.print(table)
    for w in s.warnings:
        console.print(f"[yellow]warning[/]: {w}", highlight=False)
    verdict = "[green]verified[/]" if s.provenance_verified else "[red]NOT verified[/]"
    console.print(f"provenance: {verdict}; model opened by hospital-a: {s.model_opened}")
    console.print(
        f"[bold]final test accuracy {_fmt(s.final_accuracy, '.4f')}[/] — hospital-a's opened model "
        f"evaluated with the package's validate on all {s.test_examples} held-out test images "
        f"(initial model {_fmt(s.initial_accuracy, '.4f')}, federated evaluation of the last "
        f"round {_fmt(s.federated_accuracy, '.4f')})",
        highlight=False,
    )
    console.print(_training_line(s.training), highlight=False)
    rss = s.aggregator.get("max_rss_bytes")
    if isinstance(rss, int):
        console.print(
            f"aggregator: peak RSS {rss / 2**20:.0f} MiB, torch imported: "
            f"{s.aggregator.get('torch_imported')}; KBS audit: {s.audit}",
            highlight=False,
        )
    if s.serve is not None:
        v = s.serve
        console.print(
            f"[bold]served[/] on {v['server']['tee']} (measurement "
            f"{v['server']['measurement'][:16]}…): {v['requests']} end-to-end encrypted "
            f"requests by hospital-b, accuracy {v['accuracy']:.4f}, p50 {v['p50_ms']:.1f} ms, "
            f"p99 {v['p99_ms']:.1f} ms; KBS audit log counts {v['audited_requests']} requests",
            highlight=False,
        )
    files = Table(title="where everything is", show_header=False)
    for name, path in s.files.items():
        files.add_row(name, path)
    console.print(files)
    console.print("[bold]Run each piece by hand[/] (the KBS must run for the KBS steps):")
    for what, cmd in s.commands:
        console.print(f"  [dim]# {what}[/]", highlight=False)
        console.print(f"  {cmd}", highlight=False, soft_wrap=True)
    verdict = "[green]OK[/]" if s.ok else "[red]FAILED[/]"
    console.print(f"demo {verdict} in {s.wall_seconds:.1f} s (training {s.training_seconds:.1f} s)")


def attestation(
    workdir: Path = typer.Option(
        Path(".teeflow-demo-attestation"), "--workdir", help="Where the demo writes its files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
    serve: bool = typer.Option(
        False, "--serve", help="After training, serve the model in an attested serving "
        "workload and send 100 end-to-end encrypted requests as hospital-b."),
) -> None:
    """Attestation round trip on the EMULATED TEE: seal, quote, verify, release, unseal."""
    from teeflow.demo import run_attestation_demo

    if not as_json:
        console.print(
            Panel.fit(
                "[bold yellow]EMULATED TEE — development only.[/] Evidence is signed by a local "
                "emulation root, never by Intel; the default policy rejects it.",
                title="teeflow demo attestation",
            )
        )

    def show(step: DemoStep) -> None:
        if not as_json:
            mark = "[green]✓[/]" if step.ok else "[red]✗[/]"
            console.print(f"{mark} {step.title} [dim]({step.seconds * 1000:.0f} ms)[/]")
            console.print(f"    [dim]{step.detail}[/]", highlight=False)

    summary = run_attestation_demo(workdir.resolve(), on_step=show)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
        raise typer.Exit(0 if summary.ok else 1)
    table = Table(title="where everything is", show_header=False)
    for name, path in summary.files.items():
        table.add_row(name, path)
    console.print(table)
    home = Path(summary.workdir) / "home"
    argv0 = Path(sys.argv[0])
    exe = str(argv0.absolute()) if argv0.name == "teeflow" and argv0.exists() else "teeflow"
    exe = shutil.which("teeflow") or exe
    console.print(
        "Run the pieces by hand:\n"
        f"  TEEFLOW_HOME={home} {exe} quote show {summary.files['quote']}\n"
        f"  TEEFLOW_HOME={home} {exe} quote verify {summary.files['quote']} "
        f"--collateral {summary.files['collateral']} --allow-emulated\n"
        f"  {exe} workload measure {summary.files['manifest']} "
        f"--base-dir {summary.workdir}/workload",
        highlight=False,
        soft_wrap=True,
    )
    verdict = "[green]OK[/]" if summary.ok else "[red]FAILED[/]"
    console.print(f"demo {verdict} in {summary.wall_seconds:.2f} s")
    raise typer.Exit(0 if summary.ok else 1)
