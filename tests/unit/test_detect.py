"""``teeflow.attestation.detect.detect_evidence``: real vectors, synthetic framing, totality."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.attestation.detect import (
    MAX_EVIDENCE_BYTES,
    SNP_REPORT_SIZE,
    EvidenceKind,
    detect_evidence,
)
from teeflow.errors import ParseError

KIND_OF_MANIFEST = {
    "dcap_quote_v3": EvidenceKind.SGX_QUOTE,
    "dcap_quote_v4": EvidenceKind.TDX_QUOTE,
    "dcap_quote_v5": EvidenceKind.TDX_QUOTE,
    "snp_attestation_report": EvidenceKind.SNP_REPORT,
    "nvidia_spdm_measurement_report_hex": EvidenceKind.NVIDIA_SPDM_HEX,
    "nvidia_gpu_evidence_list_json": EvidenceKind.NVIDIA_NVTRUST_JSON,
}


def dcap_header(version: int, tee_type: int, att_key_type: int = 2) -> bytes:
    return struct.pack("<HHI", version, att_key_type, tee_type) + bytes(40)


@pytest.mark.vectors
def test_every_shared_file(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    seen = set()
    for name, entry in manifest["files"].items():
        data = (attestation_dir / name).read_bytes()
        expected = KIND_OF_MANIFEST.get(entry["kind"])
        if expected is None:  # certificates, CRLs, collateral: not evidence
            with pytest.raises(ParseError):
                detect_evidence(data)
        else:
            assert detect_evidence(data) is expected, name
            seen.add(expected)
    # no shared file is in Trustee's NVIDIA JSON shape (test_cli_evidence re-shapes one)
    assert seen == set(EvidenceKind) - {EvidenceKind.NVIDIA_TRUSTEE_JSON}


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (dcap_header(3, 0) + bytes(400), EvidenceKind.SGX_QUOTE),
        (dcap_header(4, 0), EvidenceKind.SGX_QUOTE),
        (dcap_header(4, 0x81), EvidenceKind.TDX_QUOTE),
        (dcap_header(5, 0x81, att_key_type=3), EvidenceKind.TDX_QUOTE),
        (struct.pack("<I", 2) + bytes(SNP_REPORT_SIZE - 4), EvidenceKind.SNP_REPORT),
        (struct.pack("<I", 5) + bytes(SNP_REPORT_SIZE - 4), EvidenceKind.SNP_REPORT),
        (b"[]", EvidenceKind.NVIDIA_NVTRUST_JSON),
        (b'{"device_evidence_list": []}', EvidenceKind.NVIDIA_TRUSTEE_JSON),
        (b' {"nvidia": {}}', EvidenceKind.NVIDIA_TRUSTEE_JSON),
        (b"\xef\xbb\xbf\n  [{}]\n", EvidenceKind.NVIDIA_NVTRUST_JSON),
        (b"11e0ff00", EvidenceKind.NVIDIA_SPDM_HEX),
        (b"  11E0FF00aa\r\n", EvidenceKind.NVIDIA_SPDM_HEX),
    ],
)
def test_synthetic_framing(data: bytes, kind: EvidenceKind) -> None:
    assert detect_evidence(data) is kind
    assert detect_evidence(bytearray(data)) is kind
    assert detect_evidence(memoryview(data)) is kind


def test_emulated_sgx_quote() -> None:
    from teeflow.testing.evidence import make_emulated_quote

    quote, _, _ = make_emulated_quote(b"x")
    assert detect_evidence(quote) is EvidenceKind.SGX_QUOTE


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (bytes(MAX_EVIDENCE_BYTES + 1), "too large"),
        (dcap_header(4, 0x42), "unknown TEE type 0x42"),
        (dcap_header(6, 0x81), "unknown evidence format"),  # version 6: not a DCAP quote
        (dcap_header(4, 0x81, att_key_type=1), "unknown evidence format"),
        (dcap_header(4, 0x81)[:47], "unknown evidence format"),
        (struct.pack("<I", 1) + bytes(SNP_REPORT_SIZE - 4), "unknown evidence format"),
        (struct.pack("<I", 2) + bytes(SNP_REPORT_SIZE - 3), "unknown evidence format"),
        (b"11e0f", "unknown evidence format"),  # odd length
        (b"11e0 ff", "unknown evidence format"),  # inner whitespace
        (b"12e0ff", "unknown evidence format"),  # SPDM 1.2 / not GET_MEASUREMENTS
        (bytes.fromhex("11e0ff00") + bytes(40), "unknown evidence format"),  # binary SPDM
        (b"{}", "unknown evidence format"),
        (b"-----BEGIN CERTIFICATE-----\n", "unknown evidence format"),
    ],
)
def test_unknown_is_parse_error(data: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        detect_evidence(data)


@pytest.mark.parametrize("value", ["text", None, 3, ["a"]])
def test_not_bytes(value: object) -> None:
    with pytest.raises(ParseError, match="must be bytes"):
        detect_evidence(value)  # type: ignore[arg-type]


def test_message_shows_only_a_short_prefix() -> None:
    with pytest.raises(ParseError) as exc:
        detect_evidence(b"\x99" * 5000)
    assert "5000 bytes" in str(exc.value) and "99" * 9 not in str(exc.value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_total(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        assert isinstance(detect_evidence(data), EvidenceKind)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=SNP_REPORT_SIZE, max_size=SNP_REPORT_SIZE))
def test_snp_sized_inputs(data: bytes) -> None:
    try:
        kind = detect_evidence(data)
    except ParseError:
        return
    assert kind in set(EvidenceKind)
    if kind is EvidenceKind.SNP_REPORT:
        assert 2 <= struct.unpack_from("<I", data)[0] <= 5
