"""Building blocks shared by the per-TEE ``appraise`` functions (SGX, TDX, SEV-SNP, NVIDIA).

Every appraiser evaluates **all** of its checks, collecting violation and warning texts and
an AR4SI trustworthiness vector (draft-ietf-rats-ar4si-09 §2.3) in a :class:`Findings`
accumulator, then turns it into an
:class:`~teeflow.attestation.appraisal.AttestationResult` with :meth:`Findings.result`.
The checks that read the same in every TEE live here, with their exact texts:

* :func:`check_emulation` — evidence chaining to a teeflow emulation root: violation
  ``emulated <what> not allowed`` (hardware 97), or, when the policy allows it, the warning
  ``emulated <what> accepted by policy (not hardware)`` (hardware 32) and a ``logging``
  WARNING on every call;
* :func:`rate_executables` — executables 96 / 2 / 33 (with a warning) from the outcome of
  the reference-value comparison;
* :func:`check_report_data` — REPORT_DATA exact value or prefix: ``report_data does not
  match expected value`` / ``report_data does not start with expected prefix``
  (instance-identity 97), instance-identity 2 when it matches;
* :func:`check_tcb_status` and :func:`check_advisories` (both in :func:`check_dcap_tcb`) —
  Intel DCAP TCB status and security advisories (SGX and TDX), see their docstrings;
* :func:`svn_below` — component-wise SVN comparison.

This module imports no TEE subpackage; the TEE subpackages import it (and never each
other).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from teeflow.attestation.appraisal import (
    AttestationResult,
    ExecutablesClaim,
    HardwareClaim,
    InstanceIdentityClaim,
    TrustworthinessVector,
    tier_of,
)
from teeflow.attestation.evidence import TcbStatus

__all__ = [
    "EMULATED_WARNING",
    "DcapEvidenceLike",
    "DcapPolicyLike",
    "EvidenceLike",
    "Findings",
    "check_advisories",
    "check_dcap_tcb",
    "check_emulation",
    "check_report_data",
    "check_tcb_status",
    "rate_executables",
    "reset_emulated_warnings",
    "svn_below",
]

#: Log message (WARNING level) emitted every time emulated Intel evidence is accepted.
EMULATED_WARNING = "accepting EMULATED evidence — not hardware"


class EvidenceLike(Protocol):
    """What every appraiser reads besides the TEE report: verified evidence (duck-typed)."""

    @property
    def emulated(self) -> bool: ...  # chain ends in a teeflow emulation root
    @property
    def verified_at(self) -> datetime: ...  # the ``now`` of verification (UTC)


class DcapEvidenceLike(EvidenceLike, Protocol):
    """Verified Intel DCAP evidence (SGX, TDX): the TCB evaluation from collateral."""

    @property
    def tcb_status(self) -> TcbStatus | None: ...
    @property
    def advisory_ids(self) -> tuple[str, ...]: ...
    @property
    def collateral_verified(self) -> bool: ...


class DcapPolicyLike(Protocol):
    """The TCB acceptance settings of an Intel DCAP policy (SGX, TDX)."""

    @property
    def accepted_tcb_statuses(self) -> frozenset[TcbStatus]: ...
    @property
    def accepted_advisories(self) -> frozenset[str] | None: ...
    @property
    def require_collateral(self) -> bool: ...


class Findings:
    """Violations, warnings and trust-vector contributions of one appraisal.

    For each claim (a :class:`~teeflow.attestation.appraisal.TrustworthinessVector` field
    name such as ``"hardware"``) the most severe AR4SI tier put so far wins; within a tier
    the larger value wins. Violations and warnings keep their order.
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self._values: dict[str, int] = {}

    def put(self, claim: str, value: int) -> None:
        """Contribute ``value`` (``-128..127``) to ``claim``."""
        old = self._values.get(claim)
        if old is None or (tier_of(value).severity, value) > (tier_of(old).severity, old):
            self._values[claim] = int(value)

    def vector(self) -> TrustworthinessVector:
        """The accumulated trustworthiness vector (claims never put are 0)."""
        return TrustworthinessVector(**self._values)

    def result(
        self,
        *,
        tee: str,
        claims: Mapping[str, Any],
        policy_id: str | None,
        verified_at: datetime,
    ) -> AttestationResult:
        """The :class:`~teeflow.attestation.appraisal.AttestationResult` of these findings."""
        return AttestationResult(
            tee=tee,
            violations=tuple(self.violations),
            warnings=tuple(self.warnings),
            trust_vector=self.vector(),
            claims=claims,
            policy_id=policy_id,
            verified_at=verified_at,
        )


