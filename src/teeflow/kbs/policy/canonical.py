"""Canonical JSON (RFC 8785), SHA-256 digests, base64url, and signing domains.

Every signed teeflow document (federation agreement, grant) is hashed in one way:

    digest = SHA-256( RFC 8785 canonical JSON of the document's JSON value )

RFC 8785 ("JSON Canonicalization Scheme", JCS) fixes member order (sorted by UTF-16 code
units), whitespace (none), string escaping and number formatting, so the same value always
gives the same bytes — whatever YAML or JSON formatting or key order it was read from.
The JCS implementation is the ``rfc8785`` package; integers must stay within ±(2**53 - 1)
(I-JSON, RFC 7493 §2.2) and floats must be finite.

Signatures are Ed25519 (RFC 8032) over ``domain || digest`` where ``domain`` is a fixed,
NUL-terminated ASCII label per document type (:data:`AGREEMENT_DOMAIN`, :data:`GRANT_DOMAIN`),
so a signature over one kind of document can never be replayed as another.

Binary values in documents are base64url without padding (RFC 4648 §5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import rfc8785
from pydantic import BaseModel, ConfigDict, ValidationError

from teeflow.errors import ParseError

__all__ = [
    "AGREEMENT_DOMAIN",
    "GRANT_DOMAIN",
    "DocumentModel",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "format_validation_error",
    "sha256_digest",
    "signing_input",
    "sorted_unique",
    "validate_document",
]

M = TypeVar("M", bound=BaseModel)

#: Domain separator prefixed to an agreement digest before signing (21 bytes).
AGREEMENT_DOMAIN = b"teeflow-agreement-v1\0"
#: Domain separator prefixed to a grant digest before signing (17 bytes).
GRANT_DOMAIN = b"teeflow-grant-v1\0"

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
#: Largest base64url text accepted by :func:`b64url_decode` (characters).
_MAX_B64 = 1 << 16


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON bytes (UTF-8) of a JSON-compatible value.

    Args:
        value: ``dict`` (string keys) / ``list`` / ``str`` / ``int`` / finite ``float`` /
            ``bool`` / ``None``, nested.

    Raises:
        ParseError: the value is not representable in I-JSON (non-string key, NaN/infinity,
            integer outside ±(2**53 - 1), unsupported type).
    """
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError, OverflowError) as exc:
        raise ParseError(f"value is not canonical-JSON serialisable: {exc}") from None


def sha256_digest(value: Any) -> bytes:
    """SHA-256 (32 bytes) of :func:`canonical_json` of ``value``.

    Raises:
        ParseError: see :func:`canonical_json`.
    """
    return hashlib.sha256(canonical_json(value)).digest()


def signing_input(domain: bytes, digest: bytes) -> bytes:
    """The bytes an Ed25519 signature covers: ``domain || digest``.

    Args:
        domain: :data:`AGREEMENT_DOMAIN` or :data:`GRANT_DOMAIN`.
        digest: a 32-byte SHA-256 digest.

    Raises:
        ParseError: ``digest`` is not 32 bytes.
    """
    if len(digest) != 32:
        raise ParseError(f"digest must be 32 bytes, got {len(digest)}")
    return domain + digest


def b64url_encode(data: bytes) -> str:
    """Base64url (RFC 4648 §5) without ``=`` padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, *, length: int | None = None) -> bytes:
    """Decode base64url (padding optional; standard-alphabet ``+``/``/`` refused).

    Args:
        text: the encoded string (at most 65536 characters).
        length: the exact decoded length in bytes, or None for any length.

    Raises:
        ParseError: not a string, illegal characters, bad padding/length, or wrong decoded
            length.
    """
    if not isinstance(text, str):
        raise ParseError("expected a base64url string")
    if len(text) > _MAX_B64 or not _B64URL.fullmatch(text):
        raise ParseError("not a base64url string")
    stripped = text.rstrip("=")
    if stripped != text and len(text) % 4:
        raise ParseError("not a base64url string (bad padding)")
    if len(stripped) % 4 == 1:
        raise ParseError("not a base64url string (bad length)")
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise ParseError("not a base64url string") from None
    if b64url_encode(raw) != stripped:  # non-zero trailing bits: not the canonical encoding
        raise ParseError("not a canonical base64url string")
    if length is not None and len(raw) != length:
        raise ParseError(f"expected {length} bytes of base64url, got {len(raw)}")
    return raw


def format_validation_error(exc: ValidationError) -> str:
    """One line naming every invalid field of a pydantic ``ValidationError`` (no input values)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<root>"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def validate_document(model: type[M], data: object, what: str) -> M:
    """Validate a parsed JSON/YAML value into ``model``.

    Args:
        model: a pydantic model class.
        data: the parsed document (must be a mapping).
        what: a noun for messages ("federation agreement").

    Raises:
        ParseError: not a mapping, unknown keys, wrong types or failed checks; the message
            names every offending field.
    """
    if not isinstance(data, Mapping):
        raise ParseError(f"{what}: document must be a mapping")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ParseError(f"invalid {what}: {format_validation_error(exc)}") from None


class DocumentModel(BaseModel):
    """Base of signed teeflow documents: frozen pydantic v2 model, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def sorted_unique(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sort (by ``str``) and de-duplicate a set-like tuple, so the digest ignores list order."""
    return tuple(sorted(set(value), key=str))
