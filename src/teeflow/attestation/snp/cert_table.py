"""The SEV-SNP certificate table of an extended report (configfs-tsm ``auxblob``).

Source: AMD "SEV-ES Guest-Hypervisor Communication Block Standardization" (#56421), section
"SNP Extended Guest Request" — the certificate table: a sequence of 24-byte entries
``{GUID (16 bytes), offset (u32 LE), length (u32 LE)}`` terminated by an all-zero entry,
offsets counted from the start of the table, followed by the certificates (DER). GUIDs are
written in the byte order of their text form (``uuid_parse``), as the Linux kernel and the
``sev`` crate (``CertType``) read them::

    VCEK  63da758d-e664-4564-adc5-f4b93be8accd    VLEK  a8074bc2-a25a-483e-aae6-39c045a0b8a1
    ASK   4ab7b379-bbac-4fe4-a02f-05aef327c782    ARK   c0b406a4-a803-4952-9743-3fb6014cd0ae
    CRL   92f81bc3-5811-4d3d-97ff-d19f88dc67ea

:func:`parse_cert_table` is bounded and total (``ParseError`` for anything malformed);
:func:`build_cert_table` writes the layout (the emulated platform and the configfs-tsm
stand-in use it).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence

from teeflow.errors import ParseError

__all__ = [
    "CERT_TABLE_GUIDS",
    "MAX_CERT_TABLE_BYTES",
    "MAX_CERT_TABLE_ENTRIES",
    "build_cert_table",
    "parse_cert_table",
]

#: Certificate type name -> GUID (``sev`` crate ``CertType`` names).
CERT_TABLE_GUIDS: dict[str, uuid.UUID] = {
    "ARK": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
    "ASK": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "VCEK": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "VLEK": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "CRL": uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"),
}
_BY_GUID = {g.bytes: name for name, g in CERT_TABLE_GUIDS.items()}
#: Largest table accepted (bytes).
MAX_CERT_TABLE_BYTES = 1024 * 1024
#: Most entries read before the terminator.
MAX_CERT_TABLE_ENTRIES = 16
_ENTRY = struct.Struct("<16sII")


def parse_cert_table(blob: bytes) -> list[tuple[str, bytes]]:
    """The entries of a certificate table as ``(type, DER bytes)`` in table order; ``type``
    is a name of :data:`CERT_TABLE_GUIDS` or the GUID's text for other entries.

    Raises:
        ParseError: not bytes, larger than :data:`MAX_CERT_TABLE_BYTES`, no terminator within
            :data:`MAX_CERT_TABLE_ENTRIES` entries, or an entry pointing outside the blob or
            into the entry array.
    """
    if not isinstance(blob, bytes | bytearray):
        raise ParseError("certificate table must be bytes")
    data = bytes(blob)
    if len(data) > MAX_CERT_TABLE_BYTES:
        raise ParseError(f"certificate table larger than {MAX_CERT_TABLE_BYTES} bytes")
    entries: list[tuple[bytes, int, int]] = []
    for index in range(MAX_CERT_TABLE_ENTRIES + 1):
        start = index * _ENTRY.size
        if start + _ENTRY.size > len(data):
            raise ParseError("certificate table has no terminating entry")
        guid, offset, length = _ENTRY.unpack_from(data, start)
        if guid == bytes(16) and offset == 0 and length == 0:
            break
        if index == MAX_CERT_TABLE_ENTRIES:
            raise ParseError(f"certificate table has more than {MAX_CERT_TABLE_ENTRIES} entries")
        entries.append((guid, offset, length))
    header_end = (len(entries) + 1) * _ENTRY.size
    out: list[tuple[str, bytes]] = []
    for guid, offset, length in entries:
        if length == 0 or offset < header_end or offset + length > len(data):
            raise ParseError("certificate table entry points outside the table")
        out.append((_BY_GUID.get(guid, str(uuid.UUID(bytes=guid))), data[offset : offset + length]))
    return out


def build_cert_table(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A certificate table holding ``entries`` (``(type name of CERT_TABLE_GUIDS, DER)``),
    certificates in the given order after the terminated entry array.

    Raises:
        ParseError: unknown type name, empty certificate, too many entries.
    """
    if len(entries) > MAX_CERT_TABLE_ENTRIES:
        raise ParseError(f"at most {MAX_CERT_TABLE_ENTRIES} certificate table entries")
    offset = (len(entries) + 1) * _ENTRY.size
    head = bytearray()
    body = bytearray()
    for name, der in entries:
        if name not in CERT_TABLE_GUIDS:
            raise ParseError(f"unknown certificate table type {name!r}")
        if not der:
            raise ParseError("empty certificate in a certificate table")
        head += _ENTRY.pack(CERT_TABLE_GUIDS[name].bytes, offset + len(body), len(der))
        body += der
    head += bytes(_ENTRY.size)
    return bytes(head + body)
