"""Data keys for sealed blobs: generation, key identifiers and the key-file format.

A data key is 32 uniformly random bytes (AES-256). Its *key id* is a public 16-byte
value derived from it with HKDF-SHA256 (RFC 5869), stored in every sealed blob header so
that opening a blob with the wrong key fails early and clearly. A key file is one line of
ASCII text (format in ``docs/formats.md``, "Key file")::

    teeflow-key:v1:<43 characters of unpadded base64url (RFC 4648 §5) of the 32 key bytes>
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow._fs import atomic_write
from teeflow.errors import ParseError, SealingError

__all__ = [
    "KEY_FILE_PREFIX",
    "KEY_ID_SIZE",
    "KEY_SIZE",
    "MAX_KEY_FILE_BYTES",
    "check_key",
    "encode_key_file",
    "generate_key",
    "key_id",
    "parse_key_file",
    "read_key_file",
    "write_key_file",
]

KEY_SIZE = 32
"""Data key size in bytes (AES-256)."""
KEY_ID_SIZE = 16
"""Key identifier size in bytes."""
KEY_FILE_PREFIX = "teeflow-key:v1:"
"""First characters of a version-1 key file."""
MAX_KEY_FILE_BYTES = 256
"""A key file longer than this is rejected without reading it all."""

_KEY_ID_INFO = b"teeflow/sealed-blob/v1/key-id"
_KEY_LINE = re.compile(rb"teeflow-key:v1:([A-Za-z0-9_-]{43})(?:\r?\n)?")


def check_key(key: object) -> bytes:
    """Return ``key`` as ``bytes`` if it is a 32-byte bytes-like object.

    Raises:
        SealingError: not bytes-like or not exactly 32 bytes (the message never
            contains key material).
    """
    if not isinstance(key, bytes | bytearray | memoryview):
        raise SealingError("key must be 32 bytes")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise SealingError(f"key must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def generate_key(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """Return a new 32-byte data key from ``rng`` (default :func:`os.urandom`).

    Raises:
        SealingError: ``rng`` returned the wrong number of bytes.
    """
    return check_key(rng(KEY_SIZE))


def key_id(key: bytes) -> bytes:
    """Public 16-byte identifier of a data key.

    ``HKDF-SHA256(IKM=key, salt=none, info="teeflow/sealed-blob/v1/key-id", L=16)``
    (RFC 5869). It reveals nothing useful about the key but is the same in every blob
    sealed under that key (blobs under one key are linkable).

    Raises:
        SealingError: key is not 32 bytes.
    """
    raw = check_key(key)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_ID_SIZE, salt=None, info=_KEY_ID_INFO)
    return hkdf.derive(raw)


def encode_key_file(key: bytes) -> str:
    """Return the one-line key-file text for ``key``, newline included.

    Raises:
        SealingError: key is not 32 bytes.
    """
    raw = check_key(key)
    b64 = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return f"{KEY_FILE_PREFIX}{b64}\n"


def parse_key_file(data: bytes) -> bytes:
    """Parse key-file bytes (one line, optional trailing LF or CRLF) into the 32-byte key.

    Raises:
        ParseError: wrong prefix or version, bad base64url, wrong length, extra content.
    """
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ParseError("key file too long")
    match = _KEY_LINE.fullmatch(data)
    if match is None:
        raise ParseError(f"not a key file: expected one line '{KEY_FILE_PREFIX}<base64url>'")
    try:
        raw = base64.urlsafe_b64decode(match.group(1) + b"=")
    except (binascii.Error, ValueError):
        raise ParseError("key file: invalid base64url") from None
    # 43 base64 characters carry 258 bits: the last 2 must be zero (canonical encoding).
    if len(raw) != KEY_SIZE or base64.urlsafe_b64encode(raw).rstrip(b"=") != match.group(1):
        raise ParseError("key file: non-canonical base64url")
    return raw


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read a key file and return the 32-byte key.

    Raises:
        SealingError: the file cannot be read (message has the path and OS reason).
        ParseError: the content is not a version-1 key file.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SealingError(f"cannot read key file {os.fspath(path)}: {exc.strerror}") from exc
    return parse_key_file(data)


def write_key_file(path: str | os.PathLike[str], key: bytes, *, force: bool = False) -> None:
    """Write ``key`` to ``path`` in key-file format, with permissions 0600.

    Without ``force`` the file is created exclusively (``O_EXCL``) and an existing path is
    an error; with ``force`` the key is written to a 0600 temporary file next to ``path``
    and renamed over it atomically.

    Raises:
        SealingError: ``path`` exists and ``force`` is false, or an OS error (message has
            the path and OS reason, never key material).
    """
    text = encode_key_file(key).encode("ascii")
    target = Path(path)
    if not force:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SealingError(f"{target} exists (use --force to overwrite)") from None
        except OSError as exc:
            raise SealingError(f"cannot create key file {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise SealingError(f"cannot write key file {target}: {exc.strerror}") from exc
        return
    try:
        atomic_write(target, text)
    except OSError as exc:
        raise SealingError(f"cannot write key file {target}: {exc.strerror}") from exc
