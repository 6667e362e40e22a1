"""Crash-safe file writes and private directories.

:func:`atomic_write` writes a file so that a reader (or the file after a crash) sees either
the old content or the complete new content, never a mix: the bytes go to a temporary file
in the same directory (``.<name>.<random>``, created ``0600`` by :func:`tempfile.mkstemp`),
which is given ``mode``, flushed and ``fsync``'ed, then renamed over the target with
:func:`os.replace` (atomic on POSIX within one file system). :func:`ensure_private_dir`
creates a ``0700`` directory (or tightens an existing one to ``0700``).

Both raise plain :class:`OSError`; callers map it to their own :mod:`teeflow.errors` type
(``PlatformError``, ``KbsError``, ``CollateralError`` …) with the path in the message.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "ensure_private_dir", "fsync_dir", "teeflow_home_env"]


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    replace: bool = True,
) -> bool:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    Args:
        path: target file; its directory must exist.
        data: the complete new content.
        mode: permission bits of the new file (default ``0o600``; ``0o644`` for public data).
        replace: True (default): replace an existing file. False: only create ``path``
            (``os.link`` of the temporary file, which fails if ``path`` exists).

    Returns:
        True when written; False only with ``replace=False`` when ``path`` already exists
        (nothing is written then).

    Raises:
        OSError: the temporary file cannot be created, written, synced or renamed (the
            temporary file is removed).
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    leftover: str | None = tmp
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
            leftover = None
            return True
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        return True
    finally:
        if leftover is not None:
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a directory so a rename/link in it survives a crash (best effort: errors,
    e.g. on platforms that cannot open directories, are ignored)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) with mode ``0o700``; an existing directory with
    another mode is changed to ``0o700``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: it cannot be created or changed (or exists and is not a directory).
    """
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        os.chmod(directory, 0o700)
    return directory


@contextlib.contextmanager
def teeflow_home_env(home: Path) -> Iterator[None]:
    """Set ``$TEEFLOW_HOME`` to ``home`` while in the block (restored afterwards)."""
    old = os.environ.get("TEEFLOW_HOME")
    os.environ["TEEFLOW_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TEEFLOW_HOME", None)
        else:
            os.environ["TEEFLOW_HOME"] = old
