"""AMD SEV-SNP ``ATTESTATION_REPORT`` (1184 bytes): bounded, total parser and serializer.

Source: AMD "SEV Secure Nested Paging Firmware ABI Specification" (#56860), Table
"ATTESTATION_REPORT Structure" (report versions 2, 3, 4 and 5), "TCB_VERSION", "Guest
Policy", "PLATFORM_INFO" and chapter "Signature Formats" (ECDSA P-384 with SHA-384). Layout
(offsets in hex, all integers little-endian)::

    000 VERSION u32 (2..5)        004 GUEST_SVN u32           008 POLICY u64
    010 FAMILY_ID [16]            020 IMAGE_ID [16]           030 VMPL u32
    034 SIGNATURE_ALGO u32        038 CURRENT_TCB u64         040 PLATFORM_INFO u64
    048 signer info u32: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY
        (0 VCEK, 1 VLEK, 7 none; 2-6 reserved), bits 31:5 MBZ
    04C MBZ [4]                   050 REPORT_DATA [64]        090 MEASUREMENT [48]
    0C0 HOST_DATA [32]            0E0 ID_KEY_DIGEST [48]      110 AUTHOR_KEY_DIGEST [48]
    140 REPORT_ID [32]            160 REPORT_ID_MA [32]       180 REPORTED_TCB u64
    188 (v3+) CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP u8 each; then MBZ up to 1A0
        (v2: 188..1A0 MBZ)
    1A0 CHIP_ID [64]              1E0 COMMITTED_TCB u64
    1E8 CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR u8, 1EB MBZ
    1EC COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR u8, 1EF MBZ
    1F0 LAUNCH_TCB u64
    1F8 (v5) LAUNCH_MIT_VECTOR u64, 200 (v5) CURRENT_MIT_VECTOR u64; then MBZ up to 2A0
        (v2-v4: 1F8..2A0 MBZ)
    2A0 SIGNATURE [512]: for SIGNATURE_ALGO 1, R [72] and S [72] little-endian, then 0x170
        MBZ bytes

Version 4 has the version 3 layout. The signature covers bytes ``[0, 0x2A0)``.

TCB_VERSION (u64) is product specific: Milan and Genoa ``[0]`` boot loader, ``[1]`` TEE,
``[2..5]`` reserved, ``[6]`` SNP firmware, ``[7]`` microcode; Turin (family 1Ah) ``[0]`` FMC,
``[1]`` boot loader, ``[2]`` TEE, ``[3]`` SNP, ``[4..6]`` reserved, ``[7]`` microcode.

Guest policy: bits 7:0 ABI minor, 15:8 ABI major, 16 SMT allowed, 17 reserved **must be 1**,
18 MIGRATE_MA, 19 DEBUG, 20 SINGLE_SOCKET, 21 CXL_ALLOW, 22 MEM_AES_256_XTS, 23 RAPL_DIS,
24 CIPHERTEXT_HIDING_DRAM, 25 PAGE_SWAP_DISABLE, 63:26 MBZ.

Every structural violation — wrong length, unknown version, reserved SIGNING_KEY value,
non-zero MBZ bytes or bits, policy bit 17 clear — is a :class:`~teeflow.errors.ParseError`;
nothing else escapes. :meth:`AttestationReport.to_bytes` re-encodes a parsed report
byte-for-byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from teeflow.errors import ParseError
from teeflow.hazmat.reader import ByteReader

__all__ = [
    "REPORT_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SIGNED_SIZE",
    "AttestationReport",
    "FirmwareVersion",
    "GuestPolicy",
    "PlatformInfo",
    "SigningKey",
    "SnpProduct",
    "TcbVersion",
    "parse_report",
    "product_from_cpuid",
    "product_from_name",
]

#: Size of ATTESTATION_REPORT in bytes.
REPORT_SIZE = 0x4A0
#: Bytes ``[0, SIGNED_SIZE)`` are signed.
SIGNED_SIZE = 0x2A0
#: SIGNATURE_ALGO value for ECDSA P-384 with SHA-384.
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
_ECDSA_COMPONENT = 72
_SUPPORTED_VERSIONS = (2, 3, 4, 5)
_POLICY_KNOWN_BITS = (1 << 26) - 1
_POLICY_RESERVED_ONE = 1 << 17


class SnpProduct(StrEnum):
    """AMD EPYC product lines with SEV-SNP (AMD KDS ``productName`` without stepping)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def turin_tcb_layout(self) -> bool:
        """True when TCB_VERSION uses the Turin (FMC) byte layout."""
        return self is SnpProduct.TURIN


