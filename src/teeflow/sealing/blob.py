"""Sealed blobs: a versioned 99-byte header, then a chunked AES-256-GCM STREAM.

Byte format: ``docs/formats.md``, "Sealed blob". Header (big-endian): magic ``TFSB``,
version 1, algorithm 1, flags 0, chunk_size (u32, 4 KiB..64 MiB), key_id (16),
aad_digest (32), salt (32), nonce_prefix (7). The per-blob AES-256 key is
``HKDF-SHA256(IKM=key, salt=salt, info="teeflow/sealed-blob/v1/chunk-key")`` (RFC 5869),
so nonces never repeat across blobs; chunk ``i`` has nonce
``nonce_prefix || uint32_be(i) || last_flag`` (STREAM, Hoang-Reyhanitabar-Rogaway-Vizár,
CRYPTO 2015; Tink "AES-GCM-HKDF streaming") and the 99 header bytes as associated data.
Tampering, truncation, reordering, duplication, trailing data, wrong key or wrong ``aad``
all raise :class:`~teeflow.errors.SealingError`.

The streaming file functions :func:`seal_file` / :func:`unseal_file` (same format) live in
:mod:`teeflow.sealing.stream` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import SealingError
from teeflow.hazmat.aead_stream import (
    NONCE_PREFIX_SIZE,
    TAG_SIZE,
    ChunkCipher,
    chunk_count,
    ciphertext_layout,
)
from teeflow.hazmat.buffers import fresh_output
from teeflow.sealing.keys import check_key, key_id

__all__ = [
    "ALGORITHM_AES256GCM_HKDF_STREAM",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "SealedHeader",
    "parse_header",
    "seal",
    "seal_into",
    "sealed_size",
    "unseal",
    "unseal_into",
    "unsealed_size",
]

MAGIC = b"TFSB"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_HKDF_STREAM = 1
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
SALT_SIZE = 32
_HEADER = struct.Struct(">4sBBHI16s32s32s7s")
HEADER_SIZE = _HEADER.size  # 99
_CHUNK_KEY_INFO = b"teeflow/sealed-blob/v1/chunk-key"
_AAD_LABEL = b"teeflow/sealed-blob/v1/aad"

Rng = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The parsed 99-byte header of a sealed blob (all values public).

    ``chunk_size`` is in bytes of plaintext; ``raw`` is the exact header bytes, which
    are the associated data of every chunk.
    """

    version: int
    algorithm: int
    flags: int
    chunk_size: int
    key_id: bytes
    aad_digest: bytes
    salt: bytes
    nonce_prefix: bytes
    raw: bytes

    def binds(self, aad: bytes) -> bool:
        """Whether the header commits to associated data ``aad`` (its ``aad_digest``).

        Needs no key: a keyless check that a blob belongs to a context; the AEAD tags
        (checked by :func:`unseal`) are what authenticate it.
        """
        return hmac.compare_digest(self.aad_digest, _aad_digest(aad))


def _aad_digest(aad: bytes) -> bytes:
    return hashlib.sha256(_AAD_LABEL + aad).digest()


