"""SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS transcripts as produced by NVIDIA H100 GPUs.

An NVIDIA confidential-computing GPU attests with one signed SPDM exchange (DMTF DSP0274
"Security Protocol and Data Model" 1.1.x): the verifier's GET_MEASUREMENTS request followed
by the GPU's MEASUREMENTS response, whose last 96 bytes are an ECDSA P-384 signature (raw
``r||s``, 48 bytes each, big-endian) over ``request || response-without-signature``
(DSP0274 §10.11 and §14, "L1/L2" transcript of the measurement exchange). Layout::

    GET_MEASUREMENTS request (DSP0274 §10.11.1, 37 bytes when a signature is requested)
      0  SPDMVersion   u8   0x11
      1  RequestCode   u8   0xE0
      2  Param1        u8   attributes; bit 0 = signature requested (must be set)
      3  Param2        u8   measurement operation (0xFF = all blocks, NVIDIA's choice)
      4  Nonce         32   the verifier's nonce
      36 SlotIDParam   u8   certificate slot 0..7

    MEASUREMENTS response (DSP0274 §10.11.2)
      0  SPDMVersion             u8   equal to the request's
      1  ResponseCode            u8   0x60
      2  Param1, 3 Param2        u8   (number of indices / slot id; not interpreted)
      4  NumberOfBlocks          u8
      5  MeasurementRecordLength u24  little-endian
      8  MeasurementRecord       NumberOfBlocks measurement blocks (below), exactly
         Nonce                   32   the responder's nonce
         OpaqueLength            u16  little-endian
         OpaqueData              OpaqueLength bytes
         Signature               96   ECDSA P-384 raw r||s

    measurement block (DSP0274 §10.11.2.1, Table "Measurement block format")
      Index u8 (1..0xFE, unique), MeasurementSpecification u8 (0x01 = DMTF),
      MeasurementSize u16, then the DMTF measurement (§10.11.2.1.1):
      DMTFSpecMeasurementValueType u8 (bit 7 = raw bit stream, bits 0-6 = type),
      DMTFSpecMeasurementValueSize u16 (= MeasurementSize - 3), value.

All integers are little-endian. NVIDIA's opaque data is a flat list of TLVs ``type u16,
size u16, value`` (field ids as in NVIDIA's nvtrust verifier, :class:`NvidiaOpaqueFieldId`);
it is decoded best-effort: opaque data that is not a clean TLV list leaves
:attr:`MeasurementsResponse.opaque` None (the bytes are still signed and kept).

Parsers are bounded (:data:`MAX_TRANSCRIPT_SIZE`) and total: any input gives a
:class:`SpdmTranscript` or :class:`~teeflow.errors.ParseError`.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass
from enum import IntEnum

from teeflow.errors import ParseError
from teeflow.hazmat.reader import ByteReader

__all__ = [
    "GET_MEASUREMENTS",
    "MAX_TRANSCRIPT_SIZE",
    "MEASUREMENTS",
    "NONCE_SIZE",
    "REQUEST_SIZE",
    "SIGNATURE_SIZE",
    "SPDM_VERSION_11",
    "GetMeasurementsRequest",
    "MeasurementBlock",
    "MeasurementsResponse",
    "NvidiaOpaqueData",
    "NvidiaOpaqueFieldId",
    "OpaqueField",
    "SpdmTranscript",
    "parse_nvidia_opaque_data",
    "parse_transcript",
    "parse_transcript_hex",
]

#: SPDM version byte of SPDM 1.1 (the only one accepted).
SPDM_VERSION_11 = 0x11
#: GET_MEASUREMENTS request code.
GET_MEASUREMENTS = 0xE0
#: MEASUREMENTS response code.
MEASUREMENTS = 0x60
#: Size of a GET_MEASUREMENTS request that asks for a signature.
REQUEST_SIZE = 37
#: Size of the requester's and the responder's nonce.
NONCE_SIZE = 32
#: Size of an ECDSA P-384 raw r||s signature.
SIGNATURE_SIZE = 96
#: Largest transcript accepted, in bytes (real H100 transcripts are ~4.3 KiB).
MAX_TRANSCRIPT_SIZE = 1 << 20
_DMTF_SPEC = 0x01
_MAX_SLOT = 7


class NvidiaOpaqueFieldId(IntEnum):
    """NVIDIA opaque-data TLV types (as named by NVIDIA's nvtrust local GPU verifier)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35
    FEATURE_FLAG = 36
    INVALID = 255


@dataclass(frozen=True)
class GetMeasurementsRequest:
    """The verifier's GET_MEASUREMENTS request (DSP0274 §10.11.1).

    Attributes:
        version: SPDM version byte (0x11).
        param1: request attributes (bit 0 = signature requested; always set here).
        param2: measurement operation (0xFF = all measurement blocks).
        nonce: the verifier's 32-byte nonce.
        slot_id: certificate slot (0..7) whose key signs the response.
    """

    version: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block (DSP0274 §10.11.2.1).

    Attributes:
        index: measurement index (1..254).
        specification: MeasurementSpecification (0x01 = DMTF).
        value_type: DMTFSpecMeasurementValueType bits 0-6 (0 immutable ROM, 1 mutable
            firmware, 2 hardware configuration, 3 firmware configuration, 4 manifest, ...).
        raw_bitstream: bit 7 of the value type: the value is a raw bit stream, not a digest.
        value: DMTFSpecMeasurementValue (48-byte SHA-384 digests on H100).
    """

    index: int
    specification: int
    value_type: int
    raw_bitstream: bool
    value: bytes


@dataclass(frozen=True)
class OpaqueField:
    """One NVIDIA opaque-data TLV (``type u16, size u16, value``)."""

    type: int
    value: bytes

    @property
    def name(self) -> str:
        """The NVIDIA field name (``"DRIVER_VERSION"``) or ``"UNKNOWN_<type>"``."""
        try:
            return NvidiaOpaqueFieldId(self.type).name
        except ValueError:
            return f"UNKNOWN_{self.type}"


@dataclass(frozen=True)
class NvidiaOpaqueData:
    """NVIDIA opaque data decoded from TLVs; string fields are NUL-terminated ASCII.

    Attributes:
        fields: every TLV in order (types are unique).
        driver_version: e.g. ``"590.12"`` (field 3), or None.
        vbios_version: e.g. ``"96.00.A5.00.01"`` (field 6: the little-endian u32 of bytes
            0..3 as four upper-case hex pairs, then byte 4), or None.
        fwid: 48-byte firmware id of the GSP FMC (field 20), or None.
        project, project_sku, chip_sku: NUL-trimmed ASCII fields 17, 18, 15, or None.
    """

    fields: tuple[OpaqueField, ...]
    driver_version: str | None
    vbios_version: str | None
    fwid: bytes | None
    project: str | None
    project_sku: str | None
    chip_sku: str | None

    def get(self, field_type: int) -> bytes | None:
        """The value of TLV ``field_type``, or None when absent."""
        for f in self.fields:
            if f.type == field_type:
                return f.value
        return None


@dataclass(frozen=True)
class MeasurementsResponse:
    """The GPU's MEASUREMENTS response (DSP0274 §10.11.2).

    Attributes:
        version, param1, param2: header bytes.
        number_of_blocks: NumberOfBlocks (equals ``len(blocks)``).
        measurement_record: the MeasurementRecord bytes exactly as signed.
        blocks: the decoded measurement blocks, in record order.
        nonce: the responder's 32-byte nonce.
        opaque_data: OpaqueData bytes as signed.
        opaque: NVIDIA TLV decoding of ``opaque_data`` or None when it is not clean TLVs.
        signature: 96-byte ECDSA P-384 raw ``r||s``.
    """

    version: int
    param1: int
    param2: int
    number_of_blocks: int
    measurement_record: bytes
    blocks: tuple[MeasurementBlock, ...]
    nonce: bytes
    opaque_data: bytes
    opaque: NvidiaOpaqueData | None
    signature: bytes

    @property
    def measurements_digest(self) -> bytes:
        """SHA-384 of :attr:`measurement_record` (48 bytes): one value pinning every block."""
        return hashlib.sha384(self.measurement_record).digest()


@dataclass(frozen=True)
class SpdmTranscript:
    """A GET_MEASUREMENTS request followed by its signed MEASUREMENTS response.

    Attributes:
        raw: the whole transcript (request || response, signature included).
        request: the parsed request.
        response: the parsed response.
    """

    raw: bytes
    request: GetMeasurementsRequest
    response: MeasurementsResponse

    @property
    def signed_bytes(self) -> bytes:
        """``request || response`` without the trailing 96-byte signature."""
        return self.raw[:-SIGNATURE_SIZE]

    @property
    def signature(self) -> bytes:
        """The 96-byte raw ``r||s`` signature."""
        return self.response.signature


def _parse_request(r: ByteReader) -> GetMeasurementsRequest:
    version = r.u8("request SPDMVersion")
    if version != SPDM_VERSION_11:
        raise ParseError(f"unsupported SPDM request version {version:#04x} (need 0x11)")
    code = r.u8("request code")
    if code != GET_MEASUREMENTS:
        raise ParseError(f"request code {code:#04x} is not GET_MEASUREMENTS (0xe0)")
    param1 = r.u8("request param1")
    if not param1 & 0x01:
        raise ParseError("GET_MEASUREMENTS did not request a signature (param1 bit 0)")
    param2 = r.u8("request param2")
    nonce = r.read(NONCE_SIZE, "request nonce")
    slot_id = r.u8("request slot id")
    if slot_id > _MAX_SLOT:
        raise ParseError(f"request slot id {slot_id} outside 0..7")
    return GetMeasurementsRequest(version, param1, param2, nonce, slot_id)


def _parse_block(r: ByteReader) -> MeasurementBlock:
    start = r.offset
    index = r.u8("measurement index")
    if index in (0, 0xFF):
        raise ParseError(f"reserved measurement index {index} at offset {start}")
    spec = r.u8("measurement specification")
    if spec != _DMTF_SPEC:
        raise ParseError(f"measurement block {index}: specification {spec:#04x} is not DMTF")
    body = r.sub(r.u16("measurement size"), f"measurement block {index}")
    value_type = body.u8("DMTF value type")
    value = body.read(body.u16("DMTF value size"), f"measurement block {index} value")
    body.expect_end(f"measurement block {index}")
    return MeasurementBlock(index, spec, value_type & 0x7F, bool(value_type & 0x80), value)


def _ascii(value: bytes, what: str) -> str:
    text = value.split(b"\0", 1)[0]
    if any(value[len(text) :]):
        raise ParseError(f"opaque {what}: bytes after the NUL terminator")
    try:
        out = text.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(f"opaque {what}: not ASCII") from None
    if not out.isprintable():
        raise ParseError(f"opaque {what}: control characters")
    return out.strip()


def _vbios(value: bytes) -> str:
    if len(value) < 5:
        raise ParseError(f"opaque VBIOS_VERSION: {len(value)} bytes (need >= 5)")
    major = int.from_bytes(value[:4], "little")
    digits = f"{major:08X}"
    return ".".join([digits[0:2], digits[2:4], digits[4:6], digits[6:8], f"{value[4]:02X}"])


def parse_nvidia_opaque_data(data: bytes) -> NvidiaOpaqueData:
    """Decode NVIDIA opaque data: TLVs ``type u16 LE, size u16 LE, value`` to the end.

    Args:
        data: the OpaqueData bytes of a MEASUREMENTS response (at most 65535 bytes).

    Returns:
        :class:`NvidiaOpaqueData`.

    Raises:
        ParseError: truncated TLV, duplicate type, or a known string field (driver version,
            project, SKU) that is not NUL-terminated printable ASCII; a short VBIOS version
            or a FWID that is not 48 bytes.
    """
    r = ByteReader(data)
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while r.remaining:
        field_type = r.u16("opaque field type")
        value = r.read(r.u16("opaque field size"), f"opaque field {field_type} value")
        if field_type in seen:
            raise ParseError(f"duplicate opaque field type {field_type}")
        seen.add(field_type)
        fields.append(OpaqueField(field_type, value))
    by_type = {f.type: f.value for f in fields}

    def text(fid: NvidiaOpaqueFieldId) -> str | None:
        raw = by_type.get(fid)
        return None if raw is None else _ascii(raw, fid.name)

    vbios = by_type.get(NvidiaOpaqueFieldId.VBIOS_VERSION)
    fwid = by_type.get(NvidiaOpaqueFieldId.FWID)
    if fwid is not None and len(fwid) != 48:
        raise ParseError(f"opaque FWID: {len(fwid)} bytes (need 48)")
    return NvidiaOpaqueData(
        fields=tuple(fields),
        driver_version=text(NvidiaOpaqueFieldId.DRIVER_VERSION),
        vbios_version=None if vbios is None else _vbios(vbios),
        fwid=fwid,
        project=text(NvidiaOpaqueFieldId.PROJECT),
        project_sku=text(NvidiaOpaqueFieldId.PROJECT_SKU),
        chip_sku=text(NvidiaOpaqueFieldId.CHIP_SKU),
    )


def _parse_response(r: ByteReader, request_version: int) -> MeasurementsResponse:
    version = r.u8("response SPDMVersion")
    if version != request_version:
        raise ParseError(f"response SPDM version {version:#04x} differs from the request's")
    code = r.u8("response code")
    if code != MEASUREMENTS:
        raise ParseError(f"response code {code:#04x} is not MEASUREMENTS (0x60)")
    param1 = r.u8("response param1")
    param2 = r.u8("response param2")
    number_of_blocks = r.u8("NumberOfBlocks")
    record_length = int.from_bytes(r.read(3, "MeasurementRecordLength"), "little")
    record = r.read(record_length, "MeasurementRecord")
    record_reader = ByteReader(record)  # offsets in errors are relative to the record
    blocks: list[MeasurementBlock] = []
    indices: set[int] = set()
    while record_reader.remaining:
        block = _parse_block(record_reader)
        if block.index in indices:
            raise ParseError(f"duplicate measurement index {block.index}")
        indices.add(block.index)
        blocks.append(block)
    if len(blocks) != number_of_blocks:
        raise ParseError(f"NumberOfBlocks {number_of_blocks} but the record has {len(blocks)}")
    nonce = r.read(NONCE_SIZE, "response nonce")
    opaque_data = r.read(r.u16("OpaqueLength"), "OpaqueData")
    signature = r.read(SIGNATURE_SIZE, "signature")
    r.expect_end("MEASUREMENTS response (bytes after the signature)")
    try:
        opaque: NvidiaOpaqueData | None = parse_nvidia_opaque_data(opaque_data)
    except ParseError:
        opaque = None
    return MeasurementsResponse(
        version=version,
        param1=param1,
        param2=param2,
        number_of_blocks=number_of_blocks,
        measurement_record=record,
        blocks=tuple(blocks),
        nonce=nonce,
        opaque_data=opaque_data,
        opaque=opaque,
        signature=signature,
    )


def parse_transcript(data: bytes) -> SpdmTranscript:
    """Parse ``GET_MEASUREMENTS request || MEASUREMENTS response`` (module docstring layout).

    Args:
        data: the transcript bytes (at most :data:`MAX_TRANSCRIPT_SIZE`).

    Returns:
        :class:`SpdmTranscript` (structure only; the signature is not checked here).

    Raises:
        ParseError: oversized or truncated input, SPDM version other than 0x11, wrong
            request/response codes, no signature requested, slot id > 7, a measurement block
            that is not DMTF or whose sizes disagree, duplicate or reserved indices,
            NumberOfBlocks different from the record, or bytes after the signature.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError("SPDM transcript must be bytes")
    raw = bytes(data)
    if len(raw) > MAX_TRANSCRIPT_SIZE:
        raise ParseError(f"SPDM transcript too large ({len(raw)} > {MAX_TRANSCRIPT_SIZE} bytes)")
    r = ByteReader(raw)
    request = _parse_request(r.sub(REQUEST_SIZE, "GET_MEASUREMENTS request"))
    response = _parse_response(r.sub(r.remaining, "MEASUREMENTS response"), request.version)
    return SpdmTranscript(raw=raw, request=request, response=response)


def parse_transcript_hex(text: str | bytes) -> SpdmTranscript:
    """Parse a transcript given as hex text (e.g. Trustee's ``hopperAttestationReport.txt``).

    Leading/trailing whitespace is ignored; inner whitespace is not allowed.

    Raises:
        ParseError: not ASCII hex of even length, too large, or see :func:`parse_transcript`.
    """
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            raise ParseError("SPDM transcript hex is not ASCII") from None
    if not isinstance(text, bytes | bytearray):
        raise ParseError("SPDM transcript hex must be str or bytes")
    stripped = bytes(text).strip()
    if len(stripped) > 2 * MAX_TRANSCRIPT_SIZE:
        raise ParseError("SPDM transcript hex too large")
    try:
        raw = binascii.unhexlify(stripped)
    except (binascii.Error, ValueError):
        raise ParseError("SPDM transcript is not valid hex") from None
    return parse_transcript(raw)
