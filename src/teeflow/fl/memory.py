"""Memory of this process: its peak (the aggregator's ``done`` event and ``Status`` RPC) and
returning freed heap to the kernel between rounds.

``getrusage().ru_maxrss`` is not the process's own peak: Linux carries the high-water mark
over ``fork``/``exec`` (a child started by a big parent reports the parent's peak). The kernel's
``VmHWM`` line of ``/proc/self/status`` is the peak resident set of *this* address space
(proc(5), "/proc/pid/status"), so it is used when it can be read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
from collections.abc import Callable

__all__ = ["peak_rss_bytes", "trim_heap"]

_STATUS = "/proc/self/status"


def peak_rss_bytes(status_path: str = _STATUS) -> int:
    """Peak resident set size of this process in bytes: ``VmHWM`` from ``status_path``
    (``kB`` units), else ``ru_maxrss`` (KiB on Linux) when ``/proc`` is not there or the line
    is missing or malformed. Never raises."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    fields = line.split()
                    if len(fields) >= 2 and fields[1].isdigit():
                        return int(fields[1]) * 1024
                    break
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return,unused-ignore]


def trim_heap() -> bool:
    """Give freed heap memory back to the kernel (glibc ``malloc_trim(0)``, malloc(3)): after a
    round the aggregator has freed the round's models and updates, and without this the next
    round's allocations stack on top of a fragmented heap, raising the peak RSS. Returns
    whether memory was released; a no-op (False) where ``malloc_trim`` is unavailable."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
