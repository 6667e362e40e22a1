"""TDX view of Intel DCAP quotes: the TDX-only parse entry point and TD report fields.

Sources: Intel TDX DCAP Quoting Library API, Appendix A.3 (quote v4, TD report 1.0,
584 bytes) and A.4 (quote v5, body descriptor type 2 = TD report 1.0, type 3 = TD report
1.5, 648 bytes, adding TEE_TCB_SVN2 and MRSERVICETD); Intel TDX Module ABI Specification,
"TDREPORT_STRUCT" / "TDINFO_STRUCT" and the ATTRIBUTES / XFAM definitions. The framing
itself (header, signature data, certification data type 6 -> QE report -> type 5 PCK
chain, trailing bytes) lives in :mod:`teeflow.attestation.dcap.quote`.

All multi-byte fields are kept as stored. TD_ATTRIBUTES, XFAM and SEAMATTRIBUTES are
little-endian 64-bit bit fields (byte 0 holds bits 0-7); TEE_TCB_SVN is 16 single-byte
SVNs (byte 0 = TDX module ISV SVN, byte 1 = TDX module major version, bytes 2.. = further
TDX TCB components).
"""

from __future__ import annotations

from enum import IntFlag

from teeflow.attestation.dcap.quote import TEE_TYPE_TDX, Quote, TdReport10, TdReport15
from teeflow.attestation.dcap.quote import parse_quote as parse_dcap_quote
from teeflow.errors import ParseError

__all__ = [
    "TdAttributes",
    "is_debug",
    "parse_quote",
    "td_attributes",
    "td_report",
    "tee_tcb_svn2",
]


class TdAttributes(IntFlag):
    """TD_ATTRIBUTES bits (TDX Module ABI spec, "ATTRIBUTES"), as a little-endian u64.

    Bit 0 (TUD.DEBUG) makes the TD debuggable: the host VMM can read and write its
    memory and registers, so such a TD has no confidentiality.
    """

    DEBUG = 1 << 0
    SEPT_VE_DISABLE = 1 << 28
    PKS = 1 << 30
    KL = 1 << 31
    PERFMON = 1 << 63


def td_report(quote: Quote) -> TdReport10:
    """Return the TD report body of ``quote`` (a :class:`TdReport10` or :class:`TdReport15`).

    Raises:
        ParseError: the quote is not a TDX quote (tee_type != 0x81 or an SGX body).
    """
    if quote.header.tee_type != TEE_TYPE_TDX or not isinstance(quote.body, TdReport10):
        raise ParseError(
            f"not a TDX quote (tee_type {quote.header.tee_type:#x}, "
            f"body {type(quote.body).__name__})"
        )
    return quote.body


def tee_tcb_svn2(report: TdReport10) -> bytes | None:
    """TEE_TCB_SVN2 (16 bytes) of a TD 1.5 report, else None (TD 1.0 has no such field)."""
    return report.tee_tcb_svn2 if isinstance(report, TdReport15) else None


def td_attributes(report: TdReport10) -> int:
    """TD_ATTRIBUTES as an integer (little-endian u64); see :class:`TdAttributes`."""
    return int.from_bytes(report.td_attributes, "little")


def is_debug(report: TdReport10) -> bool:
    """True if TD_ATTRIBUTES.DEBUG (bit 0) is set: the TD is debuggable by the host."""
    return bool(td_attributes(report) & TdAttributes.DEBUG)


def parse_quote(data: bytes) -> Quote:
    """Parse an Intel DCAP quote and require it to be a TDX quote.

    Accepted: v4 with tee_type 0x81 (TD report 1.0) and v5 with tee_type 0x81 and body
    type 2 (TD report 1.0) or 3 (TD report 1.5). Bytes after the quote's declared end are
    tolerated and counted in ``Quote.trailing_bytes`` (the shared framing rule).

    Args:
        data: quote bytes, at most 64 KiB.

    Returns:
        the :class:`~teeflow.attestation.dcap.quote.Quote`; ``quote.body`` is a
        :class:`~teeflow.attestation.dcap.quote.TdReport10` (or its subclass
        :class:`~teeflow.attestation.dcap.quote.TdReport15`).

    Raises:
        ParseError: malformed quote (see :func:`teeflow.attestation.dcap.quote.parse_quote`)
            or a non-TDX (e.g. SGX) quote.
    """
    quote = parse_dcap_quote(data)
    td_report(quote)
    return quote
