"""SGX DCAP evidence from inside a Gramine enclave (``/dev/attestation``).

Source: Gramine documentation "Attestation and Secret Provisioning", section
"/dev/attestation pseudo-filesystem" (gramine >= 1.5):

* ``/dev/attestation/attestation_type`` (read) — ``none``, ``epid`` or ``dcap``
  (``sgx.remote_attestation`` of the manifest);
* ``/dev/attestation/user_report_data`` (write, exactly 64 bytes) — REPORT_DATA of the
  next report/quote;
* ``/dev/attestation/quote`` (read) — an SGX quote over the enclave's report with that
  REPORT_DATA (DCAP: an ECDSA quote v3 with the PCK chain, certification data type 5).

Each write/read pair is serialised by a process-wide lock (the files are per-process
state), and the quote read back is parsed and must carry the requested REPORT_DATA, so a
concurrent writer that bypassed this class is detected.
"""

from __future__ import annotations

import threading
from pathlib import Path

from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.evidence import Evidence
from teeflow.errors import ParseError, PlatformError
from teeflow.platform.base import DEFAULT_GRAMINE_ROOT, pad_report_data, read_small
from teeflow.platform.standin import declared_tee

__all__ = ["MAX_QUOTE_BYTES", "GramineAttester"]

#: Largest quote read (bytes); DCAP quotes with their PCK chain are ~5 KiB.
MAX_QUOTE_BYTES = 64 * 1024
_LOCK = threading.Lock()


class GramineAttester:
    """Attester for Gramine-SGX with DCAP (``tee = "sgx"``, ``kind = "gramine"``).

    Args:
        root: the ``/dev/attestation`` directory (tests pass a fake tree).
    """

    kind = "gramine"

    def __init__(self, root: Path = DEFAULT_GRAMINE_ROOT) -> None:
        self.root = Path(root)

    @property
    def tee(self) -> str:
        """RCAR tee name: ``"sgx"``, or ``"emulated-sgx"`` when ``root`` is a teeflow
        stand-in (:func:`teeflow.platform.standin.declared_tee`)."""
        return declared_tee(self.root, "sgx")

    def attestation_type(self) -> str:
        """The content of ``attestation_type`` (stripped).

        Raises:
            PlatformError: missing or unreadable (not inside a Gramine enclave).
        """
        raw = read_small(self.root / "attestation_type", 64, "Gramine attestation_type")
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise PlatformError("Gramine attestation_type is not ASCII") from None

    def evidence(self, report_data: bytes) -> Evidence:
        """:meth:`quote` as :class:`Evidence` (``tee`` = :attr:`tee`, ``attester = "gramine"``).

        Raises:
            PlatformError: as :meth:`quote`.
        """
        return Evidence(self.tee, self.quote(report_data), self.kind)

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP quote whose REPORT_DATA is ``report_data`` zero-padded to 64 bytes.

        Raises:
            PlatformError: ``report_data`` over 64 bytes; attestation type not ``dcap``
                (the manifest lacks ``sgx.remote_attestation = "dcap"``, or gramine-direct);
                a file cannot be written/read; the quote is malformed, oversized, or
                does not carry the requested REPORT_DATA.
        """
        rd = pad_report_data(report_data)
        kind = self.attestation_type()
        if kind != "dcap":
            raise PlatformError(f"Gramine attestation type is {kind!r}; teeflow needs 'dcap'")
        with _LOCK:
            try:
                with (self.root / "user_report_data").open("wb", buffering=0) as fh:
                    written = fh.write(rd)
            except OSError as exc:
                raise PlatformError(f"cannot write user_report_data: {exc.strerror}") from None
            if written != 64:
                raise PlatformError(f"short write to user_report_data ({written} of 64 bytes)")
            quote = read_small(self.root / "quote", MAX_QUOTE_BYTES, "Gramine quote")
        try:
            parsed = parse_quote(quote)
        except ParseError as exc:
            raise PlatformError(f"Gramine returned a malformed quote: {exc}") from None
        if parsed.tee_type != 0:
            raise PlatformError(f"Gramine returned a non-SGX quote (tee_type {parsed.tee_type:#x})")
        if parsed.report_data != rd:
            raise PlatformError("quote does not carry the requested report data")
        return quote[: len(quote) - parsed.trailing_bytes]
