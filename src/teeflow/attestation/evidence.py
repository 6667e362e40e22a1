"""Types shared by every evidence pipeline (produce -> parse -> verify -> appraise).

:class:`Evidence` is what every Attester (:class:`teeflow.platform.base.Attester`) returns
and what :func:`teeflow.attestation.registry.verify_evidence` takes: the RCAR ``tee`` name,
the primary evidence bytes, which attester produced it, and the optional SEV-SNP
certificate table and additional (e.g. GPU) evidence.

TCB status names are Intel's, as returned by the Intel PCS TCB Info v3 and QE Identity v2
APIs ("Intel SGX and Intel TDX Provisioning Certification Service API", TCB Info /
Enclave Identity data structures) and by Intel QVL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from teeflow.errors import ParseError

__all__ = ["ATTESTER_KINDS", "TEE_NAMES", "Evidence", "TcbEvaluation", "TcbStatus"]

#: RCAR ``tee`` names of primary evidence (Trustee ``kbs_types::Tee`` plus teeflow's
#: emulated variants, which only an emulation root satisfies).
TEE_NAMES = ("sgx", "tdx", "snp", "emulated-sgx", "emulated-tdx", "emulated-snp")
#: What produced a piece of evidence: Gramine's ``/dev/attestation``, Linux configfs-tsm,
#: the teeflow emulator, or ``remote`` (received by a verifier, producer unknown).
ATTESTER_KINDS = ("gramine", "configfs-tsm", "emulated", "remote")
#: Largest primary evidence / certificate table carried (bytes).
_MAX_PRIMARY = 64 * 1024
_MAX_CERTIFICATES = 1024 * 1024


@dataclass(frozen=True)
class Evidence:
    """One piece of attestation evidence (RFC 9334 "Evidence") as an Attester produced it.

    Attributes:
        tee: RCAR tee name, one of :data:`TEE_NAMES` (``sgx`` | ``tdx`` | ``snp`` |
            ``emulated-sgx`` | ``emulated-tdx`` | ``emulated-snp``).
        primary: the SGX/TDX DCAP quote, or the 1184-byte SEV-SNP ATTESTATION_REPORT
            (at most 64 KiB).
        attester: one of :data:`ATTESTER_KINDS` (``gramine`` | ``configfs-tsm`` |
            ``emulated`` | ``remote``).
        certificates: the SEV-SNP certificate table (configfs-tsm ``auxblob``, GHCB
            extended-report layout; :mod:`teeflow.attestation.snp.cert_table`), else None.
        additional: Trustee additional evidence, tee name -> JSON value (e.g. ``nvgpu``).

    Raises (constructor):
        ParseError: unknown ``tee`` or ``attester``, non-bytes or oversized blobs,
            certificates on non-SNP evidence.
    """

    tee: str
    primary: bytes
    attester: str
    certificates: bytes | None = None
    additional: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tee not in TEE_NAMES:
            raise ParseError(f"unknown evidence tee {str(self.tee)[:32]!r}")
        if self.attester not in ATTESTER_KINDS:
            raise ParseError(f"unknown attester kind {str(self.attester)[:32]!r}")
        if not isinstance(self.primary, bytes) or not 0 < len(self.primary) <= _MAX_PRIMARY:
            raise ParseError(f"primary evidence must be 1..{_MAX_PRIMARY} bytes")
        if self.certificates is not None:
            if not self.tee.endswith("snp"):
                raise ParseError("a certificate table belongs to SEV-SNP evidence only")
            if not isinstance(self.certificates, bytes) or len(self.certificates) > (
                _MAX_CERTIFICATES
            ):
                raise ParseError(f"certificate table must be at most {_MAX_CERTIFICATES} bytes")
        if not isinstance(self.additional, Mapping):
            raise ParseError("additional evidence must be a mapping")

    @property
    def platform(self) -> str:
        """The hardware family: ``sgx``, ``tdx`` or ``snp`` (``emulated-`` prefix removed)."""
        return self.tee.removeprefix("emulated-")

    @property
    def emulated(self) -> bool:
        """True for ``emulated-*`` evidence."""
        return self.tee.startswith("emulated-")


class TcbStatus(StrEnum):
    """Intel TCB level status (TCB Info ``tcbLevels[].tcbStatus``)."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


@dataclass(frozen=True)
class TcbEvaluation:
    """The TCB level selected for one component (platform or QE).

    Attributes:
        status: the selected level's status.
        tcb_date: the level's ``tcbDate`` (UTC), when present.
        advisory_ids: Intel security advisory IDs of that level (``INTEL-SA-xxxxx``), in order.
    """

    status: TcbStatus
    tcb_date: datetime | None = None
    advisory_ids: tuple[str, ...] = field(default_factory=tuple)
