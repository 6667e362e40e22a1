"""Evidence types the KBS attests: Trustee ``tee`` names -> parse/verify/appraise adapters.

Verification itself is :func:`teeflow.attestation.registry.verify_evidence` (the one
verifier registry, shared with ``teeflow quote verify``); this module adds the RCAR wire
shapes and the agreement's policies. :func:`evidence_type` maps the ``tee`` of an RCAR
``Request`` to an :class:`EvidenceType` whose :meth:`~EvidenceType.verify` decodes
Trustee's ``primary_evidence`` for that TEE and has the registry verify it (with the
declared ``tee`` of :attr:`VerifyInputs.tee` checked), and whose
:meth:`~EvidenceType.appraise` applies the agreement's reference values for the role with
REPORT_DATA pinned to the runtime-data binding.

``tee`` names (Trustee ``kbs_types::Tee`` spelling plus teeflow's emulated variants; an
``emulated-*`` name is the only one an emulation root may satisfy, and only under the
agreement's ``allow_emulated``)::

    sgx,  emulated-sgx   {"quote": "<base64 DCAP quote, tee_type 0>"}
    tdx,  emulated-tdx   {"quote": "<base64 DCAP quote v4/v5, tee_type 0x81>",
                          "cc_eventlog": "<base64 CCEL>" | null}          (optional)
    snp,  emulated-snp   {"attestation_report": "<base64 of the 1184-byte report>"
                                                | [1184 integers 0..255],
                          "cert_chain": [{"cert_type": "VCEK"|"VLEK"|"ASK"|"ASVK"|"ARK"|"CRL",
                                          "data": [DER bytes as integers] | "<base64 DER>"},
                                         ...] | null}                      (optional)

Sources: Trustee ``deps/verifier/src/{sgx,tdx,snp}/mod.rs`` (``SgxEvidence``, ``TdxEvidence``
``{cc_eventlog, quote}``, ``SnpEvidence`` ``{attestation_report, cert_chain}`` with the
``sev`` crate's ``CertTableEntry {cert_type, data}``). Deviations, fail-closed:

* TDX ``cc_eventlog`` is checked to be base64 but **not replayed**: teeflow appraises the
  RTMRs of the signed quote directly, so nothing from the event log is trusted; the
  acceptance carries a warning.
* SNP ``attestation_report`` in the ``sev`` crate's JSON-object form is refused (send the
  raw report); ``cert_chain`` entries of other types (``Empty``, ``OTHER``) are ignored;
  exactly one VCEK or VLEK is required. Without ``cert_chain`` the KBS's
  :class:`~teeflow.kbs.service.collateral.SnpEndorsementProvider` (AMD KDS) is asked.
  Trust anchors for SNP: AMD's pinned ARKs (Milan, Genoa, Turin) plus the KBS's emulated
  anchors.

SNP REPORT_DATA is 64 bytes, like SGX and TDX: the same
:func:`~teeflow.attestation.binding.runtime_data_digest` binding applies to all three.
"""

from __future__ import annotations

import base64
import binascii
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from teeflow.attestation import sgx, snp, tdx
from teeflow.attestation.appraisal import AttestationResult
from teeflow.attestation.evidence import Evidence
from teeflow.attestation.registry import verify_evidence, verify_primary
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.protocol import MAX_QUOTE_BYTES, SgxEvidence
from teeflow.kbs.service.collateral import (
    CollateralProvider,
    SnpEndorsementProvider,
    SnpEndorsements,
)

__all__ = [
    "EVIDENCE_TYPES",
    "MAX_CC_EVENTLOG_CHARS",
    "EvidenceType",
    "SnpCertEntry",
    "SnpEvidence",
    "TdxEvidence",
    "VerifiedEvidence",
    "VerifyInputs",
    "evidence_platform",
    "evidence_type",
]

