"""The KBS as a workload: its measurement, its evidence, and the parties' check of it.

DESIGN trust flow step 2: every party verifies the KBS's evidence before uploading anything.

**Measurement.** The KBS's code identity is the measurement (:func:`teeflow.workload.measurement`)
of the workload manifest :func:`kbs_manifest`:

* ``name: teeflow-kbs``, ``version``: ``teeflow.__version__``,
  ``entrypoint: [teeflow, kbs, serve]``, no arguments, no environment;
* ``trusted_files``: every regular file of the *installed* ``teeflow`` package directory
  whose name ends in ``.py`` (all code), ``.pem`` or ``.der`` (the packaged trust anchors,
  which decide what the KBS trusts), paths relative to the package directory, ``__pycache__``
  and symlinks skipped.

Runtime configuration (database URL, listen address, state directory) is not part of it: it
decides where the KBS stores data, not what code handles keys. On the emulated platform this
is the MRENCLAVE of the KBS's quotes and the measurement its sealing key is bound to, so an
upgraded teeflow is a *different* KBS (new keys unless migrated). ``teeflow kbs
measurement`` prints it; parties put it into their reference values (``workloads.kbs`` of
the agreement, or a reference-values file).

**Evidence** (``GET /v1/kbs/evidence?nonce=B64``, :meth:`KbsEvidenceSource.evidence`)::

    {"format": "teeflow-kbs-evidence/2",
     "tee": "sgx" | "tdx" | "snp" | "emulated-sgx" | "emulated-tdx" | "emulated-snp",
     "attester": "gramine" | "configfs-tsm" | "emulated",
     "primary": "<standard base64: SGX/TDX DCAP quote or SEV-SNP ATTESTATION_REPORT>",
     "certificates": "<standard base64 SNP certificate table (auxblob)>" | null,
     "kbs": <KbsKeys.public_bundle()>,
     "agreement_digest": "<hex of the active agreement digest>" | null}

i.e. the KBS's :class:`~teeflow.attestation.evidence.Evidence` on the wire, with the report
data (REPORT_DATA of SGX/TDX, REPORT_DATA of the SNP report: 64 bytes each) =
:func:`teeflow.kbs.service.identity.kbs_report_data` (bundle, agreement digest, nonce) on
every TEE.

**Party check** (:func:`verify_kbs_evidence`): verify the evidence through the verifier
registry (:func:`teeflow.attestation.registry.verify_evidence`: the pipeline of its ``tee``;
evidence of one TEE declared as another, or emulated evidence declared as hardware, is
refused; the emulation roots are trusted only when ``allow_emulated``) → appraise it against
the KBS reference values *for that TEE* (:data:`KbsReferenceValues`: the agreement's
``workloads.kbs`` — SGX MRENCLAVE/MRSIGNER/..., TDX MRTD/RTMRs/..., SNP MEASUREMENT/... —, a
reference-values file, or ``teeflow kbs verify --expect-measurement``) with REPORT_DATA pinned
to ``kbs_report_data(bundle, agreement_digest, nonce)``; reference values without an entry for
the evidence's TEE refuse it. The bundle's ``tls_spki_sha256`` must be the SPKI hash of its
own TLS certificate and of the certificate the party's TLS connection saw.

**Reference values per platform** (:func:`kbs_reference_values`): on an emulated platform the
KBS's code identity is :func:`kbs_measurement` — as MRENCLAVE on ``emulated-sgx``, as MRTD /
MEASUREMENT (the measurement followed by 16 zero bytes,
:func:`teeflow.platform.selection.emulated_identity`) on ``emulated-tdx`` / ``emulated-snp``.
On hardware the platform measures the image (Gramine's MRENCLAVE from ``gramine-sgx-sign``,
the TD's MRTD/RTMRs, the guest's launch MEASUREMENT): those come from the image build
(``docs/deploy.md``), not from this package.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

import teeflow
from teeflow.attestation import sgx, snp, tdx
from teeflow.attestation.appraisal import AttestationResult
from teeflow.attestation.evidence import TEE_NAMES, Evidence
from teeflow.attestation.registry import verify_evidence
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import KbsError, ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.canonical import format_validation_error
from teeflow.kbs.policy.kbs_reference import (
    PLATFORM_KEYS,
    AnyKbsReferenceValues,
    kbs_reference_spec,
)
from teeflow.kbs.protocol import MAX_QUOTE_BYTES
from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider
from teeflow.kbs.service.identity import PUBLIC_FORMAT, KbsKeys, kbs_report_data
from teeflow.workload.manifest import WorkloadManifest, measurement

if TYPE_CHECKING:
    from teeflow.platform.base import Attester as PlatformAttester

__all__ = [
    "EVIDENCE_FORMAT",
    "KBS_ENTRYPOINT",
    "KBS_WORKLOAD_NAME",
    "MAX_EVIDENCE_BYTES",
    "SELF_ATTESTATION_TEES",
    "KbsEvidence",
    "KbsEvidenceSource",
    "KbsPublicBundle",
    "VerifiedKbs",
    "decode_nonce",
    "kbs_manifest",
    "kbs_measurement",
    "kbs_reference_values",
    "own_identity",
    "spki_sha256",
    "verify_kbs_evidence",
]

EVIDENCE_FORMAT = "teeflow-kbs-evidence/2"
#: RCAR tee names of KBS evidence that parties verify (:func:`verify_kbs_evidence`): all.
SELF_ATTESTATION_TEES = TEE_NAMES
KBS_WORKLOAD_NAME = "teeflow-kbs"
KBS_ENTRYPOINT = ("teeflow", "kbs", "serve")
#: Largest evidence document a party accepts (bytes).
MAX_EVIDENCE_BYTES = 256 * 1024
_MEASURED_SUFFIXES = (".py", ".pem", ".der")
_MAX_NONCE = 1024
_LOG = logging.getLogger(__name__)
#: Largest SNP certificate table in KBS evidence (bytes).
_MAX_CERT_TABLE = 64 * 1024
#: ``format`` of the evidence a KBS in recovery mode serves (teeflow.kbs.service.recovery_mode).
_RECOVERY_FORMAT = "teeflow-kbs-recovery-evidence/1"


# -- measurement --------------------------------------------------------------------------


def kbs_manifest(package_dir: Path | None = None) -> WorkloadManifest:
    """The KBS workload manifest (module docstring) of the teeflow package at
    ``package_dir`` (default: the installed package).

    Raises:
        WorkloadError: a file cannot be read.
    """
    root = Path(package_dir) if package_dir is not None else Path(teeflow.__file__).parent
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix in _MEASURED_SUFFIXES
        and "__pycache__" not in p.parts
        and p.is_file()
        and not p.is_symlink()
    )
    return WorkloadManifest.build(
        root,
        entrypoint=list(KBS_ENTRYPOINT),
        files=files,
        name=KBS_WORKLOAD_NAME,
        version=teeflow.__version__,
    )


@functools.lru_cache(maxsize=4)
def kbs_measurement(package_dir: Path | None = None) -> bytes:
    """SHA-256 measurement (32 bytes) of :func:`kbs_manifest`; computed once per process.

    Raises:
        WorkloadError: as :func:`kbs_manifest`.
    """
    return measurement(kbs_manifest(package_dir))


def kbs_reference_values(platform: str, package_dir: Path | None = None) -> dict[str, Any]:
    """The ``workloads.kbs`` entry accepting this package's KBS on an emulated ``platform``
    (``emulated-sgx``: ``{"sgx": {"mrenclave": [hex]}}``, ``emulated-tdx``:
    ``{"tdx": {"mrtd": [hex48]}}``, ``emulated-snp``: ``{"snp": {"measurement": [hex48],
    "max_vmpl": 0}}``; module docstring).

    Raises:
        PlatformError: a hardware platform (its reference values come from the image build:
            docs/deploy.md) or an unknown name.
        WorkloadError: as :func:`kbs_manifest`.
    """
    from teeflow.errors import PlatformError
    from teeflow.platform.selection import (
        EMULATED_PLATFORMS,
        check_platform_name,
        emulated_workload_spec,
    )

    check_platform_name(platform)
    if platform not in EMULATED_PLATFORMS:
        raise PlatformError(
            f"the reference values of a KBS on {platform} come from its image, not from this "
            "package: compute them as docs/deploy.md says (gramine-sgx-sign MRENCLAVE, the "
            "TD's MRTD/RTMRs, the guest's launch MEASUREMENT)"
        )
    return emulated_workload_spec(platform, kbs_measurement(package_dir))


def own_identity(attester: PlatformAttester) -> bytes:
    """The code identity this KBS's platform reports for it — MRENCLAVE (32 bytes), MRTD or
    MEASUREMENT (48 bytes) — read from one piece of its own evidence (report data zero),
    parsed, not verified: the KBS checks the agreement in force names it after a recovery
    (:func:`teeflow.kbs.service.recovery_mode.kbs_named_by`); parties verify.

    Raises:
        PlatformError: the attester failed; ParseError: malformed evidence.
    """
    evidence = attester.evidence(bytes(64))
    body: Any
    if evidence.platform == "sgx":
        body = sgx.parse_quote(evidence.primary).body
        return bytes(body.mr_enclave)
    if evidence.platform == "tdx":
        body = tdx.parse_quote(evidence.primary).body
        return bytes(body.mr_td)
    return bytes(snp.parse_report(evidence.primary).measurement)


# -- evidence (KBS side) --------------------------------------------------------------------


def decode_nonce(text: str) -> bytes:
    """A party nonce from a query parameter: standard or URL-safe base64, padding optional,
    1..1024 bytes.

    Raises:
        ParseError: not base64 or out of bounds.
    """
    if not isinstance(text, str) or not 0 < len(text) <= 2 * _MAX_NONCE:
        raise ParseError("nonce must be base64 of 1..1024 bytes")
    std = text.replace("-", "+").replace("_", "/")
    std += "=" * (-len(std) % 4)
    try:
        raw = base64.b64decode(std, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("nonce is not base64") from None
    if not 0 < len(raw) <= _MAX_NONCE:
        raise ParseError("nonce must be base64 of 1..1024 bytes")
    return raw


class KbsEvidenceSource:
    """Makes the KBS's own evidence (module docstring).

    Args:
        keys: the KBS key set whose public bundle is bound.
        attester: the KBS's :class:`~teeflow.platform.base.Attester` (from
            :func:`teeflow.platform.attester_for`; on an emulated platform its measurement is
            the KBS measurement), any TEE.

    Raises:
        KbsError: an attester of an unknown ``tee``.
    """

    def __init__(self, keys: KbsKeys, attester: PlatformAttester) -> None:
        tee = attester.tee
        if tee not in SELF_ATTESTATION_TEES:
            raise KbsError(f"the KBS cannot attest itself with {str(tee)[:32]} evidence")
        self._keys = keys
        self._attester = attester
        self._tee = tee
        self._bundle = keys.public_bundle()

    @property
    def attester(self) -> PlatformAttester:
        """The attester (``tee``, ``kind``)."""
        return self._attester

    def evidence(self, nonce: bytes, agreement_digest: bytes | None) -> dict[str, Any]:
        """The evidence document for ``nonce`` (1..1024 bytes) and the active agreement.

        Raises:
            KbsError: bad nonce or agreement digest.
            PlatformError: the attester failed.
        """
        report_data = kbs_report_data(self._bundle, agreement_digest, nonce)
        evidence = self._attester.evidence(report_data)
        if evidence.platform != self._tee.removeprefix("emulated-"):
            raise KbsError(f"the KBS attester produced {evidence.tee} evidence, not {self._tee}")
        certificates = evidence.certificates
        return {
            "format": EVIDENCE_FORMAT,
            "tee": evidence.tee,
            "attester": evidence.attester,
            "primary": base64.b64encode(evidence.primary).decode("ascii"),
            "certificates": None
            if certificates is None
            else base64.b64encode(certificates).decode("ascii"),
            "kbs": self._bundle,
            "agreement_digest": None if agreement_digest is None else agreement_digest.hex(),
        }


# -- party side ------------------------------------------------------------------------------


class KbsPublicBundle(BaseModel):
    """:meth:`teeflow.kbs.service.identity.KbsKeys.public_bundle`, validated strictly."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    format: Literal["teeflow-kbs-public/1"]
    federation: str = Field(min_length=1, max_length=63)
    hpke_public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    ca_certificate: str = Field(min_length=1, max_length=16 * 1024)
    ear_public_jwk: dict[str, JsonValue]
    tls_certificate: str = Field(min_length=1, max_length=16 * 1024)
    tls_spki_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    audit_public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")


