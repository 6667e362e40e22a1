"""SGX quote verification on a synthetic (emulation-style) PCK chain built here.

Covers what real vectors cannot: a revoked PCK certificate, CRL signature problems, a root
in the quote that looks like the anchor but differs, the strict PEM decoder, and the cache
re-checking validity windows at every ``now``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from teeflow.attestation.dcap.pck import SgxType
from teeflow.attestation.sgx import parse_quote, verify
from teeflow.attestation.sgx.verify import decode_pck_chain
from teeflow.attestation.trust import TrustAnchor, intel_sgx_root_ca
from teeflow.errors import CollateralError, VerificationError
from teeflow.hazmat.ecdsa import der_to_raw_signature, p256_public_key_to_raw

NOW = datetime(2025, 1, 1, tzinfo=UTC)
NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2030, 1, 1, tzinfo=UTC)
SGX = "1.2.840.113741.1.13.1"
INTEL = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


def _entry(oid: str, value: univ.Asn1Item) -> univ.Sequence:
    seq = univ.Sequence()
    seq.setComponentByPosition(0, univ.ObjectIdentifier(oid))
    seq.setComponentByPosition(1, value)
    return seq


def sgx_extension(comps: tuple[int, ...] = (5,) * 16, pcesvn: int = 13) -> bytes:
    tcb = univ.SequenceOf(componentType=univ.Sequence())
    for i, c in enumerate(comps, 1):
        tcb.append(_entry(f"{SGX}.2.{i}", univ.Integer(c)))
    tcb.append(_entry(f"{SGX}.2.17", univ.Integer(pcesvn)))
    tcb.append(_entry(f"{SGX}.2.18", univ.OctetString(bytes(comps))))
    top = univ.SequenceOf(componentType=univ.Sequence())
    top.append(_entry(f"{SGX}.1", univ.OctetString(b"P" * 16)))
    top.append(_entry(f"{SGX}.2", tcb))
    top.append(_entry(f"{SGX}.3", univ.OctetString(b"\x00\x00")))
    top.append(_entry(f"{SGX}.4", univ.OctetString(bytes.fromhex("00a067110000"))))
    top.append(_entry(f"{SGX}.5", univ.Enumerated(0)))
    return encoder.encode(top)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    extension: bytes | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if extension is not None:
        b = b.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX), extension), False
        )
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Platform:
    root: x509.Certificate
    inter: x509.Certificate
    leaf: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    leaf_key: ec.EllipticCurvePrivateKey
    root_key: ec.EllipticCurvePrivateKey

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor(self.root, "test root", emulated=True)

    def chain_pem(self, *certs: x509.Certificate) -> bytes:
        certs = certs or (self.leaf, self.inter, self.root)
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs) + b"\x00"

    def crl(self, revoked: tuple[int, ...] = (), key: ec.EllipticCurvePrivateKey | None = None):
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.inter.subject)
            .last_update(NOW - timedelta(days=1))
            .next_update(NOW + timedelta(days=30))
        )
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - timedelta(days=2))
                .build()
            )
        return b.sign(key or self.inter_key, hashes.SHA256())

    def quote(
        self,
        *,
        pem: bytes | None = None,
        auth: bytes = bytes(range(32)),
        rd_tail: bytes = bytes(32),
        att_key_type: int = 2,
        vendor: bytes = INTEL,
        cert_type: int = 5,
        raw_key: bytes | None = None,
    ) -> bytes:
        att = ec.generate_private_key(ec.SECP256R1())
        att_raw = raw_key or p256_public_key_to_raw(att.public_key())
        header = struct.pack("<HHIHH", 3, att_key_type, 0, 9, 13) + vendor + bytes(20)
        body = bytearray(384)
        body[48] = 0x05
        body[64:96] = b"E" * 32
        body[320:384] = b"D" * 64
        signed = header + bytes(body)
        sig = der_to_raw_signature(att.sign(signed, ec.ECDSA(hashes.SHA256())))
        qe = bytearray(384)
        qe[320:384] = hashlib.sha256(att_raw + auth).digest() + rd_tail
        qe_sig = der_to_raw_signature(self.leaf_key.sign(bytes(qe), ec.ECDSA(hashes.SHA256())))
        cert = pem if pem is not None else self.chain_pem()
        sd = (
            sig
            + att_raw
            + bytes(qe)
            + qe_sig
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", cert_type, len(cert))
            + cert
        )
        return signed + struct.pack("<I", len(sd)) + sd


@pytest.fixture(scope="module")
def platform() -> Platform:
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = make_cert("Test Root CA", root_key, "Test Root CA", root_key, ca=True, serial=1)
    inter = make_cert("Test PCK CA", inter_key, "Test Root CA", root_key, ca=True, serial=2)
    leaf = make_cert(
        "Test PCK Certificate",
        leaf_key,
        "Test PCK CA",
        inter_key,
        ca=False,
        serial=0x1234,
        extension=sgx_extension(),
    )
    return Platform(root, inter, leaf, inter_key, leaf_key, root_key)


def run(p: Platform, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "anchors": [p.anchor],
        "collateral": None,
        "now": NOW,
        "signatures_only": True,
    }
    args.update(kw)
    return verify(parse_quote(data), **args)  # type: ignore[arg-type]


def test_synthetic_quote_verifies(platform: Platform) -> None:
    v = run(platform, platform.quote())
    assert v.emulated and v.anchor.name == "test root"
    assert v.pck_certificate == platform.leaf
    assert v.pck.fmspc.hex() == "00a067110000" and v.pck.sgx_type is SgxType.STANDARD
    assert v.report.mr_enclave == b"E" * 32 and v.report.report_data == b"D" * 64
    assert not v.report.debug
    assert (v.tcb_status, v.platform_tcb, v.qe_tcb, v.advisory_ids) == (None, None, None, ())
    assert not v.collateral_verified and v.verified_at == NOW


def test_revoked_pck_is_rejected(platform: Platform) -> None:
    data = platform.quote()
    run(platform, data, crls=[platform.crl(revoked=(0x9999,))])
    with pytest.raises(VerificationError, match="revoked") as exc:
        run(platform, data, crls=[platform.crl(revoked=(0x1234,))])
    assert type(exc.value) is VerificationError


def test_badly_signed_or_expired_crl_is_collateral_error(platform: Platform) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CollateralError):
        run(platform, platform.quote(), crls=[platform.crl(key=other)])
    with pytest.raises(CollateralError):
        run(platform, platform.quote(), crls=[platform.crl()], now=NOW + timedelta(days=60))


def test_wrong_anchor(platform: Platform) -> None:
    with pytest.raises(VerificationError) as exc:
        run(platform, platform.quote(), anchors=[intel_sgx_root_ca()])
    assert type(exc.value) is VerificationError


def test_included_root_must_equal_anchor_exactly(platform: Platform) -> None:
    twin = make_cert(
        "Test Root CA", platform.root_key, "Test Root CA", platform.root_key, ca=True, serial=77
    )
    pem = platform.chain_pem(platform.leaf, platform.inter, twin)
    with pytest.raises(VerificationError, match="imitates a trust anchor"):
        run(platform, platform.quote(pem=pem))
    # A chain without the root verifies up to the anchor.
    run(platform, platform.quote(pem=platform.chain_pem(platform.leaf, platform.inter)))


def test_cache_rechecks_validity_each_call(platform: Platform) -> None:
    data = platform.quote()
    run(platform, data)
    with pytest.raises(VerificationError, match="not valid"):
        run(platform, data, now=NOT_AFTER + timedelta(days=1))
    with pytest.raises(VerificationError, match="not valid"):
        run(platform, data, now=NOT_BEFORE - timedelta(days=1))
    run(platform, data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"att_key_type": 0}, "attestation key type"),
        ({"vendor": bytes(16)}, "vendor"),
        ({"rd_tail": b"\x01" + bytes(31)}, "bind"),
        ({"cert_type": 4}, "not a PCK certificate chain"),
        ({"raw_key": b"\x01" * 64}, "P-256 public key"),
    ],
)
def test_quote_checks(platform: Platform, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(VerificationError, match=match):
        run(platform, platform.quote(**kwargs))  # type: ignore[arg-type]


def test_collateral_required_unless_signatures_only(platform: Platform) -> None:
    with pytest.raises(CollateralError, match="no collateral"):
        run(platform, platform.quote(), signatures_only=False)
    with pytest.raises(VerificationError, match="timezone"):
        run(platform, platform.quote(), now=datetime(2025, 1, 1))


def test_strict_pem_chain(platform: Platform) -> None:
    pem = platform.chain_pem().rstrip(b"\x00")
    assert len(decode_pck_chain(pem)) == 3
    assert len(decode_pck_chain(pem + b"\x00" * 5)) == 3
    assert len(decode_pck_chain(pem.replace(b"\n", b"\r\n"))) == 3
    assert len(decode_pck_chain(pem.rstrip(b"\n"))) == 3
    first_end = pem.index(b"-----END CERTIFICATE-----\n") + 26
    bad = [
        b"junk\n" + pem,
        pem[:first_end] + b"\n" + pem[first_end:],  # blank line between blocks
        pem + b"\x00x",
        pem + b"\n",
        pem.replace(b"-----BEGIN CERTIFICATE-----", b"-----BEGIN CERTIFICATE----", 1),
        b"",
    ]
    # Non-canonical base64: change unused low bits of the last character before '='.
    lines = pem.split(b"\n")
    for i, line in enumerate(lines):
        if line.endswith(b"="):
            stripped = line.rstrip(b"=")
            alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            idx = alphabet.index(stripped[-1:])
            alt = alphabet[idx ^ 1 : (idx ^ 1) + 1]
            lines[i] = stripped[:-1] + alt + line[len(stripped) :]
            bad.append(b"\n".join(lines))
            break
    for b in bad:
        with pytest.raises(VerificationError, match="malformed PCK certificate chain"):
            decode_pck_chain(b)


def test_results_are_replace_safe(platform: Platform) -> None:
    v = run(platform, platform.quote())
    assert replace(v, collateral_verified=True).emulated
