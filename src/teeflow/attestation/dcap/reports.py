"""Intel DCAP report bodies: SGX report (384 B), TD report 1.0 (584 B), TD report 1.5 (648 B).

Fixed-size little-endian records carried by DCAP quotes (:mod:`.quote`) and as the QE
report. Byte fields are kept exactly as stored and ``reserved*`` fields are kept, so
``to_bytes()`` reproduces the wire bytes; decoding needs exactly ``SIZE`` bytes and
raises :class:`~teeflow.errors.ParseError` otherwise.

Sources: Intel SGX ECDSA Quote Library API, Appendix A.4 (``sgx_report_body_t``; SGX SDM
"REPORT"); Intel TDX DCAP Quoting Library API, Appendix A.3.2 (TD report 1.0) and A.4
(TD report 1.5, v5 body type 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from teeflow.errors import ParseError

__all__ = [
    "EnclaveReport",
    "QuoteBody",
    "TdReport10",
    "TdReport15",
]


class _Fixed:
    """Fixed-size little-endian record: ``_LAYOUT`` = (field, size, is_int) in wire order."""

    SIZE: ClassVar[int]
    _LAYOUT: ClassVar[tuple[tuple[str, int, bool], ...]]

    @classmethod
    def _decode(cls, data: bytes) -> dict[str, Any]:
        if len(data) != cls.SIZE:
            raise ParseError(f"{cls.__name__} must be {cls.SIZE} bytes, got {len(data)}")
        out: dict[str, Any] = {}
        off = 0
        for name, size, is_int in cls._LAYOUT:
            chunk = data[off : off + size]
            out[name] = int.from_bytes(chunk, "little") if is_int else chunk
            off += size
        return out

    def to_bytes(self) -> bytes:
        """Exact wire bytes (every field, reserved ones included)."""
        parts = []
        for name, size, is_int in self._LAYOUT:
            value = getattr(self, name)
            parts.append(value.to_bytes(size, "little") if is_int else value)
        return b"".join(parts)


def _layout(spec: str) -> tuple[tuple[str, int, bool], ...]:
    """``"name:16 n2:u16"`` -> layout tuples (``uN`` = N-bit integer)."""
    out = []
    for item in spec.split():
        name, size = item.split(":")
        if size.startswith("u"):
            out.append((name, int(size[1:]) // 8, True))
        else:
            out.append((name, int(size), False))
    return tuple(out)


@dataclass(frozen=True)
class EnclaveReport(_Fixed):
    """384-byte SGX report body (sgx_report_body_t; SGX SDM "REPORT"; Quote Library API A.4).

    Used for the quote body of SGX quotes and for the QE report. Byte fields are kept
    exactly as stored (little-endian structures are not reinterpreted); ``reserved*``
    fields are kept so :meth:`to_bytes` is exact.
    """

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes

    SIZE: ClassVar[int] = 384
    _LAYOUT: ClassVar[tuple[tuple[str, int, bool], ...]] = _layout(
        "cpu_svn:16 misc_select:u32 reserved1:12 isv_ext_prod_id:16 attributes:16 "
        "mr_enclave:32 reserved2:32 mr_signer:32 reserved3:32 config_id:64 isv_prod_id:u16 "
        "isv_svn:u16 config_svn:u16 reserved4:42 isv_family_id:16 report_data:64"
    )

    @classmethod
    def from_bytes(cls, data: bytes) -> EnclaveReport:
        """Decode exactly 384 bytes. Raises ParseError on another length."""
        return cls(**cls._decode(data))

    @property
    def flags(self) -> int:
        """ATTRIBUTES.FLAGS (first 8 bytes, little-endian u64)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def xfrm(self) -> int:
        """ATTRIBUTES.XFRM (last 8 bytes, little-endian u64)."""
        return int.from_bytes(self.attributes[8:16], "little")

    @property
    def debug(self) -> bool:
        """True if ATTRIBUTES.DEBUG (flags bit 1) is set: the enclave is debuggable."""
        return bool(self.flags & 0x2)


@dataclass(frozen=True)
class TdReport10(_Fixed):
    """584-byte TD report body of TDX 1.0 (TDX DCAP Quoting Library API A.3.2)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes

    SIZE: ClassVar[int] = 584
    _LAYOUT: ClassVar[tuple[tuple[str, int, bool], ...]] = _layout(
        "tee_tcb_svn:16 mr_seam:48 mr_signer_seam:48 seam_attributes:8 td_attributes:8 "
        "xfam:8 mr_td:48 mr_config_id:48 mr_owner:48 mr_owner_config:48 rtmr0:48 rtmr1:48 "
        "rtmr2:48 rtmr3:48 report_data:64"
    )

    @classmethod
    def from_bytes(cls, data: bytes) -> TdReport10:
        """Decode exactly 584 bytes. Raises ParseError on another length."""
        return cls(**cls._decode(data))

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        """RTMR0..RTMR3 (48 bytes each)."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True)
class TdReport15(TdReport10):
    """648-byte TD report body of TDX 1.5 (v5 body type 3): TD 1.0 + tee_tcb_svn2, mr_service_td."""

    tee_tcb_svn2: bytes
    mr_service_td: bytes

    SIZE: ClassVar[int] = 648
    _LAYOUT: ClassVar[tuple[tuple[str, int, bool], ...]] = TdReport10._LAYOUT + _layout(
        "tee_tcb_svn2:16 mr_service_td:48"
    )

    @classmethod
    def from_bytes(cls, data: bytes) -> TdReport15:
        """Decode exactly 648 bytes. Raises ParseError on another length."""
        return cls(**cls._decode(data))


QuoteBody = EnclaveReport | TdReport10 | TdReport15
