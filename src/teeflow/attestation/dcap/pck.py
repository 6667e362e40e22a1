"""The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1).

Source: "Intel SGX PCK Certificate and CRL Profile Specification", section 1.3.5
("Intel SGX Extensions"). The extension value is DER::

    SGXExtensions ::= SEQUENCE OF SEQUENCE { sgxExtensionId OID, sgxExtensionValue ANY }

    PPID      .1   OCTET STRING (16)
    TCB       .2   SEQUENCE OF SEQUENCE { OID, INTEGER }:
                   .2.1 .. .2.16 SGX TCB component SVNs (0..255), .2.17 PCESVN (0..65535),
                   .2.18 CPUSVN OCTET STRING (16)
    PCE-ID    .3   OCTET STRING (2)
    FMSPC     .4   OCTET STRING (6)
    SGX Type  .5   ENUMERATED { Standard(0), Scalable(1), ScalableWithIntegrity(2) }
    PlatformInstanceID .6 OCTET STRING (16)            (Platform CA certificates only)
    Configuration      .7 SEQUENCE OF SEQUENCE { OID, BOOLEAN }:
                   .7.1 dynamicPlatform, .7.2 cachedKeys, .7.3 SMTEnabled

DER is decoded with pyasn1 (strict DER decoder); every malformation is a ParseError.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cryptography import x509
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, univ
from pyasn1.type.base import Asn1Type

from teeflow.errors import ParseError

__all__ = [
    "SGX_EXTENSION_OID",
    "PckConfiguration",
    "PckExtensions",
    "SgxType",
    "parse_pck_extensions",
    "parse_sgx_extension_value",
]

#: OID of the Intel SGX extension in PCK certificates.
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_EXT = x509.ObjectIdentifier(SGX_EXTENSION_OID)
_PPID, _TCB, _PCEID, _FMSPC, _SGX_TYPE, _PIID, _CONFIG = (
    f"{SGX_EXTENSION_OID}.{i}" for i in range(1, 8)
)
_MAX_EXTENSION_SIZE = 4096


class SgxType(IntEnum):
    """SGX Type of the platform (PCK profile 1.3.5, ``.5``)."""

    STANDARD = 0
    SCALABLE = 1
    SCALABLE_WITH_INTEGRITY = 2


@dataclass(frozen=True)
class PckConfiguration:
    """Platform configuration flags (``.7``; Platform CA PCK certificates only)."""

    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


@dataclass(frozen=True)
class PckExtensions:
    """Decoded Intel SGX extension of a PCK certificate.

    Attributes:
        ppid: 16-byte Platform Provisioning ID.
        tcb_components: the 16 SGX TCB component SVNs (each 0..255), in order 1..16.
        pcesvn: PCE SVN (0..65535).
        cpusvn: 16-byte CPUSVN as stored in the certificate.
        pce_id: 2-byte PCE-ID (as stored; Intel's is 0000).
        fmspc: 6-byte FMSPC.
        sgx_type: :class:`SgxType`.
        platform_instance_id: 16 bytes, Platform CA certificates only.
        configuration: :class:`PckConfiguration`, Platform CA certificates only.
    """

    ppid: bytes
    tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: SgxType
    platform_instance_id: bytes | None = None
    configuration: PckConfiguration | None = None


class _Entry(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("id", univ.ObjectIdentifier()),
        namedtype.NamedType("value", univ.Any()),
    )


class _Entries(univ.SequenceOf):
    componentType = _Entry()


def _decode(der: bytes, spec: Asn1Type, what: str) -> Any:
    try:
        value, rest = decoder.decode(der, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise ParseError(f"PCK SGX extension: malformed {what}: {type(exc).__name__}") from None
    if rest:
        raise ParseError(f"PCK SGX extension: {len(rest)} trailing bytes after {what}")
    return value


def _entries(der: bytes, what: str) -> dict[str, bytes]:
    seq = _decode(der, _Entries(), what)
    out: dict[str, bytes] = {}
    try:
        for entry in seq:
            oid = str(entry["id"])
            if oid in out:
                raise ParseError(f"PCK SGX extension: duplicate {oid} in {what}")
            out[oid] = bytes(entry["value"])
    except PyAsn1Error:
        raise ParseError(f"PCK SGX extension: malformed {what}") from None
    return out


def _octets(der: bytes | None, size: int, what: str) -> bytes:
    if der is None:
        raise ParseError(f"PCK SGX extension: {what} missing")
    value = bytes(_decode(der, univ.OctetString(), what))
    if len(value) != size:
        raise ParseError(f"PCK SGX extension: {what} must be {size} bytes, got {len(value)}")
    return value


def _integer(der: bytes | None, spec: univ.Integer, bound: int, what: str) -> int:
    if der is None:
        raise ParseError(f"PCK SGX extension: {what} missing")
    value = int(_decode(der, spec, what))
    if not 0 <= value <= bound:
        raise ParseError(f"PCK SGX extension: {what} out of range: {value}")
    return value


def _boolean(der: bytes | None, what: str) -> bool | None:
    if der is None:
        return None
    return bool(_decode(der, univ.Boolean(), what))


def parse_sgx_extension_value(der: bytes) -> PckExtensions:
    """Decode the DER value of the SGX extension (PCK profile 1.3.5).

    Args:
        der: the extension's ``extnValue`` contents (at most 4096 bytes).

    Raises:
        ParseError: malformed DER, missing mandatory item, duplicate item, wrong
            OCTET STRING size, out-of-range SVN or unknown SGX type.
    """
    if len(der) > _MAX_EXTENSION_SIZE:
        raise ParseError(f"PCK SGX extension too large: {len(der)} bytes")
    top = _entries(der, "SGXExtensions")
    if top.get(_TCB) is None:
        raise ParseError("PCK SGX extension: TCB missing")
    tcb = _entries(top[_TCB], "TCB")
    comps = tuple(
        _integer(tcb.get(f"{_TCB}.{i}"), univ.Integer(), 255, f"TCB component {i}")
        for i in range(1, 17)
    )
    pcesvn = _integer(tcb.get(f"{_TCB}.17"), univ.Integer(), 0xFFFF, "PCESVN")
    cpusvn = _octets(tcb.get(f"{_TCB}.18"), 16, "CPUSVN")
    sgx_type_value = _integer(top.get(_SGX_TYPE), univ.Enumerated(), 2, "SGX Type")
    piid = top.get(_PIID)
    config: PckConfiguration | None = None
    if top.get(_CONFIG) is not None:
        cfg = _entries(top[_CONFIG], "Configuration")
        config = PckConfiguration(
            dynamic_platform=_boolean(cfg.get(f"{_CONFIG}.1"), "dynamicPlatform"),
            cached_keys=_boolean(cfg.get(f"{_CONFIG}.2"), "cachedKeys"),
            smt_enabled=_boolean(cfg.get(f"{_CONFIG}.3"), "SMTEnabled"),
        )
    return PckExtensions(
        ppid=_octets(top.get(_PPID), 16, "PPID"),
        tcb_components=comps,
        pcesvn=pcesvn,
        cpusvn=cpusvn,
        pce_id=_octets(top.get(_PCEID), 2, "PCE-ID"),
        fmspc=_octets(top.get(_FMSPC), 6, "FMSPC"),
        sgx_type=SgxType(sgx_type_value),
        platform_instance_id=None if piid is None else _octets(piid, 16, "PlatformInstanceID"),
        configuration=config,
    )


def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Return the decoded Intel SGX extension of a PCK certificate.

    Args:
        cert: the PCK leaf certificate.

    Raises:
        ParseError: the extension is absent, the certificate's extensions are malformed,
            or the extension value is malformed (see :func:`parse_sgx_extension_value`).
    """
    try:
        ext = cert.extensions.get_extension_for_oid(_EXT)
    except x509.ExtensionNotFound:
        raise ParseError("certificate has no Intel SGX extension (not a PCK certificate)") from None
    except ValueError as exc:
        raise ParseError(f"malformed certificate extensions: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
        raise ParseError("unexpected decoding of the Intel SGX extension")
    return parse_sgx_extension_value(value.value)
