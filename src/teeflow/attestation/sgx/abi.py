"""SGX view of Intel DCAP quotes: the SGX-only parse entry point and report flags.

Sources: Intel SDM Vol. 3D, 38.7.1 "ATTRIBUTES" and 38.7.2 "MISCSELECT"; Intel SGX ECDSA
Quote Library API, Appendix A (quote v3). The framing itself lives in
:mod:`teeflow.attestation.dcap.quote`.
"""

from __future__ import annotations

from enum import IntFlag

from teeflow.attestation.dcap.quote import TEE_TYPE_SGX, EnclaveReport, Quote
from teeflow.attestation.dcap.quote import parse_quote as parse_dcap_quote
from teeflow.errors import ParseError

__all__ = ["SgxAttributeFlags", "parse_quote", "sgx_report"]


class SgxAttributeFlags(IntFlag):
    """ATTRIBUTES.FLAGS bits (SDM Vol. 3D, Table 38-3); see ``EnclaveReport.flags``."""

    INIT = 0x01
    DEBUG = 0x02
    MODE64BIT = 0x04
    PROVISIONKEY = 0x10
    EINITTOKEN_KEY = 0x20
    CET = 0x40
    KSS = 0x80
    AEXNOTIFY = 0x400


def sgx_report(quote: Quote) -> EnclaveReport:
    """Return the SGX report body of ``quote``.

    Raises:
        ParseError: the quote is not an SGX quote (tee_type != 0 or a TD report body).
    """
    if quote.header.tee_type != TEE_TYPE_SGX or not isinstance(quote.body, EnclaveReport):
        raise ParseError(
            f"not an SGX quote (tee_type {quote.header.tee_type:#x}, "
            f"body {type(quote.body).__name__})"
        )
    return quote.body


def parse_quote(data: bytes) -> Quote:
    """Parse an Intel DCAP quote and require it to be an SGX quote.

    Args:
        data: quote bytes (v3, or v4/v5 with tee_type 0); at most 64 KiB.

    Returns:
        the :class:`~teeflow.attestation.dcap.quote.Quote`; ``quote.body`` is an
        :class:`~teeflow.attestation.dcap.quote.EnclaveReport`.

    Raises:
        ParseError: malformed quote (see :func:`teeflow.attestation.dcap.quote.parse_quote`)
            or a non-SGX (e.g. TDX) quote.
    """
    quote = parse_dcap_quote(data)
    sgx_report(quote)
    return quote
