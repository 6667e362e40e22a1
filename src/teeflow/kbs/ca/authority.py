"""The federation CA: short-lived X.509 workload certificates (DESIGN trust flow step 3).

The KBS runs one CA per federation (P-256, self-signed, ``pathLenConstraint`` 0). After a
workload attested (RCAR) and its evidence satisfied the agreement, the KBS issues it a
certificate for its attested ``tee-pubkey``; peers then run ordinary mutual TLS against
this CA and call :func:`verify_workload_certificate` on the peer certificate — the
*passport model* (RFC 9334 §5.1): a certificate from the CA proves an appraisal that
satisfied the agreement, and carries what was appraised.

Workload certificate profile (RFC 5280)::

    subject   CN=<role>:<party or "-">, O=<federation>, OU=teeflow workload
    validity  notBefore = now - 60 s (clock skew), notAfter = now + lifetime (<= 24 h,
              and never past the CA's notAfter)
    serial    random, 159 bits
    extensions
      basicConstraints  cA=FALSE                                  (critical)
      keyUsage          digitalSignature                          (critical)
      extKeyUsage       id-kp-clientAuth, id-kp-serverAuth
      subjectAltName    URI teeflow://<federation>/<role>/<party or "-">, DNS/IP as asked
      subjectKeyIdentifier, authorityKeyIdentifier
      teeflow identity  OID TEEFLOW_IDENTITY_OID (non-critical), value below

teeflow identity extension — OID ``2.25.300750291596209545422624688430031139555``, i.e.
the UUID ``e2426634-6296-4d9a-aab4-e05571c572e3`` (random, version 4) under the ``2.25``
arc (ITU-T X.667 | ISO/IEC 9834-8 §6.3, RFC 4122), so no registration is needed. Its
value is the DER (ITU-T X.690) of::

    TeeflowWorkloadIdentity ::= SEQUENCE {
        version          INTEGER (1),
        role             UTF8String,            -- kbs | aggregator | client | compute | serve
        party            UTF8String OPTIONAL,   -- absent for federation-wide workloads
        measurement      OCTET STRING (SIZE(16..64)),  -- MRENCLAVE, MRTD, SNP MEASUREMENT
        agreementDigest  OCTET STRING (SIZE(32)),      -- SHA-256 of the active agreement
        tee              UTF8String,            -- "sgx", "emulated-sgx", ...
        emulated         BOOLEAN }

:func:`parse_identity_extension` is strict: exact DER (re-encoding must give the same
bytes), no trailing data, version 1, every field valid — else :class:`ParseError`.

Revocation: certificates live at most 24 h, and a certificate whose agreement digest is
not the active agreement's is refused by :func:`verify_workload_certificate`, so changing
the agreement revokes every certificate issued under the old one. The TLS handshake alone
(:func:`ssl_context_for`) only proves "issued by this CA and within validity": peers MUST
call :func:`verify_workload_certificate` (or :func:`peer_identity`) on the peer certificate
with the active agreement digest and the role they expect.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, univ

from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.policy.agreement import WorkloadRole
from teeflow.kbs.policy.parties import NAME_PATTERN

__all__ = [
    "CLOCK_SKEW",
    "MAX_CERT_LIFETIME",
    "TEEFLOW_IDENTITY_OID",
    "FederationCA",
    "WorkloadIdentity",
    "encode_identity_extension",
    "parse_identity_extension",
    "verify_workload_certificate",
]

#: teeflow workload-identity extension: UUID e2426634-6296-4d9a-aab4-e05571c572e3 under 2.25.
TEEFLOW_IDENTITY_OID = x509.ObjectIdentifier("2.25.300750291596209545422624688430031139555")
#: Longest workload certificate lifetime :meth:`FederationCA.issue` grants.
MAX_CERT_LIFETIME = timedelta(hours=24)
#: notBefore is back-dated by this much to tolerate clock skew between peers.
CLOCK_SKEW = timedelta(seconds=60)
#: Identity extension version.
IDENTITY_VERSION = 1
#: Largest identity extension value accepted by the parser (bytes).
MAX_EXTENSION_BYTES = 1024

ROLES = frozenset(r.value for r in WorkloadRole)
_TEE_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_HEX_PATTERN = re.compile(r"[0-9a-fA-F]*")
_DNS_PATTERN = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_MAX_SANS = 16
_OU_WORKLOAD = "teeflow workload"
_OU_CA = "teeflow federation CA"


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise KbsError("'now' must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _spki(key: object) -> bytes:
    try:
        return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (AttributeError, TypeError, ValueError, UnsupportedAlgorithm):
        raise KbsError("not a supported public key") from None


# -- the workload identity -----------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadIdentity:
    """What an appraised attestation established about a workload.

    Attributes:
        role: ``kbs`` | ``aggregator`` | ``client`` | ``compute`` | ``serve``.
        party: the party the workload acts for (a DNS-label name), or None.
        measurement: code identity (MRENCLAVE / MRTD / SNP MEASUREMENT), 16..64 bytes as
            hex (normalised to lower case).
        agreement_digest: SHA-256 of the active federation agreement, 64 hex characters
            (normalised to lower case).
        tee: TEE type as in the RCAR ``tee`` field (``"sgx"``, ``"emulated-sgx"``, ...).
        emulated: True when the evidence chained to an emulation root; a ``tee`` that
            starts with ``emulated`` requires it.

    Raises:
        KbsError: any field is invalid.
    """

    role: str
    party: str | None
    measurement: str
    agreement_digest: str
    tee: str
    emulated: bool

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise KbsError(f"workload identity: unknown role {self.role!r}")
        if self.party is not None and not (
            isinstance(self.party, str) and NAME_PATTERN.fullmatch(self.party)
        ):
            raise KbsError("workload identity: party must be a DNS-label name or None")
        object.__setattr__(self, "measurement", _hex_field(self.measurement, 16, 64, "measurement"))
        object.__setattr__(
            self, "agreement_digest", _hex_field(self.agreement_digest, 32, 32, "agreement digest")
        )
        if not isinstance(self.tee, str) or not _TEE_PATTERN.fullmatch(self.tee):
            raise KbsError("workload identity: tee must match [a-z0-9][a-z0-9-]{0,31}")
        if not isinstance(self.emulated, bool):
            raise KbsError("workload identity: emulated must be a bool")
        if self.tee.startswith("emulated") and not self.emulated:
            raise KbsError(f"workload identity: tee {self.tee!r} requires emulated=True")

    @property
    def common_name(self) -> str:
        """Subject CN: ``<role>:<party or "-">``."""
        return f"{self.role}:{self.party or '-'}"

    def uri(self, federation: str) -> str:
        """SAN URI ``teeflow://<federation>/<role>/<party or "-">``."""
        return f"teeflow://{federation}/{self.role}/{self.party or '-'}"


