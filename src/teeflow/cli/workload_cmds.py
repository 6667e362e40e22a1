"""``teeflow workload measure|run|init``: workload manifests and their measurement.

``measure`` prints the manifest's measurement (hex; the emulated platform's MRENCLAVE) after
re-hashing every trusted file (unless ``--no-verify-files``); a changed or missing file is
a one-line ``WorkloadError`` naming it (exit 1). ``init`` hashes a directory into a new
manifest.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from teeflow.cli.output import JsonOption, echo_json
from teeflow.errors import WorkloadError
from teeflow.workload import WorkloadManifest, measurement, verify_trusted_files

__all__ = ["register"]

workload_app = typer.Typer(help="Workload manifests and measurements.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``workload`` command group to the root app."""
    app.add_typer(workload_app, name="workload")


@workload_app.command("measure")
def measure_cmd(
    *,
    manifest_path: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="Workload manifest (YAML).")
    ],
    base_dir: Annotated[
        Path | None,
        typer.Option(
            "--base-dir", help="Directory trusted paths are relative to (default: manifest's)."
        ),
    ] = None,
    verify_files: Annotated[
        bool,
        typer.Option("--verify-files/--no-verify-files", help="Re-hash every trusted file first."),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Print the workload measurement (SHA-256 of the canonical manifest)."""
    manifest = WorkloadManifest.load(manifest_path)
    base = base_dir if base_dir is not None else manifest_path.resolve().parent
    if verify_files:
        verify_trusted_files(manifest, base)
    digest = measurement(manifest).hex()
    if as_json:
        doc = {
            "name": manifest.name,
            "version": manifest.version,
            "measurement": digest,
            "manifest": str(manifest_path),
            "base_dir": str(base),
            "trusted_files": len(manifest.trusted_files),
            "files_verified": verify_files,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    console.print(digest)


@workload_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def run_cmd(
    ctx: typer.Context,
    *,
    manifest_path: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="Workload manifest (YAML).")
    ],
    base_dir: Annotated[
        Path | None,
        typer.Option(
            "--base-dir", help="Directory trusted paths are relative to (default: manifest's)."
        ),
    ] = None,
) -> None:
    """Re-hash the trusted files, then run the entrypoint (extra arguments are appended).

    Refuses to start (exit 1, naming the file) when any trusted file differs.
    """
    from teeflow.workload.runtime import run_workload, start_workload

    started = start_workload(manifest_path, base_dir)
    console.print(f"[dim]measurement {started.measurement.hex()}[/]")
    raise typer.Exit(run_workload(started, list(ctx.args)))


@workload_app.command("init")
def init_cmd(
    *,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Workload base directory.")],
    entrypoint: Annotated[
        str,
        typer.Option("--entrypoint", help='Entrypoint command line, e.g. "python -m app.main".'),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Manifest to write (default: DIR/workload.yaml)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Workload name (default: DIR name).")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="Workload version.")] = None,
    argument: Annotated[
        list[str] | None, typer.Option("--arg", help="Security-relevant argument (repeatable).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Security-relevant NAME=VALUE (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing manifest.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Hash every regular file under DIR into a new workload manifest."""
    if env is None:
        env = []
    if argument is None:
        argument = []
    out = output if output is not None else directory / "workload.yaml"
    if out.exists() and not force:
        raise WorkloadError(f"{out} exists (use --force to overwrite)")
    try:
        argv = shlex.split(entrypoint)
    except ValueError as exc:
        raise WorkloadError(f"--entrypoint: {exc}") from None
    env_map: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise WorkloadError(f"--env expects NAME=VALUE, got {item!r}")
        env_map[key] = value
    manifest = WorkloadManifest.build(
        directory,
        argv,
        name=name,
        version=version,
        arguments=argument,
        env=env_map,
        exclude=[out.resolve()] if out.resolve().is_relative_to(directory.resolve()) else [],
    )
    try:
        out.write_text(manifest.to_yaml())
    except OSError as exc:
        raise WorkloadError(f"cannot write {out}: {exc.strerror}") from None
    if as_json:
        echo_json(
            {
                "manifest": str(out),
                "name": manifest.name,
                "trusted_files": len(manifest.trusted_files),
                "measurement": measurement(manifest).hex(),
            }
        )
        return
    console.print(
        f"wrote [bold]{out}[/] ({len(manifest.trusted_files)} trusted files)\n"
        f"measurement {measurement(manifest).hex()}"
    )
