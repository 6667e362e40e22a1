"""SEV-SNP derived keys through the Linux ``/dev/sev-guest`` ioctl (``SNP_GET_DERIVED_KEY``).

Sources: AMD SEV Secure Nested Paging Firmware ABI Specification (#56860), §7.2
"MSG_KEY_REQ" / "MSG_KEY_RSP"; Linux ``include/uapi/linux/sev-guest.h`` (struct layouts and
the ioctl number), cross-checked against google/go-sev-guest ``client/linuxabi``.

Wire structures (little endian)::

    struct snp_derived_key_req {            /* MSG_KEY_REQ, 32 bytes */
        u32 root_key_select;                /* bit 0: 0 = VCEK, 1 = VMRK */
        u32 rsvd;
        u64 guest_field_select;             /* bit 0 POLICY, 1 IMAGE_ID, 2 FAMILY_ID,
                                               3 MEASUREMENT, 4 GUEST_SVN, 5 TCB_VERSION */
        u32 vmpl;                           /* >= the caller's VMPL */
        u32 guest_svn;                      /* <= GUEST_SVN at launch */
        u64 tcb_version;                    /* <= the committed TCB */
    };
    struct snp_derived_key_resp {           /* 64 bytes */
        u32 status; u8 reserved[28];        /* MSG_KEY_RSP: 0 = success, 0x16 invalid params */
        u8  key[32];
    };
    struct snp_guest_request_ioctl {        /* 32 bytes */
        u8  msg_version;                    /* 1 */
        u64 req_data;  u64 resp_data;       /* user addresses of the two structures above */
        u32 fw_error;  u32 vmm_error;       /* exitinfo2 */
    };
    SNP_GET_DERIVED_KEY = _IOWR('S', 0x1, struct snp_guest_request_ioctl) = 0xC0205301

teeflow asks for a key rooted in the **VCEK** (``root_key_select = 0``: stable across
launches of the same guest on the same chip; the VMRK is per launch unless a migration agent
provides it) with ``guest_field_select`` always binding **MEASUREMENT** and the guest
**POLICY**, and optionally GUEST_SVN and TCB_VERSION. A different launch measurement or policy,
another chip, or (when selected) another TCB yields another key.

The ioctl itself is one injectable function (:data:`Ioctl`, default :func:`linux_ioctl`), so
the test kit (:mod:`teeflow.testing.sev_guest`) can stand in for the kernel and the PSP
while every byte of the request is still packed, passed by address and read back here.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from teeflow.errors import PlatformError

__all__ = [
    "DEFAULT_SEV_GUEST_DEVICE",
    "FIELD_FAMILY_ID",
    "FIELD_GUEST_SVN",
    "FIELD_IMAGE_ID",
    "FIELD_MEASUREMENT",
    "FIELD_POLICY",
    "FIELD_TCB_VERSION",
    "GUEST_REQUEST",
    "KEY_REQUEST",
    "KEY_RESPONSE_SIZE",
    "SNP_GET_DERIVED_KEY",
    "DerivedKeyRequest",
    "Ioctl",
    "get_derived_key",
    "linux_ioctl",
]

DEFAULT_SEV_GUEST_DEVICE = Path("/dev/sev-guest")
FIELD_POLICY = 1 << 0
FIELD_IMAGE_ID = 1 << 1
FIELD_FAMILY_ID = 1 << 2
FIELD_MEASUREMENT = 1 << 3
FIELD_GUEST_SVN = 1 << 4
FIELD_TCB_VERSION = 1 << 5
_FIELDS_KNOWN = 0x3F
#: ``snp_derived_key_req``: root_key_select, rsvd, guest_field_select, vmpl, guest_svn, tcb.
KEY_REQUEST = struct.Struct("<IIQIIQ")
#: ``snp_guest_request_ioctl``: msg_version, pad, req_data, resp_data, fw_error, vmm_error.
GUEST_REQUEST = struct.Struct("<B7xQQII")
KEY_RESPONSE_SIZE = 64
_KEY_OFFSET = 0x20
_MSG_VERSION = 1
# _IOWR('S', 0x1, 32 bytes): dir (read|write = 3) << 30 | size << 16 | type << 8 | nr
SNP_GET_DERIVED_KEY = (3 << 30) | (GUEST_REQUEST.size << 16) | (ord("S") << 8) | 0x1

#: ``ioctl(fd, request, arg)``: performs the ioctl on ``fd`` with the mutable ``arg`` buffer
#: (updated in place); raises ``OSError`` on failure.
Ioctl = Callable[[int, int, bytearray], None]


def linux_ioctl(fd: int, request: int, arg: bytearray) -> None:
    """The real ioctl (``fcntl.ioctl`` with a mutable buffer copied back).

    Raises:
        OSError: the kernel refused the request.
    """
    fcntl.ioctl(fd, request, arg, True)


@dataclass(frozen=True)
class DerivedKeyRequest:
    """A ``MSG_KEY_REQ`` (module docstring).

    Attributes:
        guest_field_select: bit mask of ``FIELD_*`` (must include MEASUREMENT and POLICY).
        vmpl: VMPL mixed into the key (0..3, at least the caller's VMPL).
        guest_svn: GUEST_SVN mixed in when :data:`FIELD_GUEST_SVN` is selected (u32).
        tcb_version: TCB_VERSION mixed in when :data:`FIELD_TCB_VERSION` is selected (u64).
    """

    guest_field_select: int = FIELD_MEASUREMENT | FIELD_POLICY
    vmpl: int = 0
    guest_svn: int = 0
    tcb_version: int = 0

    def pack(self) -> bytes:
        """The 32-byte ``snp_derived_key_req`` (VCEK root).

        Raises:
            PlatformError: a field out of range, or MEASUREMENT/POLICY not selected.
        """
        required = FIELD_MEASUREMENT | FIELD_POLICY
        if not 0 <= self.guest_field_select <= _FIELDS_KNOWN or (
            self.guest_field_select & required != required
        ):
            raise PlatformError("SNP key request must select MEASUREMENT and POLICY (bits 0..5)")
        if not 0 <= self.vmpl <= 3:
            raise PlatformError("SNP key request: vmpl must be 0..3")
        if not 0 <= self.guest_svn <= 0xFFFFFFFF or not 0 <= self.tcb_version <= (1 << 64) - 1:
            raise PlatformError("SNP key request: guest_svn is u32 and tcb_version u64")
        return KEY_REQUEST.pack(
            0, 0, self.guest_field_select, self.vmpl, self.guest_svn, self.tcb_version
        )


def _open_device(path: Path, *, require_chardev: bool) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise PlatformError(
            f"cannot open {path}: {exc.strerror or exc} (is this an SEV-SNP guest with the "
            "sev-guest driver loaded?)"
        ) from None
    if require_chardev and not stat.S_ISCHR(os.fstat(fd).st_mode):
        os.close(fd)
        raise PlatformError(f"{path} is not a character device (expected /dev/sev-guest)")
    return fd


def get_derived_key(
    request: DerivedKeyRequest,
    *,
    device: Path = DEFAULT_SEV_GUEST_DEVICE,
    ioctl: Ioctl | None = None,
) -> bytes:
    """Ask the AMD secure processor for a 32-byte derived key (``SNP_GET_DERIVED_KEY``).

    Args:
        request: the key request (:class:`DerivedKeyRequest`).
        device: the sev-guest device (default ``/dev/sev-guest``).
        ioctl: the ioctl function; default :func:`linux_ioctl`, in which case ``device`` must
            be a character device. The test kit passes its stand-in here.

    Returns the 32-byte key (request and response buffers are zeroed afterwards).

    Raises:
        PlatformError: the device cannot be opened or is not a character device, the ioctl
            failed (errno, firmware and VMM error codes given), or MSG_KEY_RSP reported a
            non-zero status.
    """
    raw_request = request.pack()
    call = ioctl if ioctl is not None else linux_ioctl
    req = ctypes.create_string_buffer(raw_request, KEY_REQUEST.size)
    resp = ctypes.create_string_buffer(KEY_RESPONSE_SIZE)
    arg = bytearray(
        GUEST_REQUEST.pack(_MSG_VERSION, ctypes.addressof(req), ctypes.addressof(resp), 0, 0)
    )
    fd = _open_device(Path(device), require_chardev=ioctl is None)
    try:
        try:
            call(fd, SNP_GET_DERIVED_KEY, arg)
        except OSError as exc:
            _, _, _, fw_error, vmm_error = GUEST_REQUEST.unpack(bytes(arg))
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise PlatformError(
                f"SNP_GET_DERIVED_KEY on {device} failed: {name} "
                f"(fw_error {fw_error:#x}, vmm_error {vmm_error:#x})"
            ) from None
        data = resp.raw
        status = struct.unpack_from("<I", data)[0]
        if status != 0:
            raise PlatformError(f"MSG_KEY_RSP status {status:#x} (0x16: invalid parameters)")
        return data[_KEY_OFFSET : _KEY_OFFSET + 32]
    finally:
        os.close(fd)
        ctypes.memset(resp, 0, KEY_RESPONSE_SIZE)
        ctypes.memset(req, 0, KEY_REQUEST.size)