def _hex_field(value: object, lo: int, hi: int, what: str) -> str:
    if not isinstance(value, str) or not _HEX_PATTERN.fullmatch(value) or len(value) % 2:
        raise KbsError(f"workload identity: {what} must be hex")
    if not lo <= len(value) // 2 <= hi:
        raise KbsError(f"workload identity: {what} must be {lo}..{hi} bytes")
    return value.lower()


# -- the identity extension (pyasn1) -------------------------------------------------------


class _IdentityAsn1(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("role", char.UTF8String()),
        namedtype.OptionalNamedType("party", char.UTF8String()),
        namedtype.NamedType("measurement", univ.OctetString()),
        namedtype.NamedType("agreementDigest", univ.OctetString()),
        namedtype.NamedType("tee", char.UTF8String()),
        namedtype.NamedType("emulated", univ.Boolean()),
    )


@functools.lru_cache(maxsize=256)
def encode_identity_extension(identity: WorkloadIdentity) -> bytes:
    """DER of ``TeeflowWorkloadIdentity`` (module docstring) for ``identity`` (remembered per
    identity: a frozen value, re-certified at every re-attestation)."""
    value = _IdentityAsn1()
    value["version"] = IDENTITY_VERSION
    value["role"] = identity.role
    if identity.party is not None:
        value["party"] = identity.party
    value["measurement"] = bytes.fromhex(identity.measurement)
    value["agreementDigest"] = bytes.fromhex(identity.agreement_digest)
    value["tee"] = identity.tee
    value["emulated"] = identity.emulated
    return bytes(der_encoder.encode(value))


