"""NVIDIA GPU evidence verification on synthetic SPDM transcripts and device chains.

The builders here (:func:`make_gpu`) make real-format evidence: an SPDM 1.1 GET_MEASUREMENTS
request, a MEASUREMENTS response with NVIDIA opaque TLVs and an ECDSA P-384 signature, and a
P-384 chain test root -> identity CA -> ``GH100 A01 GSP FMC LF`` leaf carrying a TCG DICE FWID
extension. Other NVIDIA test modules import them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import char, univ

from teeflow.attestation.nvidia import (
    GpuEvidence,
    load_nvtrust_evidence,
    load_trustee_evidence,
    parse_transcript,
    verify,
)
from teeflow.attestation.nvidia.verify import (
    _CompositeDeviceId,
    _ctx,
    _DiceTcbInfo,
    _Fwid,
    _FwidList,
    architecture_of,
    leaf_fwid,
    parse_fwid_extension_value,
)
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError, VerificationError

NOW = datetime(2025, 6, 1, tzinfo=UTC)
NONCE = bytes(range(32))
FWID = hashlib.sha384(b"gsp fmc firmware").digest()
SHA384_OID = "2.16.840.1.101.3.4.2.2"
_START = datetime(2020, 1, 1, tzinfo=UTC)
_END = datetime(2100, 1, 1, tzinfo=UTC)


def fwid_extension(digest: bytes, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """NVIDIA's FWID extension value: SEQUENCE { 1, SubjectPublicKeyInfo, FWID }."""
    value = _CompositeDeviceId()
    value["version"] = 1
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    value["deviceId"] = univ.Any(spki)
    fwid = _Fwid()
    fwid["hashAlg"] = univ.ObjectIdentifier(SHA384_OID)
    fwid["digest"] = univ.OctetString(digest)
    value["fwid"] = fwid
    return bytes(encoder.encode(value))


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extra: list[x509.ExtensionType] = (),  # type: ignore[assignment]
    key_usage: bool = True,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_START)
        .not_valid_after(_END)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    for ext in extra:
        builder = builder.add_extension(ext, False)
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass(frozen=True)
class FakeGpu:
    """A synthetic GPU: trust anchor, PEM chain (leaf first, root last) and signing key."""

    anchor: TrustAnchor
    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey


def make_gpu(
    *,
    chip: str = "GH100",
    fwid: bytes | None = FWID,
    leaf_key: ec.EllipticCurvePrivateKey | None = None,
    emulated: bool = False,
) -> FakeGpu:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert("Test Device Identity CA", root_key, None, root_key, ca=True)
    ica_key = ec.generate_private_key(ec.SECP384R1())
    ica = _cert("Test GH100 Identity", ica_key, root, root_key, ca=True)
    key = leaf_key if leaf_key is not None else ec.generate_private_key(ec.SECP384R1())
    extra: list[x509.ExtensionType] = []
    if fwid is not None:
        der = fwid_extension(fwid, key.public_key())
        extra.append(x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), der))
    leaf = _cert(f"{chip} A01 GSP FMC LF", key, ica, ica_key, ca=False, extra=extra)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ica, root))
    anchor = TrustAnchor(root, "test device root", emulated=emulated)
    return FakeGpu(anchor, pem, key)  # type: ignore[arg-type]


def tlv(field_type: int, value: bytes) -> bytes:
    return field_type.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def default_opaque(fwid: bytes = FWID) -> bytes:
    return (
        tlv(6, bytes.fromhex("00a5009601000000"))
        + tlv(15, b"885\0\0\0")
        + tlv(17, b"G520\0")
        + tlv(3, b"590.12\0")
        + tlv(20, fwid)
    )


def make_transcript(
    key: ec.EllipticCurvePrivateKey,
    *,
    nonce: bytes = NONCE,
    blocks: list[tuple[int, int, bytes]] | None = None,
    opaque: bytes | None = None,
    slot: int = 0,
) -> bytes:
    """request || response || raw r||s; blocks are (index, value type, value)."""
    if blocks is None:
        blocks = [(i, 1, hashlib.sha384(bytes([i])).digest()) for i in range(1, 5)]
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + bytes([slot])
    record = b""
    for index, value_type, value in blocks:
        dmtf = bytes([value_type]) + len(value).to_bytes(2, "little") + value
        record += bytes([index, 0x01]) + len(dmtf).to_bytes(2, "little") + dmtf
    body = bytes([0x11, 0x60, 0x00, 0x00, len(blocks)]) + len(record).to_bytes(3, "little")
    opaque_data = default_opaque() if opaque is None else opaque
    body += record + b"\x5a" * 32 + len(opaque_data).to_bytes(2, "little") + opaque_data
    signed = request + body
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def make_evidence(gpu: FakeGpu | None = None, **kwargs: object) -> tuple[FakeGpu, GpuEvidence]:
    gpu = gpu if gpu is not None else make_gpu()
    raw = make_transcript(gpu.key, **kwargs)  # type: ignore[arg-type]
    return gpu, GpuEvidence(parse_transcript(raw), gpu.chain_pem, source="test")


