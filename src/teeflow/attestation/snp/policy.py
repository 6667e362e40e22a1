"""Appraisal of verified SEV-SNP evidence (third step: parse -> verify -> appraise).

:func:`appraise` evaluates **every** check of an :class:`SnpPolicy` and lists every
violation (fields as in AMD SEV-SNP Firmware ABI Specification #56860, ATTESTATION_REPORT
and Guest Policy). AR4SI trustworthiness vector (draft-ietf-rats-ar4si-09 §2.3):

* executables: 2 when MEASUREMENT (and every launch identity the policy pins: HOST_DATA,
  ID/AUTHOR key digests, FAMILY_ID, IMAGE_ID, minimum GUEST_SVN) matches, 96 on any
  mismatch, 33 with a warning when the policy pins no measurement;
* configuration: 2, or 96 for a guest policy that allows debugging, a migration agent or
  (with ``allow_smt`` False) runs on a platform with SMT enabled, or the VMPL is not allowed;
  32 with a warning when ``allow_debug`` / ``allow_migration_agent`` accept such a guest;
* runtime-opaque: 2 (memory encrypted by SEV-SNP) unless debugging is allowed (32 when
  accepted, 96 otherwise) or the evidence is emulated;
* hardware: 2 when every TCB component of REPORTED_TCB, COMMITTED_TCB and CURRENT_TCB is
  >= ``min_tcb`` (and LAUNCH_TCB >= ``min_launch_tcb``), 96 otherwise; without ``min_tcb`` a
  warning ("firmware versions unchecked"); emulated evidence accepted by ``allow_emulated``
  gets 32, a warning, the claim ``teeflow.emulated: true`` and a ``logging`` WARNING;
* instance-identity: 2 when REPORT_DATA was pinned and matches, 97 when it does not.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from teeflow.attestation.appraisal import (
    AttestationResult,
    ConfigurationClaim,
    HardwareClaim,
    RuntimeOpaqueClaim,
)
from teeflow.attestation.appraise_common import (
    EvidenceLike,
    Findings,
    check_emulation,
    check_report_data,
    rate_executables,
)
from teeflow.attestation.policy import (
    Hex16,
    Hex32,
    Hex48,
    Hex64,
    HexPrefix64,
    ReportDataPolicy,
)
from teeflow.attestation.snp.abi import AttestationReport, SigningKey, SnpProduct, TcbVersion

__all__ = [
    "EMULATED_WARNING",
    "Hex48",
    "SnpEvidenceLike",
    "SnpPolicy",
    "TcbMinimum",
    "appraise",
]

_LOG = logging.getLogger(__name__)

#: Log message (WARNING level) emitted every time emulated evidence is accepted.
EMULATED_WARNING = "accepting EMULATED SEV-SNP evidence — not hardware"

_Spl = Annotated[int, Field(ge=0, le=0xFF)]


class SnpEvidenceLike(EvidenceLike, Protocol):
    """What :func:`appraise` needs from ``VerifiedSnpEvidence`` (duck-typed): the report,
    ``product``, ``signing_key`` plus ``emulated`` and ``verified_at``."""

    @property
    def report(self) -> AttestationReport: ...
    @property
    def product(self) -> SnpProduct: ...
    @property
    def signing_key(self) -> SigningKey: ...


class TcbMinimum(BaseModel):
    """Component-wise TCB minimum; None = unchecked. ``fmc`` applies to Turin only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootloader: _Spl | None = None
    tee: _Spl | None = None
    snp: _Spl | None = None
    microcode: _Spl | None = None
    fmc: _Spl | None = None

    def shortfalls(self, tcb: TcbVersion) -> list[str]:
        """``"<component> <actual> < <minimum>"`` for each component below its minimum."""
        out = []
        actual = tcb.components()
        for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
            minimum = getattr(self, name)
            if minimum is None or (name == "fmc" and "fmc" not in actual):
                continue
            if actual[name] < minimum:
                out.append(f"{name} {actual[name]} < {minimum}")
        return out


