"""The ``teeflow`` command line (typer): :mod:`teeflow.cli.main` and one module per group.

Nothing imports this package except its console script and the tests.
"""

from __future__ import annotations

__all__: list[str] = []
