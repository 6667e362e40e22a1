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
from datetime import datetime
from typing import Any, Protocol, Self

from pydantic import Field, field_serializer, field_validator, model_validator

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
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.policy import Hex16, Hex32, Hex64, HexPrefix64, PolicyModel

__all__ = [
    "EMULATED_WARNING",
    "EnclaveReportLike",
    "SgxEvidenceLike",
    "SgxPolicy",
    "appraise",
]

_LOG = logging.getLogger(__name__)

#: Log message (WARNING level) emitted every time emulated evidence is accepted.
EMULATED_WARNING = "accepting EMULATED evidence — not hardware"


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


class SgxEvidenceLike(Protocol):
    """What :func:`appraise` needs from ``VerifiedSgxEvidence`` (duck-typed)."""

    @property
    def report(self) -> EnclaveReportLike: ...
    @property
    def emulated(self) -> bool: ...
    @property
    def verified_at(self) -> datetime: ...
    @property
    def tcb_status(self) -> TcbStatus | None: ...
    @property
    def advisory_ids(self) -> tuple[str, ...]: ...
    @property
    def collateral_verified(self) -> bool: ...


class SgxPolicy(PolicyModel):
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
    accepted_tcb_statuses: frozenset[TcbStatus] = frozenset({TcbStatus.UP_TO_DATE})
    accepted_advisories: frozenset[str] | None = None
    report_data: Hex64 | None = None
    report_data_prefix: HexPrefix64 | None = None
    allow_emulated: bool = False
    require_collateral: bool = True

    @field_validator("mrenclaves", mode="after")
    @classmethod
    def _dedupe_mrenclaves(cls, value: tuple[str, ...]) -> tuple[str, ...]:
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

    def with_report_data(self, report_data: bytes) -> SgxPolicy:
        """A copy requiring exactly ``report_data`` (64 bytes), e.g. a per-session nonce
        binding; clears ``report_data_prefix``.

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


def _cpu_svn_below(actual: bytes, minimum: bytes) -> bool:
    return len(actual) != len(minimum) or any(a < m for a, m in zip(actual, minimum, strict=True))


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
    log = logger if logger is not None else _LOG
    report = verified.report
    violations: list[str] = []
    warnings: list[str] = []
    vec = _Vector()
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
        if policy.allow_emulated:
            warnings.append("emulated evidence accepted by policy (not hardware)")
            vec.put("hardware", HardwareClaim.UNSAFE)
            log.warning("%s (mrenclave %s)", EMULATED_WARNING, mrenclave)
        else:
            violations.append("emulated evidence not allowed")
            vec.put("hardware", HardwareClaim.UNRECOGNIZED)

    # 2. Enclave identity (Reference Values).
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
    if not identity_ok:
        vec.put("executables", ExecutablesClaim.CONTRAINDICATED_RUNTIME)
    elif policy.mrenclaves or policy.mrsigner is not None:
        vec.put("executables", ExecutablesClaim.APPROVED_RUNTIME)
    else:
        warnings.append("policy constrains no enclave identity (any enclave accepted)")
        vec.put("executables", ExecutablesClaim.UNRECOGNIZED_RUNTIME)

    # 3. Debug attribute.
    if debug:
        if policy.allow_debug:
            warnings.append("debug enclave accepted by policy (memory readable by a debugger)")
            vec.put("configuration", ConfigurationClaim.UNSAFE)
            vec.put("runtime_opaque", RuntimeOpaqueClaim.ISOLATED)
        else:
            violations.append("debug enclave not allowed")
            vec.put("configuration", ConfigurationClaim.UNSUPPORTABLE)
            vec.put("runtime_opaque", RuntimeOpaqueClaim.VISIBLE)
    else:
        vec.put("configuration", ConfigurationClaim.APPROVED)
        if not emulated:
            vec.put("runtime_opaque", RuntimeOpaqueClaim.ENCRYPTED)

    # 4. REPORT_DATA binding.
    if policy.report_data is not None:
        if report_data.hex() != policy.report_data:
            violations.append("report_data does not match expected value")
            vec.put("instance_identity", InstanceIdentityClaim.UNRECOGNIZED)
        else:
            vec.put("instance_identity", InstanceIdentityClaim.RECOGNIZED)
    elif policy.report_data_prefix is not None:
        if not report_data.hex().startswith(policy.report_data_prefix):
            violations.append("report_data does not start with expected prefix")
            vec.put("instance_identity", InstanceIdentityClaim.UNRECOGNIZED)
        else:
            vec.put("instance_identity", InstanceIdentityClaim.RECOGNIZED)

    # 5. Platform TCB (from verified collateral).
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

    for advisory in advisories:
        if policy.accepted_advisories is None or advisory.upper() in policy.accepted_advisories:
            warnings.append(f"advisory {advisory} accepted by policy")
            vec.put("hardware", HardwareClaim.UNSAFE)
        else:
            violations.append(f"advisory {advisory} not accepted")
            vec.put("hardware", HardwareClaim.CONTRAINDICATED)

    if policy.min_cpu_svn is not None:
        minimum = bytes.fromhex(policy.min_cpu_svn)
        if _cpu_svn_below(cpu_svn, minimum):
            violations.append(f"cpu_svn {cpu_svn.hex()} below minimum {policy.min_cpu_svn}")
            vec.put("hardware", HardwareClaim.CONTRAINDICATED)

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

    return AttestationResult(
        tee="emulated-sgx" if emulated else "sgx",
        violations=tuple(violations),
        warnings=tuple(warnings),
        trust_vector=vec.build(),
        claims=claims,
        policy_id=policy.identifier(),
        verified_at=verified.verified_at,
    )
