"""Bit-flip tamper tests on the real TDX quotes: every change must be rejected.

* every bit of header + TD report of the phala v4 quote (and the v5 descriptor + TD 1.5
  report of the go-tdx-guest v5 sample), verified with full collateral at the fixed time:
  ``VerificationError``, except the layout-determining bits listed in :data:`LAYOUT_BITS`
  / :data:`V5_LAYOUT_BITS`, for which ``ParseError`` is the right answer;
* a fixed-seed sample of bits in the quote signature, attestation key, QE report, QE
  report signature, QE auth data and PCK chain of every TDX quote: ``VerificationError``;
* a wrong trust anchor: ``VerificationError``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeflow.attestation import tdx
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import Quote
from teeflow.attestation.trust import TrustAnchor, intel_sgx_root_ca
from teeflow.errors import ParseError, VerificationError

pytestmark = [
    pytest.mark.vectors,
    # Mutated certificates make cryptography warn (negative serials, odd attribute lengths).
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

# Bit positions (byte * 8 + bit, LSB first) whose flip changes how the quote is framed:
#   bytes 0-1 version (4 -> 5 reads a v5 body descriptor out of the TD report: invalid
#   body type; 4 -> 6, 0, 12, ...: unknown versions),
#   byte 2 bit 0 att_key_type 2 -> 3 (ECDSA-384: no specified layout),
#   bytes 4-7 tee_type (0x81 -> anything else: unknown TEE in v4 / v5, or SGX in v4 whose
#   384-byte body leaves the rest misframed, or an SGX quote refused by tdx.parse_quote).
LAYOUT_BITS = frozenset(range(0, 16)) | {16} | frozenset(range(32, 64))
HEADER_BODY_BITS = (48 + 584) * 8
# v5: the same header bits plus the body descriptor (u16 type 3, u32 size 648) at 48..53.
V5_LAYOUT_BITS = LAYOUT_BITS | frozenset(range(48 * 8, 54 * 8))
V5_HEADER_BODY_BITS = (48 + 6 + 648) * 8

PHALA = "tdx/phala_tdx_quote_v4.bin"
PHALA_COLLATERAL = "tdx/collateral/tdx_B0C06F000000_2025-06-19_phala"
PHALA_NOW = datetime(2025, 7, 1, tzinfo=UTC)
V5 = "tdx/gtg_quote_v5_sample.bin"
V5_COLLATERAL = "tdx/collateral/tdx_90C06F000000_2026-02-18_phala"
V5_NOW = datetime(2026, 3, 1, tzinfo=UTC)
# README fixed times (signatures and PCK chain only).
QUOTES = {
    "tdx/gtg_tdx_prod_quote_SPR_E4_v4.bin": "2023-07-01T01:00:00+00:00",
    "tdx/oe_tdx_quote_v4.bin": "2023-07-01T01:00:00+00:00",
    "tdx/trustee_tdx_quote_6_v4.bin": "2025-11-01T00:00:00+00:00",
    "tdx/phala_tdx_quote_v4.bin": "2025-07-01T00:00:00+00:00",
    "tdx/gtg_cos113_tdx_quote_v4.bin": "2026-07-01T00:00:00+00:00",
    "tdx/oe_tdx_quote_v5.bin": "2026-07-01T00:00:00+00:00",
    "tdx/gtg_quote_v5_sample.bin": "2026-03-01T00:00:00+00:00",
}
SAMPLES = 150


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def regions(q: Quote, data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the signature-data parts of a v4/v5 quote."""
    sig = len(q.signed_bytes) + 4
    qe = sig + 128 + 6  # after signature, attestation key and the type-6 header
    auth_len = len(q.signature_data.qe_report_certification_data.qe_auth_data)
    auth = qe + 384 + 64 + 2
    chain = auth + auth_len + 6
    assert q.pck_chain_pem is not None and data[chain:].startswith(q.pck_chain_pem)
    return {
        "quote signature": (sig, sig + 64),
        "attestation key": (sig + 64, sig + 128),
        "QE report": (qe, qe + 384),
        "QE report signature": (qe + 384, qe + 448),
        "QE auth data": (auth, auth + auth_len),
        "PCK chain": (chain, chain + len(q.pck_chain_pem)),
    }


