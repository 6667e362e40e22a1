"""TEE-agnostic Attestation Results: AR4SI trustworthiness vector, EAR status, violations.

Sources:

* draft-ietf-rats-ar4si-09 ("Attestation Results for Secure Interactions"), §2.3
  "Trustworthiness Claims": each claim is a signed 8-bit integer whose value falls in a
  *trustworthiness tier* — **none** ``-1..1``, **affirming** ``2..31`` (and ``-2..-32``),
  **warning** ``32..95`` (and ``-33..-96``), **contraindicated** ``96..127`` (and
  ``-97..-128``) — and the claim-specific value tables (instance-identity, configuration,
  executables, file-system, hardware, runtime-opaque, storage-opaque, sourced-data). The code
  points below are those tables' values; the same values are used by Veraison's EAR library.
* draft-ietf-rats-ear (EAT Attestation Results): ``ear.status`` is one of ``affirming``,
  ``warning``, ``contraindicated``, ``none``.

An :class:`AttestationResult` is what every ``appraise`` (SGX now, TDX and SEV-SNP later)
returns. Its ``status`` and ``accepted`` are *derived*, never passed in: ``accepted`` is True
iff there are no violations; ``status`` is ``contraindicated`` iff there are violations,
otherwise the worst tier of the trust vector, raised to ``warning`` when the result carries
warnings (e.g. emulated evidence accepted, a TCB level that is not UpToDate accepted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

from teeflow.errors import ParseError, PolicyViolation

__all__ = [
    "TRUST_CLAIM_NAMES",
    "AttestationResult",
    "ConfigurationClaim",
    "EarStatus",
    "ExecutablesClaim",
    "FileSystemClaim",
    "HardwareClaim",
    "InstanceIdentityClaim",
    "RuntimeOpaqueClaim",
    "SourcedDataClaim",
    "StorageOpaqueClaim",
    "TrustworthinessVector",
    "tier_of",
]


class EarStatus(StrEnum):
    """EAR ``ear.status`` / AR4SI trustworthiness tier, ordered by :attr:`severity`."""

    NONE = "none"
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"

    @property
    def severity(self) -> int:
        """0 none < 1 affirming < 2 warning < 3 contraindicated."""
        return _SEVERITY[self]


_SEVERITY = {
    EarStatus.NONE: 0,
    EarStatus.AFFIRMING: 1,
    EarStatus.WARNING: 2,
    EarStatus.CONTRAINDICATED: 3,
}


def tier_of(value: int) -> EarStatus:
    """The AR4SI tier of one trustworthiness claim value (ar4si-09 §2.3).

    Raises:
        ValueError: ``value`` outside the signed 8-bit range ``-128..127``.
    """
    if not -128 <= value <= 127:
        raise ValueError(f"trustworthiness claim {value} outside -128..127")
    magnitude = value if value >= 0 else -value - 1  # -2..-32 mirrors 1..31, etc.
    if value in (-1, 0, 1):
        return EarStatus.NONE
    if magnitude <= 31:
        return EarStatus.AFFIRMING
    if magnitude <= 95:
        return EarStatus.WARNING
    return EarStatus.CONTRAINDICATED


# Per-claim code points, draft-ietf-rats-ar4si-09 §2.3 (the claim value tables).
class InstanceIdentityClaim(IntEnum):
    """``instance-identity``: is this the Attester instance the Verifier expects?"""

    NO_CLAIM = 0
    RECOGNIZED = 2  # recognized and not known to be compromised
    UNTRUSTWORTHY = 96  # recognized, but its key indicates an untrustworthy device
    UNRECOGNIZED = 97  # not recognized although the Verifier believes it should be
    CRYPTO_FAILED = 99


class ConfigurationClaim(IntEnum):
    """``configuration``: exposure of known vulnerabilities by the Attester's configuration."""

    NO_CLAIM = 0
    APPROVED = 2
    NO_KNOWN_VULNERABILITIES = 3
    UNSAFE = 32  # known vulnerabilities
    UNSUPPORTABLE = 96  # unacceptable security vulnerabilities
    CRYPTO_FAILED = 99


