"""TDX Appraisal Policy (:class:`TdxPolicy`) and :func:`appraise`.

``appraise(verified, policy)`` is the third step of the TDX evidence pipeline (parse ->
verify -> appraise). It never re-checks signatures: its input is the output of
:func:`teeflow.attestation.tdx.verify` (or anything with the same attributes,
:class:`TdxEvidenceLike`). It evaluates **every** check and lists every violation.

Checks and their AR4SI trust-vector effect (draft-ietf-rats-ar4si-09 §2.3):

* emulation root — ``emulated evidence not allowed`` — hardware 97;
* MRTD allow-list — ``mrtd <hex> not in allowed list`` — executables 96;
* RTMR0..3 — ``rtmr<i> <hex> does not match expected <hex>`` — executables 96;
* MRSEAM allow-list — ``mrseam <hex> not in allowed list`` — executables 96;
* MRCONFIGID / MROWNER / MROWNERCONFIG / TD_ATTRIBUTES / XFAM —
  ``<name> <hex> does not match expected <hex>`` — configuration 96;
* debug (TD_ATTRIBUTES bit 0) — ``debug TD not allowed`` — configuration 96,
  runtime-opaque 96;
* REPORT_DATA / prefix — ``report_data does not match expected value`` /
  ``report_data does not start with expected prefix`` — instance-identity 97;
* collateral present — ``TCB status unknown (no collateral)`` — hardware 97;
* TCB status — ``tcb status <S> not accepted`` — hardware 96;
* advisories — ``advisory <ID> not accepted`` — hardware 96;
* minimum TEE_TCB_SVN — ``tee_tcb_svn <hex> below minimum <hex>`` — hardware 96.

When nothing is violated: executables 2 when the policy pins MRTD or an RTMR, else 33 plus
a warning (**a policy pinning neither accepts any TD**); hardware 2 for an UpToDate TCB
without advisories, 32 with a warning when a lesser status or advisories are accepted or
when Intel advises a TD relaunch; configuration 2 (32 with a warning for an allowed debug
TD); runtime-opaque 2 unless debug or emulated. Emulated evidence accepted by
``allow_emulated`` gets hardware 32, the claim ``teeflow.emulated: true``, a warning and a
``logging`` WARNING on every call.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pydantic import field_validator

from teeflow.attestation.appraisal import (
    AttestationResult,
    ConfigurationClaim,
    HardwareClaim,
    RuntimeOpaqueClaim,
)
from teeflow.attestation.appraise_common import (
    EMULATED_WARNING,
    DcapEvidenceLike,
    Findings,
    check_dcap_tcb,
    check_emulation,
    check_report_data,
    rate_executables,
    svn_below,
)
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.policy import (
    AcceptedAdvisories,
    AcceptedTcbStatuses,
    Hex8,
    Hex16,
    Hex48,
    Hex64,
    HexPrefix64,
    ReportDataPolicy,
)
from teeflow.attestation.tdx.abi import is_debug

__all__ = [
    "EMULATED_WARNING",
    "Hex8",
    "Hex48",
    "TdxEvidenceLike",
    "TdxPolicy",
    "appraise",
]

_LOG = logging.getLogger(__name__)


class TdxEvidenceLike(DcapEvidenceLike, Protocol):
    """What :func:`appraise` needs from ``VerifiedTdxEvidence`` (duck-typed): the report,
    ``relaunch_advised`` plus ``emulated``, ``verified_at``, ``tcb_status``,
    ``advisory_ids``, ``collateral_verified``."""

    @property
    def report(self) -> TdReport10: ...
    @property
    def relaunch_advised(self) -> bool: ...


class TdxPolicy(ReportDataPolicy):
    """Appraisal Policy for TDX DCAP evidence (data: load with ``from_file`` / ``from_mapping``).

    Attributes:
        policy_id: optional identifier, reported as ``ear.appraisal-policy-id``.
        mrtds: allowed MRTD values (48-byte hex); empty = any.
        rtmr0, rtmr1, rtmr2, rtmr3: exact expected RTMR values (48-byte hex) or None = any.
            With ``mrtds`` empty and no RTMR pinned the policy accepts **any TD** (warning,
            executables claim 33).
        mrseams: allowed MRSEAM values (TDX module measurement, 48-byte hex); empty = any
            (the module's signer is already checked against Intel's TCB Info).
        mrconfigid, mrowner, mrownerconfig: exact expected values (48-byte hex) or None.
        td_attributes: exact expected TD_ATTRIBUTES (8-byte hex as stored) or None.
        allow_debug: accept a TD with TD_ATTRIBUTES.DEBUG (bit 0) set (default False);
            applies also when ``td_attributes`` is pinned.
        xfam: exact expected XFAM (8-byte hex as stored) or None.
        min_tee_tcb_svn: minimum TEE_TCB_SVN (16-byte hex), each byte compared as one SVN
            component, or None.
        accepted_tcb_statuses: Intel TCB statuses accepted (default ``{UpToDate}``);
            ``Revoked`` is never accepted.
        accepted_advisories: None (default): advisories that come with an accepted status
            are accepted (each listed as a warning). A set of ``INTEL-SA-xxxxx`` IDs
            (case-insensitive): only these may be listed (an empty set forbids all).
        report_data: exact expected REPORT_DATA (64-byte hex), or None.
        report_data_prefix: expected REPORT_DATA prefix (1..64-byte hex), or None; not
            together with ``report_data``.
        allow_emulated: accept evidence chaining to a teeflow emulation root (default False).
        require_collateral: require a TCB evaluation from verified collateral (default True).
    """

    mrtds: tuple[Hex48, ...] = ()
    rtmr0: Hex48 | None = None
    rtmr1: Hex48 | None = None
    rtmr2: Hex48 | None = None
    rtmr3: Hex48 | None = None
    mrseams: tuple[Hex48, ...] = ()
    mrconfigid: Hex48 | None = None
    mrowner: Hex48 | None = None
    mrownerconfig: Hex48 | None = None
    td_attributes: Hex8 | None = None
    allow_debug: bool = False
    xfam: Hex8 | None = None
    min_tee_tcb_svn: Hex16 | None = None
    accepted_tcb_statuses: AcceptedTcbStatuses = frozenset({TcbStatus.UP_TO_DATE})
    accepted_advisories: AcceptedAdvisories = None
    report_data: Hex64 | None = None
    report_data_prefix: HexPrefix64 | None = None
    allow_emulated: bool = False
    require_collateral: bool = True

    @field_validator("mrtds", "mrseams", mode="after")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

    def rtmrs(self) -> tuple[str | None, str | None, str | None, str | None]:
        """The four RTMR expectations (None = any)."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


