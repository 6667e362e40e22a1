"""Mutual TLS for the FL transport: gRPC credentials from attested workload certificates.

Both sides hold a workload certificate from the federation CA (:mod:`teeflow.kbs.ca.authority`) for
their attested key. gRPC (BoringSSL) does the TLS 1.2+/1.3 handshake with the federation CA
as the *only* trust root on both sides, and the aggregator requires a client certificate.

**Who the peer is.** The handshake only proves "a certificate of this CA". Then:

- the aggregator calls :func:`peer_identity_from_context` on every stream:
  :func:`teeflow.kbs.ca.authority.verify_workload_certificate` with the *current* agreement digest
  and
  role ``client``. The party of the connection is the certificate's party — never a message
  field;
- the client checks the aggregator twice. (1) In the handshake, by name: workload
  certificates carry no DNS/IP names (subject ``CN=<role>:<party or ->`` and a ``teeflow://``
  URI SAN), so the channel sets ``grpc.ssl_target_name_override`` to
  :data:`AGGREGATOR_TLS_NAME` = ``"[aggregator:-]"``. gRPC strips the brackets (host:port
  syntax) and, as the certificate has no DNS SAN, matches the name against the subject CN —
  which the CA sets from the attested role, so only an *aggregator* certificate passes.
  ``grpc.default_authority`` is :data:`AGGREGATOR_AUTHORITY` so that gRPC's per-call host
  check accepts the overridden name. (2) In the protocol, fully: ``Welcome`` carries the
  aggregator certificate and an ECDSA P-256 signature (:func:`welcome_message`) over the
  client's fresh 32-byte nonce and the SHA-256 of the client's own certificate (what the
  aggregator saw in the handshake); :func:`verify_welcome` checks the certificate with
  :func:`verify_workload_certificate` (role ``aggregator``, the agreement digest) and the
  signature. A relay holding another federation certificate cannot produce that signature
  for *this* client's certificate.

If a gRPC release ever stopped accepting the bracketed name, connections would fail closed
(the handshake fails), never open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.errors import ParseError, VerificationError
from teeflow.hazmat.ecdsa import der_to_raw_signature, verify_p256_sha256
from teeflow.kbs.ca.authority import WorkloadIdentity, verify_workload_certificate

__all__ = [
    "AGGREGATOR_AUTHORITY",
    "AGGREGATOR_TLS_NAME",
    "WELCOME_DOMAIN",
    "certificate_digest",
    "channel_credentials",
    "channel_options",
    "load_certificate",
    "peer_identity_from_context",
    "private_key_pem",
    "reattest_message",
    "server_credentials",
    "sign_welcome",
    "verify_reattested",
    "verify_welcome",
    "welcome_message",
]

#: TLS name the client expects (brackets: see the module docstring).
AGGREGATOR_TLS_NAME = "[aggregator:-]"
#: ``:authority`` of every call on a client channel.
AGGREGATOR_AUTHORITY = "teeflow-aggregator"
#: Signing domain of the Welcome signature.
WELCOME_DOMAIN = b"teeflow-fl-welcome-v1\0"
#: Signing domain of a client's Attested answer to Reattest (issue 11).
REATTEST_DOMAIN = b"teeflow-fl-reattest-v1\0"
#: Largest certificate PEM an Attested message may carry.
MAX_CERTIFICATE_PEM = 16 * 1024


def _grpc() -> Any:
    import grpc

    return grpc


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of ``key`` (unencrypted: gRPC keeps it in memory, never on disk)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def server_credentials(
    cert_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    ca_pem: bytes,
    *,
    current: Callable[[], tuple[bytes, ec.EllipticCurvePrivateKey]] | None = None,
) -> Any:
    """``grpc.ServerCredentials``: this certificate, client certificates required and verified
    against the federation CA only.

    ``current``: where the server's certificate lives while it runs (issue 11: the aggregator
    re-attests and its certificate is renewed); gRPC asks it at every new handshake
    (``grpc.dynamic_ssl_server_credentials``) and serves the newest pair.
    """
    grpc = _grpc()
    if current is None:
        return grpc.ssl_server_credentials(
            [(private_key_pem(key), cert_pem)], root_certificates=ca_pem, require_client_auth=True
        )

    def config(pem: bytes, k: ec.EllipticCurvePrivateKey) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(private_key_pem(k), pem)], root_certificates=ca_pem
        )

    served = [cert_pem]

    def fetch() -> Any:
        pem, k = current()
        if pem == served[0]:
            return None  # keep the configuration in use
        served[0] = pem
        return config(pem, k)

    return grpc.dynamic_ssl_server_credentials(
        config(cert_pem, key), fetch, require_client_authentication=True
    )


def channel_credentials(cert_pem: bytes, key: ec.EllipticCurvePrivateKey, ca_pem: bytes) -> Any:
    """``grpc.ChannelCredentials``: the federation CA as the only root, this client
    certificate."""
    grpc = _grpc()
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=private_key_pem(key), certificate_chain=cert_pem
    )


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Client channel options: TLS name of the aggregator role, authority, message bounds,
    and reconnection backoff of the channel (0.25 s doubling up to 4 s, so a client started
    before its aggregator listens connects soon after it does; gRPC's default starts at 1 s
    and grows to 120 s)."""
    return [
        ("grpc.ssl_target_name_override", AGGREGATOR_TLS_NAME),
        ("grpc.default_authority", AGGREGATOR_AUTHORITY),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 4000),
    ]


