"""A Gramine ``/dev/attestation`` stand-in: the LibOS pseudo-files of an SGX DCAP enclave.

EMULATED — not hardware. :class:`GramineTree` serves, over a FUSE mount
(:mod:`teeflow.testing.pseudofs`; ``teeflow emulate gramine DIR``), what Gramine (>= 1.5)
offers an enclave so that the real :class:`~teeflow.platform.gramine.GramineAttester` and
:class:`~teeflow.platform.sealing.GramineSealer` run unchanged.

Source: Gramine documentation "Attestation and Secret Provisioning", "/dev/attestation
pseudo-filesystem", and ``libos/src/fs/dev/attestation.c``:

* ``attestation_type`` (read): ``dcap``;
* ``user_report_data`` (read/write, exactly 64 bytes, else ``EINVAL``): REPORT_DATA of the
  calling process's next quote; initially 64 zero bytes;
* ``quote`` (read): a DCAP ECDSA quote v3 of this enclave over the current
  ``user_report_data``, made on each open (``EmulatedSgx`` under the emulation root);
* ``my_target_info`` (read, 512 bytes): this enclave's TARGETINFO (Intel SDM Vol. 3D
  §38.17: MRENCLAVE, ATTRIBUTES, MISCSELECT 0);
* ``keys/_sgx_mrenclave`` and ``keys/_sgx_mrsigner`` (read, 16 bytes): the EGETKEY seal keys
  with policy MRENCLAVE / MRSIGNER, modelled by :func:`seal_key`.

Gramine keeps ``user_report_data`` per process (each Gramine process is its own enclave);
the stand-in keeps it per calling process (the FUSE caller's thread-group id), so several
processes of one role can share one mount, each as an enclave of the same MRENCLAVE. What
it cannot reproduce: the CPU (no EREPORT/EGETKEY, no enclave isolation), the Quoting Enclave
and PCK certificates of a real platform (everything chains to the local emulation root),
and Gramine's manifest-derived MRENCLAVE (the measurement is configured).
"""

from __future__ import annotations

import errno
import struct
import threading

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import PlatformError
from teeflow.platform.emulated import ENCLAVE_ATTRIBUTES, EmulatedSgx, EmulationAuthority
from teeflow.platform.emulated_authority import EMULATED_TCB_COMPONENTS
from teeflow.testing.pseudofs import PseudoNode, PseudoTree, caller_process

__all__ = [
    "KEY_POLICY_MRENCLAVE",
    "KEY_POLICY_MRSIGNER",
    "SEAL_KEY_SALT",
    "GramineTree",
    "seal_key",
    "target_info",
]

#: EGETKEY KEYPOLICY bits (Intel SDM Vol. 3D §38.18 KEYREQUEST).
KEY_POLICY_MRENCLAVE = 0x0001
KEY_POLICY_MRSIGNER = 0x0002
_KEYNAME_SEAL = 4
#: HKDF salt of the emulated EGETKEY.
SEAL_KEY_SALT = b"teeflow-standin-egetkey-v1"
_FILES = {
    "attestation_type": PseudoNode("file", 0o444),
    "user_report_data": PseudoNode("file", 0o644, 64),
    "quote": PseudoNode("file", 0o444),
    "my_target_info": PseudoNode("file", 0o444),
}
_KEYS = ("_sgx_mrenclave", "_sgx_mrsigner")
_MAX_PROCESSES = 4096


def seal_key(
    authority: EmulationAuthority,
    *,
    policy: int,
    mrenclave: bytes,
    mrsigner: bytes,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
) -> bytes:
    """The emulated EGETKEY SEAL key (16 bytes, like the hardware's AES-128 key)::

        HKDF-SHA256(IKM  = authority.sealing_secret(),            (the "CPU root seal key")
                    salt = b"teeflow-standin-egetkey-v1",
                    info = KEYNAME (u16 LE, SEAL = 4) || KEYPOLICY (u16 LE) || ISVSVN (u16 LE)
                           || CPUSVN (16) || (MRENCLAVE if policy MRENCLAVE
                                              else MRSIGNER || ISVPRODID (u16 LE)),
                    L = 16)                                        (RFC 5869)

    So the MRENCLAVE key changes with the enclave measurement and the emulation authority,
    as EGETKEY's does with the enclave and the CPU (Intel SDM Vol. 3D §38.18, "Key
    derivation"). Never log it.

    Raises:
        PlatformError: unknown policy, wrong sizes or ranges.
    """
    if policy not in (KEY_POLICY_MRENCLAVE, KEY_POLICY_MRSIGNER):
        raise PlatformError("policy must be MRENCLAVE or MRSIGNER")
    if len(mrenclave) != 32 or len(mrsigner) != 32:
        raise PlatformError("MRENCLAVE and MRSIGNER are 32 bytes")
    if not (0 <= isv_prod_id <= 0xFFFF and 0 <= isv_svn <= 0xFFFF):
        raise PlatformError("isv_prod_id and isv_svn are u16")
    info = struct.pack("<HHH", _KEYNAME_SEAL, policy, isv_svn) + bytes(EMULATED_TCB_COMPONENTS)
    if policy == KEY_POLICY_MRENCLAVE:
        info += mrenclave
    else:
        info += mrsigner + struct.pack("<H", isv_prod_id)
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=SEAL_KEY_SALT, info=info).derive(
        authority.sealing_secret()
    )


