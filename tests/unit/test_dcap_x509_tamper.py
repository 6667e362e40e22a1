"""Tampered certificates and CRLs must only ever produce teeflow errors (fail closed).

``cryptography`` parses certificate fields lazily, so a flipped bit can surface as
``InvalidVersion``, ``DuplicateExtension``, ``UnsupportedAlgorithm``, ``ValueError`` …
at any later field access. These tests flip bits at every byte position of small test
certificates / CRLs (seeded, deterministic) and also build *validly signed* certificates
whose lazily parsed fields are malformed, then feed them to ``verify_chain``,
``load_pem_chain``, ``check_crl``, ``IntelCollateral.from_bytes`` and
``verify_collateral``, asserting the exact teeflow error type that escapes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from teeflow.attestation.dcap.chain import check_crl, load_pem_chain, verify_chain
from teeflow.attestation.dcap.collateral import IntelCollateral, verify_collateral
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, Error, ParseError, VerificationError

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, tzinfo=UTC)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
# ecdsa-with-SHA256 AlgorithmIdentifier (RFC 5758 section 3.2), DER.
ECDSA_SHA256_ALGID = bytes.fromhex("300a06082a8648ce3d040302")
MASKS = (0x01, 0x80, 0xFF)

# Flipped serial numbers can turn negative: cryptography warns (and still loads them).
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")


@dataclass
class Node:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(DER)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn: str, issuer: Node | None, *, ca: bool) -> Node:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return Node(key, builder.sign(issuer.key if issuer else key, hashes.SHA256()))


def make_crl(issuer: Node, revoked: tuple[int, ...] = ()) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(T0)
        .next_update(T0 + timedelta(days=365))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(T0).build()
        )
    return builder.sign(issuer.key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, Node]:
    root = make_cert("Tamper Root CA", None, ca=True)
    inter = make_cert("Tamper PCK CA", root, ca=True)
    leaf = make_cert("Tamper PCK Certificate", inter, ca=False)
    signing = make_cert("Tamper TCB Signing", root, ca=False)
    return {"root": root, "inter": inter, "leaf": leaf, "signing": signing}


def anchor(node: Node) -> TrustAnchor:
    return TrustAnchor(certificate=node.cert, name="tamper test root", emulated=True)


def flips(der: bytes) -> list[bytes]:
    """Every byte position XORed with each mask: 3 * len(der) variants (deterministic)."""
    return [der[:i] + bytes([der[i] ^ m]) + der[i + 1 :] for i in range(len(der)) for m in MASKS]


def load_or_none(der: bytes) -> x509.Certificate | None:
    """The mutated certificate, or None when cryptography rejects it at load time."""
    try:
        return x509.load_der_x509_certificate(der)
    except Exception:  # load-time rejection in any form is fine here
        return None


def to_pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n".encode()


# ------------------------------------------------------------------ minimal DER surgery


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _children(der: bytes) -> list[bytes]:
    """The encoded children (full TLVs) of one constructed DER element."""

    def header(buf: bytes, pos: int) -> tuple[int, int]:
        first = buf[pos + 1]
        if first < 0x80:
            return 2, first
        k = first & 0x7F
        return 2 + k, int.from_bytes(buf[pos + 2 : pos + 2 + k], "big")

    hlen, clen = header(der, 0)
    content = der[hlen : hlen + clen]
    out, pos = [], 0
    while pos < len(content):
        h, n = header(content, pos)
        out.append(content[pos : pos + h + n])
        pos += h + n
    return out


def resign(tbs_children: list[bytes], issuer: Node, algid: bytes = ECDSA_SHA256_ALGID) -> bytes:
    """A certificate (DER) over the given TBS children, validly signed by ``issuer``."""
    tbs = _tlv(0x30, b"".join(tbs_children))
    sig = issuer.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, tbs + algid + _tlv(0x03, b"\x00" + sig))


def tbs_parts(node: Node) -> list[bytes]:
    return _children(node.cert.tbs_certificate_bytes)


def with_version(node: Node, issuer: Node, version: int) -> bytes:
    parts = tbs_parts(node)
    assert parts[0][:1] == b"\xa0"  # [0] EXPLICIT Version
    return resign([_tlv(0xA0, _tlv(0x02, bytes([version]))), *parts[1:]], issuer)


def with_duplicate_extension(node: Node, issuer: Node) -> bytes:
    parts = tbs_parts(node)
    ext_wrapper = parts[-1]
    assert ext_wrapper[:1] == b"\xa3"  # [3] EXPLICIT Extensions
    items = _children(_children(ext_wrapper)[0])
    doubled = _tlv(0xA3, _tlv(0x30, b"".join([items[0], *items])))
    return resign([*parts[:-1], doubled], issuer)


def with_subject_value_tag(node: Node, issuer: Node, tag: int) -> bytes:
    parts = tbs_parts(node)
    subject = parts[5]  # version, serial, signature, issuer, validity, subject
    rdn = _children(subject)[0]
    atv = _children(rdn)[0]
    oid, value = _children(atv)
    bad_value = bytes([tag]) + value[1:]
    new_subject = _tlv(0x30, _tlv(0x31, _tlv(0x30, oid + bad_value)))
    return resign([*parts[:5], new_subject, *parts[6:]], issuer)


def with_unknown_signature_algorithm(node: Node, issuer: Node) -> bytes:
    unknown = bytes.fromhex("300a06082a8648ce3d040309")  # 1.2.840.10045.4.3.9 (unassigned)
    parts = tbs_parts(node)
    return resign([parts[0], parts[1], unknown, *parts[3:]], issuer, algid=unknown)


def with_garbage_extension_value(node: Node, issuer: Node) -> bytes:
    """BasicConstraints extnValue replaced by bytes that are not a BasicConstraints."""
    parts = tbs_parts(node)
    exts = _children(_children(parts[-1])[0])
    bc_oid, critical, _value = _children(exts[0])
    broken = _tlv(0x30, bc_oid + critical + _tlv(0x04, b"\x02\x01\x05"))
    new_exts = _tlv(0xA3, _tlv(0x30, broken + b"".join(exts[1:])))
    return resign([*parts[:-1], new_exts], issuer)


TARGETED: dict[str, Callable[[Node, Node], bytes]] = {
    "version 6": lambda n, i: with_version(n, i, 5),
    "version 4": lambda n, i: with_version(n, i, 3),
    "duplicate extension": with_duplicate_extension,
    "subject value as INTEGER": lambda n, i: with_subject_value_tag(n, i, 0x02),
    "subject value as BOOLEAN": lambda n, i: with_subject_value_tag(n, i, 0x01),
    "unknown signature algorithm": with_unknown_signature_algorithm,
    "garbage BasicConstraints": with_garbage_extension_value,
}


# ------------------------------------------------------------------ verify_chain


def test_bit_flips_in_intermediate_only_raise_verification_error(pki: dict[str, Node]) -> None:
    a, inter, leaf = anchor(pki["root"]), pki["inter"], pki["leaf"]
    crl = make_crl(inter)
    rejected_at_load = checked = 0
    for der in flips(inter.der):
        cert = load_or_none(der)
        if cert is None:
            rejected_at_load += 1
            continue
        checked += 1
        for chain in ([leaf.cert, cert], [leaf.cert, cert, pki["root"].cert]):
            with pytest.raises(VerificationError):
                verify_chain(chain, [a], NOW, crls=[crl])
    assert checked > len(inter.der)  # most flips load; the lazy paths are exercised
    assert verify_chain([leaf.cert, inter.cert], [a], NOW, crls=[crl]) is a


def test_bit_flips_in_leaf_only_raise_verification_error(pki: dict[str, Node]) -> None:
    a, inter = anchor(pki["root"]), pki["inter"]
    for der in flips(pki["leaf"].der):
        cert = load_or_none(der)
        if cert is not None:
            with pytest.raises(VerificationError):
                verify_chain([cert, inter.cert], [a], NOW)


def test_bit_flips_in_carried_root_copy_are_rejected(pki: dict[str, Node]) -> None:
    # A tampered copy of the anchor carried at the end of the chain is never the anchor.
    a, root = anchor(pki["root"]), pki["root"]
    chain = [pki["leaf"].cert, pki["inter"].cert]
    for der in flips(root.der):
        cert = load_or_none(der)
        if cert is None:
            continue
        if cert.public_bytes(DER) == root.der:  # pragma: no cover - lenient re-encoding
            continue
        with pytest.raises(VerificationError):
            verify_chain([*chain, cert], [a], NOW)


def test_bit_flips_in_crl_only_raise_teeflow_errors(pki: dict[str, Node]) -> None:
    a, inter = anchor(pki["root"]), pki["inter"]
    chain = [pki["leaf"].cert, inter.cert]
    good = make_crl(inter, (12345,)).public_bytes(DER)
    for der in flips(good):
        try:
            crl = x509.load_der_x509_crl(der)
        except Exception:  # load-time rejection in any form is fine here
            continue
        try:
            verify_chain(chain, [a], NOW, crls=[crl])
        except Error as exc:
            assert isinstance(exc, VerificationError), type(exc)
        try:
            check_crl(crl, inter.cert, NOW)
        except Error as exc:
            assert isinstance(exc, CollateralError), type(exc)


@pytest.mark.parametrize("case", sorted(TARGETED))
def test_validly_signed_malformed_intermediate(pki: dict[str, Node], case: str) -> None:
    root, inter, leaf = pki["root"], pki["inter"], pki["leaf"]
    der = TARGETED[case](inter, root)
    cert = load_or_none(der)
    if cert is not None:
        with pytest.raises(VerificationError) as info:
            verify_chain([leaf.cert, cert], [anchor(root)], NOW)
        assert type(info.value) is VerificationError
    with pytest.raises(ParseError):
        load_pem_chain(to_pem(der))


@pytest.mark.parametrize("case", sorted(TARGETED))
def test_validly_signed_malformed_leaf(pki: dict[str, Node], case: str) -> None:
    root, inter, leaf = pki["root"], pki["inter"], pki["leaf"]
    der = TARGETED[case](leaf, inter)
    cert = load_or_none(der)
    if cert is not None:
        with pytest.raises(VerificationError) as info:
            verify_chain([cert, inter.cert], [anchor(root)], NOW)
        assert type(info.value) is VerificationError


def test_targeted_mutations_reach_lazy_parsing(pki: dict[str, Node]) -> None:
    """Sanity: the targeted certificates load and only fail on a later field access."""
    lazily_broken = 0
    for build in TARGETED.values():
        cert = load_or_none(build(pki["inter"], pki["root"]))
        if cert is None:
            continue
        try:
            _ = (cert.version, cert.subject.rfc4514_string(), cert.extensions)
            _ = cert.signature_hash_algorithm
        except Exception:  # any lazy failure counts here
            lazily_broken += 1
    assert lazily_broken >= 4


# ------------------------------------------------------------------ collateral


def _sign_body(key: ec.EllipticCurvePrivateKey, wrapper: str, inner: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(inner, ec.ECDSA(hashes.SHA256())))
    sig = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
    return b'{"' + wrapper.encode() + b'":' + inner + b',"signature":"' + sig.encode() + b'"}'


def _doc(extra: dict[str, object]) -> bytes:
    base: dict[str, object] = {
        "version": 2,
        "issueDate": "2025-05-20T00:00:00Z",
        "nextUpdate": "2025-06-20T00:00:00Z",
        "tcbEvaluationDataNumber": 1,
    }
    return json.dumps({**base, **extra}).encode()


@pytest.fixture(scope="module")
def parts(pki: dict[str, Node]) -> dict[str, bytes]:
    signing = pki["signing"]
    tcb = _doc(
        {
            "fmspc": "00A067110000",
            "pceId": "0000",
            "tcbType": 0,
            "tcbLevels": [
                {
                    "tcb": {**{f"sgxtcbcomp{i:02d}svn": 1 for i in range(1, 17)}, "pcesvn": 1},
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }
    )
    qe = _doc(
        {
            "id": "QE",
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11" + "00" * 15,
            "attributesMask": "FB" + "FF" * 7 + "00" * 8,
            "mrsigner": "00" * 32,
            "isvprodid": 1,
            "tcbLevels": [
                {"tcb": {"isvsvn": 1}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}
            ],
        }
    )
    crl_window = {"last": NOW - timedelta(days=10), "nxt": NOW + timedelta(days=20)}
    pck_crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki["inter"].cert.subject)
        .last_update(crl_window["last"])
        .next_update(crl_window["nxt"])
        .sign(pki["inter"].key, hashes.SHA256())
    )
    return {
        "tcb_info": _sign_body(signing.key, "tcbInfo", tcb),
        "qe_identity": _sign_body(signing.key, "enclaveIdentity", qe),
        "pck_crl": pck_crl.public_bytes(DER),
        "root_ca_crl": make_crl(pki["root"]).public_bytes(DER),
        "tcb_info_issuer_chain": to_pem(signing.der) + to_pem(pki["root"].der),
        "pck_crl_issuer_chain": to_pem(pki["inter"].der),
    }


def _from_bytes_then_verify(parts: dict[str, bytes], root: Node, **override: bytes) -> None:
    """Build and verify; only CollateralError (build) or VerificationError (verify) escape."""
    try:
        col = IntelCollateral.from_bytes(**{**parts, **override})  # type: ignore[arg-type]
    except Error as exc:
        assert type(exc) is CollateralError, type(exc)
        return
    try:
        verify_collateral(col, [anchor(root)], NOW)
    except Error as exc:
        assert isinstance(exc, VerificationError), type(exc)


def test_untampered_synthetic_collateral_verifies(
    pki: dict[str, Node], parts: dict[str, bytes]
) -> None:
    col = IntelCollateral.from_bytes(**parts)  # type: ignore[arg-type]
    assert verify_collateral(col, [anchor(pki["root"])], NOW).certificate == pki["root"].cert


@pytest.mark.parametrize("node", ["signing", "root"])
def test_bit_flips_in_tcb_signing_chain(
    pki: dict[str, Node], parts: dict[str, bytes], node: str
) -> None:
    other = "root" if node == "signing" else "signing"
    for der in flips(pki[node].der):
        pair = (der, pki[other].der) if node == "signing" else (pki[other].der, der)
        chain = to_pem(pair[0]) + to_pem(pair[1])
        _from_bytes_then_verify(parts, pki["root"], tcb_info_issuer_chain=chain)


def test_bit_flips_in_pck_crl_issuer_chain(pki: dict[str, Node], parts: dict[str, bytes]) -> None:
    for der in flips(pki["inter"].der):
        _from_bytes_then_verify(parts, pki["root"], pck_crl_issuer_chain=to_pem(der))


@pytest.mark.parametrize("name", ["pck_crl", "root_ca_crl"])
def test_bit_flips_in_crls(pki: dict[str, Node], parts: dict[str, bytes], name: str) -> None:
    for der in flips(parts[name]):
        _from_bytes_then_verify(parts, pki["root"], **{name: der})


@pytest.mark.parametrize("case", sorted(TARGETED))
def test_validly_signed_malformed_signing_certificate(
    pki: dict[str, Node], parts: dict[str, bytes], case: str
) -> None:
    der = TARGETED[case](pki["signing"], pki["root"])
    with pytest.raises(CollateralError) as info:
        IntelCollateral.from_bytes(  # type: ignore[arg-type]
            **{**parts, "tcb_info_issuer_chain": to_pem(der) + to_pem(pki["root"].der)}
        )
    assert type(info.value) is CollateralError


def test_collateral_built_directly_from_malformed_objects(
    pki: dict[str, Node], parts: dict[str, bytes]
) -> None:
    """An IntelCollateral constructed without from_bytes still fails closed in verify."""
    col = IntelCollateral.from_bytes(**parts)  # type: ignore[arg-type]
    for build in TARGETED.values():
        cert = load_or_none(build(pki["signing"], pki["root"]))
        if cert is None:
            continue
        tampered = IntelCollateral(
            tcb_info=col.tcb_info,
            qe_identity=col.qe_identity,
            pck_crl=col.pck_crl,
            root_ca_crl=col.root_ca_crl,
            tcb_info_issuer_chain=(cert, pki["root"].cert),
            qe_identity_issuer_chain=col.qe_identity_issuer_chain,
            pck_crl_issuer_chain=col.pck_crl_issuer_chain,
        )
        with pytest.raises(VerificationError):
            verify_collateral(tampered, [anchor(pki["root"])], NOW)


# ------------------------------------------------------------------ unsigned malleability


def _with_unused_bits(node: Node, issuer: Node) -> bytes:
    """``node`` re-signed by ``issuer`` with the signature BIT STRING's unused-bits byte 1.

    cryptography accepts that when the last signature byte's low bit is 0 (DER), so the
    certificate is re-signed until it is (ECDSA signatures are randomised).
    """
    for _ in range(200):
        der = resign(tbs_parts(node), issuer)
        if der[-1] & 1 == 0:
            sig_len = len(x509.load_der_x509_certificate(der).signature)
            pos = len(der) - sig_len - 1
            assert der[pos] == 0
            return der[:pos] + b"\x01" + der[pos + 1 :]
    raise AssertionError("no even signature in 200 tries")  # pragma: no cover


def test_signature_bit_string_unused_bits_are_rejected(pki: dict[str, Node]) -> None:
    # The unused-bits byte is outside the signed TBS: without an explicit check the
    # mutated certificate would verify (same TBS, same signature bytes).
    root, inter, leaf = pki["root"], pki["inter"], pki["leaf"]
    der = _with_unused_bits(inter, root)
    cert = x509.load_der_x509_certificate(der)
    assert cert.tbs_certificate_bytes == inter.cert.tbs_certificate_bytes
    with pytest.raises(VerificationError, match="unused bits") as info:
        verify_chain([leaf.cert, cert], [anchor(root)], NOW)
    assert type(info.value) is VerificationError
    with pytest.raises(ParseError):
        load_pem_chain(to_pem(der))


def test_crl_signature_bit_string_unused_bits_are_rejected(
    pki: dict[str, Node], parts: dict[str, bytes]
) -> None:
    inter = pki["inter"]
    for _ in range(200):
        der = make_crl(inter).public_bytes(DER)
        if der[-1] & 1 == 0:
            break
    crl = x509.load_der_x509_crl(der)
    pos = len(der) - len(crl.signature) - 1
    mutated = der[:pos] + b"\x01" + der[pos + 1 :]
    bad = x509.load_der_x509_crl(mutated)
    with pytest.raises(CollateralError, match="unused bits"):
        check_crl(bad, inter.cert, NOW)
    with pytest.raises(CollateralError, match="pck_crl"):
        IntelCollateral.from_bytes(**{**parts, "pck_crl": mutated})  # type: ignore[arg-type]
