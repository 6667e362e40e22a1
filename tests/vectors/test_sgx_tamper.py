"""Bit-flip tamper tests on the real SGX quotes: every change must be rejected.

* every bit of header+body of the phala quote, verified with its collateral at the fixed
  time: ``VerificationError``, except the layout-determining bits listed in
  :data:`LAYOUT_BITS`, for which ``ParseError`` is the right answer;
* a fixed-seed sample of bits in the quote signature, attestation key, QE report, QE
  report signature, QE auth data and PCK chain of every SGX quote: ``VerificationError``;
* a wrong trust anchor: ``VerificationError``.

(The revoked-PCK path needs a CRL signed by a key we hold: see
``tests/unit/test_dcap_quote_verify.py::test_revoked_pck_is_rejected``.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import Quote
from teeflow.attestation.sgx import parse_quote, verify
from teeflow.attestation.trust import TrustAnchor, intel_sgx_root_ca
from teeflow.errors import ParseError, VerificationError

pytestmark = [
    pytest.mark.vectors,
    # Mutated certificates make cryptography warn (negative serials, odd attribute lengths).
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

# Bit positions (byte * 8 + bit, LSB first) whose flip changes how the quote is framed:
#   bytes 0-1 version (3 -> 1, 2, 7, 11, ...: unknown versions),
#   byte 2 bit 0 att_key_type 2 -> 3 (ECDSA-384: no specified layout),
#   bytes 4-7 tee_type (must be 0 in a v3 quote).
LAYOUT_BITS = frozenset(range(0, 16)) | {16} | frozenset(range(32, 64))
HEADER_BODY_BITS = (48 + 384) * 8

QUOTES = {
    "sgx/phala_sgx_quote_v3.bin": "2025-07-01T00:00:00+00:00",
    "sgx/mobilecoin_hw_quote_v3.bin": "2023-05-01T00:00:00+00:00",
    "sgx/trustee_occlum_quote_v3.bin": "2025-06-01T00:00:00+00:00",
    "sgx/oe_qve_thread_test_sgx_quote_v3.bin": "2025-06-01T00:00:00+00:00",
}
PHALA_COLLATERAL = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"
SAMPLES = 200


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def verifier(attestation_dir: Path, name: str) -> Callable[[bytes], object]:
    now = datetime.fromisoformat(QUOTES[name])
    crls = []
    if "mobilecoin" in name:
        crls = [
            x509.load_der_x509_crl((attestation_dir / f"sgx/mobilecoin_{n}_crl.der").read_bytes())
            for n in ("processor_ca", "root_ca")
        ]

    def run(data: bytes) -> object:
        return verify(
            parse_quote(data),
            anchors=[intel_sgx_root_ca()],
            collateral=None,
            now=now,
            crls=crls,
            signatures_only=True,
        )

    return run


def regions(q: Quote, data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the signed-over-elsewhere parts of a v3 quote."""
    sig = 48 + 384 + 4
    qe = sig + 128
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


def test_every_header_and_body_bit_of_phala(attestation_dir: Path) -> None:
    name = "sgx/phala_sgx_quote_v3.bin"
    data = (attestation_dir / name).read_bytes()
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_COLLATERAL)
    now = datetime.fromisoformat(QUOTES[name])
    verify(parse_quote(data), anchors=[intel_sgx_root_ca()], collateral=collateral, now=now)
    wrong: list[tuple[int, str]] = []
    for bit in range(HEADER_BODY_BITS):
        mutated = flip(data, bit)
        try:
            q = parse_quote(mutated)
        except ParseError:
            if bit not in LAYOUT_BITS:
                wrong.append((bit, "ParseError"))
            continue
        if bit in LAYOUT_BITS:
            wrong.append((bit, "parsed"))
            continue
        try:
            verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=now)
        except VerificationError:
            continue
        wrong.append((bit, "accepted"))
    assert wrong == []


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_sampled_bits_of_signature_data(attestation_dir: Path, name: str) -> None:
    data = (attestation_dir / name).read_bytes()
    run = verifier(attestation_dir, name)
    run(data)
    q = parse_quote(data)
    rng = random.Random(f"teeflow-tamper-{name}")  # fixed seed per quote
    wrong: list[tuple[str, int, str]] = []
    for region, (start, end) in regions(q, data).items():
        bits = range(start * 8, end * 8)
        for bit in rng.sample(bits, min(SAMPLES, len(bits))):
            try:
                run(flip(data, bit))
            except VerificationError:
                continue
            except Exception as exc:
                wrong.append((region, bit, type(exc).__name__))
                continue
            wrong.append((region, bit, "accepted"))
    assert wrong == []


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
    q = parse_quote((attestation_dir / name).read_bytes())
    now = datetime.fromisoformat(QUOTES[name])
    for anchor in (
        TrustAnchor(_self_signed("Other Root"), "other"),
        TrustAnchor(_self_signed("Intel SGX Root CA"), "look-alike", emulated=True),
    ):
        with pytest.raises(VerificationError) as exc:
            verify(q, anchors=[anchor], collateral=None, now=now, signatures_only=True)
        assert type(exc.value) is VerificationError
