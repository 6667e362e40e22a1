"""SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS parser: fields, malformations, totality."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from test_nvidia_verify import FWID, NONCE, default_opaque, make_transcript, tlv

from teeflow.attestation.nvidia.spdm import (
    MAX_TRANSCRIPT_SIZE,
    NvidiaOpaqueFieldId,
    OpaqueField,
    parse_nvidia_opaque_data,
    parse_transcript,
    parse_transcript_hex,
)
from teeflow.errors import ParseError

KEY = ec.generate_private_key(ec.SECP384R1())
RAW = make_transcript(KEY)


def test_fields() -> None:
    t = parse_transcript(RAW)
    assert t.raw == RAW and t.signed_bytes == RAW[:-96] and t.signature == RAW[-96:]
    req = t.request
    assert (req.version, req.param1, req.param2, req.nonce, req.slot_id) == (
        0x11,
        1,
        0xFF,
        NONCE,
        0,
    )
    resp = t.response
    assert resp.version == 0x11 and resp.number_of_blocks == 4 == len(resp.blocks)
    assert [b.index for b in resp.blocks] == [1, 2, 3, 4]
    first = resp.blocks[0]
    assert (first.specification, first.value_type, first.raw_bitstream) == (1, 1, False)
    assert first.value == hashlib.sha384(b"\x01").digest()
    assert len(resp.measurement_record) == 4 * (4 + 3 + 48)
    assert resp.measurements_digest == hashlib.sha384(resp.measurement_record).digest()
    assert resp.nonce == b"\x5a" * 32
    assert resp.opaque_data == default_opaque()
    opaque = resp.opaque
    assert opaque is not None
    assert opaque.driver_version == "590.12" and opaque.vbios_version == "96.00.A5.00.01"
    assert opaque.fwid == FWID and opaque.project == "G520" and opaque.chip_sku == "885"
    assert opaque.project_sku is None
    assert opaque.get(NvidiaOpaqueFieldId.DRIVER_VERSION) == b"590.12\0"
    assert opaque.get(99) is None
    assert [f.name for f in opaque.fields][:2] == ["VBIOS_VERSION", "CHIP_SKU"]
    assert OpaqueField(300, b"").name == "UNKNOWN_300"


def test_raw_bitstream_block_and_slot() -> None:
    t = parse_transcript(make_transcript(KEY, blocks=[(7, 0x82, b"abc")], slot=7))
    block = t.response.blocks[0]
    assert (block.index, block.value_type, block.raw_bitstream, block.value) == (
        7,
        2,
        True,
        b"abc",
    )
    assert t.request.slot_id == 7


def test_hex_form() -> None:
    assert parse_transcript_hex("  " + RAW.hex().upper() + "\r\n").raw == RAW
    assert parse_transcript_hex(RAW.hex().encode()).raw == RAW
    for bad in ("zz", RAW.hex()[:-1], RAW.hex()[:100] + " " + RAW.hex()[100:], "é"):
        with pytest.raises(ParseError):
            parse_transcript_hex(bad)


def _patched(offset: int, value: int) -> bytes:
    out = bytearray(RAW)
    out[offset] = value
    return bytes(out)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_patched(0, 0x12), "version"),
        (_patched(1, 0xE1), "GET_MEASUREMENTS"),
        (_patched(2, 0x00), "signature"),
        (_patched(36, 8), "slot"),
        (_patched(37, 0x10), "version"),
        (_patched(38, 0x61), "MEASUREMENTS"),
        (_patched(41, 3), "NumberOfBlocks"),
        (_patched(45, 0), "reserved measurement index"),
        (_patched(45, 0xFF), "reserved measurement index"),
        (_patched(46, 0x02), "not DMTF"),
        (_patched(47, 52), "measurement block"),
        (RAW + b"\0", "unexpected bytes"),
        (RAW[:-1], "signature"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_transcript(data)


def test_duplicate_index_rejected() -> None:
    raw = make_transcript(KEY, blocks=[(1, 1, b"a"), (1, 1, b"b")])
    with pytest.raises(ParseError, match="duplicate"):
        parse_transcript(raw)


def test_every_truncation_is_parse_error() -> None:
    small = make_transcript(KEY, blocks=[(1, 1, b"ab")], opaque=tlv(3, b"1.0\0"))
    for n in range(len(small)):
        with pytest.raises(ParseError):
            parse_transcript(small[:n])


def test_size_limit_and_type() -> None:
    with pytest.raises(ParseError, match="too large"):
        parse_transcript(b"\0" * (MAX_TRANSCRIPT_SIZE + 1))
    with pytest.raises(ParseError):
        parse_transcript("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "opaque",
    [
        tlv(3, b"1.0\0") + b"\x01",  # truncated TLV header
        tlv(3, b"1.0\0")[:-1],  # value shorter than declared
        tlv(3, b"1\0") + tlv(3, b"2\0"),  # duplicate type
        tlv(3, b"\xff\xfe\0"),  # driver version not ASCII
        tlv(3, b"1.0\0x"),  # bytes after the NUL
        tlv(3, b"1\x07\0"),  # control character
        tlv(6, b"\x00\x01"),  # short VBIOS version
        tlv(20, b"\x00" * 32),  # FWID not 48 bytes
    ],
)
def test_bad_opaque_tlvs_leave_opaque_undecoded(opaque: bytes) -> None:
    with pytest.raises(ParseError):
        parse_nvidia_opaque_data(opaque)
    t = parse_transcript(make_transcript(KEY, opaque=opaque))
    assert t.response.opaque is None and t.response.opaque_data == opaque


def test_empty_opaque() -> None:
    t = parse_transcript(make_transcript(KEY, opaque=b""))
    assert t.response.opaque is not None and t.response.opaque.fields == ()
    assert t.response.opaque.driver_version is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_transcript(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(RAW) - 1), st.integers(1, 255))
def test_mutated_transcripts_parse_or_parse_error(offset: int, xor: int) -> None:
    data = bytearray(RAW)
    data[offset] ^= xor
    with contextlib.suppress(ParseError):
        parse_transcript(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_opaque_parse_or_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_nvidia_opaque_data(data)
