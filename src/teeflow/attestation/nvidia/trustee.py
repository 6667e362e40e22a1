"""NVIDIA GPU evidence in Trustee's shape (RCAR additional evidence ``"nvidia"``).

Shape (Trustee ``deps/verifier/src/nvidia/mod.rs`` ``NvDeviceEvidence``, produced by
guest-components' ``nvidia`` attester from NVIDIA's attestation SDK)::

    {"device_evidence_list": [
        {"arch": "HOPPER" | "BLACKWELL",        # case-insensitive
         "uuid": "GPU-…",                       # optional, informational
         "evidence": "<hex or base64 of the SPDM GET_MEASUREMENTS transcript>",
         "certificate": "<base64 of the PEM device certificate chain, leaf first>"}]}

Unknown members are ignored (as serde does); ``evidence`` is hex-decoded first and base64-
decoded when that fails (Trustee's order). NVSwitch entries (``LS10``) are refused: teeflow
appraises GPUs only.

Nonce (freshness): Trustee hands every additional attester the SHA-384 of the RFC 8785 JSON
of ``{"tee-pubkey", "nonce"}`` (:func:`teeflow.attestation.binding.device_runtime_data_digest`)
and the NVIDIA attester uses its first 32 bytes as the SPDM nonce; :func:`gpu_nonce` computes
it, and the verifier requires it in every GET_MEASUREMENTS request.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from teeflow.attestation.binding import device_runtime_data_digest
from teeflow.attestation.nvidia.spdm import NONCE_SIZE, parse_transcript
from teeflow.attestation.nvidia.verify import GpuEvidence
from teeflow.errors import ParseError

__all__ = [
    "ARCHITECTURES",
    "MAX_DEVICES",
    "NVIDIA_TEE",
    "gpu_nonce",
    "load_device_evidence_list",
    "load_trustee_json",
]

#: The RCAR additional-evidence key (Trustee ``Tee::Nvidia``).
NVIDIA_TEE = "nvidia"
#: GPU architectures accepted in ``arch``.
ARCHITECTURES = frozenset({"HOPPER", "BLACKWELL"})
#: Most devices in one ``device_evidence_list``.
MAX_DEVICES = 16
_MAX_FIELD = 64 * 1024


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate JSON key {key[:32]!r}")
        out[key] = value
    return out


def load_trustee_json(data: str | bytes) -> tuple[GpuEvidence, ...]:
    """NVIDIA evidence from JSON text: ``{"device_evidence_list": [...]}`` or the RCAR
    additional-evidence map ``{"nvidia": {...}}`` (other TEE keys ignored).

    Raises:
        ParseError: larger than 4 MiB, not UTF-8 JSON, duplicate keys, neither shape, or
            what :func:`load_device_evidence_list` refuses.
    """
    if len(data) > 4 << 20:
        raise ParseError("NVIDIA evidence JSON larger than 4 MiB")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_pairs)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("NVIDIA evidence is not valid UTF-8 JSON") from None
    if isinstance(doc, Mapping) and "device_evidence_list" not in doc and NVIDIA_TEE in doc:
        doc = doc[NVIDIA_TEE]
    return load_device_evidence_list(doc)


def gpu_nonce(*, tee_pubkey: Mapping[str, Any], nonce: str) -> bytes:
    """The 32-byte SPDM nonce of an RCAR session's GPUs (module docstring).

    Raises:
        ParseError: the runtime data is not JSON-serialisable.
    """
    return device_runtime_data_digest(tee_pubkey=tee_pubkey, nonce=nonce)[:NONCE_SIZE]


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise ParseError(f"{where}.{key} must be a non-empty string of at most 64 KiB")
    return value


def _evidence_bytes(text: str, where: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"{where}.evidence is neither hex nor base64") from None


def load_device_evidence_list(value: object) -> tuple[GpuEvidence, ...]:
    """Parse Trustee's NVIDIA evidence (the JSON value under ``"nvidia"``).

    Args:
        value: the decoded JSON value (a mapping with ``device_evidence_list``).

    Returns:
        One :class:`~teeflow.attestation.nvidia.verify.GpuEvidence` per device, in list
        order (``source`` ``"nvidia[i]"``, ``declared_arch`` from ``arch``).

    Raises:
        ParseError: not an object, no list of 1..:data:`MAX_DEVICES` objects, an ``arch``
            that is not ``HOPPER``/``BLACKWELL``, missing or undecodable ``evidence`` /
            ``certificate``, a chain over 64 KiB, a transcript that does not parse.
    """
    if not isinstance(value, Mapping):
        raise ParseError("nvidia evidence must be an object with device_evidence_list")
    devices = value.get("device_evidence_list")
    if not isinstance(devices, list) or not 1 <= len(devices) <= MAX_DEVICES:
        raise ParseError(f"device_evidence_list must hold 1..{MAX_DEVICES} devices")
    out: list[GpuEvidence] = []
    for i, entry in enumerate(devices):
        where = f"nvidia[{i}]"
        if not isinstance(entry, Mapping):
            raise ParseError(f"{where} is not an object")
        arch = _text(entry, "arch", where).strip().upper()
        if arch not in ARCHITECTURES:
            raise ParseError(f"{where}: architecture {arch[:16]!r} is not a supported GPU")
        transcript = parse_transcript(_evidence_bytes(_text(entry, "evidence", where), where))
        try:
            chain = base64.b64decode(_text(entry, "certificate", where), validate=True)
        except (binascii.Error, ValueError):
            raise ParseError(f"{where}.certificate is not base64") from None
        if len(chain) > _MAX_FIELD:
            raise ParseError(f"{where}: certificate chain larger than 64 KiB")
        out.append(GpuEvidence(transcript, chain, declared_arch=arch, source=where))
    return tuple(out)
