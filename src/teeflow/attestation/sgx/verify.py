"""Verification of Intel SGX DCAP quotes (second step: parse -> verify -> appraise).

:func:`verify` is pure: time (``now``), trust anchors, collateral and CRLs are injected;
it never reads the wall clock or the network. Checks, in order (Intel SGX ECDSA Quote
Library API, Appendix A; Intel SGX PCK Certificate and CRL Profile Specification; Intel
QVL ``sgxAttestationVerifyQuote``):

1. header: attestation key type 2 (ECDSA-256-with-P-256), QE vendor ID = Intel's,
   SGX quote (tee_type 0, 384-byte report body);
2. PCK chain from certification data type 5, decoded strictly (:func:`decode_pck_chain`),
   validated at ``now`` up to one of ``anchors`` by
   :func:`~teeflow.attestation.dcap.chain.verify_chain` (a root included in the quote is
   only accepted if its DER equals an anchor; a look-alike is rejected) with the
   collateral's PCK and Root CA CRLs and the extra ``crls``;
3. quote signature (ECDSA P-256 SHA-256, attestation key, over header || body);
4. QE report signature by the PCK leaf key; QE report_data = SHA-256(attestation key ||
   QE auth data) || 32 zero bytes;
5. with collateral: :func:`~teeflow.attestation.dcap.collateral.verify_collateral`
   (signatures and validity windows at ``now``), TCB Info FMSPC / PCE-ID / id ("SGX") equal
   to the PCK certificate's, platform TCB level, QE Identity match and QE TCB level, and the
   converged TCB status.

Decoding a PCK chain (and its SGX extension) is cached per exact chain bytes; signature
checks of the chain links are cached by :mod:`teeflow.attestation.dcap.chain`. Validity
windows, CRLs and revocation are re-checked at every call.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
from teeflow.attestation.dcap.collateral import (
    IntelCollateral,
    converge_tcb_status,
    verify_collateral,
)
from teeflow.attestation.dcap.pck import PckExtensions, parse_pck_extensions
from teeflow.attestation.dcap.qe_identity import match_qe_report
from teeflow.attestation.dcap.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_SGX,
    EnclaveReport,
    Quote,
)
from teeflow.attestation.dcap.tcb_info import select_platform_tcb
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, ParseError, VerificationError
from teeflow.hazmat.ecdsa import p256_public_key_from_raw, verify_p256_sha256

__all__ = ["VerifiedSgxEvidence", "decode_pck_chain", "verify"]

_K = TypeVar("_K")
_V = TypeVar("_V")
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


@dataclass(frozen=True)
class VerifiedSgxEvidence:
    """The result of :func:`verify`: a quote whose signatures and chain checked out.

    Attributes:
        quote: the verified quote.
        pck_certificate: the PCK leaf certificate that signed the QE report.
        pck: its decoded Intel SGX extension (FMSPC, PCE-ID, TCB SVNs, SGX type).
        anchor: the trust anchor the PCK chain terminates in.
        verified_at: the ``now`` the checks used (UTC).
        platform_tcb: platform TCB level from TCB Info (None without collateral).
        qe_tcb: QE TCB level from QE Identity (None without collateral).
        tcb_status: converged status (None without collateral).
        advisory_ids: Intel advisories of the converged level (empty without collateral).
        collateral_verified: True if collateral was given and fully verified.
    """

    quote: Quote
    pck_certificate: x509.Certificate
    pck: PckExtensions
    anchor: TrustAnchor
    verified_at: datetime
    platform_tcb: TcbEvaluation | None
    qe_tcb: TcbEvaluation | None
    tcb_status: TcbStatus | None
    advisory_ids: tuple[str, ...]
    collateral_verified: bool

    @property
    def emulated(self) -> bool:
        """True if the chain ends in an emulation root (never hardware evidence)."""
        return self.anchor.emulated

    @property
    def report(self) -> EnclaveReport:
        """The enclave's SGX report body."""
        body = self.quote.body
        assert isinstance(body, EnclaveReport)  # guaranteed by verify()
        return body


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


def _load_chain(pem: bytes) -> tuple[tuple[x509.Certificate, ...], PckExtensions]:
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


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


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


def _verify_chain_cached(
    pem: bytes,
    certs: Sequence[x509.Certificate],
    anchors: Sequence[TrustAnchor],
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList],
) -> TrustAnchor:
    """``verify_chain`` memoised per (chain, anchors, CRLs); windows re-checked at ``now``."""
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


def _check_header(quote: Quote) -> EnclaveReport:
    header = quote.header
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise VerificationError(
            f"unsupported attestation key type {header.att_key_type} (need 2, ECDSA-P256)"
        )
    if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise VerificationError(f"QE vendor ID {header.qe_vendor_id.hex()} is not Intel's")
    if header.tee_type != TEE_TYPE_SGX or not isinstance(quote.body, EnclaveReport):
        raise VerificationError(f"not an SGX quote (tee_type {header.tee_type:#x})")
    return quote.body


