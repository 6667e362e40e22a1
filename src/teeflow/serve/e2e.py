"""End-to-end encrypted OIP requests: the ``teeflow-e2e`` extension (``docs/serve.md``).

HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, single-shot
(``cryptography``'s :class:`~cryptography.hazmat.primitives.hpke.Suite`).

**Request**: the client makes a fresh X25519 key pair per request and seals, to the server's
attested HPKE key ``pkS`` (:mod:`teeflow.serve.attestation`), with
``info = "teeflow-serve/request/v1\\0" || model name``::

    pt = pkC (32) || u64 created (POSIX seconds) || u16 len(api_key) || api_key
         || u32 header length (0xFFFFFFFF: none) || inner OIP request body

and sends an ordinary OIP request whose only input is the ciphertext, as a ``UINT8`` tensor
:data:`E2E_TENSOR` in the binary extension, with request parameter
``"teeflow_e2e": "hpke-v1"``. An API key travels inside the envelope, so a proxy that
terminates TLS sees neither it nor the tensors. The server accepts an envelope only within
:data:`MAX_ENVELOPE_AGE` seconds of ``created`` and only once (a replay cache keyed by the
ciphertext's SHA-256), so a captured envelope cannot be replayed to spend a party's quota.

**Response**: the server seals the inner OIP response to ``pkC`` with ``info =
"teeflow-serve/response/v1\\0" || SHA-256(request ciphertext)``, so a response opens only for
the request it answers; it travels as the single output :data:`E2E_TENSOR` the same way.
Any change to either ciphertext fails the AEAD: :class:`~teeflow.errors.SealingError`.
"""

from __future__ import annotations

import hashlib
import struct
import time

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from teeflow.errors import SealingError
from teeflow.serve.oip import InferRequest, InferResponse, OipError, encode_request

__all__ = [
    "E2E_PARAMETER",
    "E2E_SCHEME",
    "E2E_SCHEMES",
    "E2E_TENSOR",
    "MAX_ENVELOPE_AGE",
    "OpenedRequest",
    "envelope_of",
    "envelope_request",
    "open_request",
    "open_response",
    "raw_public",
    "seal_request",
    "seal_response",
]

#: Request/response parameter naming the extension, and its only value.
E2E_PARAMETER = "teeflow_e2e"
E2E_SCHEME = "hpke-v1"
#: Every ``teeflow_e2e`` value: per-request HPKE, and sessions (:mod:`teeflow.serve.session`).
E2E_SCHEMES = (E2E_SCHEME, "session-v1")
#: The name of the one tensor that carries the ciphertext.
E2E_TENSOR = "teeflow_hpke"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_REQ_INFO = b"teeflow-serve/request/v1\0"
_RESP_INFO = b"teeflow-serve/response/v1\0"
_NONE = 0xFFFFFFFF
#: Seconds an envelope stays acceptable after its ``created`` time (either direction).
MAX_ENVELOPE_AGE = 120
_MAX_API_KEY = 512