Platform = Literal["sgx", "tdx", "snp"]
#: Largest ``cc_eventlog`` (base64 characters).
MAX_CC_EVENTLOG_CHARS = 96 * 1024
_MAX_QUOTE_B64 = (MAX_QUOTE_BYTES + 2) // 3 * 4
_SNP_REPORT_BYTES = 0x4A0
_MAX_CERT_BYTES = 16 * 1024
_Byte = Annotated[int, Field(ge=0, le=255)]


def _b64(text: str, what: str, limit: int) -> bytes:
    """Standard base64 (RFC 4648 §4, padding required) -> bytes; ParseError otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"{what} is not valid base64") from None
    if len(raw) > limit:
        raise ParseError(f"{what} larger than {limit} bytes")
    return raw


class _Evidence(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TdxEvidence(_Evidence):
    """Trustee TDX verifier evidence ``{"quote": base64, "cc_eventlog": base64 | null}``."""

    quote: Annotated[str, StringConstraints(min_length=1, max_length=_MAX_QUOTE_B64)]
    cc_eventlog: Annotated[str, StringConstraints(max_length=MAX_CC_EVENTLOG_CHARS)] | None = None


class SnpCertEntry(_Evidence):
    """``sev`` crate ``CertTableEntry``: ``cert_type`` (``"VCEK"``, ``{"OTHER": uuid}`` …)
    and ``data`` (DER as a JSON byte array, or base64)."""

    cert_type: Annotated[str, StringConstraints(max_length=16)] | dict[str, JsonValue]
    data: list[_Byte] | Annotated[str, StringConstraints(max_length=_MAX_CERT_BYTES * 2)] = Field(
        max_length=_MAX_CERT_BYTES
    )

    def der(self) -> bytes:
        """The entry's bytes. Raises ParseError (bad base64, too large)."""
        if isinstance(self.data, str):
            return _b64(self.data, "cert_chain data", _MAX_CERT_BYTES)
        return bytes(self.data)


class SnpEvidence(_Evidence):
    """Trustee SNP verifier evidence ``{"attestation_report", "cert_chain"}`` (module doc)."""

    attestation_report: (
        Annotated[str, StringConstraints(min_length=1, max_length=2048)]
        | Annotated[list[_Byte], Field(min_length=1, max_length=_SNP_REPORT_BYTES)]
        | dict[str, JsonValue]
    )
    cert_chain: Annotated[list[SnpCertEntry], Field(max_length=8)] | None = None

    def report_bytes(self) -> bytes:
        """The raw report. Raises ParseError (object form, bad base64)."""
        report = self.attestation_report
        if isinstance(report, dict):
            raise ParseError(
                "attestation_report in object form is not supported; "
                "send base64 of the 1184-byte report"
            )
        if isinstance(report, str):
            return _b64(report, "attestation_report", _SNP_REPORT_BYTES)
        return bytes(report)


@dataclass(frozen=True)
class VerifyInputs:
    """What verification needs besides the evidence (all injected by the service)."""

    anchors: Sequence[TrustAnchor]
    collateral: CollateralProvider
    snp_endorsements: SnpEndorsementProvider | None
    now: datetime
    #: the declared RCAR tee, checked by the registry (None: not checked here)
    tee: str | None = None


@dataclass(frozen=True)
class VerifiedEvidence:
    """Verified (not yet appraised) evidence of one platform.

    Attributes:
        platform: ``sgx``, ``tdx`` or ``snp``.
        evidence: ``VerifiedSgxEvidence`` / ``VerifiedTdxEvidence`` / ``VerifiedSnpEvidence``.
        measurement: code identity, hex — MRENCLAVE (32 bytes), MRTD or MEASUREMENT (48).
        warnings: notes for the audit log (e.g. an event log that was not replayed).
    """

    platform: Platform
    evidence: Any
    measurement: str
    warnings: tuple[str, ...] = ()


def _model(model: type[BaseModel], primary: Mapping[str, JsonValue], shape: str) -> Any:
    try:
        return model.model_validate(dict(primary))
    except (ValidationError, ValueError):
        raise ParseError(f"primary_evidence is not {shape}") from None


