"""Unit tests of the DCAP quote parser on synthetic quotes (layout built independently)."""

from __future__ import annotations

import struct

import pytest

from teeflow.attestation.dcap.quote import (
    MAX_QUOTE_SIZE,
    EnclaveReport,
    Quote,
    TdReport10,
    TdReport15,
    parse_quote,
)
from teeflow.attestation.sgx import parse_quote as parse_sgx_quote
from teeflow.errors import ParseError
from teeflow.hazmat.reader import ByteReader

INTEL = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


def sgx_report(seed: int) -> bytes:
    """A 384-byte report with a recognisable value in every field."""
    b = bytearray((seed + i) % 251 for i in range(384))
    return bytes(b)


def build_quote(
    *,
    version: int = 3,
    tee_type: int = 0,
    att_key_type: int = 2,
    body: bytes | None = None,
    v5_body_type: int | None = None,
    v5_body_size: int | None = None,
    cert_type: int = 5,
    cert_data: bytes = b"-----BEGIN CERTIFICATE-----\n",
    auth: bytes = bytes(range(32)),
    wrapper_type: int = 6,
    wrapper_extra: bytes = b"",
    sig_extra: bytes = b"",
    trailing: bytes = b"",
) -> bytes:
    header = struct.pack("<HHIHH", version, att_key_type, tee_type, 10, 15) + INTEL + b"U" * 20
    if body is None:
        body = sgx_report(1) if tee_type == 0 else bytes(range(256)) * 2 + bytes(72)
    if version == 5:
        bt = v5_body_type if v5_body_type is not None else (1 if tee_type == 0 else 2)
        size = v5_body_size if v5_body_size is not None else len(body)
        body = struct.pack("<HI", bt, size) + body
    qe_cert = (
        sgx_report(7)
        + b"S" * 64
        + struct.pack("<H", len(auth))
        + auth
        + struct.pack("<HI", cert_type, len(cert_data))
        + cert_data
    )
    if version == 3:
        inner = qe_cert
    else:
        inner = struct.pack("<HI", wrapper_type, len(qe_cert) + len(wrapper_extra))
        inner += qe_cert + wrapper_extra
    sig = b"R" * 64 + b"K" * 64 + inner + sig_extra
    return header + body + struct.pack("<I", len(sig)) + sig + trailing


def test_v3_fields_and_round_trip() -> None:
    data = build_quote()
    q = parse_quote(data)
    assert isinstance(q, Quote)
    assert (q.version, q.header.att_key_type, q.tee_type) == (3, 2, 0)
    assert (q.header.qe_svn, q.header.pce_svn, q.header.qe_vendor_id) == (10, 15, INTEL)
    assert q.header.user_data == b"U" * 20
    assert isinstance(q.body, EnclaveReport)
    assert q.body.to_bytes() == sgx_report(1)
    assert q.signed_bytes == data[: 48 + 384]
    assert q.report_data == sgx_report(1)[320:384]
    assert q.qe_report.to_bytes() == sgx_report(7)
    sd = q.signature_data
    assert (sd.signature, sd.attestation_key, sd.wrapper_type) == (b"R" * 64, b"K" * 64, None)
    assert sd.qe_report_certification_data.qe_report_signature == b"S" * 64
    assert sd.qe_report_certification_data.qe_auth_data == bytes(range(32))
    assert q.certification_data.cert_type == 5
    assert q.pck_chain_pem == b"-----BEGIN CERTIFICATE-----\n"
    assert q.parsed_length == len(data) and q.trailing_bytes == 0
    assert q.to_bytes() == data


def test_enclave_report_offsets() -> None:
    raw = sgx_report(3)
    r = EnclaveReport.from_bytes(raw)
    assert r.cpu_svn == raw[0:16]
    assert r.misc_select == int.from_bytes(raw[16:20], "little")
    assert r.isv_ext_prod_id == raw[32:48]
    assert r.attributes == raw[48:64]
    assert r.mr_enclave == raw[64:96]
    assert r.mr_signer == raw[128:160]
    assert r.config_id == raw[192:256]
    assert r.isv_prod_id == int.from_bytes(raw[256:258], "little")
    assert r.isv_svn == int.from_bytes(raw[258:260], "little")
    assert r.config_svn == int.from_bytes(raw[260:262], "little")
    assert r.isv_family_id == raw[304:320]
    assert r.report_data == raw[320:384]
    assert r.to_bytes() == raw
    with pytest.raises(ParseError):
        EnclaveReport.from_bytes(raw[:-1])


@pytest.mark.parametrize(("flags", "debug"), [(0x05, False), (0x07, True), (0x02, True)])
def test_debug_attribute(flags: int, debug: bool) -> None:
    raw = bytearray(384)
    raw[48:56] = flags.to_bytes(8, "little")
    assert EnclaveReport.from_bytes(bytes(raw)).debug is debug


def test_td_report_offsets() -> None:
    raw = bytes((i * 7) % 256 for i in range(648))
    r10 = TdReport10.from_bytes(raw[:584])
    assert r10.tee_tcb_svn == raw[0:16] and r10.mr_seam == raw[16:64]
    assert r10.td_attributes == raw[120:128] and r10.xfam == raw[128:136]
    assert r10.mr_td == raw[136:184]
    assert r10.rtmrs == tuple(raw[328 + 48 * i : 376 + 48 * i] for i in range(4))
    assert r10.report_data == raw[520:584]
    assert r10.to_bytes() == raw[:584]
    r15 = TdReport15.from_bytes(raw)
    assert r15.tee_tcb_svn2 == raw[584:600] and r15.mr_service_td == raw[600:648]
    assert r15.to_bytes() == raw


