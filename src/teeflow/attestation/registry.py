"""The verifier registry: one entry point that verifies :class:`Evidence` of any TEE.

:func:`verify_evidence` dispatches on ``evidence.tee`` to the TEE's own pipeline — it is the
only module that joins them (:mod:`teeflow.attestation.sgx`, ``.tdx`` and ``.snp`` never
import each other) — and refuses evidence claimed as another TEE than it is:

* ``sgx`` / ``emulated-sgx`` — an Intel DCAP quote with ``tee_type`` 0
  (:func:`teeflow.attestation.sgx.parse_quote` → :func:`~teeflow.attestation.sgx.verify`);
* ``tdx`` / ``emulated-tdx`` — a DCAP quote v4/v5 with ``tee_type`` 0x81
  (:func:`teeflow.attestation.tdx.parse_quote` → :func:`~teeflow.attestation.tdx.verify`);
* ``snp`` / ``emulated-snp`` — a 1184-byte ATTESTATION_REPORT
  (:func:`teeflow.attestation.snp.parse_report` → :func:`~teeflow.attestation.snp.verify`),
  endorsed by the evidence's certificate table (:mod:`teeflow.attestation.snp.cert_table`),
  else by ``snp_endorsements`` (a fixed set or a source such as AMD KDS). SNP anchors: AMD's
  pinned ARKs (Milan, Genoa, Turin) plus the emulated anchors among ``anchors``.

An ``emulated-…`` name is satisfied exactly by a chain ending in an emulation root and a
hardware name exactly by a non-emulated root: :func:`verify_evidence` raises
``VerificationError("declared tee X but the evidence is Y")`` otherwise. Verification only:
appraisal against reference values stays with the caller (the KBS applies the agreement, the
CLI its policy options).

Used by the KBS (:mod:`teeflow.kbs.service.evidence`) and by ``teeflow quote verify``
(:mod:`teeflow.cli.evidence`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography import x509

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import Quote
from teeflow.attestation.evidence import Evidence
from teeflow.attestation.snp.abi import AttestationReport, SnpProduct
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError, VerificationError

__all__ = [
    "CollateralSource",
    "SnpChain",
    "SnpEndorsementSet",
    "SnpEndorsementSource",
    "VerifiedEvidence",
    "snp_chain_from_table",
    "verify_evidence",
    "verify_primary",
]

Platform = Literal["sgx", "tdx", "snp"]
_LABELS = {"sgx": "SGX", "tdx": "TDX", "snp": "SNP"}


@runtime_checkable
class CollateralSource(Protocol):
    """Supplies Intel collateral for a parsed quote (the KBS's collateral providers)."""

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """The collateral for ``quote`` valid around ``now``, or None."""
        ...


class SnpEndorsementSet(Protocol):
    """A VCEK/VLEK with its intermediates and CRL (any object with these attributes)."""

    @property
    def endorsement_cert(self) -> x509.Certificate:
        """The VCEK or VLEK certificate."""
        ...

    @property
    def intermediates(self) -> Sequence[x509.Certificate]:
        """ASK/ASVK (optionally the ARK), leaf first; empty: AMD's shipped ones."""
        ...

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        """The product's KDS CRL, or None."""
        ...


@runtime_checkable
class SnpEndorsementSource(Protocol):
    """Supplies the endorsements of a parsed report (e.g. AMD KDS with a cache)."""

    def for_report(self, report: AttestationReport, *, now: datetime) -> Any:
        """An :class:`SnpEndorsementSet` for ``report``, or None.

        Raises:
            CollateralError: a fetch failed (callers fail closed).
        """
        ...


@dataclass(frozen=True)
class SnpChain:
    """An :class:`SnpEndorsementSet` built from certificates at hand."""

    endorsement_cert: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()
    crl: x509.CertificateRevocationList | None = None


@dataclass(frozen=True)
class VerifiedEvidence:
    """Verified (not yet appraised) evidence.

    Attributes:
        tee: the RCAR tee name the evidence *is* (``emulated-…`` exactly when its chain ends
            in an emulation root).
        platform: ``sgx``, ``tdx`` or ``snp``.
        evidence: ``VerifiedSgxEvidence`` / ``VerifiedTdxEvidence`` / ``VerifiedSnpEvidence``.
        measurement: code identity, hex — MRENCLAVE (32 bytes), MRTD or MEASUREMENT (48).
        emulated: the chain ends in an emulation root.
        attester: the producing attester kind (``remote`` when received over the wire).
        warnings: notes for logs and audit.
    """

    tee: str
    platform: Platform
    evidence: Any
    measurement: str
    emulated: bool
    attester: str = "remote"
    warnings: tuple[str, ...] = ()


@functools.cache
def _amd_arks() -> tuple[TrustAnchor, ...]:
    from teeflow.attestation.trust.amd import amd_ark

    return tuple(amd_ark(str(p)) for p in SnpProduct)


def snp_chain_from_table(table: bytes) -> SnpChain:
    """The endorsements in an SNP certificate table: exactly one VCEK or VLEK, the ASK (and
    ARK) as intermediates, an optional CRL; other entries ignored.

    Raises:
        ParseError: malformed table or certificate, no or several VCEK/VLEK.
    """
    from teeflow.attestation.snp.cert_table import parse_cert_table
    from teeflow.attestation.snp.certs import load_certificate

    leaves: list[x509.Certificate] = []
    inter: list[x509.Certificate] = []
    arks: list[x509.Certificate] = []
    crl: x509.CertificateRevocationList | None = None
    for kind, der in parse_cert_table(table):
        if kind == "CRL":
            try:
                crl = x509.load_der_x509_crl(der)
            except ValueError:
                raise ParseError("certificate table CRL is not a DER CRL") from None
            continue
        target = {"VCEK": leaves, "VLEK": leaves, "ASK": inter, "ARK": arks}.get(kind)
        if target is not None:
            target.append(load_certificate(der, what=f"certificate table {kind}"))
    if len(leaves) != 1:
        raise ParseError("certificate table must hold exactly one VCEK or VLEK")
    return SnpChain(leaves[0], tuple(inter + arks), crl)


def _platform(primary: bytes) -> Platform | None:
    """What ``primary`` is by its framing (:func:`teeflow.attestation.detect.detect_evidence`)."""
    from teeflow.attestation.detect import EvidenceKind, detect_evidence

    try:
        kind = detect_evidence(primary)
    except ParseError:
        return None
    return {
        EvidenceKind.SGX_QUOTE: "sgx",
        EvidenceKind.TDX_QUOTE: "tdx",
        EvidenceKind.SNP_REPORT: "snp",
    }.get(kind)  # type: ignore[return-value]


def _collateral(
    collateral: IntelCollateral | CollateralSource | None, quote: Quote, now: datetime
) -> IntelCollateral | None:
    if isinstance(collateral, CollateralSource):
        return collateral.for_quote(quote, now=now)
    return collateral


def _verify_sgx(primary: bytes, kw: dict[str, Any]) -> tuple[Any, str, tuple[str, ...]]:
    from teeflow.attestation import sgx

    quote = sgx.parse_quote(primary)
    coll = _collateral(kw["collateral"], quote, kw["now"])
    verified = sgx.verify(
        quote, anchors=kw["anchors"], collateral=coll, now=kw["now"], crls=kw["crls"],
        signatures_only=kw["signatures_only"] and coll is None,
    )  # fmt: skip
    return verified, verified.report.mr_enclave.hex(), ()


def _verify_tdx(primary: bytes, kw: dict[str, Any]) -> tuple[Any, str, tuple[str, ...]]:
    from teeflow.attestation import tdx

    quote = tdx.parse_quote(primary)
    coll = _collateral(kw["collateral"], quote, kw["now"])
    verified = tdx.verify(
        quote, anchors=kw["anchors"], collateral=coll, now=kw["now"], crls=kw["crls"],
        signatures_only=kw["signatures_only"] and coll is None,
    )  # fmt: skip
    return verified, verified.report.mr_td.hex(), ()


def _verify_snp(
    primary: bytes, certificates: bytes | None, kw: dict[str, Any]
) -> tuple[Any, str, tuple[str, ...]]:
    from teeflow.attestation import snp

    report = snp.parse_report(primary)
    source = kw["snp_endorsements"]
    endorsements: Any
    if certificates:
        endorsements = snp_chain_from_table(certificates)
    elif isinstance(source, SnpEndorsementSource):
        endorsements = source.for_report(report, now=kw["now"])
    else:
        endorsements = source
    if endorsements is None:
        raise ParseError("no certificate table in the evidence and no VCEK/VLEK source")
    crl = endorsements.crl
    if crl is None and kw["crls"]:
        crl = kw["crls"][0]
    anchors = (*_amd_arks(), *(a for a in kw["anchors"] if a.emulated))
    verified = snp.verify(
        report,
        endorsement_cert=endorsements.endorsement_cert,
        intermediates=list(endorsements.intermediates) or None,
        anchors=anchors,
        product=kw["snp_product"],
        crl=crl,
        now=kw["now"],
    )
    return verified, report.measurement.hex(), ()


def verify_primary(
    platform: str,
    primary: bytes,
    *,
    certificates: bytes | None = None,
    anchors: Sequence[TrustAnchor],
    collateral: IntelCollateral | CollateralSource | None = None,
    snp_endorsements: SnpEndorsementSet | SnpEndorsementSource | None = None,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    signatures_only: bool = False,
    snp_product: SnpProduct | str | None = None,
    attester: str = "remote",
) -> VerifiedEvidence:
    """Parse and verify primary evidence of ``platform`` (``sgx``/``tdx``/``snp``) without a
    claim about emulation: the result's ``tee`` says what it is. Prefer
    :func:`verify_evidence`, which also checks the claimed ``tee``.

    Args:
        platform: ``sgx``, ``tdx`` or ``snp``; evidence framed as another is refused.
        primary, certificates: as :class:`Evidence`.
        anchors: trusted roots for DCAP chains (Intel root, emulation roots); their emulated
            members are also trusted for SNP, besides AMD's pinned ARKs.
        collateral: Intel collateral (a set, a source, or None: signature checks only when
            ``signatures_only``, else the pipelines refuse).
        snp_endorsements: VCEK/VLEK set or source for SNP evidence without a certificate
            table.
        now: verification time (timezone-aware).
        crls: extra CRLs (DCAP: any; SNP: the first is the KDS CRL when none came with the
            endorsements).
        signatures_only: DCAP: skip collateral when none is available.
        snp_product: expected SNP product (None: from the endorsement certificate).
        attester: recorded in the result.

    Raises:
        ParseError: unknown platform, evidence framed as another platform, malformed evidence,
            certificate table, or no SNP endorsements.
        VerificationError: signatures, chains, collateral (``CollateralError``).
    """
    if platform not in _LABELS:
        raise ParseError(f"unknown evidence platform {str(platform)[:32]!r}")
    found = _platform(primary)
    if found is not None and found != platform:
        raise ParseError(f"{_LABELS[platform]} evidence expected but this is {_LABELS[found]}")
    kw: dict[str, Any] = {
        "anchors": list(anchors), "collateral": collateral, "snp_endorsements": snp_endorsements,
        "now": now, "crls": list(crls), "signatures_only": signatures_only,
        "snp_product": snp_product,
    }  # fmt: skip
    if platform == "sgx":
        verified, measurement, warnings = _verify_sgx(primary, kw)
    elif platform == "tdx":
        verified, measurement, warnings = _verify_tdx(primary, kw)
    else:
        verified, measurement, warnings = _verify_snp(primary, certificates, kw)
    emulated = bool(verified.emulated)
    tee = f"emulated-{platform}" if emulated else platform
    family: Platform = "sgx" if platform == "sgx" else "tdx" if platform == "tdx" else "snp"
    return VerifiedEvidence(tee, family, verified, measurement, emulated, attester, warnings)


def verify_evidence(
    evidence: Evidence,
    *,
    anchors: Sequence[TrustAnchor],
    collateral: IntelCollateral | CollateralSource | None = None,
    snp_endorsements: SnpEndorsementSet | SnpEndorsementSource | None = None,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    signatures_only: bool = False,
    snp_product: SnpProduct | str | None = None,
) -> VerifiedEvidence:
    """Verify ``evidence`` with the pipeline of its ``tee`` and check the claim (module
    docstring): arguments as :func:`verify_primary`.

    Raises:
        ParseError: malformed evidence; evidence of another platform than ``evidence.tee``
            (``"TDX evidence expected but this is SGX"``).
        VerificationError: signatures, chains, collateral; ``"declared tee X but the
            evidence is Y"`` when the chain's emulation status contradicts ``evidence.tee``.
    """
    verified = verify_primary(
        evidence.platform,
        evidence.primary,
        certificates=evidence.certificates,
        anchors=anchors,
        collateral=collateral,
        snp_endorsements=snp_endorsements,
        now=now,
        crls=crls,
        signatures_only=signatures_only,
        snp_product=snp_product,
        attester=evidence.attester,
    )
    if verified.tee != evidence.tee:
        raise VerificationError(f"declared tee {evidence.tee} but the evidence is {verified.tee}")
    return verified
