"""CLI commands: ``teeflow party keygen|show`` (party keys, :mod:`teeflow.kbs.policy.parties`).

``teeflow party keygen NAME [--dir DIR] [--force]`` creates an Ed25519 signing key and an
X25519 recipient key in ``DIR`` (default ``$TEEFLOW_HOME/parties/NAME/``) and prints the
path of ``NAME.pub.json``, the file to hand to the other parties.
``teeflow party show NAME [--dir DIR]`` prints that public file.
``teeflow party enroll`` / ``revoke-enrollment``: :mod:`teeflow.cli.enrollment_cmds`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from teeflow.cli.output import JsonOption, echo_json
from teeflow.kbs.policy.parties import PartyKeys, party_dir

__all__ = ["register"]

_DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Directory of the party's keys (default: $TEEFLOW_HOME/parties/NAME).",
        file_okay=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add the ``party`` command group to the root app."""
    party = typer.Typer(
        name="party", help="Party keys (sign agreements and grants) and workload enrollments."
    )

    @party.command("keygen")
    def keygen(
        name: Annotated[str, typer.Argument(help="Party name (DNS label, e.g. hospital-a).")],
        directory: _DirOption = None,
        force: Annotated[
            bool, typer.Option("--force", help="Replace existing keys (irreversible).")
        ] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Create NAME's Ed25519 signing key and X25519 recipient key."""
        target = directory if directory is not None else party_dir(name)
        keys = PartyKeys.generate(name)
        pub_path = keys.save(target, overwrite=force)
        pub = keys.public()
        if as_json:
            echo_json(
                {
                    "name": name,
                    "directory": str(target),
                    "public_file": str(pub_path),
                    "sign_key": pub.sign_key,
                    "recipient_key": pub.recipient_key,
                }
            )
            return
        typer.echo(f"party {name}: keys written to {target} (private keys mode 0600)")
        typer.echo(f"  public file    {pub_path}   <- share this with the other parties")
        typer.echo(f"  sign_key       {pub.sign_key}")
        typer.echo(f"  recipient_key  {pub.recipient_key}")

    @party.command("show")
    def show(
        name: Annotated[str, typer.Argument(help="Party name.")],
        directory: _DirOption = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Accepted for uniformity: the output is JSON.")
        ] = False,
    ) -> None:
        """Print NAME's public key file (JSON; after checking it matches the private keys)."""
        target = directory if directory is not None else party_dir(name)
        keys = PartyKeys.load_dir(target, name)
        typer.echo(keys.public().to_json(), nl=False)

    from teeflow.cli.enrollment_cmds import register as register_enrollment

    register_enrollment(party)
    app.add_typer(party, name="party")
