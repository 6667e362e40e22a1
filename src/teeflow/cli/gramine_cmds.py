"""``teeflow workload gramine-manifest ROLE``: a Gramine-SGX manifest template per role.

Adds the command to the existing ``workload`` group (:mod:`teeflow.cli.workload_cmds`), so
``register(app)`` must be called after ``workload_cmds.register(app)``. Prints the template
to stdout, or writes it with ``-o FILE``. ``--manifest`` takes the workload manifest whose
trusted files, argv and environment go into the template (see
:func:`teeflow.workload.gramine.render_gramine_manifest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from teeflow.errors import WorkloadError
from teeflow.workload import WorkloadManifest
from teeflow.workload.gramine import ROLES, render_gramine_manifest

__all__ = ["gramine_manifest_cmd", "register"]


def gramine_manifest_cmd(
    *,
    role: Annotated[str, typer.Argument(metavar="ROLE", help=f"One of: {', '.join(ROLES)}.")],
    manifest_path: Annotated[
        Path | None,
        typer.Option("--manifest", "-m", help="Workload manifest (YAML) to take files from."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    enclave_size: Annotated[
        str | None, typer.Option("--enclave-size", help="sgx.enclave_size, e.g. 4G.")
    ] = None,
    max_threads: Annotated[
        int | None, typer.Option("--max-threads", help="sgx.max_threads.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {role, path, manifest} as one JSON object.")
    ] = False,
) -> None:
    """Print a Gramine manifest template (TOML) for a teeflow workload role."""
    manifest = WorkloadManifest.load(manifest_path) if manifest_path is not None else None
    text = render_gramine_manifest(
        role, manifest, enclave_size=enclave_size, max_threads=max_threads
    )
    if as_json:
        import json

        if output is not None:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise WorkloadError(f"cannot write {output}: {exc.strerror}") from None
        path = str(output) if output is not None else None
        typer.echo(json.dumps({"role": role, "path": path, "manifest": text}))
        return
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise WorkloadError(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``gramine-manifest`` to the ``workload`` group (imported from
    :mod:`teeflow.cli.workload_cmds`). ``app`` is unused: the group is already attached
    to it by ``workload_cmds.register``."""
    from teeflow.cli.workload_cmds import workload_app

    if not any(c.name == "gramine-manifest" for c in workload_app.registered_commands):
        workload_app.command("gramine-manifest")(gramine_manifest_cmd)
