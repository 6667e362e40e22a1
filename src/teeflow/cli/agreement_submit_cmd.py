"""CLI command: ``teeflow agreement submit FILE [--pin PIN] [--sigs SIGS.json]``.

Submits the agreement with the signatures of its signature file (``FILE.sigs.json``, see
:mod:`teeflow.cli.agreement_cmds`) to the *pinned* KBS. The KBS accepts the first agreement
only with every party's signature, an update only with k-of-n and the predecessor's digest.

:func:`register` adds the command to the existing ``agreement`` group, so it must run after
:func:`teeflow.cli.agreement_cmds.register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from teeflow.errors import KbsError

__all__ = ["find_group", "register"]


def find_group(app: typer.Typer, name: str) -> typer.Typer:
    """The sub-app registered on ``app`` under ``name``.

    Raises:
        KbsError: no such group (register it first).
    """
    for info in app.registered_groups:
        group = info.typer_instance
        if group is None:
            continue
        group_name = info.name or group.info.name
        if group_name == name:
            return group
    raise KbsError(f"no '{name}' command group registered (register agreement_cmds first)")


def register(app: typer.Typer) -> None:
    """Add ``submit`` to the ``agreement`` group of ``app``."""
    grp = find_group(app, "agreement")

    @grp.command("submit")
    def submit(
        file: Annotated[Path, typer.Argument(help="Agreement YAML.")],
        pin: Annotated[
            Path | None, typer.Option("--pin", help="KBS pin file (default: $TEEFLOW_HOME).")
        ] = None,
        sigs: Annotated[
            Path | None, typer.Option("--sigs", help="Signature file (default FILE.sigs.json).")
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the KBS's answer as one JSON object.")
        ] = False,
    ) -> None:
        """Submit FILE with its signatures to the verified KBS."""
        from teeflow.kbs.client.pinning import (
            default_pin_path,
        )
        from teeflow.kbs.client.sdk import (
            KbsClient,
        )
        from teeflow.kbs.policy.signature_files import load_signed

        pin_path = pin if pin is not None else default_pin_path()
        if not pin_path.is_file():
            raise KbsError(f"no pin file at {pin_path}: run 'teeflow kbs verify' first")
        signed = load_signed(file, sigs)
        with KbsClient(None, pin_path) as client:
            result = client.submit_agreement(signed)
        version = int(result["version"])
        packages = sorted(signed.agreement.packages)
        republish = (
            "grants are bound to the agreement they were made under: every resource uploaded "
            "before this update (package keys, data keys) no longer releases. Republish "
            + (f"each package ({', '.join(packages)}): `teeflow package publish ARCHIVE "
               "--party NAME`, and " if packages else "")
            + "re-upload data keys: `teeflow resource put ...`"
        ) if version > 1 else None
        if as_json:
            import json

            typer.echo(
                json.dumps(
                    {"url": client.url, "version": version, "digest": result["digest"],
                     "republish": packages if version > 1 else [], "note": republish}
                )
            )
            return
        typer.echo(
            f"agreement accepted by {client.url}: version {version} digest {result['digest']}"
        )
        if republish is not None:
            typer.echo(f"note: {republish}", err=True)
