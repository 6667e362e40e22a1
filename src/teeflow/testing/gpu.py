"""GPU stand-in of the test kit: emulated NVIDIA GPUs behind the real NVML attester.

The real :class:`teeflow.platform.nvidia.GpuAttester` runs against
:class:`teeflow.platform.emulated_nvidia.EmulatedNvml` (the ``pynvml`` functions it calls,
answering with real-format SPDM 1.1 transcripts and device chains under the EMULATED NVIDIA
root). Evidence made here is accepted only where the agreement allows emulation
(``allow_emulated``) and the verifier holds the emulated root among its GPU anchors.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from teeflow.attestation.additional_evidence import encode_additional_evidence
from teeflow.attestation.nvidia.trustee import NVIDIA_TEE, gpu_nonce
from teeflow.attestation.trust import TrustAnchor
from teeflow.platform.emulated_nvidia import EmulatedNvidiaAuthority, EmulatedNvml
from teeflow.platform.nvidia import GpuAttester

__all__ = ["GpuStandIn", "gpu_stand_in"]


class GpuStandIn:
    """Emulated GPUs plus the real attester over them.

    Attributes:
        authority: the emulated NVIDIA root (its :meth:`anchor` goes to the verifier).
        nvml: the NVML stand-in (``calls`` records the report and certificate calls).
        attester: the real :class:`GpuAttester` over ``nvml``.
    """

    def __init__(self, authority: EmulatedNvidiaAuthority, nvml: EmulatedNvml) -> None:
        self.authority = authority
        self.nvml = nvml
        self.attester = GpuAttester(nvml, kind="emulated")

    def anchor(self) -> TrustAnchor:
        """The emulated root as a trust anchor (``emulated=True``)."""
        return self.authority.trust_anchor()

    def additional_evidence(self, *, tee_pubkey: Mapping[str, Any], nonce: str) -> str:
        """The RCAR ``additional_evidence`` text for a session (Trustee's device nonce).

        Raises:
            PlatformError: the stand-in refuses (CC off, devtools, no GPU).
            ParseError: the runtime data is not JSON-serialisable.
        """
        spdm_nonce = gpu_nonce(tee_pubkey=tee_pubkey, nonce=nonce)
        return encode_additional_evidence({NVIDIA_TEE: self.attester.evidence(spdm_nonce)})


def gpu_stand_in(
    arch: str = "HOPPER",
    *,
    count: int = 1,
    now: datetime | None = None,
    authority: EmulatedNvidiaAuthority | None = None,
    cc_enabled: bool = True,
    devtools: bool = False,
    driver_version: str = "590.12",
) -> GpuStandIn:
    """``count`` emulated GPUs of ``arch`` (``HOPPER``/``BLACKWELL``) under ``authority``
    (default: a fresh in-memory root valid from ``now``).

    Raises:
        PlatformError: unknown architecture.
    """
    auth = authority if authority is not None else EmulatedNvidiaAuthority.generate(now=now)
    gpus = [auth.device(arch, index=i, driver_version=driver_version) for i in range(count)]
    return GpuStandIn(auth, EmulatedNvml(gpus, cc_enabled=cc_enabled, devtools=devtools))
