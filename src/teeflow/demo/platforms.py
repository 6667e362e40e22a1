"""Which platform the demo's workloads run on: ``teeflow demo --platform NAME``.

:func:`demo_platform` maps a demo platform name to the options of each role — the
``--platform`` (and ``--tsm-root``/``--gramine-root``) arguments of the KBS and of the FL
workloads, the agreement's reference values for the aggregator and client measurements, and
the notes the demo prints — and starts whatever that platform needs for the run (on the
given :class:`~contextlib.ExitStack`, so it stops with the demo).

Platforms (:data:`DEMO_PLATFORMS`): ``emulated-sgx`` (the default), ``emulated-tdx`` and
``emulated-snp`` — software TEEs, every workload attests with the emulated attester of that
TEE type. The KBS itself runs on ``emulated-sgx`` in every variant (parties verify SGX KBS
evidence only so far), and the demo says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teeflow.errors import FLError
from teeflow.platform.selection import EMULATED_PLATFORMS, emulated_workload_spec

__all__ = ["DEMO_PLATFORMS", "DemoPlatform", "demo_platform"]

#: ``teeflow demo --platform`` values.
DEMO_PLATFORMS: tuple[str, ...] = EMULATED_PLATFORMS


@dataclass(frozen=True)
class DemoPlatform:
    """The role options of one demo platform.

    Attributes:
        name: the workloads' ``--platform`` (aggregator and clients).
        kbs_platform: the KBS's ``--platform``.
        workload_spec: ``(role, 32-byte measurement) -> workloads.<role>`` entry of the
            agreement (reference values the workloads' evidence will carry).
        workload_args: further platform options of the workloads (``--tsm-root DIR`` …).
        kbs_args: further platform options of the KBS.
        notes: what the demo says about the platform (printed and in ``--json``).
    """

    name: str
    kbs_platform: str
    workload_spec: Callable[[str, bytes], dict[str, Any]]
    workload_args: tuple[str, ...] = ()
    kbs_args: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def emulated(self) -> bool:
        """Every workload's evidence comes from an emulated platform."""
        return self.name in EMULATED_PLATFORMS and self.kbs_platform in EMULATED_PLATFORMS


def demo_platform(name: str, workdir: Path, stack: contextlib.ExitStack[Any]) -> DemoPlatform:
    """The :class:`DemoPlatform` of ``name``, its helpers started on ``stack``.

    Args:
        name: one of :data:`DEMO_PLATFORMS`.
        workdir: the demo's work directory (for helpers' files).
        stack: where helpers register their shutdown.

    Raises:
        FLError: an unknown demo platform.
    """
    del workdir, stack  # the emulated platforms need no helper process
    if name in EMULATED_PLATFORMS:
        tee = name.removeprefix("emulated-").upper()
        return DemoPlatform(
            name=name,
            kbs_platform="emulated-sgx",
            workload_spec=lambda role, mr: emulated_workload_spec(name, mr),
            notes=(
                f"workloads attest with EMULATED {tee} evidence (software, no hardware "
                "protection); the KBS runs on emulated-sgx",
            ),
        )
    raise FLError(f"--platform must be one of {', '.join(DEMO_PLATFORMS)}, not {name!r}")
