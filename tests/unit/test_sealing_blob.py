"""Sealed blobs: round trips in every API, the documented byte format, limits, files."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import SealingError
from teeflow.sealing import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    key_id,
    parse_header,
    seal,
    seal_file,
    seal_into,
    sealed_size,
    unseal,
    unseal_file,
    unseal_into,
    unsealed_size,
)

CS = 4096
KEY = bytes(range(32))
SIZES = [0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 17]


def det_rng(seed: bytes = b"seed") -> Callable[[int], bytes]:
    """Deterministic rng: successive SHAKE-256 outputs (tests only)."""
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return hashlib.shake_256(seed + state["n"].to_bytes(4, "big")).digest(n)

    return rng


def data_of(n: int) -> bytes:
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(n) if n else b""


@pytest.mark.parametrize("n", SIZES)
def test_round_trip_memory(n: int) -> None:
    data = data_of(n)
    blob = seal(data, KEY, aad=b"ctx", chunk_size=CS)
    assert isinstance(blob, bytes)
    assert len(blob) == sealed_size(n, CS) == HEADER_SIZE + n + 16 * max(1, -(-n // CS))
    assert unsealed_size(blob) == n
    assert unseal(blob, KEY, aad=b"ctx") == data


@pytest.mark.parametrize("n", SIZES)
def test_round_trip_into(n: int) -> None:
    data = data_of(n)
    out = bytearray(sealed_size(n, CS) + 5)  # larger buffers are fine
    written = seal_into(data, KEY, out, chunk_size=CS, rng=det_rng())
    assert written == sealed_size(n, CS)
    assert bytes(out[:written]) == seal(data, KEY, chunk_size=CS, rng=det_rng())
    plain = bytearray(n + 3)
    assert unseal_into(memoryview(out)[:written], KEY, plain) == n
    assert bytes(plain[:n]) == data


@pytest.mark.parametrize("n", SIZES)
def test_file_paths_match_memory_format(tmp_path: Path, n: int) -> None:
    data = data_of(n)
    src, sealed, back = tmp_path / "in", tmp_path / "in.sealed", tmp_path / "out"
    src.write_bytes(data)
    assert seal_file(src, sealed, KEY, aad=b"a", chunk_size=CS, rng=det_rng()) == n
    # streaming and in-memory sealing produce the same bytes for the same randomness
    assert sealed.read_bytes() == seal(data, KEY, aad=b"a", chunk_size=CS, rng=det_rng())
    assert unseal_file(sealed, back, KEY, aad=b"a") == n
    assert back.read_bytes() == data
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "in.sealed", "out"]


def test_file_objects_and_progress() -> None:
    data = data_of(5 * CS + 3)
    sealed = io.BytesIO()
    seen: list[int] = []
    seal_file(io.BytesIO(data), sealed, KEY, chunk_size=CS, progress=seen.append)
    assert seen == [CS] * 5 + [3]
    out = io.BytesIO(b"prefix:")
    out.seek(0, io.SEEK_END)
    got: list[int] = []
    assert unseal_file(io.BytesIO(sealed.getvalue()), out, KEY, progress=got.append) == len(data)
    assert out.getvalue() == b"prefix:" + data
    assert sum(got) == len(sealed.getvalue()) - HEADER_SIZE


class _ReadOnly:
    """A minimal file object without readinto and returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, 1000))


def test_source_without_readinto_and_short_reads() -> None:
    data = data_of(3 * CS + 1)
    sealed = io.BytesIO()
    seal_file(_ReadOnly(data), sealed, KEY, chunk_size=CS)  # type: ignore[arg-type]
    out = io.BytesIO()
    unseal_file(_ReadOnly(sealed.getvalue()), out, KEY)  # type: ignore[arg-type]
    assert out.getvalue() == data


def test_multi_chunk_file_default_chunk_size(tmp_path: Path) -> None:
    data = os.urandom(3 * DEFAULT_CHUNK_SIZE + 12345)
    src = tmp_path / "big"
    src.write_bytes(data)
    seal_file(src, tmp_path / "big.sealed", KEY)
    assert unseal((tmp_path / "big.sealed").read_bytes(), KEY) == data
    unseal_file(tmp_path / "big.sealed", tmp_path / "big.out", KEY)
    assert (tmp_path / "big.out").read_bytes() == data