def product_from_name(name: str) -> SnpProduct | None:
    """Product of an AMD KDS ``productName`` (``"Milan-B0"``, ``"Genoa"``, ``"Turin-B0"``).

    Returns None for any other string.
    """
    base = name.split("-", 1)[0]
    for product in SnpProduct:
        if base == product.value:
            return product
    return None


def product_from_cpuid(family: int, model: int) -> SnpProduct | None:
    """Product from the report's CPUID family/model (v3+), per AMD's processor programming
    references: family 19h models 00h-0Fh Milan, 10h-1Fh and A0h-AFh Genoa; family 1Ah
    models 00h-11h Turin. None for anything else."""
    if family == 0x19:
        if model <= 0x0F:
            return SnpProduct.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return SnpProduct.GENOA
    if family == 0x1A and model <= 0x11:
        return SnpProduct.TURIN
    return None


class SigningKey(IntEnum):
    """SIGNING_KEY field of the report (bits 4:2 at 0x48)."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION (u64) and its product-specific decoding.

    Attributes:
        raw: the u64 as stored (little-endian in the report).
        turin_layout: True for the Turin byte layout (FMC at byte 0).
    """

    raw: int
    turin_layout: bool = False

    def _byte(self, index: int) -> int:
        return (self.raw >> (8 * index)) & 0xFF

    @property
    def bootloader(self) -> int:
        """Boot loader SPL."""
        return self._byte(1 if self.turin_layout else 0)

    @property
    def tee(self) -> int:
        """PSP OS (TEE) SPL."""
        return self._byte(2 if self.turin_layout else 1)

    @property
    def snp(self) -> int:
        """SNP firmware SPL."""
        return self._byte(3 if self.turin_layout else 6)

    @property
    def microcode(self) -> int:
        """Microcode patch level SPL."""
        return self._byte(7)

    @property
    def fmc(self) -> int | None:
        """FMC SPL (Turin layout only; None otherwise)."""
        return self._byte(0) if self.turin_layout else None

    @property
    def reserved(self) -> bytes:
        """The reserved bytes (2..5 for Milan/Genoa, 4..6 for Turin) in order."""
        indexes = range(4, 7) if self.turin_layout else range(2, 6)
        return bytes(self._byte(i) for i in indexes)

    def for_product(self, product: SnpProduct) -> TcbVersion:
        """The same raw value decoded with ``product``'s layout."""
        return TcbVersion(self.raw, product.turin_tcb_layout)

    @classmethod
    def from_components(
        cls,
        product: SnpProduct,
        *,
        bootloader: int,
        tee: int,
        snp: int,
        microcode: int,
        fmc: int | None = None,
        reserved: bytes | None = None,
    ) -> TcbVersion:
        """Encode SPLs (each 0..255) in ``product``'s layout; ``fmc`` only for Turin;
        ``reserved`` (4 bytes Milan/Genoa, 3 Turin) defaults to zeros.

        Raises:
            ValueError: a value out of range, ``fmc`` given for Milan/Genoa or missing for
                Turin, or ``reserved`` of the wrong length.
        """
        turin = product.turin_tcb_layout
        if turin != (fmc is not None):
            raise ValueError("fmc is required for Turin and not allowed for Milan/Genoa")
        res = reserved if reserved is not None else bytes(3 if turin else 4)
        if len(res) != (3 if turin else 4):
            raise ValueError("wrong number of reserved TCB bytes")
        if turin:
            parts = [fmc or 0, bootloader, tee, snp, *res, microcode]
        else:
            parts = [bootloader, tee, *res, snp, microcode]
        if any(not 0 <= p <= 0xFF for p in parts):
            raise ValueError("TCB SPLs must be in 0..255")
        return cls(int.from_bytes(bytes(parts), "little"), turin)

    def components(self) -> dict[str, int]:
        """``{"bootloader", "tee", "snp", "microcode"[, "fmc"]}`` -> SPL."""
        out = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


