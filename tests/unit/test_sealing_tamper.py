"""Every tamper class on a sealed blob raises SealingError, in all three opening paths.

The blob under attack has 3 full chunks and a short final one (chunk size 4096), so
boundaries, the final-chunk flag and the header binding are all exercised. Each case is
checked against ``unseal`` (in memory), ``unseal_file`` to a path and ``unseal_file`` to
a file object; the file paths must also leave no output behind.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from teeflow.errors import SealingError
from teeflow.sealing import HEADER_SIZE, seal, unseal, unseal_file

CS = 4096
UNIT = CS + 16
KEY = hashlib.sha256(b"tamper key").digest()
AAD = b"tamper-aad"
DATA = hashlib.shake_256(b"plaintext").digest(3 * CS + 100)
BLOB = seal(DATA, KEY, aad=AAD, chunk_size=CS)
N_CHUNKS = 4
BOUNDS = [HEADER_SIZE + i * UNIT for i in range(N_CHUNKS)] + [len(BLOB)]


def chunks(blob: bytes = BLOB) -> list[bytes]:
    return [blob[BOUNDS[i] : BOUNDS[i + 1]] for i in range(N_CHUNKS)]


def join(header: bytes, parts: list[bytes]) -> bytes:
    return header + b"".join(parts)


def flip(blob: bytes, bit: int) -> bytes:
    out = bytearray(blob)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


Opener = Callable[[bytes, bytes, bytes, Path], None]


def open_memory(blob: bytes, key: bytes, aad: bytes, tmp: Path) -> None:
    unseal(blob, key, aad=aad)


def open_path(blob: bytes, key: bytes, aad: bytes, tmp: Path) -> None:
    src = tmp / "in.sealed"
    src.write_bytes(blob)
    try:
        unseal_file(src, tmp / "out", key, aad=aad)
    finally:
        leftovers = sorted(p.name for p in tmp.iterdir() if p.name != "in.sealed")
        src.unlink()
    assert leftovers == ["out"], leftovers  # reached only on success


def open_fileobj(blob: bytes, key: bytes, aad: bytes, tmp: Path) -> None:
    out = io.BytesIO()
    try:
        unseal_file(io.BytesIO(blob), out, key, aad=aad)
    except SealingError:
        assert out.getvalue() == b""  # rolled back: no partial plaintext left
        raise
    assert out.getvalue() == DATA


OPENERS = {"memory": open_memory, "path": open_path, "fileobj": open_fileobj}


@pytest.fixture(params=list(OPENERS))
def opener(request: pytest.FixtureRequest) -> Opener:
    return OPENERS[request.param]


def rejects(opener: Opener, blob: bytes, tmp: Path, key: bytes = KEY, aad: bytes = AAD) -> None:
    with pytest.raises(SealingError):
        opener(blob, key, aad, tmp)
    assert not (tmp / "out").exists()
    assert list(tmp.iterdir()) == []


def test_untampered_blob_opens(opener: Opener, tmp_path: Path) -> None:
    opener(BLOB, KEY, AAD, tmp_path)
    assert len(chunks()[-1]) == 100 + 16


def test_every_header_bit(opener: Opener, tmp_path: Path) -> None:
    for bit in range(HEADER_SIZE * 8):
        rejects(opener, flip(BLOB, bit), tmp_path)


def test_chunk_body_bits(opener: Opener, tmp_path: Path) -> None:
    for i in range(N_CHUNKS):
        start, end = BOUNDS[i], BOUNDS[i + 1] - 16
        for pos in (start, start + 1, (start + end) // 2, end - 1):
            for b in (0, 3, 7):
                rejects(opener, flip(BLOB, pos * 8 + b), tmp_path)


def test_every_tag_bit(opener: Opener, tmp_path: Path) -> None:
    for i in range(N_CHUNKS):
        tag_start = BOUNDS[i + 1] - 16
        for bit in range(16 * 8):
            rejects(opener, flip(BLOB, tag_start * 8 + bit), tmp_path)


def test_truncation(opener: Opener, tmp_path: Path) -> None:
    cuts = {0, 1, 4, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 15}
    for b in BOUNDS:
        cuts |= {b - 17, b - 16, b - 15, b - 1, b, b + 1, b + UNIT // 2}
    for cut in sorted(c for c in cuts if 0 <= c < len(BLOB)):
        rejects(opener, BLOB[:cut], tmp_path)


def test_drop_chunks(opener: Opener, tmp_path: Path) -> None:
    parts = chunks()
    for i in range(N_CHUNKS):
        rejects(opener, join(BLOB[:HEADER_SIZE], parts[:i] + parts[i + 1 :]), tmp_path)
    rejects(opener, BLOB[:HEADER_SIZE], tmp_path)


def test_duplicate_chunks(opener: Opener, tmp_path: Path) -> None:
    parts = chunks()
    for i in range(N_CHUNKS):
        rejects(opener, join(BLOB[:HEADER_SIZE], parts[: i + 1] + parts[i:]), tmp_path)


def test_reorder_chunks(opener: Opener, tmp_path: Path) -> None:
    parts = chunks()
    for i in range(N_CHUNKS - 1):
        for j in range(i + 1, N_CHUNKS - 1):  # swap two full chunks (same sizes)
            swapped = list(parts)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            rejects(opener, join(BLOB[:HEADER_SIZE], swapped), tmp_path)
    rejects(opener, join(BLOB[:HEADER_SIZE], [parts[-1], *parts[:-1]]), tmp_path)


def test_trailing_garbage(opener: Opener, tmp_path: Path) -> None:
    parts = chunks()
    for extra in (b"\x00", b"x" * 15, b"x" * 16, b"x" * 17, b"\x00" * UNIT, parts[-1], parts[0]):
        rejects(opener, BLOB + extra, tmp_path)


def test_leading_garbage(opener: Opener, tmp_path: Path) -> None:
    rejects(opener, b"\x00" + BLOB, tmp_path)


def test_splice_between_blobs(opener: Opener, tmp_path: Path) -> None:
    other = seal(DATA, KEY, aad=AAD, chunk_size=CS)
    rejects(opener, other[:HEADER_SIZE] + BLOB[HEADER_SIZE:], tmp_path)
    mixed = chunks()
    mixed[1] = chunks(other)[1]
    rejects(opener, join(BLOB[:HEADER_SIZE], mixed), tmp_path)


def test_truncated_to_earlier_message_boundary(opener: Opener, tmp_path: Path) -> None:
    # a prefix that is itself well-formed in length (full chunks only) still fails:
    # its last chunk was sealed with last_flag = 0
    rejects(opener, BLOB[: BOUNDS[2]], tmp_path)


def test_wrong_key(opener: Opener, tmp_path: Path) -> None:
    rejects(opener, BLOB, tmp_path, key=bytes(32))
    rejects(opener, BLOB, tmp_path, key=KEY[:-1] + bytes([KEY[-1] ^ 1]))


def test_wrong_aad(opener: Opener, tmp_path: Path) -> None:
    rejects(opener, BLOB, tmp_path, aad=b"")
    rejects(opener, BLOB, tmp_path, aad=AAD + b"\x00")
    rejects(opener, BLOB, tmp_path, aad=AAD[:-1])


def test_empty_plaintext_tamper(opener: Opener, tmp_path: Path) -> None:
    blob = seal(b"", KEY, aad=AAD, chunk_size=CS)
    assert len(blob) == HEADER_SIZE + 16
    assert unseal(blob, KEY, aad=AAD) == b""
    for bit in range(len(blob) * 8):
        rejects(opener, flip(blob, bit), tmp_path)
    rejects(opener, blob[:-1], tmp_path)
    rejects(opener, blob + blob[HEADER_SIZE:], tmp_path)
    rejects(opener, blob[:HEADER_SIZE], tmp_path)


def test_forged_empty_final_chunk_after_full_chunks(opener: Opener, tmp_path: Path) -> None:
    exact = seal(DATA[: 2 * CS], KEY, aad=AAD, chunk_size=CS)
    rejects(opener, exact + b"\x00" * 16, tmp_path)
