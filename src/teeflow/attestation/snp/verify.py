"""Verification of AMD SEV-SNP attestation reports (parse -> **verify** -> appraise).

:func:`verify` is pure: the endorsement certificate, intermediates, trust anchors, CRL and
``now`` are injected; it never reads the clock or the network (fetching VCEKs and CRLs from
AMD's KDS is the collateral layer's job). Checks, in order (AMD SEV-SNP Firmware ABI
Specification #56860, "ATTESTATION_REPORT" and "Signature Formats"; AMD VCEK Certificate and
KDS Interface Specification #57230; VLEK Certificate Definition #58369):

1. the report is signed (SIGNING_KEY is VCEK or VLEK, MASK_CHIP_KEY clear) with
   SIGNATURE_ALGO 1 (ECDSA P-384 SHA-384);
2. the endorsement certificate's AMD extensions parse; its kind (hwID -> VCEK,
   csp_id -> VLEK) matches SIGNING_KEY; its key is an EC P-384 key;
3. product = the certificate's productName (``Milan-B0`` -> Milan), or the ``product``
   argument when the productName is not a known product; it must equal the ``product``
   argument when given and the product of the report's CPUID (v3+) when known;
4. chain VCEK -> ASK -> ARK or VLEK -> ASVK -> ARK: the intermediates default to AMD's
   shipped ASK / ASVK of the product and the anchors to the product's pinned ARK
   (:mod:`teeflow.attestation.trust.amd`); every link must be RSASSA-PSS with SHA-384 (the
   endorsement certificate's and the ARK's own); validated at ``now`` by
   :func:`teeflow.attestation.dcap.chain.verify_chain` (signatures, names, CA constraints,
   validity windows, exact-DER anchors); with ``crl`` (AMD KDS ``/vcek/v1/<product>/crl``)
   the CRL must be issued and signed by the ARK and current at ``now``, and no chain
   certificate may be on it;
5. the report signature (R, S little-endian, 72 bytes each, upper 24 bytes zero) over bytes
   ``[0, 0x2A0)`` with the endorsement key;
6. the certificate's TCB (blSPL/teeSPL/snpSPL/ucodeSPL, spl_4..7, fmcSPL on Turin) encoded
   in the product's layout equals REPORTED_TCB exactly; for a VCEK, hwID equals CHIP_ID
   (Turin: the first 8 bytes, the rest zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from teeflow.attestation.dcap.chain import X509_ERRORS, check_crl, verify_chain
from teeflow.attestation.snp.abi import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    AttestationReport,
    SigningKey,
    SnpProduct,
    TcbVersion,
)
from teeflow.attestation.snp.certs import AmdExtensions, parse_amd_extensions
from teeflow.attestation.trust import TrustAnchor
from teeflow.attestation.trust.amd import amd_ark, amd_ask, amd_asvk
from teeflow.errors import ParseError, VerificationError

__all__ = ["VerifiedSnpEvidence", "verify"]

_COMPONENT = 72
_P384_BYTES = 48


@dataclass(frozen=True)
class VerifiedSnpEvidence:
    """The result of :func:`verify`: a report whose signature and endorsement chain checked out.

    Attributes:
        report: the verified report.
        product: the product line (from the endorsement certificate).
        signing_key: ``SigningKey.VCEK`` or ``SigningKey.VLEK``.
        endorsement_certificate: the VCEK / VLEK certificate.
        extensions: its AMD extensions.
        anchor: the ARK trust anchor the chain terminates in.
        verified_at: the ``now`` the checks used.
        crl_checked: True when a CRL was given and applied.
    """

    report: AttestationReport
    product: SnpProduct
    signing_key: SigningKey
    endorsement_certificate: x509.Certificate
    extensions: AmdExtensions
    anchor: TrustAnchor
    verified_at: datetime
    crl_checked: bool

    @property
    def emulated(self) -> bool:
        """True if the chain ends in a teeflow emulation root (never hardware evidence)."""
        return self.anchor.emulated

    @property
    def reported_tcb(self) -> TcbVersion:
        """REPORTED_TCB decoded in the product's layout (equal to the certificate's TCB)."""
        return self.report.reported_tcb.for_product(self.product)

    @property
    def current_tcb(self) -> TcbVersion:
        """CURRENT_TCB decoded in the product's layout."""
        return self.report.current_tcb.for_product(self.product)

    @property
    def committed_tcb(self) -> TcbVersion:
        """COMMITTED_TCB decoded in the product's layout."""
        return self.report.committed_tcb.for_product(self.product)

    @property
    def launch_tcb(self) -> TcbVersion:
        """LAUNCH_TCB decoded in the product's layout."""
        return self.report.launch_tcb.for_product(self.product)