def target_info(mrenclave: bytes) -> bytes:
    """A 512-byte SGX TARGETINFO (SDM Vol. 3D Table 38-22): MEASUREMENT (32), ATTRIBUTES (16,
    :data:`~teeflow.platform.emulated.ENCLAVE_ATTRIBUTES`), CET_ATTRIBUTES 0, reserved,
    CONFIGSVN 0, MISCSELECT 0, reserved, CONFIGID zero, reserved.

    Raises:
        PlatformError: ``mrenclave`` not 32 bytes.
    """
    if len(mrenclave) != 32:
        raise PlatformError("MRENCLAVE is 32 bytes")
    out = mrenclave + ENCLAVE_ATTRIBUTES + bytes(512 - 48)
    assert len(out) == 512
    return out


class GramineTree(PseudoTree):
    """``/dev/attestation`` of one emulated enclave (module docstring).

    Args:
        authority: the emulation authority (quotes, sealing secret).
        mrenclave: the enclave measurement (32 bytes).
        isv_prod_id, isv_svn: the enclave's ISVPRODID / ISVSVN.

    Raises:
        PlatformError: bad measurement or ranges.
    """

    def __init__(
        self,
        authority: EmulationAuthority,
        mrenclave: bytes,
        *,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
    ) -> None:
        self._sgx = EmulatedSgx(
            authority, measurement=mrenclave, isv_prod_id=isv_prod_id, isv_svn=isv_svn
        )
        self.mrenclave = self._sgx.measurement
        self._keys = {
            "_sgx_mrenclave": seal_key(
                authority, policy=KEY_POLICY_MRENCLAVE, mrenclave=self.mrenclave,
                mrsigner=authority.mrsigner, isv_prod_id=isv_prod_id, isv_svn=isv_svn,
            ),
            "_sgx_mrsigner": seal_key(
                authority, policy=KEY_POLICY_MRSIGNER, mrenclave=self.mrenclave,
                mrsigner=authority.mrsigner, isv_prod_id=isv_prod_id, isv_svn=isv_svn,
            ),
        }  # fmt: skip
        self._target_info = target_info(self.mrenclave)
        self._lock = threading.Lock()
        self._user_report_data: dict[int, bytes] = {}
        #: quotes produced so far (statistics)
        self.quotes = 0

    def node(self, parts: tuple[str, ...]) -> PseudoNode | None:
        """The fixed layout of the module docstring."""
        if not parts or parts == ("keys",):
            return PseudoNode("dir", 0o755)
        if len(parts) == 1:
            return _FILES.get(parts[0])
        if len(parts) == 2 and parts[0] == "keys" and parts[1] in _KEYS:
            return PseudoNode("file", 0o444)
        return None

    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        """The files of the root or of ``keys``."""
        return sorted(_KEYS) if parts == ("keys",) else sorted([*_FILES, "keys"])

    def read(self, parts: tuple[str, ...]) -> bytes:
        """A file's content; ``quote`` is made now over the current user_report_data."""
        if parts[0] == "keys":
            return self._keys[parts[1]]
        name = parts[0]
        if name == "attestation_type":
            return b"dcap"
        if name == "my_target_info":
            return self._target_info
        with self._lock:
            rd = self._user_report_data.get(caller_process(), bytes(64))
        if name == "user_report_data":
            return rd
        try:
            quote = self._sgx.quote(rd)
        except PlatformError:
            raise OSError(errno.EIO, "quote generation failed") from None
        with self._lock:
            self.quotes += 1
        return quote

    def write(self, parts: tuple[str, ...], data: bytes) -> None:
        """``user_report_data``: exactly 64 bytes (``EINVAL`` otherwise)."""
        if parts != ("user_report_data",):
            raise OSError(errno.EACCES, "read-only")
        if len(data) != 64:
            raise OSError(errno.EINVAL, "user_report_data takes exactly 64 bytes")
        with self._lock:
            if len(self._user_report_data) >= _MAX_PROCESSES:
                self._user_report_data.pop(next(iter(self._user_report_data)))
            self._user_report_data[caller_process()] = bytes(data)
