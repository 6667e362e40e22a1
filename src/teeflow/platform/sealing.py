"""Platform sealing keys: secrets only the same code on the same platform can derive.

A *sealing key* is what a TEE gives a workload to encrypt its own state for later runs:
SGX derives it with ``EGETKEY`` from a fused CPU secret and (policy ``MRENCLAVE``) the
enclave measurement, so a different enclave — or the same enclave on another CPU — gets a
different key (Intel SDM Vol. 3D §38 "EGETKEY"; Gramine exposes it as
``/dev/attestation/keys/_sgx_mrenclave``). The KBS seals its private keys under such a key
(:mod:`teeflow.kbs.service.identity`).

Providers (:class:`PlatformSealer`):

* :class:`EmulatedSealer` — the emulated platform's model of the ``_sgx_mrenclave`` key::

      key = HKDF-SHA256(IKM  = authority.sealing_secret(),       (32 bytes)
                        salt = b"teeflow-emulated-sealing-v1",
                        info = purpose || measurement,              (measurement: 32 bytes)
                        L    = 32)                                   (RFC 5869)

  The "CPU secret" is :meth:`EmulationAuthority.sealing_secret` (derived from the
  emulation root key), so another measurement or another emulation authority cannot
  derive the key. As everything emulated, this protects nothing against the host: the
  authority's keys are files on that host.
* :class:`GramineSealer` — Gramine SGX: reads the 16-byte ``_sgx_mrenclave`` key from
  ``/dev/attestation/keys`` and expands it with HKDF-SHA256 (salt
  ``b"teeflow-gramine-sealing-v1"``, same ``info``). The hardware binds the measurement;
  ``measurement`` in ``info`` only separates purposes.

* :class:`SnpSealer` — SEV-SNP: a 32-byte key from ``SNP_GET_DERIVED_KEY``
  (:mod:`teeflow.platform.sev_guest`: VCEK root, bound to the launch MEASUREMENT and the
  guest POLICY) expanded with HKDF-SHA256 (salt ``b"teeflow-snp-sealing-v1"``, same
  ``info``).
* TDX has **no** sealing key (the TDX module offers none to a TD): :func:`sealer_for`
  returns ``None`` and the KBS state key comes only from party recovery
  (:mod:`teeflow.kbs.service.recovery`).

:func:`sealer_for` picks the provider for a ``--platform`` name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import PlatformError
from teeflow.platform.base import DEFAULT_GRAMINE_ROOT
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.sev_guest import (
    DEFAULT_SEV_GUEST_DEVICE,
    FIELD_GUEST_SVN,
    FIELD_MEASUREMENT,
    FIELD_POLICY,
    FIELD_TCB_VERSION,
    DerivedKeyRequest,
    Ioctl,
    get_derived_key,
)

__all__ = [
    "EMULATED_SEALING_SALT",
    "GRAMINE_SEALING_SALT",
    "SEALING_KEY_SIZE",
    "SEALING_PLATFORMS",
    "SNP_SEALING_SALT",
    "EmulatedSealer",
    "GramineSealer",
    "PlatformSealer",
    "SnpSealer",
    "sealer_for",
]

#: Bytes in every sealing key returned by a :class:`PlatformSealer`.
SEALING_KEY_SIZE = 32
EMULATED_SEALING_SALT = b"teeflow-emulated-sealing-v1"
GRAMINE_SEALING_SALT = b"teeflow-gramine-sealing-v1"
SNP_SEALING_SALT = b"teeflow-snp-sealing-v1"
#: ``--platform`` names :func:`sealer_for` knows (``tdx`` has no sealing key).
SEALING_PLATFORMS = (
    "emulated",
    "emulated-sgx",
    "emulated-tdx",
    "emulated-snp",
    "gramine-sgx",
    "sev-snp",
    "tdx",
)
_MEASUREMENT_SIZE = 32
_MAX_PURPOSE = 255
_GRAMINE_KEY_FILE = "_sgx_mrenclave"
_GRAMINE_KEY_SIZE = 16


@runtime_checkable
class PlatformSealer(Protocol):
    """Derives sealing keys bound to the platform and a workload measurement."""

    def sealing_key(self, measurement: bytes, *, purpose: bytes) -> bytes:
        """A 32-byte key for ``purpose`` (1..255 bytes, e.g. ``b"kbs-state"``) bound to
        ``measurement`` (the workload's 32-byte MRENCLAVE). Deterministic for the same
        platform, measurement and purpose.

        Raises:
            PlatformError: bad arguments or the platform key is unavailable.
        """
        ...


def _info(measurement: object, purpose: object) -> bytes:
    if not isinstance(measurement, bytes) or len(measurement) != _MEASUREMENT_SIZE:
        raise PlatformError(f"sealing: measurement must be {_MEASUREMENT_SIZE} bytes")
    if not isinstance(purpose, bytes) or not 1 <= len(purpose) <= _MAX_PURPOSE:
        raise PlatformError(f"sealing: purpose must be 1..{_MAX_PURPOSE} bytes")
    # measurement has a fixed length and comes last, so purpose || measurement is unambiguous
    return purpose + measurement


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEALING_KEY_SIZE, salt=salt, info=info).derive(
        ikm
    )


class EmulatedSealer:
    """Sealing keys of the emulated platform (see the module docstring for the derivation).

    Args:
        authority: the emulation authority standing in for the CPU.
    """

    def __init__(self, authority: EmulationAuthority) -> None:
        self._secret = authority.sealing_secret()

    def __repr__(self) -> str:
        return "EmulatedSealer(<emulation authority>)"

    def sealing_key(self, measurement: bytes, *, purpose: bytes) -> bytes:
        """``HKDF-SHA256(sealing_secret, salt=EMULATED_SEALING_SALT, info=purpose ||
        measurement)``, 32 bytes.

        Raises:
            PlatformError: ``measurement`` not 32 bytes or ``purpose`` not 1..255 bytes.
        """
        return _hkdf(self._secret, EMULATED_SEALING_SALT, _info(measurement, purpose))


class GramineSealer:
    """Sealing keys from Gramine's ``/dev/attestation/keys/_sgx_mrenclave`` (SGX, policy
    MRENCLAVE; Gramine docs "Attestation and Secret Provisioning", pseudo-files).

    Args:
        keys_dir: Gramine's key directory (tests pass a fake one).
    """

    def __init__(self, keys_dir: Path = DEFAULT_GRAMINE_ROOT / "keys") -> None:
        self._keys_dir = Path(keys_dir)

    @classmethod
    def under_root(cls, gramine_root: Path) -> GramineSealer:
        """The sealer reading ``<gramine_root>/keys/_sgx_mrenclave`` (``--gramine-root``)."""
        return cls(Path(gramine_root) / "keys")

    def __repr__(self) -> str:
        return f"GramineSealer({str(self._keys_dir)!r})"

    def _platform_key(self) -> bytes:
        path = self._keys_dir / _GRAMINE_KEY_FILE
        try:
            with path.open("rb") as fh:
                key = fh.read(_GRAMINE_KEY_SIZE + 1)
        except OSError as exc:
            raise PlatformError(
                f"cannot read the SGX sealing key {path}: {exc.strerror or exc}"
            ) from None
        if len(key) != _GRAMINE_KEY_SIZE:
            raise PlatformError(f"{path} must hold exactly {_GRAMINE_KEY_SIZE} bytes")
        return key

    def sealing_key(self, measurement: bytes, *, purpose: bytes) -> bytes:
        """``HKDF-SHA256(_sgx_mrenclave key, salt=GRAMINE_SEALING_SALT, info=purpose ||
        measurement)``, 32 bytes.

        Raises:
            PlatformError: bad arguments, or the key file is missing/unreadable or not
                16 bytes.
        """
        info = _info(measurement, purpose)
        return _hkdf(self._platform_key(), GRAMINE_SEALING_SALT, info)


class SnpSealer:
    """Sealing keys from the SEV-SNP secure processor (``SNP_GET_DERIVED_KEY``).

    Args:
        device: the sev-guest device (``--sev-guest-dev``, default ``/dev/sev-guest``).
        ioctl: the ioctl function (default: the real one, which needs a character device);
            :class:`teeflow.testing.sev_guest.SevGuestStandIn` provides a stand-in.
        vmpl: VMPL mixed into the key (0 unless the guest OS runs under an SVSM).
        guest_svn, tcb_version: also bind GUEST_SVN / TCB_VERSION when given (a firmware or
            guest SVN change then needs recovery).
    """

    def __init__(
        self,
        device: Path = DEFAULT_SEV_GUEST_DEVICE,
        *,
        ioctl: Ioctl | None = None,
        vmpl: int = 0,
        guest_svn: int | None = None,
        tcb_version: int | None = None,
    ) -> None:
        select = FIELD_MEASUREMENT | FIELD_POLICY
        select |= FIELD_GUEST_SVN if guest_svn is not None else 0
        select |= FIELD_TCB_VERSION if tcb_version is not None else 0
        self._device = Path(device)
        self._ioctl = ioctl
        self._request = DerivedKeyRequest(
            guest_field_select=select,
            vmpl=vmpl,
            guest_svn=guest_svn or 0,
            tcb_version=tcb_version or 0,
        )
        self._request.pack()  # validate now

    def __repr__(self) -> str:
        return f"SnpSealer({str(self._device)!r})"

    def sealing_key(self, measurement: bytes, *, purpose: bytes) -> bytes:
        """``HKDF-SHA256(derived key, salt=SNP_SEALING_SALT, info=purpose || measurement)``,
        32 bytes.

        Raises:
            PlatformError: bad arguments, or the derived key is unavailable (device missing,
                not a character device, ioctl or firmware error).
        """
        info = _info(measurement, purpose)
        root = get_derived_key(self._request, device=self._device, ioctl=self._ioctl)
        return _hkdf(root, SNP_SEALING_SALT, info)


def sealer_for(
    platform: str,
    *,
    authority: EmulationAuthority | None = None,
    gramine_root: Path = DEFAULT_GRAMINE_ROOT,
    sev_guest_dev: Path = DEFAULT_SEV_GUEST_DEVICE,
    sev_guest_ioctl: Ioctl | None = None,
) -> PlatformSealer | None:
    """The sealing-key provider of ``platform`` (a ``--platform`` name), or ``None`` for
    ``tdx`` (no sealing key: the KBS state key then comes only from recovery).

    Emulated platforms (``emulated``, ``emulated-sgx``, ``emulated-tdx``, ``emulated-snp``)
    all use :class:`EmulatedSealer` (as before; note ``emulated-tdx`` thereby has a sealing
    key real TDX lacks). ``gramine-sgx`` reads ``<gramine_root>/keys/_sgx_mrenclave``;
    ``sev-snp`` asks ``sev_guest_dev`` (through ``sev_guest_ioctl`` when given).

    Raises:
        PlatformError: unknown platform, or an emulated platform without ``authority``.
    """
    if platform.startswith("emulated"):
        if platform not in SEALING_PLATFORMS or authority is None:
            raise PlatformError(f"emulated platform {platform!r} needs an emulation authority")
        return EmulatedSealer(authority)
    if platform == "gramine-sgx":
        return GramineSealer.under_root(gramine_root)
    if platform == "sev-snp":
        return SnpSealer(sev_guest_dev, ioctl=sev_guest_ioctl)
    if platform == "tdx":
        return None
    raise PlatformError(
        f"no sealing-key provider for platform {platform!r} (one of {', '.join(SEALING_PLATFORMS)})"
    )
