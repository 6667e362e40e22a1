"""Intel DCAP ECDSA quote framing (v3, v4, v5) shared by SGX and TDX.

Structure only: this module never checks signatures, vendor IDs or key types (that is
``teeflow.attestation.sgx.verify``), so a bit flip in a signed field surfaces as a
``VerificationError`` there, not as a ``ParseError`` here.

Sources:
    * Intel SGX ECDSA Quote Library API, Appendix A "Quote Format" (v3; header,
      384-byte report body, signature data with QE report and certification data).
    * Intel TDX DCAP Quoting Library API, Appendix A.3 (v4: TD report 1.0 body and
      certification data type 6 "QE report certification data") and A.4 (v5: body
      descriptor u16 type + u32 size; type 1 SGX, 2 TD 1.0, 3 TD 1.5).

Wire layout (all integers little-endian)::

    header (48)  version u16 | att_key_type u16 | tee_type u32 | qe_svn u16 | pce_svn u16
                 | qe_vendor_id 16 | user_data 20
    v5 only      body_type u16 | body_size u32
    body         384 (SGX report) | 584 (TD report 1.0) | 648 (TD report 1.5)
    sig_len u32, then exactly sig_len bytes of signature data:
      signature 64 (r||s) | attestation_key 64 (x||y) |
      v3:    QE-report certification data (below)
      v4/v5: cert_type u16 (=6) | size u32 | QE-report certification data (exactly size bytes)
    QE-report certification data = qe_report 384 | qe_report_signature 64 |
      auth_size u16 | qe_auth_data | cert_type u16 | cert_size u32 | cert_data

Bounds and totality: input is at most :data:`MAX_QUOTE_SIZE` bytes; every nested length
must exactly fill its enclosing declared length (the real quotes all do; slack inside a
signed structure would be unauthenticated room). Bytes *after* the quote's declared end
(header + body + 4 + sig_len) are tolerated and counted in ``Quote.trailing_bytes``.
Any input gives a :class:`Quote` or :class:`~teeflow.errors.ParseError`.
Layout-determining fields checked here: version (3, 4, 5), tee_type (0 SGX, 0x81 TDX;
must be 0 in v3), v5 body type/size, v4/v5 outer certification data type (6), and
att_key_type 3 (ECDSA-384, whose layout Intel never specified) is refused; any other
att_key_type value parses with the P-256 layout and is rejected by verification.

The report bodies (:class:`EnclaveReport`, :class:`TdReport10`, :class:`TdReport15`) live
in :mod:`teeflow.attestation.dcap.reports` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from teeflow.attestation.dcap.reports import EnclaveReport, QuoteBody, TdReport10, TdReport15
from teeflow.errors import ParseError
from teeflow.hazmat.reader import ByteReader

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "BODY_TYPE_SGX",
    "BODY_TYPE_TD10",
    "BODY_TYPE_TD15",
    "CERT_TYPE_PCK_CHAIN",
    "CERT_TYPE_QE_REPORT",
    "HEADER_SIZE",
    "INTEL_QE_VENDOR_ID",
    "MAX_QUOTE_SIZE",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "CertificationData",
    "EnclaveReport",
    "QeReportCertificationData",
    "Quote",
    "QuoteBody",
    "QuoteHeader",
    "QuoteSignatureData",
    "TdReport10",
    "TdReport15",
    "parse_quote",
]

#: Largest accepted input (bytes). Real quotes are ~4.6-5 KiB; a PCK chain is ~3.7 KiB.
MAX_QUOTE_SIZE = 64 * 1024
HEADER_SIZE = 48
ATT_KEY_TYPE_ECDSA_P256 = 2
_ATT_KEY_TYPE_ECDSA_P384 = 3
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
#: Certification data type 5: PCK leaf + CA chain, concatenated PEM.
CERT_TYPE_PCK_CHAIN = 5
#: Certification data type 6: QE report certification data (v4/v5 wrapper).
CERT_TYPE_QE_REPORT = 6
BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
#: Intel's QE vendor ID (939a7233-f79c-4ca9-940a-0db3957f0607), as stored in the header.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_BODY_CLASSES: dict[int, type[EnclaveReport] | type[TdReport10] | type[TdReport15]] = {
    BODY_TYPE_SGX: EnclaveReport,
    BODY_TYPE_TD10: TdReport10,
    BODY_TYPE_TD15: TdReport15,
}
_SIG_SIZE = 64
_KEY_SIZE = 64


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header (Quote Library API A.4 "Quote Header").

    Attributes:
        version: 3, 4 or 5.
        att_key_type: 2 = ECDSA-256-with-P-256 (the only one Intel implements).
        tee_type: 0 = SGX, 0x81 = TDX (reserved, zero, in v3).
        qe_svn, pce_svn: SVNs of the QE and PCE (reserved in v4/v5 TDX quotes).
        qe_vendor_id: 16 bytes; Intel's is :data:`INTEL_QE_VENDOR_ID`.
        user_data: 20 bytes chosen by the QE (first 16 = platform QE ID).
    """

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    SIZE: ClassVar[int] = HEADER_SIZE

    @classmethod
    def read(cls, r: ByteReader) -> QuoteHeader:
        """Read a header from ``r``. Raises ParseError on a short read."""
        return cls(
            version=r.u16("header.version"),
            att_key_type=r.u16("header.att_key_type"),
            tee_type=r.u32("header.tee_type"),
            qe_svn=r.u16("header.qe_svn"),
            pce_svn=r.u16("header.pce_svn"),
            qe_vendor_id=r.read(16, "header.qe_vendor_id"),
            user_data=r.read(20, "header.user_data"),
        )

    def to_bytes(self) -> bytes:
        """The 48 wire bytes."""
        return (
            self.version.to_bytes(2, "little")
            + self.att_key_type.to_bytes(2, "little")
            + self.tee_type.to_bytes(4, "little")
            + self.qe_svn.to_bytes(2, "little")
            + self.pce_svn.to_bytes(2, "little")
            + self.qe_vendor_id
            + self.user_data
        )


