"""Helpers of ``teeflow quote show|verify`` (one module per evidence type).

* :mod:`.common` — options, outcome, the JSON report (SGX keys for every type);
* :mod:`.sgx` — Intel SGX DCAP quotes (issue 2 §5 contract);
* :mod:`.tdx` — Intel TDX DCAP quotes;
* :mod:`.snp` — AMD SEV-SNP attestation reports;
* :mod:`.gpu` — NVIDIA H100 SPDM evidence (Trustee hex, nvtrust JSON).

The type of a file is found by :func:`teeflow.attestation.detect.detect_evidence`.
"""

from __future__ import annotations

from teeflow.cli.evidence.common import Options, Outcome, verify_report

__all__ = ["Options", "Outcome", "verify_report"]
