"""DCAP quote checks shared by the SGX and TDX verifiers (PCK chain, quote and QE report).

Both TEE pipelines verify the same ECDSA quote envelope (Intel SGX ECDSA Quote Library
API, Appendix A; Intel TDX DCAP Quoting Library API, Appendix A; Intel QVL
``QuoteVerifier::verify`` steps 4.1.2.4.x) before their TEE-specific collateral checks:

* :func:`check_ecdsa_header` — attestation key type 2 (ECDSA-256-with-P-256) and Intel's
  QE vendor ID;
* :func:`decode_pck_chain` / :func:`load_pck_chain` — certification data type 5 decoded
  strictly into certificates (leaf first) and the leaf's Intel SGX extension; cached per
  exact chain bytes;
* :func:`pck_chain_crls` — the collateral's PCK CRL (issuer must equal the PCK
  certificate's issuer) and Root CA CRL, plus caller-supplied CRLs;
* :func:`verify_pck_chain` — :func:`~teeflow.attestation.dcap.chain.verify_chain` memoised
  per (chain bytes, anchor objects, CRL objects); validity windows re-checked at every
  ``now``;
* :func:`check_quote_signature` — ECDSA P-256 SHA-256 by the attestation key over
  ``header || [v5 body descriptor] || body``;
* :func:`check_qe_report` — QE report signed by the PCK leaf key, QE report_data =
  SHA-256(attestation key || QE auth data) || 32 zero bytes;
* :func:`check_verify_inputs`, :func:`check_quote_type`, :func:`verify_quote_signatures`
  and :func:`check_tcb_info_pck` — the preamble, the header check, the signature steps
  above in order, and the TCB Info FMSPC / PCE-ID match, as both ``verify`` functions use
  them.

Every failure is a :class:`~teeflow.errors.VerificationError` (a bad CRL:
:class:`~teeflow.errors.CollateralError`).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.dcap.chain import (
    X509_ERRORS,
    parse_certificate_fields,
    verify_chain,
    x509_errors_as,
)
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.pck import PckExtensions, parse_pck_extensions
from teeflow.attestation.dcap.quote import ATT_KEY_TYPE_ECDSA_P256, INTEL_QE_VENDOR_ID, Quote
from teeflow.attestation.dcap.tcb_info import SignedTcbInfo
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, ParseError, VerificationError
from teeflow.hazmat.ecdsa import p256_public_key_from_raw, verify_p256_sha256

__all__ = [
    "check_ecdsa_header",
    "check_now",
    "check_qe_report",
    "check_quote_signature",
    "check_quote_type",
    "check_tcb_info_pck",
    "check_verify_inputs",
    "decode_pck_chain",
    "load_pck_chain",
    "pck_chain_crls",
    "quote_pck_chain_pem",
    "verify_pck_chain",
    "verify_quote_signatures",
]

_K = TypeVar("_K")
_V = TypeVar("_V")
_B = TypeVar("_B")
_MAX_CHAIN_CERTS = 8
_CACHE_LIMIT = 256
_PEM_CHAIN = re.compile(
    rb"(?:-----BEGIN CERTIFICATE-----\r?\n(?:[A-Za-z0-9+/=]{1,76}\r?\n){1,200}"
    rb"-----END CERTIFICATE-----(?:\r?\n|(?=\x00)|\Z))+\x00*"
)
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n((?:[A-Za-z0-9+/=]{1,76}\r?\n){1,200})"
    rb"-----END CERTIFICATE-----"
)
# chain bytes -> (certificates leaf first, PCK extensions of the leaf)
_CHAIN_CACHE: dict[bytes, tuple[tuple[x509.Certificate, ...], PckExtensions]] = {}
# (chain bytes, ids of the anchor certificates, ids of the CRLs) -> (anchor index, window
# start, window end, the anchor certificates and CRLs themselves): a successful verify_chain
# whose time-independent checks (signatures, CA constraints, revocation against these exact
# CRLs) passed; valid for any ``now`` inside the intersection of every certificate's and
# applicable CRL's validity window. The value keeps the keyed objects alive, so their ids
# cannot be reused by other objects while the entry exists.
_VerifiedKey = tuple[bytes, tuple[int, ...], tuple[int, ...]]
_VerifiedValue = tuple[int, datetime, datetime, tuple[object, ...]]
_VERIFIED_CACHE: dict[_VerifiedKey, _VerifiedValue] = {}


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def check_now(now: object) -> None:
    """Require a timezone-aware ``datetime``.

    Raises:
        VerificationError: ``now`` is not a datetime or is naive.
    """
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")


def check_ecdsa_header(quote: Quote) -> None:
    """Attestation key type 2 (ECDSA-256-with-P-256) and Intel's QE vendor ID.

    Raises:
        VerificationError: another key type or vendor ID.
    """
    header = quote.header
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise VerificationError(
            f"unsupported attestation key type {header.att_key_type} (need 2, ECDSA-P256)"
        )
    if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise VerificationError(f"QE vendor ID {header.qe_vendor_id.hex()} is not Intel's")


def _malformed(detail: str) -> VerificationError:
    return VerificationError(f"malformed PCK certificate chain: {detail}")


def decode_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Decode certification data type 5 strictly into certificates (leaf first).

    Accepted form: one or more ``-----BEGIN CERTIFICATE-----`` blocks of base64 lines
    (each at most 76 characters), lines ended by ``\\n`` or ``\\r\\n``, blocks separated
    only by one line break, then optional NUL padding. Each block's base64 must be
    canonical (re-encoding the decoded DER gives the same text, line breaks ignored) and
    the DER must be one certificate with nothing after it. So any change of a character
    is detected here or by the chain's signatures.

    Raises:
        VerificationError: "malformed PCK certificate chain: ..." for anything else.
    """
    if _PEM_CHAIN.fullmatch(pem) is None:
        raise _malformed("not a sequence of PEM CERTIFICATE blocks")
    blocks = _PEM_BLOCK.findall(pem)
    if not 1 <= len(blocks) <= _MAX_CHAIN_CERTS:
        raise _malformed(f"{len(blocks)} certificates")
    certs: list[x509.Certificate] = []
    for i, block in enumerate(blocks):
        text = block.replace(b"\r", b"").replace(b"\n", b"")
        try:
            der = binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _malformed(f"certificate #{i}: bad base64") from None
        if binascii.b2a_base64(der, newline=False) != text:
            raise _malformed(f"certificate #{i}: non-canonical base64")
        try:
            cert = x509.load_der_x509_certificate(der)
        except X509_ERRORS as exc:
            raise _malformed(f"certificate #{i}: {type(exc).__name__}") from None
        try:
            parse_certificate_fields(cert)  # cryptography parses lazily: force it here
        except ParseError as exc:
            raise _malformed(f"certificate #{i}: {exc}") from None
        if cert.public_bytes(Encoding.DER) != der:
            raise _malformed(f"certificate #{i}: bytes after the certificate")
        certs.append(cert)
    return tuple(certs)


