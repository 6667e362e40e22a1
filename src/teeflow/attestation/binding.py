"""Binding of runtime data (nonce, ephemeral key, teeflow claims) into REPORT_DATA.

RCAR (Trustee KBS protocol 0.4.0 as described in DESIGN "RCAR attestation protocol"): the
Attester puts ``SHA-384(RFC 8785 canonical JSON of the runtime-data object)`` into the
64-byte REPORT_DATA field, zero-padded. The runtime-data object has the members
``tee-pubkey`` (a JWK, RFC 7517), ``nonce`` (the verifier's base64 nonce),
``additional-evidence`` (the ``tee-evidence.additional_evidence`` JSON text, ``""`` when
there is none — always present) and, for teeflow workloads only, ``teeflow`` (role, party,
package digest, function, resource ids). RFC 8785 (JSON Canonicalization Scheme) makes the
hash independent of member order and whitespace.

Trustee compatibility: without ``teeflow`` this is exactly what Trustee binds for the primary
evidence — the guest-components ``kbs_protocol`` client hashes
``{"tee-pubkey", "nonce", "additional-evidence"}`` (``additional-evidence`` is ``""`` without
device attesters) with ``serde_json_canonicalizer`` (RFC 8785) and SHA-384 (the default when
the challenge selects no algorithm), and Trustee's KBS builds the same object for its
attestation service, whose SGX verifier zero-pads the 48-byte digest to 64 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import rfc8785

from teeflow.errors import ParseError, VerificationError

__all__ = [
    "REPORT_DATA_SIZE",
    "check_report_data",
    "device_runtime_data_digest",
    "runtime_data_digest",
]

#: Size of SGX REPORT_DATA / TDX REPORTDATA / SNP REPORT_DATA in bytes.
REPORT_DATA_SIZE = 64


def runtime_data_digest(
    *,
    tee_pubkey: Mapping[str, Any],
    nonce: str,
    teeflow: Mapping[str, Any] | None = None,
    additional_evidence: str = "",
) -> bytes:
    """Return the 64-byte REPORT_DATA value binding ``nonce``, ``tee_pubkey`` and claims.

    Args:
        tee_pubkey: the Attester's ephemeral public key as a JWK mapping (RFC 7517).
        nonce: the verifier-chosen nonce exactly as received (base64 text).
        teeflow: optional teeflow claims (role, party, package digest, function, resources);
            omitted from the hashed object when None.
        additional_evidence: the additional-evidence JSON string exactly as sent in
            ``tee-evidence.additional_evidence``; ``""`` (the default) when there is none.
            Always part of the hashed object, as in Trustee.

    Returns:
        SHA-384 (48 bytes) of the RFC 8785 canonical JSON, followed by 16 zero bytes.

    Raises:
        ParseError: the members are not JSON-serialisable (RFC 8785 rejects e.g. NaN).
    """
    doc: dict[str, Any] = {
        "tee-pubkey": dict(tee_pubkey),
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    }
    if teeflow is not None:
        doc["teeflow"] = dict(teeflow)
    try:
        canonical = rfc8785.dumps(doc)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ParseError(f"runtime data is not canonicalisable JSON: {exc}") from None
    return hashlib.sha384(canonical).digest().ljust(REPORT_DATA_SIZE, b"\0")


def device_runtime_data_digest(*, tee_pubkey: Mapping[str, Any], nonce: str) -> bytes:
    """SHA-384 (48 bytes) of the RFC 8785 JSON of ``{"tee-pubkey", "nonce"}``: the report
    data Trustee gives every *additional* (device) attester and checks its evidence against.

    guest-components ``kbs_protocol`` (``get_composite_evidence``) hashes the RCAR runtime
    data without ``additional-evidence`` and hands the digest to the device attesters; the
    Trustee KBS builds the same object for additional evidence (``kbs_evidence_runtime_data``
    in ``kbs/src/attestation/backend.rs``). The primary evidence then binds the device
    evidence through ``additional-evidence`` (:func:`runtime_data_digest`).

    Raises:
        ParseError: the members are not JSON-serialisable.
    """
    doc: dict[str, Any] = {"tee-pubkey": dict(tee_pubkey), "nonce": nonce}
    try:
        canonical = rfc8785.dumps(doc)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ParseError(f"runtime data is not canonicalisable JSON: {exc}") from None
    return hashlib.sha384(canonical).digest()


def check_report_data(report_data: bytes, expected: bytes) -> None:
    """Compare REPORT_DATA with the expected binding in constant time.

    Raises:
        VerificationError: lengths differ from 64 bytes or the values differ.
    """
    if len(report_data) != REPORT_DATA_SIZE or len(expected) != REPORT_DATA_SIZE:
        raise VerificationError("report data must be 64 bytes")
    if not hmac.compare_digest(report_data, expected):
        raise VerificationError("report data does not bind the expected nonce and key")
