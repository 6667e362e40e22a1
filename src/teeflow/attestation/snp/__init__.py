"""AMD SEV-SNP evidence: parse -> verify -> appraise (see ``docs/architecture.md``).

* :func:`parse_report` — 1184 bytes -> :class:`AttestationReport` (``ParseError``).
* :func:`verify` — report + VCEK/VLEK certificate (+ intermediates, anchors, CRL) + ``now``
  -> :class:`VerifiedSnpEvidence` (``VerificationError`` / ``CollateralError``).
* :func:`appraise` — verified evidence + :class:`SnpPolicy` -> ``AttestationResult``.

This package never imports another TEE's subpackage (``sgx``, ``tdx``).
"""

from __future__ import annotations

from .abi import (
    AttestationReport,
    FirmwareVersion,
    GuestPolicy,
    PlatformInfo,
    SigningKey,
    SnpProduct,
    TcbVersion,
    parse_report,
)
from .certs import AmdExtensions, load_certificate, load_certificates, parse_amd_extensions
from .policy import SnpPolicy, TcbMinimum, appraise
from .verify import VerifiedSnpEvidence, verify

__all__ = [
    "AmdExtensions",
    "AttestationReport",
    "FirmwareVersion",
    "GuestPolicy",
    "PlatformInfo",
    "SigningKey",
    "SnpPolicy",
    "SnpProduct",
    "TcbMinimum",
    "TcbVersion",
    "VerifiedSnpEvidence",
    "appraise",
    "load_certificate",
    "load_certificates",
    "parse_amd_extensions",
    "parse_report",
    "verify",
]
