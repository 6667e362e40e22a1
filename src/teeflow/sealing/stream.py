"""Streaming sealed blobs: :func:`seal_file` / :func:`unseal_file` in O(chunk size) memory.

Same byte format as :mod:`teeflow.sealing.blob` (``docs/formats.md``, "Sealed blob"):
the 99-byte header, then the chunked AES-256-GCM STREAM driven by
:func:`teeflow.hazmat.aead_stream.encrypt_stream` / ``decrypt_stream``. Sources and
destinations are paths or binary file objects. Unauthenticated plaintext never becomes
final output: a path destination is a 0600 temporary file renamed into place only after
the last chunk authenticated; a file-object destination is truncated back on failure.
Every failure (tamper, truncation, wrong key or aad, I/O) raises
:class:`~teeflow.errors.SealingError`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from teeflow.errors import SealingError
from teeflow.hazmat.aead_stream import ReadFull, decrypt_stream, encrypt_stream
from teeflow.sealing.blob import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    Rng,
    _as_bytes,
    _check_chunk_size,
    _new_header,
    _open_header,
    parse_header,
)
from teeflow.sealing.keys import check_key

__all__ = ["Progress", "Sink", "Source", "seal_file", "unseal_file"]

#: Progress callback: called with the bytes consumed per chunk.
Progress = Callable[[int], None]
#: A path or a readable binary file object (not closed by these functions).
Source = str | os.PathLike[str] | BinaryIO
#: A path or a writable binary file object (not closed by these functions).
Sink = str | os.PathLike[str] | BinaryIO


def _io_error(what: str, exc: OSError) -> SealingError:
    return SealingError(f"{what}: {exc.strerror or exc}")


def _reader(fin: BinaryIO) -> ReadFull:
    """A function filling a view from ``fin`` until full or end of file."""
    readinto = getattr(fin, "readinto", None)

    def read_full(view: memoryview) -> int:
        got, want = 0, len(view)
        try:
            while got < want:
                if readinto is not None:
                    k = readinto(view[got:])
                else:
                    data = fin.read(want - got)
                    k = len(data) if isinstance(data, bytes) else None
                    if k is not None and k <= want - got:
                        view[got : got + k] = data
                if not isinstance(k, int) or not 0 <= k <= want - got:
                    raise SealingError("input stream misbehaved (non-blocking or over-long read)")
                if k == 0:
                    break
                got += k
        except OSError as exc:
            raise _io_error("cannot read input", exc) from exc
        return got

    return read_full


@contextmanager
def _open_source(src: Source) -> Iterator[BinaryIO]:
    if not isinstance(src, str | os.PathLike):
        yield src
        return
    try:
        fh = open(src, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise _io_error(f"cannot open {os.fspath(src)}", exc) from exc
    with fh:
        yield fh


class _Output:
    """Write side of seal_file/unseal_file: ``write`` everything, then ``commit``."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.committed = fh, False

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = self.fh.write(view)
                view = view[n if isinstance(n, int) and 0 < n <= len(view) else len(view) :]
        except OSError as exc:
            raise _io_error("cannot write output", exc) from exc

    def commit(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            raise _io_error("cannot write output", exc) from exc
        self.committed = True


@contextmanager
def _open_sink(dst: Sink, *, need_rollback: bool) -> Iterator[_Output]:
    """Paths: temp file next to ``dst``, fsync + rename on commit, unlink otherwise.

    File objects: written in place; with ``need_rollback`` they must be seekable and are
    truncated back to their start position unless committed.
    """
    if not isinstance(dst, str | os.PathLike):
        start = 0
        try:
            if need_rollback:
                if not dst.seekable():
                    raise SealingError("destination file object must be seekable")
                start = dst.tell()
        except OSError as exc:
            raise _io_error("cannot use destination", exc) from exc
        out = _Output(dst)
        try:
            yield out
        finally:
            if need_rollback and not out.committed:
                try:
                    dst.seek(start)
                    dst.truncate()
                except OSError:
                    pass  # best effort: the original error propagates
        return
    target = Path(dst)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise _io_error(f"cannot create output next to {target}", exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            out = _Output(fh)
            yield out
            if out.committed:
                os.fsync(fh.fileno())
        if out.committed:
            os.replace(tmp, target)
    except OSError as exc:
        raise _io_error(f"cannot write {target}", exc) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def seal_file(
    src: Source,
    dst: Sink,
    key: bytes,
    *,
    aad: bytes = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Rng = os.urandom,
    progress: Progress | None = None,
) -> int:
    """Stream-seal ``src`` to ``dst`` in O(chunk_size) memory; return plaintext bytes read.

    ``src``/``dst`` are paths or binary file objects (file objects are not closed). A
    path ``dst`` is written to a 0600 temporary file next to it, fsync'ed and renamed
    into place at the end (removed on failure). ``progress`` is called with the
    plaintext bytes consumed per chunk. Memory: about ``2 * chunk_size`` bytes.

    Raises:
        SealingError: bad key/chunk size, or an I/O error (OSError chained as cause).
    """
    key = check_key(key)
    aad = _as_bytes(aad, "aad")
    chunk_size = _check_chunk_size(chunk_size)
    header, cipher = _new_header(key, aad, chunk_size, rng)
    with _open_source(src) as fin, _open_sink(dst, need_rollback=False) as sink:
        sink.write(header)
        total = encrypt_stream(cipher, _reader(fin), sink.write, chunk_size, progress)
        sink.commit()
    return total


def unseal_file(
    src: Source,
    dst: Sink,
    key: bytes,
    *,
    aad: bytes = b"",
    max_chunk_size: int = MAX_CHUNK_SIZE,
    progress: Progress | None = None,
) -> int:
    """Stream-open a sealed ``src`` into ``dst`` in O(chunk_size) memory; return its size.

    Unauthenticated plaintext never becomes final output: a path ``dst`` is written to a
    0600 temporary file next to it and renamed over ``dst`` only after the final chunk
    authenticated (the temporary file is deleted on failure); a file-object ``dst`` must
    be seekable and is truncated back to its starting position on failure. Memory:
    about ``2 * chunk_size`` bytes, where ``chunk_size`` comes from the header and is
    refused above ``max_chunk_size`` (default and ceiling 64 MiB). ``progress`` is
    called with the sealed bytes consumed per chunk (header excluded).

    Raises:
        SealingError: every failure :func:`unseal` reports, a chunk size above
            ``max_chunk_size``, a non-seekable file-object ``dst``, or an I/O error
            (OSError chained as cause).
    """
    key = check_key(key)
    aad = _as_bytes(aad, "aad")
    limit = _check_chunk_size(max_chunk_size)  # never above MAX_CHUNK_SIZE
    with _open_source(src) as fin:
        read = _reader(fin)
        head = bytearray(HEADER_SIZE)
        if read(memoryview(head)) != HEADER_SIZE:
            raise SealingError("sealed blob truncated: incomplete header")
        header = parse_header(head)
        if header.chunk_size > limit:
            raise SealingError(f"chunk size {header.chunk_size} exceeds the limit {limit}")
        cipher = _open_header(header, key, aad)
        with _open_sink(dst, need_rollback=True) as sink:
            total = decrypt_stream(cipher, read, sink.write, header.chunk_size, progress)
            sink.commit()
    return total
