"""Intel PCS Enclave Identity v2 (QE, QVE, TD_QE): parse, signature, QE report matching.

Sources: "Intel SGX and Intel TDX Provisioning Certification Service (PCS) API",
"Enclave Identity V2" data structure; Intel QVL
(intel/SGXDataCenterAttestationPrimitives, ``QuoteVerification/QVL/Src/AttestationLibrary/
src/Verifiers/EnclaveReportVerifier.cpp``) for the matching rules.

The body is ``{"enclaveIdentity":{...},"signature":"<hex r||s>"}``; the signature covers
the exact bytes of the inner object (extracted with
:func:`teeflow.attestation.dcap.pcs_json.split_signed_body`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509

from teeflow.attestation.dcap.pcs_json import (
    advisory_ids,
    dict_field,
    hex_field,
    int_field,
    list_field,
    split_signed_body,
    status_field,
    str_field,
    time_field,
    verify_pcs_signature,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.errors import ParseError, VerificationError

__all__ = [
    "ENCLAVE_IDENTITY_IDS",
    "EnclaveTcbLevel",
    "QeReportLike",
    "SignedEnclaveIdentity",
    "match_qe_report",
    "parse_enclave_identity",
    "verify_enclave_identity_signature",
]

#: Enclave Identity ids accepted.
ENCLAVE_IDENTITY_IDS = frozenset({"QE", "QVE", "TD_QE"})


class QeReportLike(Protocol):
    """The fields of an SGX report body (``EnclaveReport``) that QE matching reads."""

    @property
    def misc_select(self) -> int: ...  # u32 as decoded (little-endian) from the report
    @property
    def attributes(self) -> bytes: ...  # 16 bytes as stored
    @property
    def mr_signer(self) -> bytes: ...  # 32 bytes
    @property
    def isv_prod_id(self) -> int: ...
    @property
    def isv_svn(self) -> int: ...


@dataclass(frozen=True)
class EnclaveTcbLevel:
    """``tcbLevels[]`` of an Enclave Identity: ISV SVN threshold, date, status, advisories."""

    isvsvn: int
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class SignedEnclaveIdentity:
    """A parsed, not yet verified, Intel Enclave Identity with the bytes its signature covers.

    Attributes:
        id: ``"QE"``, ``"QVE"`` or ``"TD_QE"``; version: 2.
        issue_date, next_update: validity window (UTC).
        tcb_evaluation_data_number: ``tcbEvaluationDataNumber``.
        miscselect, miscselect_mask: 4 bytes each, as in the hex (the byte order the
            report stores MISCSELECT in, i.e. little-endian u32).
        attributes, attributes_mask: 16 bytes each.
        mrsigner: 32 bytes; isvprodid: ISV product id.
        tcb_levels: in the order given (highest ISV SVN first).
        signed_bytes: the exact inner ``{...}`` bytes; signature: 64-byte raw ``r||s``.
    """

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[EnclaveTcbLevel, ...]
    signed_bytes: bytes
    signature: bytes


def _level(raw: Any) -> EnclaveTcbLevel:
    if not isinstance(raw, dict):
        raise ParseError("enclaveIdentity tcbLevels entries must be objects")
    return EnclaveTcbLevel(
        isvsvn=int_field(dict_field(raw, "tcb"), "isvsvn", 0, 0xFFFF),
        tcb_date=time_field(raw, "tcbDate"),
        status=status_field(raw),
        advisory_ids=advisory_ids(raw),
    )


def parse_enclave_identity(body: bytes) -> SignedEnclaveIdentity:
    """Parse an Intel PCS Enclave Identity v2 response body.

    Args:
        body: ``{"enclaveIdentity":{...},"signature":"<128 hex chars>"}`` (≤ 1 MiB).

    Returns:
        The typed identity; the signature is not checked here.

    Raises:
        ParseError: malformed JSON/body (see ``split_signed_body``), version other than 2,
            unknown id, missing/mistyped fields, empty ``tcbLevels`` or unknown status.
    """
    signed, obj, signature = split_signed_body(body, "enclaveIdentity")
    version = int_field(obj, "version", 0, 255)
    if version != 2:
        raise ParseError(f"unsupported Enclave Identity version {version}")
    ident = str_field(obj, "id", 16)
    if ident not in ENCLAVE_IDENTITY_IDS:
        raise ParseError(f"unknown Enclave Identity id {ident!r}")
    levels = tuple(_level(raw) for raw in list_field(obj, "tcbLevels"))
    if not levels:
        raise ParseError("enclaveIdentity tcbLevels is empty")
    return SignedEnclaveIdentity(
        id=ident,
        version=version,
        issue_date=time_field(obj, "issueDate"),
        next_update=time_field(obj, "nextUpdate"),
        tcb_evaluation_data_number=int_field(obj, "tcbEvaluationDataNumber"),
        miscselect=hex_field(obj, "miscselect", 4),
        miscselect_mask=hex_field(obj, "miscselectMask", 4),
        attributes=hex_field(obj, "attributes", 16),
        attributes_mask=hex_field(obj, "attributesMask", 16),
        mrsigner=hex_field(obj, "mrsigner", 32),
        isvprodid=int_field(obj, "isvprodid", 0, 0xFFFF),
        tcb_levels=levels,
        signed_bytes=signed,
        signature=signature,
    )


def verify_enclave_identity_signature(
    identity: SignedEnclaveIdentity, signing_cert: x509.Certificate
) -> None:
    """Check the Enclave Identity signature with the TCB Signing certificate's P-256 key.

    Raises:
        VerificationError: the signature does not verify over ``identity.signed_bytes``.
    """
    verify_pcs_signature(identity.signed_bytes, identity.signature, signing_cert, "enclaveIdentity")


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(a & b for a, b in zip(value, mask, strict=True))


def match_qe_report(identity: SignedEnclaveIdentity, qe_report: QeReportLike) -> TcbEvaluation:
    """Match a QE report against an Enclave Identity and select its TCB level.

    Checks, in Intel QVL order: MRSIGNER equal; ISVPRODID equal;
    ``report.MISCSELECT & mask == miscselect & mask`` (compared as the report's 4
    little-endian bytes); ``report.ATTRIBUTES & mask == attributes & mask`` bytewise.
    Then returns the first level with ``level.isvsvn <= report.isv_svn``. A ``Revoked``
    or ``OutOfDate`` level is returned as such: the appraisal (and
    ``converge_tcb_status``) decides.

    Args:
        identity: parsed identity (its signature should already be verified).
        qe_report: the QE report body (``EnclaveReport``).

    Raises:
        VerificationError: naming the mismatching field (``MRSIGNER``, ``ISVPRODID``,
            ``MISCSELECT``, ``ATTRIBUTES``), or no TCB level for the report's ISVSVN.
    """
    if bytes(qe_report.mr_signer) != identity.mrsigner:
        raise VerificationError(f"QE identity mismatch: MRSIGNER {qe_report.mr_signer.hex()}")
    if qe_report.isv_prod_id != identity.isvprodid:
        raise VerificationError(
            f"QE identity mismatch: ISVPRODID {qe_report.isv_prod_id} != {identity.isvprodid}"
        )
    misc = qe_report.misc_select
    if isinstance(misc, bool) or not isinstance(misc, int) or not 0 <= misc <= 0xFFFFFFFF:
        raise VerificationError("QE report MISCSELECT is not a u32")
    mask = identity.miscselect_mask
    if _masked(misc.to_bytes(4, "little"), mask) != _masked(identity.miscselect, mask):
        raise VerificationError(f"QE identity mismatch: MISCSELECT {misc:#010x}")
    attrs = bytes(qe_report.attributes)
    if len(attrs) != 16:
        raise VerificationError("QE report ATTRIBUTES must be 16 bytes")
    amask = identity.attributes_mask
    if _masked(attrs, amask) != _masked(identity.attributes, amask):
        raise VerificationError(f"QE identity mismatch: ATTRIBUTES {attrs.hex()}")
    for level in identity.tcb_levels:
        if level.isvsvn <= qe_report.isv_svn:
            return TcbEvaluation(
                status=level.status, tcb_date=level.tcb_date, advisory_ids=level.advisory_ids
            )
    raise VerificationError(f"no QE TCB level for ISVSVN {qe_report.isv_svn}")
