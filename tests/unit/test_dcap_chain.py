"""X.509 chain / CRL checks (teeflow.attestation.dcap.chain) and collateral verification
on a synthetic Intel-like PKI built with ``cryptography`` in the test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from teeflow.attestation.dcap.chain import check_crl, load_pem_chain, verify_chain
from teeflow.attestation.dcap.collateral import IntelCollateral, verify_collateral
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, ParseError, VerificationError

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Node:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_cert(
    cn: str,
    issuer: Node | None,
    *,
    ca: bool,
    path_length: int | None = None,
    not_before: datetime = T0,
    not_after: datetime = T0 + timedelta(days=3650),
    key: ec.EllipticCurvePrivateKey | None = None,
    serial: int | None = None,
) -> Node:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    )
    signer = issuer.key if issuer else key
    return Node(key, builder.sign(signer, hashes.SHA256()))


def make_crl(
    issuer: Node,
    revoked: tuple[int, ...] = (),
    *,
    last: datetime = T0,
    nxt: datetime = T0 + timedelta(days=365),
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(last)
        .next_update(nxt)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(T0).build()
        )
    return builder.sign(signer or issuer.key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, Node]:
    root = make_cert("Test Root CA", None, ca=True, path_length=1)
    inter = make_cert("Test PCK CA", root, ca=True, path_length=0)
    leaf = make_cert("Test PCK Certificate", inter, ca=False)
    return {"root": root, "inter": inter, "leaf": leaf}


def anchor(node: Node) -> TrustAnchor:
    return TrustAnchor(certificate=node.cert, name="test root", emulated=True)


def pem(*nodes: Node) -> bytes:
    return b"".join(n.cert.public_bytes(serialization.Encoding.PEM) for n in nodes)


# ------------------------------------------------------------------ load_pem_chain


def test_load_pem_chain_round_trip(pki: dict[str, Node]) -> None:
    expected = [pki["leaf"].cert, pki["inter"].cert, pki["root"].cert]
    data = pem(pki["leaf"], pki["inter"], pki["root"])
    assert load_pem_chain(data) == expected
    # Whitespace around and between blocks, CRLF line ends and trailing NULs are allowed.
    spaced = b"\n  " + data.replace(b"-----\n-----BEGIN", b"-----\n\n\t-----BEGIN") + b"\n\x00\x00"
    assert load_pem_chain(spaced) == expected
    assert load_pem_chain(data.replace(b"\n", b"\r\n") + b"\x00") == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"x" * (64 * 1024 + 1),
    ],
)
def test_load_pem_chain_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ParseError):
        load_pem_chain(data)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda p: b"junk before\n" + p,
        lambda p: p + b"trailing text\n",
        lambda p: p + b"\x00junk",
        lambda p: p + b"\x00\n",
        lambda p: p.replace(b"-----\n-----BEGIN", b"-----\n# comment\n-----BEGIN"),
        lambda p: p.replace(b"CERTIFICATE-----\nMII", b"CERTIFICATE-----\nProc-Type: 4\n\nMII", 1),
        lambda p: p + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        lambda p: (
            p.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----", 1)[:-1] + b"x"
        ),
    ],
)
def test_load_pem_chain_rejects_text_outside_blocks(pki: dict[str, Node], wrap: Any) -> None:
    data = wrap(pem(pki["leaf"], pki["inter"]))
    with pytest.raises(ParseError):
        load_pem_chain(data)


def test_load_pem_chain_is_bounded(pki: dict[str, Node]) -> None:
    with pytest.raises(ParseError, match="limit 2"):
        load_pem_chain(pem(pki["leaf"], pki["inter"], pki["root"]), max_certs=2)


# ------------------------------------------------------------------ verify_chain


def test_chain_with_and_without_root(pki: dict[str, Node]) -> None:
    a = anchor(pki["root"])
    chain = [pki["leaf"].cert, pki["inter"].cert]
    assert verify_chain(chain, [a], NOW) is a
    assert verify_chain([*chain, pki["root"].cert], [a], NOW) is a


def test_chain_picks_the_matching_anchor(pki: dict[str, Node]) -> None:
    other = anchor(make_cert("Other Root", None, ca=True))
    a = anchor(pki["root"])
    assert verify_chain([pki["leaf"].cert, pki["inter"].cert], [other, a], NOW) is a


def test_root_in_chain_is_not_trusted_by_itself(pki: dict[str, Node]) -> None:
    evil_root = make_cert("Test Root CA", None, ca=True)  # same name, other key
    evil_inter = make_cert("Test PCK CA", evil_root, ca=True)
    evil_leaf = make_cert("Test PCK Certificate", evil_inter, ca=False)
    chain = [evil_leaf.cert, evil_inter.cert, evil_root.cert]
    with pytest.raises(VerificationError, match="imitates a trust anchor"):
        verify_chain(chain, [anchor(pki["root"])], NOW)
    with pytest.raises(VerificationError, match="trusted root"):
        verify_chain(chain[:2], [anchor(pki["root"])], NOW)


def test_root_lookalike_with_anchor_subject_and_key_is_rejected(pki: dict[str, Node]) -> None:
    # Same subject and key as the anchor, different DER (a re-issued or tampered root copy):
    # only a byte-identical certificate is the anchor.
    reissued = make_cert("Test Root CA", None, ca=True, path_length=1, key=pki["root"].key)
    assert reissued.cert.public_bytes(serialization.Encoding.DER) != pki["root"].cert.public_bytes(
        serialization.Encoding.DER
    )
    a = anchor(pki["root"])
    chain = [pki["leaf"].cert, pki["inter"].cert]
    with pytest.raises(VerificationError, match="imitates a trust anchor") as info:
        verify_chain([*chain, reissued.cert], [a], NOW)
    assert type(info.value) is VerificationError
    # Same key under another name, or the anchor's name with another key: also rejected.
    same_key = make_cert("Other Name", None, ca=True, key=pki["root"].key)
    with pytest.raises(VerificationError, match="imitates a trust anchor"):
        verify_chain([*chain, same_key.cert], [a], NOW)
    # The genuine root (byte-identical) is accepted, as is a chain that omits it.
    assert verify_chain([*chain, pki["root"].cert], [a], NOW) is a
    assert verify_chain(chain, [a], NOW) is a


def test_lookalike_check_allows_each_of_several_anchors(pki: dict[str, Node]) -> None:
    # Two anchors sharing subject and key (old and re-issued root): each one's exact DER is
    # accepted as the chain's last certificate.
    reissued = make_cert("Test Root CA", None, ca=True, path_length=1, key=pki["root"].key)
    a, b = anchor(pki["root"]), anchor(reissued)
    chain = [pki["leaf"].cert, pki["inter"].cert]
    assert verify_chain([*chain, pki["root"].cert], [a, b], NOW) is a
    assert verify_chain([*chain, reissued.cert], [a, b], NOW) is b


def test_broken_links(pki: dict[str, Node]) -> None:
    a = anchor(pki["root"])
    with pytest.raises(VerificationError):
        verify_chain([pki["inter"].cert, pki["leaf"].cert], [a], NOW)
    # Same issuer name, different key: the signature check must fail.
    impostor = make_cert("Test PCK CA", pki["root"], ca=True, path_length=0)
    with pytest.raises(VerificationError, match="not signed"):
        verify_chain([pki["leaf"].cert, impostor.cert], [a], NOW)
    with pytest.raises(VerificationError, match="empty"):
        verify_chain([], [a], NOW)


def test_validity_window_is_checked_every_time(pki: dict[str, Node]) -> None:
    a = anchor(pki["root"])
    chain = [pki["leaf"].cert, pki["inter"].cert]
    verify_chain(chain, [a], NOW)  # warms the signature cache
    with pytest.raises(VerificationError, match="not valid at"):
        verify_chain(chain, [a], T0 - timedelta(seconds=1))
    with pytest.raises(VerificationError, match="not valid at"):
        verify_chain(chain, [a], T0 + timedelta(days=3651))
    with pytest.raises(VerificationError, match="timezone"):
        verify_chain(chain, [a], datetime(2025, 6, 1))


def test_issuer_must_be_a_ca(pki: dict[str, Node]) -> None:
    not_ca = make_cert("Not A CA", pki["root"], ca=False)
    leaf = make_cert("Leaf", not_ca, ca=False)
    with pytest.raises(VerificationError, match="not a CA"):
        verify_chain([leaf.cert, not_ca.cert], [anchor(pki["root"])], NOW)


def test_path_length_is_enforced(pki: dict[str, Node]) -> None:
    # inter has pathlen 0: it may not issue another CA that then issues a leaf.
    sub = make_cert("Sub CA", pki["inter"], ca=True)
    leaf = make_cert("Leaf", sub, ca=False)
    with pytest.raises(VerificationError, match="path length"):
        verify_chain([leaf.cert, sub.cert, pki["inter"].cert], [anchor(pki["root"])], NOW)


# ------------------------------------------------------------------ CRLs


def test_revoked_serial_is_rejected(pki: dict[str, Node]) -> None:
    a = anchor(pki["root"])
    chain = [pki["leaf"].cert, pki["inter"].cert]
    clean = make_crl(pki["inter"], (12345,))
    assert verify_chain(chain, [a], NOW, crls=[clean]) is a
    crl = make_crl(pki["inter"], (12345, pki["leaf"].cert.serial_number))
    with pytest.raises(VerificationError, match="certificate revoked") as info:
        verify_chain(chain, [a], NOW, crls=[crl])
    assert not isinstance(info.value, CollateralError)
    root_crl = make_crl(pki["root"], (pki["inter"].cert.serial_number,))
    with pytest.raises(VerificationError, match="certificate revoked"):
        verify_chain(chain, [a], NOW, crls=[root_crl])


def test_expired_or_future_crl_is_collateral_error(pki: dict[str, Node]) -> None:
    a = anchor(pki["root"])
    chain = [pki["leaf"].cert, pki["inter"].cert]
    expired = make_crl(pki["inter"], last=T0, nxt=T0 + timedelta(days=30))
    with pytest.raises(CollateralError, match="CRL expired/not yet valid"):
        verify_chain(chain, [a], NOW, crls=[expired])
    future = make_crl(pki["inter"], last=NOW + timedelta(days=1), nxt=NOW + timedelta(days=30))
    with pytest.raises(CollateralError, match="CRL expired/not yet valid"):
        check_crl(future, pki["inter"].cert, NOW)


def test_badly_signed_crl_is_collateral_error(pki: dict[str, Node]) -> None:
    forged = make_crl(pki["inter"], signer=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CollateralError, match="signature"):
        check_crl(forged, pki["inter"].cert, NOW)
    with pytest.raises(CollateralError, match="signature"):
        verify_chain(
            [pki["leaf"].cert, pki["inter"].cert], [anchor(pki["root"])], NOW, crls=[forged]
        )
    with pytest.raises(CollateralError, match="does not match"):
        check_crl(make_crl(pki["inter"]), pki["root"].cert, NOW)


# ------------------------------------------------------------------ synthetic collateral


def _sign_body(key: ec.EllipticCurvePrivateKey, wrapper: str, inner: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(inner, ec.ECDSA(hashes.SHA256())))
    sig = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
    return b'{"' + wrapper.encode() + b'":' + inner + b',"signature":"' + sig.encode() + b'"}'


def _tcb_info(issue: datetime, nxt: datetime) -> bytes:
    comps = [{"svn": 1}] * 16
    return json.dumps(
        {
            "id": "SGX",
            "version": 3,
            "issueDate": issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": nxt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fmspc": "00A067110000",
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tcbLevels": [
                {
                    "tcb": {"sgxtcbcomponents": comps, "pcesvn": 1},
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }
    ).encode()


def _qe_identity(issue: datetime, nxt: datetime) -> bytes:
    return json.dumps(
        {
            "id": "QE",
            "version": 2,
            "issueDate": issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nextUpdate": nxt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tcbEvaluationDataNumber": 1,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": "00" * 32,
            "isvprodid": 1,
            "tcbLevels": [
                {"tcb": {"isvsvn": 1}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}
            ],
        }
    ).encode()


@pytest.fixture(scope="module")
def collateral_parts(pki: dict[str, Node]) -> dict[str, object]:
    root = pki["root"]
    signing = make_cert("Test TCB Signing", root, ca=False)
    issue, nxt = NOW - timedelta(days=10), NOW + timedelta(days=20)
    return {
        "signing": signing,
        "tcb_info": _sign_body(signing.key, "tcbInfo", _tcb_info(issue, nxt)),
        "qe_identity": _sign_body(signing.key, "enclaveIdentity", _qe_identity(issue, nxt)),
        "pck_crl": make_crl(pki["inter"], last=issue, nxt=nxt).public_bytes(
            serialization.Encoding.DER
        ),
        "root_ca_crl": make_crl(root).public_bytes(serialization.Encoding.PEM),
        "tcb_info_issuer_chain": pem(signing, root),
        "pck_crl_issuer_chain": pem(pki["inter"]),
    }


def _build(parts: dict[str, object], **override: object) -> IntelCollateral:
    args = {k: v for k, v in parts.items() if k != "signing"}
    args.update(override)
    return IntelCollateral.from_bytes(**args)  # type: ignore[arg-type]


def test_synthetic_collateral_verifies_and_caches(
    pki: dict[str, Node], collateral_parts: dict[str, object]
) -> None:
    a = anchor(pki["root"])
    col = _build(collateral_parts, source="emulated")
    assert col.qe_identity_issuer_chain == col.tcb_info_issuer_chain
    assert verify_collateral(col, [a], NOW) is a
    assert verify_collateral(col, [a], NOW + timedelta(days=1)) is a  # cached path
    with pytest.raises(CollateralError, match="collateral expired: tcbInfo nextUpdate"):
        verify_collateral(col, [a], NOW + timedelta(days=21))
    with pytest.raises(CollateralError, match="not yet valid"):
        verify_collateral(col, [a], NOW - timedelta(days=11))
    with pytest.raises(VerificationError, match="trusted root"):
        verify_collateral(col, [anchor(make_cert("Other Root", None, ca=True))], NOW)


def test_synthetic_collateral_rejects_revoked_signing_cert(
    pki: dict[str, Node], collateral_parts: dict[str, object]
) -> None:
    signing = collateral_parts["signing"]
    assert isinstance(signing, Node)
    root_crl = make_crl(pki["root"], (signing.cert.serial_number,))
    col = _build(collateral_parts, root_ca_crl=root_crl.public_bytes(serialization.Encoding.DER))
    with pytest.raises(VerificationError, match="certificate revoked"):
        verify_collateral(col, [anchor(pki["root"])], NOW)


def test_synthetic_collateral_rejects_foreign_pck_crl(
    pki: dict[str, Node], collateral_parts: dict[str, object]
) -> None:
    forged = make_crl(pki["inter"], signer=ec.generate_private_key(ec.SECP256R1()))
    col = _build(collateral_parts, pck_crl=forged.public_bytes(serialization.Encoding.DER))
    with pytest.raises(CollateralError, match="CRL signature"):
        verify_collateral(col, [anchor(pki["root"])], NOW)


def test_synthetic_collateral_rejects_signature_by_other_key(
    pki: dict[str, Node], collateral_parts: dict[str, object]
) -> None:
    other = make_cert("Test TCB Signing", pki["root"], ca=False)
    col = _build(collateral_parts, tcb_info_issuer_chain=pem(other))
    with pytest.raises(CollateralError, match="tcbInfo"):
        verify_collateral(col, [anchor(pki["root"])], NOW)


def test_malformed_parts_are_collateral_errors(collateral_parts: dict[str, object]) -> None:
    with pytest.raises(CollateralError, match="pck_crl"):
        _build(collateral_parts, pck_crl=b"\x30\x03garbage")
    with pytest.raises(CollateralError, match="tcb_info"):
        _build(collateral_parts, tcb_info=b"{}")
    with pytest.raises(CollateralError, match="pck_crl_issuer_chain"):
        _build(collateral_parts, pck_crl_issuer_chain=b"nope")
