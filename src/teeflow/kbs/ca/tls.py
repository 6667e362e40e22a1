"""Mutual TLS inside the federation: SSL contexts and peer identities.

Peers hold workload certificates from the federation CA (:mod:`teeflow.kbs.ca.authority`); a
certificate from that CA proves an attestation that satisfied the agreement (the passport
model). :func:`ssl_context_for` builds TLS 1.3 contexts that trust only the CA;
:func:`peer_identity` checks the teeflow identity extension of the peer certificate after
the handshake.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from teeflow.errors import KbsError, VerificationError
from teeflow.kbs.ca.authority import WorkloadIdentity, _spki, verify_workload_certificate

__all__ = [
    "load_credential",
    "peer_identity",
    "scratch_file",
    "server_context",
    "ssl_context_for",
    "workload_client_context",
]


def peer_identity(
    sock: ssl.SSLSocket | ssl.SSLObject,
    ca_certificate: x509.Certificate,
    *,
    now: datetime,
    expected_agreement_digest: str | None = None,
    required_role: str | None = None,
) -> WorkloadIdentity:
    """:func:`verify_workload_certificate` on the peer certificate of a TLS connection.

    Raises:
        VerificationError: no peer certificate, or as :func:`verify_workload_certificate`.
    """
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise VerificationError("the TLS peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise VerificationError("the TLS peer certificate is malformed") from None
    return verify_workload_certificate(
        cert,
        ca_certificate,
        now=now,
        expected_agreement_digest=expected_agreement_digest,
        required_role=required_role,
    )


@contextlib.contextmanager
def scratch_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` for OpenSSL to read: an anonymous memory file (Linux
    ``memfd_create``) when available, else a 0600 file in a private temporary directory."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and Path("/proc/self/fd").is_dir():
        fd = memfd("teeflow-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="teeflow-tls-") as tmp:
        path = Path(tmp) / "chain.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield str(path)


def ssl_context_for(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    ca_certificate: x509.Certificate,
    *,
    server: bool,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for mutual TLS inside the federation.

    TLS 1.3 only, ``CERT_REQUIRED`` on both sides, the federation CA as the *only* trust
    root (no system roots), ``cert``/``key`` as this side's credential. Clients check the
    server's host name against its SAN (DNS/IP) unless ``check_hostname=False``. The key
    reaches OpenSSL only encrypted under a one-time random password (through a memory file
    where the OS has one).

    After the handshake, call :func:`peer_identity` with the active agreement digest and
    the expected role: the handshake does not check the teeflow identity extension.

    Raises:
        KbsError: the key does not match ``cert`` or OpenSSL refuses the credential.
    """
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise KbsError("TLS key does not match its certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = bool(check_hostname) and not server
    ctx.verify_mode = ssl.CERT_REQUIRED
    password = os.urandom(32).hex().encode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    try:
        ctx.load_verify_locations(
            cadata=ca_certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        )
        with scratch_file(cert.public_bytes(serialization.Encoding.PEM) + key_pem) as path:
            ctx.load_cert_chain(path, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise KbsError(f"cannot load the TLS credential: {exc.__class__.__name__}") from None
    return ctx


def server_context(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> ssl.SSLContext:
    """A TLS 1.3 server context with a workload certificate and *no* client certificates
    (party-facing HTTPS: parties authenticate each request with an RFC 9421 signature
    instead, :mod:`teeflow.kbs.policy.request_signing`). The key reaches OpenSSL encrypted
    under a one-time password through :func:`scratch_file`.

    Raises:
        KbsError: the key does not match ``cert`` or OpenSSL refuses the credential.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    load_credential(ctx, cert, key)
    return ctx


def load_credential(
    ctx: ssl.SSLContext,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> None:
    """Load ``cert``/``key`` into ``ctx`` — also into a context already serving, whose *new*
    handshakes then present it (a workload that re-attested under a new agreement). The key
    reaches OpenSSL encrypted under a one-time password through :func:`scratch_file`.

    Raises:
        KbsError: the key does not match ``cert`` or OpenSSL refuses the credential.
    """
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise KbsError("TLS key does not match its certificate")
    password = os.urandom(32).hex().encode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    try:
        with scratch_file(cert.public_bytes(serialization.Encoding.PEM) + key_pem) as path:
            ctx.load_cert_chain(path, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise KbsError(f"cannot load the TLS credential: {exc.__class__.__name__}") from None


class _CheckedObject(ssl.SSLObject):
    """An SSL object that checks the peer's teeflow identity inside the handshake."""

    def do_handshake(self) -> None:
        super().do_handshake()
        _check_peer(self)


class _CheckedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_peer(self)


def _check_peer(sock: ssl.SSLObject | ssl.SSLSocket) -> None:
    check = getattr(sock.context, "teeflow_check", None)
    der = sock.getpeercert(binary_form=True)
    if check is None or not der:
        raise ssl.SSLCertVerificationError("teeflow: no workload certificate check")
    check(der)


class _WorkloadContext(ssl.SSLContext):
    sslobject_class = _CheckedObject
    sslsocket_class = _CheckedSocket
    teeflow_check: Any


def workload_client_context(
    ca_certificate: x509.Certificate, agreement_digest: str, role: str
) -> ssl.SSLContext:
    """Client TLS 1.3 context for a party talking to an attested workload over HTTPS.

    OpenSSL checks the chain to the federation CA (the only trust root); then, inside the
    handshake and before any request byte is sent, :func:`verify_workload_certificate`
    checks the server certificate's teeflow identity: role ``role`` and the agreement
    ``agreement_digest`` (hex). No host-name check: the identity is the teeflow extension.
    A failed check aborts the handshake with :class:`ssl.SSLCertVerificationError` whose
    message starts ``teeflow: workload not verified``.
    """
    ctx = _WorkloadContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(
        cadata=ca_certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    ctx.set_alpn_protocols(["http/1.1"])

    def check(der: bytes) -> None:
        try:
            verify_workload_certificate(
                x509.load_der_x509_certificate(der), ca_certificate, now=datetime.now(UTC),
                expected_agreement_digest=agreement_digest, required_role=role)
        except (VerificationError, ValueError) as exc:
            raise ssl.SSLCertVerificationError(
                f"teeflow: workload not verified: {exc}") from None

    ctx.teeflow_check = check
    return ctx