def _reference_seal(
    data: bytes, key: bytes, aad: bytes, chunk_size: int, salt: bytes, prefix: bytes
) -> bytes:
    """An independent encoder written from docs/formats.md ("Sealed blob")."""
    kid = HKDF(hashes.SHA256(), 16, None, b"teeflow/sealed-blob/v1/key-id").derive(key)
    digest = hashlib.sha256(b"teeflow/sealed-blob/v1/aad" + aad).digest()
    header = (
        b"TFSB"
        + bytes([1, 1])
        + b"\x00\x00"
        + struct.pack(">I", chunk_size)
        + kid
        + digest
        + salt
        + prefix
    )
    assert len(header) == 99
    subkey = HKDF(hashes.SHA256(), 32, salt, b"teeflow/sealed-blob/v1/chunk-key").derive(key)
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    out = [header]
    for i, chunk in enumerate(chunks):
        nonce = prefix + struct.pack(">I", i) + bytes([i == len(chunks) - 1])
        out.append(AESGCM(subkey).encrypt(nonce, chunk, header))
    return b"".join(out)


@pytest.mark.parametrize("n", SIZES)
def test_byte_format_matches_documentation(n: int) -> None:
    data = data_of(n)
    rng = det_rng(b"fmt")
    salt, prefix = rng(32), rng(7)
    expected = _reference_seal(data, KEY, b"aad!", CS, salt, prefix)
    assert seal(data, KEY, aad=b"aad!", chunk_size=CS, rng=det_rng(b"fmt")) == expected


def test_header_fields() -> None:
    blob = seal(b"x", KEY, aad=b"bound", chunk_size=8192, rng=det_rng())
    rng = det_rng()
    salt, prefix = rng(32), rng(7)
    h = parse_header(blob)
    assert (h.version, h.algorithm, h.flags, h.chunk_size) == (1, 1, 0, 8192)
    assert h.key_id == key_id(KEY) and len(h.key_id) == 16
    assert h.aad_digest == hashlib.sha256(b"teeflow/sealed-blob/v1/aad" + b"bound").digest()
    assert (h.salt, h.nonce_prefix, h.raw) == (salt, prefix, blob[:99])


def test_fresh_randomness_per_blob() -> None:
    a, b = seal(b"same", KEY), seal(b"same", KEY)
    assert a != b and a[60:99] != b[60:99]
    assert seal(b"same", KEY, rng=det_rng()) == seal(b"same", KEY, rng=det_rng())


def test_inputs_accept_bytes_like() -> None:
    blob = seal(bytearray(b"abc"), bytearray(KEY), aad=memoryview(b"z"), chunk_size=CS)
    assert unseal(memoryview(blob), memoryview(KEY), aad=bytearray(b"z")) == b"abc"


@pytest.mark.parametrize("bad", [b"", b"\x00" * 16, b"\x00" * 31, b"\x00" * 33, "k" * 32, None, 7])
def test_key_must_be_32_bytes(bad: object) -> None:
    with pytest.raises(SealingError):
        seal(b"data", bad)  # type: ignore[arg-type]
    blob = seal(b"data", KEY)
    with pytest.raises(SealingError):
        unseal(blob, bad)  # type: ignore[arg-type]
    with pytest.raises(SealingError):
        seal_file(io.BytesIO(b"data"), io.BytesIO(), bad)  # type: ignore[arg-type]
    with pytest.raises(SealingError):
        unseal_file(io.BytesIO(blob), io.BytesIO(), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("cs", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, True, 4096.0, -4096])
def test_chunk_size_bounds(cs: object) -> None:
    with pytest.raises(SealingError):
        seal(b"data", KEY, chunk_size=cs)  # type: ignore[arg-type]
    with pytest.raises(SealingError):
        seal_file(io.BytesIO(b"data"), io.BytesIO(), KEY, chunk_size=cs)  # type: ignore[arg-type]


def test_chunk_size_limits_accepted() -> None:
    for cs in (MIN_CHUNK_SIZE, MAX_CHUNK_SIZE):
        assert unseal(seal(b"edge", KEY, chunk_size=cs), KEY) == b"edge"


