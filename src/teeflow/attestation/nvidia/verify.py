"""Verification of NVIDIA Hopper and Blackwell SPDM evidence (parse -> **verify** -> appraise).

Inputs (:class:`GpuEvidence`, built by a loader):

* :func:`load_trustee_evidence` — Trustee's shape: the SPDM transcript as hex text plus the
  device certificate chain as a PEM file;
* :func:`load_nvtrust_evidence` — NVIDIA nvtrust's JSON list of per-GPU objects
  ``{"arch", "certificate": base64(PEM chain), "evidence": base64(SPDM transcript),
  "nonce": hex, "driver_version", "vbios_version", ...}``.

:func:`verify` checks, in order (NVIDIA's local GPU verifier does the same offline checks):

1. the PEM chain decodes strictly (leaf first) and validates at ``now`` up to one of
   ``anchors`` (default: the pinned NVIDIA Device Identity CA) with
   :func:`teeflow.attestation.dcap.chain.verify_chain` (exact-DER anchors, no look-alike
   roots, CA/keyCertSign/path-length checks, validity windows; the NVIDIA certificates are
   valid until 9999-12-31);
2. the leaf (``GH100 A01 GSP FMC LF``, ``GB100 A01 GSP FMC LF``) has an ECDSA P-384 key,
   KeyUsage digitalSignature when present, and a TCG DICE FWID (:func:`leaf_fwid`): Hopper
   leaves carry it in extension 2.23.133.5.4.1 (tcg-dice-TcbInfo, NVIDIA's composite device
   id layout), Blackwell leaves in 2.23.133.5.4.1.1 (a DiceTcbInfo, first FWID), as NVIDIA's
   own verifiers read them (nvtrust ``cc_admin_utils``, NVAT ``dice_tcb_info``);
3. the ECDSA P-384 / SHA-384 signature (raw ``r||s``) over ``request || response without
   signature`` verifies with the leaf key (DSP0274 §10.11, signature of L1/L2);
4. the FWID in the signed opaque data (field 20), when present, equals the leaf's FWID;
5. unsigned metadata next to the transcript (nvtrust's ``nonce``, ``arch``,
   ``driver_version``, ``vbios_version``) agrees with the signed values; an ``expected
   nonce`` given to :func:`verify` equals the request nonce.

Not covered (need NVIDIA online services): comparison of the measurement blocks with
NVIDIA's Reference Integrity Manifests (RIM service, driver and VBIOS RIMs) and revocation of
the device certificates (NVIDIA OCSP). The appraisal step reports the former as a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, tag, univ

from teeflow.attestation.dcap.chain import X509_ERRORS, load_pem_chain, verify_chain
from teeflow.attestation.nvidia.spdm import SpdmTranscript, parse_transcript, parse_transcript_hex
from teeflow.attestation.trust import TrustAnchor
from teeflow.attestation.trust.nvidia import nvidia_device_identity_ca
from teeflow.errors import ParseError, VerificationError
from teeflow.hazmat.ecdsa import raw_to_der_signature

__all__ = [
    "DICE_FWID_EXTENSION_OID",
    "DICE_FWID_EXTENSION_OIDS",
    "MAX_NVTRUST_JSON_BYTES",
    "DiceFwid",
    "GpuEvidence",
    "VerifiedGpuEvidence",
    "architecture_of",
    "leaf_fwid",
    "load_nvtrust_evidence",
    "load_trustee_evidence",
    "parse_fwid_extension_value",
    "verify",
]

#: TCG DICE extension carrying the FWID on Hopper leaves (tcg-dice-TcbInfo, 2.23.133.5.4.1).
DICE_FWID_EXTENSION_OID = "2.23.133.5.4.1"
#: Every extension a GPU leaf may carry its FWID in: Hopper's 2.23.133.5.4.1 and
#: Blackwell's 2.23.133.5.4.1.1 (NVIDIA's "TcbInfo alias").
DICE_FWID_EXTENSION_OIDS = (DICE_FWID_EXTENSION_OID, "2.23.133.5.4.1.1")
#: Largest nvtrust evidence JSON accepted, in bytes.
MAX_NVTRUST_JSON_BYTES = 4 << 20
_MAX_GPUS = 64
_MAX_CHAIN_PEM = 64 * 1024
_HASH_SIZES = {
    "2.16.840.1.101.3.4.2.1": 32,  # SHA-256
    "2.16.840.1.101.3.4.2.2": 48,  # SHA-384
    "2.16.840.1.101.3.4.2.3": 64,  # SHA-512
}
# Leaf subject CN prefix (the GPU chip: GH100, GB100, GB110, GB202 ...) -> architecture name
# as nvtrust and Trustee report it.
_ARCH_BY_CHIP = (
    (re.compile(r"GH1[0-9]{2}"), "HOPPER"),
    (re.compile(r"GB[12][0-9]{2}"), "BLACKWELL"),
)


# --- TCG DICE FWID (ASN.1, decoded with pyasn1) ---------------------------------------------
class _Fwid(univ.Sequence):
    """FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("hashAlg", univ.ObjectIdentifier()),
        namedtype.NamedType("digest", univ.OctetString()),
    )


