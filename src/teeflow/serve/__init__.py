"""Confidential model serving: the attested Open Inference Protocol server (role ``serve``)
and its end-to-end encrypting client (issue 12; ``docs/serve.md``).

``teeflow.serve.Client`` (the name the issue gives the SDK) is
:class:`teeflow.serve.client.Client`, its only home, resolved on first use (PEP 562) so that
the serving workload importing :mod:`teeflow.serve.workload` never loads the client side::

    from teeflow.serve import Client
    with Client("https://serve.example:8443", pin="pin.json", party=keys) as c:
        out = c.infer({"input": images})   # verifies the server's attestation first

Modules: :mod:`~teeflow.serve.workload` (attest, model key, usage),
:mod:`~teeflow.serve.server` (the HTTPS API, ``teeflow serve``), :mod:`~teeflow.serve.client`,
:mod:`~teeflow.serve.oip`, :mod:`~teeflow.serve.e2e` (per-request envelopes),
:mod:`~teeflow.serve.session` (end-to-end sessions), :mod:`~teeflow.serve.access`,
:mod:`~teeflow.serve.model`, :mod:`~teeflow.serve.sandbox`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teeflow.serve.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    """PEP 562: ``teeflow.serve.Client`` on first use (module docstring)."""
    if name == "Client":
        from teeflow.serve.client import Client

        return Client
    raise AttributeError(f"module 'teeflow.serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Client"})
