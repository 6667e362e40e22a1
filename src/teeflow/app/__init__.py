"""Partitioned enclave applications: replicated attested app logic behind an untrusted
ordering layer (NATS JetStream), clients accepting f+1 matching signed replies (issue 15)."""

from __future__ import annotations

__all__: list[str] = []
