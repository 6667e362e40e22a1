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

Steps 1 (key type, vendor ID), 2, 3 and 4 are the DCAP checks shared with TDX, in
:mod:`teeflow.attestation.dcap.verify_common` (:func:`decode_pck_chain` is re-exported
here). Decoding a PCK chain (and its SGX extension) is cached per exact chain bytes;
signature checks of the chain links are cached by :mod:`teeflow.attestation.dcap.chain`.
Validity windows, CRLs and revocation are re-checked at every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from teeflow.attestation.dcap.collateral import (
    IntelCollateral,
    converge_tcb_status,
    verify_collateral,
)
from teeflow.attestation.dcap.pck import PckExtensions
from teeflow.attestation.dcap.qe_identity import match_qe_report
from teeflow.attestation.dcap.quote import TEE_TYPE_SGX, EnclaveReport, Quote
from teeflow.attestation.dcap.tcb_info import select_platform_tcb
from teeflow.attestation.dcap.verify_common import (
    check_quote_type,
    check_tcb_info_pck,
    check_verify_inputs,
    decode_pck_chain,
    verify_quote_signatures,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError

# decode_pck_chain is re-exported for existing callers (it lives in dcap.verify_common).
__all__ = ["VerifiedSgxEvidence", "decode_pck_chain", "verify"]


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
    check_tcb_info_pck(tcb_info, pck)
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
    check_verify_inputs(now, anchors, collateral, signatures_only=signatures_only)
    check_quote_type(quote, tee_type=TEE_TYPE_SGX, body_type=EnclaveReport, name="an SGX")
    pck_cert, pck, anchor = verify_quote_signatures(quote, anchors, now, collateral, crls)

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
