"""Pinned HTTPS transport to a verified KBS: the pin file, SPKI-pinned TLS, bounded requests.

Used by :mod:`teeflow.kbs.client.sdk` (which re-exports the public names).

**Pin file** (:class:`Pin`, written by ``teeflow kbs verify``)::

    {"format": "teeflow-kbs-pin/1", "url": "https://127.0.0.1:8443", "federation": ...,
     "tls_spki_sha256": <hex>, "hpke_public_key": <b64url X25519>, "ca_certificate": <PEM>,
     "ear_public_jwk": {...}, "audit_public_key": <b64url Ed25519>,
     "agreement_digest": <hex> | null, "measurement": <hex>, "tee": "emulated-sgx",
     "emulated": true, "verified_at": "<RFC 3339 UTC>"}

``tee`` is the RCAR tee of the KBS's verified evidence (``sgx``, ``tdx``, ``snp`` or an
``emulated-`` variant) and ``measurement`` its code identity for that TEE: MRENCLAVE (32
bytes hex) on SGX, MRTD on TDX, MEASUREMENT on SNP (48 bytes hex).

**TLS pinning** (:func:`pinned_tls_context`). The KBS's TLS certificate is self-signed; trust
comes from its evidence, which binds the TLS key. The client context turns chain and
host-name verification off *only* in favour of a check run inside the handshake: its
``SSLSocket``/``SSLObject`` classes override ``do_handshake`` and, right after it completes
and before any request byte is sent, compare SHA-256 of the peer certificate's
SubjectPublicKeyInfo with the pin. TLS proves possession of that key (the server's
CertificateVerify signature is always checked against the presented certificate). A mismatch
aborts the connection; :func:`send` reports it as :class:`~teeflow.errors.VerificationError`.

**Requests** (:func:`send`): response bodies are bounded; a KBS problem response raises the
matching :mod:`teeflow.kbs.api.problems` class (by ``type`` and status), any other HTTP error
:class:`KbsHttpError`, transport failures :class:`~teeflow.errors.KbsError`.
"""

from __future__ import annotations

import hmac
import json
import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.api.problems import PROBLEM_TYPES
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode
from teeflow.kbs.policy.parties import teeflow_home

__all__ = [
    "MAX_RESPONSE_BYTES",
    "PIN_FORMAT",
    "KbsHttpError",
    "Pin",
    "default_pin_path",
    "fetch_kbs_evidence",
    "http_client",
    "observing_tls_context",
    "pinned_tls_context",
    "send",
]

PIN_FORMAT: Final = "teeflow-kbs-pin/1"
#: Largest response body read from the KBS (bytes).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_MAX_PIN_BYTES = 1 << 20
_PIN_MISMATCH = "teeflow: the KBS TLS key does not match the pin"


class KbsHttpError(KbsError):
    """The KBS answered with an HTTP error that is not a known KBS problem type.

    Attributes:
        status: HTTP status; problem_type: the ``type`` member if any; detail: its text.
    """

    code = "kbs-http"

    def __init__(self, status: int, problem_type: str | None, detail: str) -> None:
        super().__init__(f"KBS answered HTTP {status}: {detail}")
        self.status = status
        self.problem_type = problem_type
        self.detail = detail


# -- pin --------------------------------------------------------------------------------------