# --- tests ----------------------------------------------------------------------------------
def test_round_trip_fields() -> None:
    gpu, ev = make_evidence()
    v = verify(ev, now=NOW, anchors=[gpu.anchor], nonce=NONCE)
    assert v.fwid.digest == FWID and v.fwid.hash_algorithm == SHA384_OID
    assert v.arch == "HOPPER"
    assert v.driver_version == "590.12"
    assert v.vbios_version == "96.00.A5.00.01"
    assert v.nonce == NONCE
    assert v.evidence_digest == hashlib.sha384(ev.transcript.raw).digest()
    assert (
        v.measurements_digest == hashlib.sha384(ev.transcript.response.measurement_record).digest()
    )
    assert v.leaf.subject.rfc4514_string() == "CN=GH100 A01 GSP FMC LF"
    assert len(v.certificates) == 3 and v.anchor is gpu.anchor and not v.emulated
    assert v.verified_at == NOW


def test_chain_without_root_verifies() -> None:
    gpu, ev = make_evidence()
    certs = x509.load_pem_x509_certificates(gpu.chain_pem)[:2]
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    verify(replace(ev, certificate_chain_pem=pem), now=NOW, anchors=[gpu.anchor])


def test_tampered_measurement_rejected() -> None:
    gpu, ev = make_evidence()
    raw = bytearray(ev.transcript.raw)
    raw[60] ^= 0x01  # inside the first measurement value
    bad = replace(ev, transcript=parse_transcript(bytes(raw)))
    with pytest.raises(VerificationError, match="signature"):
        verify(bad, now=NOW, anchors=[gpu.anchor])


def test_signature_by_other_key_rejected() -> None:
    gpu = make_gpu()
    other = ec.generate_private_key(ec.SECP384R1())
    ev = GpuEvidence(parse_transcript(make_transcript(other)), gpu.chain_pem)
    with pytest.raises(VerificationError, match="signature"):
        verify(ev, now=NOW, anchors=[gpu.anchor])


def test_zero_signature_rejected() -> None:
    gpu, ev = make_evidence()
    raw = ev.transcript.raw[:-96] + b"\0" * 96
    with pytest.raises(VerificationError):
        verify(replace(ev, transcript=parse_transcript(raw)), now=NOW, anchors=[gpu.anchor])


def test_expected_nonce_mismatch() -> None:
    gpu, ev = make_evidence()
    with pytest.raises(VerificationError, match="nonce"):
        verify(ev, now=NOW, anchors=[gpu.anchor], nonce=b"\x01" * 32)


def test_default_anchor_is_nvidia_root() -> None:
    _, ev = make_evidence()
    with pytest.raises(VerificationError, match="trusted root"):
        verify(ev, now=NOW)


def test_other_root_rejected() -> None:
    _, ev = make_evidence()
    other = make_gpu()
    with pytest.raises(VerificationError):
        verify(ev, now=NOW, anchors=[other.anchor])


def test_no_anchors_and_naive_time() -> None:
    gpu, ev = make_evidence()
    with pytest.raises(VerificationError, match="anchors"):
        verify(ev, now=NOW, anchors=[])
    with pytest.raises(VerificationError, match="timezone"):
        verify(ev, now=datetime(2025, 1, 1), anchors=[gpu.anchor])


def test_outside_validity_rejected() -> None:
    gpu, ev = make_evidence()
    with pytest.raises(VerificationError, match="not valid"):
        verify(ev, now=_START - timedelta(days=1), anchors=[gpu.anchor])


def test_malformed_chain_is_verification_error() -> None:
    gpu, ev = make_evidence()
    for pem in (b"", b"not pem", gpu.chain_pem.replace(b"MII", b"MI!", 1)):
        with pytest.raises(VerificationError):
            verify(replace(ev, certificate_chain_pem=pem), now=NOW, anchors=[gpu.anchor])


def test_missing_fwid_extension_rejected() -> None:
    gpu, ev = make_evidence(make_gpu(fwid=None))
    with pytest.raises(VerificationError, match="FWID"):
        verify(ev, now=NOW, anchors=[gpu.anchor])


def test_opaque_fwid_must_match_leaf() -> None:
    gpu = make_gpu()
    _, ev = make_evidence(gpu, opaque=default_opaque(fwid=b"\x22" * 48))
    with pytest.raises(VerificationError, match="FWID"):
        verify(ev, now=NOW, anchors=[gpu.anchor])


def test_leaf_key_must_be_p384() -> None:
    gpu = make_gpu(leaf_key=ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]
    raw = make_transcript(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(VerificationError, match="P-384"):
        verify(GpuEvidence(parse_transcript(raw), gpu.chain_pem), now=NOW, anchors=[gpu.anchor])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("declared_nonce", b"\x07" * 32),
        ("declared_arch", "BLACKWELL"),
        ("declared_driver_version", "550.90.07"),
        ("declared_vbios_version", "96.00.9F.00.01"),
    ],
)
def test_declared_metadata_must_match_signed_values(field: str, value: object) -> None:
    gpu, ev = make_evidence()
    with pytest.raises(VerificationError, match="declared"):
        verify(replace(ev, **{field: value}), now=NOW, anchors=[gpu.anchor])


