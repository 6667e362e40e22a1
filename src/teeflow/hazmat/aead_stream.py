"""LOW LEVEL: STREAM framing for chunked AES-256-GCM (nonce layout, chunk maths).

.. warning::
   This is a hazardous-materials module. It encrypts and decrypts *individual chunks*
   and does not, by itself, stop truncation, reordering or nonce reuse across messages:
   those properties come from how :mod:`teeflow.sealing.blob` uses it (a fresh HKDF
   subkey and random nonce prefix per blob, the header as associated data of every
   chunk, and the last-chunk flag checked at end of input). Use
   :func:`teeflow.sealing.seal` / :func:`teeflow.sealing.unseal` instead.

The construction is the nonce-based online AE "STREAM" of Hoang, Reyhanitabar, Rogaway
and Vizár, *Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance*
(CRYPTO 2015), laid out as in Tink's "AES-GCM-HKDF streaming" key type: the 12-byte
GCM nonce of chunk ``i`` is::

    nonce_prefix (7 bytes) || uint32_be(i) (4 bytes) || last_flag (1 byte: 0x00 or 0x01)

so chunk ``i`` authenticated as "not last" can never be accepted as the last chunk (and
vice versa), and a chunk moved to another index fails its tag.

Every non-final chunk carries exactly ``chunk_size`` plaintext bytes; the final chunk
carries 1..``chunk_size`` bytes, or 0 bytes when the whole plaintext is empty. Each
encrypted chunk is ``ciphertext || tag`` (16-byte GCM tag).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teeflow.errors import SealingError

__all__ = [
    "MAX_CHUNKS",
    "NONCE_PREFIX_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "ChunkCipher",
    "ReadFull",
    "Write",
    "chunk_count",
    "ciphertext_layout",
    "decrypt_stream",
    "encrypt_stream",
    "stream_nonce",
]

NONCE_PREFIX_SIZE = 7
"""Bytes of per-message random nonce prefix."""
NONCE_SIZE = 12
"""AES-GCM nonce size in bytes (NIST SP 800-38D recommended 96-bit IV)."""
TAG_SIZE = 16
"""AES-GCM tag size in bytes."""
MAX_CHUNKS = 1 << 32
"""The chunk counter is a 32-bit big-endian integer: at most 2**32 chunks per message."""

_LAST = b"\x01"
_NOT_LAST = b"\x00"


def stream_nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    """Return the 12-byte nonce ``prefix || uint32_be(counter) || last_flag``.

    Args:
        prefix: 7 bytes, random per message.
        counter: chunk index, ``0 <= counter < 2**32``.
        last: whether this is the final chunk of the message.

    Raises:
        SealingError: prefix has the wrong size or counter is out of range.
    """
    if len(prefix) != NONCE_PREFIX_SIZE:
        raise SealingError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
    if not 0 <= counter < MAX_CHUNKS:
        raise SealingError("chunk counter out of range (at most 2**32 chunks)")
    return prefix + counter.to_bytes(4, "big") + (_LAST if last else _NOT_LAST)


def chunk_count(plaintext_len: int, chunk_size: int) -> int:
    """Number of chunks for ``plaintext_len`` bytes: ``max(1, ceil(len / chunk_size))``.

    Raises:
        SealingError: the message would need more than :data:`MAX_CHUNKS` chunks.
    """
    if plaintext_len < 0 or chunk_size <= 0:
        raise SealingError("invalid plaintext length or chunk size")
    n = max(1, -(-plaintext_len // chunk_size))
    if n > MAX_CHUNKS:
        raise SealingError("message too long for this chunk size (more than 2**32 chunks)")
    return n


def ciphertext_layout(body_len: int, chunk_size: int) -> tuple[int, int]:
    """Validate the length of a chunk stream and return ``(n_chunks, plaintext_len)``.

    ``body_len`` is the total size in bytes of the encrypted chunks (everything after the
    header). Non-final chunks are exactly ``chunk_size + 16`` bytes; the final one is
    ``17..chunk_size + 16`` bytes, or exactly 16 when it is the only chunk (empty message).

    Raises:
        SealingError: the length cannot be produced by an honest writer (truncated
            stream, torn final chunk, trailing bytes, an empty final chunk after full
            ones, or more than 2**32 chunks).
    """
    if chunk_size <= 0:
        raise SealingError("invalid chunk size")
    if body_len < TAG_SIZE:
        raise SealingError("sealed blob truncated: no complete chunk")
    unit = chunk_size + TAG_SIZE
    n = -(-body_len // unit)
    last = body_len - (n - 1) * unit
    if last < TAG_SIZE:
        raise SealingError("sealed blob truncated or has trailing bytes: torn final chunk")
    if n > 1 and last == TAG_SIZE:
        raise SealingError("sealed blob malformed: empty final chunk after full chunks")
    if n > MAX_CHUNKS:
        raise SealingError("sealed blob has more than 2**32 chunks")
    return n, body_len - n * TAG_SIZE


class ChunkCipher:
    """AES-256-GCM with STREAM nonces for one message; chunks processed in place.

    Args:
        key: 32-byte per-message AES-256 key (never a long-term key: derive one per
            message so that the random 7-byte prefix is not the only nonce separation).
        nonce_prefix: 7 bytes.
        aad: associated data authenticated with every chunk (bytes, any length).

    Raises:
        SealingError: wrong key or prefix size.
    """

    __slots__ = ("_aad", "_aead", "_prefix")

    def __init__(self, key: bytes, nonce_prefix: bytes, aad: bytes) -> None:
        if len(key) != 32:
            raise SealingError("chunk key must be 32 bytes")
        if len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise SealingError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
        self._aead = AESGCM(key)
        self._prefix = bytes(nonce_prefix)
        self._aad = bytes(aad)

    def encrypt_into(self, counter: int, last: bool, src: memoryview, dst: memoryview) -> None:
        """Encrypt chunk ``counter``: ``dst`` (``len(src) + 16`` bytes) gets ``ct || tag``.

        Raises:
            SealingError: counter out of range or ``dst`` of the wrong size.
        """
        nonce = stream_nonce(self._prefix, counter, last)
        try:
            self._aead.encrypt_into(nonce, src, self._aad, dst)
        except (ValueError, TypeError, OverflowError) as exc:
            raise SealingError(f"chunk {counter}: cannot encrypt ({exc})") from None

    def decrypt_into(self, counter: int, last: bool, src: memoryview, dst: memoryview) -> None:
        """Authenticate and decrypt chunk ``counter`` (``ct || tag``) into ``dst``.

        ``dst`` must be ``len(src) - 16`` bytes. On failure ``dst`` may hold garbage and
        must be discarded by the caller.

        Raises:
            SealingError: the tag does not verify (tampered, reordered, truncated, wrong
                key or associated data, or wrong last-chunk position).
        """
        nonce = stream_nonce(self._prefix, counter, last)
        try:
            self._aead.decrypt_into(nonce, src, self._aad, dst)
        except InvalidTag:
            where = "final chunk" if last else "chunk"
            raise SealingError(
                f"authentication failed at {where} {counter} (tampered, reordered or "
                "truncated data, or wrong key/aad)"
            ) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise SealingError(f"chunk {counter}: cannot decrypt ({exc})") from None


ReadFull = Callable[[memoryview], int]
"""Fill the view from the input until full or end of input; return the bytes read."""
Write = Callable[[memoryview], object]


def encrypt_stream(
    cipher: ChunkCipher,
    read_full: ReadFull,
    write: Write,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Encrypt an input stream chunk by chunk; return the plaintext bytes consumed.

    Uses one-byte look-ahead to tell the final chunk (the one that reaches end of
    input) from the others, so memory is ``2 * chunk_size + 17`` bytes of buffers.

    Raises:
        SealingError: more than 2**32 chunks, or errors raised by ``read_full``/``write``.
    """
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    out = memoryview(bytearray(chunk_size + TAG_SIZE))
    peek = bytearray(1)
    total = pending = counter = 0
    while True:
        n = pending + read_full(view[pending:])
        last = n < chunk_size or read_full(memoryview(peek)) == 0
        cipher.encrypt_into(counter, last, view[:n], out[: n + TAG_SIZE])
        write(out[: n + TAG_SIZE])
        total += n
        if progress is not None:
            progress(n)
        if last:
            return total
        buf[0] = peek[0]
        pending, counter = 1, counter + 1