def _every_bit(
    data: bytes, collateral: IntelCollateral, now: datetime, bits: int, layout: frozenset[int]
) -> list[tuple[int, str]]:
    anchors = [intel_sgx_root_ca()]
    tdx.verify(tdx.parse_quote(data), anchors=anchors, collateral=collateral, now=now)
    wrong: list[tuple[int, str]] = []
    for bit in range(bits):
        mutated = flip(data, bit)
        try:
            q = tdx.parse_quote(mutated)
        except ParseError:
            if bit not in layout:
                wrong.append((bit, "ParseError"))
            continue
        if bit in layout:
            wrong.append((bit, "parsed"))
            continue
        try:
            tdx.verify(q, anchors=anchors, collateral=collateral, now=now)
        except VerificationError:
            continue
        except Exception as exc:  # report any other type as a failure
            wrong.append((bit, type(exc).__name__))
            continue
        wrong.append((bit, "accepted"))
    return wrong


def test_every_header_and_td_report_bit_of_phala(attestation_dir: Path) -> None:
    data = (attestation_dir / PHALA).read_bytes()
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_COLLATERAL)
    assert _every_bit(data, collateral, PHALA_NOW, HEADER_BODY_BITS, LAYOUT_BITS) == []


def test_every_header_descriptor_and_td15_report_bit_of_v5(attestation_dir: Path) -> None:
    data = (attestation_dir / V5).read_bytes()
    collateral = IntelCollateral.from_dir(attestation_dir / V5_COLLATERAL)
    assert _every_bit(data, collateral, V5_NOW, V5_HEADER_BODY_BITS, V5_LAYOUT_BITS) == []


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_sampled_bits_of_signature_data(attestation_dir: Path, name: str) -> None:
    data = (attestation_dir / name).read_bytes()
    now = datetime.fromisoformat(QUOTES[name])
    anchors = [intel_sgx_root_ca()]

    def run(raw: bytes) -> object:
        return tdx.verify(
            tdx.parse_quote(raw), anchors=anchors, collateral=None, now=now, signatures_only=True
        )

    run(data)
    q = tdx.parse_quote(data)
    rng = random.Random(f"teeflow-tdx-tamper-{name}")  # fixed seed per quote
    wrong: list[tuple[str, int, str]] = []
    for region, (start, end) in regions(q, data).items():
        bits = range(start * 8, end * 8)
        for bit in rng.sample(bits, min(SAMPLES, len(bits))):
            try:
                run(flip(data, bit))
            except VerificationError:
                continue
            except Exception as exc:  # any other type is a failure
                wrong.append((region, bit, type(exc).__name__))
                continue
            wrong.append((region, bit, "accepted"))
    assert wrong == []


def test_trailing_bytes_are_ignored(attestation_dir: Path) -> None:
    data = (attestation_dir / PHALA).read_bytes()
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_COLLATERAL)
    q = tdx.parse_quote(data + b"\xff" * 17)
    assert q.trailing_bytes == 70 + 17
    v = tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=PHALA_NOW)
    assert v.tcb_status is not None


def test_truncations_are_parse_errors(attestation_dir: Path) -> None:
    data = (attestation_dir / PHALA).read_bytes()
    q = tdx.parse_quote(data)
    for cut in sorted({0, 1, 47, 48, 631, 632, 635, 636, q.parsed_length - 1}):
        with pytest.raises(ParseError):
            tdx.parse_quote(data[:cut])


def _self_signed(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2018, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2049, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_wrong_anchor(attestation_dir: Path, name: str) -> None:
    q = tdx.parse_quote((attestation_dir / name).read_bytes())
    now = datetime.fromisoformat(QUOTES[name])
    for anchor in (
        TrustAnchor(_self_signed("Other Root"), "other"),
        TrustAnchor(_self_signed("Intel SGX Root CA"), "look-alike", emulated=True),
    ):
        with pytest.raises(VerificationError) as exc:
            tdx.verify(q, anchors=[anchor], collateral=None, now=now, signatures_only=True)
        assert type(exc.value) is VerificationError
