"""RCAR ``additional_evidence``: the JSON text of a map TEE -> device evidence.

Trustee (``kbs/src/attestation/backend.rs``) reads ``tee-evidence.additional_evidence`` as
follows: the empty string means no additional evidence; anything else is JSON of a map from
a Trustee TEE name (``"nvidia"``, ``"tdx"``, ...) to that attester's evidence, each verified
with the device report data (:func:`teeflow.attestation.binding.device_runtime_data_digest`).
guest-components' attestation agent sends ``""`` when no device attester is configured and
``serde_json`` of the map otherwise; ``"{}"`` therefore also means none.

The text itself (not a re-serialisation) is what the primary evidence binds
(``additional-evidence`` in :func:`teeflow.attestation.binding.runtime_data_digest`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from teeflow.errors import ParseError

__all__ = [
    "MAX_ADDITIONAL_EVIDENCE_CHARS",
    "MAX_ADDITIONAL_TEES",
    "encode_additional_evidence",
    "parse_additional_evidence",
]

#: Largest ``additional_evidence`` text accepted (characters): room for 8 GPUs (~12 KiB each).
MAX_ADDITIONAL_EVIDENCE_CHARS = 192 * 1024
#: Most TEE entries in the map.
MAX_ADDITIONAL_TEES = 8
_TEE_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MAX_DEPTH = 16


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate JSON key {key[:32]!r} in additional evidence")
        out[key] = value
    return out


def _depth(value: Any, level: int = 0) -> None:
    if level > _MAX_DEPTH:
        raise ParseError("additional evidence nests too deeply")
    if isinstance(value, dict):
        for item in value.values():
            _depth(item, level + 1)
    elif isinstance(value, list):
        for item in value:
            _depth(item, level + 1)


def parse_additional_evidence(text: str) -> dict[str, Any]:
    """The map TEE name -> evidence JSON value; ``{}`` for ``""`` or ``"{}"``.

    Args:
        text: the ``additional_evidence`` string as received (at most
            :data:`MAX_ADDITIONAL_EVIDENCE_CHARS`).

    Raises:
        ParseError: too long, not JSON, duplicate keys, not an object, more than
            :data:`MAX_ADDITIONAL_TEES` entries, a key that is not a lower-case TEE name,
            nesting deeper than 16 levels.
    """
    if not isinstance(text, str):
        raise ParseError("additional evidence must be a string")
    if len(text) > MAX_ADDITIONAL_EVIDENCE_CHARS:
        raise ParseError(f"additional evidence longer than {MAX_ADDITIONAL_EVIDENCE_CHARS} chars")
    if not text.strip():
        return {}
    try:
        doc = json.loads(text, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        raise ParseError("additional evidence is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ParseError("additional evidence must be a JSON object (TEE -> evidence)")
    if len(doc) > MAX_ADDITIONAL_TEES:
        raise ParseError(f"additional evidence has more than {MAX_ADDITIONAL_TEES} TEEs")
    for key in doc:
        if not _TEE_NAME.fullmatch(key):
            raise ParseError(f"additional evidence key {key[:32]!r} is not a TEE name")
    _depth(doc)
    return doc


def encode_additional_evidence(evidence: Mapping[str, Any]) -> str:
    """The ``additional_evidence`` text for ``evidence`` (compact JSON; ``""`` when empty).

    Raises:
        ParseError: not JSON-serialisable, or the result is longer than
            :data:`MAX_ADDITIONAL_EVIDENCE_CHARS`.
    """
    if not evidence:
        return ""
    try:
        text = json.dumps(dict(evidence), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParseError(f"additional evidence is not JSON-serialisable: {exc}") from None
    if len(text) > MAX_ADDITIONAL_EVIDENCE_CHARS:
        raise ParseError("additional evidence too large")
    return text
