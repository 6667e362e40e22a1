"""Low-level building blocks (AEAD streams, ECDSA encodings, bounded readers) — use the
higher layers (:mod:`teeflow.sealing`, :mod:`teeflow.attestation`) instead."""

from __future__ import annotations

__all__: list[str] = []