def quote_pck_chain_pem(quote: Quote) -> bytes:
    """The quote's certification data type 5 bytes.

    Raises:
        VerificationError: the quote carries another certification data type (e.g. an
            encrypted PPID, which cannot be verified offline).
    """
    pem = quote.pck_chain_pem
    if pem is None:
        raise VerificationError(
            f"certification data type {quote.certification_data.cert_type} is not a PCK "
            "certificate chain (5)"
        )
    return pem


def load_pck_chain(pem: bytes) -> tuple[tuple[x509.Certificate, ...], PckExtensions]:
    """:func:`decode_pck_chain` plus the leaf's Intel SGX extension, cached per ``pem``.

    Returns:
        ``(certificates leaf first, PckExtensions of the leaf)``.

    Raises:
        VerificationError: malformed chain, or a missing/malformed SGX extension.
    """
    hit = _CHAIN_CACHE.get(pem)
    if hit is not None:
        return hit
    certs = decode_pck_chain(pem)
    try:
        pck = parse_pck_extensions(certs[0])
    except ParseError as exc:
        raise VerificationError(f"PCK certificate SGX extension: {exc}") from None
    _remember(_CHAIN_CACHE, pem, (certs, pck))
    return certs, pck


def pck_chain_crls(
    pck_cert: x509.Certificate,
    collateral: IntelCollateral | None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> list[x509.CertificateRevocationList]:
    """The CRLs applied to the PCK chain: ``crls`` then the collateral's PCK and Root CA CRLs.

    Raises:
        CollateralError: the collateral's PCK CRL is issued by another CA than the PCK
            certificate's issuer (QVL 4.1.2.4.6), or is malformed.
    """
    out = list(crls)
    if collateral is not None:
        pck_crl = collateral.pck_crl
        with x509_errors_as(CollateralError, "malformed PCK CRL"):
            if pck_crl.issuer != pck_cert.issuer:
                raise CollateralError(
                    f"PCK CRL issuer {pck_crl.issuer.rfc4514_string()!r} does not match the "
                    f"PCK certificate issuer {pck_cert.issuer.rfc4514_string()!r}"
                )
        out += [pck_crl, collateral.root_ca_crl]
    return out


def _window(
    certs: Sequence[x509.Certificate],
    anchor: TrustAnchor,
    crls: Sequence[x509.CertificateRevocationList],
) -> tuple[datetime, datetime] | None:
    """Intersection of the validity windows of the path and of every CRL that may apply."""
    path = [*certs, anchor.certificate]
    start = max(c.not_valid_before_utc for c in path)
    end = min(c.not_valid_after_utc for c in path)
    issuers = {c.issuer for c in certs}
    for crl in crls:
        if crl.issuer in issuers:
            nxt = crl.next_update_utc
            if nxt is None:
                return None
            start, end = max(start, crl.last_update_utc), min(end, nxt)
    return start, end


def verify_pck_chain(
    pem: bytes,
    certs: Sequence[x509.Certificate],
    anchors: Sequence[TrustAnchor],
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList],
) -> TrustAnchor:
    """Validate the PCK chain at ``now`` up to one of ``anchors`` with ``crls`` applied.

    ``verify_chain`` memoised per (``pem``, anchor certificate objects, CRL objects); a
    hit is only used when ``now`` lies inside every certificate's and applicable CRL's
    validity window, so expiry and revocation are still decided at every call.

    Args:
        pem: the chain bytes (cache key); certs: :func:`decode_pck_chain` of them.
        anchors: trusted roots; now: timezone-aware time; crls: from :func:`pck_chain_crls`.

    Returns:
        The anchor the chain terminates in.

    Raises:
        VerificationError: untrusted/look-alike root, bad signature, expired or revoked
            certificate. CollateralError: a malformed or badly signed CRL.
    """
    roots = tuple(a.certificate for a in anchors)
    key = (pem, tuple(map(id, roots)), tuple(map(id, crls)))
    hit = _VERIFIED_CACHE.get(key)
    if hit is not None and hit[1] <= now <= hit[2]:
        return anchors[hit[0]]
    anchor = verify_chain(certs, anchors, now, crls)
    with x509_errors_as(CollateralError, "malformed CRL"):
        window = _window(certs, anchor, crls)
    if window is not None:
        index = next(i for i, a in enumerate(anchors) if a is anchor)
        _remember(_VERIFIED_CACHE, key, (index, *window, (*roots, *crls)))
    return anchor