class _ThrottledWarning:
    """Log each (logger, message, subject) at once, then at most every ``interval`` seconds
    with the count of acceptances not logged since: a KBS under load accepting emulated
    evidence must not spend its time writing the same line (the audit log has every one)."""

    def __init__(self, interval: float = 60.0, max_keys: int = 1024) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, tuple[str, str] | None], tuple[float, int]] = {}

    def warn(
        self, logger: logging.Logger, message: str, subject: tuple[str, str] | None
    ) -> None:
        key = (logger.name, message, subject)
        now = time.monotonic()
        with self._lock:
            seen = self._last.get(key)
            if seen is not None and now - seen[0] < self._interval:
                self._last[key] = (seen[0], seen[1] + 1)
                return
            if len(self._last) >= self._max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
        more = "" if seen is None or not seen[1] else f"; {seen[1]} more since last logged"
        if subject is None:
            logger.warning("%s%s", message, more)
        else:
            logger.warning("%s (%s %s)%s", message, subject[0], subject[1], more)


    def reset(self) -> None:
        """Forget what was logged (the next warning of each kind is logged at once)."""
        with self._lock:
            self._last.clear()


_EMULATED_LOG = _ThrottledWarning()


def reset_emulated_warnings() -> None:
    """Log the next emulated-evidence warning of each kind at once (tests, long runs)."""
    _EMULATED_LOG.reset()


def check_emulation(
    findings: Findings,
    *,
    allowed: bool,
    logger: logging.Logger | None = None,
    log_message: str = EMULATED_WARNING,
    subject: tuple[str, str] | None = None,
    what: str = "evidence",
) -> None:
    """Appraise evidence known to chain to an emulation root (call only when it does).

    Args:
        findings: the accumulator.
        allowed: the policy's ``allow_emulated``.
        logger: when given and ``allowed``, log ``"<log_message> (<name> <value>)"`` (or
            just ``log_message`` without ``subject``) at WARNING level — the first time,
            then at most once a minute per message and subject, with the count since.
        log_message: the log text.
        subject: ``(name, value)`` identifying the workload in the log line, e.g.
            ``("mrenclave", "<hex>")``.
        what: noun in the texts (``"evidence"``, ``"GPU evidence"``).
    """
    if allowed:
        findings.warnings.append(f"emulated {what} accepted by policy (not hardware)")
        findings.put("hardware", HardwareClaim.UNSAFE)
        if logger is not None:
            _EMULATED_LOG.warn(logger, log_message, subject)
    else:
        findings.violations.append(f"emulated {what} not allowed")
        findings.put("hardware", HardwareClaim.UNRECOGNIZED)


def rate_executables(findings: Findings, *, ok: bool, pinned: bool, unpinned_warning: str) -> None:
    """Executables claim from the reference-value comparison.

    Args:
        ok: every pinned reference value matched (violations already recorded).
        pinned: the policy pins at least one code identity.
        unpinned_warning: warning text when nothing is pinned (any code accepted).

    Effect: 96 when not ``ok``; else 2 when ``pinned``; else 33 and ``unpinned_warning``.
    """
    if not ok:
        findings.put("executables", ExecutablesClaim.CONTRAINDICATED_RUNTIME)
    elif pinned:
        findings.put("executables", ExecutablesClaim.APPROVED_RUNTIME)
    else:
        findings.warnings.append(unpinned_warning)
        findings.put("executables", ExecutablesClaim.UNRECOGNIZED_RUNTIME)