def _check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")


def _extensions(cert: x509.Certificate) -> AmdExtensions:
    try:
        return parse_amd_extensions(cert)
    except ParseError as exc:
        raise VerificationError(f"endorsement certificate: {exc}") from None


def _product(
    ext: AmdExtensions, report: AttestationReport, expected: SnpProduct | str | None
) -> SnpProduct:
    product = ext.product
    if product is None:
        if expected is None or str(expected) not in {p.value for p in SnpProduct}:
            raise VerificationError(f"unknown AMD productName {ext.product_name!r}")
        product = SnpProduct(str(expected))  # the chain must still end in its ARK
    if expected is not None and str(expected) != product.value:
        raise VerificationError(
            f"endorsement certificate is for {product.value}, expected {expected}"
        )
    cpuid = report.product
    if cpuid is not None and cpuid is not product:
        raise VerificationError(
            f"report CPUID says {cpuid.value}, endorsement certificate says {product.value}"
        )
    return product


def _check_pss_sha384(cert: x509.Certificate, what: str) -> None:
    try:
        oid = cert.signature_algorithm_oid
        digest = cert.signature_hash_algorithm
    except X509_ERRORS:
        raise VerificationError(f"{what}: malformed signature algorithm") from None
    if oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(digest, hashes.SHA384):
        raise VerificationError(f"{what} is not signed with RSASSA-PSS SHA-384")


def _default_intermediate(product: SnpProduct, vlek: bool) -> x509.Certificate:
    try:
        return amd_asvk(product) if vlek else amd_ask(product)
    except KeyError:
        raise VerificationError(
            f"no shipped AMD {'ASVK' if vlek else 'ASK'} for {product.value}; pass intermediates="
        ) from None


def _check_chain(
    cert: x509.Certificate,
    *,
    intermediates: Sequence[x509.Certificate] | None,
    anchors: Sequence[TrustAnchor] | None,
    product: SnpProduct,
    vlek: bool,
    now: datetime,
    crl: x509.CertificateRevocationList | None,
) -> TrustAnchor:
    chain_rest = (
        list(intermediates) if intermediates is not None else [_default_intermediate(product, vlek)]
    )
    if not chain_rest:
        raise VerificationError("no ASK/ASVK certificate in the endorsement chain")
    roots = list(anchors) if anchors is not None else [amd_ark(product)]
    if not roots:
        raise VerificationError("no trust anchors given")
    chain = [cert, *chain_rest]
    for i, c in enumerate(chain):
        _check_pss_sha384(c, "endorsement certificate" if i == 0 else f"chain certificate #{i}")
    anchor = verify_chain(chain, roots, now, [crl] if crl is not None else [])
    _check_pss_sha384(anchor.certificate, f"trust anchor {anchor.name!r}")
    try:
        anchor.certificate.verify_directly_issued_by(anchor.certificate)
    except X509_ERRORS:
        raise VerificationError(f"trust anchor {anchor.name!r} is not self-signed") from None
    if crl is not None:
        check_crl(crl, anchor.certificate, now)  # the KDS CRL is issued by the ARK itself
    return anchor


def _check_signature(report: AttestationReport, cert: x509.Certificate) -> None:
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(
            f"unsupported SIGNATURE_ALGO {report.signature_algo} (need 1, ECDSA P-384 SHA-384)"
        )
    try:
        key = cert.public_key()
    except X509_ERRORS:
        raise VerificationError("endorsement certificate public key is invalid") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError("endorsement key is not an ECDSA P-384 key")
    sig = report.signature
    if any(sig[_P384_BYTES:_COMPONENT]) or any(sig[_COMPONENT + _P384_BYTES : 2 * _COMPONENT]):
        raise VerificationError("report signature R or S exceeds 48 bytes")
    r, s = report.signature_r, report.signature_s
    if r == 0 or s == 0:
        raise VerificationError("report signature is zero")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError("report signature is invalid") from None


