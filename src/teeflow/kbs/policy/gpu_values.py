"""GPU reference values of a workload role (agreement ``workloads.<role>.gpu``).

A role with ``gpu`` reference values requires CPU **and** GPU evidence: the KBS refuses an
attestation of that role without NVIDIA GPU evidence in RCAR ``additional_evidence``, and
appraises every GPU against these values (:meth:`GpuReferenceValues.to_policy` ->
:class:`teeflow.attestation.nvidia.GpuPolicy`) together with the CPU evidence
(:mod:`teeflow.attestation.composite`). Example::

    workloads:
      aggregator:
        tdx: {mrtd: [...]}
        gpu:
          architectures: [HOPPER, BLACKWELL]
          min_driver_version: "550.54.15"
          min_vbios_version: "96.00.88.00.11"
          min_count: 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from teeflow.attestation.policy import Hex48
from teeflow.kbs.policy.canonical import DocumentModel, sorted_unique

if TYPE_CHECKING:  # the NVIDIA verifier package loads when a GPU policy is built
    from teeflow.attestation.nvidia import GpuPolicy

__all__ = ["GpuReferenceValues"]

_MAX = 64


class GpuReferenceValues(DocumentModel):
    """NVIDIA GPU reference values (NVIDIA CC attestation; SPDM 1.1 measurements).

    Attributes:
        architectures: accepted architectures (``HOPPER``, ``BLACKWELL``), sorted; not empty.
        min_count: the least number of GPUs the evidence must cover (1..16, default 1).
        min_driver_version: driver floor (``"550.54.15"``) or None.
        min_vbios_version: VBIOS floor (``"96.00.88.00.11"``) or None.
        driver_versions, vbios_versions: exact accepted versions, or empty = any.
        fwids: accepted GSP FMC firmware ids (48-byte hex, the leaf certificate's TCG DICE
            FWID), or empty = any.
        measurements_digests: accepted SHA-384 digests of the whole signed measurement record
            (48-byte hex; the offline substitute for NVIDIA's RIM comparison), or empty.
        require_rim: refuse GPUs whose measurements are not pinned by
            ``measurements_digests`` (default False: accepted with a warning).
    """

    architectures: tuple[Literal["HOPPER", "BLACKWELL"], ...] = Field(min_length=1, max_length=2)
    min_count: int = Field(default=1, ge=1, le=16)
    min_driver_version: str | None = Field(default=None, max_length=64)
    min_vbios_version: str | None = Field(default=None, max_length=64)
    driver_versions: tuple[str, ...] = Field(default=(), max_length=_MAX)
    vbios_versions: tuple[str, ...] = Field(default=(), max_length=_MAX)
    fwids: tuple[Hex48, ...] = Field(default=(), max_length=_MAX)
    measurements_digests: tuple[Hex48, ...] = Field(default=(), max_length=_MAX)
    require_rim: bool = False

    @field_validator("architectures", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(v.strip().upper() if isinstance(v, str) else v for v in value)
        return value

    @field_validator(
        "architectures",
        "driver_versions",
        "vbios_versions",
        "fwids",
        "measurements_digests",
        mode="after",
    )
    @classmethod
    def _norm(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return sorted_unique(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.require_rim and not self.measurements_digests:
            raise ValueError("require_rim needs measurements_digests")
        self.to_policy(nonce=bytes(32), allow_emulated=False)  # floors are well-formed
        return self

    def to_policy(self, *, nonce: bytes, allow_emulated: bool) -> GpuPolicy:
        """The :class:`~teeflow.attestation.nvidia.GpuPolicy` for one GPU of a session.

        Args:
            nonce: the session's 32-byte SPDM nonce
                (:func:`teeflow.attestation.nvidia.trustee.gpu_nonce`).
            allow_emulated: the agreement's ``allow_emulated``.

        Raises:
            ValueError: a malformed floor (refused when the agreement is loaded) or a nonce
                that is not 32 bytes.
        """
        from teeflow.attestation.nvidia import GpuPolicy

        policy = GpuPolicy(
            allowed_architectures=frozenset(self.architectures),
            min_driver_version=self.min_driver_version,
            min_vbios_version=self.min_vbios_version,
            allowed_driver_versions=self.driver_versions or None,
            allowed_vbios_versions=self.vbios_versions or None,
            allowed_fwids=self.fwids or None,
            allowed_measurements_digests=self.measurements_digests or None,
            allow_missing_rim=not self.require_rim,
            allow_emulated=allow_emulated,
        )
        return policy.with_nonce(nonce)
