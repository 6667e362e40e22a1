"""Low-level STREAM framing (teeflow.hazmat.aead_stream)."""

from __future__ import annotations

import pytest

from teeflow.errors import SealingError
from teeflow.hazmat.aead_stream import (
    MAX_CHUNKS,
    TAG_SIZE,
    ChunkCipher,
    chunk_count,
    ciphertext_layout,
    stream_nonce,
)

PREFIX = bytes(range(7))


def test_nonce_layout() -> None:
    assert stream_nonce(PREFIX, 0, False) == PREFIX + b"\x00\x00\x00\x00\x00"
    assert stream_nonce(PREFIX, 1, True) == PREFIX + b"\x00\x00\x00\x01\x01"
    assert stream_nonce(PREFIX, 0x01020304, False) == PREFIX + b"\x01\x02\x03\x04\x00"
    assert stream_nonce(PREFIX, MAX_CHUNKS - 1, True)[7:] == b"\xff\xff\xff\xff\x01"
    for bad in (-1, MAX_CHUNKS):
        with pytest.raises(SealingError):
            stream_nonce(PREFIX, bad, False)
    with pytest.raises(SealingError):
        stream_nonce(PREFIX[:6], 0, False)


@pytest.mark.parametrize(
    ("length", "chunk", "expected"),
    [(0, 4096, 1), (1, 4096, 1), (4096, 4096, 1), (4097, 4096, 2), (3 * 4096, 4096, 3)],
)
def test_chunk_count(length: int, chunk: int, expected: int) -> None:
    assert chunk_count(length, chunk) == expected


def test_chunk_count_limit() -> None:
    assert chunk_count(MAX_CHUNKS * 4096, 4096) == MAX_CHUNKS
    with pytest.raises(SealingError):
        chunk_count(MAX_CHUNKS * 4096 + 1, 4096)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (16, (1, 0)),
        (17, (1, 1)),
        (4112, (1, 4096)),
        (4112 + 17, (2, 4097)),
        (2 * 4112, (2, 8192)),
    ],
)
def test_layout_valid(body: int, expected: tuple[int, int]) -> None:
    assert ciphertext_layout(body, 4096) == expected


@pytest.mark.parametrize("body", [0, 1, 15, 4112 + 1, 4112 + 15, 4112 + 16, 2 * 4112 + 16])
def test_layout_invalid(body: int) -> None:
    with pytest.raises(SealingError):
        ciphertext_layout(body, 4096)


def test_last_flag_and_counter_are_authenticated() -> None:
    c = ChunkCipher(bytes(32), PREFIX, b"hdr")
    src = memoryview(b"hello")
    ct = bytearray(len(src) + TAG_SIZE)
    c.encrypt_into(3, False, src, memoryview(ct))
    out = bytearray(5)
    c.decrypt_into(3, False, memoryview(ct), memoryview(out))
    assert out == b"hello"
    for counter, last in ((3, True), (2, False), (4, False)):
        with pytest.raises(SealingError):
            c.decrypt_into(counter, last, memoryview(ct), memoryview(out))
    with pytest.raises(SealingError):
        ChunkCipher(bytes(32), PREFIX, b"other").decrypt_into(
            3, False, memoryview(ct), memoryview(out)
        )


def test_cipher_argument_checks() -> None:
    with pytest.raises(SealingError):
        ChunkCipher(bytes(16), PREFIX, b"")
    with pytest.raises(SealingError):
        ChunkCipher(bytes(32), PREFIX + b"x", b"")
    c = ChunkCipher(bytes(32), PREFIX, b"")
    with pytest.raises(SealingError):
        c.encrypt_into(0, True, memoryview(b"abc"), memoryview(bytearray(3)))
    with pytest.raises(SealingError):
        c.decrypt_into(0, True, memoryview(bytes(20)), memoryview(bytearray(3)))
