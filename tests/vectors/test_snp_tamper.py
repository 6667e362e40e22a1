"""Bit-flip tamper tests on real SEV-SNP reports: every change must be rejected, typed.

* every bit of the signed region ``[0, 0x2A0)`` of a v2 VCEK report and of the v3 VLEK
  report, verified at the fixed time: ``VerificationError``, except the bits listed by
  :func:`parse_error_bits` (version, reserved-must-be-one/zero policy bits, reserved signer
  info bits and SIGNING_KEY values, MBZ byte ranges), for which ``ParseError`` is the
  right answer;
* a fixed-seed sample of bits of the signature region ``[0x2A0, 0x4A0)`` of every report:
  R and S -> ``VerificationError``, the MBZ tail after S -> ``ParseError``;
* a fixed-seed sample of bits of every VCEK/VLEK certificate: ``ParseError`` (no longer a
  certificate) or ``VerificationError``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.snp import load_certificate, load_certificates, parse_report, verify
from teeflow.errors import ParseError, VerificationError

pytestmark = [
    pytest.mark.vectors,
    # Mutated certificates make cryptography warn (serial 0, odd encodings).
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

FIXED = datetime(2025, 6, 1, tzinfo=UTC)
SIGNED_BITS = 0x2A0 * 8
REPORTS = [
    "snp/gsg_milan_report_v2.bin",
    "snp/virtee_milan_report_v2.bin",
    "snp/trustee_aws_milan_vlek_report_v3.bin",
    "snp/azure_genoa_report_v3.bin",
    "snp/azure_milan_report_v2.bin",
]
FULL = ["snp/virtee_milan_report_v2.bin", "snp/trustee_aws_milan_vlek_report_v3.bin"]
SAMPLES = 300


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _bytes(start: int, end: int) -> set[int]:
    return set(range(start * 8, end * 8))


def parse_error_bits(version: int, signer_info: int) -> set[int]:
    """Bits of the signed region whose flip must be refused by the parser (SNP ABI spec)."""
    bits: set[int] = set()
    # VERSION (u32 at 0): only 2 <-> 3 (bit 0) stays a supported version with this layout.
    bits |= set(range(1, 32))
    if version == 3:
        bits.add(0)  # 3 -> 2: the v3 CPUID bytes are then in a v2 MBZ range
    # POLICY (u64 at 8): bit 17 must be 1, bits 63:26 must be 0.
    bits |= {8 * 8 + 17} | {8 * 8 + b for b in range(26, 64)}
    # signer info (u32 at 0x48): bits 31:5 MBZ; SIGNING_KEY 2..6 reserved.
    bits |= {0x48 * 8 + b for b in range(5, 32)}
    key = signer_info >> 2 & 7
    for b in (2, 3, 4):
        if 2 <= (key ^ (1 << (b - 2))) <= 6:
            bits.add(0x48 * 8 + b)
    bits |= _bytes(0x4C, 0x50)
    bits |= _bytes(0x18B if version >= 3 else 0x188, 0x1A0)
    bits |= _bytes(0x1EB, 0x1EC) | _bytes(0x1EF, 0x1F0) | _bytes(0x1F8, 0x2A0)
    return bits


def _setup(
    attestation_dir: Path, manifest: dict[str, Any], name: str
) -> tuple[bytes, list[x509.Certificate]]:
    data = (attestation_dir / name).read_bytes()
    cert_file = manifest["files"][name]["expected"]["endorsement_cert_file"]
    certs = load_certificates((attestation_dir / cert_file).read_bytes())
    return data, certs


def _run(data: bytes, certs: list[x509.Certificate]) -> object:
    return verify(
        parse_report(data),
        endorsement_cert=certs[0],
        intermediates=certs[1:] or None,
        now=FIXED,
    )


@pytest.mark.parametrize("name", FULL)
def test_every_bit_of_the_signed_region(
    attestation_dir: Path, manifest: dict[str, Any], name: str
) -> None:
    data, certs = _setup(attestation_dir, manifest, name)
    _run(data, certs)
    original = parse_report(data)
    expect_parse = parse_error_bits(original.version, original.signer_info)
    wrong: list[tuple[int, str]] = []
    for bit in range(SIGNED_BITS):
        mutated = flip(data, bit)
        try:
            report = parse_report(mutated)
        except ParseError:
            if bit not in expect_parse:
                wrong.append((bit, "ParseError"))
            continue
        if bit in expect_parse:
            wrong.append((bit, "parsed"))
            continue
        try:
            verify(report, endorsement_cert=certs[0], intermediates=certs[1:] or None, now=FIXED)
        except VerificationError as exc:
            if type(exc) is not VerificationError:
                wrong.append((bit, type(exc).__name__))
            continue
        wrong.append((bit, "accepted"))
    assert wrong == []


@pytest.mark.parametrize("name", REPORTS)
def test_sampled_bits_of_the_signature(
    attestation_dir: Path, manifest: dict[str, Any], name: str
) -> None:
    data, certs = _setup(attestation_dir, manifest, name)
    _run(data, certs)
    rng = random.Random(f"teeflow-snp-tamper-{name}")  # fixed seed per report
    wrong: list[tuple[int, str]] = []
    regions = {
        "R and S": (range(0x2A0 * 8, (0x2A0 + 0x90) * 8), VerificationError),
        "reserved tail": (range((0x2A0 + 0x90) * 8, 0x4A0 * 8), ParseError),
    }
    for bits, expected in regions.values():
        for bit in rng.sample(bits, SAMPLES):
            try:
                _run(flip(data, bit), certs)
            except (ParseError, VerificationError) as exc:
                if type(exc) is not expected:
                    wrong.append((bit, type(exc).__name__))
                continue
            wrong.append((bit, "accepted"))
    assert wrong == []


@pytest.mark.parametrize("name", REPORTS)
def test_sampled_bits_of_the_endorsement_certificate(
    attestation_dir: Path, manifest: dict[str, Any], name: str
) -> None:
    data, certs = _setup(attestation_dir, manifest, name)
    report = parse_report(data)
    der = certs[0].public_bytes(Encoding.DER)
    rng = random.Random(f"teeflow-snp-cert-tamper-{name}")
    wrong: list[tuple[int, str]] = []
    for bit in rng.sample(range(len(der) * 8), 200):
        try:
            cert = load_certificate(flip(der, bit))
            verify(report, endorsement_cert=cert, intermediates=certs[1:] or None, now=FIXED)
        except (ParseError, VerificationError):
            continue
        except Exception as exc:  # anything untyped is a bug
            wrong.append((bit, type(exc).__name__))
            continue
        wrong.append((bit, "accepted"))
    assert wrong == []


def test_truncated_and_extended_reports(attestation_dir: Path) -> None:
    data = (attestation_dir / REPORTS[0]).read_bytes()
    for bad in (b"", data[:-1], data + b"\0", data[:0x2A0]):
        with pytest.raises(ParseError):
            parse_report(bad)
