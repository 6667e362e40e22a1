"""Intel TDX evidence: parse -> verify -> appraise (see ``docs/architecture.md``).

* :func:`parse_quote` — bytes -> :class:`~teeflow.attestation.dcap.quote.Quote`
  (TDX quotes only: v4 TD report 1.0, v5 TD report 1.0/1.5; ``ParseError``).
* :func:`verify` — quote + trust anchors + collateral + ``now`` ->
  :class:`VerifiedTdxEvidence` (``VerificationError`` / ``CollateralError``).
* :func:`appraise` — verified evidence + :class:`TdxPolicy` -> ``AttestationResult``.

Never imports another TEE subpackage (the shared DCAP checks live in
:mod:`teeflow.attestation.dcap`).
"""

from __future__ import annotations

from .abi import parse_quote
from .policy import TdxPolicy, appraise
from .tcb import TdxTcbResult, evaluate_tdx_tcb
from .verify import VerifiedTdxEvidence, verify, verify_tcb_documents

__all__ = [
    "TdxPolicy",
    "TdxTcbResult",
    "VerifiedTdxEvidence",
    "appraise",
    "evaluate_tdx_tcb",
    "parse_quote",
    "verify",
    "verify_tcb_documents",
]