def test_v4_tdx_and_trailing_bytes() -> None:
    data = build_quote(version=4, tee_type=0x81, trailing=b"\nextra\n")
    q = parse_quote(data)
    assert isinstance(q.body, TdReport10) and not isinstance(q.body, TdReport15)
    assert q.signature_data.wrapper_type == 6
    assert q.trailing_bytes == 7
    assert q.parsed_length == len(data) - 7
    assert q.to_bytes() == data[:-7]
    assert q.signed_bytes == data[: 48 + 584]


def test_v4_sgx() -> None:
    q = parse_quote(build_quote(version=4, tee_type=0))
    assert isinstance(q.body, EnclaveReport)
    assert parse_sgx_quote(q.to_bytes()) == q


@pytest.mark.parametrize(
    ("tee", "bt", "body", "cls"),
    [
        (0, 1, sgx_report(2), EnclaveReport),
        (0x81, 2, bytes(584), TdReport10),
        (0x81, 3, bytes(range(200)) * 3 + bytes(48), TdReport15),
    ],
)
def test_v5_body_types(tee: int, bt: int, body: bytes, cls: type) -> None:
    data = build_quote(version=5, tee_type=tee, body=body, v5_body_type=bt)
    q = parse_quote(data)
    assert type(q.body) is cls and q.body_type == bt
    assert q.signed_bytes == data[: 48 + 6 + len(body)]
    assert q.to_bytes() == data


def test_sgx_entry_point_rejects_tdx() -> None:
    data = build_quote(version=4, tee_type=0x81)
    parse_quote(data)
    with pytest.raises(ParseError, match="not an SGX quote"):
        parse_sgx_quote(data)


def test_other_certification_types_have_no_chain() -> None:
    q = parse_quote(build_quote(cert_type=3, cert_data=b"\x01" * 40))
    assert q.pck_chain_pem is None and q.certification_data.cert_type == 3


def test_att_key_type_is_not_checked_by_parser_except_p384() -> None:
    assert parse_quote(build_quote(att_key_type=0)).header.att_key_type == 0
    with pytest.raises(ParseError, match="ECDSA-384"):
        parse_quote(build_quote(att_key_type=3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": 2}, "version"),
        ({"version": 6}, "version"),
        ({"tee_type": 0x81}, "tee_type"),
        ({"version": 4, "tee_type": 0x80}, "tee_type"),
        ({"version": 5, "tee_type": 0x81, "v5_body_type": 1}, "body type"),
        ({"version": 5, "tee_type": 0, "v5_body_type": 2}, "body type"),
        ({"version": 5, "tee_type": 0x81, "v5_body_type": 9}, "body type"),
        ({"version": 5, "tee_type": 0x81, "v5_body_size": 648}, "size"),
        ({"version": 4, "tee_type": 0x81, "wrapper_type": 5}, "type must be 6"),
        ({"sig_extra": b"\x00"}, "unexpected bytes"),
        ({"version": 4, "tee_type": 0x81, "sig_extra": b"\x00"}, "unexpected bytes"),
        ({"version": 4, "tee_type": 0x81, "wrapper_extra": b"\x00"}, "unexpected bytes"),
    ],
)
def test_layout_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_quote(build_quote(**kwargs))  # type: ignore[arg-type]


def test_nested_length_overrun_is_parse_error() -> None:
    data = bytearray(build_quote())
    # QE auth data size at 48+384+4+64+64+384+64 claims more than the signature data holds.
    off = 48 + 384 + 4 + 128 + 384 + 64
    data[off : off + 2] = struct.pack("<H", 0xFFFF)
    with pytest.raises(ParseError, match="qe_auth_data"):
        parse_quote(bytes(data))
    data = bytearray(build_quote(version=4, tee_type=0x81))
    off = 48 + 584 + 4 + 128 + 2
    data[off : off + 4] = struct.pack("<I", 10**6)  # wrapper size beyond sig data
    with pytest.raises(ParseError):
        parse_quote(bytes(data))


def test_every_truncation_is_parse_error() -> None:
    for data in (build_quote(), build_quote(version=4, tee_type=0x81), build_quote(version=5)):
        for n in range(len(data)):
            with pytest.raises(ParseError):
                parse_quote(data[:n])


def test_size_limit_and_type() -> None:
    with pytest.raises(ParseError, match="too large"):
        parse_quote(build_quote(trailing=bytes(MAX_QUOTE_SIZE)))
    with pytest.raises(ParseError):
        parse_quote("not bytes")  # type: ignore[arg-type]
    assert parse_quote(bytearray(build_quote())).to_bytes() == build_quote()


def test_byte_reader() -> None:
    r = ByteReader(b"\x01\x02\x03\x04\x05\x06\x07\x08\x09", 1, 8)
    assert r.u16() == 0x0302 and r.offset == 3 and r.remaining == 5
    sub = r.sub(4)
    assert sub.u32() == 0x07060504
    sub.expect_end()
    with pytest.raises(ParseError, match="offset 7"):
        r.u16("x")
    assert r.u8() == 8
    with pytest.raises(ParseError):
        r.read(-1)
    with pytest.raises(ParseError):
        ByteReader(b"ab", 2, 1)
    r2 = ByteReader(b"\x00" * 8)
    assert r2.u64() == 0
    with pytest.raises(ParseError, match="unexpected"):
        ByteReader(b"a").expect_end()