def check_quote_signature(quote: Quote) -> None:
    """ECDSA P-256 SHA-256 quote signature by the attestation key over ``quote.signed_bytes``.

    Raises:
        VerificationError: invalid attestation key point or bad signature.
    """
    sig_data = quote.signature_data
    attestation_key = p256_public_key_from_raw(sig_data.attestation_key)
    verify_p256_sha256(attestation_key, sig_data.signature, quote.signed_bytes, "quote signature")


def check_qe_report(quote: Quote, pck_cert: x509.Certificate) -> None:
    """QE report signature by the PCK key and its report_data binding (QVL 4.1.2.4.12-13).

    Raises:
        VerificationError: PCK key not P-256, bad QE report signature, or report_data
            other than SHA-256(attestation key || QE auth data) || 32 zero bytes.
    """
    sig_data = quote.signature_data
    qe = sig_data.qe_report_certification_data
    try:
        pck_key = pck_cert.public_key()
    except ValueError:
        raise VerificationError("PCK certificate public key is invalid") from None
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or not isinstance(
        pck_key.curve, ec.SECP256R1
    ):
        raise VerificationError("PCK certificate key is not an ECDSA P-256 key")
    verify_p256_sha256(
        pck_key, qe.qe_report_signature, qe.qe_report.to_bytes(), "QE report signature"
    )
    expected = hashlib.sha256(sig_data.attestation_key + qe.qe_auth_data).digest()
    report_data = qe.qe_report.report_data
    if report_data[:32] != expected or any(report_data[32:]):
        raise VerificationError("QE report_data does not bind the attestation key and QE auth data")