def load_certificate(pem: bytes | str) -> x509.Certificate:
    """Parse one PEM certificate.

    Raises:
        VerificationError: not a PEM certificate.
    """
    raw = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError:
        raise VerificationError("not a PEM X.509 certificate") from None


def certificate_digest(cert: x509.Certificate) -> bytes:
    """SHA-256 (32 bytes) of the certificate's DER."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def peer_identity_from_context(
    context: Any,
    ca: x509.Certificate,
    *,
    now: datetime,
    agreement_digest: str,
    role: str | None = "client",
) -> tuple[WorkloadIdentity, x509.Certificate]:
    """The verified identity of the TLS peer of a gRPC server call.

    Raises:
        VerificationError: no peer certificate, or
            :func:`~teeflow.kbs.ca.authority.verify_workload_certificate` fails (other CA, expired,
            another agreement, wrong role, malformed identity).
    """
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if len(pems) != 1:
        raise VerificationError("the TLS peer presented no certificate")
    cert = load_certificate(pems[0])
    identity = verify_workload_certificate(
        cert, ca, now=now, expected_agreement_digest=agreement_digest, required_role=role
    )
    return identity, cert


def welcome_message(
    *, nonce: bytes, client_cert_sha256: bytes, session: str, agreement_digest: bytes
) -> bytes:
    """The signed bytes of a Welcome: domain, nonce, client certificate digest, session,
    agreement digest (each length-prefixed, 4-byte big-endian)."""
    parts = [nonce, client_cert_sha256, session.encode("utf-8"), agreement_digest]
    return WELCOME_DOMAIN + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def sign_welcome(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature of ``message`` as raw ``r || s`` (64 bytes)."""
    return der_to_raw_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))


def verify_welcome(
    *,
    certificate_pem: str,
    signature: bytes,
    ca: x509.Certificate,
    now: datetime,
    nonce: bytes,
    client_cert: x509.Certificate,
    session: str,
    agreement_digest: bytes,
) -> WorkloadIdentity:
    """Check the aggregator's Welcome (module docstring) and return its identity.

    Raises:
        VerificationError: the certificate is not an aggregator certificate of this CA under
            this agreement, its key is not P-256, or the signature does not verify.
    """
    cert = load_certificate(certificate_pem)
    identity = verify_workload_certificate(
        cert,
        ca,
        now=now,
        expected_agreement_digest=agreement_digest.hex(),
        required_role="aggregator",
    )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError("the aggregator key is not ECDSA P-256")
    message = welcome_message(
        nonce=nonce,
        client_cert_sha256=certificate_digest(client_cert),
        session=session,
        agreement_digest=agreement_digest,
    )
    try:
        verify_p256_sha256(key, bytes(signature), message, "welcome signature")
    except (VerificationError, ParseError, InvalidSignature, ValueError):
        raise VerificationError("the aggregator's Welcome signature does not verify") from None
    return identity


def reattest_message(
    *, nonce: bytes, old_cert_sha256: bytes, new_cert_sha256: bytes, session: str,
    agreement_digest: bytes,
) -> bytes:
    """The bytes a client signs with its *new* attested key when it answers Reattest: domain,
    the aggregator's nonce, the digests of the certificate of its TLS connection and of the new
    certificate, session, agreement digest (each length-prefixed, 4-byte big-endian). Binding
    the live connection's certificate keeps a fresh certificate from being handed to another
    connection."""
    parts = [nonce, old_cert_sha256, new_cert_sha256, session.encode("utf-8"), agreement_digest]
    return REATTEST_DOMAIN + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def verify_reattested(
    *,
    certificate_pem: str,
    signature: bytes,
    ca: x509.Certificate,
    now: datetime,
    nonce: bytes,
    old_cert: x509.Certificate,
    session: str,
    agreement_digest: bytes,
    party: str,
) -> tuple[WorkloadIdentity, x509.Certificate]:
    """Check a client's Attested answer: a client certificate of this CA under
    ``agreement_digest`` for ``party``, P-256 key, signature over :func:`reattest_message`.

    Raises:
        VerificationError: too large, not a certificate of this CA / agreement / role /
            party, or the signature does not verify.
    """
    if len(certificate_pem) > MAX_CERTIFICATE_PEM:
        raise VerificationError("the re-attested certificate is larger than 16 KiB")
    cert = load_certificate(certificate_pem)
    identity = verify_workload_certificate(
        cert,
        ca,
        now=now,
        expected_agreement_digest=agreement_digest.hex(),
        required_role="client",
    )
    if identity.party != party:
        raise VerificationError(
            f"the re-attested certificate is for party {identity.party!r}, not {party!r}"
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError("the re-attested key is not ECDSA P-256")
    message = reattest_message(
        nonce=nonce,
        old_cert_sha256=certificate_digest(old_cert),
        new_cert_sha256=certificate_digest(cert),
        session=session,
        agreement_digest=agreement_digest,
    )
    try:
        verify_p256_sha256(key, bytes(signature), message, "re-attestation signature")
    except (VerificationError, ParseError, InvalidSignature, ValueError):
        raise VerificationError("the re-attestation signature does not verify") from None
    return identity, cert