def parse_identity_extension(data: bytes) -> WorkloadIdentity:
    """Parse the DER value of the teeflow identity extension (strict, bounded, total).

    The result of a successful parse is remembered per DER value (a pure function of the
    bytes; at most :data:`_PARSED_IDENTITIES` values): a workload's extension is the same in
    every certificate it gets for one agreement, and each re-attestation's certificate is
    checked by the client, the aggregator and the hub. Failures are not remembered.

    Raises:
        ParseError: longer than 1024 bytes, not DER of ``TeeflowWorkloadIdentity``,
            trailing bytes, non-canonical encoding, version other than 1, or an invalid
            field (unknown role, bad party name, measurement length, digest length, tee).
    """
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_EXTENSION_BYTES:
        raise ParseError("teeflow identity extension: not bytes or too long")
    return _parse_identity(bytes(data))


#: How many distinct identity extension values :func:`parse_identity_extension` remembers.
_PARSED_IDENTITIES = 512


@functools.lru_cache(maxsize=_PARSED_IDENTITIES)
def _parse_identity(raw: bytes) -> WorkloadIdentity:
    try:
        value, rest = der_decoder.decode(raw, asn1Spec=_IdentityAsn1())
        if rest:
            raise ParseError("teeflow identity extension: trailing bytes")
        if bytes(der_encoder.encode(value)) != raw:
            raise ParseError("teeflow identity extension: not canonical DER")
        if int(value["version"]) != IDENTITY_VERSION:
            raise ParseError("teeflow identity extension: unsupported version")
        party = value["party"]
        return WorkloadIdentity(
            role=str(value["role"]),
            party=str(party) if party.isValue else None,
            measurement=bytes(value["measurement"]).hex(),
            agreement_digest=bytes(value["agreementDigest"]).hex(),
            tee=str(value["tee"]),
            emulated=bool(value["emulated"]),
        )
    except ParseError:
        raise
    except KbsError as exc:
        raise ParseError(f"teeflow identity extension: {exc}") from None
    except (PyAsn1Error, ValueError, TypeError, UnicodeError, AttributeError, OverflowError):
        raise ParseError("teeflow identity extension: malformed DER") from None


# -- the CA ------------------------------------------------------------------------------


def _check_leaf_key(public_key: object) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in {"secp256r1", "secp384r1", "secp521r1"}:
            raise KbsError("workload key: EC keys must be P-256, P-384 or P-521")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise KbsError("workload key: RSA keys must have at least 2048 bits")
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise KbsError("workload key: expected an EC (P-256/384/521), RSA or Ed25519 key")


def _san_entries(
    identity: WorkloadIdentity,
    federation: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> list[x509.GeneralName]:
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        raise KbsError("dns_names / ip_addresses must be sequences, not strings")
    if len(dns_names) + len(ip_addresses) > _MAX_SANS:
        raise KbsError(f"at most {_MAX_SANS} DNS names and IP addresses")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri(federation))]
    for dns in dns_names:
        if not isinstance(dns, str) or not _DNS_PATTERN.fullmatch(dns):
            raise KbsError(f"invalid DNS name {dns!r}")
        names.append(x509.DNSName(dns.lower()))
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise KbsError(f"invalid IP address {ip!r}") from None
    return names