def _identity(report: TdReport10, policy: TdxPolicy, violations: list[str]) -> bool:
    ok = True
    mrtd = report.mr_td.hex()
    if policy.mrtds and mrtd not in policy.mrtds:
        violations.append(f"mrtd {mrtd} not in allowed list")
        ok = False
    for i, (actual, expected) in enumerate(zip(report.rtmrs, policy.rtmrs(), strict=True)):
        if expected is not None and actual.hex() != expected:
            violations.append(f"rtmr{i} {actual.hex()} does not match expected {expected}")
            ok = False
    mrseam = report.mr_seam.hex()
    if policy.mrseams and mrseam not in policy.mrseams:
        violations.append(f"mrseam {mrseam} not in allowed list")
        ok = False
    return ok


def _configuration(report: TdReport10, policy: TdxPolicy, violations: list[str]) -> bool:
    ok = True
    exact = (
        ("mrconfigid", report.mr_config_id, policy.mrconfigid),
        ("mrowner", report.mr_owner, policy.mrowner),
        ("mrownerconfig", report.mr_owner_config, policy.mrownerconfig),
        ("td_attributes", report.td_attributes, policy.td_attributes),
        ("xfam", report.xfam, policy.xfam),
    )
    for name, actual, expected in exact:
        if expected is not None and actual.hex() != expected:
            violations.append(f"{name} {actual.hex()} does not match expected {expected}")
            ok = False
    return ok


def _claims(verified: TdxEvidenceLike, tcb_status: TcbStatus | None) -> dict[str, Any]:
    report = verified.report
    claims: dict[str, Any] = {
        "mrtd": report.mr_td.hex(),
        "rtmrs": [r.hex() for r in report.rtmrs],
        "mrseam": report.mr_seam.hex(),
        "mrsignerseam": report.mr_signer_seam.hex(),
        "mrconfigid": report.mr_config_id.hex(),
        "mrowner": report.mr_owner.hex(),
        "mrownerconfig": report.mr_owner_config.hex(),
        "td_attributes": report.td_attributes.hex(),
        "xfam": report.xfam.hex(),
        "debug": is_debug(report),
        "tee_tcb_svn": report.tee_tcb_svn.hex(),
        "tcb_status": str(tcb_status) if tcb_status is not None else None,
        "advisories": [str(a) for a in verified.advisory_ids],
        "relaunch_advised": bool(verified.relaunch_advised),
        "report_data": report.report_data.hex(),
    }
    if isinstance(report, TdReport15):
        claims["tee_tcb_svn2"] = report.tee_tcb_svn2.hex()
        claims["mrservicetd"] = report.mr_service_td.hex()
    if verified.emulated:
        claims["teeflow.emulated"] = True
    return claims


