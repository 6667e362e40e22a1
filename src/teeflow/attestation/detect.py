"""Evidence-type detection: which parser a blob of attestation evidence is for.

:func:`detect_evidence` looks only at framing bytes (never at signatures) and is total and
bounded: any input gives an :class:`EvidenceKind` or a :class:`~teeflow.errors.ParseError`.
The kind decides the pipeline; the chosen parser still checks everything.

Rules (first match wins):

* **Intel DCAP quote** — at least a 48-byte header; ``version`` (u16 LE at 0) is 3, 4 or 5
  and ``att_key_type`` (u16 at 2) is 2 (ECDSA-P256) or 3 (ECDSA-P384); ``tee_type``
  (u32 at 4) 0x00 → :attr:`EvidenceKind.SGX_QUOTE`, 0x81 → :attr:`EvidenceKind.TDX_QUOTE`
  (Intel TDX DCAP Quote Generation Library and Quote Verification Library API, "Quote
  Header"; Intel SGX ECDSA Quote Library API, A.4).
* **AMD SEV-SNP ATTESTATION_REPORT** — exactly 1184 (0x4A0) bytes with ``VERSION`` (u32 LE
  at 0) 2..5 (AMD SEV-SNP Firmware ABI Specification #56860, Table 23). A DCAP header never
  matches: its bytes 2..3 (att_key_type) are non-zero, the SNP version's are zero.
* **NVIDIA nvtrust JSON** — after leading whitespace (and a UTF-8 BOM) the text starts with
  ``[`` (a JSON list of per-GPU evidence objects; NVIDIA nvtrust ``gpu_evidence.json``).
* **NVIDIA evidence in Trustee's JSON shape** — the text starts with ``{`` and names
  ``"device_evidence_list"`` or ``"nvidia"``: either
  ``{"device_evidence_list": [...]}`` or the RCAR additional-evidence map
  ``{"nvidia": {...}}`` (:mod:`teeflow.attestation.nvidia.trustee`).
* **NVIDIA SPDM hex** — after stripping whitespace: only hex digits, even length, starting
  with ``11e0`` (SPDM 1.1 GET_MEASUREMENTS request, DMTF DSP0274 1.1 §10.11; the Trustee
  ``hopperAttestationReport`` text form).

Anything else — including binary SPDM transcripts, which have no self-describing framing
beyond two bytes — is a ``ParseError`` naming what was seen.
"""

from __future__ import annotations

import re
import struct
from enum import StrEnum

from teeflow.errors import ParseError

__all__ = ["MAX_EVIDENCE_BYTES", "SNP_REPORT_SIZE", "EvidenceKind", "detect_evidence"]

#: Largest evidence accepted (bytes): the nvtrust 8-GPU JSON is ~100 KiB.
MAX_EVIDENCE_BYTES = 4 << 20
#: Size of an SEV-SNP ATTESTATION_REPORT (bytes).
SNP_REPORT_SIZE = 0x4A0

_DCAP_HEADER = 48
_TEE_SGX = 0x00
_TEE_TDX = 0x81
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2})+")
_WS = b" \t\r\n"


class EvidenceKind(StrEnum):
    """The evidence formats teeflow verifies (value = the CLI's name for it)."""

    SGX_QUOTE = "sgx-quote"
    TDX_QUOTE = "tdx-quote"
    SNP_REPORT = "snp-report"
    NVIDIA_SPDM_HEX = "nvidia-spdm-hex"
    NVIDIA_NVTRUST_JSON = "nvidia-nvtrust-json"
    NVIDIA_TRUSTEE_JSON = "nvidia-trustee-json"


def _dcap(data: bytes) -> EvidenceKind | None:
    if len(data) < _DCAP_HEADER:
        return None
    version, att_key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    if version not in (3, 4, 5) or att_key_type not in (2, 3):
        return None
    if tee_type == _TEE_SGX:
        return EvidenceKind.SGX_QUOTE
    if tee_type == _TEE_TDX:
        return EvidenceKind.TDX_QUOTE
    raise ParseError(f"DCAP quote v{version} with unknown TEE type {tee_type:#x}")


def detect_evidence(data: bytes) -> EvidenceKind:
    """Classify ``data`` by its framing (see the module docstring for the rules).

    Args:
        data: the evidence file's bytes (at most :data:`MAX_EVIDENCE_BYTES`).

    Returns:
        The :class:`EvidenceKind`.

    Raises:
        ParseError: not bytes, empty, larger than :data:`MAX_EVIDENCE_BYTES`, a DCAP header
            with an unknown TEE type, or no rule matches.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError(f"evidence must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not raw:
        raise ParseError("evidence is empty")
    if len(raw) > MAX_EVIDENCE_BYTES:
        raise ParseError(f"evidence too large: {len(raw)} bytes > {MAX_EVIDENCE_BYTES}")
    kind = _dcap(raw)
    if kind is not None:
        return kind
    if len(raw) == SNP_REPORT_SIZE and 2 <= struct.unpack_from("<I", raw, 0)[0] <= 5:
        return EvidenceKind.SNP_REPORT
    text = raw.removeprefix(b"\xef\xbb\xbf").strip(_WS)
    if text.startswith(b"["):
        return EvidenceKind.NVIDIA_NVTRUST_JSON
    if text.startswith(b"{") and (b'"device_evidence_list"' in text or b'"nvidia"' in text):
        return EvidenceKind.NVIDIA_TRUSTEE_JSON
    if text[:4].lower() == b"11e0" and _HEX.fullmatch(text) is not None:
        return EvidenceKind.NVIDIA_SPDM_HEX
    head = raw[:8].hex()
    raise ParseError(
        f"unknown evidence format ({len(raw)} bytes, starting {head}): not a DCAP quote, "
        "SEV-SNP report, NVIDIA SPDM hex transcript, nvtrust or Trustee JSON"
    )
