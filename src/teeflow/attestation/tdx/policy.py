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
from datetime import datetime
from typing import Annotated, Any, Protocol, Self

from pydantic import BeforeValidator, field_serializer, field_validator, model_validator

from teeflow.attestation.appraisal import (
    AttestationResult,
    ConfigurationClaim,
    ExecutablesClaim,
    HardwareClaim,
    InstanceIdentityClaim,
    RuntimeOpaqueClaim,
    TrustworthinessVector,
    tier_of,
)
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.policy import Hex16, Hex64, HexPrefix64, PolicyModel, normalize_hex
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

#: Log message (WARNING level) emitted every time emulated evidence is accepted.
EMULATED_WARNING = "accepting EMULATED evidence — not hardware"

#: 48 bytes as 96 hex digits (MRTD, RTMRs, MRSEAM, MRCONFIGID …), normalised to lower case.
Hex48 = Annotated[str, BeforeValidator(lambda v: normalize_hex(v, length=48))]
#: 8 bytes as 16 hex digits, in the byte order stored in the TD report (TD_ATTRIBUTES, XFAM).
Hex8 = Annotated[str, BeforeValidator(lambda v: normalize_hex(v, length=8))]


class TdxEvidenceLike(Protocol):
    """What :func:`appraise` needs from ``VerifiedTdxEvidence`` (duck-typed)."""

    @property
    def report(self) -> TdReport10: ...
    @property
    def emulated(self) -> bool: ...
    @property
    def verified_at(self) -> datetime: ...
    @property
    def tcb_status(self) -> TcbStatus | None: ...
    @property
    def advisory_ids(self) -> tuple[str, ...]: ...
    @property
    def relaunch_advised(self) -> bool: ...
    @property
    def collateral_verified(self) -> bool: ...


class TdxPolicy(PolicyModel):
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
    accepted_tcb_statuses: frozenset[TcbStatus] = frozenset({TcbStatus.UP_TO_DATE})
    accepted_advisories: frozenset[str] | None = None
    report_data: Hex64 | None = None
    report_data_prefix: HexPrefix64 | None = None
    allow_emulated: bool = False
    require_collateral: bool = True

    @field_validator("mrtds", "mrseams", mode="after")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("accepted_advisories", mode="before")
    @classmethod
    def _normalise_advisories(cls, value: object) -> object:
        if isinstance(value, list | tuple | set | frozenset):
            out = []
            for item in value:
                if not isinstance(item, str) or not item.strip():
                    raise ValueError("advisory IDs must be non-empty strings")
                out.append(item.strip().upper())
            return frozenset(out)
        return value

    @field_validator("accepted_tcb_statuses", mode="after")
    @classmethod
    def _never_revoked(cls, value: frozenset[TcbStatus]) -> frozenset[TcbStatus]:
        if TcbStatus.REVOKED in value:
            raise ValueError("Revoked can never be an accepted TCB status")
        return value

    @model_validator(mode="after")
    def _one_report_data_rule(self) -> Self:
        if self.report_data is not None and self.report_data_prefix is not None:
            raise ValueError("set report_data or report_data_prefix, not both")
        return self

    @field_serializer("accepted_tcb_statuses", "accepted_advisories")
    def _sorted(self, value: frozenset[str] | None) -> list[str] | None:
        return None if value is None else sorted(str(v) for v in value)

    def rtmrs(self) -> tuple[str | None, str | None, str | None, str | None]:
        """The four RTMR expectations (None = any)."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    def with_report_data(self, report_data: bytes) -> TdxPolicy:
        """A copy requiring exactly ``report_data`` (64 bytes); clears ``report_data_prefix``.

        Raises:
            ValueError: ``report_data`` is not 64 bytes.
        """
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        update = {"report_data": report_data.hex(), "report_data_prefix": None}
        return self.model_copy(update=update)


class _Vector:
    """Accumulates per-claim contributions; the most severe tier wins (ties: larger value)."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    def put(self, name: str, value: int) -> None:
        old = self._values.get(name)
        if old is None or (tier_of(value).severity, value) > (tier_of(old).severity, old):
            self._values[name] = int(value)

    def build(self) -> TrustworthinessVector:
        return TrustworthinessVector(**self._values)