class Pin(BaseModel):
    """The verified facts about one KBS (module docstring); the pin file's content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["teeflow-kbs-pin/1"] = PIN_FORMAT
    url: str = Field(pattern=r"^https://[^\s/?#]+$", max_length=512)
    federation: str = Field(min_length=1, max_length=63)
    tls_spki_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    hpke_public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    ca_certificate: str = Field(max_length=16 * 1024)
    ear_public_jwk: dict[str, JsonValue]
    audit_public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    agreement_digest: str | None = Field(pattern=r"^[0-9a-f]{64}$")
    measurement: str = Field(pattern=r"^[0-9a-f]{64}(?:[0-9a-f]{32})?$")
    tee: str = Field(pattern=r"^(?:emulated-)?(?:sgx|tdx|snp)$")
    emulated: bool
    verified_at: AwareDatetime

    def hpke_public(self) -> X25519PublicKey:
        """The KBS HPKE key (owners wrap data keys to it)."""
        return X25519PublicKey.from_public_bytes(b64url_decode(self.hpke_public_key, length=32))

    def audit_public(self) -> Ed25519PublicKey:
        """The KBS audit-log key."""
        return Ed25519PublicKey.from_public_bytes(b64url_decode(self.audit_public_key, length=32))

    def ca(self) -> x509.Certificate:
        """The federation CA certificate.

        Raises:
            ParseError: not a PEM certificate.
        """
        try:
            return x509.load_pem_x509_certificate(self.ca_certificate.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ParseError("pin: ca_certificate is not a PEM certificate") from None

    @classmethod
    def load(cls, path: Path | str) -> Pin:
        """Read a pin file (≤ 1 MiB).

        Raises:
            ParseError: unreadable or invalid.
        """
        try:
            with Path(path).open("rb") as fh:
                raw = fh.read(_MAX_PIN_BYTES + 1)
        except OSError as exc:
            raise ParseError(f"cannot read pin file {path}: {exc.strerror}") from None
        if len(raw) > _MAX_PIN_BYTES:
            raise ParseError(f"pin file {path} is too large")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ParseError(f"pin file {path} is invalid ({exc.error_count()} errors)") from None

    def save(self, path: Path | str) -> Path:
        """Write the pin file atomically (0644: it holds public values only)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.model_dump_json(indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def default_pin_path(home: Path | None = None) -> Path:
    """``$TEEFLOW_HOME/kbs.pin.json``."""
    return teeflow_home(home) / "kbs.pin.json"


# -- TLS ---------------------------------------------------------------------------------------


def _check_peer(context: ssl.SSLContext, der: bytes | None) -> None:
    on_peer = getattr(context, "teeflow_on_peer", None)
    if on_peer is None:
        raise ssl.SSLCertVerificationError("teeflow: TLS context without a pin check")
    if not der:
        raise ssl.SSLCertVerificationError("teeflow: the KBS presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except ValueError:
        raise ssl.SSLCertVerificationError("teeflow: malformed KBS certificate") from None
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    on_peer(digest.finalize().hex())


class _PinCheckingSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_peer(self.context, self.getpeercert(binary_form=True))


class _PinCheckingObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check_peer(self.context, self.getpeercert(binary_form=True))


class _SpkiCheckingContext(ssl.SSLContext):
    sslsocket_class = _PinCheckingSocket
    sslobject_class = _PinCheckingObject
    teeflow_on_peer: Callable[[str], None]


def observing_tls_context(on_peer: Callable[[str], None]) -> ssl.SSLContext:
    """A client context that calls ``on_peer(spki_sha256_hex)`` inside every handshake (it
    may raise :class:`ssl.SSLCertVerificationError` to abort); no other certificate check."""
    ctx = _SpkiCheckingContext(ssl.PROTOCOL_TLS_CLIENT)
    # chain and host-name checks are replaced by the SPKI check of _check_peer
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.teeflow_on_peer = on_peer
    return ctx


def pinned_tls_context(tls_spki_sha256: str) -> ssl.SSLContext:
    """A client context accepting exactly the server key whose SPKI SHA-256 (hex) is given
    (module docstring). The check runs inside the handshake, before any request is sent."""
    want = tls_spki_sha256.lower()

    def check(seen: str) -> None:
        if not hmac.compare_digest(seen, want):
            raise ssl.SSLCertVerificationError(_PIN_MISMATCH)

    return observing_tls_context(check)


def http_client(url: str, ctx: ssl.SSLContext, timeout: float) -> httpx.Client:
    """An httpx client for ``url`` (must be ``https://``) with ``ctx``; no proxies or
    environment settings, no redirects.

    Raises:
        KbsError: not an https URL.
    """
    if not url.startswith("https://"):
        raise KbsError("the KBS URL must be https://")
    return httpx.Client(
        base_url=url, verify=ctx, timeout=timeout, trust_env=False, follow_redirects=False
    )


def _raise_problem(status: int, body: bytes) -> None:
    problem_type = None
    detail = f"HTTP {status}"
    try:
        doc = json.loads(body[:65536])
        if isinstance(doc, dict):
            problem_type = doc.get("type") if isinstance(doc.get("type"), str) else None
            detail = str(doc.get("detail", detail))[:1024]
    except (ValueError, RecursionError):
        pass
    cls = PROBLEM_TYPES.get(problem_type or "")
    if cls is not None and cls.status == status:
        raise cls(detail)
    raise KbsHttpError(status, problem_type, detail)


def send(
    http: httpx.Client, method: str, path: str, *, limit: int = MAX_RESPONSE_BYTES, **kw: Any
) -> tuple[httpx.Response, bytes]:
    """One request with a response body of at most ``limit`` bytes; returns the response
    and its body. Errors as in the module docstring."""
    try:
        with http.stream(method, path, **kw) as resp:
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise KbsError(f"KBS response larger than {limit} bytes")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        if _PIN_MISMATCH in str(exc):
            raise VerificationError(
                "the KBS TLS key does not match the pin (not the verified KBS)"
            ) from None
        raise KbsError(f"cannot talk to the KBS: {type(exc).__name__}") from None
    body = b"".join(chunks)
    if resp.status_code >= 400:
        _raise_problem(resp.status_code, body)
    return resp, body


def fetch_kbs_evidence(
    url: str, nonce: bytes, *, timeout: float, limit: int
) -> tuple[bytes, list[str]]:
    """``GET /v1/kbs/evidence?nonce=`` from a KBS not yet trusted (the first step of
    verifying it): the response body (at most ``limit`` bytes) and the SPKI SHA-256 (hex) of
    every TLS key seen on the connection, which the caller checks against the evidence.

    Raises:
        VerificationError: no TLS certificate was observed.
        KbsError: not https, transport failure, an HTTP error, or an oversized body.
    """
    observed: list[str] = []
    with http_client(url, observing_tls_context(observed.append), timeout) as http:
        _, body = send(
            http, "GET", "/v1/kbs/evidence", params={"nonce": b64url_encode(nonce)}, limit=limit
        )
    if not observed:
        raise VerificationError("no TLS certificate was observed from the KBS")
    return body, observed
