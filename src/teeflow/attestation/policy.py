"""Appraisal Policy base: policies are data (pydantic v2 models) loaded from YAML or JSON.

An Appraisal Policy (RFC 9334 §2, "Appraisal Policy for Evidence") is the document a Verifier
applies to verified Evidence. In teeflow every TEE's policy (``SgxPolicy``, later TDX and
SEV-SNP) derives from :class:`PolicyModel`: a frozen pydantic model that forbids unknown keys,
so a typo in a policy file (``allow_emulate: true``) is an error instead of a silently ignored
line.

Loading (:meth:`PolicyModel.from_file`) is bounded (at most :data:`MAX_POLICY_BYTES`), uses
``yaml.SafeLoader`` and rejects duplicate keys in YAML and JSON (a second ``allow_emulated``
further down a file must not override the first without anyone noticing). Any malformed or
invalid document raises :class:`teeflow.errors.ParseError`.

Hex helpers: :data:`Hex8`, :data:`Hex16`, :data:`Hex32`, :data:`Hex48`, :data:`Hex64` are
``str`` fields that accept upper- or lower-case hex (optionally ``0x``-prefixed) of exactly
that many bytes and normalise to lower case (:data:`HexPrefix64`: 1..64 bytes).

Shared policy parts: :data:`AcceptedTcbStatuses` and :data:`AcceptedAdvisories` (Intel DCAP
TCB acceptance, SGX and TDX) and :class:`ReportDataPolicy` (the REPORT_DATA exact/prefix rule
of SGX, TDX and SEV-SNP policies).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

import rfc8785
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from teeflow.attestation.evidence import TcbStatus
from teeflow.errors import ParseError

__all__ = [
    "MAX_POLICY_BYTES",
    "AcceptedAdvisories",
    "AcceptedTcbStatuses",
    "Hex8",
    "Hex16",
    "Hex32",
    "Hex48",
    "Hex64",
    "HexPrefix64",
    "PolicyModel",
    "ReportDataPolicy",
    "load_policy_document",
    "normalize_hex",
]

#: Upper bound on a policy file's size in bytes (policies are small documents).
MAX_POLICY_BYTES = 1 << 20


def normalize_hex(value: object, *, length: int | None, max_length: int | None = None) -> str:
    """Validate a hex string and return it lower-case without a ``0x`` prefix.

    Args:
        value: the input (must be ``str``).
        length: exact length in **bytes**, or None for any length in ``1..max_length``.
        max_length: upper bound in bytes when ``length`` is None.

    Raises:
        ValueError: not a string, not hex, odd number of digits or wrong length (pydantic turns
            this into a validation error, which :meth:`PolicyModel.from_mapping` reports as
            :class:`~teeflow.errors.ParseError`).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML reads unquoted all-digit hex (and 0x...) as a number, losing leading zeros.
        raise ValueError("hex values must be strings (quote them in YAML)")
    if not isinstance(value, str):
        raise ValueError("expected a hex string")
    text = value.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError("not a hex string") from None
    if len(text) != 2 * len(raw):  # bytes.fromhex tolerates inner spaces; we do not
        raise ValueError("not a hex string")
    if length is not None and len(raw) != length:
        raise ValueError(f"expected {length} bytes ({2 * length} hex digits), got {len(raw)}")
    if length is None and not 1 <= len(raw) <= (max_length or len(raw)):
        raise ValueError(f"expected 1..{max_length} bytes of hex, got {len(raw)}")
    return raw.hex()


def _hex_validator(length: int | None, max_length: int | None = None) -> Callable[[object], str]:
    def check(value: object) -> str:
        return normalize_hex(value, length=length, max_length=max_length)

    return check


#: 16 bytes as 32 hex digits (e.g. CPUSVN), normalised to lower case.
Hex16 = Annotated[str, BeforeValidator(_hex_validator(16))]
#: 32 bytes as 64 hex digits (MRENCLAVE, MRSIGNER), normalised to lower case.
Hex32 = Annotated[str, BeforeValidator(_hex_validator(32))]
#: 64 bytes as 128 hex digits (REPORT_DATA), normalised to lower case.
Hex64 = Annotated[str, BeforeValidator(_hex_validator(64))]
#: 1..64 bytes of hex (a REPORT_DATA prefix), normalised to lower case.
HexPrefix64 = Annotated[str, BeforeValidator(_hex_validator(None, 64))]
#: 8 bytes as 16 hex digits (TDX TD_ATTRIBUTES, XFAM in stored byte order), lower case.
Hex8 = Annotated[str, BeforeValidator(_hex_validator(8))]
#: 48 bytes as 96 hex digits (SHA-384 values: MRTD, RTMRs, SNP MEASUREMENT, GPU FWIDs).
Hex48 = Annotated[str, BeforeValidator(_hex_validator(48))]


def _normalise_advisories(value: object) -> object:
    if isinstance(value, list | tuple | set | frozenset):
        out = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise ValueError("advisory IDs must be non-empty strings")
            out.append(item.strip().upper())
        return frozenset(out)
    return value


def _never_revoked(value: frozenset[TcbStatus]) -> frozenset[TcbStatus]:
    if TcbStatus.REVOKED in value:
        raise ValueError("Revoked can never be an accepted TCB status")
    return value