class ExecutablesClaim(IntEnum):
    """``executables``: code loaded into the Target Environment."""

    NO_CLAIM = 0
    APPROVED_RUNTIME = 2
    APPROVED_BOOT = 3
    UNSAFE_RUNTIME = 32  # recognized, but known bugs or vulnerabilities
    UNRECOGNIZED_RUNTIME = 33
    CONTRAINDICATED_RUNTIME = 96
    CRYPTO_FAILED = 99


class FileSystemClaim(IntEnum):
    """``file-system``: files found in the Attester's file system."""

    NO_CLAIM = 0
    APPROVED = 2
    UNRECOGNIZED = 32
    CONTRAINDICATED = 96
    CRYPTO_FAILED = 99


class HardwareClaim(IntEnum):
    """``hardware``: genuineness and known vulnerabilities of hardware/firmware (TCB)."""

    NO_CLAIM = 0
    GENUINE = 2
    UNSAFE = 32  # genuine, but known security vulnerabilities
    CONTRAINDICATED = 96  # recognized, trustworthiness contraindicated
    UNRECOGNIZED = 97  # not recognized although it should be
    CRYPTO_FAILED = 99


class RuntimeOpaqueClaim(IntEnum):
    """``runtime-opaque``: visibility of the Attester's memory from outside."""

    NO_CLAIM = 0
    ENCRYPTED = 2  # encrypted memory inside a TEE
    ISOLATED = 32  # isolated, not encrypted
    VISIBLE = 96  # unacceptably visible
    CRYPTO_FAILED = 99


class StorageOpaqueClaim(IntEnum):
    """``storage-opaque``: encryption of persistent secrets."""

    NO_CLAIM = 0
    HW_KEYS_ENCRYPTED = 2
    SW_KEYS_ENCRYPTED = 32
    UNENCRYPTED = 96
    CRYPTO_FAILED = 99


class SourcedDataClaim(IntEnum):
    """``sourced-data``: trustworthiness of data from other Attesters."""

    NO_CLAIM = 0
    TRUSTED_SOURCES = 2
    UNTRUSTED_SOURCES = 32
    CONTRAINDICATED_SOURCES = 96
    CRYPTO_FAILED = 99


#: Python attribute name -> AR4SI / EAR JSON key, in AR4SI order.
TRUST_CLAIM_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "instance_identity": "instance-identity",
        "configuration": "configuration",
        "executables": "executables",
        "file_system": "file-system",
        "hardware": "hardware",
        "runtime_opaque": "runtime-opaque",
        "storage_opaque": "storage-opaque",
        "sourced_data": "sourced-data",
    }
)
_JSON_TO_ATTR = {v: k for k, v in TRUST_CLAIM_NAMES.items()}


