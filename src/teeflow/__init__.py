"""teeflow: confidential collaborative machine learning on Trusted Execution Environments."""

from __future__ import annotations

from teeflow.errors import (
    CollateralError,
    Error,
    ParseError,
    PolicyViolation,
    SealingError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "CollateralError",
    "Error",
    "ParseError",
    "PolicyViolation",
    "SealingError",
    "VerificationError",
    "__version__",
]
