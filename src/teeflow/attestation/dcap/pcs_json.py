"""Intel PCS signed JSON bodies: exact signed-span extraction, strict field readers.

Source: "Intel SGX and Intel TDX Provisioning Certification Service (PCS) API" (TCB Info
V2/V3 and Enclave Identity V2 responses). A PCS response body is
``{"<key>":{...},"signature":"<hex r||s>"}`` where ``<key>`` is ``tcbInfo`` or
``enclaveIdentity``; the signature is ECDSA-P256-SHA256 by the Intel SGX TCB Signing key
over the *exact bytes* of the inner ``{...}`` object as they appear in the body.
:func:`split_signed_body` extracts that byte span without re-serialising; the ``*_field``
readers are shared by :mod:`teeflow.attestation.dcap.tcb_info` and
:mod:`teeflow.attestation.dcap.qe_identity`. Every reader raises :class:`ParseError` on a
missing, mistyped or out-of-range field (fail closed).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.attestation.dcap.chain import x509_errors_as
from teeflow.attestation.evidence import TcbStatus
from teeflow.errors import ParseError, VerificationError
from teeflow.hazmat.ecdsa import verify_p256_sha256

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LIST_ITEMS",
    "advisory_ids",
    "dict_field",
    "field",
    "hex_field",
    "int_field",
    "list_field",
    "split_signed_body",
    "status_field",
    "str_field",
    "time_field",
    "verify_pcs_signature",
]

#: Largest PCS response body accepted (bytes).
MAX_BODY_BYTES = 1024 * 1024
#: Largest JSON array :func:`list_field` accepts (items).
MAX_LIST_ITEMS = 1024
_WS = b" \t\r\n"
_HEX = re.compile(r"[0-9a-fA-F]*")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ParseError(f"non-standard JSON constant {name}")


def _byte(body: bytes, pos: int) -> int:
    if pos >= len(body):
        raise ParseError("unexpected end of JSON body")
    return body[pos]


def _skip_ws(body: bytes, pos: int) -> int:
    while pos < len(body) and body[pos] in _WS:
        pos += 1
    return pos


def _scan_string(body: bytes, pos: int) -> int:
    """``pos`` at an opening quote; return the index just past the closing quote."""
    if _byte(body, pos) != 0x22:
        raise ParseError(f"expected a JSON string at byte {pos}")
    pos += 1
    while True:
        c = _byte(body, pos)
        # backslash: skip the escaped byte (the hex digits of a \u escape are plain bytes)
        if c == 0x5C:
            pos += 2
        elif c == 0x22:
            return pos + 1
        else:
            pos += 1


def _scan_value(body: bytes, pos: int) -> int:
    """``pos`` at the first byte of a (validated) JSON value; return the index past it."""
    c = _byte(body, pos)
    if c == 0x22:
        return _scan_string(body, pos)
    if c in b"{[":
        depth = 0
        while True:
            c = _byte(body, pos)
            if c == 0x22:
                pos = _scan_string(body, pos)
                continue
            if c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
                if depth == 0:
                    return pos + 1
            pos += 1
    while pos < len(body) and body[pos] not in b",}]" + _WS:
        pos += 1
    return pos


def _top_level_span(body: bytes, key: str) -> tuple[int, int]:
    """Byte span of the value of top-level ``key`` in an already validated JSON object."""
    pos = _skip_ws(body, 0)
    if _byte(body, pos) != 0x7B:
        raise ParseError("JSON body is not an object")
    pos += 1
    span: tuple[int, int] | None = None
    while True:
        pos = _skip_ws(body, pos)
        if _byte(body, pos) == 0x7D:
            break
        start = pos
        pos = _scan_string(body, pos)
        try:
            name = json.loads(body[start:pos])
        except ValueError:
            raise ParseError(f"bad JSON key at byte {start}") from None
        pos = _skip_ws(body, pos)
        if _byte(body, pos) != 0x3A:
            raise ParseError(f"expected ':' at byte {pos}")
        pos = _skip_ws(body, pos + 1)
        vstart = pos
        pos = _scan_value(body, pos)
        if name == key:
            span = (vstart, pos)
        pos = _skip_ws(body, pos)
        c = _byte(body, pos)
        if c == 0x2C:
            pos += 1
        elif c == 0x7D:
            break
        else:
            raise ParseError(f"unexpected byte at {pos} in JSON object")
    if span is None:
        raise ParseError(f"missing top-level key {key!r}")
    return span


def split_signed_body(body: bytes, key: str) -> tuple[bytes, dict[str, Any], bytes]:
    """Split an Intel PCS signed body ``{"<key>":{...},"signature":"<hex>"}``.

    Args:
        body: the UTF-8 JSON body, at most 1 MiB.
        key: ``"tcbInfo"`` or ``"enclaveIdentity"``.

    Returns:
        ``(signed_bytes, inner_object, signature)``: the exact byte span of the inner
        object (what Intel signed), the parsed inner object, and the 64-byte raw ``r||s``.

    Raises:
        ParseError: oversized, not UTF-8, invalid JSON, duplicate keys (at any depth),
            NaN/Infinity, top-level keys other than ``key`` and ``"signature"``, inner
            value not an object, or a signature that is not 64 bytes of hex.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ParseError(f"PCS body too large ({len(body)} bytes > {MAX_BODY_BYTES})")
    try:
        text = body.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ParseError("PCS body is not UTF-8") from None
    except RecursionError:
        raise ParseError("PCS body nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError; duplicate keys raise ParseError directly
        raise ParseError(f"PCS body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {key, "signature"}:
        raise ParseError(f"PCS body must be an object with exactly {key!r} and 'signature'")
    inner = doc[key]
    if not isinstance(inner, dict):
        raise ParseError(f"{key!r} is not a JSON object")
    signature = hex_field(doc, "signature", 64)
    start, end = _top_level_span(body, key)
    signed = body[start:end]
    if not signed.startswith(b"{") or not signed.endswith(b"}"):
        raise ParseError(f"could not locate the signed {key!r} object")
    return signed, inner, signature


def field(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` or ParseError naming the missing field."""
    if name not in obj:
        raise ParseError(f"missing field {name!r}")
    return obj[name]


def int_field(obj: dict[str, Any], name: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    """An integer field within ``[lo, hi]`` (booleans rejected); ParseError otherwise."""
    value = field(obj, name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ParseError(f"field {name!r} must be an integer in [{lo}, {hi}]")
    return value


def str_field(obj: dict[str, Any], name: str, max_len: int = 256) -> str:
    """A string field of at most ``max_len`` characters; ParseError otherwise."""
    value = field(obj, name)
    if not isinstance(value, str) or len(value) > max_len:
        raise ParseError(f"field {name!r} must be a string of at most {max_len} characters")
    return value


def hex_field(obj: dict[str, Any], name: str, size: int) -> bytes:
    """A hex string field decoding to exactly ``size`` bytes (either case)."""
    value = str_field(obj, name, 2 * size)
    if len(value) != 2 * size or not _HEX.fullmatch(value):
        raise ParseError(f"field {name!r} must be {size} bytes of hex")
    return bytes.fromhex(value)


def time_field(obj: dict[str, Any], name: str) -> datetime:
    """An ISO 8601 UTC timestamp (``2025-06-19T10:56:11Z``) as an aware UTC datetime."""
    value = str_field(obj, name, 64)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ParseError(f"field {name!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ParseError(f"field {name!r} has no time zone")
    return parsed.astimezone(UTC)


def status_field(obj: dict[str, Any], name: str = "tcbStatus") -> TcbStatus:
    """A TCB status string; unknown values are a ParseError (fail closed)."""
    value = str_field(obj, name, 64)
    try:
        return TcbStatus(value)
    except ValueError:
        raise ParseError(f"unknown {name} {value!r}") from None


def list_field(obj: dict[str, Any], name: str, *, optional: bool = False) -> list[Any]:
    """A JSON array field of at most 1024 items (absent -> [] when ``optional``)."""
    if optional and name not in obj:
        return []
    value = field(obj, name)
    if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
        raise ParseError(f"field {name!r} must be an array of at most {MAX_LIST_ITEMS} items")
    return value


def dict_field(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """A JSON object field; ParseError otherwise."""
    value = field(obj, name)
    if not isinstance(value, dict):
        raise ParseError(f"field {name!r} must be an object")
    return value


def advisory_ids(obj: dict[str, Any]) -> tuple[str, ...]:
    """The optional ``advisoryIDs`` array of strings."""
    out = []
    for item in list_field(obj, "advisoryIDs", optional=True):
        if not isinstance(item, str) or len(item) > 64:
            raise ParseError("advisoryIDs must hold strings")
        out.append(item)
    return tuple(out)


def verify_pcs_signature(
    signed_bytes: bytes, signature: bytes, signing_cert: x509.Certificate, what: str
) -> None:
    """Verify a PCS ECDSA-P256-SHA256 raw ``r||s`` signature with a certificate's key.

    Args:
        signed_bytes: the exact inner object bytes (from :func:`split_signed_body`).
        signature: 64-byte raw ``r||s``.
        signing_cert: the TCB Signing certificate (not validated here).
        what: document name for messages (``"tcbInfo"``, ``"enclaveIdentity"``).

    Raises:
        VerificationError: the certificate's key is malformed or not an EC key, or the
            signature does not verify.
    """
    with x509_errors_as(VerificationError, f"{what} signing certificate public key"):
        key = signing_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError(f"{what} signing certificate does not hold an EC key")
    verify_p256_sha256(key, signature, signed_bytes, f"{what} signature")
