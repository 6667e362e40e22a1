"""ECDSA encodings used by attestation formats (raw ``r||s`` and raw ``x||y``).

Intel DCAP quotes carry ECDSA P-256 signatures as 64 raw bytes (``r||s``, big-endian,
32 bytes each) and public keys as 64 raw bytes (``x||y``, uncompressed point without
the 0x04 prefix) -- Intel SGX ECDSA Quote Library API, Appendix A. ``cryptography``
wants DER signatures (RFC 3279 Ecdsa-Sig-Value) and SEC 1 points; this module converts,
using ``cryptography`` only (no hand-rolled arithmetic).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from teeflow.errors import ParseError, VerificationError

__all__ = [
    "der_to_raw_signature",
    "p256_public_key_from_raw",
    "p256_public_key_to_raw",
    "raw_to_der_signature",
    "verify_p256_sha256",
]

_P256_COORD = 32


def raw_to_der_signature(raw: bytes) -> bytes:
    """Convert a raw ``r||s`` signature (2*n bytes, big-endian halves) to DER.

    Raises:
        ParseError: if ``raw`` is empty or has odd length.
    """
    if not raw or len(raw) % 2:
        raise ParseError(f"raw ECDSA signature must have a non-zero even length, got {len(raw)}")
    half = len(raw) // 2
    r = int.from_bytes(raw[:half], "big")
    s = int.from_bytes(raw[half:], "big")
    return encode_dss_signature(r, s)


def der_to_raw_signature(der: bytes, coord_size: int = _P256_COORD) -> bytes:
    """Convert a DER ECDSA signature to raw ``r||s`` with ``coord_size``-byte halves.

    Raises:
        ParseError: malformed DER, or r/s does not fit in ``coord_size`` bytes.
    """
    try:
        r, s = decode_dss_signature(der)
        return r.to_bytes(coord_size, "big") + s.to_bytes(coord_size, "big")
    except (ValueError, OverflowError) as exc:
        raise ParseError(f"malformed DER ECDSA signature: {exc}") from None


def p256_public_key_from_raw(xy: bytes) -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key from 64 raw bytes ``x||y``.

    Raises:
        VerificationError: wrong length or the point is not on the curve.
    """
    if len(xy) != 2 * _P256_COORD:
        raise VerificationError(f"P-256 public key must be 64 bytes, got {len(xy)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError:
        raise VerificationError("invalid P-256 public key (point not on curve)") from None


def p256_public_key_to_raw(key: ec.EllipticCurvePublicKey) -> bytes:
    """Return the 64-byte raw ``x||y`` form of a P-256 public key.

    Raises:
        ParseError: the key is not on P-256.
    """
    if not isinstance(key.curve, ec.SECP256R1):
        raise ParseError(f"expected a P-256 key, got curve {key.curve.name}")
    nums = key.public_numbers()
    return nums.x.to_bytes(_P256_COORD, "big") + nums.y.to_bytes(_P256_COORD, "big")


def verify_p256_sha256(
    key: ec.EllipticCurvePublicKey, raw_signature: bytes, message: bytes, what: str
) -> None:
    """Verify an ECDSA-P256-SHA256 signature given as 64 raw bytes ``r||s``.

    Args:
        key: the signer's public key (any curve ``cryptography`` supports).
        raw_signature: 64 bytes, ``r||s`` big-endian.
        message: the signed bytes (hashed with SHA-256 here).
        what: a label for the error message (e.g. ``"quote signature"``).

    Raises:
        VerificationError: wrong length, or the signature does not verify.
    """
    if len(raw_signature) != 2 * _P256_COORD:
        raise VerificationError(f"{what}: signature must be 64 bytes, got {len(raw_signature)}")
    der = raw_to_der_signature(raw_signature)
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise VerificationError(f"{what} is invalid") from None
