"""Stand-in for ``/dev/sev-guest``'s ``SNP_GET_DERIVED_KEY`` (test kit; NOT hardware).

An ioctl cannot be served by a plain file, so the stand-in is an :data:`Ioctl
<teeflow.platform.sev_guest.Ioctl>` function handed to
:func:`teeflow.platform.sev_guest.get_derived_key` (``SnpSealer(..., ioctl=standin.ioctl)``)
together with a marker file at the fake device path. It does what the kernel and the AMD
secure processor do with the request: checks the ioctl number and ``msg_version``, reads the
32-byte ``snp_derived_key_req`` from the address in ``req_data``, checks it as MSG_KEY_REQ
does (VCEK root only, reserved bits zero, ``vmpl`` ≥ the guest's VMPL, ``guest_svn`` ≤ the
launch GUEST_SVN, ``tcb_version`` ≤ the committed TCB; violations answer status ``0x16``)
and writes the 64-byte response to ``resp_data``. The key is::

    HKDF-SHA256(IKM = chip_secret, salt = b"teeflow-standin-snp-vcek-v1",
                info = u64 field_select || u32 vmpl || [MEASUREMENT 48] || [POLICY u64]
                       || [GUEST_SVN u32] || [TCB_VERSION u64], L = 32)

(bracketed parts only when selected), so a different launch measurement, policy or chip
secret yields a different key, like the real derivation.

What it cannot prove: that the real PSP answers this way (the layout follows the ABI and
Linux's ``sev-guest.h``, the key derivation is the PSP's secret), that the key really is
bound to the hardware (here the "chip secret" is a host value), or that the real driver
accepts the request on a given kernel. It exercises teeflow's packing, pointer passing,
status handling and the KBS's use of the key — nothing more.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow._fs import atomic_write
from teeflow.platform.sev_guest import (
    FIELD_GUEST_SVN,
    FIELD_MEASUREMENT,
    FIELD_POLICY,
    FIELD_TCB_VERSION,
    GUEST_REQUEST,
    KEY_REQUEST,
    KEY_RESPONSE_SIZE,
    SNP_GET_DERIVED_KEY,
)

__all__ = ["STANDIN_SALT", "SevGuestStandIn"]

STANDIN_SALT = b"teeflow-standin-snp-vcek-v1"
_INVALID = 0x16
_MARKER = b"teeflow sev-guest stand-in (not a device)\n"


class SevGuestStandIn:
    """A fake sev-guest device for one guest launch (module docstring).

    Args:
        path: the fake device path (a marker file is created there, 0600).
        measurement: the guest's 48-byte launch MEASUREMENT.
        guest_policy: the guest POLICY (u64).
        chip_secret: 32 bytes standing in for the chip's VCEK secret (default random).
        vmpl: the guest's VMPL; guest_svn: launch GUEST_SVN; committed_tcb: committed TCB.
    """

    def __init__(
        self,
        path: Path,
        *,
        measurement: bytes,
        guest_policy: int,
        chip_secret: bytes | None = None,
        vmpl: int = 0,
        guest_svn: int = 0,
        committed_tcb: int = 0,
    ) -> None:
        if len(measurement) != 48:
            raise ValueError("measurement must be 48 bytes")
        self.path = Path(path)
        self.measurement = bytes(measurement)
        self.guest_policy = guest_policy
        self.chip_secret = chip_secret if chip_secret is not None else os.urandom(32)
        self.vmpl = vmpl
        self.guest_svn = guest_svn
        self.committed_tcb = committed_tcb
        self.calls = 0
        atomic_write(self.path, _MARKER, replace=True)

    def _is_device(self, fd: int) -> bool:
        try:
            st, mine = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _derive(self, select: int, vmpl: int, svn: int, tcb: int) -> bytes:
        info = struct.pack("<QI", select, vmpl)
        if select & FIELD_MEASUREMENT:
            info += self.measurement
        if select & FIELD_POLICY:
            info += struct.pack("<Q", self.guest_policy)
        if select & FIELD_GUEST_SVN:
            info += struct.pack("<I", svn)
        if select & FIELD_TCB_VERSION:
            info += struct.pack("<Q", tcb)
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=STANDIN_SALT, info=info).derive(
            self.chip_secret
        )

    def ioctl(self, fd: int, request: int, arg: bytearray) -> None:
        """Serve one ioctl as the sev-guest driver + PSP would (module docstring).

        Raises:
            OSError: ``ENOTTY`` (not this device or another ioctl), ``EINVAL`` (bad
                ``msg_version`` or buffer).
        """
        self.calls += 1
        if request != SNP_GET_DERIVED_KEY or not self._is_device(fd):
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if len(arg) != GUEST_REQUEST.size:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        version, req_ptr, resp_ptr, _, _ = GUEST_REQUEST.unpack(bytes(arg))
        if version != 1 or not req_ptr or not resp_ptr:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        root, rsvd, select, vmpl, svn, tcb = KEY_REQUEST.unpack(
            ctypes.string_at(req_ptr, KEY_REQUEST.size)
        )
        valid = (
            root == 0
            and rsvd == 0
            and select <= 0x3F
            and self.vmpl <= vmpl <= 3
            and svn <= self.guest_svn
            and tcb <= self.committed_tcb
        )
        status = 0 if valid else _INVALID
        key = self._derive(select, vmpl, svn, tcb) if valid else bytes(32)
        response = struct.pack("<I", status) + bytes(0x20 - 4) + key
        ctypes.memmove(resp_ptr, response, KEY_RESPONSE_SIZE)