@dataclass(frozen=True)
class TrustworthinessVector:
    """AR4SI trustworthiness vector: eight claims, each an int in ``-128..127`` (0 = no claim).

    Raises:
        ValueError: a claim is not an int (bools rejected) or is outside ``-128..127``.
    """

    instance_identity: int = 0
    configuration: int = 0
    executables: int = 0
    file_system: int = 0
    hardware: int = 0
    runtime_opaque: int = 0
    storage_opaque: int = 0
    sourced_data: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"trustworthiness claim {f.name} must be an int")
            tier_of(value)  # range check
            object.__setattr__(self, f.name, int(value))  # IntEnum -> plain int

    def items(self) -> Iterable[tuple[str, int]]:
        """``(json_key, value)`` pairs in AR4SI order, including zero claims."""
        return ((TRUST_CLAIM_NAMES[f.name], getattr(self, f.name)) for f in fields(self))

    @property
    def status(self) -> EarStatus:
        """The worst tier among the claims (``none`` when every claim is 0/±1)."""
        worst = EarStatus.NONE
        for _, value in self.items():
            t = tier_of(value)
            if t.severity > worst.severity:
                worst = t
        return worst

    def to_json(self) -> dict[str, int]:
        """EAR ``ear.trustworthiness-vector`` object: non-zero claims only, AR4SI key names."""
        return {key: value for key, value in self.items() if value != 0}

    @classmethod
    def from_json(cls, data: object) -> TrustworthinessVector:
        """Parse an ``ear.trustworthiness-vector`` object (missing claims = 0).

        Raises:
            ParseError: not an object, unknown claim names, non-integer or out-of-range values.
        """
        if not isinstance(data, Mapping):
            raise ParseError("trustworthiness vector must be an object")
        kwargs: dict[str, int] = {}
        for key, value in data.items():
            attr = _JSON_TO_ATTR.get(key) if isinstance(key, str) else None
            if attr is None:
                raise ParseError(f"unknown trustworthiness claim {key!r}")
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParseError(f"trustworthiness claim {key} must be an integer")
            if not -128 <= value <= 127:
                raise ParseError(f"trustworthiness claim {key}={value} outside -128..127")
            kwargs[attr] = value
        return cls(**kwargs)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class AttestationResult:
    """Outcome of appraising verified Evidence against an Appraisal Policy (RFC 9334 §8.4).

    Construct with every field except ``status`` and ``accepted``, which are derived (see the
    module docstring) so they can never disagree with the violations.

    Attributes:
        tee: evidence type, e.g. ``"sgx"``, ``"emulated-sgx"``, later ``"tdx"``, ``"snp"``.
        violations: every policy violation, in check order (empty when accepted).
        warnings: reasons the result is accepted with reservations.
        trust_vector: AR4SI trustworthiness vector.
        claims: the appraised claims (JSON-compatible values; read-only view), e.g. for SGX
            ``mrenclave``, ``mrsigner``, ``isv_prod_id``, ``isv_svn``, ``debug``,
            ``tcb_status``, ``advisories``, ``report_data`` (hex) and ``teeflow.emulated``.
        policy_id: the policy's identifier (``ear.appraisal-policy-id``), if any.
        verified_at: the ``now`` at which the evidence was verified (UTC).
        status: derived EAR status.
        accepted: derived; True iff ``violations`` is empty.
    """

    tee: str
    violations: tuple[str, ...]
    warnings: tuple[str, ...]
    trust_vector: TrustworthinessVector
    claims: Mapping[str, Any]
    policy_id: str | None
    verified_at: datetime
    status: EarStatus = field(init=False)
    accepted: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "violations", tuple(self.violations))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "claims", _freeze(self.claims))
        object.__setattr__(self, "accepted", not self.violations)
        if self.violations:
            status = EarStatus.CONTRAINDICATED
        else:
            status = self.trust_vector.status
            if status is EarStatus.CONTRAINDICATED:
                # A contraindicated claim without a violation is a bug in the appraiser:
                # fail closed rather than report an accepted-but-contraindicated result.
                raise ValueError("contraindicated trust vector without any violation")
            if self.warnings and status.severity < EarStatus.WARNING.severity:
                status = EarStatus.WARNING
        object.__setattr__(self, "status", status)

    @property
    def emulated(self) -> bool:
        """True when the claims say the evidence came from an emulated (software) TEE."""
        return self.claims.get("teeflow.emulated") is True

    def raise_for_status(self) -> AttestationResult:
        """Return ``self`` when accepted, else raise.

        Raises:
            PolicyViolation: ``accepted`` is False; ``.violations`` lists every violation.
        """
        if not self.accepted:
            policy = f" by policy {self.policy_id}" if self.policy_id else ""
            raise PolicyViolation(
                f"{self.tee} evidence rejected{policy}: " + "; ".join(self.violations),
                list(self.violations),
            )
        return self
