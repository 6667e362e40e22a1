"""NVIDIA Hopper and Blackwell confidential-computing GPU evidence: parse -> verify -> appraise.

* :mod:`.spdm` — SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS transcripts
  (:func:`parse_transcript`; ``ParseError``).
* :func:`load_trustee_evidence` / :func:`load_nvtrust_evidence` — the two wire shapes ->
  :class:`GpuEvidence`.
* :func:`verify` — ECDSA P-384 transcript signature by the device leaf certificate, chain to
  the pinned NVIDIA Device Identity CA, FWID -> :class:`VerifiedGpuEvidence`
  (``VerificationError``).
* :func:`appraise_gpu` — verified evidence + :class:`GpuPolicy` -> ``AttestationResult``
  (tee ``"nvidia-gpu"``), the submodule ``gpu0``.. next to ``cpu0`` in an EAR (see
  :mod:`teeflow.attestation.composite`).

Not covered offline: RIM measurement comparison and OCSP revocation (NVIDIA online services).
"""

from __future__ import annotations

from .policy import RIM_WARNING, GpuPolicy, appraise_gpu
from .spdm import SpdmTranscript, parse_transcript, parse_transcript_hex
from .verify import (
    GpuEvidence,
    VerifiedGpuEvidence,
    load_nvtrust_evidence,
    load_trustee_evidence,
    verify,
)

__all__ = [
    "RIM_WARNING",
    "GpuEvidence",
    "GpuPolicy",
    "SpdmTranscript",
    "VerifiedGpuEvidence",
    "appraise_gpu",
    "load_nvtrust_evidence",
    "load_trustee_evidence",
    "parse_transcript",
    "parse_transcript_hex",
    "verify",
]