class _Bit:
    """Read-only boolean view of bit ``n`` of the owner's ``raw`` integer."""

    def __init__(self, n: int, doc: str) -> None:
        self.n = n
        self.__doc__ = doc

    def __get__(self, obj: object, owner: type | None = None) -> bool:
        raw = getattr(obj, "raw", 0)
        return bool(int(raw) >> self.n & 1)


@dataclass(frozen=True)
class GuestPolicy:
    """The guest POLICY (u64) the VM was launched with, decoded.

    Raises (construction through :meth:`parse`):
        ParseError: bit 17 clear or any of bits 63:26 set.
    """

    raw: int

    @classmethod
    def parse(cls, raw: int) -> GuestPolicy:
        """Validate the reserved bits of ``raw`` (see class docstring)."""
        if not raw & _POLICY_RESERVED_ONE:
            raise ParseError("guest policy bit 17 is reserved and must be 1")
        if raw & ~_POLICY_KNOWN_BITS:
            raise ParseError(f"guest policy reserved bits 63:26 set ({raw:#x})")
        return cls(raw)

    @property
    def abi_minor(self) -> int:
        """Minimum ABI minor version (bits 7:0)."""
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        """Minimum ABI major version (bits 15:8)."""
        return self.raw >> 8 & 0xFF

    smt_allowed = _Bit(16, "SMT allowed.")
    reserved_bit17 = _Bit(17, "Reserved, always True once parsed.")
    migrate_ma = _Bit(18, "Migration agent allowed.")
    debug_allowed = _Bit(19, "Debugging (host decryption) allowed.")
    single_socket = _Bit(20, "Guest restricted to a single socket.")
    cxl_allowed = _Bit(21, "CXL may be populated.")
    mem_aes_256_xts = _Bit(22, "AES-256-XTS required for memory encryption.")
    rapl_dis = _Bit(23, "RAPL must be disabled.")
    ciphertext_hiding_dram = _Bit(24, "Ciphertext hiding for DRAM required.")
    page_swap_disable = _Bit(25, "SNP_PAGE_MOVE / SWAP_OUT / SWAP_IN disabled.")


@dataclass(frozen=True)
class PlatformInfo:
    """PLATFORM_INFO (u64): bit 0 SMT_EN, 1 TSME_EN, 2 ECC_EN, 3 RAPL_DIS,
    4 CIPHERTEXT_HIDING_DRAM_EN, 5 ALIAS_CHECK_COMPLETE, 7 TIO_EN; other bits reserved
    (kept, not interpreted)."""

    raw: int

    smt_enabled = _Bit(0, "SMT enabled on the platform.")
    tsme_enabled = _Bit(1, "TSME enabled.")
    ecc_enabled = _Bit(2, "ECC memory in use.")
    rapl_disabled = _Bit(3, "RAPL disabled.")
    ciphertext_hiding_dram_enabled = _Bit(4, "Ciphertext hiding for DRAM enabled.")
    alias_check_complete = _Bit(5, "Memory alias check completed.")
    tio_enabled = _Bit(7, "SEV-TIO enabled.")


