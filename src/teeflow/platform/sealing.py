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

TDX and SEV-SNP derived keys (``MSG_KEY_REQ`` of the SNP firmware ABI, TDX has no sealing
key yet and needs a key-release service) come later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import PlatformError
from teeflow.platform.emulated import EmulationAuthority

__all__ = [
    "EMULATED_SEALING_SALT",
    "GRAMINE_SEALING_SALT",
    "SEALING_KEY_SIZE",
    "EmulatedSealer",
    "GramineSealer",
    "PlatformSealer",
]

#: Bytes in every sealing key returned by a :class:`PlatformSealer`.
SEALING_KEY_SIZE = 32
EMULATED_SEALING_SALT = b"teeflow-emulated-sealing-v1"
GRAMINE_SEALING_SALT = b"teeflow-gramine-sealing-v1"
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

    def __init__(self, keys_dir: Path = Path("/dev/attestation/keys")) -> None:
        self._keys_dir = Path(keys_dir)

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
