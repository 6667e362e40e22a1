"""Types shared by every evidence pipeline (parse -> verify -> appraise).

TCB status names are Intel's, as returned by the Intel PCS TCB Info v3 and QE Identity v2
APIs ("Intel SGX and Intel TDX Provisioning Certification Service API", TCB Info /
Enclave Identity data structures) and by Intel QVL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

__all__ = ["TcbEvaluation", "TcbStatus"]


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
