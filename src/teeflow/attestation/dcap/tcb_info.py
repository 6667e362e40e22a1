"""Intel PCS TCB Info (v2 and v3, ``id`` "SGX" or "TDX"): parse, signature, TCB-level selection.

Source: "Intel SGX and Intel TDX Provisioning Certification Service (PCS) API",
"TCB Info V2" and "TCB Info V3" data structures, and Intel QVL
(intel/SGXDataCenterAttestationPrimitives, ``QuoteVerification/QVL/Src/AttestationLibrary/
src/Verifiers/QuoteVerifier.cpp``: ``getMatchingTcbLevel`` / ``checkTcbLevel``).

The PCS response body is ``{"tcbInfo":{...},"signature":"<hex r||s>"}``; the signature is
ECDSA-P256-SHA256 by the Intel SGX TCB Signing key over the *exact bytes* of the inner
``{...}`` object as they appear in the body. The body splitting and field readers live in
:mod:`teeflow.attestation.dcap.pcs_json` (shared with Enclave Identity);
``split_signed_body``, ``verify_pcs_signature`` and ``MAX_BODY_BYTES`` are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from teeflow.attestation.dcap.pcs_json import (
    MAX_BODY_BYTES,
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
    "MAX_BODY_BYTES",
    "SignedTcbInfo",
    "TcbLevel",
    "TdxModule",
    "TdxModuleIdentity",
    "TdxModuleTcbLevel",
    "parse_tcb_info",
    "select_platform_tcb",
    "select_tdx_module_tcb",
    "split_signed_body",
    "verify_pcs_signature",
    "verify_tcb_info_signature",
]

# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class TcbLevel:
    """One ``tcbLevels[]`` entry.

    Attributes:
        sgx_components: the 16 SGX TCB component SVNs (CPUSVN bytes order).
        pcesvn: PCE SVN (0..65535).
        tdx_components: the 16 TDX TCB component SVNs (TDX TCB Info only), else None.
        tcb_date: ``tcbDate`` (UTC).
        status: ``tcbStatus``.
        advisory_ids: ``advisoryIDs`` in order.
    """

    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """``tdxModule``: expected MRSIGNERSEAM (48 B), SEAMATTRIBUTES (8 B) and its mask (8 B)."""

    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True)
class TdxModuleTcbLevel:
    """``tdxModuleIdentities[].tcbLevels[]``: module ISV SVN, date, status, advisories."""

    isvsvn: int
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    """``tdxModuleIdentities[]`` (TDX TCB Info v3): one TDX module version (``TDX_01`` …)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[TdxModuleTcbLevel, ...]


@dataclass(frozen=True)
class SignedTcbInfo:
    """A parsed, not yet verified, Intel TCB Info with the bytes its signature covers.

    Attributes:
        id: ``"SGX"`` or ``"TDX"`` (v2 has no id: ``"SGX"``).
        version: 2 or 3.
        issue_date, next_update: validity window (UTC).
        fmspc: 6 bytes; pce_id: 2 bytes.
        tcb_type: ``tcbType`` (0 = SVNs compared component-wise).
        tcb_evaluation_data_number: ``tcbEvaluationDataNumber``.
        tdx_module: ``tdxModule`` (TDX only) or None.
        tdx_module_identities: ``tdxModuleIdentities`` (TDX v3, may be empty).
        tcb_levels: levels in the order given (Intel orders them newest first).
        signed_bytes: the exact inner ``{...}`` bytes; signature: 64-byte raw ``r||s``.
    """

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    signed_bytes: bytes
    signature: bytes


def _components(tcb: dict[str, Any], name: str) -> tuple[int, ...]:
    items = list_field(tcb, name)
    if len(items) != 16:
        raise ParseError(f"{name} must have 16 entries, got {len(items)}")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ParseError(f"{name} entries must be objects")
        out.append(int_field(item, "svn", 0, 255))
    return tuple(out)


def _level(raw: Any, version: int, tdx: bool) -> TcbLevel:
    if not isinstance(raw, dict):
        raise ParseError("tcbLevels entries must be objects")
    tcb = dict_field(raw, "tcb")
    if version == 2:
        sgx = tuple(int_field(tcb, f"sgxtcbcomp{i:02d}svn", 0, 255) for i in range(1, 17))
        tdx_comps = None
    else:
        sgx = _components(tcb, "sgxtcbcomponents")
        tdx_comps = _components(tcb, "tdxtcbcomponents") if tdx else None
    return TcbLevel(
        sgx_components=sgx,
        pcesvn=int_field(tcb, "pcesvn", 0, 0xFFFF),
        tdx_components=tdx_comps,
        tcb_date=time_field(raw, "tcbDate"),
        status=status_field(raw),
        advisory_ids=advisory_ids(raw),
    )


