"""A configfs-tsm stand-in: the kernel's ``/sys/kernel/config/tsm/report`` tree, emulated.

EMULATED — not hardware. :class:`TsmTree` plays the part of Linux ``drivers/virt/coco/tsm.c``
(with ``tdx-guest`` or ``sev-guest`` as the provider) so that the real
:class:`~teeflow.platform.tsm.TsmAttester` runs unchanged against it, over a FUSE mount
(:mod:`teeflow.testing.pseudofs`; ``teeflow emulate tsm DIR --tee tdx|sev-snp``).

Source: Linux ``Documentation/ABI/testing/configfs-tsm-report`` and ``drivers/virt/coco/tsm.c``
(6.7+). What it reproduces:

* the root accepts ``mkdir`` of report entries (any name; no nesting) and ``rmdir``;
* an entry holds ``inblob`` (write-only, at most 64 bytes, else ``EFBIG``), ``outblob``
  (read-only), ``provider`` (``tdx_guest`` / ``sev_guest``), ``generation``; SEV-SNP adds
  ``auxblob`` (read-only), ``privlevel`` (write-only, 0..3 and not below ``privlevel_floor``,
  else ``EINVAL``) and ``privlevel_floor`` (``0``);
* ``generation`` is the kernel's ``write_generation``: every committed write of ``inblob`` or
  ``privlevel`` increments it (``try_advance_write_generation``, ``EBUSY`` when it would
  wrap onto the last read generation);
* reading ``outblob`` or ``auxblob`` without an ``inblob`` fails with ``EINVAL``; otherwise
  the report is generated on the first read after a write (``ops->report_new``) and cached
  until the next write (``read_generation = write_generation``); the provider requires
  exactly 64 bytes of inblob (``EINVAL`` otherwise), as ``tdx_report_new`` and
  ``sev_report_new`` do;
* TDX ``outblob`` is a DCAP quote v4 from :class:`~teeflow.platform.emulated_tdx.EmulatedTdx`;
  SEV-SNP ``outblob`` is a version 3 ATTESTATION_REPORT from
  :class:`~teeflow.platform.emulated_snp.EmulatedSnp` (VMPL = ``privlevel``) and ``auxblob``
  the extended report's certificate table
  (:func:`teeflow.attestation.snp.cert_table.build_cert_table`: VCEK, ASK, ARK).

What it cannot reproduce: the hardware roots (the evidence chains to the local emulation
root, which the default appraisal refuses), the quote generation service and its latency,
the TDX module's and the PSP's measurement of the guest (measurements are configured), the
per-open snapshot semantics beyond one FUSE handle, and the kernel's locking against other
processes' configfs access beyond this process's lock.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass

from teeflow.errors import PlatformError
from teeflow.testing.pseudofs import PseudoNode, PseudoTree

__all__ = [
    "INBLOB_MAX",
    "TSM_TEES",
    "Entry",
    "TsmTree",
    "standin_measurement",
]

#: TSM_INBLOB_MAX of the kernel (bytes).
INBLOB_MAX = 64
#: ``--tee`` value -> configfs-tsm provider name.
TSM_TEES = {"tdx": "tdx_guest", "sev-snp": "sev_guest"}
_U64 = 1 << 64
_MAX_ENTRIES = 256
_NAME_MAX = 255


def standin_measurement(tee: str, workload_measurement: bytes) -> bytes:
    """The 48-byte launch measurement a stand-in reports for a 32-byte workload measurement:
    the measurement followed by 16 zero bytes, for ``tdx`` (MRTD) and ``sev-snp``
    (MEASUREMENT) alike — the identity the emulated TDX / SNP platforms report for the same
    workload (``teeflow.platform.selection.emulated_identity``), so an agreement names a
    role the same way on both. Real values come from the TD firmware / the launch digest
    (docs/deploy.md).

    Raises:
        PlatformError: unknown ``tee`` or ``workload_measurement`` not 32 bytes.
    """
    if tee not in TSM_TEES:
        raise PlatformError(f"no launch measurement for {tee!r} (tdx or sev-snp)")
    if len(workload_measurement) != 32:
        raise PlatformError("a workload measurement is 32 bytes")
    return bytes(workload_measurement) + bytes(16)


@dataclass
class Entry:
    """One report entry's kernel state (``struct tsm_report`` + ``tsm_report_state``)."""

    write_generation: int = 0
    read_generation: int = 0
    inblob: bytes = b""
    privlevel: int = 0
    outblob: bytes | None = None
    auxblob: bytes | None = None


ReportFn = Callable[[bytes, int], tuple[bytes, bytes | None]]


