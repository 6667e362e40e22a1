"""The Attester interface and platform detection.

An :class:`Attester` (RFC 9334 "Attester") produces :class:`~teeflow.attestation.evidence.
Evidence` binding 64 bytes of report data. Implementations (all built by
:func:`teeflow.platform.selection.attester_for`):

* :class:`teeflow.platform.gramine.GramineAttester` — SGX DCAP quotes through Gramine's
  ``/dev/attestation`` pseudo-files (``tee = "sgx"``, ``kind = "gramine"``);
* :class:`teeflow.platform.tsm.TsmAttester` — TDX quotes or SEV-SNP reports through Linux
  configfs-tsm (``tee = "tdx"`` / ``"snp"``, ``kind = "configfs-tsm"``);
* :class:`teeflow.platform.emulated.EmulatedSgx`, ``EmulatedTdx``, ``EmulatedSnp`` —
  software evidence (``tee = "emulated-…"``, ``kind = "emulated"``; development, CI), chosen
  only by name.

:func:`detect_platform` tells which hardware interface this machine offers and raises
``PlatformError`` when there is none: nothing falls back to emulation. The platform names
are the DESIGN glossary's: ``gramine-sgx``, ``tdx``, ``sev-snp`` (hardware) and
``emulated-sgx``, ``emulated-tdx``, ``emulated-snp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from teeflow.errors import PlatformError

if TYPE_CHECKING:
    from teeflow.attestation.evidence import Evidence

__all__ = [
    "DEFAULT_DEV_ROOT",
    "DEFAULT_GRAMINE_ROOT",
    "DEFAULT_TSM_ROOT",
    "HARDWARE_PLATFORMS",
    "TSM_PROVIDERS",
    "Attester",
    "PlatformProbe",
    "detect_platform",
    "no_tee_message",
    "pad_report_data",
    "probe_platform",
    "read_small",
]

DEFAULT_GRAMINE_ROOT = Path("/dev/attestation")
DEFAULT_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
DEFAULT_DEV_ROOT = Path("/dev")
#: Hardware platform names :func:`detect_platform` can return.
HARDWARE_PLATFORMS = ("gramine-sgx", "tdx", "sev-snp")
#: configfs-tsm ``provider`` value -> (platform name, RCAR tee name).
TSM_PROVIDERS = {"tdx_guest": ("tdx", "tdx"), "sev_guest": ("sev-snp", "snp")}


@runtime_checkable
class Attester(Protocol):
    """Something that produces Evidence for 64 bytes of report data.

    ``tee`` is the RCAR ``tee`` value of the evidence (``"sgx"``, ``"tdx"``, ``"snp"``,
    ``"emulated-sgx"`` …) and ``kind`` the attester kind (``"gramine"``,
    ``"configfs-tsm"``, ``"emulated"``); plain class attributes satisfy them.
    """

    @property
    def tee(self) -> str:
        """RCAR tee name of the evidence."""
        ...

    @property
    def kind(self) -> str:
        """Attester kind recorded in :attr:`Evidence.attester`."""
        ...

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose REPORT_DATA is ``report_data`` zero-padded to 64 bytes.

        Raises:
            PlatformError: ``report_data`` longer than 64 bytes, or the platform failed.
        """
        ...


def pad_report_data(report_data: object) -> bytes:
    """The 64-byte REPORT_DATA an Attester binds: ``report_data`` (at most 64 bytes)
    zero-padded on the right (SGX REPORTDATA, TDX REPORTDATA, SEV-SNP REPORT_DATA).

    Raises:
        PlatformError: not bytes-like, or longer than 64 bytes.
    """
    if not isinstance(report_data, bytes | bytearray | memoryview):
        raise PlatformError("report_data must be bytes")
    rd = bytes(report_data)
    if len(rd) > 64:
        raise PlatformError(f"report_data must be at most 64 bytes, got {len(rd)}")
    return rd.ljust(64, b"\x00")


