"""The emulation authority: a local PKI that stands in for Intel's SGX PKI.

Everything here is *emulated*: the root is generated on this machine, is never an Intel
root, and evidence chaining to it must never be accepted as hardware evidence (the default
appraisal policy denies it). The shapes follow Intel's, so the same verifier code runs:

* ``teeflow EMULATED SGX Root CA — not hardware`` (self-signed, P-256, ``O=teeflow
  emulation``) → ``... PCK Platform CA`` → ``... PCK Certificate`` (leaf, with a real-format
  Intel SGX extension, OID 1.2.840.113741.1.13.1: PPID, TCB components 1..16, PCESVN,
  CPUSVN, PCE-ID, FMSPC, SGX Type, PlatformInstanceID, Configuration — Intel "SGX PCK
  Certificate and CRL Profile Specification" §1.3.5);
* ``... TCB Signing`` (child of the root) signs the emulated TCB Info and QE Identity;
* the attestation key (P-256) signs quotes; the PCK leaf key signs the QE report;
* the workload signer key defines MRSIGNER = SHA-256(raw public key ``x||y``, 64 bytes).

Storage (``load_or_create``): ``$TEEFLOW_HOME/emulation/`` (default ``~/.teeflow``), directory
mode 0700, every file 0600, created once in a temporary sibling directory and renamed into
place (atomic), then reused. The collateral lives in ``emulation/collateral/`` and is
regenerated (keys kept) once it has expired at the ``now`` passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import base, namedtype, univ

from teeflow import _fs
from teeflow.errors import PlatformError
from teeflow.hazmat.ecdsa import der_to_raw_signature, p256_public_key_to_raw

__all__ = [
    "EMULATED_FMSPC",
    "EMULATED_PCESVN",
    "EMULATED_PCE_ID",
    "EMULATED_QE_ISVPRODID",
    "EMULATED_QE_ISVSVN",
    "EMULATED_QE_MRENCLAVE",
    "EMULATED_QE_MRSIGNER",
    "EMULATED_TCB_COMPONENTS",
    "ROOT_CN",
    "ROOT_O",
    "SGX_EXTENSION_OID",
    "AuthorityKeys",
    "atomic_write",
    "create_dir_atomically",
    "encode_sgx_extension",
    "generate_keys",
    "is_emulation_root",
    "load_keys",
    "resolve_now",
    "save_keys",
    "sign_p256_raw",
    "signer_mrsigner",
    "teeflow_home",
]

#: Subject CN of every emulation root (exactly this string).
ROOT_CN = "teeflow EMULATED SGX Root CA — not hardware"
ROOT_O = "teeflow emulation"
PCK_CA_CN = "teeflow EMULATED SGX PCK Platform CA"
PCK_CN = "teeflow EMULATED SGX PCK Certificate"
TCB_SIGNING_CN = "teeflow EMULATED SGX TCB Signing"

#: Intel SGX PCK certificate extension (PCK Cert and CRL Profile Spec §1.3.5).
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"

#: Emulated platform identity and TCB (fixed; the TCB Info has one UpToDate level for it).
EMULATED_FMSPC = bytes.fromhex("00E1A7ED0000")
EMULATED_PCE_ID = bytes.fromhex("0000")
EMULATED_TCB_COMPONENTS: tuple[int, ...] = (3, 3, 2, 2, 4, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
EMULATED_PCESVN = 13
EMULATED_SGX_TYPE = 0  # Standard
#: Emulated Quoting Enclave identity (its report is signed by the PCK leaf key).
EMULATED_QE_MRENCLAVE = hashlib.sha256(b"teeflow emulated quoting enclave v1").digest()
EMULATED_QE_MRSIGNER = hashlib.sha256(b"teeflow emulated quoting enclave signer v1").digest()
EMULATED_QE_ISVPRODID = 1
EMULATED_QE_ISVSVN = 8

#: Certificate lifetime (from generation time, back-dated one day).
CERT_LIFETIME = timedelta(days=20 * 365)
_BACKDATE = timedelta(days=1)
_LAYOUT_VERSION = 1

_KEY_NAMES = ("root_ca", "pck_ca", "pck", "tcb_signing", "attestation", "signer")
_CERT_NAMES = ("root_ca", "pck_ca", "pck", "tcb_signing")


def teeflow_home(home: Path | None = None) -> Path:
    """``home``, else ``$TEEFLOW_HOME``, else ``~/.teeflow``."""
    if home is not None:
        return Path(home)
    env = os.environ.get("TEEFLOW_HOME")
    return Path(env) if env else Path.home() / ".teeflow"


def resolve_now(now: datetime | None) -> datetime:
    """``now`` in UTC, or the wall clock when None (emulators only; verifiers take ``now``).

    Raises:
        PlatformError: ``now`` is naive.
    """
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise PlatformError("'now' must be a timezone-aware datetime")
    return now.astimezone(UTC)


def sign_p256_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 SHA-256 signature of ``data`` as 64 raw bytes ``r || s`` (the DCAP quote
    and PCS document signature format)."""
    return der_to_raw_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))