@dataclass(frozen=True)
class FirmwareVersion:
    """SNP firmware version (major.minor.build) as reported (CURRENT_* / COMMITTED_*)."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class AttestationReport:
    """A parsed ATTESTATION_REPORT (see the module docstring for offsets).

    Byte fields have their fixed sizes (family_id/image_id 16, report_data 64, measurement 48,
    host_data 32, id_key_digest/author_key_digest 48, report_id/report_id_ma 32, chip_id 64,
    signature 512). ``cpuid_*`` are None for version 2; ``*_mit_vector`` None before v5.
    """

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature: bytes

    @property
    def author_key_en(self) -> bool:
        """AUTHOR_KEY_EN: the ID block carried an author key."""
        return bool(self.signer_info & 1)

    @property
    def mask_chip_key(self) -> bool:
        """MASK_CHIP_KEY: the VCEK was masked (the signature is then all zeros)."""
        return bool(self.signer_info & 2)

    @property
    def signing_key(self) -> SigningKey:
        """SIGNING_KEY: which key signed the report."""
        return SigningKey(self.signer_info >> 2 & 7)

    @property
    def product(self) -> SnpProduct | None:
        """Product from CPUID family/model (v3+), else None."""
        if self.cpuid_family is None or self.cpuid_model is None:
            return None
        return product_from_cpuid(self.cpuid_family, self.cpuid_model)

    @property
    def signature_r(self) -> int:
        """ECDSA R (little-endian 72 bytes at 0x2A0)."""
        return int.from_bytes(self.signature[:_ECDSA_COMPONENT], "little")

    @property
    def signature_s(self) -> int:
        """ECDSA S (little-endian 72 bytes at 0x2E8)."""
        return int.from_bytes(self.signature[_ECDSA_COMPONENT : 2 * _ECDSA_COMPONENT], "little")

    @property
    def signed_bytes(self) -> bytes:
        """Bytes ``[0, 0x2A0)``: what the signature covers."""
        return self.to_bytes()[:SIGNED_SIZE]

    def to_bytes(self) -> bytes:
        """Encode to the 1184-byte ABI form (exact inverse of :func:`parse_report`).

        Raises:
            ValueError: a field has the wrong size or range (only for hand-built reports).
        """
        v3 = self.version >= 3
        v5 = self.version >= 5
        parts = [
            _u(self.version, 4), _u(self.guest_svn, 4), _u(self.policy.raw, 8),
            _b(self.family_id, 16), _b(self.image_id, 16), _u(self.vmpl, 4),
            _u(self.signature_algo, 4), _u(self.current_tcb.raw, 8),
            _u(self.platform_info.raw, 8), _u(self.signer_info, 4), bytes(4),
            _b(self.report_data, 64), _b(self.measurement, 48), _b(self.host_data, 32),
            _b(self.id_key_digest, 48), _b(self.author_key_digest, 48),
            _b(self.report_id, 32), _b(self.report_id_ma, 32), _u(self.reported_tcb.raw, 8),
        ]  # fmt: skip
        if v3:
            cpuid = (self.cpuid_family, self.cpuid_model, self.cpuid_stepping)
            parts += [bytes(_u(c or 0, 1)[0] for c in cpuid), bytes(0x15)]
        else:
            parts.append(bytes(0x18))
        cur, com = self.current_version, self.committed_version
        parts += [
            _b(self.chip_id, 64), _u(self.committed_tcb.raw, 8),
            bytes([cur.build, cur.minor, cur.major, 0, com.build, com.minor, com.major, 0]),
            _u(self.launch_tcb.raw, 8),
        ]  # fmt: skip
        if v5:
            parts += [_u(self.launch_mit_vector or 0, 8), _u(self.current_mit_vector or 0, 8)]
            parts.append(bytes(0x98))
        else:
            parts.append(bytes(0xA8))
        parts.append(_b(self.signature, 0x200))
        out = b"".join(parts)
        if len(out) != REPORT_SIZE:  # pragma: no cover - layout bug
            raise ValueError(f"encoded report is {len(out)} bytes")
        return out


def _u(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, "little")


def _b(value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"field must be {size} bytes, got {len(value)}")
    return bytes(value)


def _mbz(r: ByteReader, n: int, what: str) -> None:
    start = r.offset
    if any(r.read(n, what)):
        raise ParseError(f"{what}: reserved bytes at {start:#x}..{start + n:#x} must be zero")


def _tcb(r: ByteReader, turin: bool, what: str) -> TcbVersion:
    return TcbVersion(r.u64(what), turin)


def parse_report(data: bytes) -> AttestationReport:
    """Parse an SEV-SNP ATTESTATION_REPORT.

    Args:
        data: exactly 1184 (0x4A0) bytes (bytes, bytearray or memoryview).

    Returns:
        :class:`AttestationReport`; TCB fields are decoded with the Turin layout when the
        CPUID family (v3+) is 1Ah, else with the Milan/Genoa layout (verification re-decodes
        them with the product from the endorsement certificate).

    Raises:
        ParseError: not bytes, wrong length, unsupported version, reserved SIGNING_KEY
            value, a non-zero MBZ field (0x4C, 0x188/0x18B..0x1A0, 0x1EB, 0x1EF,
            0x1F8/0x208..0x2A0, signer-info bits 31:5, the signature's tail for ECDSA), or a
            malformed guest policy.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError("SEV-SNP report must be bytes")
    buf = bytes(data)
    if len(buf) != REPORT_SIZE:
        raise ParseError(f"SEV-SNP report must be {REPORT_SIZE} bytes, got {len(buf)}")
    r = ByteReader(buf)
    version = r.u32("VERSION")
    if version not in _SUPPORTED_VERSIONS:
        raise ParseError(f"unsupported SEV-SNP report version {version}")
    v3, v5 = version >= 3, version >= 5
    family = buf[0x188] if v3 else None
    turin = family == 0x1A
    guest_svn = r.u32("GUEST_SVN")
    policy = GuestPolicy.parse(r.u64("POLICY"))
    family_id = r.read(16, "FAMILY_ID")
    image_id = r.read(16, "IMAGE_ID")
    vmpl = r.u32("VMPL")
    signature_algo = r.u32("SIGNATURE_ALGO")
    current_tcb = _tcb(r, turin, "CURRENT_TCB")
    platform_info = PlatformInfo(r.u64("PLATFORM_INFO"))
    signer_info = r.u32("signer info")
    if signer_info >> 5:
        raise ParseError(f"signer info bits 31:5 must be zero ({signer_info:#x})")
    if 2 <= (signer_info >> 2 & 7) <= 6:
        raise ParseError(f"reserved SIGNING_KEY value {signer_info >> 2 & 7}")
    _mbz(r, 4, "reserved after signer info")
    report_data = r.read(64, "REPORT_DATA")
    measurement = r.read(48, "MEASUREMENT")
    host_data = r.read(32, "HOST_DATA")
    id_key_digest = r.read(48, "ID_KEY_DIGEST")
    author_key_digest = r.read(48, "AUTHOR_KEY_DIGEST")
    report_id = r.read(32, "REPORT_ID")
    report_id_ma = r.read(32, "REPORT_ID_MA")
    reported_tcb = _tcb(r, turin, "REPORTED_TCB")
    cpuid: tuple[int | None, int | None, int | None] = (None, None, None)
    if v3:
        cpuid = (r.u8("CPUID_FAM_ID"), r.u8("CPUID_MOD_ID"), r.u8("CPUID_STEP"))
        _mbz(r, 0x15, "reserved after CPUID")
    else:
        _mbz(r, 0x18, "reserved after REPORTED_TCB")
    chip_id = r.read(64, "CHIP_ID")
    committed_tcb = _tcb(r, turin, "COMMITTED_TCB")
    build, minor, major = r.u8("CURRENT_BUILD"), r.u8("CURRENT_MINOR"), r.u8("CURRENT_MAJOR")
    _mbz(r, 1, "reserved after CURRENT_MAJOR")
    c_build, c_minor, c_major = (
        r.u8("COMMITTED_BUILD"), r.u8("COMMITTED_MINOR"), r.u8("COMMITTED_MAJOR"),
    )  # fmt: skip
    _mbz(r, 1, "reserved after COMMITTED_MAJOR")
    launch_tcb = _tcb(r, turin, "LAUNCH_TCB")
    launch_mit: int | None = None
    current_mit: int | None = None
    if v5:
        launch_mit, current_mit = r.u64("LAUNCH_MIT_VECTOR"), r.u64("CURRENT_MIT_VECTOR")
        _mbz(r, 0x98, "reserved before SIGNATURE")
    else:
        _mbz(r, 0xA8, "reserved before SIGNATURE")
    signature = r.read(0x200, "SIGNATURE")
    r.expect_end("SEV-SNP report")
    if signature_algo == SIGNATURE_ALGO_ECDSA_P384_SHA384 and any(signature[0x90:]):
        raise ParseError("SIGNATURE: reserved bytes after ECDSA R and S must be zero")
    return AttestationReport(
        version=version, guest_svn=guest_svn, policy=policy, family_id=family_id,
        image_id=image_id, vmpl=vmpl, signature_algo=signature_algo, current_tcb=current_tcb,
        platform_info=platform_info, signer_info=signer_info, report_data=report_data,
        measurement=measurement, host_data=host_data, id_key_digest=id_key_digest,
        author_key_digest=author_key_digest, report_id=report_id, report_id_ma=report_id_ma,
        reported_tcb=reported_tcb, cpuid_family=cpuid[0], cpuid_model=cpuid[1],
        cpuid_stepping=cpuid[2], chip_id=chip_id, committed_tcb=committed_tcb,
        current_version=FirmwareVersion(major, minor, build),
        committed_version=FirmwareVersion(c_major, c_minor, c_build), launch_tcb=launch_tcb,
        launch_mit_vector=launch_mit, current_mit_vector=current_mit, signature=signature,
    )  # fmt: skip
