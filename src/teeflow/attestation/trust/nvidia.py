"""The NVIDIA Device Identity CA, the root of NVIDIA GPU device-identity certificate chains.

Every Hopper (H100) confidential-computing GPU holds a device certificate chain
``GH100 A01 GSP FMC LF -> GH100 A01 GSP BROM -> NVIDIA GH100 Provisioner ICA 1 ->
NVIDIA GH100 Identity -> NVIDIA Device Identity CA`` (ECDSA P-384 / SHA-384, validity to
9999-12-31). The root shipped here is the one NVIDIA's own verifier pins
(NVIDIA/nvtrust ``guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/certs/
verifier_device_root.pem``, Apache-2.0); it is checked against
:data:`NVIDIA_DEVICE_IDENTITY_CA_SHA256` on load.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from cryptography import x509

from teeflow.attestation.trust import TrustAnchor

__all__ = ["NVIDIA_DEVICE_IDENTITY_CA_SHA256", "nvidia_device_identity_ca"]

#: SHA-256 of the DER of ``CN=NVIDIA Device Identity CA, O=NVIDIA`` (serial
#: 0x2d3670b1ca100411c1fec0e82a065b54, valid 2021-11-05 .. 9999-12-31, ECDSA P-384).
NVIDIA_DEVICE_IDENTITY_CA_SHA256 = (
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
)


@cache
def nvidia_device_identity_ca() -> TrustAnchor:
    """The NVIDIA Device Identity CA shipped with teeflow, checked against its pinned
    SHA-256 fingerprint (package data ``nvidia_device_identity_ca.pem``).

    Raises:
        RuntimeError: the packaged file does not match the pin (a packaging error).
    """
    pem = (
        resources.files("teeflow.attestation.trust")
        .joinpath("nvidia_device_identity_ca.pem")
        .read_bytes()
    )
    cert = x509.load_pem_x509_certificate(pem)
    anchor = TrustAnchor(certificate=cert, name="NVIDIA Device Identity CA", emulated=False)
    if anchor.fingerprint != NVIDIA_DEVICE_IDENTITY_CA_SHA256:  # pragma: no cover - packaging
        raise RuntimeError(
            "packaged NVIDIA Device Identity CA does not match its pinned fingerprint"
        )
    return anchor