class KbsEvidence(BaseModel):
    """The evidence document of ``GET /v1/kbs/evidence`` (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    format: Literal["teeflow-kbs-evidence/2"]
    tee: Literal["sgx", "tdx", "snp", "emulated-sgx", "emulated-tdx", "emulated-snp"]
    attester: Literal["gramine", "configfs-tsm", "emulated"]
    primary: str = Field(min_length=1, max_length=(MAX_QUOTE_BYTES + 2) // 3 * 4)
    certificates: str | None = Field(max_length=(_MAX_CERT_TABLE + 2) // 3 * 4)
    kbs: KbsPublicBundle
    agreement_digest: str | None = Field(pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VerifiedKbs:
    """A KBS whose evidence verified.

    Attributes:
        bundle: its public keys (the bundle as served, as a plain dict).
        agreement_digest: the agreement digest its evidence binds (None: no agreement yet).
        measurement: its code identity (hex): MRENCLAVE (SGX, 32 bytes), MRTD (TDX) or
            MEASUREMENT (SNP), 48 bytes.
        tee: the RCAR tee its evidence is (``sgx``, ``tdx``, ``snp``, ``emulated-…``).
        attester: the attester kind the KBS declared (``gramine``, ``configfs-tsm``,
            ``emulated``).
        emulated: evidence chained to an emulation root.
        result: the appraisal result (warnings for emulated evidence).
    """

    bundle: dict[str, Any]
    agreement_digest: bytes | None
    measurement: str
    tee: str
    emulated: bool
    result: AttestationResult
    attester: str = "remote"


def spki_sha256(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's SubjectPublicKeyInfo DER."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _parse_evidence(document: bytes | str | Mapping[str, Any]) -> KbsEvidence:
    try:
        if isinstance(document, Mapping):
            doc: Any = dict(document)
        else:
            raw = document.encode("utf-8") if isinstance(document, str) else bytes(document)
            if len(raw) > MAX_EVIDENCE_BYTES:
                raise ParseError(f"KBS evidence larger than {MAX_EVIDENCE_BYTES} bytes")
            doc = json.loads(raw)
        if isinstance(doc, dict) and doc.get("format") == _RECOVERY_FORMAT:
            raise ParseError(
                "the KBS is in RECOVERY MODE (its state must be restored from the parties' "
                "shares): see 'teeflow kbs recover'"
            )
        return KbsEvidence.model_validate(doc)
    except (ValidationError, ValueError, RecursionError) as exc:
        detail = format_validation_error(exc) if isinstance(exc, ValidationError) else "not JSON"
        raise ParseError(f"KBS evidence is malformed: {detail}") from None


def _bundle_tls_spki(bundle: KbsPublicBundle) -> str:
    try:
        cert = x509.load_pem_x509_certificate(bundle.tls_certificate.encode("ascii"))
        x509.load_pem_x509_certificate(bundle.ca_certificate.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ParseError("KBS public bundle holds a malformed certificate") from None
    return spki_sha256(cert)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"KBS evidence {what} is not base64") from None


_APPRAISERS: Mapping[str, Any] = {"sgx": sgx, "tdx": tdx, "snp": snp}


def verify_kbs_evidence(
    document: bytes | str | Mapping[str, Any],
    *,
    nonce: bytes,
    reference_values: AnyKbsReferenceValues,
    allow_emulated: bool,
    anchors: Sequence[TrustAnchor],
    collateral: CollateralProvider,
    now: datetime,
    observed_tls_spki: Sequence[str] = (),
    expected_agreement_digest: bytes | None = None,
    snp_endorsements: SnpEndorsementProvider | None = None,
) -> VerifiedKbs:
    """Verify the KBS's evidence as a party, on any TEE (module docstring).

    Args:
        document: the evidence JSON (bytes/str) or its parsed mapping.
        nonce: the nonce the party chose for this request (raw bytes).
        reference_values: the KBS reference values (:func:`load_reference_values`; one
            platform's values accept that platform's evidence only).
        allow_emulated: accept evidence chaining to an emulation root (development only).
        anchors: trust anchors (the Intel SGX Root CA for SGX/TDX; AMD's ARKs are always
            trusted for SNP; emulation roots are used only when ``allow_emulated``).
        collateral: Intel collateral for SGX/TDX quotes.
        now: verification time (timezone-aware).
        observed_tls_spki: SPKI hashes (hex) of every TLS certificate the party's connections
            to the KBS saw; each must equal the bundle's ``tls_spki_sha256``.
        expected_agreement_digest: when given, the evidence must bind exactly this agreement.
        snp_endorsements: VCEK/VLEK source (AMD KDS) for SNP evidence without a certificate
            table.

    Raises:
        ParseError: the document is malformed; its primary evidence is of another TEE than
            its ``tee`` (``"TDX evidence expected but this is SNP"``).
        VerificationError: the evidence does not verify; emulated evidence declared as
            hardware or the reverse (``"declared tee tdx but the evidence is
            emulated-tdx"``); the TLS key / agreement binding differs.
        PolicyViolation: emulated evidence while ``allow_emulated`` is false; reference values
            without an entry for the evidence's TEE; the appraisal against them failed
            (every reason, e.g. ``"MRTD ... not in the accepted values"``).
    """
    ev = _parse_evidence(document)
    spec = kbs_reference_spec(reference_values)
    if ev.tee.startswith("emulated-") and not allow_emulated:
        raise PolicyViolation(
            "the KBS runs on an EMULATED TEE and emulation is not allowed",
            ["emulated evidence refused (allow_emulated is false)"],
        )
    primary = _b64(ev.primary, "primary")
    certificates = None if ev.certificates is None else _b64(ev.certificates, "certificates")
    evidence = Evidence(ev.tee, primary, "remote", certificates)
    spki = _bundle_tls_spki(ev.kbs)
    if not hmac.compare_digest(spki, ev.kbs.tls_spki_sha256):
        raise VerificationError("KBS bundle: tls_spki_sha256 does not match its TLS certificate")
    for seen in observed_tls_spki:
        if not hmac.compare_digest(seen, ev.kbs.tls_spki_sha256):
            raise VerificationError(
                "the TLS key the KBS served is not the key its evidence binds (interception?)"
            )
    values: Any = getattr(spec, evidence.platform)
    if values is None:
        names = ", ".join(k.upper() for k in PLATFORM_KEYS if getattr(spec, k) is not None)
        raise PolicyViolation(
            f"KBS evidence rejected: the KBS runs on {ev.tee} but its reference values name "
            f"only {names} KBS measurements",
            [f"no {evidence.platform.upper()} reference values for role kbs"],
        )
    verified = verify_evidence(
        evidence,
        anchors=[a for a in anchors if allow_emulated or not a.emulated],
        collateral=collateral,
        snp_endorsements=snp_endorsements,
        now=now,
    )
    agreement_digest = None if ev.agreement_digest is None else bytes.fromhex(ev.agreement_digest)
    bundle = ev.kbs.model_dump(mode="json")
    if bundle.get("format") != PUBLIC_FORMAT:  # pragma: no cover - Literal guards it
        raise ParseError("KBS public bundle has an unknown format")
    expected_rd = kbs_report_data(bundle, agreement_digest, nonce)
    policy = values.to_policy(allow_emulated=allow_emulated).with_report_data(expected_rd)
    module = _APPRAISERS[evidence.platform]
    result: AttestationResult = module.appraise(verified.evidence, policy, logger=_LOG)
    violations = list(result.violations)
    if result.tee != ev.tee:
        violations.append(f"declared tee {ev.tee} but the evidence is {result.tee}")
    if violations:
        raise PolicyViolation("KBS evidence rejected: " + "; ".join(violations), violations)
    if expected_agreement_digest is not None and agreement_digest != expected_agreement_digest:
        raise VerificationError("the KBS does not enforce the expected agreement")
    return VerifiedKbs(
        bundle=bundle,
        agreement_digest=agreement_digest,
        measurement=verified.measurement,
        tee=result.tee,
        emulated=result.emulated,
        result=result,
        attester=ev.attester,
    )
