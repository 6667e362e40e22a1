"""Partitioned enclave applications: replicated attested app logic behind an untrusted
ordering layer (NATS JetStream), clients accepting f+1 matching signed replies (issue 15;
``docs/app.md``).

``teeflow.app.Client`` (the name the issue gives the SDK) is
:class:`teeflow.app.client.Client`, its only home, resolved on first use (PEP 562) so that
a replica importing :mod:`teeflow.app.replica` never loads the client side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teeflow.app.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    """PEP 562: ``teeflow.app.Client`` on first use (module docstring)."""
    if name == "Client":
        from teeflow.app.client import Client

        return Client
    raise AttributeError(f"module 'teeflow.app' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Client"})
