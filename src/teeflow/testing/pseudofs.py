"""A small FUSE file system whose files are computed: the mechanism of the interface stand-ins.

The kernel's configfs-tsm tree and Gramine's ``/dev/attestation`` are *pseudo* file systems:
``mkdir`` populates attributes synchronously, a write is handled when the file is closed, and
a read computes its content (or fails with an ``errno``) at that moment. A plain directory
cannot do that — a watcher (inotify, polling) reacts *after* the write returned, so a reader
that follows at once races it, and a failing read cannot return ``EINVAL``. FUSE (Linux
``fuse(4)``, libfuse 3 through the maintained ctypes binding ``mfusepy``) answers each
operation in this process before the caller's system call returns, which is what the real
interfaces do. Limits: Linux only; needs ``/dev/fuse`` and the right to mount (root, or
``fusermount3`` installed setuid); the mount is visible to the mounting user only.

Model: a :class:`PseudoTree` says what exists (:meth:`~PseudoTree.node`) and computes reads
and commits writes; :class:`FuseAdapter` maps the FUSE operations onto it:

* every open file gets its own handle; its content is computed on the first read
  (:meth:`~PseudoTree.read`) and served from that snapshot for the rest of the handle, as
  configfs does for binary attributes;
* writes are buffered per handle (at most :attr:`PseudoNode.max_size` bytes, else
  ``EFBIG``) and committed by :meth:`~PseudoTree.write` when the handle is flushed
  (``close(2)``), so an error of the commit is the caller's ``close`` error;
* the mount uses ``direct_io`` and zero attribute / entry timeouts so that the kernel never
  answers from its caches.

Errors are ``OSError(errno)`` raised by the tree; they reach the caller's system call.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teeflow.errors import PlatformError

__all__ = [
    "FUSE_HELP",
    "FuseAdapter",
    "MarkedTree",
    "PseudoNode",
    "PseudoTree",
    "caller_process",
    "fuse_problem",
    "serve",
]

#: What to install when FUSE is unavailable (printed in errors).
FUSE_HELP = (
    "the stand-ins need FUSE: apt-get install fuse3 libfuse3-3 and "
    "pip install 'teeflow[emulate]' (mfusepy), and /dev/fuse with the right to mount"
)
_LOG = logging.getLogger(__name__)
_CALLER = threading.local()
_MAX_TGID_CACHE = 4096
_tgids: dict[int, int] = {}
_tgid_lock = threading.Lock()


def _tgid(tid: int) -> int:
    """The process (thread-group) id of thread ``tid`` (FUSE reports the calling thread)."""
    with _tgid_lock:
        if tid in _tgids:
            return _tgids[tid]
    tgid = tid
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
                break
    except (OSError, ValueError, IndexError):
        pass
    with _tgid_lock:
        if len(_tgids) >= _MAX_TGID_CACHE:
            _tgids.clear()
        _tgids[tid] = tgid
    return tgid


def caller_process() -> int:
    """The process id of the caller of the FUSE operation this thread is serving (0 outside
    one, e.g. when a test calls a tree directly)."""
    tid = getattr(_CALLER, "tid", 0)
    return _tgid(tid) if tid else 0


@dataclass(frozen=True)
class PseudoNode:
    """What a path is.

    Attributes:
        kind: ``"dir"`` or ``"file"``.
        mode: permission bits (e.g. ``0o444`` read-only, ``0o200`` write-only).
        max_size: largest content a writer may buffer before commit (bytes).
    """

    kind: str
    mode: int
    max_size: int = 0


class PseudoTree(ABC):
    """The state behind a stand-in mount; paths are tuples of names (``()`` is the root).

    Implementations are called from several FUSE threads and must lock their state.
    """

    @abstractmethod
    def node(self, parts: tuple[str, ...]) -> PseudoNode | None:
        """The node at ``parts`` or None when it does not exist."""

    @abstractmethod
    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        """Names in the directory ``parts``. Raises OSError."""

    def mkdir(self, parts: tuple[str, ...]) -> None:
        """Create a directory. Raises OSError (default ``EPERM``)."""
        raise OSError(errno.EPERM, "mkdir not permitted here")

    def rmdir(self, parts: tuple[str, ...]) -> None:
        """Remove a directory. Raises OSError (default ``EPERM``)."""
        raise OSError(errno.EPERM, "rmdir not permitted here")

    @abstractmethod
    def read(self, parts: tuple[str, ...]) -> bytes:
        """The content one opened handle sees (computed now). Raises OSError."""

    def write(self, parts: tuple[str, ...], data: bytes) -> None:
        """Commit what one handle wrote. Raises OSError (default ``EACCES``)."""
        raise OSError(errno.EACCES, "not writable")


@dataclass
class _Handle:
    parts: tuple[str, ...]
    snapshot: bytes | None = None
    buffer: bytearray = field(default_factory=bytearray)
    dirty: bool = False


def _split(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)


def fuse_problem() -> str | None:
    """Why FUSE cannot be used here (a sentence), or None when it can. Never raises."""
    if not sys.platform.startswith("linux"):
        return "FUSE stand-ins run on Linux only"
    if not Path("/dev/fuse").exists():
        return f"no /dev/fuse; {FUSE_HELP}"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:  # libfuse missing: OSError
        return f"mfusepy/libfuse unavailable ({str(exc)[:120]}); {FUSE_HELP}"
    return None


def _operations_base() -> Any:
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise PlatformError(f"FUSE unavailable ({str(exc)[:120]}); {FUSE_HELP}") from None
    return mfusepy.Operations


class FuseAdapter:
    """Builds the ``mfusepy.Operations`` object serving a :class:`PseudoTree`.

    Args:
        tree: the state to serve.
        on_ready: called once the kernel finished mounting (FUSE ``init``).
    """

    def __init__(self, tree: PseudoTree, on_ready: Any = None) -> None:
        self.tree = tree
        self.on_ready = on_ready

    def operations(self) -> Any:
        """The ``mfusepy.Operations`` instance. Raises PlatformError without mfusepy."""
        base = _operations_base()
        import mfusepy

        tree, on_ready = self.tree, self.on_ready
        handles: dict[int, _Handle] = {}
        lock = threading.Lock()
        counter = [0]

        def node_or_enoent(path: str) -> tuple[tuple[str, ...], PseudoNode]:
            parts = _split(path)
            found = tree.node(parts)
            if found is None:
                raise OSError(errno.ENOENT, "no such entry")
            return parts, found

        def enter() -> None:
            _CALLER.tid = int(mfusepy.fuse_get_context()[2])

        def handle(fh: int) -> _Handle:
            with lock:
                h = handles.get(fh)
            if h is None:
                raise OSError(errno.EBADF, "stale handle")
            return h

        class _Ops(base):  # type: ignore[misc,valid-type]
            use_ns = True

            def init(self, path: str) -> None:
                if on_ready is not None:
                    on_ready()

            def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
                _, n = node_or_enoent(path)
                if n.kind == "dir":
                    return {"st_mode": stat.S_IFDIR | n.mode, "st_nlink": 2}
                return {"st_mode": stat.S_IFREG | n.mode, "st_nlink": 1, "st_size": 4096}

            def readdir(self, path: str, fh: int) -> list[str]:
                parts, n = node_or_enoent(path)
                if n.kind != "dir":
                    raise OSError(errno.ENOTDIR, "not a directory")
                return [".", "..", *tree.listdir(parts)]

            def mkdir(self, path: str, mode: int) -> int:
                tree.mkdir(_split(path))
                return 0

            def rmdir(self, path: str) -> int:
                tree.rmdir(_split(path))
                return 0

            def unlink(self, path: str) -> int:
                node_or_enoent(path)
                raise OSError(errno.EPERM, "attributes cannot be removed")

            def create(self, path: str, mode: int, fi: Any = None) -> int:
                raise OSError(errno.EPERM, "files cannot be created here")

            def open(self, path: str, flags: int) -> int:
                parts, n = node_or_enoent(path)
                if n.kind != "file":
                    raise OSError(errno.EISDIR, "is a directory")
                acc = flags & 3
                if acc in (0, 2) and not n.mode & 0o444:
                    raise OSError(errno.EACCES, "write-only attribute")
                if acc in (1, 2) and not n.mode & 0o222:
                    raise OSError(errno.EACCES, "read-only attribute")
                with lock:
                    counter[0] += 1
                    handles[counter[0]] = _Handle(parts)
                    return counter[0]

            def truncate(self, path: str, length: int, fh: int | None = None) -> int:
                _, n = node_or_enoent(path)
                if n.kind != "file" or not n.mode & 0o222 or length != 0:
                    raise OSError(errno.EPERM, "cannot truncate")
                return 0

            def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
                enter()
                h = handle(fh)
                if h.snapshot is None:
                    h.snapshot = tree.read(h.parts)
                return h.snapshot[offset : offset + size]

            def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
                h = handle(fh)
                n = tree.node(h.parts)
                if n is None:
                    raise OSError(errno.ENOENT, "entry removed")
                end = offset + len(data)
                if end > n.max_size:
                    raise OSError(errno.EFBIG, "attribute too large")
                if len(h.buffer) < end:
                    h.buffer.extend(bytes(end - len(h.buffer)))
                h.buffer[offset:end] = data
                h.dirty = True
                return len(data)

            def flush(self, path: str, fh: int) -> int:
                enter()
                h = handle(fh)
                if h.dirty:
                    h.dirty = False
                    tree.write(h.parts, bytes(h.buffer))
                return 0

            def release(self, path: str, fh: int) -> int:
                with lock:
                    handles.pop(fh, None)
                return 0

        return _Ops()


def _watch_parent(parent: int) -> None:
    """SIGTERM this process (libfuse then leaves its loop and unmounts) once ``parent`` is
    gone: a stand-in must not outlive a demo or test that was killed."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(
    tree: PseudoTree,
    mountpoint: Path,
    *,
    ready: dict[str, Any] | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Mount ``tree`` on ``mountpoint`` (an existing empty directory) and serve it until
    SIGINT/SIGTERM/SIGHUP or an unmount (``fusermount3 -u``); unmounts on the way out.
    ``exit_with_parent``: also stop when the parent process exits.

    When the mount is up, ``ready`` (plus ``"event": "ready"``) is printed as one JSON line
    on stdout, so a parent process can wait for it.

    Raises:
        PlatformError: FUSE unavailable (with what to install), ``mountpoint`` not an empty
            directory, or the mount failed.
    """
    problem = fuse_problem()
    if problem is not None:
        raise PlatformError(problem)
    if not mountpoint.is_dir():
        raise PlatformError(f"{mountpoint} is not a directory (create it first)")
    if any(mountpoint.iterdir()):
        raise PlatformError(f"{mountpoint} is not empty (a stand-in mounts over an empty folder)")
    import mfusepy

    def announce() -> None:
        line = json.dumps({"event": "ready", "mountpoint": str(mountpoint), **(ready or {})})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    ops = FuseAdapter(tree, announce).operations()
    if exit_with_parent:
        parent = os.getppid()
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        mfusepy.FUSE(
            ops,
            str(mountpoint),
            foreground=True,
            direct_io=True,
            attr_timeout=0,
            entry_timeout=0,
            negative_timeout=0,
            fsname="teeflow-standin",
        )
    except RuntimeError as exc:
        raise PlatformError(f"cannot mount a FUSE file system on {mountpoint}: {exc}") from None


class MarkedTree(PseudoTree):
    """``tree`` plus a read-only root file :data:`~teeflow.platform.standin.STANDIN_MARKER`
    holding ``info`` as JSON: the plain statement that this mount is a stand-in, which the
    real attesters read to declare their evidence ``emulated-…`` (a real kernel or Gramine
    tree never has that file).
    """

    def __init__(self, tree: PseudoTree, info: dict[str, Any]) -> None:
        from teeflow.platform.standin import STANDIN_MARKER

        self.tree = tree
        self.marker = STANDIN_MARKER
        self.info = json.dumps({"emulated": True, **info}, indent=2).encode() + b"\n"

    def node(self, parts: tuple[str, ...]) -> PseudoNode | None:
        """The marker, else the wrapped tree's node."""
        if parts == (self.marker,):
            return PseudoNode("file", 0o444)
        return self.tree.node(parts)

    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        """The wrapped listing (plus the marker at the root)."""
        names = self.tree.listdir(parts)
        return sorted([*names, self.marker]) if not parts else names

    def mkdir(self, parts: tuple[str, ...]) -> None:
        """Delegated (the marker's name is taken: ``EEXIST``)."""
        if parts == (self.marker,):
            raise OSError(errno.EEXIST, "exists")
        self.tree.mkdir(parts)

    def rmdir(self, parts: tuple[str, ...]) -> None:
        """Delegated (the marker is not a directory: ``ENOTDIR``)."""
        if parts == (self.marker,):
            raise OSError(errno.ENOTDIR, "not a directory")
        self.tree.rmdir(parts)

    def read(self, parts: tuple[str, ...]) -> bytes:
        """The marker's JSON, else delegated."""
        return self.info if parts == (self.marker,) else self.tree.read(parts)

    def write(self, parts: tuple[str, ...], data: bytes) -> None:
        """Delegated."""
        self.tree.write(parts, data)
