"""Federation CA: workload certificates, the teeflow identity extension, mutual TLS."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ

from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.ca.authority import (
    CLOCK_SKEW,
    TEEFLOW_IDENTITY_OID,
    FederationCA,
    WorkloadIdentity,
    _IdentityAsn1,
    encode_identity_extension,
    parse_identity_extension,
    verify_workload_certificate,
)
from teeflow.kbs.ca.tls import (
    peer_identity,
    ssl_context_for,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DIGEST = "ab" * 32
OTHER_DIGEST = "cd" * 32
MEASUREMENT = "11" * 32


def _identity(**kw: Any) -> WorkloadIdentity:
    base: dict[str, Any] = {
        "role": "client",
        "party": "hospital-a",
        "measurement": MEASUREMENT,
        "agreement_digest": DIGEST,
        "tee": "emulated-sgx",
        "emulated": True,
    }
    base.update(kw)
    return WorkloadIdentity(**base)


@pytest.fixture(scope="module")
def ca() -> FederationCA:
    return FederationCA.generate("acme", now=NOW)


@pytest.fixture()
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _spki(k: Any) -> bytes:
    return bytes(
        k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# -- the CA itself -----------------------------------------------------------------------


def test_ca_certificate_profile(ca: FederationCA) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert ca.federation == "acme"


def test_ca_from_pem_round_trip(ca: FederationCA) -> None:
    key_pem = ca.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    again = FederationCA.from_pem(ca.certificate_pem(), key_pem)
    assert again.certificate == ca.certificate
    assert again.federation == "acme"
    assert FederationCA.from_pem(ca.certificate_pem().decode(), ca.private_key).federation == "acme"


def test_ca_from_pem_refuses_mismatch_and_garbage(ca: FederationCA) -> None:
    with pytest.raises(KbsError):
        FederationCA.from_pem(ca.certificate_pem(), ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KbsError):
        FederationCA.from_pem(b"not a pem", ca.private_key)
    with pytest.raises(KbsError):
        FederationCA.from_pem(ca.certificate_pem(), ec.generate_private_key(ec.SECP384R1()))


def test_ca_generate_refuses_bad_arguments() -> None:
    with pytest.raises(KbsError):
        FederationCA.generate("Not A Name", now=NOW)
    with pytest.raises(KbsError):
        FederationCA.generate("acme", now=NOW.replace(tzinfo=None))
    with pytest.raises(KbsError):
        FederationCA.generate("acme", now=NOW, lifetime=timedelta(0))


def test_renewed_ca_keeps_key_and_old_leaves_verify(
    ca: FederationCA, key: ec.EllipticCurvePrivateKey
) -> None:
    cert = ca.issue(key.public_key(), _identity(), now=NOW)
    renewed = ca.renewed(now=NOW + timedelta(hours=1))
    assert renewed.certificate != ca.certificate
    assert renewed.certificate.subject == ca.certificate.subject
    assert _spki(renewed.private_key.public_key()) == _spki(ca.private_key.public_key())
    later = NOW + timedelta(hours=2)
    assert verify_workload_certificate(cert, renewed.certificate, now=later) == _identity()


# -- identity + extension ------------------------------------------------------------------


def test_identity_validation_and_normalisation() -> None:
    ident = _identity(measurement="AA" * 48, agreement_digest="EF" * 32)
    assert ident.measurement == "aa" * 48 and ident.agreement_digest == "ef" * 32
    for bad in (
        {"role": "admin"},
        {"party": "Bad Party"},
        {"measurement": "zz" * 32},
        {"measurement": "11" * 8},
        {"measurement": "1" * 63},
        {"agreement_digest": "ab" * 31},
        {"tee": "SGX!"},
        {"tee": "emulated-sgx", "emulated": False},
        {"emulated": 1},
    ):
        with pytest.raises(KbsError):
            _identity(**bad)
    assert _identity(tee="sgx", emulated=False).common_name == "client:hospital-a"


@pytest.mark.parametrize("party", ["hospital-a", None])
def test_extension_round_trip(party: str | None) -> None:
    ident = _identity(party=party)
    assert parse_identity_extension(encode_identity_extension(ident)) == ident


def _asn1(**overrides: Any) -> bytes:
    value = _IdentityAsn1()
    fields: dict[str, Any] = {
        "version": 1,
        "role": "client",
        "party": "hospital-a",
        "measurement": bytes.fromhex(MEASUREMENT),
        "agreementDigest": bytes.fromhex(DIGEST),
        "tee": "sgx",
        "emulated": False,
    }
    fields.update(overrides)
    for name, v in fields.items():
        if v is not None:
            value[name] = v
    return bytes(der_encoder.encode(value))


def test_extension_parser_is_strict() -> None:
    good = _asn1()
    assert parse_identity_extension(good).role == "client"
    bad_inputs = [
        b"",
        b"\x30\x00",
        good + b"\x00",  # trailing bytes
        good[:-1],  # truncated
        _asn1(version=2),
        _asn1(role="admin"),
        _asn1(agreementDigest=b"\x00" * 31),
        _asn1(measurement=b"\x00" * 65),
        _asn1(tee="emulated-sgx", emulated=False),
        _asn1(party="UPPER"),
        b"\x30" + bytes([0x81, len(good) - 2]) + good[2:],  # non-minimal length: not DER
        good.replace(b"\x01\x01\x00", b"\x01\x01\x01"),  # BOOLEAN TRUE must be 0xFF in DER
        bytes(der_encoder.encode(univ.Integer(5))),
        b"\x30" * 2000,
    ]
    for data in bad_inputs:
        with pytest.raises(ParseError):
            parse_identity_extension(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_extension_parser_is_total(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_identity_extension(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_extension_single_byte_flips(position: int, xor: int) -> None:
    good = _asn1()
    i = position % len(good)
    flipped = bytearray(good)
    flipped[i] ^= xor or 1
    try:
        parsed = parse_identity_extension(bytes(flipped))
    except ParseError:
        return
    assert encode_identity_extension(parsed) == bytes(flipped)  # only valid, canonical DER


# -- issuing -------------------------------------------------------------------------------


def test_issue_and_verify_round_trip(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    ident = _identity()
    cert = ca.issue(
        key.public_key(), ident, now=NOW, dns_names=["client.local"], ip_addresses=["10.0.0.7"]
    )
    got = verify_workload_certificate(
        cert,
        ca.certificate,
        now=NOW + timedelta(hours=1),
        expected_agreement_digest=DIGEST.upper(),
        required_role="client",
    )
    assert got == ident
    assert _spki(cert.public_key()) == _spki(key.public_key())
    subject = {a.oid: a.value for a in cert.subject}
    assert subject[NameOID.COMMON_NAME] == "client:hospital-a"
    assert subject[NameOID.ORGANIZATION_NAME] == "acme"
    assert subject[NameOID.ORGANIZATIONAL_UNIT_NAME] == "teeflow workload"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "teeflow://acme/client/hospital-a"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["client.local"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    ext = cert.extensions.get_extension_for_oid(TEEFLOW_IDENTITY_OID)
    assert not ext.critical
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_before_utc == NOW - timedelta(seconds=60)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)


def test_issue_without_party(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    cert = ca.issue(key.public_key(), _identity(role="kbs", party=None), now=NOW)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kbs:-"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["teeflow://acme/kbs/-"]
    assert verify_workload_certificate(cert, ca.certificate, now=NOW).party is None


def test_serials_are_random(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    serials = {ca.issue(key.public_key(), _identity(), now=NOW).serial_number for _ in range(8)}
    assert len(serials) == 8


def test_lifetime_cap(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    pub = key.public_key()
    with pytest.raises(KbsError):
        ca.issue(pub, _identity(), now=NOW, lifetime=timedelta(hours=24, seconds=1))
    with pytest.raises(KbsError):
        ca.issue(pub, _identity(), now=NOW, lifetime=timedelta(0))
    short = ca.issue(pub, _identity(), now=NOW, lifetime=timedelta(hours=1))
    assert short.not_valid_after_utc == NOW + timedelta(hours=1)
    # never past the CA's own notAfter
    small = FederationCA.generate("acme", now=NOW, lifetime=timedelta(hours=2))
    capped = small.issue(pub, _identity(), now=NOW)
    assert capped.not_valid_after_utc == small.certificate.not_valid_after_utc
    with pytest.raises(KbsError):  # CA expired
        small.issue(pub, _identity(), now=NOW + timedelta(hours=3))


def test_issue_refuses_weak_keys_and_bad_sans(ca: FederationCA) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(KbsError):
        ca.issue(weak, _identity(), now=NOW)
    k192 = ec.generate_private_key(ec.SECP192R1()) if _has_p192() else None
    if k192 is not None:
        with pytest.raises(KbsError):
            ca.issue(k192.public_key(), _identity(), now=NOW)
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(KbsError):
        ca.issue(pub, _identity(), now=NOW, dns_names=["bad name"])
    with pytest.raises(KbsError):
        ca.issue(pub, _identity(), now=NOW, ip_addresses=["300.1.1.1"])
    with pytest.raises(KbsError):
        ca.issue(pub, _identity(), now=NOW, dns_names="localhost")
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    assert verify_workload_certificate(ca.issue(ed, _identity(), now=NOW), ca.certificate, now=NOW)


def _has_p192() -> bool:
    try:
        ec.generate_private_key(ec.SECP192R1())
    except Exception:
        return False
    return True


# -- CSR ----------------------------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )


def test_issue_from_csr(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    cert = ca.issue_from_csr(_csr(key), _identity(), now=NOW, expected_public_key=key.public_key())
    assert _spki(cert.public_key()) == _spki(key.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "client:hospital-a"
    assert verify_workload_certificate(cert, ca.certificate, now=NOW) == _identity()
    # without an expected key the CSR key is used as is
    assert ca.issue_from_csr(_csr(key), _identity(), now=NOW).public_key() == key.public_key()


def test_csr_key_mismatch(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    attested = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(VerificationError):
        ca.issue_from_csr(_csr(key), _identity(), now=NOW, expected_public_key=attested)


def test_csr_bad_signature(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    der = bytearray(_csr(key).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA s value
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(VerificationError):
        ca.issue_from_csr(tampered, _identity(), now=NOW, expected_public_key=key.public_key())


# -- verification failures -------------------------------------------------------------------


def test_expired_and_not_yet_valid(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    cert = ca.issue(key.public_key(), _identity(), now=NOW)
    assert verify_workload_certificate(cert, ca.certificate, now=NOW + timedelta(hours=24))
    with pytest.raises(VerificationError):
        verify_workload_certificate(cert, ca.certificate, now=NOW + timedelta(hours=24, seconds=1))
    with pytest.raises(VerificationError):
        verify_workload_certificate(cert, ca.certificate, now=NOW - timedelta(minutes=2))


def test_wrong_ca(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    cert = ca.issue(key.public_key(), _identity(), now=NOW)
    same_name = FederationCA.generate("acme", now=NOW)  # same subject, other key
    other = FederationCA.generate("other", now=NOW)
    for anchor in (same_name.certificate, other.certificate):
        with pytest.raises(VerificationError):
            verify_workload_certificate(cert, anchor, now=NOW)
    with pytest.raises(VerificationError):  # a leaf is no trust anchor
        verify_workload_certificate(cert, cert, now=NOW)
    # the CA certificate itself is not a workload certificate
    with pytest.raises(VerificationError):
        verify_workload_certificate(ca.certificate, ca.certificate, now=NOW)


def test_wrong_agreement_digest_and_role(ca: FederationCA, key: ec.EllipticCurvePrivateKey) -> None:
    cert = ca.issue(key.public_key(), _identity(), now=NOW)
    with pytest.raises(VerificationError, match="another agreement"):
        verify_workload_certificate(
            cert, ca.certificate, now=NOW, expected_agreement_digest=OTHER_DIGEST
        )
    with pytest.raises(VerificationError):
        verify_workload_certificate(cert, ca.certificate, now=NOW, required_role="aggregator")


def test_extension_tamper_breaks_signature(
    ca: FederationCA, key: ec.EllipticCurvePrivateKey
) -> None:
    cert = ca.issue(key.public_key(), _identity(), now=NOW)
    der = cert.public_bytes(serialization.Encoding.DER)
    ext = encode_identity_extension(_identity())
    start = der.index(ext)
    checked = 0
    for offset in range(len(ext)):  # every byte of the extension value
        flipped = bytearray(der)
        flipped[start + offset] ^= 0x01
        try:
            tampered = x509.load_der_x509_certificate(bytes(flipped))
        except ValueError:
            continue  # no longer a certificate at all
        with pytest.raises(VerificationError):
            verify_workload_certificate(tampered, ca.certificate, now=NOW)
        checked += 1
    assert checked > len(ext) // 2


def _signed_by_ca(
    ca: FederationCA,
    key: ec.EllipticCurvePrivateKey,
    *,
    cn: str = "client:hospital-a",
    ext_value: bytes | None = None,
    critical_extra: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if ext_value is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(TEEFLOW_IDENTITY_OID, ext_value), critical=False
        )
    if critical_extra:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
            critical=True,
        )
    return builder.sign(ca.private_key, hashes.SHA256())


def test_ca_signed_but_malformed_certificates(
    ca: FederationCA, key: ec.EllipticCurvePrivateKey
) -> None:
    good_ext = encode_identity_extension(_identity())
    assert verify_workload_certificate(
        _signed_by_ca(ca, key, ext_value=good_ext), ca.certificate, now=NOW
    )
    cases = [
        _signed_by_ca(ca, key),  # no identity extension
        _signed_by_ca(ca, key, ext_value=b"\x30\x03\x02\x01\x01"),  # malformed extension
        _signed_by_ca(ca, key, ext_value=good_ext + b"\x00"),  # trailing bytes
        _signed_by_ca(ca, key, cn="aggregator:hospital-a", ext_value=good_ext),  # CN mismatch
        _signed_by_ca(ca, key, ext_value=good_ext, critical_extra=True),
    ]
    for cert in cases:
        with pytest.raises(VerificationError):
            verify_workload_certificate(cert, ca.certificate, now=NOW)


# -- mutual TLS over 127.0.0.1 ----------------------------------------------------------------

TIMEOUT = 10.0


def _serve_once(
    listener: socket.socket,
    ctx: ssl.SSLContext,
    ca_cert: x509.Certificate,
    now: datetime,
    out: dict[str, Any],
) -> None:
    try:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            out["identity"] = peer_identity(
                tls, ca_cert, now=now, expected_agreement_digest=DIGEST, required_role="client"
            )
            out["version"] = tls.version()
            tls.sendall(b"ok")
    except Exception as exc:
        out["error"] = exc


def _handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    ca_cert: x509.Certificate,
    now: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    server: dict[str, Any] = {}
    client: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        thread = threading.Thread(
            target=_serve_once, args=(listener, server_ctx, ca_cert, now, server), daemon=True
        )
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                client["identity"] = peer_identity(
                    tls, ca_cert, now=now, required_role="aggregator"
                )
                client["data"] = tls.recv(2)
        except Exception as exc:
            client["error"] = exc
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    return server, client


def _cred(world: dict[str, Any], name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert, key = world[name]
    return cert, key


@pytest.fixture(scope="module")
def tls_world() -> dict[str, Any]:
    now = datetime.now(UTC)  # OpenSSL checks validity against the wall clock
    ca = FederationCA.generate("acme", now=now)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = ca.issue(
        server_key.public_key(),
        _identity(role="aggregator", party=None),
        now=now,
        ip_addresses=["127.0.0.1"],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = ca.issue(client_key.public_key(), _identity(), now=now)
    return {
        "now": now,
        "ca": ca,
        "server": (server_cert, server_key),
        "client": (client_cert, client_key),
    }


def test_mutual_tls_accepts_a_federation_certificate(tls_world: dict[str, Any]) -> None:
    ca: FederationCA = tls_world["ca"]
    server_ctx = ssl_context_for(*_cred(tls_world, "server"), ca.certificate, server=True)
    client_ctx = ssl_context_for(*_cred(tls_world, "client"), ca.certificate, server=False)
    server, client = _handshake(server_ctx, client_ctx, ca.certificate, tls_world["now"])
    assert "error" not in server, server.get("error")
    assert "error" not in client, client.get("error")
    assert server["version"] == "TLSv1.3"
    assert server["identity"] == _identity()
    assert client["identity"].role == "aggregator"
    assert client["data"] == b"ok"


def test_mutual_tls_refuses_a_client_from_another_ca(tls_world: dict[str, Any]) -> None:
    ca: FederationCA = tls_world["ca"]
    now = tls_world["now"]
    rogue_ca = FederationCA.generate("acme", now=now)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_cert = rogue_ca.issue(rogue_key.public_key(), _identity(), now=now)
    server_ctx = ssl_context_for(*_cred(tls_world, "server"), ca.certificate, server=True)
    # the rogue client trusts the real CA (so it accepts the server) but holds a rogue cert
    client_ctx = ssl_context_for(rogue_cert, rogue_key, ca.certificate, server=False)
    server, client = _handshake(server_ctx, client_ctx, ca.certificate, now)
    assert isinstance(server.get("error"), ssl.SSLError)
    assert "identity" not in server
    assert "data" not in client or client["data"] == b""


def test_mutual_tls_client_refuses_a_server_from_another_ca(tls_world: dict[str, Any]) -> None:
    ca: FederationCA = tls_world["ca"]
    now = tls_world["now"]
    rogue_ca = FederationCA.generate("acme", now=now)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_server = rogue_ca.issue(
        rogue_key.public_key(),
        _identity(role="aggregator", party=None),
        now=now,
        ip_addresses=["127.0.0.1"],
    )
    server_ctx = ssl_context_for(rogue_server, rogue_key, rogue_ca.certificate, server=True)
    client_ctx = ssl_context_for(*_cred(tls_world, "client"), ca.certificate, server=False)
    _server, client = _handshake(server_ctx, client_ctx, ca.certificate, now)
    assert isinstance(client.get("error"), ssl.SSLCertVerificationError)


def test_ssl_context_settings(tls_world: dict[str, Any]) -> None:
    ca: FederationCA = tls_world["ca"]
    for server in (True, False):
        ctx = ssl_context_for(*_cred(tls_world, "client"), ca.certificate, server=server)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is (not server)
        assert len(ctx.get_ca_certs()) == 1
    with pytest.raises(KbsError):
        ssl_context_for(
            tls_world["client"][0],
            ec.generate_private_key(ec.SECP256R1()),
            ca.certificate,
            server=False,
        )


def test_extension_parses_are_remembered_but_failures_are_not() -> None:
    good = _asn1(party="hospital-b")
    first = parse_identity_extension(good)
    assert parse_identity_extension(bytearray(good)) is first  # the same bytes: parsed once
    for _ in range(2):  # a refused value is refused every time (never remembered)
        with pytest.raises(ParseError):
            parse_identity_extension(good + b"\x00")
    ident = _identity(party="hospital-b")
    assert encode_identity_extension(ident) is encode_identity_extension(ident)
