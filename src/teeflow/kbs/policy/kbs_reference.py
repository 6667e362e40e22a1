"""KBS reference values: what a party requires of the KBS's evidence, per platform.

The KBS is a workload of role ``kbs``; its reference values are the agreement's
``workloads.kbs`` entry (:class:`~teeflow.kbs.policy.agreement.WorkloadSpec`: ``sgx`` —
MRENCLAVE/MRSIGNER/ISVPRODID/ISVSVN..., ``tdx`` — MRTD/RTMRs/MRSEAM..., ``snp`` —
MEASUREMENT/HOST_DATA/VMPL...). A party checks the KBS's evidence against the entry of the
evidence's TEE (:func:`teeflow.kbs.service.self_attestation.verify_kbs_evidence`); a TEE
without an entry is refused.

Sources: :func:`load_reference_values` (agreement, workload spec or one platform's values
from a file) and :func:`reference_values_for_measurements` (``teeflow kbs verify
--expect-measurement``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from teeflow.attestation.policy import load_policy_document
from teeflow.errors import ParseError
from teeflow.kbs.policy.agreement import (
    SgxReferenceValues,
    SnpReferenceValues,
    TdxReferenceValues,
    WorkloadSpec,
)
from teeflow.kbs.policy.canonical import format_validation_error

__all__ = [
    "PLATFORM_KEYS",
    "AnyKbsReferenceValues",
    "KbsReferenceValues",
    "kbs_reference_spec",
    "load_reference_values",
    "reference_values_for_measurements",
]

#: The platform keys of a workload spec, in order.
PLATFORM_KEYS = ("sgx", "tdx", "snp")
#: The KBS reference values parties check: per platform (``sgx``/``tdx``/``snp``), as the
#: agreement's ``workloads.kbs`` entry.
KbsReferenceValues = WorkloadSpec
#: What the party-side checks accept: per-platform values or one platform's values.
AnyKbsReferenceValues = WorkloadSpec | SgxReferenceValues | TdxReferenceValues | SnpReferenceValues


def kbs_reference_spec(values: AnyKbsReferenceValues) -> WorkloadSpec:
    """``values`` as a per-platform :data:`KbsReferenceValues` (one platform's values are
    wrapped: SGX values accept SGX evidence only, and so on).

    Raises:
        ParseError: not reference values.
    """
    if isinstance(values, WorkloadSpec):
        return values
    if isinstance(values, SgxReferenceValues):
        return WorkloadSpec(sgx=values)
    if isinstance(values, TdxReferenceValues):
        return WorkloadSpec(tdx=values)
    if isinstance(values, SnpReferenceValues):
        return WorkloadSpec(snp=values)
    raise ParseError("KBS reference values expected")


def reference_values_for_measurements(measurements: Sequence[str]) -> WorkloadSpec:
    """KBS reference values naming exactly these code identities (``teeflow kbs verify
    --expect-measurement``): a 32-byte hex value is an SGX MRENCLAVE, a 48-byte one a TDX
    MRTD *and* an SNP MEASUREMENT (VMPL 0); other fields keep their defaults (TCB UpToDate,
    no debug).

    Raises:
        ParseError: no value, or a value that is not 32 or 48 bytes of hex.
    """
    sgx_values: list[str] = []
    wide: list[str] = []
    for text in measurements:
        value = str(text).strip().lower()
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise ParseError(f"measurement {value[:20]!r}... is not hex") from None
        if len(raw) == 32:
            sgx_values.append(value)
        elif len(raw) == 48:
            wide.append(value)
        else:
            raise ParseError(
                "a KBS measurement is 32 bytes (SGX MRENCLAVE) or 48 bytes (TDX MRTD, SNP "
                f"MEASUREMENT), got {len(raw)}"
            )
    if not sgx_values and not wide:
        raise ParseError("give at least one KBS measurement")
    try:
        return WorkloadSpec(
            sgx=SgxReferenceValues(mrenclave=tuple(sgx_values)) if sgx_values else None,
            tdx=TdxReferenceValues(mrtd=tuple(wide)) if wide else None,
            snp=SnpReferenceValues(measurement=tuple(wide), max_vmpl=0) if wide else None,
        )
    except ValidationError as exc:
        raise ParseError(f"KBS measurement: {format_validation_error(exc)}") from None


def load_reference_values(path: Path | str) -> WorkloadSpec:
    """Read the KBS reference values (:data:`KbsReferenceValues`) from a YAML/JSON file,
    which is one of: a federation agreement (its ``workloads.kbs``), a workload spec
    (``{sgx: {...}, tdx: {...}, snp: {...}}``, at least one), or one platform's values
    (SGX ``{mrenclave: [...], mrsigner: ...}``, TDX ``{mrtd: [...], rtmr0: ...}``, SNP
    ``{measurement: [...], ...}``).

    Raises:
        ParseError: unreadable, malformed, or no KBS reference values in it.
    """
    doc: object = load_policy_document(path)
    if isinstance(doc, Mapping) and "workloads" in doc:
        workloads = doc.get("workloads")
        kbs = workloads.get("kbs") if isinstance(workloads, Mapping) else None
        doc = kbs if isinstance(kbs, Mapping) else None
        if doc is None:
            raise ParseError(f"{path}: the agreement has no reference values for role kbs")
    if not isinstance(doc, Mapping):
        raise ParseError(f"{path}: expected KBS reference values")
    model: type[WorkloadSpec | SgxReferenceValues | TdxReferenceValues | SnpReferenceValues]
    if any(key in doc for key in PLATFORM_KEYS):
        model = WorkloadSpec
    elif "mrtd" in doc or any(f"rtmr{i}" in doc for i in range(4)):
        model = TdxReferenceValues
    elif "measurement" in doc:
        model = SnpReferenceValues
    else:
        model = SgxReferenceValues
    try:
        return kbs_reference_spec(model.model_validate(dict(doc)))
    except ValidationError as exc:
        raise ParseError(f"{path}: {format_validation_error(exc)}") from None
