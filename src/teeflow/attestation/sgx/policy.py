"""SGX Appraisal Policy (:class:`SgxPolicy`) and :func:`appraise`.

``appraise(verified, policy)`` is the third step of the evidence pipeline (parse → verify →
appraise, see ``docs/architecture.md``). It never re-checks signatures: its input is the
output of :func:`teeflow.attestation.sgx.verify`, or anything with the same attributes
(:class:`SgxEvidenceLike`). It evaluates **every** check and lists every violation.

Checks and their AR4SI trust-vector effect (code points: draft-ietf-rats-ar4si-09 §2.3, see
:mod:`teeflow.attestation.appraisal`):

==========================  =========================================  ======================
check                       violation text                             claim when violated
==========================  =========================================  ======================
emulation root              ``emulated evidence not allowed``          hardware 97
MRENCLAVE allow-list        ``mrenclave <hex> not in allowed list``    executables 96
MRSIGNER                    ``mrsigner <hex> does not match expected   executables 96
                            <hex>``
ISVPRODID                   ``isv_prod_id 3 does not match expected 1`` executables 96
minimum ISVSVN              ``isv_svn 0 below minimum 1``              executables 96
debug attribute             ``debug enclave not allowed``              configuration 96,
                                                                       runtime-opaque 96
REPORT_DATA / prefix        ``report_data does not match expected      instance-identity 97
                            value`` / ``... expected prefix``
collateral present          ``TCB status unknown (no collateral)``     hardware 97
TCB status                  ``tcb status <S> not accepted``            hardware 96
advisories                  ``advisory <ID> not accepted``             hardware 96
minimum CPUSVN              ``cpu_svn <hex> below minimum <hex>``      hardware 96
==========================  =========================================  ======================

When nothing is violated: executables 2 (approved) when the policy pins an identity
(``mrenclaves`` or ``mrsigner``), else 33 (unrecognized) plus a warning — **a policy with
neither accepts any enclave**; hardware 2 (genuine) for an UpToDate TCB without advisories,
32 (known vulnerabilities, with a warning) when the policy accepts a lesser TCB status or
listed advisories; configuration 2, or 32 with a warning when a debug enclave is allowed;
runtime-opaque 2 (SGX encrypts enclave memory) unless debug or emulated; instance-identity 2
when REPORT_DATA was pinned and matches. Emulated evidence accepted by ``allow_emulated``
gets hardware 32, the claim ``teeflow.emulated: true``, a warning, and a ``logging`` WARNING
on every call, so the result's status is at best ``warning``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pydantic import Field, field_validator

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
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.policy import (
    AcceptedAdvisories,
    AcceptedTcbStatuses,
    Hex16,
    Hex32,
    Hex64,
    HexPrefix64,
    ReportDataPolicy,
)

__all__ = [
    "EMULATED_WARNING",
    "EnclaveReportLike",
    "SgxEvidenceLike",
    "SgxPolicy",
    "appraise",
]

_LOG = logging.getLogger(__name__)


class EnclaveReportLike(Protocol):
    """The SGX report body attributes :func:`appraise` reads (Intel SDM Vol. 3D, REPORTBODY)."""

    @property
    def mr_enclave(self) -> bytes: ...  # 32 bytes
    @property
    def mr_signer(self) -> bytes: ...  # 32 bytes
    @property
    def isv_prod_id(self) -> int: ...
    @property
    def isv_svn(self) -> int: ...
    @property
    def report_data(self) -> bytes: ...  # 64 bytes
    @property
    def cpu_svn(self) -> bytes: ...  # 16 bytes
    @property
    def debug(self) -> bool: ...


class SgxEvidenceLike(DcapEvidenceLike, Protocol):
    """What :func:`appraise` needs from ``VerifiedSgxEvidence`` (duck-typed): the report
    plus ``emulated``, ``verified_at``, ``tcb_status``, ``advisory_ids``,
    ``collateral_verified``."""

    @property
    def report(self) -> EnclaveReportLike: ...


class SgxPolicy(ReportDataPolicy):
    """Appraisal Policy for SGX DCAP evidence. Data, not code: load it with
    :meth:`~teeflow.attestation.policy.PolicyModel.from_file` (YAML/JSON) or ``from_mapping``.

    Attributes:
        policy_id: optional identifier, reported as ``ear.appraisal-policy-id``.
        mrenclaves: allowed MRENCLAVE values (32-byte hex); empty = any.
        mrsigner: required MRSIGNER (32-byte hex) or None = any. With ``mrenclaves`` empty
            and ``mrsigner`` None the policy accepts **any enclave** (the result then carries
            a warning and executables claim 33).
        isv_prod_id: required ISVPRODID (0..65535) or None.
        min_isv_svn: minimum ISVSVN (0..65535) or None.
        min_cpu_svn: minimum CPUSVN (16-byte hex), compared byte by byte (each SVN component
            of the report's CPUSVN must be >= the policy's), or None.
        allow_debug: accept enclaves with ATTRIBUTES.DEBUG set (default False).
        accepted_tcb_statuses: Intel TCB statuses accepted (default ``{UpToDate}``); ``Revoked``
            is never accepted.
        accepted_advisories: None (default): advisories that come with an accepted TCB status
            are accepted (each listed as a warning), as Intel QVL reports them. A set of Intel
            advisory IDs (``INTEL-SA-xxxxx``, case-insensitive): the evidence may list only
            these; any other listed advisory is a violation (an empty set forbids all).
        report_data: exact expected REPORT_DATA (64-byte hex), or None.
        report_data_prefix: expected REPORT_DATA prefix (1..64-byte hex), or None; not
            together with ``report_data``.
        allow_emulated: accept evidence chaining to a teeflow emulation root (default False).
        require_collateral: require a TCB evaluation from verified collateral (default True).
    """

    mrenclaves: tuple[Hex32, ...] = ()
    mrsigner: Hex32 | None = None
    isv_prod_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    min_isv_svn: int | None = Field(default=None, ge=0, le=0xFFFF)
    min_cpu_svn: Hex16 | None = None
    allow_debug: bool = False
    accepted_tcb_statuses: AcceptedTcbStatuses = frozenset({TcbStatus.UP_TO_DATE})
    accepted_advisories: AcceptedAdvisories = None
    report_data: Hex64 | None = None
    report_data_prefix: HexPrefix64 | None = None
    allow_emulated: bool = False
    require_collateral: bool = True

    @field_validator("mrenclaves", mode="after")
    @classmethod
    def _dedupe_mrenclaves(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


def appraise(
    verified: SgxEvidenceLike,
    policy: SgxPolicy,
    *,
    logger: logging.Logger | None = None,
) -> AttestationResult:
    """Appraise verified SGX evidence against ``policy``; evaluate every check.

    Args:
        verified: ``VerifiedSgxEvidence`` from :func:`teeflow.attestation.sgx.verify` (or any
            :class:`SgxEvidenceLike`). Its signatures and collateral must already be verified.
        policy: the Appraisal Policy.
        logger: where to log the emulated-evidence WARNING (default: this module's logger).

    Returns:
        An :class:`~teeflow.attestation.appraisal.AttestationResult` with ``tee`` ``"sgx"``
        (``"emulated-sgx"`` for emulated evidence); ``accepted`` is False and ``violations``
        lists every failed check when the policy is not met. Call ``raise_for_status()`` to
        turn a rejection into :class:`~teeflow.errors.PolicyViolation`.
    """
    report = verified.report
    f = Findings()
    emulated = bool(verified.emulated)

    mrenclave = bytes(report.mr_enclave).hex()
    mrsigner = bytes(report.mr_signer).hex()
    report_data = bytes(report.report_data)
    cpu_svn = bytes(report.cpu_svn)
    debug = bool(report.debug)
    tcb_status = verified.tcb_status if verified.collateral_verified else None
    advisories = tuple(str(a) for a in verified.advisory_ids)

    # 1. Emulation: nothing emulated passes for hardware.
    if emulated:
        check_emulation(
            f,
            allowed=policy.allow_emulated,
            logger=logger if logger is not None else _LOG,
            subject=("mrenclave", mrenclave),
        )

    # 2. Enclave identity (Reference Values).
    violations = f.violations
    identity_ok = True
    if policy.mrenclaves and mrenclave not in policy.mrenclaves:
        violations.append(f"mrenclave {mrenclave} not in allowed list")
        identity_ok = False
    if policy.mrsigner is not None and mrsigner != policy.mrsigner:
        violations.append(f"mrsigner {mrsigner} does not match expected {policy.mrsigner}")
        identity_ok = False
    if policy.isv_prod_id is not None and report.isv_prod_id != policy.isv_prod_id:
        violations.append(
            f"isv_prod_id {report.isv_prod_id} does not match expected {policy.isv_prod_id}"
        )
        identity_ok = False
    if policy.min_isv_svn is not None and report.isv_svn < policy.min_isv_svn:
        violations.append(f"isv_svn {report.isv_svn} below minimum {policy.min_isv_svn}")
        identity_ok = False
    rate_executables(
        f,
        ok=identity_ok,
        pinned=bool(policy.mrenclaves) or policy.mrsigner is not None,
        unpinned_warning="policy constrains no enclave identity (any enclave accepted)",
    )

    # 3. Debug attribute.
    if debug:
        if policy.allow_debug:
            f.warnings.append("debug enclave accepted by policy (memory readable by a debugger)")
            f.put("configuration", ConfigurationClaim.UNSAFE)
            f.put("runtime_opaque", RuntimeOpaqueClaim.ISOLATED)
        else:
            violations.append("debug enclave not allowed")
            f.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
            f.put("runtime_opaque", RuntimeOpaqueClaim.VISIBLE)
    else:
        f.put("configuration", ConfigurationClaim.APPROVED)
        if not emulated:
            f.put("runtime_opaque", RuntimeOpaqueClaim.ENCRYPTED)

    # 4. REPORT_DATA binding.
    check_report_data(f, report_data, exact=policy.report_data, prefix=policy.report_data_prefix)

    # 5. Platform TCB (from verified collateral).
    check_dcap_tcb(f, tcb_status, advisories, policy=policy, emulated=emulated)
    if policy.min_cpu_svn is not None:
        minimum = bytes.fromhex(policy.min_cpu_svn)
        if svn_below(cpu_svn, minimum):
            violations.append(f"cpu_svn {cpu_svn.hex()} below minimum {policy.min_cpu_svn}")
            f.put("hardware", HardwareClaim.CONTRAINDICATED)

    claims: dict[str, Any] = {
        "mrenclave": mrenclave,
        "mrsigner": mrsigner,
        "isv_prod_id": int(report.isv_prod_id),
        "isv_svn": int(report.isv_svn),
        "debug": debug,
        "cpu_svn": cpu_svn.hex(),
        "tcb_status": str(tcb_status) if tcb_status is not None else None,
        "advisories": list(advisories),
        "report_data": report_data.hex(),
    }
    if emulated:
        claims["teeflow.emulated"] = True

    return f.result(
        tee="emulated-sgx" if emulated else "sgx",
        claims=claims,
        policy_id=policy.identifier(),
        verified_at=verified.verified_at,
    )
