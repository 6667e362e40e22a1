"""Key wrapping with HPKE (RFC 9180): base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
AES-256-GCM (suite ids ``0x0020 / 0x0001 / 0x0002``), via ``cryptography``'s
:class:`cryptography.hazmat.primitives.hpke.Suite` single-shot API.

Wrapped key format (``docs/formats.md``, "Wrapped key")::

    off  size  field
      0     4  magic "TFWK"
      4     1  version (1)
      5     2  kem_id  (u16 big-endian, 0x0020 DHKEM(X25519, HKDF-SHA256))
      7     2  kdf_id  (u16 big-endian, 0x0001 HKDF-SHA256)
      9     2  aead_id (u16 big-endian, 0x0002 AES-256-GCM)
     11    32  enc (the ephemeral X25519 public key, RFC 9180 §4.1 SerializePublicKey)
     43   n+16 ciphertext of the n-byte key (AES-256-GCM, tag last)

The caller's ``info`` and ``aad`` are both bound through the HPKE ``info`` input, as RFC
9180 §8.1 advises for single-shot use (the HPKE AEAD associated data is empty)::

    hpke_info = "teeflow/wrap-key/v1" || header[0:11]
                || uint32_be(len(info)) || info || uint32_be(len(aad)) || aad
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from teeflow.errors import SealingError

__all__ = [
    "AEAD_ID",
    "KDF_ID",
    "KEM_ID",
    "MAX_CONTEXT_SIZE",
    "MAX_WRAPPED_KEY_SIZE",
    "MIN_WRAPPED_KEY_SIZE",
    "WRAP_MAGIC",
    "WRAP_VERSION",
    "hpke_info",
    "unwrap_key",
    "wrap_key",
]

WRAP_MAGIC = b"TFWK"
WRAP_VERSION = 1
KEM_ID = 0x0020
KDF_ID = 0x0001
AEAD_ID = 0x0002
MIN_WRAPPED_KEY_SIZE = 16
"""Smallest key (bytes) wrap_key accepts."""
MAX_WRAPPED_KEY_SIZE = 1024
"""Largest key (bytes) wrap_key accepts."""
MAX_CONTEXT_SIZE = 64 * 1024
"""Largest ``info`` and ``aad`` (bytes each)."""

_HEADER = struct.Struct(">4sBHHH")
_PREFIX = _HEADER.pack(WRAP_MAGIC, WRAP_VERSION, KEM_ID, KDF_ID, AEAD_ID)
_ENC_SIZE = 32
_TAG_SIZE = 16
_LABEL = b"teeflow/wrap-key/v1"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def _context(value: object, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise SealingError(f"{name} must be bytes")
    raw = bytes(value)
    if len(raw) > MAX_CONTEXT_SIZE:
        raise SealingError(f"{name} longer than {MAX_CONTEXT_SIZE} bytes")
    return raw


def hpke_info(info: bytes, aad: bytes = b"") -> bytes:
    """The HPKE ``info`` string binding the format header, ``info`` and ``aad``.

    Raises:
        SealingError: ``info`` or ``aad`` not bytes or longer than 64 KiB.
    """
    info_b, aad_b = _context(info, "info"), _context(aad, "aad")
    return b"".join(
        (
            _LABEL,
            _PREFIX,
            len(info_b).to_bytes(4, "big"),
            info_b,
            len(aad_b).to_bytes(4, "big"),
            aad_b,
        )
    )


def wrap_key(
    key: bytes, recipient_public_key: X25519PublicKey, *, info: bytes, aad: bytes = b""
) -> bytes:
    """Encrypt ``key`` to an X25519 public key with HPKE base mode (RFC 9180 §6.1 Seal).

    Args:
        key: the secret to wrap, 16..1024 bytes (usually a 32-byte data key).
        recipient_public_key: the recipient's X25519 public key.
        info: application context (e.g. ``b"teeflow/kbs/dataset-key"``), up to 64 KiB;
            the same value is needed to unwrap.
        aad: further associated data, up to 64 KiB; needed to unwrap.

    Returns:
        ``header (11 bytes) || enc (32) || ciphertext (len(key) + 16)``.

    Raises:
        SealingError: wrong key length or type, wrong public-key type, context too long,
            or an HPKE failure (e.g. a low-order public key).
    """
    if not isinstance(key, bytes | bytearray | memoryview):
        raise SealingError("key must be bytes")
    secret = bytes(key)
    if not MIN_WRAPPED_KEY_SIZE <= len(secret) <= MAX_WRAPPED_KEY_SIZE:
        raise SealingError(
            f"key to wrap must be {MIN_WRAPPED_KEY_SIZE}..{MAX_WRAPPED_KEY_SIZE} bytes"
        )
    if not isinstance(recipient_public_key, X25519PublicKey):
        raise SealingError("recipient public key must be an X25519PublicKey")
    context = hpke_info(info, aad)
    try:
        sealed = _SUITE.encrypt(secret, recipient_public_key, info=context)
    except (ValueError, TypeError) as exc:
        raise SealingError(f"HPKE encryption failed ({type(exc).__name__})") from None
    return _PREFIX + sealed


def unwrap_key(
    wrapped: bytes, recipient_private_key: X25519PrivateKey, *, info: bytes, aad: bytes = b""
) -> bytes:
    """Decrypt a key wrapped by :func:`wrap_key` (RFC 9180 §6.1 Open).

    Raises:
        SealingError: bad header, unsupported version or suite, wrong length, wrong
            private key, wrong ``info`` or ``aad``, or any tampering.
    """
    if not isinstance(wrapped, bytes | bytearray | memoryview):
        raise SealingError("wrapped key must be bytes")
    data = bytes(wrapped)
    if not isinstance(recipient_private_key, X25519PrivateKey):
        raise SealingError("recipient private key must be an X25519PrivateKey")
    context = hpke_info(info, aad)
    fixed = _HEADER.size + _ENC_SIZE + _TAG_SIZE
    if not fixed + MIN_WRAPPED_KEY_SIZE <= len(data) <= fixed + MAX_WRAPPED_KEY_SIZE:
        raise SealingError("wrapped key has an invalid length")
    magic, version, kem_id, kdf_id, aead_id = _HEADER.unpack_from(data)
    if magic != WRAP_MAGIC:
        raise SealingError("not a teeflow wrapped key (bad magic)")
    if version != WRAP_VERSION:
        raise SealingError(f"unsupported wrapped key version {version}")
    if (kem_id, kdf_id, aead_id) != (KEM_ID, KDF_ID, AEAD_ID):
        raise SealingError(
            f"unsupported HPKE suite kem=0x{kem_id:04x} kdf=0x{kdf_id:04x} aead=0x{aead_id:04x}"
        )
    try:
        return _SUITE.decrypt(data[_HEADER.size :], recipient_private_key, info=context)
    except (InvalidTag, ValueError, TypeError):
        raise SealingError(
            "cannot unwrap key: wrong private key, info or aad, or tampered data"
        ) from None
