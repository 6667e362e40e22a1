"""TDX TCB evaluation against Intel TDX TCB Info v3 (pure; no signatures, no time).

Follows Intel QVL (intel/SGX-TDX-DCAP-QuoteVerificationLibrary,
``Src/AttestationLibrary/src/Verifiers/QuoteVerifier.cpp`` step 4.1.2.4.11 and
``Checks/TcbLevelCheck.cpp``, ``Checks/TdxModuleCheck.cpp``, ``Checks/TDRelaunchCheck.cpp``)
and the "Intel SGX and Intel TDX PCS API" TCB Info v3 description:

1. **TDX module identity** (:func:`check_tdx_module`): with TEE_TCB_SVN[1] (the module's
   major version) > 0 the TCB Info must have ``tdxModuleIdentities`` with id
   ``"TDX_<version as 2 upper-case hex digits>"``, whose ``mrsigner`` / ``attributes`` /
   ``attributesMask`` apply; with version 0 the top-level ``tdxModule`` applies.
   MRSIGNERSEAM must equal ``mrsigner``; ``SEAMATTRIBUTES & attributesMask`` must equal
   ``attributes & attributesMask`` (the PCS definition of the mask; QVL is stricter and
   requires both to be all zero, which every production module satisfies).
2. **Platform TCB level**: the first ``tcbLevels`` entry whose SGX components and PCESVN
   are ``<=`` the PCK certificate's and whose ``tdxtcbcomponents`` are ``<=`` TEE_TCB_SVN,
   compared from index 2 when the module version is > 0 (bytes 0-1 are then judged by
   the module identity) — :func:`~teeflow.attestation.dcap.tcb_info.select_platform_tcb`.
3. **Module TCB level** (version > 0): the identity's first level with ``isvsvn <=
   TEE_TCB_SVN[0]``; its status must be UpToDate, OutOfDate or Revoked.
4. **Status convergence**: platform ∘ module (module OutOfDate turns UpToDate /
   SWHardeningNeeded into OutOfDate and the Configuration* statuses into
   OutOfDateConfigurationNeeded; module Revoked gives Revoked), then ∘ QE
   (:func:`~teeflow.attestation.dcap.collateral.converge_tcb_status`). Advisory IDs of
   the platform level, the module level and the QE level are merged in that order.
5. **TD relaunch advice** (TD report 1.5 only, QVL ``checkForRelaunch``): when the QE is
   not OutOfDate/Revoked, the SGX-only platform level is UpToDate / SWHardeningNeeded /
   Configuration(AndSWHardening)Needed, the converged TDX status is OutOfDate(Configuration
   Needed) and the module level is OutOfDate, but TEE_TCB_SVN2 (the TCB of the module now
   running, after a TD-preserving update) reaches the newest module level (TDX_<svn2[1]>
   identity's first level, or ``tdxtcbcomponents[0]`` of the newest TCB level when
   svn2[1] == 0) and the newest level's ``tdxtcbcomponents[2]``, QVL reports
   ``TD_RELAUNCH_ADVISED``: relaunching the TD would make it current. Here the status
   stays the converged one and :attr:`TdxTcbResult.relaunch_advised` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from teeflow.attestation.dcap.collateral import converge_tcb_status
from teeflow.attestation.dcap.pck import PckExtensions
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.dcap.tcb_info import (
    SignedTcbInfo,
    TcbLevel,
    TdxModuleIdentity,
    select_platform_tcb,
    select_tdx_module_tcb,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.errors import CollateralError, VerificationError

__all__ = [
    "TdxTcbResult",
    "check_tdx_module",
    "converge_module_status",
    "evaluate_tdx_tcb",
    "td_relaunch_advised",
]

_MODULE_STATUSES = frozenset({TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED})
_CONFIG_NEEDED = frozenset(
    {
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
    }
)
_RELAUNCH_SGX_OK = frozenset(
    {
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    }
)
_OUT_OF_DATE = frozenset({TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED})


@dataclass(frozen=True)
class TdxTcbResult:
    """Outcome of :func:`evaluate_tdx_tcb`.

    Attributes:
        platform: the matched TDX TCB level (SGX components + PCESVN + TDX components).
        sgx_platform: the first level matching the SGX components and PCESVN only (QVL's
            "SGX TCB level"; used by the relaunch rule).
        module: the TDX module identity's TCB level, or None when TEE_TCB_SVN[1] == 0.
        module_identity_id: ``"TDX_01"`` … or None (top-level ``tdxModule`` used).
        qe: the QE TCB level passed in (None when no QE Identity was evaluated).
        combined: platform ∘ module ∘ QE status, earliest date, merged advisories.
        relaunch_advised: QVL's TD_RELAUNCH_ADVISED condition holds (TD 1.5 only).
    """

    platform: TcbEvaluation
    sgx_platform: TcbEvaluation
    module: TcbEvaluation | None
    module_identity_id: str | None
    qe: TcbEvaluation | None
    combined: TcbEvaluation
    relaunch_advised: bool


def _find_identity(info: SignedTcbInfo, version: int) -> TdxModuleIdentity:
    if not info.tdx_module_identities:
        raise VerificationError(
            f"TDX module version {version} but the TCB Info has no tdxModuleIdentities"
        )
    wanted = f"TDX_{version:02X}"
    for ident in info.tdx_module_identities:
        if ident.id.upper() == wanted:
            return ident
    raise VerificationError(f"TDX module identity {wanted} not in TCB Info")


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(a & b for a, b in zip(value, mask, strict=True))


def check_tdx_module(info: SignedTcbInfo, report: TdReport10) -> str | None:
    """Match MRSIGNERSEAM and SEAMATTRIBUTES against the TCB Info (step 1 above).

    Returns:
        the module identity id used (``"TDX_01"`` …), or None for ``tdxModule``.

    Raises:
        VerificationError: no ``tdxModule`` / matching module identity, or a mismatch
            ("TDX module mismatch: MRSIGNERSEAM …" / "… SEAMATTRIBUTES …").
    """
    version = report.tee_tcb_svn[1]
    ident_id: str | None = None
    if version > 0:
        ident = _find_identity(info, version)
        mrsigner, attrs, mask, ident_id = (
            ident.mrsigner,
            ident.attributes,
            ident.attributes_mask,
            ident.id,
        )
    else:
        module = info.tdx_module
        if module is None:
            raise VerificationError("TCB Info has no tdxModule")
        mrsigner, attrs, mask = module.mrsigner, module.attributes, module.attributes_mask
    if report.mr_signer_seam != mrsigner:
        raise VerificationError(
            f"TDX module mismatch: MRSIGNERSEAM {report.mr_signer_seam.hex()} != {mrsigner.hex()}"
        )
    if _masked(report.seam_attributes, mask) != _masked(attrs, mask):
        raise VerificationError(
            f"TDX module mismatch: SEAMATTRIBUTES {report.seam_attributes.hex()}"
        )
    return ident_id


def _sgx_level(info: SignedTcbInfo, pck: PckExtensions) -> TcbEvaluation:
    comps = pck.tcb_components
    for level in info.tcb_levels:
        if level.pcesvn <= pck.pcesvn and all(
            level.sgx_components[i] <= comps[i] for i in range(16)
        ):
            return _evaluation(level)
    raise VerificationError("no matching TCB level")


def _evaluation(level: TcbLevel) -> TcbEvaluation:
    return TcbEvaluation(
        status=level.status, tcb_date=level.tcb_date, advisory_ids=level.advisory_ids
    )


def converge_module_status(platform: TcbEvaluation, module: TcbEvaluation | None) -> TcbEvaluation:
    """Platform TDX TCB level ∘ TDX module level (QVL ``convergeTcbStatusWithTdxModuleStatus``).

    Module OutOfDate: UpToDate / SWHardeningNeeded -> OutOfDate, ConfigurationNeeded /
    ConfigurationAndSWHardeningNeeded -> OutOfDateConfigurationNeeded; module Revoked ->
    Revoked; otherwise the platform status. Advisories: platform's then module's
    (de-duplicated); date: the earlier one.
    """
    if module is None:
        return platform
    status = platform.status
    if module.status is TcbStatus.OUT_OF_DATE:
        if status in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            status = TcbStatus.OUT_OF_DATE
        elif status in (
            TcbStatus.CONFIGURATION_NEEDED,
            TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        ):
            status = TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    elif module.status is TcbStatus.REVOKED:
        status = TcbStatus.REVOKED
    advisories = tuple(dict.fromkeys((*platform.advisory_ids, *module.advisory_ids)))
    dates = [d for d in (platform.tcb_date, module.tcb_date) if d is not None]
    return TcbEvaluation(
        status=status, tcb_date=min(dates) if dates else None, advisory_ids=advisories
    )


def td_relaunch_advised(
    info: SignedTcbInfo,
    tee_tcb_svn2: bytes,
    *,
    sgx_status: TcbStatus,
    tdx_status: TcbStatus,
    module_status: TcbStatus | None,
    qe_status: TcbStatus | None,
) -> bool:
    """QVL ``checkForRelaunch`` (step 5 of the module docstring).

    Args:
        info: the TDX TCB Info; tee_tcb_svn2: the TD 1.5 report's TEE_TCB_SVN2 (16 bytes).
        sgx_status: status of the SGX-only platform level; tdx_status: platform ∘ module;
        module_status: the module level's status (None: module version 0);
        qe_status: the QE level's status (None: no QE Identity evaluated).

    Raises:
        VerificationError: the identity ``TDX_<svn2[1]>`` is missing or has no levels.
    """
    if qe_status in (TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED):
        return False
    if sgx_status not in _RELAUNCH_SGX_OK or tdx_status not in _OUT_OF_DATE:
        return False
    if module_status is not TcbStatus.OUT_OF_DATE:
        return False
    latest = info.tcb_levels[0].tdx_components
    if latest is None:
        raise VerificationError("newest TCB level has no tdxtcbcomponents")
    if tee_tcb_svn2[1] == 0:
        needed_isvsvn = latest[0]
    else:
        levels = _find_identity(info, tee_tcb_svn2[1]).tcb_levels
        if not levels:
            raise VerificationError(f"TDX module identity TDX_{tee_tcb_svn2[1]:02X} has no levels")
        needed_isvsvn = levels[0].isvsvn
    return tee_tcb_svn2[0] >= needed_isvsvn and tee_tcb_svn2[2] >= latest[2]


def evaluate_tdx_tcb(
    info: SignedTcbInfo,
    report: TdReport10,
    pck: PckExtensions,
    qe_tcb: TcbEvaluation | None,
) -> TdxTcbResult:
    """Evaluate a TD report's TCB against a (signature-checked) TDX TCB Info.

    Args:
        info: TCB Info with id "TDX", version 3; FMSPC / PCE-ID already matched.
        report: the quote's TD report (1.0 or 1.5).
        pck: the PCK certificate's SGX extension (SGX TCB components, PCESVN).
        qe_tcb: the TD QE's level from :func:`~teeflow.attestation.dcap.qe_identity.
            match_qe_report`, or None to leave the QE out of the combined status.

    Returns:
        :class:`TdxTcbResult`.

    Raises:
        CollateralError: the TCB Info is not a TDX TCB Info v3.
        VerificationError: TDX module mismatch or missing identity, "no matching TCB
            level", no matching module level, or a module level with an invalid status.
    """
    if info.id != "TDX" or info.version < 3:
        raise CollateralError(f"TCB Info is {info.id!r} v{info.version}, not TDX v3")
    tee = report.tee_tcb_svn
    ident_id = check_tdx_module(info, report)
    platform = select_platform_tcb(info, pck.tcb_components, pck.pcesvn, tuple(tee))
    sgx_platform = _sgx_level(info, pck)
    module = select_tdx_module_tcb(info, tuple(tee)) if tee[1] > 0 else None
    if module is not None and module.status not in _MODULE_STATUSES:
        raise VerificationError(f"TDX module TCB level has invalid status {module.status}")
    tdx = converge_module_status(platform, module)
    relaunch = False
    if isinstance(report, TdReport15):
        relaunch = td_relaunch_advised(
            info,
            report.tee_tcb_svn2,
            sgx_status=sgx_platform.status,
            tdx_status=tdx.status,
            module_status=module.status if module is not None else None,
            qe_status=qe_tcb.status if qe_tcb is not None else None,
        )
    combined = converge_tcb_status(tdx, qe_tcb) if qe_tcb is not None else tdx
    return TdxTcbResult(
        platform=platform,
        sgx_platform=sgx_platform,
        module=module,
        module_identity_id=ident_id,
        qe=qe_tcb,
        combined=combined,
        relaunch_advised=relaunch,
    )
