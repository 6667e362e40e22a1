"""Inputs the fuzz harnesses found (or that share their bug class), kept as regressions.

pyasn1 raises ``OverflowError`` (not ``PyAsn1Error``) for a DER length field of 8+ bytes
("cannot fit 'int' into an index-sized integer"); ``bench/fuzz_pem_chain.py`` found it in
the PCK SGX extension of a mutated PCK certificate. Every pyasn1 decoding of untrusted
bytes must turn it into ``ParseError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from pyasn1.type import univ

from teeflow.errors import ParseError

HUGE_LENGTH = b"\x88\x81\x53\x30\x10\x06\x0b\x2a\x86"  # long form, 8 length bytes
NESTED_SEQUENCE = b"\x30\x0c\x30" + HUGE_LENGTH + b"\x00\x00"
NESTED_INTEGER = b"\x30\x0c\x02" + HUGE_LENGTH + b"\x00\x00"
TOP_INTEGER = b"\x02" + HUGE_LENGTH + b"xx"


def _pck(data: bytes) -> Any:
    from teeflow.attestation.dcap.pck import parse_sgx_extension_value

    return parse_sgx_extension_value(data)


def _amd(data: bytes) -> Any:
    from teeflow.attestation.snp.certs import _decode

    return _decode(data, univ.Integer(), "blSPL")


def _fwid(data: bytes) -> Any:
    from teeflow.attestation.nvidia.verify import parse_fwid_extension_value

    return parse_fwid_extension_value(data)


def _identity(data: bytes) -> Any:
    from teeflow.kbs.ca.authority import parse_identity_extension

    return parse_identity_extension(data)


@pytest.mark.parametrize("parse", [_pck, _amd, _fwid, _identity])
@pytest.mark.parametrize("data", [NESTED_SEQUENCE, NESTED_INTEGER, TOP_INTEGER])
def test_huge_der_length_is_a_parse_error(parse: Callable[[bytes], Any], data: bytes) -> None:
    with pytest.raises(ParseError):
        parse(data)


@pytest.mark.vectors
def test_mutated_pck_certificate(attestation_dir: Any) -> None:
    """The shape the fuzzer found: a real PCK chain whose SGX extension has a TCB entry with
    an 8-byte length (the certificate itself still parses; only the extension is bad)."""
    from teeflow.attestation.dcap.pck import parse_sgx_extension_value
    from teeflow.attestation.dcap.verify_common import decode_pck_chain
    from teeflow.attestation.sgx import parse_quote

    quote = parse_quote((attestation_dir / "sgx/phala_sgx_quote_v3.bin").read_bytes())
    leaf = decode_pck_chain(quote.pck_chain_pem)[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1"))
    der = bytes(ext.value.value)  # type: ignore[attr-defined]
    tcb = der.index(b"\x30\x82", 4)  # the TCB entry's SEQUENCE after the PPID entry
    mutated = der[:tcb] + b"\x30\x88\x81\x53\x30\x10\x06\x0b" + der[tcb + 8 :]
    parse_sgx_extension_value(der)  # the original decodes
    with pytest.raises(ParseError):
        parse_sgx_extension_value(mutated)
