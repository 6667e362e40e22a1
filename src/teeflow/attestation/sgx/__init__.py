"""Intel SGX evidence: parse -> verify -> appraise (see ``docs/architecture.md``).

* :func:`parse_quote` — bytes -> :class:`~teeflow.attestation.dcap.quote.Quote`
  (SGX quotes only; ``ParseError``).
* :func:`verify` — quote + trust anchors + collateral + ``now`` ->
  :class:`VerifiedSgxEvidence` (``VerificationError`` / ``CollateralError``).
* :func:`appraise` — verified evidence + :class:`SgxPolicy` -> ``AttestationResult``.
"""

from __future__ import annotations

from .abi import parse_quote
from .policy import SgxPolicy, appraise
from .verify import VerifiedSgxEvidence, verify

__all__ = ["SgxPolicy", "VerifiedSgxEvidence", "appraise", "parse_quote", "verify"]