def _svn_below(actual: bytes, minimum: bytes) -> bool:
    return len(actual) != len(minimum) or any(a < m for a, m in zip(actual, minimum, strict=True))


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
    log = logger if logger is not None else _LOG
    report = verified.report
    violations: list[str] = []
    warnings: list[str] = []
    vec = _Vector()
    emulated = bool(verified.emulated)
    debug = is_debug(report)
    tcb_status = verified.tcb_status if verified.collateral_verified else None

    # 1. Emulation: nothing emulated passes for hardware.
    if emulated:
        if policy.allow_emulated:
            warnings.append("emulated evidence accepted by policy (not hardware)")
            vec.put("hardware", HardwareClaim.UNSAFE)
            log.warning("%s (mrtd %s)", EMULATED_WARNING, report.mr_td.hex())
        else:
            violations.append("emulated evidence not allowed")
            vec.put("hardware", HardwareClaim.UNRECOGNIZED)

    # 2. TD identity (Reference Values): MRTD, RTMRs, MRSEAM.
    if not _identity(report, policy, violations):
        vec.put("executables", ExecutablesClaim.CONTRAINDICATED_RUNTIME)
    elif policy.mrtds or any(r is not None for r in policy.rtmrs()):
        vec.put("executables", ExecutablesClaim.APPROVED_RUNTIME)
    else:
        warnings.append("policy constrains no TD measurement (any TD accepted)")
        vec.put("executables", ExecutablesClaim.UNRECOGNIZED_RUNTIME)

    # 3. Configuration: owner/config ids, attributes, XFAM, debug.
    config_ok = _configuration(report, policy, violations)
    if debug and not policy.allow_debug:
        violations.append("debug TD not allowed")
        vec.put("runtime_opaque", RuntimeOpaqueClaim.VISIBLE)
        config_ok = False
    if not config_ok:
        vec.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
    elif debug:
        warnings.append("debug TD accepted by policy (memory readable by the host)")
        vec.put("configuration", ConfigurationClaim.UNSAFE)
        vec.put("runtime_opaque", RuntimeOpaqueClaim.ISOLATED)
    else:
        vec.put("configuration", ConfigurationClaim.APPROVED)
    if not debug and not emulated:
        vec.put("runtime_opaque", RuntimeOpaqueClaim.ENCRYPTED)

    # 4. REPORT_DATA binding.
    rd = report.report_data.hex()
    expected_rd = policy.report_data
    if expected_rd is not None or policy.report_data_prefix is not None:
        if expected_rd is not None and rd != expected_rd:
            violations.append("report_data does not match expected value")
            vec.put("instance_identity", InstanceIdentityClaim.UNRECOGNIZED)
        elif policy.report_data_prefix is not None and not rd.startswith(policy.report_data_prefix):
            violations.append("report_data does not start with expected prefix")
            vec.put("instance_identity", InstanceIdentityClaim.UNRECOGNIZED)
        else:
            vec.put("instance_identity", InstanceIdentityClaim.RECOGNIZED)

    # 5. Platform + TDX module + QE TCB (from verified collateral).
    if tcb_status is None:
        if policy.require_collateral:
            violations.append("TCB status unknown (no collateral)")
            vec.put("hardware", HardwareClaim.UNRECOGNIZED)
        else:
            warnings.append("TCB status unknown (no collateral); accepted by policy")
    elif tcb_status not in policy.accepted_tcb_statuses:
        violations.append(f"tcb status {tcb_status} not accepted")
        vec.put("hardware", HardwareClaim.CONTRAINDICATED)
    elif tcb_status is not TcbStatus.UP_TO_DATE:
        warnings.append(f"tcb status {tcb_status} accepted by policy")
        vec.put("hardware", HardwareClaim.UNSAFE)
    else:
        vec.put("hardware", HardwareClaim.GENUINE if not emulated else HardwareClaim.UNSAFE)
    if tcb_status is not None and verified.relaunch_advised:
        warnings.append("TD relaunch advised: the TDX module was updated after launch")
        vec.put("hardware", HardwareClaim.UNSAFE)

    for advisory in verified.advisory_ids:
        if policy.accepted_advisories is None or advisory.upper() in policy.accepted_advisories:
            warnings.append(f"advisory {advisory} accepted by policy")
            vec.put("hardware", HardwareClaim.UNSAFE)
        else:
            violations.append(f"advisory {advisory} not accepted")
            vec.put("hardware", HardwareClaim.CONTRAINDICATED)

    if policy.min_tee_tcb_svn is not None:
        minimum = bytes.fromhex(policy.min_tee_tcb_svn)
        if _svn_below(report.tee_tcb_svn, minimum):
            violations.append(
                f"tee_tcb_svn {report.tee_tcb_svn.hex()} below minimum {policy.min_tee_tcb_svn}"
            )
            vec.put("hardware", HardwareClaim.CONTRAINDICATED)

    return AttestationResult(
        tee="emulated-tdx" if emulated else "tdx",
        violations=tuple(violations),
        warnings=tuple(warnings),
        trust_vector=vec.build(),
        claims=_claims(verified, tcb_status),
        policy_id=policy.identifier(),
        verified_at=verified.verified_at,
    )
