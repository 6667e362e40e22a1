"""``teeflow demo``: the main job on embedded defaults (emulated TEE, offline)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

__all__ = ["register"]

console = Console()


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the root app."""
    app.command("demo")(demo)


def demo(
    workdir: Path = typer.Option(
        Path(".teeflow-demo"), "--workdir", help="Where the demo writes its files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Run an end-to-end attestation round trip on the EMULATED TEE (development only)."""
    from teeflow.demo import DemoStep, run_attestation_demo

    if not as_json:
        console.print(
            Panel.fit(
                "[bold yellow]EMULATED TEE — development only.[/] Evidence is signed by a local "
                "emulation root, never by Intel; the default policy rejects it.",
                title="teeflow demo",
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