@dataclass(frozen=True)
class CertificationData:
    """Certification data: ``cert_type`` u16, u32 size, ``data`` (size bytes).

    Types (Quote Library API A.4): 1-3 PPID variants, 4 PCK leaf cert, 5 PCK cert chain
    (PEM), 6 QE report certification data, 7 platform manifest.
    """

    cert_type: int
    data: bytes

    @classmethod
    def read(cls, r: ByteReader, what: str) -> CertificationData:
        """Read type, size and data from ``r``. Raises ParseError on a short read."""
        cert_type = r.u16(f"{what}.type")
        size = r.u32(f"{what}.size")
        return cls(cert_type=cert_type, data=r.read(size, f"{what}.data"))

    def to_bytes(self) -> bytes:
        """Wire bytes (6-byte prefix + data)."""
        return (
            self.cert_type.to_bytes(2, "little") + len(self.data).to_bytes(4, "little") + self.data
        )


@dataclass(frozen=True)
class QeReportCertificationData:
    """QE report, its PCK signature, QE auth data and the inner certification data.

    Attributes:
        qe_report: the Quoting Enclave's 384-byte report.
        qe_report_signature: 64 raw bytes ``r||s`` (ECDSA P-256, PCK key, SHA-256).
        qe_auth_data: bytes hashed with the attestation key into qe_report.report_data.
        certification_data: normally type 5 (PEM PCK chain).
    """

    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData

    @classmethod
    def read(cls, r: ByteReader) -> QeReportCertificationData:
        """Read the structure; ``r`` must end exactly after it. Raises ParseError."""
        qe_report = EnclaveReport.from_bytes(r.read(EnclaveReport.SIZE, "qe_report"))
        qe_sig = r.read(_SIG_SIZE, "qe_report_signature")
        auth_size = r.u16("qe_auth_data.size")
        auth = r.read(auth_size, "qe_auth_data")
        cert = CertificationData.read(r, "certification_data")
        r.expect_end("QE report certification data")
        return cls(qe_report, qe_sig, auth, cert)

    def to_bytes(self) -> bytes:
        """Wire bytes."""
        return (
            self.qe_report.to_bytes()
            + self.qe_report_signature
            + len(self.qe_auth_data).to_bytes(2, "little")
            + self.qe_auth_data
            + self.certification_data.to_bytes()
        )


