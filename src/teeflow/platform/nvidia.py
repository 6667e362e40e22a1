"""NVIDIA confidential-computing GPU attester through NVML (``nvidia-ml-py``, extra ``gpu``).

:class:`GpuAttester` collects, for every GPU NVML lists, the CC attestation report (an SPDM
1.1 GET_MEASUREMENTS transcript over the caller's 32-byte nonce,
``nvmlDeviceGetConfComputeGpuAttestationReport``) and the device certificate chain
(``nvmlDeviceGetConfComputeGpuCertificate``, member ``attestationCertChain``, PEM), and
returns them in Trustee's NVIDIA evidence shape (:mod:`teeflow.attestation.nvidia.trustee`)::

    {"device_evidence_list": [{"arch": "HOPPER", "uuid": "GPU-…",
                               "evidence": "<base64 transcript>",
                               "certificate": "<base64 PEM chain>"}, ...]}

which the RCAR client sends as ``additional_evidence`` ``{"nvidia": ...}``.

It refuses (``PlatformError``) when NVML cannot be loaded, no GPU is present, the system's
CC feature is off or in devtools mode, or a GPU is not Hopper/Blackwell: never an empty or
partial evidence list. :func:`gpu_attester_for` picks the real NVML (``nvml``) or the
emulated stand-in (``emulated-hopper``, ``emulated-blackwell``, from
:mod:`teeflow.platform.emulated_nvidia`); emulation is chosen only by name.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teeflow.attestation.nvidia.spdm import NONCE_SIZE
from teeflow.attestation.nvidia.trustee import MAX_DEVICES, NVIDIA_TEE
from teeflow.errors import PlatformError

__all__ = ["GPU_CHOICES", "GpuAttester", "gpu_attester_for"]

#: Values of the roles' ``--gpu`` option.
GPU_CHOICES = ("none", "nvml", "emulated-hopper", "emulated-blackwell")
_ARCH_BY_NVML = {9: "HOPPER", 10: "BLACKWELL"}
_MAX_REPORT = 0x2000
_MAX_CHAIN = 0x1400 + 0x1000


def _load_pynvml() -> Any:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        raise PlatformError(
            "--gpu nvml needs NVIDIA's NVML bindings: pip install 'teeflow[gpu]' "
            "(nvidia-ml-py) and the NVIDIA driver"
        ) from None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _c_bytes(array: Any, size: object, limit: int, what: str) -> bytes:
    if not isinstance(size, int) or not 0 < size <= limit:
        raise PlatformError(f"NVML returned a {what} of invalid size {size!r}")
    try:
        return bytes(array[:size])
    except (TypeError, ValueError):
        raise PlatformError(f"NVML returned a malformed {what}") from None


class GpuAttester:
    """GPU evidence from NVML (module docstring).

    Args:
        nvml: the ``pynvml`` module (default: imported on first use) or a stand-in with the
            same functions (:class:`teeflow.platform.emulated_nvidia.EmulatedNvml`).
        kind: ``"nvml"`` or ``"emulated"`` (reported, never inferred).

    Attributes:
        tee: the RCAR additional-evidence key, ``"nvidia"``.
    """

    tee = NVIDIA_TEE

    def __init__(self, nvml: Any | None = None, *, kind: str = "nvml") -> None:
        self._nvml = nvml
        self.kind = kind
        self._lock = threading.Lock()

    def _module(self) -> Any:
        if self._nvml is None:
            self._nvml = _load_pynvml()
        return self._nvml

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        nvml = self._module()
        try:
            return fn(*args)
        except nvml.NVMLError as exc:
            raise PlatformError(f"NVML call {fn.__name__} failed: {exc}") from None

    def evidence(self, nonce: bytes) -> dict[str, Any]:
        """Evidence of every GPU for the 32-byte SPDM ``nonce`` (Trustee's shape).

        Raises:
            PlatformError: nonce not 32 bytes; NVML unavailable or failing; no GPU or more
                than 16; CC off or devtools mode; a GPU that is not Hopper/Blackwell; a
                report or chain of invalid size.
        """
        if len(nonce) != NONCE_SIZE:
            raise PlatformError("the GPU SPDM nonce must be 32 bytes")
        nvml = self._module()
        with self._lock:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:
                raise PlatformError(f"NVML cannot be initialised (driver loaded?): {exc}") from None
            try:
                return {"device_evidence_list": self._collect(nvml, bytes(nonce))}
            finally:
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlShutdown()

    def _collect(self, nvml: Any, nonce: bytes) -> list[dict[str, str]]:
        state = self._call(nvml.nvmlSystemGetConfComputeState)
        if getattr(state, "ccFeature", 0) != 1:
            raise PlatformError(
                "GPU confidential computing is off: enable CC mode "
                "(nvidia_gpu_tools.py --set-cc-mode=on) and reboot the VM"
            )
        if getattr(state, "devToolsMode", 1) != 0:
            raise PlatformError("GPU CC is in devtools mode, not production: refusing to attest")
        count = self._call(nvml.nvmlDeviceGetCount)
        if not isinstance(count, int) or not 0 < count <= MAX_DEVICES:
            raise PlatformError(f"NVML lists {count!r} GPUs (need 1..{MAX_DEVICES})")
        out = []
        for index in range(count):
            handle = self._call(nvml.nvmlDeviceGetHandleByIndex, index)
            arch = _ARCH_BY_NVML.get(self._call(nvml.nvmlDeviceGetArchitecture, handle))
            if arch is None:
                raise PlatformError(f"GPU {index} is not a Hopper or Blackwell CC GPU")
            report = self._call(nvml.nvmlDeviceGetConfComputeGpuAttestationReport, handle, nonce)
            transcript = _c_bytes(
                report.attestationReport, report.attestationReportSize, _MAX_REPORT, "report"
            )
            cert = self._call(nvml.nvmlDeviceGetConfComputeGpuCertificate, handle)
            chain = _c_bytes(
                cert.attestationCertChain, cert.attestationCertChainSize, _MAX_CHAIN, "chain"
            )
            out.append(
                {
                    "arch": arch,
                    "uuid": _text(self._call(nvml.nvmlDeviceGetUUID, handle)),
                    "evidence": base64.b64encode(transcript).decode("ascii"),
                    "certificate": base64.b64encode(chain).decode("ascii"),
                }
            )
        return out


def gpu_attester_for(name: str, *, home: Path | None = None, count: int = 1) -> GpuAttester | None:
    """The GPU attester a role's ``--gpu`` option names (:data:`GPU_CHOICES`).

    Args:
        name: ``none`` (None), ``nvml`` (real GPUs through NVML), ``emulated-hopper`` /
            ``emulated-blackwell`` (EMULATED GPUs under the emulated NVIDIA root in
            ``$TEEFLOW_HOME/emulation/nvidia``; accepted only where the agreement allows
            emulation).
        home: teeflow home for the emulated root.
        count: number of emulated GPUs (1..16).

    Raises:
        PlatformError: unknown name or count.
    """
    if name == "none":
        return None
    if name == "nvml":
        return GpuAttester(kind="nvml")
    if name in ("emulated-hopper", "emulated-blackwell"):
        if not 1 <= count <= MAX_DEVICES:
            raise PlatformError(f"emulated GPU count must be 1..{MAX_DEVICES}")
        from teeflow.platform.emulated_nvidia import EmulatedNvidiaAuthority, EmulatedNvml

        authority = EmulatedNvidiaAuthority.load_or_create(home)
        arch = name.removeprefix("emulated-").upper()
        gpus = [authority.device(arch, index=i) for i in range(count)]
        return GpuAttester(EmulatedNvml(gpus), kind="emulated")
    raise PlatformError(f"--gpu must be one of {', '.join(GPU_CHOICES)}, not {name!r}")