class SnpPolicy(ReportDataPolicy):
    """Appraisal Policy for SEV-SNP evidence (data; load with ``from_file`` / ``from_mapping``).

    Attributes:
        policy_id: optional identifier (``ear.appraisal-policy-id``).
        measurements: allowed MEASUREMENT values (48-byte hex); empty = any (warning).
        host_data: required HOST_DATA (32-byte hex) or None.
        id_key_digest, author_key_digest: required digests (48-byte hex) or None.
        family_id, image_id: required FAMILY_ID / IMAGE_ID (16-byte hex) or None.
        min_guest_svn: minimum GUEST_SVN (u32) or None.
        min_tcb: minimum of REPORTED_TCB, COMMITTED_TCB and CURRENT_TCB, per component.
        min_launch_tcb: minimum of LAUNCH_TCB, per component.
        allow_debug: accept a guest policy with DEBUG set (default False).
        allow_migration_agent: accept MIGRATE_MA set (default False).
        allow_smt: accept a platform with SMT enabled (PLATFORM_INFO.SMT_EN; default True).
        vmpl: required exact VMPL (0..3) or None; max_vmpl: highest allowed VMPL or None.
        allowed_products: accepted product lines (empty = any).
        allow_vlek: accept VLEK-signed reports (default True).
        report_data / report_data_prefix: expected REPORT_DATA (64-byte hex) or prefix.
        allow_emulated: accept evidence chaining to a teeflow emulation ARK (default False).
    """

    measurements: tuple[Hex48, ...] = ()
    host_data: Hex32 | None = None
    id_key_digest: Hex48 | None = None
    author_key_digest: Hex48 | None = None
    family_id: Hex16 | None = None
    image_id: Hex16 | None = None
    min_guest_svn: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    min_tcb: TcbMinimum | None = None
    min_launch_tcb: TcbMinimum | None = None
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    vmpl: int | None = Field(default=None, ge=0, le=3)
    max_vmpl: int | None = Field(default=None, ge=0, le=3)
    allowed_products: frozenset[SnpProduct] = frozenset()
    allow_vlek: bool = True
    report_data: Hex64 | None = None
    report_data_prefix: HexPrefix64 | None = None
    allow_emulated: bool = False

    @field_serializer("allowed_products")
    def _sorted(self, value: frozenset[SnpProduct]) -> list[str]:
        return sorted(str(v) for v in value)


def _identity(report: AttestationReport, policy: SnpPolicy, violations: list[str]) -> bool:
    ok = True
    pins = (
        ("host_data", policy.host_data, report.host_data),
        ("id_key_digest", policy.id_key_digest, report.id_key_digest),
        ("author_key_digest", policy.author_key_digest, report.author_key_digest),
        ("family_id", policy.family_id, report.family_id),
        ("image_id", policy.image_id, report.image_id),
    )
    measurement = report.measurement.hex()
    if policy.measurements and measurement not in policy.measurements:
        violations.append(f"measurement {measurement} not in allowed list")
        ok = False
    for name, expected, actual in pins:
        if expected is not None and actual.hex() != expected:
            violations.append(f"{name} {actual.hex()} does not match expected {expected}")
            ok = False
    if policy.min_guest_svn is not None and report.guest_svn < policy.min_guest_svn:
        violations.append(f"guest_svn {report.guest_svn} below minimum {policy.min_guest_svn}")
        ok = False
    return ok


def _configuration(
    report: AttestationReport, policy: SnpPolicy, f: Findings, *, emulated: bool
) -> None:
    gp = report.policy
    f.put("configuration", ConfigurationClaim.APPROVED)
    if gp.debug_allowed:
        if policy.allow_debug:
            f.warnings.append("guest policy allows debugging; accepted by policy")
            f.put("configuration", ConfigurationClaim.UNSAFE)
            f.put("runtime_opaque", RuntimeOpaqueClaim.ISOLATED)
        else:
            f.violations.append("guest policy allows debugging (DEBUG)")
            f.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
            f.put("runtime_opaque", RuntimeOpaqueClaim.VISIBLE)
    elif not emulated:
        f.put("runtime_opaque", RuntimeOpaqueClaim.ENCRYPTED)
    if gp.migrate_ma:
        if policy.allow_migration_agent:
            f.warnings.append("guest policy allows a migration agent; accepted by policy")
            f.put("configuration", ConfigurationClaim.UNSAFE)
        else:
            f.violations.append("guest policy allows a migration agent (MIGRATE_MA)")
            f.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
    if not policy.allow_smt and report.platform_info.smt_enabled:
        f.violations.append("SMT is enabled on the platform")
        f.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
    vmpl_bad = (policy.vmpl is not None and report.vmpl != policy.vmpl) or (
        policy.max_vmpl is not None and report.vmpl > policy.max_vmpl
    )
    if vmpl_bad:
        want = f"== {policy.vmpl}" if policy.vmpl is not None else f"<= {policy.max_vmpl}"
        f.violations.append(f"vmpl {report.vmpl} not allowed (need {want})")
        f.put("configuration", ConfigurationClaim.UNSUPPORTABLE)


