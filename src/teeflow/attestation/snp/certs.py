"""VCEK / VLEK certificates: loading and AMD's X.509 extensions.

Source: AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification" (#57230) and "Versioned Loaded Endorsement Key (VLEK) Certificate
Definition" (#58369), table "VCEK/VLEK certificate extensions". Extensions under
``1.3.6.1.4.1.3704.1``::

    .1      structVersion   INTEGER
    .2      productName     IA5String   ("Milan-B0", "Genoa", "Milan", ...)
    .3.1    blSPL           INTEGER     boot loader SPL
    .3.2    teeSPL          INTEGER     TEE SPL
    .3.3    snpSPL          INTEGER     SNP firmware SPL
    .3.4-7  spl_4..spl_7    INTEGER     reserved SPLs (TCB bytes 2..5 on Milan/Genoa)
    .3.8    ucodeSPL        INTEGER     microcode SPL
    .3.9    fmcSPL          INTEGER     FMC SPL (Turin and later)
    .4      hwID            64 raw bytes (VCEK only; the KDS stores it *without* an
                            OCTET STRING header; Turin VCEKs carry the 8-byte hwID)
    .5      csp_id          IA5String   (VLEK only: the cloud provider)

Each value is the DER of the given type inside the extension's ``extnValue`` (except hwID).
Decoding uses pyasn1 and requires the whole value to be consumed.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, univ

from teeflow.attestation.dcap.chain import X509_ERRORS, parse_certificate_fields
from teeflow.attestation.snp.abi import SnpProduct, TcbVersion, product_from_name
from teeflow.errors import ParseError

__all__ = [
    "AMD_OID_PREFIX",
    "OID_BL_SPL",
    "OID_CSP_ID",
    "OID_FMC_SPL",
    "OID_HW_ID",
    "OID_PRODUCT_NAME",
    "OID_SNP_SPL",
    "OID_STRUCT_VERSION",
    "OID_TEE_SPL",
    "OID_UCODE_SPL",
    "AmdExtensions",
    "encode_amd_extensions",
    "load_certificate",
    "load_certificates",
    "parse_amd_extensions",
]

AMD_OID_PREFIX = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{AMD_OID_PREFIX}.1"
OID_PRODUCT_NAME = f"{AMD_OID_PREFIX}.2"
OID_BL_SPL = f"{AMD_OID_PREFIX}.3.1"
OID_TEE_SPL = f"{AMD_OID_PREFIX}.3.2"
OID_SNP_SPL = f"{AMD_OID_PREFIX}.3.3"
_OID_SPL_RESERVED = tuple(f"{AMD_OID_PREFIX}.3.{i}" for i in (4, 5, 6, 7))
OID_UCODE_SPL = f"{AMD_OID_PREFIX}.3.8"
OID_FMC_SPL = f"{AMD_OID_PREFIX}.3.9"
OID_HW_ID = f"{AMD_OID_PREFIX}.4"
OID_CSP_ID = f"{AMD_OID_PREFIX}.5"

_MAX_CERT_BYTES = 64 * 1024
_MAX_CERTS = 8
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]*-----END CERTIFICATE-----"
)
_PEM_ONLY = re.compile(
    rb"[ \t\r\n]*(?:-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]*"
    rb"-----END CERTIFICATE-----[ \t\r\n]*)+"
)


@dataclass(frozen=True)
class AmdExtensions:
    """AMD extensions of a VCEK or VLEK certificate.

    Attributes:
        struct_version: structVersion.
        product_name: productName as written (``"Milan-B0"``).
        bl_spl, tee_spl, snp_spl, ucode_spl: SPLs (0..255).
        fmc_spl: fmcSPL or None when absent.
        reserved_spls: spl_4..spl_7 (absent ones as 0).
        hw_id: hwID bytes (VCEK) or None.
        csp_id: csp_id (VLEK) or None.
    """

    struct_version: int
    product_name: str
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None
    reserved_spls: tuple[int, int, int, int]
    hw_id: bytes | None
    csp_id: str | None

    @property
    def product(self) -> SnpProduct | None:
        """Product line named by ``product_name`` (None if unknown)."""
        return product_from_name(self.product_name)

    @property
    def is_vlek(self) -> bool:
        """True for a VLEK certificate (csp_id present, no hwID)."""
        return self.csp_id is not None

    def tcb(self, product: SnpProduct) -> TcbVersion:
        """The TCB_VERSION these SPLs describe in ``product``'s layout.

        Raises:
            ParseError: Turin without fmcSPL (or Milan/Genoa with one), or Turin with
                non-zero spl_4..spl_7.
        """
        turin = product.turin_tcb_layout
        if turin and self.fmc_spl is None:
            raise ParseError("Turin endorsement certificate without fmcSPL")
        if not turin and self.fmc_spl is not None:
            raise ParseError(f"{product} endorsement certificate with fmcSPL")
        if turin and any(self.reserved_spls):
            raise ParseError("Turin endorsement certificate with non-zero spl_4..spl_7")
        return TcbVersion.from_components(
            product,
            bootloader=self.bl_spl,
            tee=self.tee_spl,
            snp=self.snp_spl,
            microcode=self.ucode_spl,
            fmc=self.fmc_spl,
            reserved=None if turin else bytes(self.reserved_spls),
        )


def _decode(value: bytes, spec: Any, what: str) -> Any:
    try:
        decoded, rest = der_decoder.decode(value, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, LookupError, OverflowError) as exc:
        raise ParseError(f"AMD extension {what}: malformed DER ({type(exc).__name__})") from None
    if rest:
        raise ParseError(f"AMD extension {what}: trailing bytes")
    return decoded


def _int(values: dict[str, bytes], oid: str, what: str, *, required: bool = True) -> int | None:
    raw = values.get(oid)
    if raw is None:
        if required:
            raise ParseError(f"AMD extension {what} ({oid}) missing")
        return None
    number = int(_decode(raw, univ.Integer(), what))
    if not 0 <= number <= 0xFF:
        raise ParseError(f"AMD extension {what} = {number} outside 0..255")
    return number


def _ia5(values: dict[str, bytes], oid: str, what: str) -> str | None:
    raw = values.get(oid)
    if raw is None:
        return None
    decoded = _decode(raw, char.IA5String(), what)
    try:
        return bytes(decoded.asOctets()).decode("ascii")
    except (UnicodeDecodeError, PyAsn1Error, AttributeError):
        raise ParseError(f"AMD extension {what}: not ASCII") from None


def _hw_id(raw: bytes) -> bytes:
    if len(raw) in (8, 64):
        return bytes(raw)  # KDS form: the bytes themselves, no OCTET STRING header
    decoded = _decode(raw, univ.OctetString(), "hwID")
    octets = bytes(decoded.asOctets())
    if len(octets) not in (8, 64):
        raise ParseError(f"AMD extension hwID has {len(octets)} bytes (need 8 or 64)")
    return octets


def parse_amd_extensions(cert: x509.Certificate) -> AmdExtensions:
    """Read the AMD extensions of a VCEK / VLEK certificate.

    Raises:
        ParseError: the certificate's extensions are malformed or duplicated; structVersion,
            productName or one of blSPL/teeSPL/snpSPL/ucodeSPL is missing; a value is not
            the expected DER type (with nothing after it) or an SPL is outside 0..255;
            hwID is not 8 or 64 bytes; both or neither of hwID and csp_id are present.
    """
    values: dict[str, bytes] = {}
    try:
        for ext in cert.extensions:
            oid = ext.oid.dotted_string
            if oid.startswith(AMD_OID_PREFIX + ".") and isinstance(
                ext.value, x509.UnrecognizedExtension
            ):
                values[oid] = ext.value.value
    except X509_ERRORS:
        raise ParseError("endorsement certificate has malformed extensions") from None
    struct_version = _int(values, OID_STRUCT_VERSION, "structVersion")
    product_name = _ia5(values, OID_PRODUCT_NAME, "productName")
    if product_name is None:
        raise ParseError(f"AMD extension productName ({OID_PRODUCT_NAME}) missing")
    spls = [
        _int(values, oid, name)
        for oid, name in (
            (OID_BL_SPL, "blSPL"), (OID_TEE_SPL, "teeSPL"),
            (OID_SNP_SPL, "snpSPL"), (OID_UCODE_SPL, "ucodeSPL"),
        )
    ]  # fmt: skip
    reserved = [
        _int(values, oid, f"spl_{i}", required=False) or 0
        for i, oid in enumerate(_OID_SPL_RESERVED, start=4)
    ]
    hw_raw = values.get(OID_HW_ID)
    hw_id = _hw_id(hw_raw) if hw_raw is not None else None
    csp_id = _ia5(values, OID_CSP_ID, "csp_id")
    if (hw_id is None) == (csp_id is None):
        raise ParseError("endorsement certificate must carry exactly one of hwID and csp_id")
    bl, tee, snp, ucode = (int(s or 0) for s in spls)
    return AmdExtensions(
        struct_version=int(struct_version or 0),
        product_name=product_name,
        bl_spl=bl,
        tee_spl=tee,
        snp_spl=snp,
        ucode_spl=ucode,
        fmc_spl=_int(values, OID_FMC_SPL, "fmcSPL", required=False),
        reserved_spls=(reserved[0], reserved[1], reserved[2], reserved[3]),
        hw_id=hw_id,
        csp_id=csp_id,
    )


def encode_amd_extensions(
    *,
    product_name: str,
    tcb: TcbVersion,
    hw_id: bytes | None = None,
    csp_id: str | None = None,
    struct_version: int = 0,
) -> list[x509.UnrecognizedExtension]:
    """AMD extensions for a VCEK (``hw_id``) or VLEK (``csp_id``), encoded as the KDS does
    (DER INTEGER / IA5String values; hwID as raw bytes), in the KDS's order.

    Raises:
        ValueError: both or neither of ``hw_id`` / ``csp_id``; hwID not 8 or 64 bytes.
    """
    if (hw_id is None) == (csp_id is None):
        raise ValueError("give exactly one of hw_id (VCEK) and csp_id (VLEK)")

    def integer(n: int) -> bytes:
        return bytes(der_encoder.encode(univ.Integer(n)))

    def ia5(text: str) -> bytes:
        return bytes(der_encoder.encode(char.IA5String(text)))

    reserved = tcb.reserved if not tcb.turin_layout else bytes(4)
    items: list[tuple[str, bytes]] = [
        (OID_STRUCT_VERSION, integer(struct_version)),
        (OID_PRODUCT_NAME, ia5(product_name)),
        (OID_BL_SPL, integer(tcb.bootloader)),
        (OID_TEE_SPL, integer(tcb.tee)),
    ]
    items += [(oid, integer(v)) for oid, v in zip(_OID_SPL_RESERVED, reserved, strict=True)]
    items += [(OID_SNP_SPL, integer(tcb.snp)), (OID_UCODE_SPL, integer(tcb.microcode))]
    if tcb.fmc is not None:
        items.append((OID_FMC_SPL, integer(tcb.fmc)))
    if hw_id is not None:
        if len(hw_id) not in (8, 64):
            raise ValueError("hwID must be 8 or 64 bytes")
        items.append((OID_HW_ID, bytes(hw_id)))
    else:
        items.append((OID_CSP_ID, ia5(str(csp_id))))
    return [x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), v) for oid, v in items]


def _checked(load: Callable[[bytes], x509.Certificate], data: bytes, what: str) -> x509.Certificate:
    """Load and force-parse every field (cryptography parses lazily), typed errors only."""
    try:
        with warnings.catch_warnings():
            # AMD's KDS issues VCEK/VLEK certificates with serial number 0 (RFC 5280 wants > 0).
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = load(data)
            parse_certificate_fields(cert)
    except ParseError:
        raise ParseError(f"{what} is malformed") from None
    except X509_ERRORS:
        raise ParseError(f"{what} is not a valid X.509 certificate") from None
    return cert


def load_certificates(data: bytes, *, what: str = "certificate") -> list[x509.Certificate]:
    """Load one DER certificate or a PEM bundle (file order) of at most 8 certificates.

    Raises:
        ParseError: empty, larger than 64 KiB, text outside PEM CERTIFICATE blocks, too many
            certificates, or a block / DER that is not a certificate.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError(f"{what} must be bytes")
    raw = bytes(data)
    if not raw or len(raw) > _MAX_CERT_BYTES:
        raise ParseError(f"{what}: {len(raw)} bytes (need 1..{_MAX_CERT_BYTES})")
    if b"-----BEGIN" not in raw:
        return [_checked(x509.load_der_x509_certificate, raw, what)]
    if _PEM_ONLY.fullmatch(raw) is None:
        raise ParseError(f"{what}: text outside PEM CERTIFICATE blocks")
    blocks = _PEM_BLOCK.findall(raw)
    if len(blocks) > _MAX_CERTS:
        raise ParseError(f"{what}: {len(blocks)} certificates (limit {_MAX_CERTS})")
    out = []
    for i, block in enumerate(blocks):
        out.append(_checked(x509.load_pem_x509_certificate, block, f"{what} #{i}"))
    return out


def load_certificate(data: bytes, *, what: str = "certificate") -> x509.Certificate:
    """Load exactly one certificate (DER or PEM); see :func:`load_certificates`.

    Raises:
        ParseError: as :func:`load_certificates`, or more than one certificate.
    """
    certs = load_certificates(data, what=what)
    if len(certs) != 1:
        raise ParseError(f"{what}: expected one certificate, got {len(certs)}")
    return certs[0]