def evidence_platform(primary: Mapping[str, JsonValue]) -> Platform | None:
    """The platform whose evidence ``primary`` looks like, without verifying anything: an
    ``attestation_report`` member -> ``snp``; a base64 ``quote`` whose DCAP header says
    ``tee_type`` 0 -> ``sgx``, 0x81 -> ``tdx``; None when it cannot tell."""
    if "attestation_report" in primary:
        return "snp"
    quote = primary.get("quote")
    if not isinstance(quote, str) or len(quote) < 12:
        return None
    try:
        head = base64.b64decode(quote[:12], validate=True)
    except (binascii.Error, ValueError):
        return None
    tee_type = int.from_bytes(head[4:8], "little")
    return {0: "sgx", 0x81: "tdx"}.get(tee_type)  # type: ignore[return-value]


class EvidenceType(ABC):
    """One platform's adapter (base class; see :data:`EVIDENCE_TYPES`).

    Attributes:
        platform: ``sgx``, ``tdx`` or ``snp`` (the agreement's reference-value key).
        label: human name for messages (``SGX``, ``TDX``, ``SNP``).
        shape: the accepted ``primary_evidence`` shape, for messages.
    """

    platform: Platform
    label: str
    shape: str

    @abstractmethod
    def verify(self, primary: Mapping[str, JsonValue], inputs: VerifyInputs) -> VerifiedEvidence:
        """Decode, parse and verify ``primary_evidence``.

        Raises:
            ParseError: wrong shape, bad base64, malformed quote/report/certificate.
            VerificationError: signatures, chains, collateral (``CollateralError``).
        """

    @abstractmethod
    def policy(self, agreement: FederationAgreement, role: str) -> Any:
        """The role's Appraisal Policy for this platform.

        Raises:
            PolicyViolation: the agreement has no reference values of this platform for
                the role.
        """

    def appraise(
        self,
        verified: VerifiedEvidence,
        agreement: FederationAgreement,
        role: str,
        report_data: bytes,
        *,
        logger: logging.Logger | None = None,
    ) -> AttestationResult:
        """Appraise against the role's reference values with REPORT_DATA = ``report_data``
        (64 bytes); ``allow_emulated`` from the agreement.

        Raises:
            PolicyViolation: as :meth:`policy`.
        """
        policy = self.policy(agreement, role).with_report_data(report_data)
        module = {"sgx": sgx, "tdx": tdx, "snp": snp}[self.platform]
        result: AttestationResult = module.appraise(verified.evidence, policy, logger=logger)
        return result


def _dcap_quote(primary: Mapping[str, JsonValue], model: type[BaseModel], shape: str) -> Any:
    evidence = _model(model, primary, shape)
    return evidence, _b64(evidence.quote, "quote", MAX_QUOTE_BYTES)


def _registry(
    platform: Platform,
    raw: bytes,
    inputs: VerifyInputs,
    endorsements: SnpEndorsements | None = None,
    warnings: tuple[str, ...] = (),
) -> VerifiedEvidence:
    """Verify through :func:`teeflow.attestation.registry.verify_evidence` (the declared tee
    checked) or, without a declared tee, :func:`~teeflow.attestation.registry.verify_primary`."""
    kwargs: dict[str, Any] = {
        "anchors": inputs.anchors,
        "collateral": inputs.collateral,
        "snp_endorsements": endorsements if endorsements is not None else inputs.snp_endorsements,
        "now": inputs.now,
    }
    if inputs.tee is not None:
        verified = verify_evidence(Evidence(inputs.tee, raw, "remote"), **kwargs)
    else:
        verified = verify_primary(platform, raw, **kwargs)
    return VerifiedEvidence(
        platform, verified.evidence, verified.measurement, warnings + verified.warnings
    )