def check_report_data(
    findings: Findings, report_data: bytes, *, exact: str | None, prefix: str | None
) -> None:
    """REPORT_DATA binding: ``exact`` (lower-case hex) or else ``prefix`` (hex prefix).

    Nothing happens when both are None. A mismatch is a violation with instance-identity
    97; a match gives instance-identity 2.
    """
    if exact is None and prefix is None:
        return
    actual = report_data.hex()
    if exact is not None:
        ok, what = actual == exact, "match expected value"
    else:
        ok, what = actual.startswith(prefix or ""), "start with expected prefix"
    if ok:
        findings.put("instance_identity", InstanceIdentityClaim.RECOGNIZED)
    else:
        findings.violations.append(f"report_data does not {what}")
        findings.put("instance_identity", InstanceIdentityClaim.UNRECOGNIZED)


def check_tcb_status(
    findings: Findings,
    tcb_status: TcbStatus | None,
    *,
    accepted: Collection[TcbStatus],
    require_collateral: bool,
    emulated: bool,
) -> None:
    """Intel DCAP TCB status from verified collateral (None: no collateral).

    Effect on hardware: no status → ``TCB status unknown (no collateral)`` violation (97)
    when ``require_collateral``, else a warning; status not in ``accepted`` →
    ``tcb status <S> not accepted`` (96); accepted but not UpToDate → warning (32);
    UpToDate → 2 (32 when ``emulated``).
    """
    if tcb_status is None:
        if require_collateral:
            findings.violations.append("TCB status unknown (no collateral)")
            findings.put("hardware", HardwareClaim.UNRECOGNIZED)
        else:
            findings.warnings.append("TCB status unknown (no collateral); accepted by policy")
    elif tcb_status not in accepted:
        findings.violations.append(f"tcb status {tcb_status} not accepted")
        findings.put("hardware", HardwareClaim.CONTRAINDICATED)
    elif tcb_status is not TcbStatus.UP_TO_DATE:
        findings.warnings.append(f"tcb status {tcb_status} accepted by policy")
        findings.put("hardware", HardwareClaim.UNSAFE)
    else:
        findings.put("hardware", HardwareClaim.GENUINE if not emulated else HardwareClaim.UNSAFE)


def check_advisories(
    findings: Findings, advisories: Iterable[str], *, accepted: Collection[str] | None
) -> None:
    """Intel security advisories (``INTEL-SA-xxxxx``) listed for the TCB level.

    ``accepted`` None accepts every advisory; otherwise only the (upper-case) IDs in it.
    Each accepted advisory is a warning (hardware 32), any other a violation
    ``advisory <ID> not accepted`` (hardware 96).
    """
    for advisory in advisories:
        if accepted is None or advisory.upper() in accepted:
            findings.warnings.append(f"advisory {advisory} accepted by policy")
            findings.put("hardware", HardwareClaim.UNSAFE)
        else:
            findings.violations.append(f"advisory {advisory} not accepted")
            findings.put("hardware", HardwareClaim.CONTRAINDICATED)


def check_dcap_tcb(
    findings: Findings,
    tcb_status: TcbStatus | None,
    advisories: Iterable[str],
    *,
    policy: DcapPolicyLike,
    emulated: bool,
    relaunch_advised: bool = False,
) -> None:
    """:func:`check_tcb_status`, then (TDX) the relaunch advice — warning ``TD relaunch
    advised: the TDX module was updated after launch``, hardware 32, only with a status —
    then :func:`check_advisories`, with the policy's settings."""
    check_tcb_status(
        findings,
        tcb_status,
        accepted=policy.accepted_tcb_statuses,
        require_collateral=policy.require_collateral,
        emulated=emulated,
    )
    if tcb_status is not None and relaunch_advised:
        findings.warnings.append("TD relaunch advised: the TDX module was updated after launch")
        findings.put("hardware", HardwareClaim.UNSAFE)
    check_advisories(findings, advisories, accepted=policy.accepted_advisories)


def svn_below(actual: bytes, minimum: bytes) -> bool:
    """True when the lengths differ or any SVN byte of ``actual`` is below ``minimum``'s."""
    return len(actual) != len(minimum) or any(a < m for a, m in zip(actual, minimum, strict=True))