def _check_tcb_and_chip(report: AttestationReport, ext: AmdExtensions, product: SnpProduct) -> None:
    try:
        cert_tcb = ext.tcb(product)
    except (ParseError, ValueError) as exc:
        raise VerificationError(f"endorsement certificate TCB: {exc}") from None
    reported = report.reported_tcb.for_product(product)
    if cert_tcb.raw != reported.raw:
        raise VerificationError(
            f"endorsement certificate TCB {cert_tcb.raw:#018x} {cert_tcb.components()} != "
            f"REPORTED_TCB {reported.raw:#018x} {reported.components()}"
        )
    if ext.hw_id is None:
        return
    chip = report.chip_id
    if len(ext.hw_id) == 8:
        ok = product is SnpProduct.TURIN and chip[:8] == ext.hw_id and not any(chip[8:])
    else:
        ok = chip == ext.hw_id
    if not ok:
        raise VerificationError("VCEK hwID does not match the report's CHIP_ID")


def verify(
    report: AttestationReport,
    *,
    endorsement_cert: x509.Certificate,
    now: datetime,
    intermediates: Sequence[x509.Certificate] | None = None,
    anchors: Sequence[TrustAnchor] | None = None,
    product: SnpProduct | str | None = None,
    crl: x509.CertificateRevocationList | None = None,
) -> VerifiedSnpEvidence:
    """Verify an SEV-SNP report at ``now`` (see the module docstring for every check).

    Args:
        report: from :func:`teeflow.attestation.snp.parse_report`.
        endorsement_cert: the VCEK or VLEK certificate (load with
            :func:`teeflow.attestation.snp.load_certificate`).
        now: timezone-aware verification time.
        intermediates: certificates after the endorsement certificate, leaf-first (the ASK
            or ASVK, optionally followed by the ARK itself); default: AMD's shipped ASK
            (VCEK) or ASVK (VLEK) for the product.
        anchors: trusted roots; default: AMD's pinned ARK of the product. Pass an emulation
            ARK (``TrustAnchor.emulated``) only to verify emulated evidence.
        product: expected product line (``SnpProduct`` or ``"Milan"``...), or None to take
            it from the certificate's productName.
        crl: AMD KDS CRL for the product (issued by the ARK), or None.

    Returns:
        :class:`VerifiedSnpEvidence`.

    Raises:
        VerificationError: any failed check — unsigned or masked report, unsupported
            signature algorithm, malformed or wrong-kind endorsement certificate, unknown
            or mismatching product, untrusted / expired / revoked / non-PSS chain, invalid
            report signature, certificate TCB != REPORTED_TCB, hwID != CHIP_ID.
        CollateralError: ``crl`` is malformed, not signed by the ARK or not current.
    """
    _check_now(now)
    if not isinstance(report, AttestationReport):
        raise VerificationError("report must be a parsed AttestationReport")
    signing_key = report.signing_key
    if signing_key is SigningKey.NONE:
        raise VerificationError("report is not signed (SIGNING_KEY = none)")
    if report.mask_chip_key:
        raise VerificationError("report signature masked (MASK_CHIP_KEY set)")
    ext = _extensions(endorsement_cert)
    vlek = ext.is_vlek
    if vlek != (signing_key is SigningKey.VLEK):
        kind = "VLEK" if vlek else "VCEK"
        raise VerificationError(f"report signed by {signing_key.name}, certificate is a {kind}")
    chosen = _product(ext, report, product)
    anchor = _check_chain(
        endorsement_cert,
        intermediates=intermediates,
        anchors=anchors,
        product=chosen,
        vlek=vlek,
        now=now,
        crl=crl,
    )
    _check_signature(report, endorsement_cert)
    _check_tcb_and_chip(report, ext, chosen)
    return VerifiedSnpEvidence(
        report=report,
        product=chosen,
        signing_key=signing_key,
        endorsement_certificate=endorsement_cert,
        extensions=ext,
        anchor=anchor,
        verified_at=now,
        crl_checked=crl is not None,
    )
