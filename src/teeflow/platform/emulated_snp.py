"""Emulated AMD SEV-SNP platform: real-format attestation reports under an emulated ARK.

:class:`EmulatedSnp` stands in for an SEV-SNP guest and AMD's endorsement PKI:

* an emulated ARK (RSA-4096, self-signed, RSASSA-PSS SHA-384, subject CN
  ``"teeflow EMULATED AMD ARK — not hardware"``), an emulated ASK (RSA-4096, issued by the
  ARK) and a VCEK (EC P-384, issued by the ASK) carrying the AMD KDS extensions exactly as
  AMD encodes them (:func:`teeflow.attestation.snp.certs.encode_amd_extensions`);
* :meth:`EmulatedSnp.report` returns a version 3 ATTESTATION_REPORT (1184 bytes; AMD SEV-SNP
  Firmware ABI Specification #56860) signed by the VCEK with ECDSA P-384 SHA-384.

``teeflow.attestation.snp.verify(parse_report(r), endorsement_cert=emu.vcek_certificate,
intermediates=[emu.ask_certificate], anchors=[emu.trust_anchor()], now=now)`` accepts the
report (``emulated`` True); with AMD's real roots (the default anchors) it fails. Keys live in
memory (:meth:`EmulatedSnp.generate`) or under ``$TEEFLOW_HOME/emulation/snp/`` (0700
directory, 0600 files; :meth:`EmulatedSnp.load_or_create`). Nothing here is hardware
evidence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from teeflow.attestation.evidence import Evidence
from teeflow.attestation.snp.abi import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    AttestationReport,
    FirmwareVersion,
    GuestPolicy,
    PlatformInfo,
    SnpProduct,
    TcbVersion,
)
from teeflow.attestation.snp.cert_table import build_cert_table
from teeflow.attestation.snp.certs import encode_amd_extensions
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError, PlatformError
from teeflow.platform.base import pad_report_data
from teeflow.platform.emulated_authority import (
    atomic_write,
    create_dir_atomically,
    resolve_now,
    teeflow_home,
)

__all__ = [
    "EMULATED_ARK_CN",
    "EMULATED_CPUID",
    "EMULATED_TCB",
    "EmulatedSnp",
    "EmulatedSnpKeys",
    "emulated_snp_anchor",
]

#: Subject CN of every emulated ARK (exactly this string).
EMULATED_ARK_CN = "teeflow EMULATED AMD ARK — not hardware"
EMULATED_ASK_CN = "teeflow EMULATED AMD ASK — not hardware"
EMULATED_VCEK_CN = "teeflow EMULATED SEV-VCEK — not hardware"
#: Emulated TCB per product (REPORTED = CURRENT = COMMITTED = LAUNCH TCB).
EMULATED_TCB: dict[SnpProduct, TcbVersion] = {
    SnpProduct.MILAN: TcbVersion.from_components(
        SnpProduct.MILAN, bootloader=4, tee=0, snp=24, microcode=219
    ),
    SnpProduct.GENOA: TcbVersion.from_components(
        SnpProduct.GENOA, bootloader=10, tee=0, snp=23, microcode=84
    ),
    SnpProduct.TURIN: TcbVersion.from_components(
        SnpProduct.TURIN, bootloader=1, tee=1, snp=3, microcode=77, fmc=1
    ),
}
#: CPUID (family, model, stepping) written into version 3 reports.
EMULATED_CPUID: dict[SnpProduct, tuple[int, int, int]] = {
    SnpProduct.MILAN: (0x19, 0x01, 0x01),
    SnpProduct.GENOA: (0x19, 0x11, 0x01),
    SnpProduct.TURIN: (0x1A, 0x02, 0x00),
}
_FIRMWARE = FirmwareVersion(1, 55, 30)
_DEFAULT_GUEST_POLICY = 0x30000  # SMT allowed, reserved bit 17; no debug, no migration agent
_LIFETIME = timedelta(days=25 * 365)
_BACKDATE = timedelta(days=1)
_LAYOUT = 1
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class EmulatedSnpKeys:
    """Keys and certificates of one emulated SEV-SNP platform (handle with care)."""

    product: SnpProduct
    chip_id: bytes
    tcb: TcbVersion
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "teeflow emulation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _serial(rng: Callable[[int], bytes]) -> int:
    return int.from_bytes(rng(16), "big") >> 1 | 1


def _ca_key_usage(*, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_cert(
    subject: str,
    issuer: str,
    key: rsa.RSAPrivateKey,
    public: rsa.RSAPublicKey,
    *,
    now: datetime,
    path_length: int | None,
    rng: Callable[[int], bytes],
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(_serial(rng))
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(crl_sign=path_length is None), critical=True)
        .sign(key, hashes.SHA384(), rsa_padding=_PSS)
    )


def _generate(
    product: SnpProduct, tcb: TcbVersion, now: datetime, rng: Callable[[int], bytes]
) -> EmulatedSnpKeys:
    if tcb.turin_layout != product.turin_tcb_layout:
        raise PlatformError(f"TCB layout does not match product {product}")
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = _ca_cert(
        EMULATED_ARK_CN, EMULATED_ARK_CN, ark_key, ark_key.public_key(),
        now=now, path_length=None, rng=rng,
    )  # fmt: skip
    ask = _ca_cert(
        EMULATED_ASK_CN, EMULATED_ARK_CN, ark_key, ask_key.public_key(),
        now=now, path_length=0, rng=rng,
    )  # fmt: skip
    turin = product is SnpProduct.TURIN
    chip_id = rng(8) + bytes(56) if turin else rng(64)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(EMULATED_VCEK_CN))
        .issuer_name(_name(EMULATED_ASK_CN))
        .public_key(vcek_key.public_key())
        .serial_number(_serial(rng))
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
    )
    name = f"{product.value}-B0"
    for ext in encode_amd_extensions(
        product_name=name, tcb=tcb, hw_id=chip_id[:8] if turin else chip_id
    ):
        builder = builder.add_extension(ext, critical=False)
    vcek = builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)
    return EmulatedSnpKeys(product, chip_id, tcb, ark_key, ark, ask_key, ask, vcek_key, vcek)


_FILES = ("ark", "ask", "vcek")


def _save(keys: EmulatedSnpKeys, directory: Path, created: datetime) -> None:
    for name in _FILES:
        key = getattr(keys, f"{name}_key")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(directory / f"{name}.key.pem", pem)
        cert: x509.Certificate = getattr(keys, name)
        atomic_write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    meta = {
        "layout": _LAYOUT,
        "created": created.isoformat(),
        "product": keys.product.value,
        "chip_id": keys.chip_id.hex(),
        "tcb": f"{keys.tcb.raw:#018x}",
        "warning": "EMULATED SEV-SNP platform - not hardware. Never trust for real evidence.",
    }
    atomic_write(directory / "authority.json", json.dumps(meta, indent=2).encode())


def _load(directory: Path) -> EmulatedSnpKeys:
    try:
        meta = json.loads((directory / "authority.json").read_text())
        if not isinstance(meta, dict) or meta.get("layout") != _LAYOUT:
            raise PlatformError(f"unknown emulated SNP layout in {directory}")
        product = SnpProduct(meta["product"])
        loaded: dict[str, object] = {}
        for name in _FILES:
            raw = (directory / f"{name}.key.pem").read_bytes()
            loaded[f"{name}_key"] = serialization.load_pem_private_key(raw, password=None)
            loaded[name] = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
        keys = EmulatedSnpKeys(
            product=product,
            chip_id=bytes.fromhex(meta["chip_id"]),
            tcb=TcbVersion(int(meta["tcb"], 16), product.turin_tcb_layout),
            **loaded,  # type: ignore[arg-type]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlatformError(f"cannot load emulated SNP platform from {directory}: {exc}") from None
    if not isinstance(keys.ark_key, rsa.RSAPrivateKey) or not isinstance(
        keys.vcek_key, ec.EllipticCurvePrivateKey
    ):
        raise PlatformError(f"{directory}: unexpected key types")
    if keys.ark.subject != _name(EMULATED_ARK_CN):
        raise PlatformError(f"{directory} does not hold a teeflow emulated ARK")
    return keys


def _sized(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise PlatformError(f"{what} must be {size} bytes, got {len(value)}")
    return bytes(value)


class EmulatedSnp:
    """Emulated SEV-SNP Attester (see the module docstring).

    Args:
        keys: the platform keys (from :meth:`generate` / :meth:`load_or_create`).
        measurement: the guest's 48-byte launch MEASUREMENT (default zeros).
        guest_policy: the guest POLICY u64 (default ``0x30000``: SMT allowed, no debug).
        vmpl: VMPL of the requesting guest (0..3). guest_svn: GUEST_SVN (u32).
        host_data (32 bytes), family_id / image_id (16), id_key_digest / author_key_digest
            (48): launch identity fields (default zeros).
        directory: where the keys are persisted (None: in memory).
        rng: source of REPORT_ID bytes.

    Raises:
        PlatformError: a field of the wrong size or range, or an invalid guest policy.
    """

    def __init__(
        self,
        keys: EmulatedSnpKeys,
        *,
        measurement: bytes = bytes(48),
        guest_policy: int = _DEFAULT_GUEST_POLICY,
        vmpl: int = 0,
        guest_svn: int = 0,
        host_data: bytes = bytes(32),
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        id_key_digest: bytes = bytes(48),
        author_key_digest: bytes = bytes(48),
        directory: Path | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.keys = keys
        self.measurement = _sized(measurement, 48, "measurement")
        try:
            self.guest_policy = GuestPolicy.parse(guest_policy)
        except ParseError as exc:
            raise PlatformError(f"invalid guest policy: {exc}") from None
        if not (0 <= vmpl <= 3 and 0 <= guest_svn <= 0xFFFFFFFF):
            raise PlatformError("vmpl must be 0..3 and guest_svn a u32")
        self.vmpl = vmpl
        self.guest_svn = guest_svn
        self.host_data = _sized(host_data, 32, "host_data")
        self.family_id = _sized(family_id, 16, "family_id")
        self.image_id = _sized(image_id, 16, "image_id")
        self.id_key_digest = _sized(id_key_digest, 48, "id_key_digest")
        self.author_key_digest = _sized(author_key_digest, 48, "author_key_digest")
        self.directory = directory
        self._rng = rng

    @classmethod
    def generate(
        cls,
        *,
        product: SnpProduct = SnpProduct.MILAN,
        tcb: TcbVersion | None = None,
        now: datetime | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        **guest: object,
    ) -> EmulatedSnp:
        """A fresh in-memory platform (certificates valid from ``now`` - 1 day, 25 years).

        ``guest`` takes the keyword arguments of the constructor.

        Raises:
            PlatformError: ``tcb`` not in ``product``'s layout or invalid guest fields.
        """
        keys = _generate(product, tcb or EMULATED_TCB[product], resolve_now(now), rng)
        return cls(keys, rng=rng, **guest)  # type: ignore[arg-type]

    @classmethod
    def load_or_create(
        cls,
        home: Path | None = None,
        *,
        product: SnpProduct = SnpProduct.MILAN,
        now: datetime | None = None,
        **guest: object,
    ) -> EmulatedSnp:
        """Load ``<home>/emulation/snp`` or create it once (0700 directory, 0600 files).

        Args:
            home: teeflow home (default ``$TEEFLOW_HOME``, else ``~/.teeflow``).
            product: product of a newly created platform (an existing one keeps its own).
            now: creation time of new certificates.
            guest: constructor keyword arguments.

        Raises:
            PlatformError: the directory cannot be created or read, or holds something else.
        """
        directory = teeflow_home(home) / "emulation" / "snp"
        if not (directory / "authority.json").is_file():
            t = resolve_now(now)
            keys = _generate(product, EMULATED_TCB[product], t, os.urandom)
            create_dir_atomically(directory, lambda tmp: _save(keys, tmp, t))
        return cls(_load(directory), directory=directory, **guest)  # type: ignore[arg-type]

    # -- identity -------------------------------------------------------------------

    @property
    def product(self) -> SnpProduct:
        """The emulated product line."""
        return self.keys.product

    @property
    def ark_certificate(self) -> x509.Certificate:
        """The emulated ARK (self-signed)."""
        return self.keys.ark

    @property
    def ask_certificate(self) -> x509.Certificate:
        """The emulated ASK (issued by the ARK)."""
        return self.keys.ask

    @property
    def vcek_certificate(self) -> x509.Certificate:
        """The emulated VCEK (issued by the ASK; AMD extensions)."""
        return self.keys.vcek

    def trust_anchor(self) -> TrustAnchor:
        """``TrustAnchor(ark, name=..., emulated=True)``."""
        fp = self.keys.ark.fingerprint(hashes.SHA256()).hex()
        return TrustAnchor(self.keys.ark, name=f"{EMULATED_ARK_CN} ({fp[:16]})", emulated=True)

    def cert_chain_pem(self) -> bytes:
        """PEM of VCEK, ASK, ARK (the layout of AMD's ``vcek.pem`` bundles)."""
        k = self.keys
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (k.vcek, k.ask, k.ark))

    def crl(
        self, now: datetime, *, revoked: Sequence[int] = (), lifetime: timedelta = timedelta(7)
    ) -> x509.CertificateRevocationList:
        """A KDS-style CRL signed by the emulated ARK (RSASSA-PSS SHA-384), valid from
        ``now`` - 1 hour for ``lifetime``, revoking the given serial numbers."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.keys.ark.subject)
            .last_update(now - timedelta(hours=1))
            .next_update(now + lifetime)
        )
        for serial in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - timedelta(hours=1))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.keys.ark_key, hashes.SHA384(), rsa_padding=_PSS)

    # -- evidence -------------------------------------------------------------------

    def build_report(self, report_data: bytes) -> AttestationReport:
        """The unsigned version 3 report for ``report_data`` (<= 64 bytes, zero-padded).

        Raises:
            PlatformError: ``report_data`` is not bytes or longer than 64 bytes.
        """
        rd = pad_report_data(report_data)
        k = self.keys
        family, model, stepping = EMULATED_CPUID[k.product]
        return AttestationReport(
            version=3, guest_svn=self.guest_svn, policy=self.guest_policy,
            family_id=self.family_id, image_id=self.image_id, vmpl=self.vmpl,
            signature_algo=SIGNATURE_ALGO_ECDSA_P384_SHA384, current_tcb=k.tcb,
            platform_info=PlatformInfo(0x1), signer_info=0, report_data=rd,
            measurement=self.measurement, host_data=self.host_data,
            id_key_digest=self.id_key_digest, author_key_digest=self.author_key_digest,
            report_id=self._rng(32), report_id_ma=b"\xff" * 32, reported_tcb=k.tcb,
            cpuid_family=family, cpuid_model=model, cpuid_stepping=stepping,
            chip_id=k.chip_id, committed_tcb=k.tcb, current_version=_FIRMWARE,
            committed_version=_FIRMWARE, launch_tcb=k.tcb, launch_mit_vector=None,
            current_mit_vector=None, signature=bytes(0x200),
        )  # fmt: skip

    def sign(self, report: AttestationReport) -> bytes:
        """Sign any report structure with the VCEK and return its 1184 bytes (tests use this
        to build reports whose fields disagree with the VCEK)."""
        unsigned = replace(report, signature=bytes(0x200))
        der = self.keys.vcek_key.sign(unsigned.signed_bytes, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(0x200 - 144)
        return replace(unsigned, signature=sig).to_bytes()

    #: Attester protocol (teeflow.platform.base.Attester): the RCAR ``tee`` name.
    tee = "emulated-snp"
    #: Attester protocol: the attester kind.
    kind = "emulated"

    def cert_table(self) -> bytes:
        """The SEV-SNP certificate table (GHCB layout, as configfs-tsm ``auxblob``) holding
        the emulated VCEK, ASK and ARK (DER)."""
        k = self.keys
        der = serialization.Encoding.DER
        return build_cert_table(
            [("VCEK", k.vcek.public_bytes(der)), ("ASK", k.ask.public_bytes(der)),
             ("ARK", k.ark.public_bytes(der))]
        )  # fmt: skip

    def evidence(self, report_data: bytes) -> Evidence:
        """Attester protocol: :meth:`report` as :class:`Evidence` (``emulated-snp``) with
        :meth:`cert_table` as ``certificates``.

        Raises:
            PlatformError: as :meth:`report`.
        """
        return Evidence(
            self.tee, self.report(report_data), self.kind, certificates=self.cert_table()
        )

    def report(self, report_data: bytes) -> bytes:
        """A signed version 3 ATTESTATION_REPORT (1184 bytes) binding ``report_data``.

        Raises:
            PlatformError: as :meth:`build_report`.
        """
        return self.sign(self.build_report(report_data))


def emulated_snp_anchor(home: Path | None = None, *, now: datetime | None = None) -> TrustAnchor:
    """The emulated ARK of ``<home>/emulation/snp`` as a trust anchor (created at first use,
    as :meth:`EmulatedSnp.load_or_create`): what a verifier (the KBS) trusts for
    ``emulated-snp`` evidence, without holding an attester.

    Raises:
        PlatformError: as :meth:`EmulatedSnp.load_or_create`.
    """
    return EmulatedSnp.load_or_create(home, now=now).trust_anchor()