class TsmTree(PseudoTree):
    """The configfs-tsm report tree (module docstring).

    Args:
        tee: ``"tdx"`` or ``"sev-snp"``.
        report: ``report(inblob (64 bytes), privlevel) -> (outblob, auxblob or None)`` — the
            provider's ``report_new``.
        privlevel_floor: SEV-SNP ``privlevel_floor``.

    Raises:
        PlatformError: unknown ``tee``.
    """

    def __init__(self, tee: str, report: ReportFn, *, privlevel_floor: int = 0) -> None:
        if tee not in TSM_TEES:
            raise PlatformError(f"--tee must be tdx or sev-snp, not {tee!r}")
        self.tee = tee
        self.provider = TSM_TEES[tee]
        self._report = report
        self._floor = privlevel_floor
        self._lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        #: reports generated so far (statistics for tests and the stand-in's log)
        self.reports = 0

    # -- layout --------------------------------------------------------------------------

    def _attributes(self) -> dict[str, PseudoNode]:
        attrs = {
            "inblob": PseudoNode("file", 0o200, INBLOB_MAX),
            "outblob": PseudoNode("file", 0o444),
            "provider": PseudoNode("file", 0o444),
            "generation": PseudoNode("file", 0o444),
        }
        if self.tee == "sev-snp":
            attrs["auxblob"] = PseudoNode("file", 0o444)
            attrs["privlevel"] = PseudoNode("file", 0o200, 16)
            attrs["privlevel_floor"] = PseudoNode("file", 0o444)
        return attrs

    def node(self, parts: tuple[str, ...]) -> PseudoNode | None:
        """Root, entries and their attributes."""
        if not parts:
            return PseudoNode("dir", 0o755)
        with self._lock:
            exists = parts[0] in self.entries
        if not exists or len(parts) > 2:
            return None
        if len(parts) == 1:
            return PseudoNode("dir", 0o755)
        return self._attributes().get(parts[1])

    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        """Entries of the root, attributes of an entry."""
        if not parts:
            with self._lock:
                return sorted(self.entries)
        return sorted(self._attributes())

    def mkdir(self, parts: tuple[str, ...]) -> None:
        """``mkdir report/NAME``: a new entry, generation 0. Nested: ``EPERM``; existing:
        ``EEXIST``; more than 256 entries: ``ENOSPC``."""
        if len(parts) != 1:
            raise OSError(errno.EPERM, "report entries cannot nest")
        name = parts[0]
        if len(name.encode()) > _NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        with self._lock:
            if name in self.entries:
                raise OSError(errno.EEXIST, "entry exists")
            if len(self.entries) >= _MAX_ENTRIES:
                raise OSError(errno.ENOSPC, "too many report entries")
            self.entries[name] = Entry()

    def rmdir(self, parts: tuple[str, ...]) -> None:
        """``rmdir report/NAME``."""
        if len(parts) != 1:
            raise OSError(errno.ENOTDIR, "not an entry")
        with self._lock:
            if self.entries.pop(parts[0], None) is None:
                raise OSError(errno.ENOENT, "no such entry")

    # -- attributes ----------------------------------------------------------------------

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise OSError(errno.ENOENT, "entry removed")
        return entry

    @staticmethod
    def _advance(entry: Entry) -> None:
        # try_advance_write_generation(): refuse to wrap onto an unread configuration
        if entry.write_generation == (entry.read_generation - 1) % _U64:
            raise OSError(errno.EBUSY, "generation would wrap")
        entry.write_generation = (entry.write_generation + 1) % _U64

    def write(self, parts: tuple[str, ...], data: bytes) -> None:
        """Commit ``inblob`` or ``privlevel`` (module docstring)."""
        name, attr = parts
        if attr == "privlevel":
            text = data.decode("ascii", "replace").strip()
            value = int(text, 0) if text.isdigit() else -1
            if not self._floor <= value <= 3:
                raise OSError(errno.EINVAL, "privlevel out of range")
            with self._lock:
                entry = self._entry(name)
                self._advance(entry)
                entry.privlevel = value
            return
        if attr != "inblob":
            raise OSError(errno.EACCES, "read-only attribute")
        with self._lock:
            entry = self._entry(name)
            self._advance(entry)
            entry.inblob = bytes(data)

    def read(self, parts: tuple[str, ...]) -> bytes:
        """``provider``, ``generation``, ``privlevel_floor``, or the (cached) report."""
        name, attr = parts
        if attr == "provider":
            return f"{self.provider}\n".encode()
        if attr == "privlevel_floor":
            return f"{self._floor}\n".encode()
        with self._lock:
            entry = self._entry(name)
            if attr == "generation":
                return f"{entry.write_generation}\n".encode()
            if attr not in ("outblob", "auxblob"):
                raise OSError(errno.EACCES, "write-only attribute")
            if not entry.inblob:
                raise OSError(errno.EINVAL, "no inblob written")
            if entry.outblob is None or entry.read_generation != entry.write_generation:
                if len(entry.inblob) != INBLOB_MAX:
                    raise OSError(errno.EINVAL, "inblob must be 64 bytes")
                entry.outblob, entry.auxblob = None, None
                entry.outblob, entry.auxblob = self._generate(entry)
                entry.read_generation = entry.write_generation
                self.reports += 1
            if attr == "outblob":
                return entry.outblob
            return entry.auxblob or b""

    def _generate(self, entry: Entry) -> tuple[bytes, bytes | None]:
        try:
            return self._report(entry.inblob, entry.privlevel)
        except PlatformError:
            raise OSError(errno.EIO, "report generation failed") from None