def test_declared_metadata_matching_is_accepted() -> None:
    gpu, ev = make_evidence()
    ok = replace(
        ev,
        declared_nonce=NONCE,
        declared_arch="hopper",
        declared_driver_version="590.12",
        declared_vbios_version="96.00.a5.00.01",
    )
    verify(ok, now=NOW, anchors=[gpu.anchor])


def test_emulated_anchor_marks_evidence() -> None:
    gpu, ev = make_evidence(make_gpu(emulated=True))
    assert verify(ev, now=NOW, anchors=[gpu.anchor]).emulated


def test_architecture_of_chips() -> None:
    for chip, arch in (("GH100", "HOPPER"), ("GB100", "BLACKWELL"), ("XY123", None)):
        leaf = x509.load_pem_x509_certificates(make_gpu(chip=chip).chain_pem)[0]
        assert architecture_of(leaf) == arch


def nvtrust_json(entries: list[tuple[FakeGpu, bytes]], **overrides: object) -> bytes:
    doc = []
    for gpu, raw in entries:
        entry: dict[str, object] = {
            "arch": "HOPPER",
            "certificate": base64.b64encode(gpu.chain_pem).decode(),
            "driver_version": "590.12",
            "evidence": base64.b64encode(raw).decode(),
            "nonce": NONCE.hex(),
            "vbios_version": "96.00.A5.00.01",
            "version": "1.0",
        }
        entry.update(overrides)
        doc.append(entry)
    return json.dumps(doc).encode()


def test_nvtrust_loader_round_trip() -> None:
    gpus = [make_gpu(), make_gpu()]
    data = nvtrust_json([(g, make_transcript(g.key)) for g in gpus])
    loaded = load_nvtrust_evidence(data)
    assert [e.source for e in loaded] == ["nvtrust[0]", "nvtrust[1]"]
    for gpu, ev in zip(gpus, loaded, strict=True):
        assert ev.declared_nonce == NONCE and ev.declared_arch == "HOPPER"
        verify(ev, now=NOW, anchors=[gpu.anchor], nonce=NONCE)
    # Chains swapped between GPUs: the transcript is not signed by that device.
    swapped = replace(loaded[0], certificate_chain_pem=loaded[1].certificate_chain_pem)
    with pytest.raises(VerificationError):
        verify(swapped, now=NOW, anchors=[gpus[1].anchor])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b"[]",
        b"[1]",
        b'[{"evidence": "AA==", "evidence": "AA=="}]',
        b'[{"certificate": "!!", "evidence": "AA=="}]',
        b'[{"certificate": "AA==", "evidence": 5}]',
        b'[{"certificate": "AA==", "evidence": "AA=="}]',
        b"[" * 100000,
    ],
)
def test_nvtrust_loader_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ParseError):
        load_nvtrust_evidence(data)


@pytest.mark.parametrize("nonce", ["00", "zz" * 32, "ab" * 31, "0x" + "ab" * 32, 5])
def test_nvtrust_loader_rejects_bad_nonce(nonce: object) -> None:
    gpu = make_gpu()
    with pytest.raises(ParseError):
        load_nvtrust_evidence(nvtrust_json([(gpu, make_transcript(gpu.key))], nonce=nonce))


def test_trustee_loader() -> None:
    gpu = make_gpu()
    raw = make_transcript(gpu.key)
    ev = load_trustee_evidence(raw.hex() + "\n", gpu.chain_pem)
    assert ev.transcript.raw == raw and ev.source == "trustee"
    verify(ev, now=NOW, anchors=[gpu.anchor])
    with pytest.raises(ParseError):
        load_trustee_evidence(raw.hex(), b"x" * (65 * 1024))


def test_fwid_extension_dice_tcb_info_form() -> None:
    info = _DiceTcbInfo()
    info["vendor"] = _ctx(char.UTF8String(), 0).clone("NVIDIA")
    fwids = _ctx(_FwidList(), 6, True).clone()
    fwid = _Fwid()
    fwid["hashAlg"] = univ.ObjectIdentifier(SHA384_OID)
    fwid["digest"] = univ.OctetString(FWID)
    fwids.append(fwid)
    info["fwids"] = fwids
    der = bytes(encoder.encode(info))
    assert parse_fwid_extension_value(der).digest == FWID


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        b"\x30\x03\x02\x01\x01",
        fwid_extension(FWID, ec.generate_private_key(ec.SECP384R1()).public_key()) + b"\0",
        fwid_extension(FWID[:47], ec.generate_private_key(ec.SECP384R1()).public_key()),
        b"\x04\x02ab",
    ],
)
def test_fwid_extension_malformed(der: bytes) -> None:
    with pytest.raises(ParseError):
        parse_fwid_extension_value(der)


def test_leaf_fwid_absent_is_none() -> None:
    leaf = x509.load_pem_x509_certificates(make_gpu(fwid=None).chain_pem)[0]
    assert leaf_fwid(leaf) is None
