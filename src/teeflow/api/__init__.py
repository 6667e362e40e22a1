"""teeflow's scripting API for parties: the tasks users script, in one place.

:class:`teeflow.api.party.Party` (also reachable as ``teeflow.Party``) connects as a party
of a federation to its verified KBS and does what a party does — read, write, sign and
submit agreements, enroll workloads, publish packages, start/watch/stop sessions on an
aggregator service, verify and open models, seal inputs and run TEEU jobs. Guide with a
runnable example of each task: ``docs/api.md``.

This package sits above :mod:`teeflow.fl` and :mod:`teeflow.compute` (it uses both) and
below :mod:`teeflow.demo` and :mod:`teeflow.cli` (the import-linter layers in
``pyproject.toml``).
"""

from __future__ import annotations

__all__: list[str] = []