def read_small(path: Path, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes of ``path``.

    Raises:
        PlatformError: unreadable, or longer than ``limit``.
    """
    try:
        with path.open("rb", buffering=0) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise PlatformError(f"cannot read {what} ({path}): {exc.strerror}") from None
    if len(data) > limit:
        raise PlatformError(f"{what} ({path}) larger than {limit} bytes")
    return data


@dataclass(frozen=True)
class PlatformProbe:
    """What :func:`probe_platform` found.

    Attributes:
        platform: one of :data:`HARDWARE_PLATFORMS`, or None when no TEE interface exists.
        tee: RCAR tee name (``"sgx"``, ``"tdx"``, ``"snp"``), or None.
        source: the path that decided it, or None.
        notes: why other platforms were not chosen (human-readable).
    """

    platform: str | None
    tee: str | None
    source: str | None = None
    notes: tuple[str, ...] = field(default=())


def _probe_gramine(root: Path, notes: list[str]) -> PlatformProbe | None:
    type_file = root / "attestation_type"
    if not type_file.exists():
        notes.append(f"no {type_file}")
        return None
    try:
        kind = read_small(type_file, 64, "attestation_type").decode("ascii").strip()
    except (PlatformError, UnicodeDecodeError):
        notes.append(f"{type_file} unreadable")
        return None
    if kind != "dcap":
        notes.append(f"Gramine attestation_type is {kind!r}, not 'dcap'")
        return None
    return PlatformProbe("gramine-sgx", "sgx", str(root))


def _probe_tsm(root: Path, dev_root: Path, notes: list[str]) -> PlatformProbe | None:
    if root.is_dir():
        from teeflow.platform.tsm import TsmAttester

        try:
            provider = TsmAttester(root).provider()
        except PlatformError as exc:
            notes.append(f"configfs-tsm probe failed: {exc}")
        else:
            known = TSM_PROVIDERS.get(provider)
            if known is not None:
                return PlatformProbe(known[0], known[1], str(root))
            notes.append(f"configfs-tsm provider {provider!r} not supported")
    else:
        notes.append(f"no {root}")
    # without configfs-tsm access, the guest device tells what the VM is (not usable
    # by teeflow, which only speaks configfs-tsm: noted, not chosen)
    for dev, name in (("tdx_guest", "TDX"), ("sev-guest", "SEV-SNP")):
        if (dev_root / dev).exists():
            notes.append(f"{dev_root / dev} exists ({name} guest) but configfs-tsm is unusable")
    return None


def probe_platform(
    *,
    gramine_root: Path = DEFAULT_GRAMINE_ROOT,
    tsm_root: Path = DEFAULT_TSM_ROOT,
    dev_root: Path = DEFAULT_DEV_ROOT,
) -> PlatformProbe:
    """Find the hardware attestation interface this process runs on.

    Order: Gramine-SGX (``<gramine_root>/attestation_type`` reads ``dcap``), then
    configfs-tsm (a probe report entry is created, its ``provider`` read and the entry
    removed: ``tdx_guest`` -> ``tdx``, ``sev_guest`` -> ``sev-snp``). When neither is
    usable, ``platform`` is None: the caller decides (:func:`detect_platform` raises); no
    emulated platform is ever chosen here.

    Never raises: a failing probe is recorded in :attr:`PlatformProbe.notes`.
    """
    notes: list[str] = []
    found = _probe_gramine(gramine_root, notes) or _probe_tsm(tsm_root, dev_root, notes)
    if found is not None:
        return PlatformProbe(found.platform, found.tee, found.source, tuple(notes))
    return PlatformProbe(None, None, None, tuple(notes))


def no_tee_message(notes: tuple[str, ...] | list[str] = ()) -> str:
    """The one-line error of ``--platform auto`` without a TEE (``notes`` appended)."""
    detail = f" ({'; '.join(notes)})" if notes else ""
    return (
        "no TEE attestation interface found (Gramine /dev/attestation or configfs-tsm)"
        f"{detail}: run inside a TEE, or name a platform with --platform "
        "(emulated-sgx|emulated-tdx|emulated-snp for development)"
    )


def detect_platform(
    *,
    gramine_root: Path = DEFAULT_GRAMINE_ROOT,
    tsm_root: Path = DEFAULT_TSM_ROOT,
    dev_root: Path = DEFAULT_DEV_ROOT,
) -> str:
    """The hardware platform name (``"gramine-sgx"``, ``"tdx"`` or ``"sev-snp"``); see
    :func:`probe_platform`.

    Raises:
        PlatformError: no TEE interface found (:func:`no_tee_message`); never falls back
            to an emulated platform.
    """
    probe = probe_platform(gramine_root=gramine_root, tsm_root=tsm_root, dev_root=dev_root)
    if probe.platform is None:
        raise PlatformError(no_tee_message(probe.notes))
    return probe.platform
