"""CLI command: ``teeflow agreement history [--pin PIN] [-o FILE] [--json]``.

Fetches every accepted agreement from the *pinned* KBS, verifies the chain (every party signed
the first agreement, ``update_quorum.k`` parties of the previous one signed each update) and
writes the history file ``teeflow model verify --agreements FILE`` reads
(:mod:`teeflow.fl.history`). The file authenticates itself through those signatures, so it may
be passed around and stored anywhere.

:func:`register` adds the command to the existing ``agreement`` group (after
:func:`teeflow.cli.agreement_cmds.register`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from teeflow.cli.agreement_submit_cmd import find_group
from teeflow.errors import KbsError, ParseError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``history`` to the ``agreement`` group of ``app``."""
    grp = find_group(app, "agreement")

    @grp.command("history")
    def history(
        pin: Annotated[
            Path | None, typer.Option("--pin", help="KBS pin file (default: $TEEFLOW_HOME).")
        ] = None,
        kbs: Annotated[
            str | None, typer.Option("--kbs", help="KBS URL (default: the pin's).")
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option("-o", "--output", help="History file to write (for model verify)."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the versions and digests as JSON.")
        ] = False,
    ) -> None:
        """Export the verified agreement history of the pinned KBS."""
        from teeflow._fs import atomic_write
        from teeflow.fl.history import history_document
        from teeflow.kbs.client.pinning import default_pin_path
        from teeflow.kbs.client.sdk import KbsClient

        pin_path = pin if pin is not None else default_pin_path()
        if not pin_path.is_file():
            raise KbsError(f"no pin file at {pin_path}: run 'teeflow kbs verify' first")
        with KbsClient(kbs, pin_path) as client:
            signed = client.agreement_history()
        doc = history_document(signed)
        if output is not None:
            try:
                atomic_write(output, (json.dumps(doc, sort_keys=True) + "\n").encode(), mode=0o644)
            except OSError as exc:
                raise ParseError(f"cannot write {output}: {exc.strerror or exc}") from None
        rows = [{"version": a["version"], "digest": a["digest"]} for a in doc["agreements"]]
        if as_json:
            typer.echo(json.dumps({"agreements": rows, "output": str(output) if output else None}))
            return
        for row in rows:
            typer.echo(f"v{row['version']}  {row['digest']}")
        if output is not None:
            typer.echo(f"wrote {output} ({len(rows)} agreements, chain verified)")