def _check_chunk_size(chunk_size: object) -> int:
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealingError(f"chunk size must be an integer in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    return chunk_size


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise SealingError(f"{what} must be bytes")


def _as_view(value: object, what: str, *, writable: bool = False) -> memoryview:
    try:
        view = memoryview(value)  # type: ignore[arg-type]
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
    except (TypeError, ValueError):
        raise SealingError(f"{what} must be a contiguous bytes-like object") from None
    if writable and view.readonly:
        raise SealingError(f"{what} must be writable")
    return view


def parse_header(data: bytes | bytearray | memoryview) -> SealedHeader:
    """Parse and check the first 99 bytes of a sealed blob (nothing is authenticated yet).

    Raises:
        SealingError: too short, bad magic, unsupported version/algorithm/flags, or a
            chunk size outside [4 KiB, 64 MiB].
    """
    view = _as_view(data, "sealed blob")
    if len(view) < HEADER_SIZE:
        raise SealingError("sealed blob truncated: incomplete header")
    raw = bytes(view[:HEADER_SIZE])
    magic, version, alg, flags, chunk_size, kid, aad_digest, salt, prefix = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise SealingError("not a teeflow sealed blob (bad magic)")
    if version != FORMAT_VERSION:
        raise SealingError(f"unsupported sealed blob version {version}")
    if alg != ALGORITHM_AES256GCM_HKDF_STREAM:
        raise SealingError(f"unsupported sealed blob algorithm {alg}")
    if flags != 0:
        raise SealingError(f"unsupported sealed blob flags 0x{flags:04x}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealingError(f"sealed blob chunk size {chunk_size} out of range")
    return SealedHeader(version, alg, flags, chunk_size, kid, aad_digest, salt, prefix, raw)


def _new_header(key: bytes, aad: bytes, chunk_size: int, rng: Rng) -> tuple[bytes, ChunkCipher]:
    salt, prefix = rng(SALT_SIZE), rng(NONCE_PREFIX_SIZE)
    if not (isinstance(salt, bytes) and isinstance(prefix, bytes)) or (
        (len(salt), len(prefix)) != (SALT_SIZE, NONCE_PREFIX_SIZE)
    ):
        raise SealingError("rng returned the wrong number of bytes")
    fields = (chunk_size, key_id(key), _aad_digest(aad), salt, prefix)
    raw = _HEADER.pack(MAGIC, FORMAT_VERSION, ALGORITHM_AES256GCM_HKDF_STREAM, 0, *fields)
    return raw, ChunkCipher(_chunk_key(key, salt), prefix, raw)


def _chunk_key(key: bytes, salt: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_CHUNK_KEY_INFO)
    return hkdf.derive(key)


def _open_header(header: SealedHeader, key: bytes, aad: bytes) -> ChunkCipher:
    if not hmac.compare_digest(header.key_id, key_id(key)):
        raise SealingError("wrong key: the blob was sealed under another key (key id mismatch)")
    if not hmac.compare_digest(header.aad_digest, _aad_digest(aad)):
        raise SealingError("wrong aad: the associated data differs from the one sealed with")
    return ChunkCipher(_chunk_key(key, header.salt), header.nonce_prefix, header.raw)


def sealed_size(plaintext_len: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Size in bytes of the sealed blob for ``plaintext_len`` bytes of plaintext.

    ``99 + plaintext_len + 16 * max(1, ceil(plaintext_len / chunk_size))``.

    Raises:
        SealingError: chunk size out of range or more than 2**32 chunks.
    """
    chunk_size = _check_chunk_size(chunk_size)
    return HEADER_SIZE + plaintext_len + TAG_SIZE * chunk_count(plaintext_len, chunk_size)


def unsealed_size(blob: bytes | bytearray | memoryview) -> int:
    """Plaintext size in bytes of a sealed blob, from its header and length only.

    Raises:
        SealingError: bad header or a length no honest writer produces.
    """
    header = parse_header(blob)
    return ciphertext_layout(len(_as_view(blob, "sealed blob")) - HEADER_SIZE, header.chunk_size)[1]


def seal_into(
    data: bytes | bytearray | memoryview,
    key: bytes,
    out: bytearray | memoryview,
    *,
    aad: bytes = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Rng = os.urandom,
) -> int:
    """Seal ``data`` into the caller's writable buffer ``out``; return the bytes written.

    ``out`` must hold at least :func:`sealed_size` bytes; only that prefix is written.
    Reusing one ``out`` across calls avoids page-faulting a fresh buffer each time.

    Raises:
        SealingError: key not 32 bytes, chunk size out of range, ``out`` too small or
            read-only, or ``rng`` misbehaving.
    """
    key = check_key(key)
    aad = _as_bytes(aad, "aad")
    chunk_size = _check_chunk_size(chunk_size)
    src = _as_view(data, "data")
    dst = _as_view(out, "out", writable=True)
    total = sealed_size(len(src), chunk_size)
    if len(dst) < total:
        raise SealingError(f"output buffer too small: need {total} bytes")
    header, cipher = _new_header(key, aad, chunk_size, rng)
    dst[:HEADER_SIZE] = header
    n = chunk_count(len(src), chunk_size)
    pos, opos = 0, HEADER_SIZE
    for i in range(n):
        end = min(pos + chunk_size, len(src))
        oend = opos + (end - pos) + TAG_SIZE
        cipher.encrypt_into(i, i == n - 1, src[pos:end], dst[opos:oend])
        pos, opos = end, oend
    return total


def unseal_into(
    blob: bytes | bytearray | memoryview,
    key: bytes,
    out: bytearray | memoryview,
    *,
    aad: bytes = b"",
) -> int:
    """Open ``blob`` into the caller's writable buffer ``out``; return the plaintext size.

    ``out`` must hold at least :func:`unsealed_size` bytes; on failure its first
    ``unsealed_size`` bytes are zeroed (no unauthenticated plaintext is left behind).

    Raises:
        SealingError: any tampering, truncation, reordering, duplication, trailing data,
            wrong key or wrong ``aad``; or ``out`` too small or read-only.
    """
    key = check_key(key)
    aad = _as_bytes(aad, "aad")
    src = _as_view(blob, "sealed blob")
    header = parse_header(src)
    cipher = _open_header(header, key, aad)
    chunk_size = header.chunk_size
    n, pt_len = ciphertext_layout(len(src) - HEADER_SIZE, chunk_size)
    dst = _as_view(out, "out", writable=True)
    if len(dst) < pt_len:
        raise SealingError(f"output buffer too small: need {pt_len} bytes")
    pos, opos = HEADER_SIZE, 0
    try:
        for i in range(n):
            oend = min(opos + chunk_size, pt_len)
            end = pos + (oend - opos) + TAG_SIZE
            cipher.decrypt_into(i, i == n - 1, src[pos:end], dst[opos:oend])
            pos, opos = end, oend
    except SealingError:
        dst[:pt_len] = bytes(pt_len)  # wipe unauthenticated plaintext
        raise
    return pt_len


def _fresh(size: int) -> io.BytesIO:
    # One allocation, no copy (see teeflow.hazmat.buffers), with a huge-page hint for big
    # blobs so page faults on the fresh buffer do not dominate the AES-GCM work.
    return fresh_output(size)


def seal(
    data: bytes | bytearray | memoryview,
    key: bytes,
    *,
    aad: bytes = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: Rng = os.urandom,
) -> bytes:
    """Seal ``data`` under the 32-byte ``key``, binding ``aad``; return the sealed blob.

    Args:
        data: plaintext, any length (empty gives one empty final chunk).
        key: 32-byte data key.
        aad: associated data (not stored, only its SHA-256); needed again to unseal.
        chunk_size: plaintext bytes per chunk, 4 KiB .. 64 MiB (default 1 MiB).
        rng: source of the 32-byte salt and 7-byte nonce prefix (default os.urandom).

    Raises:
        SealingError: key not 32 bytes, chunk size out of range, too many chunks.
    """
    src = _as_view(data, "data")
    buf = _fresh(sealed_size(len(src), chunk_size))
    with buf.getbuffer() as view:
        seal_into(src, key, view, aad=aad, chunk_size=chunk_size, rng=rng)
    return buf.getvalue()


def unseal(blob: bytes | bytearray | memoryview, key: bytes, *, aad: bytes = b"") -> bytes:
    """Authenticate and decrypt a sealed blob made by :func:`seal` or :func:`seal_file`.

    Nothing is returned unless every chunk authenticated and the stream ended with the
    final chunk exactly at the end of ``blob``.

    Raises:
        SealingError: any tampering (header, chunk, tag), truncation, reordering,
            dropped or duplicated chunks, trailing data, wrong key, wrong ``aad``, or a
            key that is not 32 bytes.
    """
    buf = _fresh(unsealed_size(blob))
    with buf.getbuffer() as view:
        unseal_into(blob, key, view, aad=aad)
    return buf.getvalue()