class _CompositeDeviceId(univ.Sequence):
    """NVIDIA's layout (TCG "Implicit Identity Based Device Attestation" composite device
    identifier): SEQUENCE { version INTEGER, deviceID SubjectPublicKeyInfo, fwid FWID }."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("deviceId", univ.Any()),
        namedtype.NamedType("fwid", _Fwid()),
    )


class _FwidList(univ.SequenceOf):
    componentType = _Fwid()


def _ctx(asn1: Any, n: int, constructed: bool = False) -> Any:
    """``asn1`` with IMPLICIT context tag ``[n]``."""
    fmt = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return asn1.subtype(implicitTag=tag.Tag(tag.tagClassContext, fmt, n))


class _DiceTcbInfo(univ.Sequence):
    """DiceTcbInfo (TCG DICE Attestation Architecture §6.1.1), fields [0]..[10] IMPLICIT."""

    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("vendor", _ctx(char.UTF8String(), 0)),
        namedtype.OptionalNamedType("model", _ctx(char.UTF8String(), 1)),
        namedtype.OptionalNamedType("version", _ctx(char.UTF8String(), 2)),
        namedtype.OptionalNamedType("svn", _ctx(univ.Integer(), 3)),
        namedtype.OptionalNamedType("layer", _ctx(univ.Integer(), 4)),
        namedtype.OptionalNamedType("index", _ctx(univ.Integer(), 5)),
        namedtype.OptionalNamedType("fwids", _ctx(_FwidList(), 6, True)),
        namedtype.OptionalNamedType("flags", _ctx(univ.BitString(), 7)),
        namedtype.OptionalNamedType("vendorInfo", _ctx(univ.OctetString(), 8)),
        namedtype.OptionalNamedType("type", _ctx(univ.OctetString(), 9)),
        namedtype.OptionalNamedType("flagsMask", _ctx(univ.BitString(), 10)),
    )


@dataclass(frozen=True)
class DiceFwid:
    """A TCG DICE FWID: ``hash_algorithm`` (dotted OID) and ``digest`` (its size)."""

    hash_algorithm: str
    digest: bytes


def _fwid_value(fwid: Any) -> DiceFwid:
    oid = str(fwid["hashAlg"])
    digest = bytes(fwid["digest"])
    size = _HASH_SIZES.get(oid)
    if size is None:
        raise ParseError(f"FWID hash algorithm {oid} is not SHA-256/384/512")
    if len(digest) != size:
        raise ParseError(f"FWID digest is {len(digest)} bytes, {oid} needs {size}")
    return DiceFwid(oid, digest)


def parse_fwid_extension_value(der: bytes) -> DiceFwid:
    """Decode the value of extension 2.23.133.5.4.1 and return its (first) FWID.

    Two layouts are accepted: NVIDIA's composite device identifier ``SEQUENCE { INTEGER,
    SubjectPublicKeyInfo, FWID }`` (what H100 certificates carry) and TCG DiceTcbInfo with
    ``fwids [6]`` (the first FWID is returned).

    Raises:
        ParseError: not DER of either layout, trailing bytes, no FWID, unknown hash
            algorithm or a digest of the wrong size.
    """
    if len(der) > 4096:
        raise ParseError("FWID extension too large")
    errors = (PyAsn1Error, ValueError, TypeError, IndexError, KeyError, OverflowError)
    for spec in (_CompositeDeviceId(), _DiceTcbInfo()):
        try:
            value, rest = decoder.decode(der, asn1Spec=spec)
        except errors:
            continue
        if rest:
            raise ParseError("FWID extension has trailing bytes")
        try:
            if isinstance(spec, _CompositeDeviceId):
                return _fwid_value(value["fwid"])
            fwids = value["fwids"]
            if not fwids.isValue or len(fwids) == 0:
                raise ParseError("DiceTcbInfo has no FWID")
            return _fwid_value(fwids[0])
        except errors as exc:
            raise ParseError(f"malformed FWID extension: {type(exc).__name__}") from None
    raise ParseError("malformed FWID extension: neither DiceTcbInfo nor composite device id")


def leaf_fwid(certificate: x509.Certificate) -> DiceFwid | None:
    """The FWID of ``certificate`` (an extension of :data:`DICE_FWID_EXTENSION_OIDS`), or None.

    When a certificate carries both extensions they must name the same FWID.

    Raises:
        ParseError: an extension is present but malformed (see
            :func:`parse_fwid_extension_value`), the two extensions disagree, or the
            certificate's extensions are malformed.
    """
    found: list[DiceFwid] = []
    for oid in DICE_FWID_EXTENSION_OIDS:
        try:
            ext = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
        except x509.ExtensionNotFound:
            continue
        except X509_ERRORS as exc:
            raise ParseError(f"malformed certificate extensions: {type(exc).__name__}") from None
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
            raise ParseError("FWID extension decoded as a known extension")
        found.append(parse_fwid_extension_value(value.value))
    if not found:
        return None
    if any(f != found[0] for f in found[1:]):
        raise ParseError("the certificate's two FWID extensions disagree")
    return found[0]


def architecture_of(certificate: x509.Certificate) -> str | None:
    """GPU architecture from the leaf's subject CN chip prefix (``GH100`` -> ``HOPPER``,
    ``GB100``/``GB110``/``GB202`` -> ``BLACKWELL``).

    Returns None for an unknown chip. The value is signed (part of the NVIDIA-issued chain).
    """
    try:
        cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except X509_ERRORS:
        return None
    if not cns or not isinstance(cns[0].value, str):
        return None
    chip = cns[0].value.split(" ", 1)[0]
    return next((arch for pattern, arch in _ARCH_BY_CHIP if pattern.fullmatch(chip)), None)


# --- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's evidence as received (transcript parsed, chain still PEM).

    Attributes:
        transcript: the parsed SPDM transcript.
        certificate_chain_pem: the device certificate chain, PEM, leaf first.
        declared_arch, declared_nonce, declared_driver_version, declared_vbios_version:
            unsigned metadata sent next to the transcript (nvtrust), or None; :func:`verify`
            checks each against the signed values.
        source: a short label (``"trustee"``, ``"nvtrust[3]"``) for messages.
    """

    transcript: SpdmTranscript
    certificate_chain_pem: bytes
    declared_arch: str | None = None
    declared_nonce: bytes | None = None
    declared_driver_version: str | None = None
    declared_vbios_version: str | None = None
    source: str = "gpu"

    @property
    def evidence_digest(self) -> bytes:
        """SHA-384 of the raw SPDM transcript (48 bytes): what a CPU report binds."""
        return hashlib.sha384(self.transcript.raw).digest()