def signer_mrsigner(key: ec.EllipticCurvePublicKey) -> bytes:
    """MRSIGNER of the emulated platform: SHA-256 of the signer's raw P-256 key ``x||y``.

    (Real SGX hashes the RSA-3072 modulus; the emulation uses a P-256 signer key and hashes
    its 64-byte uncompressed point without the 0x04 prefix.)
    """
    return hashlib.sha256(p256_public_key_to_raw(key)).digest()


# -- Intel SGX extension (pyasn1) ------------------------------------------------------


class _Entry(univ.Sequence):
    """``SEQUENCE { sgxExtensionId OBJECT IDENTIFIER, sgxExtensionValue ANY }``."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("id", univ.ObjectIdentifier()),
        namedtype.NamedType("value", univ.Any()),
    )


def _entry(oid: str, value: base.Asn1Type | bytes) -> _Entry:
    e = _Entry()
    e["id"] = univ.ObjectIdentifier(oid)
    encoded = value if isinstance(value, bytes) else der_encoder.encode(value)
    e["value"] = univ.Any(encoded)
    return e


def _sequence_of(entries: list[_Entry]) -> bytes:
    seq = univ.SequenceOf(componentType=_Entry())
    for i, e in enumerate(entries):
        seq[i] = e
    return bytes(der_encoder.encode(seq))


def encode_sgx_extension(
    *,
    ppid: bytes,
    tcb_components: tuple[int, ...],
    pcesvn: int,
    pce_id: bytes,
    fmspc: bytes,
    sgx_type: int = EMULATED_SGX_TYPE,
    platform_instance_id: bytes | None = None,
) -> bytes:
    """DER of the Intel SGX extension value (``SGXExtensions``, a SEQUENCE OF entries).

    Entries (OID suffix under 1.2.840.113741.1.13.1): ``.1`` PPID OCTET STRING(16); ``.2``
    TCB = SEQUENCE OF {``.2.1``..``.2.16`` INTEGER component SVNs, ``.2.17`` INTEGER PCESVN,
    ``.2.18`` OCTET STRING(16) CPUSVN}; ``.3`` PCE-ID OCTET STRING(2); ``.4`` FMSPC OCTET
    STRING(6); ``.5`` SGX Type ENUMERATED; for Platform-CA-issued certificates ``.6``
    PlatformInstanceID OCTET STRING(16) and ``.7`` Configuration SEQUENCE OF {``.7.1``
    dynamicPlatform, ``.7.2`` cachedKeys, ``.7.3`` SMTEnabled BOOLEAN}.

    Raises:
        PlatformError: a field has the wrong length or an SVN is out of range.
    """
    if len(ppid) != 16 or len(pce_id) != 2 or len(fmspc) != 6 or len(tcb_components) != 16:
        raise PlatformError("SGX extension: PPID 16, PCE-ID 2, FMSPC 6 bytes, 16 TCB components")
    if not all(0 <= c <= 255 for c in tcb_components) or not 0 <= pcesvn <= 0xFFFF:
        raise PlatformError("SGX extension: SVN out of range")
    base = SGX_EXTENSION_OID
    tcb = [_entry(f"{base}.2.{i + 1}", univ.Integer(c)) for i, c in enumerate(tcb_components)]
    tcb.append(_entry(f"{base}.2.17", univ.Integer(pcesvn)))
    tcb.append(_entry(f"{base}.2.18", univ.OctetString(bytes(tcb_components))))
    entries = [
        _entry(f"{base}.1", univ.OctetString(ppid)),
        _entry(f"{base}.2", _sequence_of(tcb)),
        _entry(f"{base}.3", univ.OctetString(pce_id)),
        _entry(f"{base}.4", univ.OctetString(fmspc)),
        _entry(f"{base}.5", univ.Enumerated(sgx_type)),
    ]
    if platform_instance_id is not None:
        config = [
            _entry(f"{base}.7.1", univ.Boolean(False)),
            _entry(f"{base}.7.2", univ.Boolean(False)),
            _entry(f"{base}.7.3", univ.Boolean(False)),
        ]
        entries.append(_entry(f"{base}.6", univ.OctetString(platform_instance_id)))
        entries.append(_entry(f"{base}.7", _sequence_of(config)))
    return _sequence_of(entries)


# -- keys and certificates -------------------------------------------------------------


@dataclass(frozen=True)
class AuthorityKeys:
    """Private keys and certificates of one emulation authority."""

    root_ca_key: ec.EllipticCurvePrivateKey
    root_ca: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_signing_key: ec.EllipticCurvePrivateKey
    tcb_signing: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey
    signer_key: ec.EllipticCurvePrivateKey


def _name(cn: str, authority_id: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ROOT_O),
    ]
    if authority_id is not None:  # tells two sites' emulation roots apart (same CN)
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"authority {authority_id}")
        )
    return x509.Name(attributes)


def is_emulation_root(cert: x509.Certificate) -> bool:
    """Whether ``cert``'s subject is a teeflow emulation root's: CN :data:`ROOT_CN` and O
    :data:`ROOT_O` (and, for authorities made since issue 14, an ``OU`` of ``authority
    <16 hex>`` that tells two sites' roots apart). Says nothing about trust."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return [a.value for a in cns] == [ROOT_CN] and [a.value for a in orgs] == [ROOT_O]


def _serial(rng: Callable[[int], bytes]) -> int:
    return (int.from_bytes(rng(16), "big") >> 1) | 1


def _cert(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    ca: bool,
    path_length: int | None,
    rng: Callable[[int], bytes],
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    pub = key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(_serial(rng))
        .not_valid_before(not_before)
        .not_valid_after(not_before + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for ext in extra or []:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def generate_keys(now: datetime, rng: Callable[[int], bytes] = os.urandom) -> AuthorityKeys:
    """Generate a fresh authority: six P-256 keys and four certificates valid from ``now``
    (minus one day) for 20 years. ``rng`` supplies serial numbers, PPID and instance id
    (keys always come from the OS generator via ``cryptography``)."""
    nb = now.astimezone(UTC).replace(microsecond=0) - _BACKDATE
    gen = [ec.generate_private_key(ec.SECP256R1()) for _ in _KEY_NAMES]
    root_key, pck_ca_key, pck_key, tcb_key, att_key, signer_key = gen
    root_name = _name(ROOT_CN, rng(8).hex())
    root = _cert(
        subject=root_name,
        key=root_key,
        issuer=root_name,
        issuer_key=root_key,
        not_before=nb,
        ca=True,
        path_length=1,
        rng=rng,
    )
    pck_ca = _cert(
        subject=_name(PCK_CA_CN),
        key=pck_ca_key,
        issuer=root_name,
        issuer_key=root_key,
        not_before=nb,
        ca=True,
        path_length=0,
        rng=rng,
    )
    sgx_ext = encode_sgx_extension(
        ppid=rng(16),
        tcb_components=EMULATED_TCB_COMPONENTS,
        pcesvn=EMULATED_PCESVN,
        pce_id=EMULATED_PCE_ID,
        fmspc=EMULATED_FMSPC,
        platform_instance_id=rng(16),
    )
    pck = _cert(
        subject=_name(PCK_CN),
        key=pck_key,
        issuer=pck_ca.subject,
        issuer_key=pck_ca_key,
        not_before=nb,
        ca=False,
        path_length=None,
        rng=rng,
        extra=[x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), sgx_ext)],
    )
    tcb = _cert(
        subject=_name(TCB_SIGNING_CN),
        key=tcb_key,
        issuer=root_name,
        issuer_key=root_key,
        not_before=nb,
        ca=False,
        path_length=None,
        rng=rng,
    )
    return AuthorityKeys(
        root_key, root, pck_ca_key, pck_ca, pck_key, pck, tcb_key, tcb, att_key, signer_key
    )


# -- storage ---------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (:func:`teeflow._fs.atomic_write`: temp file in
    the same directory, fsync, ``os.replace``) with permissions ``mode``.

    Raises:
        PlatformError: on I/O errors.
    """
    try:
        _fs.atomic_write(path, data, mode=mode)
    except OSError as exc:
        raise PlatformError(f"cannot write {path}: {exc.strerror}") from None


def save_keys(keys: AuthorityKeys, directory: Path, created: datetime) -> None:
    """Write keys (PKCS#8 PEM) and certificates (PEM) into ``directory`` (0600 files)."""
    for name in _KEY_NAMES:
        key: ec.EllipticCurvePrivateKey = getattr(keys, f"{name}_key")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(directory / f"{name}.key.pem", pem)
    for name in _CERT_NAMES:
        cert: x509.Certificate = getattr(keys, name)
        atomic_write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    meta = {
        "layout": _LAYOUT_VERSION,
        "created": created.astimezone(UTC).isoformat(),
        "warning": "EMULATED SGX authority - not hardware. Never trust for real evidence.",
    }
    atomic_write(directory / "authority.json", json.dumps(meta, indent=2).encode())


def load_keys(directory: Path) -> AuthorityKeys:
    """Load an authority written by :func:`save_keys`.

    Raises:
        PlatformError: a file is missing or malformed, or the directory layout is unknown.
    """
    try:
        meta = json.loads((directory / "authority.json").read_text())
        if not isinstance(meta, dict) or meta.get("layout") != _LAYOUT_VERSION:
            raise PlatformError(f"unknown emulation authority layout in {directory}")
        loaded: dict[str, object] = {}
        for name in _KEY_NAMES:
            key = serialization.load_pem_private_key(
                (directory / f"{name}.key.pem").read_bytes(), password=None
            )
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PlatformError(f"emulation key {name} is not an EC key")
            loaded[f"{name}_key"] = key
        for name in _CERT_NAMES:
            loaded[name] = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise PlatformError(f"cannot load emulation authority from {directory}: {exc}") from None
    keys = AuthorityKeys(**loaded)  # type: ignore[arg-type]
    if not is_emulation_root(keys.root_ca):
        raise PlatformError(f"{directory} does not hold a teeflow emulation root")
    return keys


def create_dir_atomically(target: Path, populate: Callable[[Path], None]) -> bool:
    """Create ``target`` (mode 0700) by populating a temporary sibling and renaming it.

    Returns True if this call created it, False if another process won the race (the
    caller then loads the existing directory). Raises ``PlatformError`` on I/O errors.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise PlatformError(f"cannot create {target}: {exc.strerror}") from None
    try:
        os.chmod(tmp, 0o700)
        populate(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / "authority.json").is_file():
                return False
            raise
        return True
    except OSError as exc:
        raise PlatformError(f"cannot create {target}: {exc.strerror}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
