"""The ``teeflow`` command line: a thin typer + rich layer over the public API.

Each command group lives in its own module and exposes ``register(app)``. Expected errors
(:class:`teeflow.errors.Error`) print a one-line diagnosis to stderr and exit non-zero;
tracebacks appear only with ``TEEFLOW_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from teeflow import __version__
from teeflow.errors import Error

__all__ = ["app", "main"]

app = typer.Typer(
    name="teeflow",
    help="Confidential collaborative machine learning on Trusted Execution Environments.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True, soft_wrap=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"teeflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """teeflow: attested, sealed, collaborative ML on TEEs."""
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("TEEFLOW_DEBUG") else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )


def _register_all() -> None:
    from teeflow.cli import (
        agreement_cmds,
        agreement_history_cmd,
        agreement_submit_cmd,
        app_cmds,
        compute_cmds,
        dashboard_cmd,
        demo_cmd,
        emulate_cmds,
        fl_cmds,
        gramine_cmds,
        kbs_cmds,
        party_cmds,
        platform_cmds,
        quote_cmds,
        resource_cmds,
        sealing_cmds,
        serve_cmds,
        session_cmds,
        workload_cmds,
    )

    for module in (
        demo_cmd,
        sealing_cmds,
        quote_cmds,
        workload_cmds,
        emulate_cmds,
        gramine_cmds,
        party_cmds,
        platform_cmds,
        agreement_cmds,
        kbs_cmds,
        resource_cmds,
        fl_cmds,
        compute_cmds,
        app_cmds,
        dashboard_cmd,
    ):
        module.register(app)
    agreement_submit_cmd.register(app)  # adds `agreement submit` to the agreement group
    session_cmds.register(app)  # `aggregator serve` (into the aggregator group), `session`
    agreement_history_cmd.register(app)  # adds `agreement history`
    serve_cmds.register(app)  # `serve`, and `model publish` in the model group


_register_all()


def main() -> None:
    """Entry point of the ``teeflow`` console script."""
    try:
        app()
    except Error as exc:
        if os.environ.get("TEEFLOW_DEBUG"):
            raise
        err_console.print(f"[bold red]error[/] ({exc.code}): {exc}", highlight=False)
        sys.exit(1)