def raw_public(key: X25519PublicKey) -> bytes:
    """The 32-byte raw encoding of an X25519 public key (RFC 7748)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class OpenedRequest:
    """A decrypted request: the inner body, its header length, the client's response key,
    the API key it carried (or None) and its ``created`` time (POSIX seconds)."""

    __slots__ = ("api_key", "body", "client_key", "created", "header_length")

    def __init__(self, body: bytes, header_length: str | None, client_key: X25519PublicKey,
                 api_key: str | None, created: int) -> None:
        self.body, self.header_length = body, header_length
        self.client_key, self.api_key, self.created = client_key, api_key, created


def seal_request(body: bytes, header_length: int | None, server_key: X25519PublicKey,
                 model: str, *, api_key: str | None = None, created: int | None = None,
                 ) -> tuple[bytes, X25519PrivateKey]:
    """Seal an inner OIP request body → ``(ciphertext, the client's ephemeral private key)``;
    ``created`` defaults to now (POSIX seconds).

    Raises:
        SealingError: API key too long, or an HPKE failure.
    """
    key = X25519PrivateKey.generate()
    api = (api_key or "").encode("utf-8")
    if len(api) > _MAX_API_KEY:
        raise SealingError(f"API key longer than {_MAX_API_KEY} bytes")
    hl = _NONE if header_length is None else header_length
    when = int(time.time()) if created is None else created
    pt = b"".join([raw_public(key.public_key()), struct.pack(">QH", when, len(api)), api,
                   struct.pack(">I", hl), body])
    try:
        return _SUITE.encrypt(pt, server_key, info=_REQ_INFO + model.encode("utf-8")), key
    except (ValueError, TypeError) as exc:
        raise SealingError(f"HPKE encryption failed ({type(exc).__name__})") from None


def open_request(ciphertext: bytes, server_key: X25519PrivateKey, model: str) -> OpenedRequest:
    """Open a request sealed by :func:`seal_request` (the server side).

    Raises:
        SealingError: wrong key or model, tampered, or a malformed plaintext.
    """
    try:
        pt = _SUITE.decrypt(ciphertext, server_key, info=_REQ_INFO + model.encode("utf-8"))
    except Exception:
        raise SealingError("the request envelope does not open (tampered or wrong key)") from None
    if len(pt) < 46:
        raise SealingError("the request envelope is too short")
    created, n = struct.unpack_from(">QH", pt, 32)
    if len(pt) < 46 + n:
        raise SealingError("the request envelope is truncated")
    try:
        api = pt[42 : 42 + n].decode("utf-8") if n else None
        client = X25519PublicKey.from_public_bytes(pt[:32])
    except (UnicodeDecodeError, ValueError):
        raise SealingError("the request envelope is malformed") from None
    hl = struct.unpack_from(">I", pt, 42 + n)[0]
    return OpenedRequest(pt[46 + n :], None if hl == _NONE else str(hl), client, api, created)


def seal_response(body: bytes, header_length: int | None, client_key: X25519PublicKey,
                  request_ciphertext: bytes) -> bytes:
    """Seal an inner OIP response to the client's ephemeral key, bound to its request.

    Raises:
        SealingError: an HPKE failure (e.g. a low-order client key).
    """
    hl = _NONE if header_length is None else header_length
    info = _RESP_INFO + hashlib.sha256(request_ciphertext).digest()
    try:
        return _SUITE.encrypt(struct.pack(">I", hl) + body, client_key, info=info)
    except (ValueError, TypeError) as exc:
        raise SealingError(f"HPKE encryption failed ({type(exc).__name__})") from None


def open_response(ciphertext: bytes, client_key: X25519PrivateKey,
                  request_ciphertext: bytes) -> tuple[bytes, str | None]:
    """Open a response → ``(inner OIP response body, header length or None)``.

    Raises:
        SealingError: tampered, or not the response to this request.
    """
    info = _RESP_INFO + hashlib.sha256(request_ciphertext).digest()
    try:
        pt = _SUITE.decrypt(ciphertext, client_key, info=info)
    except Exception:
        raise SealingError("the response envelope does not open (tampered or swapped)") from None
    if len(pt) < 4:
        raise SealingError("the response envelope is too short")
    hl = struct.unpack_from(">I", pt)[0]
    return pt[4:], None if hl == _NONE else str(hl)


def envelope_request(ciphertext: bytes) -> tuple[bytes, int | None]:
    """The outer OIP request carrying ``ciphertext`` → ``(body, header length)``."""
    arr = np.frombuffer(ciphertext, dtype=np.uint8)
    return encode_request({E2E_TENSOR: arr}, binary=True,
                          parameters={E2E_PARAMETER: E2E_SCHEME})


def envelope_of(message: InferRequest | InferResponse) -> bytes | None:
    """The ciphertext an outer request/response carries, or None for a plaintext message.

    Raises:
        OipError: the message names the extension but is not a well-formed envelope.
    """
    params = message.parameters
    tensors = message.inputs if isinstance(message, InferRequest) else message.outputs
    if E2E_PARAMETER not in params:
        if E2E_TENSOR in tensors:
            raise OipError(f"tensor {E2E_TENSOR} without the {E2E_PARAMETER} parameter")
        return None
    if params[E2E_PARAMETER] not in E2E_SCHEMES:
        raise OipError(f"unsupported {E2E_PARAMETER} scheme (only {', '.join(E2E_SCHEMES)})")
    arr = tensors.get(E2E_TENSOR)
    if len(tensors) != 1 or arr is None or arr.dtype != np.uint8 or arr.ndim != 1:
        raise OipError(f"an envelope has exactly one 1-D UINT8 tensor {E2E_TENSOR}")
    return arr.tobytes()