def decrypt_stream(
    cipher: ChunkCipher,
    read_full: ReadFull,
    write: Write,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Authenticate and decrypt a chunk stream; return the plaintext bytes written.

    Each chunk is written only after its tag verified, but the *stream* is complete only
    when this returns: callers must treat what was written as provisional until then.
    The final chunk is the one that reaches end of input; a torn chunk, an empty final
    chunk after full ones, or a chunk whose last-flag position differs from where it
    was sealed raises. Memory: ``2 * chunk_size + 17`` bytes of buffers.

    Raises:
        SealingError: truncation, trailing data, reordering, tampering, or errors raised
            by ``read_full``/``write``.
    """
    unit = chunk_size + TAG_SIZE
    buf = bytearray(unit)
    view = memoryview(buf)
    plain = memoryview(bytearray(chunk_size))
    peek = bytearray(1)
    total = pending = counter = 0
    while True:
        n = pending + read_full(view[pending:])
        last = n < unit or read_full(memoryview(peek)) == 0
        if n < TAG_SIZE or (last and counter > 0 and n == TAG_SIZE):
            raise SealingError(f"sealed stream truncated or malformed at chunk {counter}")
        cipher.decrypt_into(counter, last, view[:n], plain[: n - TAG_SIZE])
        write(plain[: n - TAG_SIZE])
        total += n - TAG_SIZE
        if progress is not None:
            progress(n)
        if last:
            return total
        buf[0] = peek[0]
        pending, counter = 1, counter + 1