def appraise(
    verified: TdxEvidenceLike,
    policy: TdxPolicy,
    *,
    logger: logging.Logger | None = None,
) -> AttestationResult:
    """Appraise verified TDX evidence against ``policy``; evaluate every check.

    Args:
        verified: ``VerifiedTdxEvidence`` from :func:`teeflow.attestation.tdx.verify` (or
            any :class:`TdxEvidenceLike`); signatures and collateral already verified.
        policy: the Appraisal Policy.
        logger: where to log the emulated-evidence WARNING (default: this module's logger).

    Returns:
        An :class:`~teeflow.attestation.appraisal.AttestationResult` with ``tee`` ``"tdx"``
        (``"emulated-tdx"`` for emulated evidence); ``accepted`` is False and
        ``violations`` lists every failed check when the policy is not met. Claims:
        ``mrtd``, ``rtmrs`` (4 hex strings), ``mrseam``, ``mrsignerseam``, ``mrconfigid``,
        ``mrowner``, ``mrownerconfig``, ``td_attributes``, ``xfam``, ``debug``,
        ``tee_tcb_svn`` (+ ``tee_tcb_svn2``, ``mrservicetd`` for TD 1.5), ``tcb_status``,
        ``advisories``, ``relaunch_advised``, ``report_data`` (hex), ``teeflow.emulated``.
    """
    report = verified.report
    f = Findings()
    emulated = bool(verified.emulated)
    debug = is_debug(report)
    tcb_status = verified.tcb_status if verified.collateral_verified else None

    # 1. Emulation: nothing emulated passes for hardware.
    if emulated:
        check_emulation(
            f,
            allowed=policy.allow_emulated,
            logger=logger if logger is not None else _LOG,
            subject=("mrtd", report.mr_td.hex()),
        )

    # 2. TD identity (Reference Values): MRTD, RTMRs, MRSEAM.
    rate_executables(
        f,
        ok=_identity(report, policy, f.violations),
        pinned=bool(policy.mrtds) or any(r is not None for r in policy.rtmrs()),
        unpinned_warning="policy constrains no TD measurement (any TD accepted)",
    )

    # 3. Configuration: owner/config ids, attributes, XFAM, debug.
    config_ok = _configuration(report, policy, f.violations)
    if debug and not policy.allow_debug:
        f.violations.append("debug TD not allowed")
        f.put("runtime_opaque", RuntimeOpaqueClaim.VISIBLE)
        config_ok = False
    if not config_ok:
        f.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
    elif debug:
        f.warnings.append("debug TD accepted by policy (memory readable by the host)")
        f.put("configuration", ConfigurationClaim.UNSAFE)
        f.put("runtime_opaque", RuntimeOpaqueClaim.ISOLATED)
    else:
        f.put("configuration", ConfigurationClaim.APPROVED)
    if not debug and not emulated:
        f.put("runtime_opaque", RuntimeOpaqueClaim.ENCRYPTED)

    # 4. REPORT_DATA binding.
    check_report_data(
        f, report.report_data, exact=policy.report_data, prefix=policy.report_data_prefix
    )

    # 5. Platform + TDX module + QE TCB (from verified collateral).
    check_dcap_tcb(
        f,
        tcb_status,
        verified.advisory_ids,
        policy=policy,
        emulated=emulated,
        relaunch_advised=bool(verified.relaunch_advised),
    )
    if policy.min_tee_tcb_svn is not None:
        minimum = bytes.fromhex(policy.min_tee_tcb_svn)
        if svn_below(report.tee_tcb_svn, minimum):
            f.violations.append(
                f"tee_tcb_svn {report.tee_tcb_svn.hex()} below minimum {policy.min_tee_tcb_svn}"
            )
            f.put("hardware", HardwareClaim.CONTRAINDICATED)

    return f.result(
        tee="emulated-tdx" if emulated else "tdx",
        claims=_claims(verified, tcb_status),
        policy_id=policy.identifier(),
        verified_at=verified.verified_at,
    )
