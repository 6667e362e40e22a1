"""Choosing a platform by name: :func:`attester_for` and :class:`PlatformOptions`.

Every role (``kbs serve``, ``aggregator run``, ``client run``, ``compute serve``) takes
``--platform NAME`` (default ``auto``), ``--tsm-root DIR`` and ``--gramine-root DIR`` and gets
its :class:`~teeflow.platform.base.Attester` here — no other module constructs an attester.

Names (:data:`PLATFORM_NAMES`)::

    auto          the hardware interface found (detect_platform); PlatformError if none —
                  never an emulated platform
    gramine-sgx   GramineAttester(<gramine_root>)            tee sgx,  kind gramine
    tdx           TsmAttester(<tsm_root>, tdx_guest)          tee tdx,  kind configfs-tsm
    sev-snp       TsmAttester(<tsm_root>, sev_guest)          tee snp,  kind configfs-tsm
    emulated-sgx  EmulatedSgx(MRENCLAVE = measurement)        tee emulated-sgx, kind emulated
    emulated-tdx  EmulatedTdx(MRTD = measurement48)           tee emulated-tdx, kind emulated
    emulated-snp  EmulatedSnp(MEASUREMENT = measurement48)    tee emulated-snp, kind emulated

Emulated platforms are chosen only by name. They report the role's 32-byte workload
measurement (:func:`teeflow.workload.measurement`) as their code identity; TDX and SNP
identities are 48 bytes, so the emulated TDX MRTD and SNP MEASUREMENT are the measurement
followed by 16 zero bytes (:func:`emulated_identity`) — what an agreement lists as the role's
``tdx.mrtd`` / ``snp.measurement`` reference value. On hardware the platform measures the
workload itself and ``measurement`` is not used.

The hardware attesters are probed when built (the interface must exist and, for
configfs-tsm, report the expected provider), so a role fails at start-up with one line
saying what to do, not at its first attestation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teeflow.errors import PlatformError
from teeflow.platform.base import (
    DEFAULT_DEV_ROOT,
    DEFAULT_GRAMINE_ROOT,
    DEFAULT_TSM_ROOT,
    Attester,
    detect_platform,
)

if TYPE_CHECKING:
    from teeflow.platform.emulated import EmulationAuthority

__all__ = [
    "EMULATED_PLATFORMS",
    "PLATFORM_NAMES",
    "PLATFORM_TEES",
    "PlatformOptions",
    "attester_for",
    "check_platform_name",
    "emulated_identity",
    "emulated_workload_spec",
]

#: Every ``--platform`` value, in help order.
PLATFORM_NAMES = (
    "auto", "emulated-sgx", "emulated-tdx", "emulated-snp", "gramine-sgx", "tdx", "sev-snp",
)  # fmt: skip
#: The emulated platforms (software evidence; development and CI only).
EMULATED_PLATFORMS = ("emulated-sgx", "emulated-tdx", "emulated-snp")
#: Platform name -> RCAR tee of its evidence (``auto``: whatever is detected).
PLATFORM_TEES = {
    "emulated-sgx": "emulated-sgx", "emulated-tdx": "emulated-tdx",
    "emulated-snp": "emulated-snp", "gramine-sgx": "sgx", "tdx": "tdx", "sev-snp": "snp",
}  # fmt: skip


def check_platform_name(name: object) -> str:
    """``name`` if it is one of :data:`PLATFORM_NAMES`.

    Raises:
        PlatformError: any other value (the message lists the valid names).
    """
    if not isinstance(name, str) or name not in PLATFORM_NAMES:
        shown = str(name)[:40]
        raise PlatformError(f"unknown platform {shown!r}: use one of {', '.join(PLATFORM_NAMES)}")
    return name


def emulated_identity(platform: str, measurement: bytes) -> bytes:
    """The code identity an emulated platform reports for a workload ``measurement``:
    MRENCLAVE (32 bytes) for ``emulated-sgx``; MRTD / MEASUREMENT (48 bytes: the 32-byte
    measurement followed by 16 zero bytes, or a 48-byte value as is) for ``emulated-tdx`` /
    ``emulated-snp``.

    Raises:
        PlatformError: not an emulated platform, or a measurement of the wrong length.
    """
    if platform not in EMULATED_PLATFORMS:
        raise PlatformError(f"{platform!r} is not an emulated platform")
    if not isinstance(measurement, bytes | bytearray):
        raise PlatformError("measurement must be bytes")
    value = bytes(measurement)
    if platform == "emulated-sgx":
        if len(value) != 32:
            raise PlatformError(f"emulated-sgx needs a 32-byte measurement, got {len(value)}")
        return value
    if len(value) == 32:
        return value + bytes(16)
    if len(value) != 48:
        raise PlatformError(f"{platform} needs a 32- or 48-byte measurement, got {len(value)}")
    return value


def emulated_workload_spec(platform: str, measurement: bytes) -> dict[str, Any]:
    """The agreement's ``workloads.<role>`` entry accepting a workload of ``measurement`` on
    an emulated platform: ``{"sgx": {"mrenclave": [hex]}}``, ``{"tdx": {"mrtd": [hex]}}``
    or ``{"snp": {"measurement": [hex], "max_vmpl": 0}}`` with :func:`emulated_identity`.

    Raises:
        PlatformError: as :func:`emulated_identity`.
    """
    identity = emulated_identity(platform, measurement).hex()
    if platform == "emulated-sgx":
        return {"sgx": {"mrenclave": [identity]}}
    if platform == "emulated-tdx":
        return {"tdx": {"mrtd": [identity]}}
    return {"snp": {"measurement": [identity], "max_vmpl": 0}}


def _gramine(root: Path) -> Attester:
    from teeflow.platform.gramine import GramineAttester

    attester = GramineAttester(root)
    if not (root / "attestation_type").exists():
        raise PlatformError(
            f"gramine-sgx: no {root / 'attestation_type'}: run inside a Gramine-SGX enclave "
            "(or point --gramine-root at the /dev/attestation directory)"
        )
    kind = attester.attestation_type()
    if kind != "dcap":
        raise PlatformError(
            f"gramine-sgx: attestation type is {kind!r}; set sgx.remote_attestation = "
            '"dcap" in the manifest'
        )
    return attester


def _tsm(name: str, root: Path) -> Attester:
    from teeflow.platform.tsm import TsmAttester

    provider = "tdx_guest" if name == "tdx" else "sev_guest"
    if not root.is_dir():
        raise PlatformError(
            f"{name}: no configfs-tsm report directory {root}: run in a {name} guest with "
            "Linux >= 6.7 and configfs mounted (or point --tsm-root at it)"
        )
    attester = TsmAttester(root, expected_provider=provider)
    attester.provider()  # probe: refuses another provider with its name
    return attester


def _emulated(
    name: str,
    measurement: bytes | None,
    authority: EmulationAuthority | None,
    home: Path | None,
) -> Attester:
    if measurement is None:
        raise PlatformError(f"{name}: no workload measurement given")
    identity = emulated_identity(name, measurement)
    if name == "emulated-snp":
        from teeflow.platform.emulated_snp import EmulatedSnp

        return EmulatedSnp.load_or_create(home, measurement=identity)
    from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority

    auth = authority if authority is not None else EmulationAuthority.load_or_create(home)
    if name == "emulated-sgx":
        return EmulatedSgx(auth, measurement=identity)
    from teeflow.platform.emulated_tdx import EmulatedTdx

    return EmulatedTdx(auth, mrtd=identity)


def attester_for(
    name: str,
    *,
    tsm_root: Path | None = None,
    gramine_root: Path | None = None,
    measurement: bytes | None = None,
    authority: EmulationAuthority | None = None,
    home: Path | None = None,
    dev_root: Path | None = None,
) -> Attester:
    """The attester of platform ``name`` (module docstring).

    Args:
        name: one of :data:`PLATFORM_NAMES`.
        tsm_root: configfs-tsm report directory (default ``/sys/kernel/config/tsm/report``).
        gramine_root: Gramine's ``/dev/attestation`` (default that path).
        measurement: the workload's 32-byte measurement (emulated platforms only; required
            there, not used on hardware).
        authority: emulation authority of ``emulated-sgx``/``emulated-tdx`` (default the
            one of ``home``).
        home: teeflow home of the emulated platforms (default ``$TEEFLOW_HOME``).
        dev_root: device directory consulted by ``auto`` for its error notes.

    Raises:
        PlatformError: unknown name; ``auto`` without a TEE interface (never falls back to
            emulation); the named hardware interface missing or of another kind; an emulated
            platform without a valid measurement or whose emulation directory is unusable.
    """
    check_platform_name(name)
    tsm = Path(tsm_root) if tsm_root is not None else DEFAULT_TSM_ROOT
    gramine = Path(gramine_root) if gramine_root is not None else DEFAULT_GRAMINE_ROOT
    if name == "auto":
        name = detect_platform(
            gramine_root=gramine, tsm_root=tsm, dev_root=dev_root or DEFAULT_DEV_ROOT
        )
    if name == "gramine-sgx":
        return _gramine(gramine)
    if name in ("tdx", "sev-snp"):
        return _tsm(name, tsm)
    return _emulated(name, measurement, authority, home)


@dataclass(frozen=True)
class PlatformOptions:
    """A role's platform options (``--platform``, ``--tsm-root``, ``--gramine-root``).

    Attributes:
        platform: one of :data:`PLATFORM_NAMES` (default ``auto``).
        tsm_root: configfs-tsm report directory, None for the default.
        gramine_root: Gramine ``/dev/attestation``, None for the default.

    Raises (constructor):
        PlatformError: unknown platform name.
    """

    platform: str = "auto"
    tsm_root: Path | None = None
    gramine_root: Path | None = None

    def __post_init__(self) -> None:
        check_platform_name(self.platform)

    @property
    def emulated(self) -> bool:
        """True for an emulated platform name."""
        return self.platform in EMULATED_PLATFORMS

    def attester(
        self,
        measurement: bytes | None = None,
        *,
        authority: EmulationAuthority | None = None,
        home: Path | None = None,
    ) -> Attester:
        """:func:`attester_for` with these options. Raises ``PlatformError`` (as there)."""
        return attester_for(
            self.platform,
            tsm_root=self.tsm_root,
            gramine_root=self.gramine_root,
            measurement=measurement,
            authority=authority,
            home=home,
        )

    def argv(self) -> list[str]:
        """These options as command-line arguments (for starting a role process)."""
        out = ["--platform", self.platform]
        if self.tsm_root is not None:
            out += ["--tsm-root", str(self.tsm_root)]
        if self.gramine_root is not None:
            out += ["--gramine-root", str(self.gramine_root)]
        return out