def _sorted_strings(value: frozenset[Any] | None) -> list[str] | None:
    return None if value is None else sorted(str(v) for v in value)


#: Intel TCB statuses a DCAP policy accepts (``Revoked`` rejected); serialised sorted.
AcceptedTcbStatuses = Annotated[
    frozenset[TcbStatus],
    AfterValidator(_never_revoked),
    PlainSerializer(_sorted_strings),
]
#: Intel advisory IDs (``INTEL-SA-xxxxx``) a DCAP policy accepts, stripped and upper-cased
#: (None = every advisory that comes with an accepted status); serialised sorted.
AcceptedAdvisories = Annotated[
    frozenset[str] | None,
    BeforeValidator(_normalise_advisories),
    PlainSerializer(_sorted_strings),
]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_policy_document(path: str | Path) -> dict[str, Any]:
    """Read a policy file (``.json`` → JSON, anything else → YAML) into a mapping.

    Args:
        path: file path; at most :data:`MAX_POLICY_BYTES` bytes, UTF-8.

    Returns:
        The top-level mapping (not yet validated against a model).

    Raises:
        ParseError: the file cannot be read, is too large, is not UTF-8, is not valid
            YAML/JSON, has duplicate keys, or its top level is not a mapping.
    """
    import yaml  # PyYAML loads with the first policy file read (not with the models)

    from teeflow._yaml import DuplicateKeyError, safe_load_unique

    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ParseError(f"cannot read policy file {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise ParseError(f"policy file {p} larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"policy file {p} is not UTF-8") from None
    doc: object
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(text, object_pairs_hook=_reject_duplicates)
        else:
            doc = safe_load_unique(text)
    except ParseError as exc:
        raise ParseError(f"policy file {p}: {exc}") from None
    except DuplicateKeyError as exc:
        raise ParseError(f"policy file {p}: {exc.problem} at line {exc.line}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise ParseError(f"policy file {p} is not valid {_kind(p)}: {exc}") from None
    except RecursionError:
        raise ParseError(f"policy file {p} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ParseError(f"policy file {p}: top level must be a mapping")
    return doc


def _kind(p: Path) -> str:
    return "JSON" if p.suffix.lower() == ".json" else "YAML"


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class PolicyModel(BaseModel):
    """Base of every Appraisal Policy model: frozen, unknown keys forbidden.

    Attributes:
        policy_id: optional human-chosen identifier (``"teeflow/sgx/aggregator-v3"``). When
            absent, :meth:`identifier` returns a content digest instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    policy_id: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Validate a mapping (parsed YAML/JSON) into a policy.

        Raises:
            ParseError: unknown keys, wrong types, malformed hex or inconsistent settings; the
                message names every offending field.
        """
        if not isinstance(data, Mapping):
            raise ParseError(f"{cls.__name__}: policy document must be a mapping")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ParseError(f"invalid {cls.__name__}: {_format_validation_error(exc)}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Load a policy from a YAML (``.yaml``/``.yml``/other) or JSON (``.json``) file.

        Raises:
            ParseError: see :func:`load_policy_document` and :meth:`from_mapping`.
        """
        return cls.from_mapping(load_policy_document(path))

    def to_mapping(self) -> dict[str, Any]:
        """JSON-compatible mapping of this policy (sets as sorted lists); ``from_mapping``
        of the result gives an equal policy."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_mapping` (keys in field order)."""
        import yaml

        return yaml.safe_dump(self.to_mapping(), sort_keys=False)

    def digest(self) -> str:
        """SHA-256 (lower-case hex) of the RFC 8785 canonical JSON of :meth:`to_mapping`."""
        canonical: bytes = rfc8785.dumps(self.to_mapping())
        return hashlib.sha256(canonical).hexdigest()

    def identifier(self) -> str:
        """``policy_id`` when set, else ``"sha256:<digest>"`` (``ear.appraisal-policy-id``)."""
        return self.policy_id if self.policy_id else f"sha256:{self.digest()}"


class ReportDataPolicy(PolicyModel):
    """Base of policies that bind REPORT_DATA (SGX, TDX, SEV-SNP).

    Subclasses declare ``report_data: Hex64 | None`` (exact 64-byte value) and
    ``report_data_prefix: HexPrefix64 | None`` (1..64-byte prefix) among their own fields
    (so the field order of each policy stays its own); this base forbids setting both and
    provides :meth:`with_report_data`.
    """

    if TYPE_CHECKING:
        report_data: str | None
        report_data_prefix: str | None

    @model_validator(mode="after")
    def _one_report_data_rule(self) -> Self:
        if self.report_data is not None and self.report_data_prefix is not None:
            raise ValueError("set report_data or report_data_prefix, not both")
        return self

    def with_report_data(self, report_data: bytes) -> Self:
        """A copy requiring exactly ``report_data`` (64 bytes), e.g. a per-session nonce
        binding; clears ``report_data_prefix``.

        Raises:
            ValueError: ``report_data`` is not 64 bytes.
        """
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        update = {"report_data": report_data.hex(), "report_data_prefix": None}
        return self.model_copy(update=update)