def load_trustee_evidence(report_hex: str | bytes, certificate_chain_pem: bytes) -> GpuEvidence:
    """Trustee's NVIDIA evidence: hex text of the SPDM transcript + a PEM chain.

    Raises:
        ParseError: see :func:`teeflow.attestation.nvidia.spdm.parse_transcript_hex`; a
            chain larger than 64 KiB.
    """
    if len(certificate_chain_pem) > _MAX_CHAIN_PEM:
        raise ParseError("GPU certificate chain larger than 64 KiB")
    return GpuEvidence(
        parse_transcript_hex(report_hex), bytes(certificate_chain_pem), source="trustee"
    )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _opt_str(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise ParseError(f"{where}: {key} must be a short string")
    return value


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ParseError(f"{what} must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"{what} is not valid base64") from None


def load_nvtrust_evidence(data: str | bytes) -> tuple[GpuEvidence, ...]:
    """NVIDIA nvtrust GPU evidence: a JSON list of ``{arch, certificate, evidence, nonce,
    driver_version?, vbios_version?, ...}`` objects (one per GPU; unknown members ignored).

    Args:
        data: the JSON text (at most :data:`MAX_NVTRUST_JSON_BYTES`, 1..64 entries).

    Raises:
        ParseError: not JSON / duplicate keys / not a non-empty list of objects; a missing
            or non-base64 ``evidence`` or ``certificate``; a ``nonce`` that is not 32-byte
            hex; a transcript that does not parse.
    """
    if len(data) > MAX_NVTRUST_JSON_BYTES:
        raise ParseError("nvtrust evidence JSON too large")
    try:
        doc = json.loads(data, object_pairs_hook=_reject_duplicate_keys)
    except (ValueError, RecursionError):
        raise ParseError("nvtrust evidence is not valid JSON") from None
    if not isinstance(doc, list) or not 1 <= len(doc) <= _MAX_GPUS:
        raise ParseError(f"nvtrust evidence must be a list of 1..{_MAX_GPUS} objects")
    out: list[GpuEvidence] = []
    for i, entry in enumerate(doc):
        where = f"nvtrust[{i}]"
        if not isinstance(entry, dict):
            raise ParseError(f"{where} is not an object")
        chain = _b64(entry.get("certificate"), f"{where}.certificate")
        if len(chain) > _MAX_CHAIN_PEM:
            raise ParseError(f"{where}: certificate chain larger than 64 KiB")
        transcript = parse_transcript(_b64(entry.get("evidence"), f"{where}.evidence"))
        nonce_hex = _opt_str(entry, "nonce", where)
        nonce = None
        if nonce_hex is not None:
            try:
                nonce = bytes.fromhex(nonce_hex)
            except ValueError:
                raise ParseError(f"{where}: nonce is not hex") from None
            if len(nonce) != 32 or nonce.hex() != nonce_hex.lower():
                raise ParseError(f"{where}: nonce must be 64 hex digits")
        out.append(
            GpuEvidence(
                transcript=transcript,
                certificate_chain_pem=chain,
                declared_arch=_opt_str(entry, "arch", where),
                declared_nonce=nonce,
                declared_driver_version=_opt_str(entry, "driver_version", where),
                declared_vbios_version=_opt_str(entry, "vbios_version", where),
                source=where,
            )
        )
    return tuple(out)


# --- verification ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedGpuEvidence:
    """The result of :func:`verify`: a GPU transcript whose signature and chain checked out.

    Attributes:
        evidence: the input (transcript and chain text).
        certificates: the decoded chain, leaf first.
        anchor: the trust anchor the chain terminates in.
        fwid: the leaf's TCG DICE FWID (48-byte SHA-384 digest of the GSP FMC firmware).
        arch: architecture from the leaf subject (``"HOPPER"``, ``"BLACKWELL"``), None if
            unknown.
        driver_version, vbios_version: from the signed opaque data, None if absent.
        verified_at: the ``now`` of the checks (UTC).
    """

    evidence: GpuEvidence
    certificates: tuple[x509.Certificate, ...]
    anchor: TrustAnchor
    fwid: DiceFwid
    arch: str | None
    driver_version: str | None
    vbios_version: str | None
    verified_at: datetime

    @property
    def transcript(self) -> SpdmTranscript:
        """The verified SPDM transcript."""
        return self.evidence.transcript

    @property
    def leaf(self) -> x509.Certificate:
        """The signing (leaf) certificate."""
        return self.certificates[0]

    @property
    def nonce(self) -> bytes:
        """The verifier's nonce as signed in the GET_MEASUREMENTS request (32 bytes)."""
        return self.transcript.request.nonce

    @property
    def measurements_digest(self) -> bytes:
        """SHA-384 of the signed measurement record (48 bytes)."""
        return self.transcript.response.measurements_digest

    @property
    def evidence_digest(self) -> bytes:
        """SHA-384 of the raw transcript (48 bytes)."""
        return self.evidence.evidence_digest

    @property
    def emulated(self) -> bool:
        """True when the chain ends in an emulation anchor (never hardware)."""
        return self.anchor.emulated


def _decode_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        return load_pem_chain(pem)
    except ParseError as exc:
        raise VerificationError(f"malformed GPU certificate chain: {exc}") from None


def _check_leaf(leaf: x509.Certificate) -> ec.EllipticCurvePublicKey:
    try:
        key = leaf.public_key()
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    except X509_ERRORS:
        raise VerificationError("malformed GPU leaf certificate") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError("GPU leaf certificate key is not ECDSA P-384")
    if usage is not None and not usage.digital_signature:
        raise VerificationError("GPU leaf certificate KeyUsage lacks digitalSignature")
    return key


def _check_signature(key: ec.EllipticCurvePublicKey, transcript: SpdmTranscript) -> None:
    try:
        der = raw_to_der_signature(transcript.signature)
        key.verify(der, transcript.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ParseError, ValueError):
        raise VerificationError("SPDM MEASUREMENTS signature is invalid") from None


def _check_declared(
    evidence: GpuEvidence, arch: str | None, opaque_driver: str | None, opaque_vbios: str | None
) -> None:
    request_nonce = evidence.transcript.request.nonce
    declared = evidence.declared_nonce
    if declared is not None and not hmac.compare_digest(declared, request_nonce):
        raise VerificationError(f"{evidence.source}: declared nonce differs from the signed one")
    declared_arch = evidence.declared_arch
    if declared_arch is not None and arch is not None and declared_arch.upper() != arch:
        raise VerificationError(
            f"{evidence.source}: declared arch {evidence.declared_arch!r} but the "
            f"certificate is for {arch}"
        )
    driver = evidence.declared_driver_version
    if driver is not None and opaque_driver is not None and driver.strip() != opaque_driver:
        raise VerificationError(f"{evidence.source}: declared driver version differs")
    vbios = evidence.declared_vbios_version
    if vbios is not None and opaque_vbios is not None and vbios.strip().upper() != opaque_vbios:
        raise VerificationError(f"{evidence.source}: declared VBIOS version differs")


def verify(
    evidence: GpuEvidence,
    *,
    now: datetime,
    anchors: Sequence[TrustAnchor] | None = None,
    nonce: bytes | None = None,
) -> VerifiedGpuEvidence:
    """Verify one GPU's SPDM evidence at ``now`` (checks in the module docstring).

    Args:
        evidence: from :func:`load_trustee_evidence` / :func:`load_nvtrust_evidence`.
        now: timezone-aware verification time.
        anchors: trusted roots (default ``[nvidia_device_identity_ca()]``).
        nonce: the verifier's 32-byte nonce; when given it must equal the request nonce.

    Returns:
        :class:`VerifiedGpuEvidence`.

    Raises:
        VerificationError: malformed/untrusted/expired chain, leaf key not P-384, no or
            malformed FWID extension, bad SPDM signature, opaque FWID different from the
            leaf's, metadata disagreeing with signed values, or a nonce mismatch.
    """
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")
    roots = list(anchors) if anchors is not None else [nvidia_device_identity_ca()]
    if not roots:
        raise VerificationError("no trust anchors given")
    certs = _decode_chain(evidence.certificate_chain_pem)
    anchor = verify_chain(certs, roots, now)
    leaf = certs[0]
    key = _check_leaf(leaf)
    try:
        fwid = leaf_fwid(leaf)
    except ParseError as exc:
        raise VerificationError(f"GPU leaf certificate: {exc}") from None
    if fwid is None:
        raise VerificationError("GPU leaf certificate has no TCG DICE FWID extension")
    transcript = evidence.transcript
    _check_signature(key, transcript)
    opaque = transcript.response.opaque
    opaque_fwid = opaque.fwid if opaque is not None else None
    if opaque_fwid is not None and not hmac.compare_digest(opaque_fwid, fwid.digest):
        raise VerificationError("FWID in the signed opaque data differs from the leaf's")
    arch = architecture_of(leaf)
    driver = opaque.driver_version if opaque is not None else None
    vbios = opaque.vbios_version if opaque is not None else None
    _check_declared(evidence, arch, driver, vbios)
    if nonce is not None and not hmac.compare_digest(bytes(nonce), transcript.request.nonce):
        raise VerificationError("GPU evidence nonce does not match the expected nonce")
    return VerifiedGpuEvidence(
        evidence=evidence,
        certificates=tuple(certs),
        anchor=anchor,
        fwid=fwid,
        arch=arch,
        driver_version=driver,
        vbios_version=vbios,
        verified_at=now,
    )