def _hardware(verified: SnpEvidenceLike, policy: SnpPolicy, f: Findings) -> None:
    report, product = verified.report, verified.product
    bad = False
    if policy.allowed_products and product not in policy.allowed_products:
        f.violations.append(f"product {product} not allowed")
        bad = True
    if verified.signing_key is SigningKey.VLEK and not policy.allow_vlek:
        f.violations.append("VLEK-signed report not allowed")
        bad = True
    if policy.min_tcb is None:
        f.warnings.append("policy sets no minimum TCB (firmware versions unchecked)")
    else:
        for name, tcb in (
            ("reported_tcb", report.reported_tcb),
            ("committed_tcb", report.committed_tcb),
            ("current_tcb", report.current_tcb),
        ):
            for shortfall in policy.min_tcb.shortfalls(tcb.for_product(product)):
                f.violations.append(f"{name} below minimum: {shortfall}")
                bad = True
    if policy.min_launch_tcb is not None:
        for shortfall in policy.min_launch_tcb.shortfalls(report.launch_tcb.for_product(product)):
            f.violations.append(f"launch_tcb below minimum: {shortfall}")
            bad = True
    if bad:
        f.put("hardware", HardwareClaim.CONTRAINDICATED)
    else:
        f.put("hardware", HardwareClaim.UNSAFE if verified.emulated else HardwareClaim.GENUINE)


def appraise(
    verified: SnpEvidenceLike,
    policy: SnpPolicy,
    *,
    logger: logging.Logger | None = None,
) -> AttestationResult:
    """Appraise verified SEV-SNP evidence against ``policy``; evaluate every check.

    Args:
        verified: ``VerifiedSnpEvidence`` from :func:`teeflow.attestation.snp.verify`.
        policy: the Appraisal Policy.
        logger: where to log the emulated-evidence WARNING (default: this module's logger).

    Returns:
        :class:`~teeflow.attestation.appraisal.AttestationResult` with ``tee`` ``"snp"``
        (``"emulated-snp"`` for emulated evidence); ``violations`` lists every failed check.
    """
    report = verified.report
    emulated = bool(verified.emulated)
    f = Findings()
    measurement = report.measurement.hex()

    if emulated:
        check_emulation(
            f,
            allowed=policy.allow_emulated,
            logger=logger if logger is not None else _LOG,
            log_message=EMULATED_WARNING,
            subject=("measurement", measurement),
        )

    rate_executables(
        f,
        ok=_identity(report, policy, f.violations),
        pinned=bool(policy.measurements),
        unpinned_warning="policy constrains no measurement (any guest image accepted)",
    )
    _configuration(report, policy, f, emulated=emulated)
    check_report_data(
        f, report.report_data, exact=policy.report_data, prefix=policy.report_data_prefix
    )
    _hardware(verified, policy, f)

    product = verified.product
    claims: dict[str, Any] = {
        "measurement": measurement,
        "host_data": report.host_data.hex(),
        "report_data": report.report_data.hex(),
        "guest_svn": report.guest_svn,
        "vmpl": report.vmpl,
        "policy": report.policy.raw,
        "debug": report.policy.debug_allowed,
        "migrate_ma": report.policy.migrate_ma,
        "smt_enabled": report.platform_info.smt_enabled,
        "product": product.value,
        "signing_key": verified.signing_key.name,
        "reported_tcb": report.reported_tcb.for_product(product).components(),
        "id_key_digest": report.id_key_digest.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
    }
    if emulated:
        claims["teeflow.emulated"] = True
    return f.result(
        tee="emulated-snp" if emulated else "snp",
        claims=claims,
        policy_id=policy.identifier(),
        verified_at=verified.verified_at,
    )
