"""Intel DCAP (ECDSA) attestation building blocks shared by SGX and TDX.

Modules: :mod:`.quote` (quote v3/v4/v5 framing), :mod:`.pck` (PCK certificate SGX
extension), :mod:`.chain` (X.509 chains and CRLs), :mod:`.tcb_info`, :mod:`.qe_identity`
and :mod:`.collateral` (Intel PCS Endorsements). Only the quote model is re-exported here;
import the other modules directly.
"""

from __future__ import annotations

from .quote import (
    CertificationData,
    EnclaveReport,
    QeReportCertificationData,
    Quote,
    QuoteHeader,
    QuoteSignatureData,
    TdReport10,
    TdReport15,
    parse_quote,
)

__all__ = [
    "CertificationData",
    "EnclaveReport",
    "QeReportCertificationData",
    "Quote",
    "QuoteHeader",
    "QuoteSignatureData",
    "TdReport10",
    "TdReport15",
    "parse_quote",
]