def _module_identity(raw: Any) -> TdxModuleIdentity:
    if not isinstance(raw, dict):
        raise ParseError("tdxModuleIdentities entries must be objects")
    levels = []
    for item in list_field(raw, "tcbLevels"):
        if not isinstance(item, dict):
            raise ParseError("tdxModuleIdentities tcbLevels entries must be objects")
        levels.append(
            TdxModuleTcbLevel(
                isvsvn=int_field(dict_field(item, "tcb"), "isvsvn", 0, 255),
                tcb_date=time_field(item, "tcbDate"),
                status=status_field(item),
                advisory_ids=advisory_ids(item),
            )
        )
    return TdxModuleIdentity(
        id=str_field(raw, "id", 32),
        mrsigner=hex_field(raw, "mrsigner", 48),
        attributes=hex_field(raw, "attributes", 8),
        attributes_mask=hex_field(raw, "attributesMask", 8),
        tcb_levels=tuple(levels),
    )


def parse_tcb_info(body: bytes) -> SignedTcbInfo:
    """Parse an Intel PCS TCB Info response body (v2 or v3, SGX or TDX).

    Args:
        body: ``{"tcbInfo":{...},"signature":"<128 hex chars>"}`` as served by Intel
            PCS (``/sgx/certification/v4/tcb`` or ``/tdx/certification/v4/tcb``), ≤ 1 MiB.

    Returns:
        The typed TCB Info; the signature is *not* checked here (see
        :func:`verify_tcb_info_signature`).

    Raises:
        ParseError: any structural problem (see :func:`split_signed_body`), a version
            other than 2/3, an id other than SGX/TDX, a missing or mistyped field, wrong
            component counts, an empty ``tcbLevels`` or an unknown ``tcbStatus``.
    """
    signed, obj, signature = split_signed_body(body, "tcbInfo")
    version = int_field(obj, "version", 0, 255)
    if version not in (2, 3):
        raise ParseError(f"unsupported TCB Info version {version}")
    tee_id = "SGX" if version == 2 else str_field(obj, "id", 16)
    if version == 2 and "id" in obj:
        raise ParseError("TCB Info v2 has no 'id' field")
    if tee_id not in ("SGX", "TDX"):
        raise ParseError(f"unknown TCB Info id {tee_id!r}")
    tdx = tee_id == "TDX"
    tdx_module = None
    if tdx:
        mod = dict_field(obj, "tdxModule")
        tdx_module = TdxModule(
            mrsigner=hex_field(mod, "mrsigner", 48),
            attributes=hex_field(mod, "attributes", 8),
            attributes_mask=hex_field(mod, "attributesMask", 8),
        )
    identities = tuple(
        _module_identity(raw) for raw in list_field(obj, "tdxModuleIdentities", optional=True)
    )
    levels = tuple(_level(raw, version, tdx) for raw in list_field(obj, "tcbLevels"))
    if not levels:
        raise ParseError("tcbLevels is empty")
    return SignedTcbInfo(
        id=tee_id,
        version=version,
        issue_date=time_field(obj, "issueDate"),
        next_update=time_field(obj, "nextUpdate"),
        fmspc=hex_field(obj, "fmspc", 6),
        pce_id=hex_field(obj, "pceId", 2),
        tcb_type=int_field(obj, "tcbType", 0, 255),
        tcb_evaluation_data_number=int_field(obj, "tcbEvaluationDataNumber"),
        tdx_module=tdx_module,
        tdx_module_identities=identities,
        tcb_levels=levels,
        signed_bytes=signed,
        signature=signature,
    )


def verify_tcb_info_signature(info: SignedTcbInfo, signing_cert: x509.Certificate) -> None:
    """Check the TCB Info signature with the TCB Signing certificate's P-256 key.

    The certificate itself is not validated here (see
    :func:`teeflow.attestation.dcap.collateral.verify_collateral`).

    Raises:
        VerificationError: the signature does not verify over ``info.signed_bytes``.
    """
    verify_pcs_signature(info.signed_bytes, info.signature, signing_cert, "tcbInfo")