@dataclass(frozen=True)
class QuoteSignatureData:
    """The quote's signature data (everything after the u32 signature-data length).

    Attributes:
        signature: 64 raw bytes ``r||s``, ECDSA P-256 SHA-256 over ``Quote.signed_bytes``.
        attestation_key: 64 raw bytes ``x||y`` (P-256 point without 0x04 prefix).
        qe_report_certification_data: QE report, signature, auth data, PCK chain.
        wrapper_type: ``None`` in v3 (fields inline); 6 in v4/v5, where they sit in a
            certification-data record of that type.
    """

    signature: bytes
    attestation_key: bytes
    qe_report_certification_data: QeReportCertificationData
    wrapper_type: int | None = None

    def to_bytes(self) -> bytes:
        """Wire bytes, without the leading u32 length."""
        inner = self.qe_report_certification_data.to_bytes()
        if self.wrapper_type is not None:
            inner = (
                self.wrapper_type.to_bytes(2, "little") + len(inner).to_bytes(4, "little") + inner
            )
        return self.signature + self.attestation_key + inner


@dataclass(frozen=True)
class Quote:
    """A parsed Intel DCAP quote (v3/v4/v5).

    Attributes:
        header: the 48-byte header.
        body: :class:`EnclaveReport` (SGX), :class:`TdReport10` or :class:`TdReport15`.
        signature_data: signature, attestation key, QE report and certification data.
        body_type: 1 SGX, 2 TD 1.0, 3 TD 1.5 (the v5 descriptor; implied in v3/v4).
        trailing_bytes: bytes in the input after the quote's declared end (ignored).
    """

    header: QuoteHeader
    body: QuoteBody
    signature_data: QuoteSignatureData
    body_type: int
    trailing_bytes: int = 0

    @property
    def version(self) -> int:
        """Quote version (3, 4 or 5)."""
        return self.header.version

    @property
    def tee_type(self) -> int:
        """0 for SGX, 0x81 for TDX."""
        return self.header.tee_type

    @cached_property
    def signed_bytes(self) -> bytes:
        """The bytes the attestation key signs: header || [v5 descriptor] || body."""
        body = self.body.to_bytes()
        prefix = self.header.to_bytes()
        if self.header.version >= 5:
            prefix += self.body_type.to_bytes(2, "little") + len(body).to_bytes(4, "little")
        return prefix + body

    @property
    def report_data(self) -> bytes:
        """The 64-byte REPORT_DATA of the body (the attester's binding)."""
        return self.body.report_data

    @property
    def qe_report(self) -> EnclaveReport:
        """The Quoting Enclave's report."""
        return self.signature_data.qe_report_certification_data.qe_report

    @property
    def certification_data(self) -> CertificationData:
        """The innermost certification data (type 5 for a PCK chain)."""
        return self.signature_data.qe_report_certification_data.certification_data

    @property
    def pck_chain_pem(self) -> bytes | None:
        """Raw bytes of certification data type 5 (PEM chain, maybe NUL-padded).

        ``None`` when the quote carries another certification data type (e.g. an
        encrypted PPID): such quotes cannot be verified offline, and verification
        raises ``VerificationError`` for them.
        """
        cert = self.certification_data
        return cert.data if cert.cert_type == CERT_TYPE_PCK_CHAIN else None

    @property
    def parsed_length(self) -> int:
        """Length of the quote's declared extent (header + body + 4 + sig_len)."""
        return len(self.signed_bytes) + 4 + len(self.signature_data.to_bytes())

    def to_bytes(self) -> bytes:
        """Exact wire bytes of the parsed extent (trailing bytes excluded)."""
        sig = self.signature_data.to_bytes()
        return self.signed_bytes + len(sig).to_bytes(4, "little") + sig


