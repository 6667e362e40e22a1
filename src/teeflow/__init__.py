"""teeflow: confidential collaborative machine learning on Trusted Execution Environments.

``teeflow.Party`` is :class:`teeflow.api.party.Party` (its only home), resolved on first
use by the module ``__getattr__`` (PEP 562): ``import teeflow`` stays cheap — the CLI, the
lean workload entry points and ``import teeflow.errors`` do not load the party API's
dependencies (httpx, the KBS client, the FL and compute layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teeflow.errors import (
    CollateralError,
    Error,
    ParseError,
    PolicyViolation,
    SealingError,
    VerificationError,
)

if TYPE_CHECKING:
    from teeflow.api.party import Party

__version__ = "0.1.0"

__all__ = [
    "CollateralError",
    "Error",
    "ParseError",
    "Party",
    "PolicyViolation",
    "SealingError",
    "VerificationError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """PEP 562: ``teeflow.Party`` on first use (module docstring)."""
    if name == "Party":
        from teeflow.api.party import Party

        return Party
    raise AttributeError(f"module 'teeflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Party"})