def _svns(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(values)
    if len(out) != 16 or any(
        not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255 for v in out
    ):
        raise VerificationError(f"{name} must be 16 integers in [0, 255]")
    return out


def _tdx_ok(level: TcbLevel, tee_tcb_svn: tuple[int, ...], start: int) -> bool:
    """TDX comparison: every ``tdxtcbcomponents[i].svn <= TEE_TCB_SVN[i]`` for i >= start.

    ``start`` is 2 when the TCB Info has ``tdxModuleIdentities`` and ``TEE_TCB_SVN[1] > 0``
    (TDX 1.5: bytes 0..1 are the module ISV SVN / version, evaluated separately by
    :func:`select_tdx_module_tcb`), else 0.
    """
    comps = level.tdx_components
    if comps is None:
        return False
    return all(comps[i] <= tee_tcb_svn[i] for i in range(start, 16))


def select_platform_tcb(
    info: SignedTcbInfo,
    sgx_components: Sequence[int],
    pcesvn: int,
    tdx_components: Sequence[int] | None = None,
) -> TcbEvaluation:
    """Select the platform TCB level (Intel QVL ``getMatchingTcbLevel``).

    Walks ``info.tcb_levels`` in the given order and returns the first level whose 16
    SGX component SVNs are all ``<=`` the PCK certificate's and whose PCESVN is ``<=``
    the PCK certificate's PCESVN; for TDX TCB Info the level's TDX components must also
    be ``<=`` the quote's TEE_TCB_SVN (see :func:`_tdx_ok` for the starting index).

    Args:
        info: parsed TCB Info (its signature should already be verified).
        sgx_components: the PCK certificate's 16 CPUSVN component SVNs.
        pcesvn: the PCK certificate's PCESVN.
        tdx_components: the TD report's 16-byte TEE_TCB_SVN (required for TDX TCB Info,
            forbidden for SGX TCB Info).

    Returns:
        The level's status, date and advisory IDs.

    Raises:
        VerificationError: malformed SVN inputs, TEE mismatch between the TCB Info id and
            ``tdx_components``, or "no matching TCB level".
    """
    sgx = _svns(sgx_components, "SGX TCB components")
    if isinstance(pcesvn, bool) or not isinstance(pcesvn, int) or not 0 <= pcesvn <= 0xFFFF:
        raise VerificationError("PCESVN must be an integer in [0, 65535]")
    tee: tuple[int, ...] | None = None
    if info.id == "TDX":
        if tdx_components is None:
            raise VerificationError("TDX TCB Info needs the TD report's TEE_TCB_SVN")
        tee = _svns(tdx_components, "TEE_TCB_SVN")
    elif tdx_components is not None:
        raise VerificationError("SGX TCB Info cannot evaluate TDX TEE_TCB_SVN")
    start = 2 if tee is not None and info.tdx_module_identities and tee[1] > 0 else 0
    for level in info.tcb_levels:
        if level.pcesvn > pcesvn:
            continue
        if any(level.sgx_components[i] > sgx[i] for i in range(16)):
            continue
        if tee is not None and not _tdx_ok(level, tee, start):
            continue
        return TcbEvaluation(
            status=level.status, tcb_date=level.tcb_date, advisory_ids=level.advisory_ids
        )
    raise VerificationError("no matching TCB level")


def select_tdx_module_tcb(info: SignedTcbInfo, tee_tcb_svn: Sequence[int]) -> TcbEvaluation | None:
    """TDX module TCB (TDX 1.5 ``tdxModuleIdentities``; Intel QVL ``TdxModuleCheck``).

    TEE_TCB_SVN[1] is the module version and TEE_TCB_SVN[0] its ISV SVN. With version 0
    or no ``tdxModuleIdentities`` there is nothing to evaluate (returns None). Otherwise
    the identity ``"TDX_" + hex(version)`` (upper-case, 2 digits) is looked up and its
    first level with ``isvsvn <= TEE_TCB_SVN[0]`` is returned. Matching MRSIGNERSEAM and
    SEAMATTRIBUTES against the identity is the TDX verifier's job (later issue).

    Raises:
        VerificationError: malformed input, unknown module identity, or no level matches.
    """
    tee = _svns(tee_tcb_svn, "TEE_TCB_SVN")
    if info.id != "TDX" or not info.tdx_module_identities or tee[1] == 0:
        return None
    wanted = f"TDX_{tee[1]:02X}"
    for ident in info.tdx_module_identities:
        if ident.id.upper() == wanted:
            for level in ident.tcb_levels:
                if level.isvsvn <= tee[0]:
                    return TcbEvaluation(
                        status=level.status,
                        tcb_date=level.tcb_date,
                        advisory_ids=level.advisory_ids,
                    )
            raise VerificationError(f"no matching TDX module TCB level for {wanted}")
    raise VerificationError(f"TDX module identity {wanted} not in TCB Info")
