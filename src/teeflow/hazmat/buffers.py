"""Large output buffers for in-memory sealing (low level).

``fresh_output(size)`` returns an ``io.BytesIO`` adopting a zero-filled ``bytes`` object of
``size`` bytes: ``getbuffer()`` gives a writable view and ``getvalue()`` hands back the same
``bytes`` object once no view is alive — one allocation, no copy.

On Linux, first touch of every 4 KiB page of a fresh buffer costs a page fault; for a
256 MiB blob that is more than the AES-GCM work itself (measured in ``bench/sealing.py``).
For buffers of at least :data:`HUGEPAGE_MIN` bytes this module asks the kernel for
transparent huge pages on the buffer's 2 MiB-aligned interior with
``madvise(MADV_HUGEPAGE)`` (see ``madvise(2)``; effective when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``). The hint is
best effort: any failure is ignored and the buffer works the same.
"""

from __future__ import annotations

import ctypes
import io
import sys
from typing import Any

__all__ = ["HUGEPAGE_MIN", "fresh_output"]

#: Buffers of at least this many bytes get the huge-page hint (4 MiB).
HUGEPAGE_MIN = 4 << 20
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h


def _load_madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def fresh_output(size: int) -> io.BytesIO:
    """A writable ``size``-byte zero buffer whose ``getvalue()`` is returned without a copy.

    Args:
        size: buffer length in bytes (>= 0).

    Raises:
        MemoryError: the allocation failed.
    """
    buf = io.BytesIO(bytes(size))
    if _madvise is not None and size >= HUGEPAGE_MIN:
        with buf.getbuffer() as view:
            holder = ctypes.c_char.from_buffer(view)
            addr = ctypes.addressof(holder)
            start = (addr + _HUGE - 1) & ~(_HUGE - 1)
            end = (addr + size) & ~(_HUGE - 1)
            if end > start:
                _madvise(start, end - start, _MADV_HUGEPAGE)
            del holder
    return buf
