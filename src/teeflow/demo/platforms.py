"""Which platform the demo's workloads run on: ``teeflow demo --platform NAME``.

:func:`demo_platform` maps a demo platform name to the options of each role — the
``--platform`` (and ``--tsm-root``/``--gramine-root``) arguments of the KBS and of the FL
workloads, the agreement's reference values for the aggregator and client measurements, and
the notes the demo prints — and starts whatever that platform needs for the run (on the
given :class:`~contextlib.ExitStack`, so it stops with the demo).

Platforms (:data:`DEMO_PLATFORMS`): ``emulated-sgx`` (the default), ``emulated-tdx`` and
``emulated-snp`` — software TEEs, every workload attests with the emulated attester of that
TEE type, and so does the KBS; ``tdx``, ``sev-snp`` and ``gramine-sgx`` — the **real**
configfs-tsm / Gramine attesters against interface stand-ins (``teeflow emulate tsm|gramine``,
:mod:`teeflow.demo.standins`) that the demo starts, one per role including the KBS (a role's
processes share it, as one machine's configfs-tsm or one enclave image's
``/dev/attestation``), each presenting the role's agreed measurement; the agreement lists what
the stand-ins report (TDX MRTD + RTMRs, SNP MEASUREMENT, SGX MRENCLAVE) for every role,
``workloads.kbs`` included (:attr:`DemoPlatform.kbs_spec`: parties verify the KBS's evidence
of any TEE). Their evidence is EMULATED (emulation root) and the demo says so. Under
``sev-snp`` the KBS runs with ``--sealing recovery-only``: the configfs-tsm stand-in has no
``/dev/sev-guest`` for the SNP derived sealing key.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teeflow.errors import FLError
from teeflow.platform.selection import EMULATED_PLATFORMS, emulated_workload_spec

__all__ = ["DEMO_PLATFORMS", "STANDIN_PLATFORMS", "DemoPlatform", "demo_platform"]

#: Demo platforms served by interface stand-ins (real attesters, emulated evidence).
STANDIN_PLATFORMS: tuple[str, ...] = ("tdx", "sev-snp", "gramine-sgx")
#: ``teeflow demo --platform`` values.
DEMO_PLATFORMS: tuple[str, ...] = (*EMULATED_PLATFORMS, *STANDIN_PLATFORMS)
_ROOT_OPTION = {"tdx": "--tsm-root", "sev-snp": "--tsm-root", "gramine-sgx": "--gramine-root"}


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
        kbs_spec: ``32-byte KBS measurement -> workloads.kbs`` entry of the agreement
            (default: SGX MRENCLAVE).
        notes: what the demo says about the platform (printed and in ``--json``).
        role_args: per-role platform options (``aggregator``, ``client``) on top of
            ``workload_args`` (a stand-in's root).
        standins: role -> mount point of its interface stand-in.
    """

    name: str
    kbs_platform: str
    workload_spec: Callable[[str, bytes], dict[str, Any]]
    workload_args: tuple[str, ...] = ()
    kbs_args: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    kbs_spec: Callable[[bytes], dict[str, Any]] = field(
        default=lambda mr: emulated_workload_spec("emulated-sgx", mr)
    )
    role_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    standins: Mapping[str, str] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        """Every workload's evidence is emulated (emulated platforms, or stand-ins)."""
        covered = (*EMULATED_PLATFORMS, *STANDIN_PLATFORMS)
        return self.name in covered and self.kbs_platform in covered


def demo_platform(name: str, workdir: Path, stack: contextlib.ExitStack[Any], *,
                  serve: bool = False) -> DemoPlatform:
    """The :class:`DemoPlatform` of ``name``, its helpers started on ``stack``.

    Args:
        name: one of :data:`DEMO_PLATFORMS`.
        workdir: the demo's work directory (for helpers' files).
        stack: where helpers register their shutdown.
        serve: also start a stand-in for the serving workload (``teeflow demo --serve``).

    Raises:
        FLError: an unknown demo platform.
    """
    if name in STANDIN_PLATFORMS:
        return _standin_platform(name, workdir, stack, serve=serve)
    if name in EMULATED_PLATFORMS:
        tee = name.removeprefix("emulated-").upper()
        return DemoPlatform(
            name=name,
            kbs_platform=name,
            workload_spec=lambda role, mr: emulated_workload_spec(name, mr),
            kbs_spec=lambda mr: emulated_workload_spec(name, mr),
            notes=(
                f"the KBS and the workloads attest with EMULATED {tee} evidence (software, "
                "no hardware protection)",
            ),
        )
    raise FLError(f"--platform must be one of {', '.join(DEMO_PLATFORMS)}, not {name!r}")


def _role_measurements(serve: bool = False) -> dict[str, bytes]:
    from teeflow.fl.workload import fl_measurement
    from teeflow.kbs.service.self_attestation import kbs_measurement

    out = {
        "kbs": kbs_measurement(),
        "aggregator": fl_measurement("aggregator"),
        "client": fl_measurement("client"),
    }
    if serve:
        from teeflow.serve.workload import serve_measurement

        out["serve"] = serve_measurement()
    return out


def _standin_platform(name: str, workdir: Path, stack: contextlib.ExitStack[Any], *,
                      serve: bool = False) -> DemoPlatform:
    """Start one stand-in per role, the KBS's included (and the serving workload's with
    ``serve``), on ``stack``."""
    from teeflow.demo.standins import start_standin

    measurements = _role_measurements(serve)
    roles = list(measurements)
    procs = {}
    for role in roles:
        proc = start_standin(
            name,
            workdir / "standins" / role,
            measurement=measurements[role],
            env=dict(os.environ),
            logs=workdir / "logs",
            name=f"standin-{role}",
        )
        stack.callback(proc.stop)
        procs[role] = proc
    interface = procs["aggregator"].info.get("interface", "?")

    def spec(role: str, mr: bytes) -> dict[str, Any]:
        if role not in procs or mr != measurements[role]:
            raise FLError(f"no {name} stand-in presents the {role} measurement {mr.hex()[:16]}…")
        refs: dict[str, Any] = procs[role].info["reference_values"]
        return refs

    notes = [f"EMULATED: {interface} stand-in at {p.mountpoint} ({r})" for r, p in procs.items()]
    notes.append(
        f"the KBS, the aggregator and the clients run the real {interface} attester on "
        f"EMULATED {name} evidence (not hardware)"
    )
    option = _ROOT_OPTION[name]
    kbs_args: tuple[str, ...] = (option, str(procs["kbs"].mountpoint))
    if name == "sev-snp":  # the configfs-tsm stand-in has no /dev/sev-guest (derived key)
        kbs_args += ("--sealing", "recovery-only")
        notes.append("the KBS keeps its keys with --sealing recovery-only (no /dev/sev-guest)")
    return DemoPlatform(
        name=name,
        kbs_platform=name,
        workload_spec=spec,
        kbs_spec=lambda mr: spec("kbs", mr),
        kbs_args=kbs_args,
        notes=tuple(notes),
        role_args={r: (option, str(p.mountpoint)) for r, p in procs.items() if r != "kbs"},
        standins={r: str(p.mountpoint) for r, p in procs.items()},
    )
