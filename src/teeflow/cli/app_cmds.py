"""``teeflow app``: partitioned enclave applications (``docs/app.md``).

- ``teeflow app replica``: run one replica (attest, get the application key and a replica
  certificate, consume the JetStream stream in order, sign replies); the same as the lean
  entry point ``python -m teeflow.app.replica`` (:mod:`teeflow.app.replica`), which is what
  production images should run (no typer/rich in the enclave).
- ``teeflow app measure DIR``: the package digest of an app package folder (the value of
  the agreement's ``apps.<name>.package`` and, on emulated platforms, the replica's
  measurement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from teeflow.cli.output import JsonOption
from teeflow.cli.platform_options import (
    GramineRootOption,
    PlatformOption,
    TsmRootOption,
    platform_options,
    warn_if_emulated,
)

__all__ = ["app_app", "measure_cmd", "register", "replica_cmd"]

app_app = typer.Typer(
    help="Partitioned enclave applications: replicas behind NATS JetStream (docs/app.md).",
    no_args_is_help=True,
)


@app_app.command("replica")
def replica_cmd(
    app: Annotated[str, typer.Option("--app", help="Application name (agreement apps.<name>).")],
    replica: Annotated[int, typer.Option("--replica", help="This replica's index, 0..n-1.")],
    package: Annotated[
        Path, typer.Option("--package", help="The app package folder (with app.py).")
    ],
    pin: Annotated[Path, typer.Option("--pin", help="KBS pin file (teeflow kbs verify).")],
    enrollment: Annotated[
        Path,
        typer.Option(
            "--enrollment",
            help="Enrollment token file of role app (teeflow party enroll, by a "
            "compute-operator).",
        ),
    ],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Folder of the sealed state snapshot.")
    ],
    nats: Annotated[
        str, typer.Option("--nats", help="NATS server URL (JetStream enabled).")
    ] = "nats://127.0.0.1:4222",
    snapshot_every: Annotated[
        int, typer.Option("--snapshot-every", min=1, help="Applied requests per snapshot.")
    ] = 100,
    platform: PlatformOption = "auto",
    tsm_root: TsmRootOption = None,
    gramine_root: GramineRootOption = None,
) -> None:
    """Run one replica until SIGTERM/SIGINT; prints JSON progress lines (ready, refused,
    snapshot, stopped, error)."""
    from teeflow.app.replica import ReplicaConfig, run

    options = platform_options(platform, tsm_root, gramine_root)
    warn_if_emulated(options)
    config = ReplicaConfig(
        app=app, replica=replica, package=package, pin=pin, enrollment=enrollment, nats=nats,
        state_dir=state_dir, platform=options, snapshot_every=snapshot_every,
    )  # fmt: skip
    raise typer.Exit(run(config))


@app_app.command("measure")
def measure_cmd(
    package: Annotated[Path, typer.Argument(help="The app package folder (with app.py).")],
    as_json: JsonOption = False,
) -> None:
    """Print the package digest (agreement apps.<name>.package; the emulated replica
    measurement)."""
    from teeflow.app.package import package_digest

    digest = package_digest(package).hex()
    if as_json:
        typer.echo(json.dumps({"package": str(package), "digest": digest}))
    else:
        typer.echo(digest)


def register(app: typer.Typer) -> None:
    """Attach the ``app`` group."""
    app.add_typer(app_app, name="app")