def check_verify_inputs(
    now: object,
    anchors: Sequence[TrustAnchor],
    collateral: IntelCollateral | None,
    *,
    signatures_only: bool,
) -> None:
    """The arguments every DCAP ``verify`` checks first.

    Raises:
        VerificationError: ``now`` is not timezone-aware, or ``anchors`` is empty.
        CollateralError: no collateral without ``signatures_only`` ("TCB status unknown").
    """
    check_now(now)
    if collateral is None and not signatures_only:
        raise CollateralError("no collateral: TCB status unknown")
    if not anchors:
        raise VerificationError("no trust anchors given")


def check_quote_type(quote: Quote, *, tee_type: int, body_type: type[_B], name: str) -> _B:
    """:func:`check_ecdsa_header`, then the quote's TEE type and body class.

    Args:
        tee_type: expected header TEE type (0 SGX, 0x81 TDX); body_type: expected body
            class; name: for the message (``"an SGX"``, ``"a TDX"``).

    Returns:
        The quote body.

    Raises:
        VerificationError: key type, vendor ID, or ``"not <name> quote (tee_type …)"``.
    """
    check_ecdsa_header(quote)
    body = quote.body
    if quote.header.tee_type != tee_type or not isinstance(body, body_type):
        raise VerificationError(f"not {name} quote (tee_type {quote.header.tee_type:#x})")
    return body


def verify_quote_signatures(
    quote: Quote,
    anchors: Sequence[TrustAnchor],
    now: datetime,
    collateral: IntelCollateral | None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> tuple[x509.Certificate, PckExtensions, TrustAnchor]:
    """DCAP steps 2-4: PCK chain (with :func:`pck_chain_crls`), quote signature, QE report.

    Returns:
        ``(pck leaf certificate, its SGX extension, the anchor the chain ends in)``.

    Raises:
        VerificationError: see :func:`load_pck_chain`, :func:`verify_pck_chain`,
            :func:`check_quote_signature`, :func:`check_qe_report`.
        CollateralError: see :func:`pck_chain_crls` and :func:`verify_pck_chain`.
    """
    pem = quote_pck_chain_pem(quote)
    certs, pck = load_pck_chain(pem)
    pck_cert = certs[0]
    all_crls = pck_chain_crls(pck_cert, collateral, crls)
    anchor = verify_pck_chain(pem, certs, anchors, now, all_crls)
    check_quote_signature(quote)
    check_qe_report(quote, pck_cert)
    return pck_cert, pck, anchor


def check_tcb_info_pck(info: SignedTcbInfo, pck: PckExtensions) -> None:
    """TCB Info FMSPC and PCE-ID equal to the PCK certificate's.

    Raises:
        CollateralError: naming the mismatch.
    """
    if info.fmspc != pck.fmspc:
        raise CollateralError(f"TCB Info FMSPC {info.fmspc.hex()} != PCK FMSPC {pck.fmspc.hex()}")
    if info.pce_id != pck.pce_id:
        raise CollateralError(
            f"TCB Info PCE-ID {info.pce_id.hex()} != PCK PCE-ID {pck.pce_id.hex()}"
        )
