"""EMULATED NVIDIA confidential-computing GPUs (Hopper and Blackwell) and an NVML stand-in.

Nothing here is hardware evidence. :class:`EmulatedNvidiaAuthority` is a P-384 root
("teeflow EMULATED NVIDIA Device Identity CA", never NVIDIA's) kept under
``$TEEFLOW_HOME/emulation/nvidia/`` (0700 directory, 0600 files); its anchor is
``emulated=True``, so a verifier accepts its evidence only under ``allow_emulated``.
:class:`EmulatedGpu` is one device: a leaf certificate ``GH100 A01 GSP FMC LF`` (Hopper,
FWID in extension 2.23.133.5.4.1, NVIDIA's composite device-id layout) or ``GB100 A01 GSP
FMC LF`` (Blackwell, FWID in 2.23.133.5.4.1.1 as a TCG DiceTcbInfo) and real-format SPDM 1.1
GET_MEASUREMENTS transcripts signed with the leaf key (ECDSA P-384, raw ``r||s``), with
NVIDIA opaque data (driver version, VBIOS version, FWID).

:class:`EmulatedNvml` answers the subset of the ``pynvml`` (``nvidia-ml-py``) API that
:class:`teeflow.platform.nvidia.GpuAttester` calls, so the real attester code runs end to
end without a GPU (the CC attestation report and certificate calls return structures with
the same member names as NVML's ``c_nvmlConfComputeGpuAttestationReport_t`` and
``c_nvmlConfComputeGpuCertificate_t``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import char, univ

from teeflow.attestation.nvidia.spdm import NONCE_SIZE, NvidiaOpaqueFieldId
from teeflow.attestation.nvidia.verify import (
    DICE_FWID_EXTENSION_OIDS,
    _CompositeDeviceId,
    _ctx,
    _DiceTcbInfo,
    _Fwid,
    _FwidList,
)
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import PlatformError
from teeflow.platform.emulated_authority import (
    atomic_write,
    create_dir_atomically,
    resolve_now,
    teeflow_home,
)

__all__ = [
    "CHIPS",
    "EMULATED_NVIDIA_ROOT_CN",
    "NVML_DEVICE_ARCH",
    "EmulatedGpu",
    "EmulatedNvidiaAuthority",
    "EmulatedNvml",
    "emulated_nvidia_anchor",
]

#: Subject CN of the emulated root (never NVIDIA's "NVIDIA Device Identity CA").
EMULATED_NVIDIA_ROOT_CN = "teeflow EMULATED NVIDIA Device Identity CA"
#: Architecture -> chip name in the leaf subject.
CHIPS = {"HOPPER": "GH100", "BLACKWELL": "GB100"}
#: Architecture -> NVML ``nvmlDeviceGetArchitecture`` value (``NVML_DEVICE_ARCH_*``).
NVML_DEVICE_ARCH = {"HOPPER": 9, "BLACKWELL": 10}
_SHA384_OID = "2.16.840.1.101.3.4.2.2"
_LAYOUT = 1


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teeflow EMULATION"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _fwid_extension(
    arch: str, fwid: bytes, public_key: ec.EllipticCurvePublicKey
) -> x509.Extension[x509.UnrecognizedExtension]:
    hopper_oid, blackwell_oid = DICE_FWID_EXTENSION_OIDS
    value = _Fwid()
    value["hashAlg"] = univ.ObjectIdentifier(_SHA384_OID)
    value["digest"] = univ.OctetString(fwid)
    if arch == "HOPPER":
        composite = _CompositeDeviceId()
        composite["version"] = 1
        composite["deviceId"] = univ.Any(
            public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        composite["fwid"] = value
        der, oid = bytes(encoder.encode(composite)), hopper_oid
    else:
        info = _DiceTcbInfo()
        info["vendor"] = _ctx(char.UTF8String(), 0).clone("NVIDIA")
        info["model"] = _ctx(char.UTF8String(), 1).clone("GB100 A01 GSP FMC")
        fwids = _ctx(_FwidList(), 6, True).clone()
        fwids.append(value)
        info["fwids"] = fwids
        der, oid = bytes(encoder.encode(info)), blackwell_oid
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), der)
    return x509.Extension(ext.oid, False, ext)


def _tlv(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def _vbios_bytes(version: str) -> bytes:
    """Inverse of the VBIOS decoding in :mod:`teeflow.attestation.nvidia.spdm`."""
    parts = version.split(".")
    if len(parts) != 5:
        raise PlatformError(f"VBIOS version {version!r} must look like 96.00.A5.00.01")
    try:
        major = int("".join(parts[:4]), 16)
        return major.to_bytes(4, "little") + bytes([int(parts[4], 16)]) + b"\0\0\0"
    except (ValueError, OverflowError):
        raise PlatformError(f"VBIOS version {version!r} is not hex") from None


@dataclass(frozen=True)
class EmulatedGpu:
    """One emulated GPU.

    Attributes:
        arch: ``"HOPPER"`` or ``"BLACKWELL"``.
        index: device index (NVML order).
        key: the device leaf's P-384 key.
        chain_pem: PEM chain leaf -> emulated root (leaf first).
        fwid: 48-byte FWID in the leaf and in the signed opaque data.
        driver_version, vbios_version: reported in the signed opaque data.
        uuid: ``GPU-…`` identifier (informational).
    """

    arch: str
    index: int
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    chain_pem: bytes
    fwid: bytes
    driver_version: str
    vbios_version: str
    uuid: str

    def attestation_report(self, nonce: bytes) -> bytes:
        """An SPDM 1.1 GET_MEASUREMENTS request (all blocks, signature requested, slot 0)
        with ``nonce`` followed by the signed MEASUREMENTS response (DSP0274 §10.11).

        Raises:
            PlatformError: ``nonce`` is not 32 bytes.
        """
        if len(nonce) != NONCE_SIZE:
            raise PlatformError("the SPDM nonce is 32 bytes")
        request = bytes([0x11, 0xE0, 0x01, 0xFF]) + bytes(nonce) + b"\x00"
        record = b""
        blocks = 8
        for i in range(1, blocks + 1):
            value = hashlib.sha384(f"{self.arch} measurement {i}".encode()).digest()
            dmtf = b"\x01" + len(value).to_bytes(2, "little") + value
            record += bytes([i, 0x01]) + len(dmtf).to_bytes(2, "little") + dmtf
        opaque = (
            _tlv(NvidiaOpaqueFieldId.DRIVER_VERSION, self.driver_version.encode() + b"\0")
            + _tlv(NvidiaOpaqueFieldId.VBIOS_VERSION, _vbios_bytes(self.vbios_version))
            + _tlv(NvidiaOpaqueFieldId.FWID, self.fwid)
        )
        response = (
            bytes([0x11, 0x60, 0x00, 0x00, blocks])
            + len(record).to_bytes(3, "little")
            + record
            + os.urandom(NONCE_SIZE)
            + len(opaque).to_bytes(2, "little")
            + opaque
        )
        signed = request + response
        r, s = decode_dss_signature(self.key.sign(signed, ec.ECDSA(hashes.SHA384())))
        return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")


class EmulatedNvidiaAuthority:
    """The emulated NVIDIA device root (module docstring)."""

    def __init__(self, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> None:
        self.root_key = root_key
        self.root = root

    @classmethod
    def generate(cls, *, now: datetime | None = None) -> EmulatedNvidiaAuthority:
        """A fresh in-memory authority (valid from ``now`` - 1 day for 20 years)."""
        t = resolve_now(now)
        key = ec.generate_private_key(ec.SECP384R1())
        name = _name(EMULATED_NVIDIA_ROOT_CN)
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - timedelta(days=1))
            .not_valid_after(t + timedelta(days=365 * 20))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
            .sign(key, hashes.SHA384())
        )
        return cls(key, root)

    @classmethod
    def load_or_create(
        cls, home: Path | None = None, *, now: datetime | None = None
    ) -> EmulatedNvidiaAuthority:
        """Load ``<home>/emulation/nvidia`` or create it once (0700 directory, 0600 files).

        Raises:
            PlatformError: unreadable or foreign files, I/O errors.
        """
        directory = teeflow_home(home) / "emulation" / "nvidia"
        if not (directory / "authority.json").is_file():
            fresh = cls.generate(now=now)
            create_dir_atomically(directory, fresh._save)
        try:
            key = serialization.load_pem_private_key(
                (directory / "root.key.pem").read_bytes(), password=None
            )
            root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise PlatformError(
                f"cannot load the emulated NVIDIA root from {directory}: {exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or root.subject != _name(
            EMULATED_NVIDIA_ROOT_CN
        ):
            raise PlatformError(f"{directory} does not hold a teeflow emulated NVIDIA root")
        return cls(key, root)

    def _save(self, directory: Path) -> None:
        atomic_write(directory / "root.key.pem", _pem_key(self.root_key))
        atomic_write(directory / "root.pem", self.root.public_bytes(serialization.Encoding.PEM))
        meta = {
            "layout": _LAYOUT,
            "created": datetime.now(UTC).isoformat(),
            "warning": "EMULATED NVIDIA device root - not hardware. Never trust for real GPUs.",
        }
        atomic_write(directory / "authority.json", json.dumps(meta, indent=2).encode())

    def trust_anchor(self) -> TrustAnchor:
        """``TrustAnchor(root, emulated=True)``."""
        fp = self.root.fingerprint(hashes.SHA256()).hex()
        return TrustAnchor(self.root, name=f"{EMULATED_NVIDIA_ROOT_CN} ({fp[:16]})", emulated=True)

    def device(
        self,
        arch: str = "HOPPER",
        *,
        index: int = 0,
        fwid: bytes | None = None,
        driver_version: str = "590.12",
        vbios_version: str | None = None,
    ) -> EmulatedGpu:
        """A new emulated GPU of ``arch`` with a fresh leaf key certified by this root.

        Args:
            arch: ``HOPPER`` or ``BLACKWELL``.
            index: device index.
            fwid: 48-byte FWID (default: SHA-384 of ``"<arch> GSP FMC"``).
            driver_version: driver version in the opaque data.
            vbios_version: VBIOS version (default ``96.00.A5.00.01`` / ``97.00.D9.00.35``).

        Raises:
            PlatformError: unknown architecture or a FWID that is not 48 bytes.
        """
        arch = arch.upper()
        if arch not in CHIPS:
            raise PlatformError(f"emulated GPU architecture must be one of {sorted(CHIPS)}")
        fw = fwid if fwid is not None else hashlib.sha384(f"{arch} GSP FMC".encode()).digest()
        if len(fw) != 48:
            raise PlatformError("FWID must be 48 bytes (SHA-384)")
        vbios = vbios_version or ("96.00.A5.00.01" if arch == "HOPPER" else "97.00.D9.00.35")
        key = ec.generate_private_key(ec.SECP384R1())
        now = datetime.now(UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [x509.NameAttribute(NameOID.COMMON_NAME, f"{CHIPS[arch]} A01 GSP FMC LF")]
                )
            )
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now - timedelta(days=1), self.root.not_valid_before_utc))
            .not_valid_after(self.root.not_valid_after_utc)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
            )
        )
        ext = _fwid_extension(arch, fw, key.public_key())
        leaf = leaf.add_extension(ext.value, ext.critical)
        cert = leaf.sign(self.root_key, hashes.SHA384())
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.root.public_bytes(
            serialization.Encoding.PEM
        )
        uuid = (
            "GPU-" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:32]
        )
        return EmulatedGpu(arch, index, key, chain, fw, driver_version, vbios, uuid)


def emulated_nvidia_anchor(home: Path | None = None, *, now: datetime | None = None) -> TrustAnchor:
    """The emulated NVIDIA root of ``<home>/emulation/nvidia`` as a trust anchor (created at
    first use): what a verifier (the KBS) holds for emulated GPU evidence, which the
    agreement must still allow (``allow_emulated``).

    Raises:
        PlatformError: as :meth:`EmulatedNvidiaAuthority.load_or_create`.
    """
    return EmulatedNvidiaAuthority.load_or_create(home, now=now).trust_anchor()


class _NvmlError(Exception):
    """Raised by :class:`EmulatedNvml` like ``pynvml.NVMLError`` (``value`` = NVML code)."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class EmulatedNvml:
    """A stand-in for the ``pynvml`` module over emulated GPUs (module docstring).

    Args:
        gpus: the devices, in NVML index order.
        cc_enabled: what ``nvmlSystemGetConfComputeState().ccFeature`` reports (1 = on).
        devtools: ``devToolsMode`` (0 = off; 1 means CC "devtools" mode, not production).
    """

    NVMLError = _NvmlError
    NVML_DEVICE_ARCH_HOPPER = NVML_DEVICE_ARCH["HOPPER"]
    NVML_DEVICE_ARCH_BLACKWELL = NVML_DEVICE_ARCH["BLACKWELL"]
    NVML_CC_SYSTEM_FEATURE_ENABLED = 1
    NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = 0
    NVML_CC_SYSTEM_ENVIRONMENT_PROD = 2
    _ERROR_UNINITIALIZED = 1
    _ERROR_INVALID_ARGUMENT = 2

    def __init__(
        self, gpus: list[EmulatedGpu], *, cc_enabled: bool = True, devtools: bool = False
    ) -> None:
        self.gpus = list(gpus)
        self.cc_enabled = cc_enabled
        self.devtools = devtools
        self._initialised = 0
        self.calls: list[str] = []

    # the pynvml functions GpuAttester uses (same names and shapes)
    def nvmlInit(self) -> None:
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self._initialised -= 1

    def _check(self) -> None:
        if self._initialised <= 0:
            raise _NvmlError(self._ERROR_UNINITIALIZED)

    def _gpu(self, handle: object) -> EmulatedGpu:
        self._check()
        if not isinstance(handle, EmulatedGpu) or handle not in self.gpus:
            raise _NvmlError(self._ERROR_INVALID_ARGUMENT)
        return handle

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.gpus[0].driver_version if self.gpus else "590.12"

    def nvmlSystemGetConfComputeState(self) -> Any:
        self._check()
        return SimpleNamespace(
            environment=self.NVML_CC_SYSTEM_ENVIRONMENT_PROD,
            ccFeature=int(self.cc_enabled),
            devToolsMode=int(self.devtools),
        )

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> EmulatedGpu:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise _NvmlError(self._ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetArchitecture(self, handle: object) -> int:
        return NVML_DEVICE_ARCH[self._gpu(handle).arch]

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetVbiosVersion(self, handle: object) -> str:
        return self._gpu(handle).vbios_version

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: object, nonce: bytes) -> Any:
        gpu = self._gpu(handle)
        self.calls.append(f"report:{gpu.index}")
        report = gpu.attestation_report(bytes(nonce))
        return SimpleNamespace(
            isCecAttestationReportPresent=0,
            attestationReportSize=len(report),
            attestationReport=list(report) + [0] * 16,
            cecAttestationReportSize=0,
            nonce=list(nonce),
        )

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: object) -> Any:
        gpu = self._gpu(handle)
        self.calls.append(f"certificate:{gpu.index}")
        return SimpleNamespace(
            certChainSize=0,
            certChain=[],
            attestationCertChainSize=len(gpu.chain_pem),
            attestationCertChain=list(gpu.chain_pem) + [0] * 16,
        )
