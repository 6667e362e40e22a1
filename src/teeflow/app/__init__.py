"""Partitioned enclave applications: replicated attested app logic behind an untrusted
ordering layer (NATS JetStream), clients accepting f+1 matching signed replies (issue 15;
``docs/app.md``). The client SDK is :class:`teeflow.app.Client` (defined in
:mod:`teeflow.app.client`, the API the issue names)."""

from __future__ import annotations

from teeflow.app.client import Client

__all__ = ["Client"]
