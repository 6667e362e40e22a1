"""Federated learning: arrays on the wire, strategies, compute packages, provenance.

Submodules (the aggregator never imports torch; nothing here does):

- :mod:`teeflow.fl.arrays` — named float32 arrays ↔ canonical safetensors bytes, digests.
- :mod:`teeflow.fl.strategy` — FedAvg (streaming), norm-bounded FedAvg, FedAdam, median,
  trimmed mean, Krum / Multi-Krum.
- :mod:`teeflow.fl.rules` — the rules a session runs, from the agreement's ``training``
  section (refuses anything else); :mod:`teeflow.fl.outliers` (SECFL detection by client
  sampling) and :mod:`teeflow.fl.dp` (central DP, dp-accounting) plug in there.
- :mod:`teeflow.fl.inmemory` — whole sessions in one process (tests, benchmarks);
  :mod:`teeflow.fl.events` — typed progress events.
- :mod:`teeflow.fl.package` — compute packages: deterministic build, safe unpack, entrypoints.
- :mod:`teeflow.fl.provenance` — the aggregator's signed, hash-chained provenance log
  (verification; :mod:`teeflow.fl.provenance_log` builds it).
- :mod:`teeflow.fl.sessions`, :mod:`teeflow.fl.service`, :mod:`teeflow.fl.control` — the
  aggregator as a service running party-submitted sessions, and its control-API client.
- :mod:`teeflow.fl.simulation` — the whole protocol in one process on the emulated platform.

``teeflow.fl.simulate`` is :func:`teeflow.fl.simulation.simulate` (its only home), resolved on
first use by the module ``__getattr__`` (PEP 562), so importing a submodule of this package
(the aggregator's lean entry point does) never loads the simulation's KBS server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teeflow.fl.simulation import simulate

__all__ = ["simulate"]


def __getattr__(name: str) -> Any:
    """PEP 562: ``teeflow.fl.simulate`` on first use (module docstring)."""
    if name == "simulate":
        from teeflow.fl.simulation import simulate

        return simulate
    raise AttributeError(f"module 'teeflow.fl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"simulate"})
