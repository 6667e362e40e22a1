"""teeflow's exception hierarchy: one root, stable machine-readable codes.

Every error teeflow raises on purpose derives from :class:`Error`. Each class has a
stable ``code`` (a short kebab-case string) that the CLI prints and that later
services map to RFC 7807 ``type`` URIs; codes never change once released.

Tree (class, code, meaning)::

    Error                    error         root
    ├── ParseError           parse         malformed bytes or document (bounded, total parsers)
    ├── VerificationError    verification  bad signature or chain, revoked, binding mismatch
    │   └── CollateralError  collateral    missing, expired or invalid Endorsements
    ├── PolicyViolation      policy        verified evidence rejected by an Appraisal Policy
    ├── SealingError         sealing       sealed blob or wrapped key failed (tamper, wrong key)
    ├── WorkloadError        workload      manifest invalid, trusted file changed or missing
    ├── PlatformError        platform      Attester side: evidence could not be produced
    ├── KbsError             kbs           Key Broker Service protocol and policy errors
    └── FLError              fl            federated-learning runtime errors

``CollateralError`` is a ``VerificationError`` because missing or expired
Endorsements mean the evidence could not be verified: callers that only catch
``VerificationError`` still fail closed.

Messages never contain key material or plaintext; they may contain public values
(measurements, certificate subjects, field names).
"""

from __future__ import annotations

__all__ = [
    "CollateralError",
    "Error",
    "FLError",
    "KbsError",
    "ParseError",
    "PlatformError",
    "PolicyViolation",
    "SealingError",
    "VerificationError",
    "WorkloadError",
]


class Error(Exception):
    """Root of every teeflow error. ``code`` is stable and machine-readable."""

    code: str = "error"


class ParseError(Error):
    """Input bytes or a document do not have the expected structure."""

    code = "parse"


class VerificationError(Error):
    """A cryptographic or structural check of evidence or endorsements failed."""

    code = "verification"


class CollateralError(VerificationError):
    """Endorsements (TCB Info, QE Identity, CRLs, issuer chains) missing, expired or invalid."""

    code = "collateral"


class PolicyViolation(Error):
    """Verified evidence does not satisfy the appraisal policy.

    ``violations`` lists every reason (not only the first), as short strings.
    """

    code = "policy"

    def __init__(self, message: str, violations: list[str] | None = None) -> None:
        super().__init__(message)
        self.violations: list[str] = list(violations) if violations else [message]


class SealingError(Error):
    """A sealed blob or a wrapped key failed to open (tamper, truncation, wrong key or aad)."""

    code = "sealing"


class WorkloadError(Error):
    """A workload manifest is invalid or a trusted file differs from its recorded hash."""

    code = "workload"


class PlatformError(Error):
    """The Attester could not produce evidence on this platform."""

    code = "platform"


class KbsError(Error):
    """Key Broker Service protocol or policy error."""

    code = "kbs"


class FLError(Error):
    """Federated-learning runtime error."""

    code = "fl"
