"""``teeflow platform detect``: which attestation platform this machine offers.

Prints ``gramine-sgx``, ``tdx`` or ``sev-snp`` (what ``--platform auto`` of every role
uses); ``--json`` prints ``{"platform", "tee", "source", "notes"}``. Without a TEE interface
it prints the one-line error of ``--platform auto`` on stderr (with ``--json``: the document
with ``platform`` null) and exits with status 1 — it never suggests an emulated platform
silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from teeflow.cli.output import JsonOption
from teeflow.platform.base import (
    DEFAULT_DEV_ROOT,
    DEFAULT_GRAMINE_ROOT,
    DEFAULT_TSM_ROOT,
    no_tee_message,
    probe_platform,
)

__all__ = ["register"]

platform_app = typer.Typer(help="Attestation platforms (Attester side).", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``platform`` command group to the root app."""
    app.add_typer(platform_app, name="platform")


@platform_app.command("detect")
def detect_cmd(
    *,
    as_json: JsonOption = False,
    gramine_root: Annotated[
        Path, typer.Option("--gramine-root", hidden=True, help="Gramine /dev/attestation.")
    ] = DEFAULT_GRAMINE_ROOT,
    tsm_root: Annotated[
        Path, typer.Option("--tsm-root", hidden=True, help="configfs-tsm report directory.")
    ] = DEFAULT_TSM_ROOT,
    dev_root: Annotated[
        Path, typer.Option("--dev-root", hidden=True, help="Device directory.")
    ] = DEFAULT_DEV_ROOT,
) -> None:
    """Detect the TEE attestation platform: gramine-sgx, tdx or sev-snp (exit 1 if none)."""
    probe = probe_platform(gramine_root=gramine_root, tsm_root=tsm_root, dev_root=dev_root)
    if as_json:
        doc = {
            "platform": probe.platform,
            "tee": probe.tee,
            "source": probe.source,
            "notes": list(probe.notes),
        }
        typer.echo(json.dumps(doc, indent=2))
    elif probe.platform is not None:
        console.print(probe.platform)
    if probe.platform is None:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"error (platform): {no_tee_message(probe.notes)}")
        raise typer.Exit(1)
