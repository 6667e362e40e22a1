"""The KBS's self-signed TLS server certificate (its key lives in the KBS key set,
:mod:`teeflow.kbs.service.identity`; trust in it comes from the KBS evidence, which binds
its SPKI hash).

Certificate: P-256 key, subject = issuer = ``CN=teeflow KBS <federation>, O=<federation>,
OU=teeflow KBS TLS``, validity ``now - CLOCK_SKEW .. now + 30 days``, BasicConstraints
CA:false (critical), KeyUsage digitalSignature (critical), EKU serverAuth, SAN of the host
names / IP addresses, SKI/AKI (RFC 5280 §4.2).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teeflow.errors import KbsError
from teeflow.kbs.ca.authority import CLOCK_SKEW
from teeflow.kbs.policy.parties import NAME_PATTERN

__all__ = [
    "TLS_CERT_LIFETIME",
    "make_tls_certificate",
    "normalise_hosts",
    "san_hosts",
    "tls_certificate",
]

TLS_CERT_LIFETIME = timedelta(days=30)


def tls_certificate(
    key: ec.EllipticCurvePrivateKey, federation: str, hosts: Sequence[str], now: datetime
) -> x509.Certificate:
    """The certificate (module docstring) for already normalised ``hosts``."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"teeflow KBS {federation}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "teeflow KBS TLS"),
        ]
    )
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + TLS_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


def san_hosts(cert: x509.Certificate) -> list[str]:
    """The certificate's SAN DNS names and IP addresses, sorted (empty when none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    out = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    out += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return sorted(out)


def normalise_hosts(hosts: Sequence[str]) -> list[str]:
    """1..16 host names / IP addresses, validated, lower-cased, sorted, de-duplicated.

    Raises:
        KbsError: not a sequence of 1..16 valid names or addresses.
    """
    if isinstance(hosts, str) or not hosts or len(hosts) > 16:
        raise KbsError("tls_hosts must be a sequence of 1..16 host names or IP addresses")
    out = []
    for host in hosts:
        try:
            out.append(str(ipaddress.ip_address(host)))
        except ValueError:
            if not isinstance(host, str) or not all(
                NAME_PATTERN.fullmatch(label) for label in host.lower().split(".")
            ):
                raise KbsError(f"invalid TLS host name {host!r}") from None
            out.append(host.lower())
    return sorted(set(out))


def make_tls_certificate(
    key: ec.EllipticCurvePrivateKey, federation: str, hosts: Sequence[str], now: datetime
) -> x509.Certificate:
    """A self-signed TLS server certificate for ``key`` (as the key set's, 30 days).

    Raises:
        KbsError: bad TLS hosts.
    """
    return tls_certificate(key, federation, normalise_hosts(hosts), now.astimezone(UTC))
