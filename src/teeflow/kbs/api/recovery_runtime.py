"""The recovery-mode KBS runtime (:func:`teeflow.kbs.api.server.build_kbs` raises
:class:`RecoveryRequired` carrying one; :func:`teeflow.kbs.api.server.serve` serves it until
the parties' shares recombine the secret, then completes the recovery and serves the KBS).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI

from teeflow.errors import KbsError
from teeflow.kbs.api.recovery import create_recovery_app
from teeflow.kbs.service.identity import KbsKeys
from teeflow.kbs.service.recovery import RecoveryRecord
from teeflow.kbs.service.recovery_mode import RecoveryCoordinator
from teeflow.platform.sealing import PlatformSealer

__all__ = ["RecoveredKeys", "RecoveryRequired", "RecoveryRuntime"]


@dataclass(frozen=True)
class RecoveredKeys:
    """A recovered key set: the keys, the measurement recorded before, the share set and
    the parties whose shares were used."""

    keys: KbsKeys = field(repr=False)
    previous_measurement: bytes
    record: RecoveryRecord
    parties: Sequence[str]


@dataclass
class RecoveryRuntime:
    """A KBS in recovery mode: the coordinator, its app, and what completing needs."""

    coordinator: RecoveryCoordinator
    state_dir: Path
    sealer: PlatformSealer | None
    measurement: bytes
    federation: str
    tls_hosts: tuple[str, ...]
    now: Callable[[], datetime]
    app: FastAPI = field(init=False)

    def __post_init__(self) -> None:
        self.app = create_recovery_app(self.coordinator)

    def tls_context(self) -> ssl.SSLContext:
        """Server TLS context with the ephemeral recovery TLS key.

        Raises:
            KbsError: OpenSSL refuses the credential.
        """
        from teeflow.kbs.api.server import tls_context_for

        return tls_context_for(self.coordinator.tls_certificate, self.coordinator.tls_key)

    def close(self) -> None:
        """Nothing to close (no store is open in recovery mode)."""


class RecoveryRequired(KbsError):
    """The KBS must start in recovery mode; ``runtime`` is the recovery-mode KBS."""

    code = "kbs-recovery-required"

    def __init__(self, runtime: RecoveryRuntime) -> None:
        super().__init__(
            "the KBS key set must be recovered from the parties' shares "
            f"({runtime.coordinator.needs.reason})"
        )
        self.runtime = runtime
