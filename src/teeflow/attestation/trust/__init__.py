"""Trust anchors shipped as package data (vendor roots and signing certificates).

The Intel SGX Root CA (pinned by SHA-256 fingerprint) anchors every Intel DCAP chain:
PCK certificates, TCB Info / QE Identity signing certificates and CRL issuers
(Intel SGX DCAP ECDSA Attestation, "PCK Certificate and CRL Profile Specification").
The emulation root of :mod:`teeflow.platform.emulated` is *not* here: it is generated
per machine and is only trusted when a caller passes it explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "TrustAnchor",
    "intel_sgx_root_ca",
    "intel_tcb_signing_certificates",
]

#: SHA-256 of the DER of Intel's SGX Root CA (CN=Intel SGX Root CA, valid 2018-05-21..2049-12-31).
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


@dataclass(frozen=True)
class TrustAnchor:
    """A root certificate a Verifier trusts.

    Attributes:
        certificate: the self-signed root.
        name: a short human label (``"Intel SGX Root CA"``).
        emulated: True for a teeflow emulation root; evidence chaining to it is never
            hardware evidence, and appraisal denies it unless the policy allows emulation.
    """

    certificate: x509.Certificate
    name: str
    emulated: bool = False

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, lower-case hex."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


@cache
def intel_sgx_root_ca() -> TrustAnchor:
    """The Intel SGX Root CA shipped with teeflow, checked against its pinned fingerprint."""
    cert = x509.load_pem_x509_certificate(_read("intel_sgx_root_ca.pem"))
    anchor = TrustAnchor(certificate=cert, name="Intel SGX Root CA", emulated=False)
    if anchor.fingerprint != INTEL_SGX_ROOT_CA_SHA256:  # pragma: no cover - packaging error
        raise RuntimeError("packaged Intel SGX Root CA does not match its pinned fingerprint")
    return anchor


@cache
def intel_tcb_signing_certificates() -> tuple[x509.Certificate, ...]:
    """Intel SGX TCB Signing certificates (2018-2025 and 2025-2032), leaf certificates only.

    Used to verify TCB Info and QE Identity when a collateral set has no issuer chain;
    callers must still validate them up to the root CA.
    """
    out: list[x509.Certificate] = []
    for name in ("intel_sgx_tcb_signing_2018.pem", "intel_sgx_tcb_signing_2025.pem"):
        certs = x509.load_pem_x509_certificates(_read(name))
        out.append(certs[0])
    return tuple(out)