def _read_body(r: ByteReader, header: QuoteHeader) -> tuple[int, QuoteBody]:
    version, tee = header.version, header.tee_type
    if version == 3:
        if tee != TEE_TYPE_SGX:
            raise ParseError(f"quote v3: reserved tee_type field must be 0, got {tee:#x}")
        body_type = BODY_TYPE_SGX
    elif version == 4:
        if tee == TEE_TYPE_SGX:
            body_type = BODY_TYPE_SGX
        elif tee == TEE_TYPE_TDX:
            body_type = BODY_TYPE_TD10
        else:
            raise ParseError(f"quote v4: unknown tee_type {tee:#x}")
    else:  # version 5 (checked by the caller)
        body_type = r.u16("body.type")
        size = r.u32("body.size")
        allowed = {TEE_TYPE_SGX: (BODY_TYPE_SGX,), TEE_TYPE_TDX: (BODY_TYPE_TD10, BODY_TYPE_TD15)}
        if tee not in allowed:
            raise ParseError(f"quote v5: unknown tee_type {tee:#x}")
        if body_type not in allowed[tee]:
            raise ParseError(f"quote v5: body type {body_type} invalid for tee_type {tee:#x}")
        if size != _BODY_CLASSES[body_type].SIZE:
            raise ParseError(
                f"quote v5: body type {body_type} must have size "
                f"{_BODY_CLASSES[body_type].SIZE}, got {size}"
            )
    cls = _BODY_CLASSES[body_type]
    return body_type, cls.from_bytes(r.read(cls.SIZE, "body"))


def parse_quote(data: bytes) -> Quote:
    """Parse an Intel DCAP ECDSA quote v3, v4 or v5 (structure only).

    Args:
        data: quote bytes (at most :data:`MAX_QUOTE_SIZE`); bytes after the quote's
            declared end are allowed and counted in ``Quote.trailing_bytes``.

    Returns:
        the parsed :class:`Quote`; ``quote.to_bytes() == data[:quote.parsed_length]``.

    Raises:
        ParseError: any structural problem (short input, unknown version / tee type /
            body type, att_key_type 3, outer certification data not type 6 in v4/v5,
            a nested length overrunning or under-filling its enclosing length, oversize
            input). Nothing else escapes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError(f"quote must be bytes, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) > MAX_QUOTE_SIZE:
        raise ParseError(f"quote too large: {len(buf)} bytes > {MAX_QUOTE_SIZE}")
    r = ByteReader(buf)
    header = QuoteHeader.read(r)
    if header.version not in (3, 4, 5):
        raise ParseError(f"unsupported quote version {header.version}")
    if header.att_key_type == _ATT_KEY_TYPE_ECDSA_P384:
        raise ParseError("attestation key type 3 (ECDSA-384) has no specified quote layout")
    body_type, body = _read_body(r, header)
    sig_len = r.u32("signature_data.length")
    sr = r.sub(sig_len, "signature_data")
    signature = sr.read(_SIG_SIZE, "quote_signature")
    att_key = sr.read(_KEY_SIZE, "attestation_key")
    wrapper: int | None = None
    if header.version == 3:
        qe = QeReportCertificationData.read(sr)
    else:
        wrapper = sr.u16("certification_data.type")
        if wrapper != CERT_TYPE_QE_REPORT:
            raise ParseError(
                f"quote v{header.version}: certification data type must be 6, got {wrapper}"
            )
        size = sr.u32("certification_data.size")
        qe = QeReportCertificationData.read(sr.sub(size, "QE report certification data"))
        sr.expect_end("signature data")
    return Quote(
        header=header,
        body=body,
        signature_data=QuoteSignatureData(signature, att_key, qe, wrapper),
        body_type=body_type,
        trailing_bytes=r.remaining,
    )