def _check_qe(quote: Quote, pck_cert: x509.Certificate) -> None:
    sig_data = quote.signature_data
    qe = sig_data.qe_report_certification_data
    attestation_key = p256_public_key_from_raw(sig_data.attestation_key)
    verify_p256_sha256(attestation_key, sig_data.signature, quote.signed_bytes, "quote signature")
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


def _check_collateral(
    collateral: IntelCollateral,
    pck: PckExtensions,
    quote: Quote,
    anchors: Sequence[TrustAnchor],
    now: datetime,
) -> tuple[TcbEvaluation, TcbEvaluation, TcbEvaluation]:
    verify_collateral(collateral, anchors, now)
    tcb_info = collateral.tcb_info
    if tcb_info.id != "SGX":
        raise CollateralError(f"TCB Info is for {tcb_info.id!r}, not SGX")
    if tcb_info.fmspc != pck.fmspc:
        raise CollateralError(
            f"TCB Info FMSPC {tcb_info.fmspc.hex()} != PCK FMSPC {pck.fmspc.hex()}"
        )
    if tcb_info.pce_id != pck.pce_id:
        raise CollateralError(
            f"TCB Info PCE-ID {tcb_info.pce_id.hex()} != PCK PCE-ID {pck.pce_id.hex()}"
        )
    identity = collateral.qe_identity
    if identity.id != "QE":
        raise CollateralError(f"QE Identity is for {identity.id!r}, not the SGX QE")
    platform = select_platform_tcb(tcb_info, pck.tcb_components, pck.pcesvn)
    qe_tcb = match_qe_report(identity, quote.qe_report)
    return platform, qe_tcb, converge_tcb_status(platform, qe_tcb)


def verify(
    quote: Quote,
    *,
    anchors: Sequence[TrustAnchor],
    collateral: IntelCollateral | None,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    signatures_only: bool = False,
) -> VerifiedSgxEvidence:
    """Verify an SGX DCAP quote at time ``now`` (see the module docstring for the checks).

    Args:
        quote: from :func:`teeflow.attestation.sgx.parse_quote`.
        anchors: trusted roots (normally ``[intel_sgx_root_ca()]``; an emulation root
            only when the caller explicitly trusts it).
        collateral: Intel TCB Info, QE Identity and CRLs for the quote's FMSPC, or None.
        now: timezone-aware verification time.
        crls: extra CRLs applied to the PCK chain (each must be signed by the
            certificate it claims as issuer and current at ``now``).
        signatures_only: with ``collateral=None``, check only the quote, QE report and
            PCK chain (+ ``crls``); the TCB fields of the result are then None.

    Returns:
        :class:`VerifiedSgxEvidence`.

    Raises:
        VerificationError: any failed check (bad signature, key type, vendor ID,
            malformed/untrusted/expired/revoked PCK chain, QE binding, FMSPC mismatch,
            "no matching TCB level", QE Identity mismatch).
        CollateralError: no collateral without ``signatures_only`` ("TCB status
            unknown"); collateral or CRLs badly signed, expired or for another platform.
    """
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")
    if collateral is None and not signatures_only:
        raise CollateralError("no collateral: TCB status unknown")
    if not anchors:
        raise VerificationError("no trust anchors given")
    _check_header(quote)
    pem = quote.pck_chain_pem
    if pem is None:
        raise VerificationError(
            f"certification data type {quote.certification_data.cert_type} is not a PCK "
            "certificate chain (5)"
        )
    certs, pck = _load_chain(pem)
    pck_cert = certs[0]
    all_crls = list(crls)
    if collateral is not None:
        pck_crl = collateral.pck_crl
        with x509_errors_as(CollateralError, "malformed PCK CRL"):
            if pck_crl.issuer != pck_cert.issuer:
                raise CollateralError(
                    f"PCK CRL issuer {pck_crl.issuer.rfc4514_string()!r} does not match the "
                    f"PCK certificate issuer {pck_cert.issuer.rfc4514_string()!r}"
                )
        all_crls += [pck_crl, collateral.root_ca_crl]
    anchor = _verify_chain_cached(pem, certs, anchors, now, all_crls)
    _check_qe(quote, pck_cert)

    platform = qe_tcb = None
    status: TcbStatus | None = None
    advisories: tuple[str, ...] = ()
    if collateral is not None:
        platform, qe_tcb, combined = _check_collateral(collateral, pck, quote, anchors, now)
        status, advisories = combined.status, combined.advisory_ids
    return VerifiedSgxEvidence(
        quote=quote,
        pck_certificate=pck_cert,
        pck=pck,
        anchor=anchor,
        verified_at=now,
        platform_tcb=platform,
        qe_tcb=qe_tcb,
        tcb_status=status,
        advisory_ids=advisories,
        collateral_verified=collateral is not None,
    )
