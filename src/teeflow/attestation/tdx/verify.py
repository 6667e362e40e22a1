"""Verification of Intel TDX DCAP quotes (second step: parse -> verify -> appraise).

:func:`verify` is pure: time (``now``), trust anchors, collateral and CRLs are injected;
it never reads the wall clock or the network. Checks, in order (Intel TDX DCAP Quoting
Library API, Appendix A; Intel SGX PCK Certificate and CRL Profile Specification; Intel
QVL ``QuoteVerifier::verify`` 4.1.2.4.x):

1. header: attestation key type 2 (ECDSA-256-with-P-256), Intel's QE vendor ID, a TDX
   quote (tee_type 0x81, TD report 1.0 or 1.5 body);
2. PCK chain from certification data type 5 (inside type 6), decoded strictly and
   validated at ``now`` up to one of ``anchors`` with the collateral's PCK and Root CA
   CRLs and the extra ``crls``;
3. quote signature (ECDSA P-256 SHA-256, attestation key, over header || [v5 body
   descriptor] || body);
4. QE report signature by the PCK leaf key; QE report_data = SHA-256(attestation key ||
   QE auth data) || 32 zero bytes (steps 1-4: :mod:`teeflow.attestation.dcap.verify_common`);
5. with collateral: :func:`~teeflow.attestation.dcap.collateral.verify_collateral`
   (signatures and validity windows at ``now``) and the TEE of the documents (TCB Info
   id "TDX" v3, QE Identity id "TD_QE") are checked first, right after step 1, so stale or
   wrong-TEE collateral is reported as such ("collateral expired: …"); after step 4 the
   TCB Info's FMSPC and PCE-ID must equal the PCK certificate's, the QE Identity is
   matched against the QE report;
   then :func:`~teeflow.attestation.tdx.tcb.evaluate_tdx_tcb` (TDX module identity,
   platform and module TCB levels, combined status, TD relaunch advice).

For collateral sets that lack CRLs or issuer chains (e.g. a TCB Info alone), verify with
``signatures_only=True``, then check the documents with :func:`verify_tcb_documents` and
evaluate them with :func:`~teeflow.attestation.tdx.tcb.evaluate_tdx_tcb`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from teeflow.attestation.dcap.chain import verify_chain, x509_errors_as
from teeflow.attestation.dcap.collateral import IntelCollateral, verify_collateral
from teeflow.attestation.dcap.pck import PckExtensions
from teeflow.attestation.dcap.qe_identity import (
    SignedEnclaveIdentity,
    match_qe_report,
    verify_enclave_identity_signature,
)
from teeflow.attestation.dcap.quote import TEE_TYPE_TDX, Quote, TdReport10, TdReport15
from teeflow.attestation.dcap.tcb_info import SignedTcbInfo, verify_tcb_info_signature
from teeflow.attestation.dcap.verify_common import (
    check_now,
    check_quote_type,
    check_tcb_info_pck,
    check_verify_inputs,
    verify_quote_signatures,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.attestation.tdx.tcb import TdxTcbResult, evaluate_tdx_tcb
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, VerificationError

__all__ = [
    "VerifiedTdxEvidence",
    "check_tcb_info_platform",
    "verify",
    "verify_tcb_documents",
]


@dataclass(frozen=True)
class VerifiedTdxEvidence:
    """The result of :func:`verify`: a TDX quote whose signatures and chain checked out.

    Attributes:
        quote: the verified quote.
        pck_certificate: the PCK leaf certificate that signed the QE report.
        pck: its decoded Intel SGX extension (FMSPC, PCE-ID, TCB SVNs, SGX type).
        anchor: the trust anchor the PCK chain terminates in.
        verified_at: the ``now`` the checks used (UTC).
        platform_tcb: matched TDX platform TCB level (None without collateral).
        module_tcb: TDX module TCB level (None without collateral or for module version 0).
        module_identity_id: ``"TDX_01"`` … when a module identity was used, else None.
        qe_tcb: TD QE TCB level from QE Identity (None without collateral).
        tcb_status: combined platform ∘ module ∘ QE status (None without collateral).
        advisory_ids: merged Intel advisories (empty without collateral).
        relaunch_advised: Intel QVL's ``TD_RELAUNCH_ADVISED``: the TDX module was updated
            after this TD launched (TEE_TCB_SVN2) and relaunching the TD would bring it up
            to date (TD 1.5 quotes only; False without collateral).
        collateral_verified: True if collateral was given and fully verified.
    """

    quote: Quote
    pck_certificate: x509.Certificate
    pck: PckExtensions
    anchor: TrustAnchor
    verified_at: datetime
    platform_tcb: TcbEvaluation | None
    module_tcb: TcbEvaluation | None
    module_identity_id: str | None
    qe_tcb: TcbEvaluation | None
    tcb_status: TcbStatus | None
    advisory_ids: tuple[str, ...]
    relaunch_advised: bool
    collateral_verified: bool

    @property
    def emulated(self) -> bool:
        """True if the chain ends in an emulation root (never hardware evidence)."""
        return self.anchor.emulated

    @property
    def report(self) -> TdReport10:
        """The TD report body (:class:`TdReport10`, or :class:`TdReport15` for v5 type 3)."""
        body = self.quote.body
        assert isinstance(body, TdReport10)  # guaranteed by verify()
        return body

    @property
    def tee_tcb_svn2(self) -> bytes | None:
        """TEE_TCB_SVN2 of a TD 1.5 report, else None."""
        body = self.quote.body
        return body.tee_tcb_svn2 if isinstance(body, TdReport15) else None


def check_tcb_info_platform(info: SignedTcbInfo, pck: PckExtensions) -> None:
    """TCB Info id "TDX", version 3, FMSPC and PCE-ID equal to the PCK certificate's.

    Raises:
        CollateralError: naming the mismatch.
    """
    if info.id != "TDX" or info.version < 3:
        raise CollateralError(f"TCB Info is {info.id!r} v{info.version}, not TDX v3")
    check_tcb_info_pck(info, pck)


def _check_collateral_tee(collateral: IntelCollateral) -> None:
    info, identity = collateral.tcb_info, collateral.qe_identity
    if info.id != "TDX" or info.version < 3:
        raise CollateralError(f"TCB Info is {info.id!r} v{info.version}, not TDX v3")
    if identity.id != "TD_QE":
        raise CollateralError(f"QE Identity is for {identity.id!r}, not the TDX QE (TD_QE)")


def _window(what: str, start: datetime, end: datetime, now: datetime) -> None:
    if now > end:
        raise CollateralError(f"collateral expired: {what} {end.isoformat()}")
    if now < start:
        raise CollateralError(f"collateral not yet valid: {what} {start.isoformat()}")


def verify_tcb_documents(
    *,
    tcb_info: SignedTcbInfo,
    signing_chain: Sequence[x509.Certificate],
    anchors: Sequence[TrustAnchor],
    now: datetime,
    qe_identity: SignedEnclaveIdentity | None = None,
    root_ca_crl: x509.CertificateRevocationList | None = None,
) -> TrustAnchor:
    """Check a TCB Info (and optionally a QE Identity) without a full collateral set.

    For partial Endorsements (no PCK CRL, no issuer chain shipped): the documents'
    ``issueDate <= now <= nextUpdate``, their signatures by ``signing_chain[0]`` (the
    Intel SGX TCB Signing certificate) and ``signing_chain`` validated at ``now`` up to
    ``anchors`` (with ``root_ca_crl`` when given). Prefer
    :func:`~teeflow.attestation.dcap.collateral.verify_collateral` for complete sets.

    Returns:
        the anchor the signing chain terminates in.

    Raises:
        CollateralError: a document expired / not yet valid ("collateral expired: …"),
            a bad document signature, an empty chain.
        VerificationError: the signing chain does not validate.
    """
    check_now(now)
    docs: list[tuple[str, datetime, datetime]] = [
        ("tcbInfo nextUpdate", tcb_info.issue_date, tcb_info.next_update)
    ]
    if qe_identity is not None:
        docs.append(("qeIdentity nextUpdate", qe_identity.issue_date, qe_identity.next_update))
    for what, start, end in docs:
        _window(what, start, end, now)
    if not signing_chain:
        raise CollateralError("TCB signing chain is empty")
    try:
        verify_tcb_info_signature(tcb_info, signing_chain[0])
        if qe_identity is not None:
            verify_enclave_identity_signature(qe_identity, signing_chain[0])
    except CollateralError:
        raise
    except VerificationError as exc:
        raise CollateralError(str(exc)) from None
    crls = (root_ca_crl,) if root_ca_crl is not None else ()
    with x509_errors_as(CollateralError, "malformed TCB signing chain or CRL"):
        return verify_chain(signing_chain, anchors, now, crls=crls)


def _evaluate(
    collateral: IntelCollateral, pck: PckExtensions, quote: Quote, report: TdReport10
) -> TdxTcbResult:
    check_tcb_info_platform(collateral.tcb_info, pck)
    qe_tcb = match_qe_report(collateral.qe_identity, quote.qe_report)
    return evaluate_tdx_tcb(collateral.tcb_info, report, pck, qe_tcb)


def verify(
    quote: Quote,
    *,
    anchors: Sequence[TrustAnchor],
    collateral: IntelCollateral | None,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    signatures_only: bool = False,
) -> VerifiedTdxEvidence:
    """Verify a TDX DCAP quote at time ``now`` (see the module docstring for the checks).

    Args:
        quote: from :func:`teeflow.attestation.tdx.parse_quote`.
        anchors: trusted roots (normally ``[intel_sgx_root_ca()]``; an emulation root
            only when the caller explicitly trusts it).
        collateral: Intel TDX TCB Info, TD_QE Identity and CRLs for the quote's FMSPC,
            or None.
        now: timezone-aware verification time.
        crls: extra CRLs applied to the PCK chain (each must be signed by the
            certificate it claims as issuer and current at ``now``).
        signatures_only: with ``collateral=None``, check only the quote, QE report and
            PCK chain (+ ``crls``); the TCB fields of the result are then None.

    Returns:
        :class:`VerifiedTdxEvidence`.

    Raises:
        VerificationError: any failed check (bad signature, key type, vendor ID, not a
            TDX quote, malformed/untrusted/expired/revoked PCK chain, QE binding, QE
            Identity mismatch, TDX module mismatch, "no matching TCB level").
        CollateralError: no collateral without ``signatures_only`` ("TCB status
            unknown"); collateral or CRLs badly signed, expired (at 2026-11-21 every
            shipped Intel set is) or for another platform / TEE.
    """
    check_verify_inputs(now, anchors, collateral, signatures_only=signatures_only)
    report = check_quote_type(quote, tee_type=TEE_TYPE_TDX, body_type=TdReport10, name="a TDX")
    if collateral is not None:  # first: stale or wrong-TEE collateral is reported as such
        verify_collateral(collateral, anchors, now)
        _check_collateral_tee(collateral)
    pck_cert, pck, anchor = verify_quote_signatures(quote, anchors, now, collateral, crls)

    result: TdxTcbResult | None = None
    if collateral is not None:
        result = _evaluate(collateral, pck, quote, report)
    return VerifiedTdxEvidence(
        quote=quote,
        pck_certificate=pck_cert,
        pck=pck,
        anchor=anchor,
        verified_at=now,
        platform_tcb=result.platform if result else None,
        module_tcb=result.module if result else None,
        module_identity_id=result.module_identity_id if result else None,
        qe_tcb=result.qe if result else None,
        tcb_status=result.combined.status if result else None,
        advisory_ids=result.combined.advisory_ids if result else (),
        relaunch_advised=result.relaunch_advised if result else False,
        collateral_verified=result is not None,
    )
