"""Building and serving the interface stand-ins (``teeflow emulate tsm|gramine``).

EMULATED — not hardware. :func:`build_standin` turns a platform name and a measurement into
the tree to serve (:class:`~teeflow.testing.tsm_standin.TsmTree` or
:class:`~teeflow.testing.gramine_standin.GramineTree`, wrapped with the stand-in marker) and
the **reference values** an agreement must list for the evidence it produces;
:func:`serve_standin` mounts it (FUSE, :mod:`teeflow.testing.pseudofs`).

Measurements (``--measurement HEX`` or a workload manifest):

* ``gramine-sgx``: MRENCLAVE = the 32-byte workload measurement;
* ``tdx``: MRTD = the 48 bytes given, or :func:`~teeflow.testing.tsm_standin.standin_measurement`
  of a 32-byte workload measurement; RTMR0..3 as given (default zero);
* ``sev-snp``: MEASUREMENT likewise (48 bytes, or derived from 32).

Keys: the emulation authority under ``$TEEFLOW_HOME/emulation`` (SGX and TDX quotes, sealing
secret) and the emulated SEV-SNP platform under ``$TEEFLOW_HOME/emulation/snp`` — the same
roots the KBS trusts for emulated evidence when its agreement sets ``allow_emulated``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.snp.cert_table import build_cert_table
from teeflow.errors import PlatformError
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_snp import EmulatedSnp
from teeflow.platform.emulated_tdx import EmulatedTdx
from teeflow.testing.gramine_standin import GramineTree
from teeflow.testing.pseudofs import MarkedTree, PseudoTree, serve
from teeflow.testing.tsm_standin import TsmTree, standin_measurement

__all__ = ["STANDIN_PLATFORMS", "StandIn", "build_standin", "serve_standin"]

#: Platforms with a stand-in -> (interface, RCAR tee of its evidence).
STANDIN_PLATFORMS = {
    "tdx": ("configfs-tsm", "emulated-tdx"),
    "sev-snp": ("configfs-tsm", "emulated-snp"),
    "gramine-sgx": ("gramine", "emulated-sgx"),
}


@dataclass
class StandIn:
    """A stand-in ready to serve.

    Attributes:
        platform: ``tdx``, ``sev-snp`` or ``gramine-sgx``.
        tree: what the mount serves (marker included).
        reference_values: the agreement's per-platform reference values for this evidence
            (``{"tdx": {"mrtd": [...], "rtmr0": ...}}``, ``{"snp": {"measurement": [...]}}``,
            ``{"sgx": {"mrenclave": [...]}}``).
        info: what the marker file and the ``ready`` line say.
    """

    platform: str
    tree: PseudoTree
    reference_values: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def _launch_measurement(platform: str, measurement: bytes) -> bytes:
    if len(measurement) == 48:
        return measurement
    return standin_measurement(platform, measurement)


def build_standin(
    platform: str,
    measurement: bytes,
    *,
    rtmrs: Sequence[bytes] = (bytes(48),) * 4,
    home: Path | None = None,
    now: datetime | None = None,
) -> StandIn:
    """The stand-in for ``platform`` presenting ``measurement`` (module docstring).

    Args:
        platform: ``tdx``, ``sev-snp`` or ``gramine-sgx``.
        measurement: 32 bytes (a workload measurement) or, for ``tdx``/``sev-snp``, the
            48-byte MRTD / MEASUREMENT itself.
        rtmrs: TDX RTMR0..3 (48 bytes each).
        home: teeflow home of the emulation roots (default ``$TEEFLOW_HOME``).
        now: creation time of new emulation roots.

    Raises:
        PlatformError: unknown platform, bad measurement size, unreadable emulation roots.
    """
    if platform not in STANDIN_PLATFORMS:
        raise PlatformError(f"no stand-in for {platform!r} (tdx, sev-snp or gramine-sgx)")
    interface, tee = STANDIN_PLATFORMS[platform]
    sizes = (32,) if platform == "gramine-sgx" else (32, 48)
    if len(measurement) not in sizes:
        allowed = " or ".join(map(str, sizes))
        raise PlatformError(f"--measurement for {platform} must be {allowed} bytes")
    authority = EmulationAuthority.load_or_create(home, now=now)
    info: dict[str, Any] = {"platform": platform, "interface": interface, "tee": tee}
    tree: PseudoTree
    if platform == "gramine-sgx":
        tree = GramineTree(authority, measurement)
        refs: dict[str, Any] = {"sgx": {"mrenclave": [measurement.hex()]}}
        info["mrenclave"] = measurement.hex()
        info["mrsigner"] = authority.mrsigner.hex()
    elif platform == "tdx":
        mrtd = _launch_measurement(platform, measurement)
        tdx = EmulatedTdx(authority, mrtd=mrtd, rtmrs=tuple(rtmrs))
        tree = TsmTree("tdx", lambda rd, _level: (tdx.quote(rd), None))
        rtmr_refs = {f"rtmr{i}": r.hex() for i, r in enumerate(tdx.rtmrs)}
        refs = {"tdx": {"mrtd": [mrtd.hex()], **rtmr_refs}}
        info["mrtd"] = mrtd.hex()
    else:
        launch = _launch_measurement(platform, measurement)
        base = EmulatedSnp.load_or_create(home, now=now, measurement=launch)
        by_level = {
            level: EmulatedSnp(base.keys, measurement=launch, vmpl=level) for level in range(4)
        }
        table = build_cert_table(
            [(kind, cert.public_bytes(Encoding.DER)) for kind, cert in (
                ("VCEK", base.vcek_certificate), ("ASK", base.ask_certificate),
                ("ARK", base.ark_certificate),
            )]
        )  # fmt: skip
        tree = TsmTree("sev-snp", lambda rd, level: (by_level[level].report(rd), table))
        refs = {"snp": {"measurement": [launch.hex()]}}
        info["measurement"] = launch.hex()
    info["reference_values"] = refs
    return StandIn(platform, MarkedTree(tree, info), refs, info)


def serve_standin(standin: StandIn, mountpoint: Path, *, exit_with_parent: bool = False) -> None:
    """Mount ``standin`` on ``mountpoint`` (an empty directory) until SIGTERM/SIGINT or an
    unmount (or the parent's exit, with ``exit_with_parent``); prints one JSON ``ready`` line
    (``info`` included) once mounted.

    Raises:
        PlatformError: FUSE unavailable or the mount failed (see
            :func:`teeflow.testing.pseudofs.serve`).
    """
    serve(standin.tree, mountpoint, ready=standin.info, exit_with_parent=exit_with_parent)