class _Sgx(EvidenceType):
    platform = "sgx"
    label = "SGX"
    shape = 'SGX evidence {"quote": "<base64>"}'

    def verify(self, primary: Mapping[str, JsonValue], inputs: VerifyInputs) -> VerifiedEvidence:
        _, raw = _dcap_quote(primary, SgxEvidence, self.shape)
        return _registry("sgx", raw, inputs)

    def policy(self, agreement: FederationAgreement, role: str) -> Any:
        return agreement.sgx_policy(role)


class _Tdx(EvidenceType):
    platform = "tdx"
    label = "TDX"
    shape = 'TDX evidence {"quote": "<base64>", "cc_eventlog": "<base64>"|null}'

    def verify(self, primary: Mapping[str, JsonValue], inputs: VerifyInputs) -> VerifiedEvidence:
        evidence, raw = _dcap_quote(primary, TdxEvidence, self.shape)
        warnings: tuple[str, ...] = ()
        if evidence.cc_eventlog:
            _b64(evidence.cc_eventlog, "cc_eventlog", MAX_CC_EVENTLOG_CHARS)
            warnings = ("cc_eventlog not replayed (RTMRs appraised from the quote)",)
        return _registry("tdx", raw, inputs, warnings=warnings)

    def policy(self, agreement: FederationAgreement, role: str) -> Any:
        return agreement.tdx_policy(role)


def _snp_chain(entries: Sequence[SnpCertEntry]) -> SnpEndorsements:
    leaves: list[x509.Certificate] = []
    inter: list[x509.Certificate] = []
    arks: list[x509.Certificate] = []
    crl: x509.CertificateRevocationList | None = None
    for entry in entries:
        kind = entry.cert_type if isinstance(entry.cert_type, str) else "OTHER"
        if kind == "CRL":
            try:
                crl = x509.load_der_x509_crl(entry.der())
            except ValueError:
                raise ParseError("cert_chain CRL is not a DER CRL") from None
            continue
        target = {"VCEK": leaves, "VLEK": leaves, "ASK": inter, "ASVK": inter, "ARK": arks}
        if kind in target:
            target[kind].append(snp.load_certificate(entry.der(), what=f"cert_chain {kind}"))
    if len(leaves) != 1:
        raise ParseError("cert_chain must hold exactly one VCEK or VLEK")
    return SnpEndorsements(leaves[0], tuple(inter + arks), crl)


class _Snp(EvidenceType):
    platform = "snp"
    label = "SNP"
    shape = 'SNP evidence {"attestation_report": "<base64>", "cert_chain": [...]|null}'

    def verify(self, primary: Mapping[str, JsonValue], inputs: VerifyInputs) -> VerifiedEvidence:
        evidence: SnpEvidence = _model(SnpEvidence, primary, self.shape)
        raw = evidence.report_bytes()
        chain = _snp_chain(evidence.cert_chain) if evidence.cert_chain else None
        if chain is None and inputs.snp_endorsements is None:
            snp.parse_report(raw)  # a malformed report is reported as such first
            raise ParseError("no cert_chain in the evidence and no VCEK/VLEK source configured")
        return _registry("snp", raw, inputs, chain)

    def policy(self, agreement: FederationAgreement, role: str) -> Any:
        return agreement.snp_policy(role)


_SGX, _TDX, _SNP = _Sgx(), _Tdx(), _Snp()

#: ``tee`` name -> adapter. Hardware and emulated names share an adapter; the appraisal
#: result's ``tee`` (``emulated-…`` exactly when the chain ends in an emulation root) must
#: equal the declared name.
EVIDENCE_TYPES: Mapping[str, EvidenceType] = {
    "sgx": _SGX,
    "emulated-sgx": _SGX,
    "tdx": _TDX,
    "emulated-tdx": _TDX,
    "snp": _SNP,
    "emulated-snp": _SNP,
}


def evidence_type(tee: str) -> EvidenceType | None:
    """The adapter for a declared ``tee``, or None when this KBS does not attest it."""
    return EVIDENCE_TYPES.get(tee)

