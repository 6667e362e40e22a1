"""AMD VCEK/VLEK extensions (encode/parse) and strict certificate loading."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from teeflow.attestation.snp.abi import SnpProduct, TcbVersion
from teeflow.attestation.snp.certs import (
    OID_BL_SPL,
    OID_CSP_ID,
    OID_HW_ID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    encode_amd_extensions,
    load_certificate,
    load_certificates,
    parse_amd_extensions,
)
from teeflow.errors import ParseError

KEY = ec.generate_private_key(ec.SECP256R1())
MILAN_TCB = TcbVersion.from_components(SnpProduct.MILAN, bootloader=4, tee=0, snp=24, microcode=217)


def cert_with(extensions: list[x509.ExtensionType]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(KEY, hashes.SHA256())


def replace_ext(
    exts: list[x509.UnrecognizedExtension], oid: str, value: bytes | None
) -> list[x509.ExtensionType]:
    out: list[x509.ExtensionType] = [e for e in exts if e.oid.dotted_string != oid]
    if value is not None:
        out.append(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value))
    return out


def test_vcek_round_trip() -> None:
    chip = bytes(range(64))
    exts = encode_amd_extensions(product_name="Milan-B0", tcb=MILAN_TCB, hw_id=chip)
    parsed = parse_amd_extensions(cert_with(list(exts)))
    assert parsed.product is SnpProduct.MILAN and parsed.product_name == "Milan-B0"
    assert (parsed.bl_spl, parsed.tee_spl, parsed.snp_spl, parsed.ucode_spl) == (4, 0, 24, 217)
    assert parsed.hw_id == chip and parsed.csp_id is None and not parsed.is_vlek
    assert parsed.fmc_spl is None and parsed.reserved_spls == (0, 0, 0, 0)
    assert parsed.tcb(SnpProduct.MILAN) == MILAN_TCB


def test_kds_encodings() -> None:
    exts = {
        e.oid.dotted_string: e.value
        for e in encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, hw_id=bytes(64))
    }
    assert exts[OID_PRODUCT_NAME] == b"\x16\x05Milan"  # IA5String
    assert exts[OID_BL_SPL] == b"\x02\x01\x04"  # INTEGER
    assert exts["1.3.6.1.4.1.3704.1.3.8"] == b"\x02\x02\x00\xd9"  # INTEGER 217
    assert exts[OID_HW_ID] == bytes(64)  # raw, no OCTET STRING header


def test_vlek_round_trip() -> None:
    exts = encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, csp_id="CN=example")
    parsed = parse_amd_extensions(cert_with(list(exts)))
    assert parsed.is_vlek and parsed.csp_id == "CN=example" and parsed.hw_id is None


def test_turin_round_trip() -> None:
    tcb = TcbVersion.from_components(
        SnpProduct.TURIN, bootloader=1, tee=2, snp=3, microcode=4, fmc=5
    )
    exts = encode_amd_extensions(product_name="Turin-B0", tcb=tcb, hw_id=b"\x01" * 8)
    parsed = parse_amd_extensions(cert_with(list(exts)))
    assert parsed.fmc_spl == 5 and parsed.hw_id == b"\x01" * 8
    assert parsed.tcb(SnpProduct.TURIN) == tcb
    with pytest.raises(ParseError, match="fmcSPL"):
        parsed.tcb(SnpProduct.MILAN)
    milan = parse_amd_extensions(
        cert_with(list(encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, hw_id=bytes(8))))
    )
    with pytest.raises(ParseError, match="fmcSPL"):
        milan.tcb(SnpProduct.TURIN)


def test_hwid_as_der_octet_string_accepted() -> None:
    exts = encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, hw_id=bytes(64))
    wrapped = replace_ext(exts, OID_HW_ID, b"\x04\x40" + b"\x07" * 64)
    assert parse_amd_extensions(cert_with(wrapped)).hw_id == b"\x07" * 64


@pytest.mark.parametrize(
    ("oid", "value", "match"),
    [
        (OID_BL_SPL, None, "blSPL"),
        (OID_SNP_SPL, b"\x02\x02\x01\x00", "outside"),  # 256
        (OID_SNP_SPL, b"\x02\x01\xff", "outside"),  # -1
        (OID_SNP_SPL, b"\x02\x01\x01\x00", "trailing"),
        (OID_SNP_SPL, b"\x16\x01A", "malformed"),
        (OID_PRODUCT_NAME, b"\x02\x01\x01", "malformed"),
        (OID_PRODUCT_NAME, None, "productName"),
        (OID_HW_ID, b"\x04\x03abc", "hwID"),
        (OID_HW_ID, None, "exactly one"),
        (OID_CSP_ID, b"\x16\x01x", "exactly one"),
    ],
)
def test_malformed_extensions(oid: str, value: bytes | None, match: str) -> None:
    exts = encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, hw_id=bytes(64))
    with pytest.raises(ParseError, match=match):
        parse_amd_extensions(cert_with(replace_ext(exts, oid, value)))


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB)
    with pytest.raises(ValueError):
        encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, hw_id=bytes(64), csp_id="x")
    with pytest.raises(ValueError):
        encode_amd_extensions(product_name="Milan", tcb=MILAN_TCB, hw_id=bytes(10))


def test_load_certificates_forms() -> None:
    cert = cert_with([])
    der = cert.public_bytes(Encoding.DER)
    pem = cert.public_bytes(Encoding.PEM)
    assert load_certificate(der) == cert
    assert load_certificate(pem) == cert
    assert load_certificates(b"\n" + pem + pem) == [cert, cert]
    for bad in (b"", b"junk", pem + b"comment", der + b"\0", b"x" * 70000, pem * 9):
        with pytest.raises(ParseError):
            load_certificates(bad)
    with pytest.raises(ParseError, match="one certificate"):
        load_certificate(pem + pem)
    with pytest.raises(ParseError):
        load_certificates("text")  # type: ignore[arg-type]
