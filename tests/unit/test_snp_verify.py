"""SEV-SNP verification with the emulated chain: every check's failure mode, typed.

Real certificates cannot be re-signed, so mismatches between the VCEK and the report (TCB,
CHIP_ID, signing-key kind, product) are made with :class:`EmulatedSnp`, whose VCEK can sign
any report structure.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from teeflow.attestation.snp import (
    SnpProduct,
    TcbVersion,
    VerifiedSnpEvidence,
    parse_report,
    verify,
)
from teeflow.attestation.snp.certs import encode_amd_extensions
from teeflow.attestation.trust import TrustAnchor
from teeflow.attestation.trust.amd import amd_ark
from teeflow.errors import CollateralError, VerificationError
from teeflow.platform.emulated_snp import EmulatedSnp

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@pytest.fixture(scope="module")
def emu() -> EmulatedSnp:
    return EmulatedSnp.generate(now=NOW, measurement=b"\x42" * 48)


@pytest.fixture(scope="module")
def other() -> EmulatedSnp:
    return EmulatedSnp.generate(now=NOW)


@pytest.fixture(scope="module")
def turin() -> EmulatedSnp:
    return EmulatedSnp.generate(product=SnpProduct.TURIN, now=NOW)


def run(emu: EmulatedSnp, data: bytes, *, now: datetime = NOW, **kw: object) -> VerifiedSnpEvidence:
    args: dict[str, object] = {
        "endorsement_cert": emu.vcek_certificate,
        "intermediates": [emu.ask_certificate],
        "anchors": [emu.trust_anchor()],
        "now": now,
    }
    args.update(kw)
    return verify(parse_report(data), **args)  # type: ignore[arg-type]


def test_emulated_report_verifies(emu: EmulatedSnp) -> None:
    v = run(emu, emu.report(b"nonce"))
    assert v.emulated and v.product is SnpProduct.MILAN and v.signing_key.name == "VCEK"
    assert v.report.report_data == b"nonce".ljust(64, b"\0")
    assert v.report.measurement == b"\x42" * 48
    assert v.reported_tcb == v.extensions.tcb(SnpProduct.MILAN)
    assert not v.crl_checked
    # The chain may also end with the ARK itself (AMD's vcek.pem bundle layout).
    run(emu, emu.report(b""), intermediates=[emu.ask_certificate, emu.ark_certificate])


def test_turin_report_verifies(turin: EmulatedSnp) -> None:
    v = run(turin, turin.report(b"t"))
    assert v.product is SnpProduct.TURIN and v.reported_tcb.fmc is not None
    assert v.extensions.hw_id is not None and len(v.extensions.hw_id) == 8


def test_fails_against_real_amd_roots(emu: EmulatedSnp) -> None:
    data = emu.report(b"x")
    with pytest.raises(VerificationError, match="trusted root"):
        run(emu, data, anchors=None)
    with pytest.raises(VerificationError):
        run(emu, data, anchors=None, intermediates=None)
    with pytest.raises(VerificationError):
        run(emu, data, anchors=[amd_ark("Milan")])


def test_tcb_mismatch(emu: EmulatedSnp) -> None:
    report = parse_report(emu.report(b"x"))
    lower = TcbVersion.from_components(SnpProduct.MILAN, bootloader=4, tee=0, snp=23, microcode=219)
    with pytest.raises(VerificationError, match="REPORTED_TCB"):
        run(emu, emu.sign(replace(report, reported_tcb=lower)))
    reserved = TcbVersion(report.reported_tcb.raw | 1 << 16)  # a reserved byte
    with pytest.raises(VerificationError, match="REPORTED_TCB"):
        run(emu, emu.sign(replace(report, reported_tcb=reserved)))
    # Only REPORTED_TCB is bound to the VCEK: other TCB fields may differ.
    run(emu, emu.sign(replace(report, current_tcb=lower, committed_tcb=lower)))


def test_chip_id_mismatch(emu: EmulatedSnp, turin: EmulatedSnp) -> None:
    report = parse_report(emu.report(b"x"))
    other = bytes(64)
    with pytest.raises(VerificationError, match="hwID"):
        run(emu, emu.sign(replace(report, chip_id=other)))
    t = parse_report(turin.report(b"x"))
    with pytest.raises(VerificationError, match="hwID"):
        run(turin, turin.sign(replace(t, chip_id=t.chip_id[:8] + b"\x01" + bytes(55))))


def test_signing_key_kind_mismatch(emu: EmulatedSnp) -> None:
    report = parse_report(emu.report(b"x"))
    with pytest.raises(VerificationError, match="certificate is a VCEK"):
        run(emu, emu.sign(replace(report, signer_info=1 << 2)))
    with pytest.raises(VerificationError, match="not signed"):
        run(emu, emu.sign(replace(report, signer_info=7 << 2)))
    with pytest.raises(VerificationError, match="MASK_CHIP_KEY"):
        run(emu, emu.sign(replace(report, signer_info=2)))


def test_product_mismatches(emu: EmulatedSnp) -> None:
    report = parse_report(emu.report(b"x"))
    with pytest.raises(VerificationError, match="expected Genoa"):
        run(emu, emu.report(b"x"), product=SnpProduct.GENOA)
    run(emu, emu.report(b"x"), product="Milan")
    genoa_cpuid = replace(report, cpuid_family=0x19, cpuid_model=0x11)
    with pytest.raises(VerificationError, match="CPUID says Genoa"):
        run(emu, emu.sign(genoa_cpuid))
    v2 = replace(report, version=2, cpuid_family=None, cpuid_model=None, cpuid_stepping=None)
    assert run(emu, emu.sign(v2)).report.version == 2


def test_unsupported_signature_algorithm(emu: EmulatedSnp) -> None:
    report = parse_report(emu.report(b"x"))
    with pytest.raises(VerificationError, match="SIGNATURE_ALGO"):
        run(emu, emu.sign(replace(report, signature_algo=2)))


def test_signature_malleability(emu: EmulatedSnp) -> None:
    report = parse_report(emu.report(b"x"))
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973  # noqa: E501
    high_s = n - report.signature_s  # (r, n - s) is also a valid ECDSA signature
    sig = bytearray(report.signature)
    sig[72:144] = high_s.to_bytes(72, "little")
    # cryptography accepts high-S; AMD's format does not forbid it. The signature still binds
    # the signed bytes, so this is not a forgery of content.
    run(emu, replace(report, signature=bytes(sig)).to_bytes())
    sig[72:144] = (report.signature_s + n).to_bytes(72, "little")  # s >= n
    with pytest.raises(VerificationError):
        run(emu, replace(report, signature=bytes(sig)).to_bytes())
    sig[72:144] = (report.signature_s | 1 << 400).to_bytes(72, "little")
    with pytest.raises(VerificationError, match="48 bytes"):
        run(emu, replace(report, signature=bytes(sig)).to_bytes())
    with pytest.raises(VerificationError, match="zero"):
        run(emu, replace(report, signature=bytes(0x200)).to_bytes())


def test_validity_window(emu: EmulatedSnp) -> None:
    data = emu.report(b"x")
    with pytest.raises(VerificationError, match="not valid at"):
        run(emu, data, now=NOW - timedelta(days=2))
    with pytest.raises(VerificationError, match="not valid at"):
        run(emu, data, now=NOW + timedelta(days=26 * 365))
    with pytest.raises(VerificationError, match="timezone-aware"):
        run(emu, data, now=datetime(2026, 3, 1))


def test_crl(emu: EmulatedSnp) -> None:
    data = emu.report(b"x")
    assert run(emu, data, crl=emu.crl(NOW)).crl_checked
    revoked = emu.crl(NOW, revoked=[emu.ask_certificate.serial_number])
    with pytest.raises(VerificationError, match="revoked") as exc:
        run(emu, data, crl=revoked)
    assert type(exc.value) is VerificationError
    with pytest.raises(CollateralError, match="expired"):
        run(emu, data, crl=emu.crl(NOW - timedelta(days=30)))


def test_crl_from_another_issuer(emu: EmulatedSnp, other: EmulatedSnp) -> None:
    with pytest.raises(CollateralError):
        run(emu, emu.report(b"x"), crl=other.crl(NOW))


def test_vcek_from_another_platform(emu: EmulatedSnp, other: EmulatedSnp) -> None:
    with pytest.raises(VerificationError, match="signature is invalid"):
        run(emu, emu.report(b"x"), endorsement_cert=other.vcek_certificate,
            intermediates=[other.ask_certificate], anchors=[other.trust_anchor()])  # fmt: skip
    with pytest.raises(VerificationError):
        run(emu, emu.report(b"x"), anchors=[other.trust_anchor()])
    with pytest.raises(VerificationError):
        run(emu, emu.report(b"x"), intermediates=[])
    with pytest.raises(VerificationError):
        run(emu, emu.report(b"x"), anchors=[])


def _leaf(emu: EmulatedSnp, key: object, sign_padding: object = PSS) -> x509.Certificate:
    exts = encode_amd_extensions(product_name="Milan-B0", tcb=emu.keys.tcb, hw_id=emu.keys.chip_id)
    builder = (
        x509.CertificateBuilder()
        .subject_name(emu.vcek_certificate.subject)
        .issuer_name(emu.ask_certificate.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(9)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
    )
    for ext in exts:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(emu.keys.ask_key, hashes.SHA384(), rsa_padding=sign_padding)  # type: ignore[arg-type]


def test_endorsement_key_and_algorithm_checks(emu: EmulatedSnp) -> None:
    data = emu.report(b"x")
    p256 = _leaf(emu, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(VerificationError, match="P-384"):
        run(emu, data, endorsement_cert=p256)
    pkcs1 = _leaf(emu, emu.keys.vcek_key, padding.PKCS1v15())
    with pytest.raises(VerificationError, match="RSASSA-PSS"):
        run(emu, data, endorsement_cert=pkcs1)
    assert run(emu, data, endorsement_cert=_leaf(emu, emu.keys.vcek_key)).emulated


def test_anchor_must_be_self_signed(emu: EmulatedSnp) -> None:
    ask_as_anchor = TrustAnchor(emu.ask_certificate, "ASK", emulated=True)
    with pytest.raises(VerificationError, match="self-signed"):
        run(emu, emu.report(b"x"), anchors=[ask_as_anchor])


def test_extension_errors_are_verification_errors(emu: EmulatedSnp) -> None:
    with pytest.raises(VerificationError, match="endorsement certificate"):
        run(emu, emu.report(b"x"), endorsement_cert=emu.ask_certificate)
    with pytest.raises(VerificationError):
        verify(b"not a report", endorsement_cert=emu.vcek_certificate, now=NOW)  # type: ignore[arg-type]


def test_unknown_product_name_needs_explicit_product(emu: EmulatedSnp) -> None:
    exts = encode_amd_extensions(product_name="Venice-A0", tcb=emu.keys.tcb, hw_id=emu.keys.chip_id)
    builder = (
        x509.CertificateBuilder()
        .subject_name(emu.vcek_certificate.subject)
        .issuer_name(emu.ask_certificate.subject)
        .public_key(emu.keys.vcek_key.public_key())
        .serial_number(10)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
    )
    for ext in exts:
        builder = builder.add_extension(ext, critical=False)
    cert = builder.sign(emu.keys.ask_key, hashes.SHA384(), rsa_padding=PSS)
    report = parse_report(emu.report(b"x"))
    v2 = emu.sign(
        replace(report, version=2, cpuid_family=None, cpuid_model=None, cpuid_stepping=None)
    )
    with pytest.raises(VerificationError, match="unknown AMD productName"):
        run(emu, v2, endorsement_cert=cert)
    assert run(emu, v2, endorsement_cert=cert, product="Milan").product is SnpProduct.MILAN