def test_non_bytes_inputs_raise_sealing_error() -> None:
    with pytest.raises(SealingError):
        seal("text", KEY)  # type: ignore[arg-type]
    with pytest.raises(SealingError):
        unseal("text", KEY)  # type: ignore[arg-type]
    with pytest.raises(SealingError):
        seal(b"x", KEY, aad="text")  # type: ignore[arg-type]


def test_misbehaving_rng() -> None:
    with pytest.raises(SealingError):
        seal(b"x", KEY, rng=lambda n: b"\x00" * (n - 1))


def test_into_buffers_checked() -> None:
    with pytest.raises(SealingError):
        seal_into(b"abc", KEY, bytearray(sealed_size(3, CS) - 1), chunk_size=CS)
    with pytest.raises(SealingError):
        seal_into(b"abc", KEY, memoryview(bytes(200)), chunk_size=CS)  # read-only
    blob = seal(b"abc", KEY)
    with pytest.raises(SealingError):
        unseal_into(blob, KEY, bytearray(2))


def test_wrong_key_and_aad_are_reported_clearly() -> None:
    blob = seal(b"secret", KEY, aad=b"right")
    with pytest.raises(SealingError, match="wrong key"):
        unseal(blob, bytes(32), aad=b"right")
    with pytest.raises(SealingError, match="wrong aad"):
        unseal(blob, KEY, aad=b"wrong")
    with pytest.raises(SealingError, match="wrong aad"):
        unseal(blob, KEY)


def test_unseal_file_failure_leaves_no_output(tmp_path: Path) -> None:
    data = data_of(4 * CS)
    blob = bytearray(seal(data, KEY, chunk_size=CS))
    blob[-1] ^= 1  # the final tag: every other chunk authenticates first
    src, dst = tmp_path / "bad.sealed", tmp_path / "plain"
    src.write_bytes(blob)
    with pytest.raises(SealingError):
        unseal_file(src, dst, KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sealed"]
    # an existing destination is left untouched
    dst.write_bytes(b"keep me")
    with pytest.raises(SealingError):
        unseal_file(src, dst, KEY)
    assert dst.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sealed", "plain"]


def test_unseal_file_object_rolled_back_on_failure() -> None:
    blob = bytearray(seal(data_of(3 * CS), KEY, chunk_size=CS))
    blob[-5] ^= 0x80
    out = io.BytesIO(b"head")
    out.seek(4)
    with pytest.raises(SealingError):
        unseal_file(io.BytesIO(bytes(blob)), out, KEY)
    assert out.getvalue() == b"head"


class _Pipe(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def test_unseal_file_needs_seekable_file_object() -> None:
    blob = seal(b"x", KEY)
    with pytest.raises(SealingError, match="seekable"):
        unseal_file(io.BytesIO(blob), _Pipe(), KEY)  # type: ignore[arg-type]


def test_unseal_file_bounds_chunk_size() -> None:
    blob = seal(b"x", KEY, chunk_size=1 << 20)
    with pytest.raises(SealingError, match="exceeds"):
        unseal_file(io.BytesIO(blob), io.BytesIO(), KEY, max_chunk_size=64 * 1024)
    out = io.BytesIO()
    unseal_file(io.BytesIO(blob), out, KEY, max_chunk_size=1 << 20)
    assert out.getvalue() == b"x"


def test_io_errors_are_sealing_errors(tmp_path: Path) -> None:
    with pytest.raises(SealingError, match="cannot open") as info:
        seal_file(tmp_path / "missing", tmp_path / "out", KEY)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(SealingError):
        seal_file(io.BytesIO(b"x"), tmp_path / "no-such-dir" / "out", KEY)
    with pytest.raises(SealingError):
        unseal_file(tmp_path / "missing", tmp_path / "out", KEY)
    assert list(tmp_path.iterdir()) == []


def test_seal_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(data_of(2 * CS + 1))
    seal_file(path, path, KEY, chunk_size=CS)
    assert unseal(path.read_bytes(), KEY) == data_of(2 * CS + 1)


def test_unseal_into_wipes_output_on_failure() -> None:
    data = data_of(3 * CS + 5)
    blob = bytearray(seal(data, KEY, chunk_size=CS))
    blob[-1] ^= 1  # chunks 0..2 decrypt fine, the final tag fails
    out = bytearray(b"\xaa" * (len(data) + 4))
    with pytest.raises(SealingError):
        unseal_into(blob, KEY, out)
    assert out == bytes(len(data)) + b"\xaa" * 4
