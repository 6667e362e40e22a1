"""Attestation evidence: parsing, verification and appraisal per TEE.

The API is in the submodules: :mod:`teeflow.attestation.evidence` (``Evidence``, the one
evidence type), :mod:`teeflow.attestation.registry` (``verify_evidence``, the one verifier
registry), the TEE packages ``sgx``, ``tdx``, ``snp``, ``nvidia``, :mod:`teeflow.attestation.
ear` (EAT Attestation Results) and ``collateral``.
"""

from __future__ import annotations

__all__: list[str] = []
