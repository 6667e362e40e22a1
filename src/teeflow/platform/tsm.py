"""TDX quotes and SEV-SNP reports through Linux configfs-tsm.

Source: Linux ``Documentation/ABI/testing/configfs-tsm-report`` (since 6.7) and
``drivers/virt/coco/tsm.c``. A report is requested by creating a directory under
``/sys/kernel/config/tsm/report/``; configfs populates it with attributes:

* ``inblob`` (write, at most 64 bytes) — REPORT_DATA (TDX ``REPORTDATA``, SNP
  ``REPORT_DATA``);
* ``privlevel`` (write, optional) — SNP VMPL for the report, at least ``privlevel_floor``;
* ``outblob`` (read) — the evidence: a TDX quote (v4/v5, via the host's quote service) or
  an SNP attestation report (1184 bytes);
* ``auxblob`` (read, SNP) — the extended report's certificate table (VCEK/VLEK, ASK, ARK
  as provided by the host), empty or unsupported elsewhere;
* ``provider`` (read) — ``tdx_guest`` or ``sev_guest``;
* ``generation`` (read) — incremented by every write of ``inblob`` or an option: if it
  moved by more than our own writes, another writer changed the inputs between our write
  and our read, and the blobs may not be for our REPORT_DATA.

:class:`TsmAttester` creates a fresh, randomly named entry per report, checks
``generation`` as above, and removes the entry. File-system access goes through
:class:`ConfigFs`, whose default methods are plain ``os`` calls; the unit tests subclass it
to play the kernel's part over a temporary directory (populate attributes on ``mkdir``,
produce ``outblob`` when ``inblob`` is written) so the same file protocol is exercised
without a TEE.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.evidence import Evidence
from teeflow.errors import ParseError, PlatformError
from teeflow.platform.base import DEFAULT_TSM_ROOT, TSM_PROVIDERS, pad_report_data, read_small
from teeflow.platform.standin import declared_tee

__all__ = [
    "MAX_AUXBLOB_BYTES",
    "MAX_OUTBLOB_BYTES",
    "ConfigFs",
    "TsmAttester",
    "TsmReport",
]

#: Largest ``outblob`` read (bytes); the kernel's TSM_OUTBLOB_MAX is 32 KiB.
MAX_OUTBLOB_BYTES = 64 * 1024
#: Largest ``auxblob`` read (bytes); SNP certificate tables are a few KiB.
MAX_AUXBLOB_BYTES = 1024 * 1024
_PRIVLEVEL_MAX = 3
_LOG = logging.getLogger(__name__)


class ConfigFs:
    """The four file operations the attester performs (the kernel ABI's verbs).

    Override in tests to simulate configfs; production uses these defaults.
    """

    def mkdir(self, path: Path) -> None:
        """Create a report entry (configfs populates its attributes)."""
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        """Remove a report entry."""
        os.rmdir(path)

    def write(self, path: Path, data: bytes) -> int:
        """Write ``data`` in one ``write(2)``; returns the byte count written."""
        with path.open("wb", buffering=0) as fh:
            return fh.write(data) or 0

    def read(self, path: Path, limit: int, what: str) -> bytes:
        """Read at most ``limit`` bytes. Raises ``PlatformError``."""
        return read_small(path, limit, what)


@dataclass(frozen=True)
class TsmReport:
    """One configfs-tsm report.

    Attributes:
        provider: ``tdx_guest`` or ``sev_guest``.
        outblob: the evidence bytes.
        auxblob: SNP certificate table, or None (TDX, or the host supplied none).
        generation: ``generation`` after the report was read.
        privlevel: the requested privilege level, or None.
    """

    provider: str
    outblob: bytes
    auxblob: bytes | None
    generation: int
    privlevel: int | None = None

    @property
    def tee(self) -> str:
        """RCAR tee name (``tdx`` / ``snp``)."""
        return TSM_PROVIDERS[self.provider][1]


_SNP_REPORT_DATA = slice(0x50, 0x90)


def _check_binding(provider: str, outblob: bytes, rd: bytes) -> None:
    """The evidence must carry ``rd``: TDX quote body REPORTDATA (parsed with the DCAP
    quote parser), SNP ATTESTATION_REPORT bytes 0x50..0x90 (SEV-SNP ABI, Table 22)."""
    if provider == "tdx_guest":
        try:
            carried = parse_quote(outblob).report_data
        except ParseError as exc:
            raise PlatformError(f"configfs-tsm returned a malformed TDX quote: {exc}") from None
    else:
        if len(outblob) < _SNP_REPORT_DATA.stop:
            raise PlatformError("configfs-tsm returned a truncated SNP report")
        carried = outblob[_SNP_REPORT_DATA]
    if carried != rd:
        raise PlatformError("configfs-tsm evidence does not carry the requested report data")


class TsmAttester:
    """Attester over configfs-tsm (TDX and SEV-SNP guests alike; ``kind = "configfs-tsm"``).

    Args:
        root: the ``tsm/report`` directory (tests pass a fake tree).
        privlevel: optional privilege level (0..3, SNP VMPL) written before ``inblob``.
        expected_provider: refuse any other ``provider`` (e.g. ``"sev_guest"``).
        read_auxblob: also read ``auxblob`` (SNP certificates).
        fs: file operations (default :class:`ConfigFs`, the real kernel interface).

    Raises (constructor):
        PlatformError: ``privlevel`` out of range or ``expected_provider`` unknown.
    """

    kind = "configfs-tsm"

    def __init__(
        self,
        root: Path = DEFAULT_TSM_ROOT,
        *,
        privlevel: int | None = None,
        expected_provider: str | None = None,
        read_auxblob: bool = True,
        fs: ConfigFs | None = None,
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= _PRIVLEVEL_MAX:
            raise PlatformError(f"privlevel must be 0..{_PRIVLEVEL_MAX}")
        if expected_provider is not None and expected_provider not in TSM_PROVIDERS:
            raise PlatformError(f"unknown configfs-tsm provider {expected_provider!r}")
        self.root = Path(root)
        self.privlevel = privlevel
        self.expected_provider = expected_provider
        self.read_auxblob = read_auxblob
        self.fs = fs if fs is not None else ConfigFs()
        self._provider: str | None = expected_provider

    # -- entries ------------------------------------------------------------------------

    def _new_entry(self) -> Path:
        try:
            present = self.root.is_dir()
        except OSError as exc:  # e.g. ENOTCONN: a dead FUSE stand-in mounted there
            raise PlatformError(f"cannot access {self.root}: {exc.strerror}") from None
        if not present:
            raise PlatformError(f"configfs-tsm report directory {self.root} does not exist")
        entry = self.root / f"teeflow-{os.getpid()}-{os.urandom(8).hex()}"
        try:
            self.fs.mkdir(entry)
        except OSError as exc:
            raise PlatformError(
                f"cannot create report entry in {self.root}: {exc.strerror}"
            ) from None
        return entry

    def _remove(self, entry: Path) -> None:
        try:
            self.fs.rmdir(entry)
        except OSError as exc:
            _LOG.warning("cannot remove configfs-tsm entry %s: %s", entry, exc.strerror)

    def _generation(self, entry: Path) -> int:
        raw = self.fs.read(entry / "generation", 32, "configfs-tsm generation")
        text = raw.decode("ascii", "replace").strip()
        if not text.isdigit():
            raise PlatformError(f"configfs-tsm generation is not a number: {text[:20]!r}")
        return int(text)

    def _read_provider(self, entry: Path) -> str:
        raw = self.fs.read(entry / "provider", 64, "configfs-tsm provider")
        provider = raw.decode("ascii", "replace").strip()
        if provider not in TSM_PROVIDERS:
            raise PlatformError(f"unsupported configfs-tsm provider {provider[:32]!r}")
        if self.expected_provider is not None and provider != self.expected_provider:
            raise PlatformError(
                f"configfs-tsm provider is {provider!r}, expected {self.expected_provider!r}"
            )
        return provider

    # -- public -------------------------------------------------------------------------

    def provider(self) -> str:
        """The TSM provider (``tdx_guest``/``sev_guest``), probed once with a temporary
        entry and remembered.

        Raises:
            PlatformError: no configfs-tsm, entry creation refused, unknown provider.
        """
        if self._provider is None:
            entry = self._new_entry()
            try:
                self._provider = self._read_provider(entry)
            finally:
                self._remove(entry)
        return self._provider

    @property
    def tee(self) -> str:
        """RCAR tee name: ``"tdx"`` or ``"snp"`` (probes the provider if unknown);
        ``emulated-tdx`` / ``emulated-snp`` when ``root`` is a teeflow stand-in
        (:func:`teeflow.platform.standin.declared_tee`).

        Raises:
            PlatformError: as :meth:`provider`.
        """
        return declared_tee(self.root, TSM_PROVIDERS[self.provider()][1])

    def report(self, report_data: bytes) -> TsmReport:
        """Request one report binding ``report_data`` (zero-padded to 64 bytes).

        Steps: create entry; read ``generation`` (g0); write ``privlevel`` (if set, after
        checking ``privlevel_floor``) and ``inblob``; read ``outblob``, ``auxblob``,
        ``provider``; read ``generation`` (g1); require ``g1 - g0`` to equal our writes;
        remove the entry (always). The evidence must carry the REPORT_DATA (TDX quote body,
        SNP report offset 0x50).

        Raises:
            PlatformError: bad ``report_data``; configfs missing or refusing; a short
                write; empty or oversized blobs; unknown/unexpected provider;
                "concurrent writer" when ``generation`` moved by more than our writes;
                evidence not carrying ``report_data``.
        """
        rd = pad_report_data(report_data)
        entry = self._new_entry()
        try:
            g0 = self._generation(entry)
            writes = 0
            if self.privlevel is not None:
                floor_file = entry / "privlevel_floor"
                if floor_file.exists():
                    floor = self.fs.read(floor_file, 16, "privlevel_floor").decode().strip()
                    if floor.isdigit() and self.privlevel < int(floor):
                        raise PlatformError(f"privlevel {self.privlevel} below floor {floor}")
                self._write(entry / "privlevel", str(self.privlevel).encode(), "privlevel")
                writes += 1
            self._write(entry / "inblob", rd, "inblob")
            writes += 1
            outblob = self.fs.read(entry / "outblob", MAX_OUTBLOB_BYTES, "configfs-tsm outblob")
            if not outblob:
                raise PlatformError("configfs-tsm returned an empty outblob")
            auxblob = self._auxblob(entry) if self.read_auxblob else None
            provider = self._read_provider(entry)
            _check_binding(provider, outblob, rd)
            g1 = self._generation(entry)
            if g1 - g0 != writes:
                raise PlatformError(
                    f"concurrent writer on configfs-tsm entry: generation moved {g1 - g0}, "
                    f"expected {writes}; report discarded"
                )
        finally:
            self._remove(entry)
        self._provider = provider
        return TsmReport(provider, outblob, auxblob, g1, self.privlevel)

    def evidence(self, report_data: bytes) -> Evidence:
        """:meth:`report` as :class:`Evidence`: ``primary`` = ``outblob`` (TDX quote or SNP
        report), ``certificates`` = the SNP ``auxblob`` (None for TDX), ``attester =
        "configfs-tsm"``.

        Raises:
            PlatformError: as :meth:`report`.
        """
        report = self.report(report_data)
        aux = report.auxblob if report.tee == "snp" else None
        tee = declared_tee(self.root, report.tee)  # emulated-… on a stand-in
        return Evidence(tee, report.outblob, self.kind, certificates=aux)

    def _write(self, path: Path, data: bytes, what: str) -> None:
        try:
            n = self.fs.write(path, data)
        except OSError as exc:
            raise PlatformError(f"cannot write configfs-tsm {what}: {exc.strerror}") from None
        if n != len(data):
            raise PlatformError(f"short write to configfs-tsm {what} ({n} of {len(data)})")

    def _auxblob(self, entry: Path) -> bytes | None:
        path = entry / "auxblob"
        if not path.exists():
            return None
        try:
            data = self.fs.read(path, MAX_AUXBLOB_BYTES, "configfs-tsm auxblob")
        except PlatformError as exc:
            # TDX (and SNP without host certificates) may refuse reading auxblob
            _LOG.debug("no auxblob: %s", exc)
            return None
        return data or None
