"""Attester side: where a workload runs and how it gets evidence.

Only the emulated SGX platform exists so far (:mod:`teeflow.platform.emulated`): software
evidence in real Intel DCAP format under a local emulation root — never hardware evidence.
"""

from __future__ import annotations

from teeflow.platform.emulated import (
    WORKLOAD_MANIFEST_ENV,
    EmulatedSgx,
    EmulationAuthority,
)

__all__ = ["WORKLOAD_MANIFEST_ENV", "EmulatedSgx", "EmulationAuthority"]
