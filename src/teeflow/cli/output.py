"""Machine-readable output shared by the commands: the ``--json`` option and its printer.

Every command that reports something takes ``--json`` and then prints exactly one JSON
object (RFC 8259) on stdout, nothing else (commands that follow a stream of events print one
object per line); errors still go to stderr with a non-zero exit.
Long-running services (``kbs serve``, ``compute serve``, ``app replica``, ``emulate
tsm|gramine``, ``workload run``) are not reports; ``aggregator run`` / ``client run`` print
JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer

__all__ = ["JsonOption", "echo_json"]

#: ``--json``: print one JSON object instead of text.
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="JSON for scripts instead of text (one object; one per line when following).",
    ),
]


def echo_json(doc: Mapping[str, Any]) -> None:
    """Print ``doc`` as one indented JSON object (non-JSON values via ``str``)."""
    typer.echo(json.dumps(dict(doc), indent=2, default=str))
