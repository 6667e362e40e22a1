"""Federated learning: arrays on the wire, strategies, compute packages, provenance.

Submodules (the aggregator never imports torch; nothing here does):

- :mod:`teeflow.fl.arrays` — named float32 arrays ↔ canonical safetensors bytes, digests.
- :mod:`teeflow.fl.strategy` — FedAvg (streaming), FedAdam, median, trimmed mean, Krum.
- :mod:`teeflow.fl.package` — compute packages: deterministic build, safe unpack, entrypoints.
- :mod:`teeflow.fl.provenance` — the aggregator's signed, hash-chained provenance log
  (verification; :mod:`teeflow.fl.provenance_log` builds it).
"""

from __future__ import annotations

__all__: list[str] = []