class FederationCA:
    """One federation's CA: P-256 key and self-signed certificate.

    Construct with :meth:`generate` or :meth:`from_pem`. Instances are immutable and
    thread-safe.
    """

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KbsError("federation CA key must be an EC P-256 private key")
        if _spki(certificate.public_key()) != _spki(key.public_key()):
            raise KbsError("federation CA key does not match its certificate")
        try:
            bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
            certificate.verify_directly_issued_by(certificate)
            orgs = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
            raise KbsError("federation CA certificate is not a self-signed CA") from None
        if not bc.ca or len(orgs) != 1 or not NAME_PATTERN.fullmatch(str(orgs[0].value)):
            raise KbsError("federation CA certificate is not a teeflow federation CA")
        self._certificate = certificate
        self._key = key
        self._federation = str(orgs[0].value)
        #: AuthorityKeyIdentifier of every certificate issued (of the CA key: computed once)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def generate(
        cls, federation: str, *, now: datetime, lifetime: timedelta = timedelta(days=365)
    ) -> FederationCA:
        """A new CA for ``federation`` (DNS-label name), valid ``now - 60 s`` .. ``now +
        lifetime``: subject ``CN=teeflow federation CA <federation>, O=<federation>,
        OU=teeflow federation CA``, basicConstraints cA pathLen 0 and keyUsage
        keyCertSign|cRLSign (both critical), SKI/AKI.

        Raises:
            KbsError: invalid federation name, naive ``now`` or non-positive lifetime.
        """
        return cls._build(federation, ec.generate_private_key(ec.SECP256R1()), now, lifetime)

    @classmethod
    def _build(
        cls,
        federation: str,
        key: ec.EllipticCurvePrivateKey,
        now: datetime,
        lifetime: timedelta,
    ) -> FederationCA:
        if not isinstance(federation, str) or not NAME_PATTERN.fullmatch(federation):
            raise KbsError("federation must be a DNS-label name")
        t = _utc(now)
        if lifetime <= timedelta(0):
            raise KbsError("CA lifetime must be positive")
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"teeflow federation CA {federation}"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _OU_CA),
            ]
        )
        pub = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - CLOCK_SKEW)
            .not_valid_after(t + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def renewed(self, *, now: datetime, lifetime: timedelta = timedelta(days=365)) -> FederationCA:
        """The same CA (same key and subject) with a fresh certificate valid from ``now``.

        Certificates issued under the old CA certificate still verify against the new one
        (same issuer name and key). Raises ``KbsError`` as :meth:`generate`.
        """
        return self._build(self._federation, self._key, now, lifetime)

    @classmethod
    def from_pem(
        cls, cert_pem: bytes | str, key: ec.EllipticCurvePrivateKey | bytes | str
    ) -> FederationCA:
        """Load a CA from its certificate PEM and its private key (object or unencrypted
        PKCS#8 PEM).

        Raises:
            KbsError: unreadable PEM, not a P-256 key, key/certificate mismatch, or not a
                self-signed teeflow federation CA certificate.
        """
        try:
            pem = cert_pem.encode() if isinstance(cert_pem, str) else bytes(cert_pem)
            cert = x509.load_pem_x509_certificate(pem)
            if isinstance(key, str | bytes):
                raw = key.encode() if isinstance(key, str) else key
                loaded = serialization.load_pem_private_key(raw, password=None)
            else:
                loaded = key
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KbsError("cannot read the federation CA certificate or key") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise KbsError("federation CA key must be an EC P-256 private key")
        return cls(cert, loaded)

    @property
    def certificate(self) -> x509.Certificate:
        """The self-signed CA certificate."""
        return self._certificate

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA private key (secret: only for sealed persistence)."""
        return self._key

    @property
    def federation(self) -> str:
        """The federation name (the certificate's O attribute)."""
        return self._federation

    def certificate_pem(self) -> bytes:
        """The CA certificate as PEM (``GET /v1/ca``)."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        identity: WorkloadIdentity,
        *,
        now: datetime,
        lifetime: timedelta = MAX_CERT_LIFETIME,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> x509.Certificate:
        """Issue a workload certificate (profile in the module docstring) for ``public_key``.

        Args:
            public_key: the attested key (EC P-256/384/521, RSA >= 2048 or Ed25519).
            identity: what the appraisal established.
            now: issuance time (timezone-aware).
            lifetime: 0 < lifetime <= 24 h; notAfter is also capped at the CA's notAfter.
            dns_names, ip_addresses: extra SAN entries for TLS servers (at most 16 in all).

        Raises:
            KbsError: lifetime out of range, CA not valid at ``now``, unsupported key,
                invalid SAN entry or naive ``now``.
        """
        t = _utc(now)
        if not isinstance(identity, WorkloadIdentity):
            raise KbsError("identity must be a WorkloadIdentity")
        if not isinstance(lifetime, timedelta) or not timedelta(0) < lifetime <= MAX_CERT_LIFETIME:
            raise KbsError("workload certificate lifetime must be in (0, 24 h]")
        ca = self._certificate
        if not ca.not_valid_before_utc <= t < ca.not_valid_after_utc:
            raise KbsError("the federation CA certificate is not valid at this time")
        _check_leaf_key(public_key)
        sans = _san_entries(identity, self._federation, dns_names, ip_addresses)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, identity.common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._federation),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _OU_WORKLOAD),
            ]
        )
        ext = x509.UnrecognizedExtension(TEEFLOW_IDENTITY_OID, encode_identity_extension(identity))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - CLOCK_SKEW)
            .not_valid_after(min(t + lifetime, ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(ext, critical=False)
        )
        return builder.sign(self._key, hashes.SHA256())

    def issue_from_csr(
        self,
        csr: x509.CertificateSigningRequest,
        identity: WorkloadIdentity,
        *,
        now: datetime,
        expected_public_key: CertificateIssuerPublicKeyTypes | None = None,
        lifetime: timedelta = MAX_CERT_LIFETIME,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> x509.Certificate:
        """Issue for the key of a PKCS#10 CSR (RFC 2986) — ``POST /v1/certificates``.

        The CSR's signature must verify (proof of possession). When ``expected_public_key``
        (the attested ``tee-pubkey``) is given, the CSR key must be that key (compared as
        SubjectPublicKeyInfo DER). The CSR's subject and extensions are ignored: the
        certificate's content comes only from ``identity``.

        Raises:
            VerificationError: bad CSR signature, unsupported CSR key, or key mismatch.
            KbsError: as :meth:`issue`.
        """
        try:
            valid = csr.is_signature_valid
            csr_key = csr.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise VerificationError("CSR: unsupported key or signature algorithm") from None
        if not valid:
            raise VerificationError("CSR: signature does not verify")
        if expected_public_key is not None and _spki(csr_key) != _spki(expected_public_key):
            raise VerificationError("CSR: key is not the attested tee-pubkey")
        if not isinstance(
            csr_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise VerificationError("CSR: unsupported key type")
        return self.issue(
            csr_key,
            identity,
            now=now,
            lifetime=lifetime,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


# -- verification -------------------------------------------------------------------------

_KNOWN_CRITICAL = {x509.BasicConstraints.oid, x509.KeyUsage.oid}


def verify_workload_certificate(
    cert: x509.Certificate,
    ca_certificate: x509.Certificate,
    *,
    now: datetime,
    expected_agreement_digest: str | None = None,
    required_role: str | None = None,
) -> WorkloadIdentity:
    """Check a peer's workload certificate and return the identity it carries.

    Checks: the CA certificate is valid at ``now``; ``cert`` is directly issued (issuer
    name and signature) by it; ``now`` within ``cert``'s validity; not a CA; no unknown
    critical extension; exactly one teeflow identity extension, parsed strictly; subject
    CN and O consistent with it and with the CA's federation; the agreement digest equals
    ``expected_agreement_digest`` (hex, any case) and the role ``required_role`` when given.

    Raises:
        VerificationError: any check fails (a malformed extension included).
        KbsError: naive ``now``.
    """
    t = _utc(now)
    if not isinstance(cert, x509.Certificate) or not isinstance(ca_certificate, x509.Certificate):
        raise VerificationError("expected X.509 certificates")
    if not ca_certificate.not_valid_before_utc <= t <= ca_certificate.not_valid_after_utc:
        raise VerificationError("federation CA certificate is not valid at this time")
    try:
        ca_bc = ca_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise VerificationError("the trust anchor is not a CA certificate") from None
    if not ca_bc.ca:
        raise VerificationError("the trust anchor is not a CA certificate")
    try:
        cert.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise VerificationError("certificate is not signed by the federation CA") from None
    if not cert.not_valid_before_utc <= t <= cert.not_valid_after_utc:
        raise VerificationError("workload certificate is expired or not yet valid")
    try:
        exts = cert.extensions
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
        value = exts.get_extension_for_oid(TEEFLOW_IDENTITY_OID).value
        subject_cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject_o = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ca_o = ca_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    except x509.ExtensionNotFound:
        raise VerificationError("workload certificate lacks the teeflow identity") from None
    except (ValueError, TypeError):  # includes x509.DuplicateExtension
        raise VerificationError("workload certificate has malformed extensions") from None
    if bc.ca:
        raise VerificationError("workload certificate must not be a CA")
    if any(e.critical and e.oid not in _KNOWN_CRITICAL for e in exts):
        raise VerificationError("workload certificate has an unknown critical extension")
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError("workload certificate has a malformed teeflow identity")
    try:
        identity = parse_identity_extension(value.value)
    except ParseError as exc:
        raise VerificationError(f"workload certificate: {exc}") from None
    cn_ok = [a.value for a in subject_cn] == [identity.common_name]
    if not cn_ok or [a.value for a in subject_o] != [a.value for a in ca_o]:
        raise VerificationError("workload certificate subject does not match its identity")
    if expected_agreement_digest is not None and (
        not isinstance(expected_agreement_digest, str)
        or identity.agreement_digest != expected_agreement_digest.lower()
    ):
        raise VerificationError("workload certificate was issued under another agreement (revoked)")
    if required_role is not None and identity.role != required_role:
        raise VerificationError(
            f"workload certificate role {identity.role!r}, expected {required_role!r}"
        )
    return identity

