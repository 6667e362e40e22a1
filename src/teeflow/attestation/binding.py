"""Binding of runtime data (nonce, ephemeral key, teeflow claims) into REPORT_DATA.

RCAR (Trustee KBS protocol 0.4.0 as described in DESIGN "RCAR attestation protocol"): the
Attester puts ``SHA-384(RFC 8785 canonical JSON of the runtime-data object)`` into the
64-byte REPORT_DATA field, zero-padded. The runtime-data object has the members
``tee-pubkey`` (a JWK, RFC 7517), ``nonce`` (the verifier's base64 nonce) and, for teeflow
workloads, ``teeflow`` (role, party, package digest, function, resource ids) and
``additional-evidence`` when present. RFC 8785 (JSON Canonicalization Scheme) makes the hash
independent of member order and whitespace.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import rfc8785

from teeflow.errors import ParseError, VerificationError

__all__ = ["REPORT_DATA_SIZE", "check_report_data", "runtime_data_digest"]

#: Size of SGX REPORT_DATA / TDX REPORTDATA / SNP REPORT_DATA in bytes.
REPORT_DATA_SIZE = 64


def runtime_data_digest(
    *,
    tee_pubkey: Mapping[str, Any],
    nonce: str,
    teeflow: Mapping[str, Any] | None = None,
    additional_evidence: str | None = None,
) -> bytes:
    """Return the 64-byte REPORT_DATA value binding ``nonce``, ``tee_pubkey`` and claims.

    Args:
        tee_pubkey: the Attester's ephemeral public key as a JWK mapping (RFC 7517).
        nonce: the verifier-chosen nonce exactly as received (base64 text).
        teeflow: optional teeflow claims (role, party, package digest, function, resources).
        additional_evidence: optional additional-evidence JSON string.

    Returns:
        SHA-384 (48 bytes) of the RFC 8785 canonical JSON, followed by 16 zero bytes.

    Raises:
        ParseError: the members are not JSON-serialisable (RFC 8785 rejects e.g. NaN).
    """
    doc: dict[str, Any] = {"tee-pubkey": dict(tee_pubkey), "nonce": nonce}
    if additional_evidence is not None:
        doc["additional-evidence"] = additional_evidence
    if teeflow is not None:
        doc["teeflow"] = dict(teeflow)
    try:
        canonical = rfc8785.dumps(doc)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ParseError(f"runtime data is not canonicalisable JSON: {exc}") from None
    return hashlib.sha384(canonical).digest().ljust(REPORT_DATA_SIZE, b"\0")


def check_report_data(report_data: bytes, expected: bytes) -> None:
    """Compare REPORT_DATA with the expected binding in constant time.

    Raises:
        VerificationError: lengths differ from 64 bytes or the values differ.
    """
    if len(report_data) != REPORT_DATA_SIZE or len(expected) != REPORT_DATA_SIZE:
        raise VerificationError("report data must be 64 bytes")
    if not hmac.compare_digest(report_data, expected):
        raise VerificationError("report data does not bind the expected nonce and key")
