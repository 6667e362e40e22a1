"""Property tests for sealed blobs (hypothesis): round trips and tamper detection."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeflow.errors import SealingError
from teeflow.sealing import HEADER_SIZE, seal, seal_file, unseal, unseal_file

CS = 4096
KEY = hashlib.sha256(b"property key").digest()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def det_rng(seed: bytes) -> Callable[[int], bytes]:
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return hashlib.shake_256(seed + state["n"].to_bytes(4, "big")).digest(n)

    return rng


def sized_data(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(8, "big")).digest(size) if size else b""


# lengths around every interesting boundary, plus arbitrary ones up to 6 chunks
boundary_sizes = st.sampled_from([0, 1, CS - 1, CS, CS + 1, 2 * CS - 1, 2 * CS, 2 * CS + 1])
sizes = st.one_of(boundary_sizes, st.integers(min_value=0, max_value=6 * CS + 1))
chunk_sizes = st.sampled_from([CS, CS + 1, 2 * CS, 3 * CS - 7])


@SETTINGS
@given(size=sizes, seed=st.integers(0, 2**32), chunk=chunk_sizes, aad=st.binary(max_size=64))
def test_round_trip(size: int, seed: int, chunk: int, aad: bytes) -> None:
    data = sized_data(size, seed)
    blob = seal(data, KEY, aad=aad, chunk_size=chunk)
    assert unseal(blob, KEY, aad=aad) == data


@SETTINGS
@given(data=st.binary(max_size=3 * CS + 10), aad=st.binary(max_size=32), seed=st.binary())
def test_streaming_equals_in_memory(data: bytes, aad: bytes, seed: bytes) -> None:
    streamed = io.BytesIO()
    seal_file(io.BytesIO(data), streamed, KEY, aad=aad, chunk_size=CS, rng=det_rng(seed))
    assert streamed.getvalue() == seal(data, KEY, aad=aad, chunk_size=CS, rng=det_rng(seed))
    out = io.BytesIO()
    assert unseal_file(io.BytesIO(streamed.getvalue()), out, KEY, aad=aad) == len(data)
    assert out.getvalue() == data


def _rejected(blob: bytes, aad: bytes = b"") -> bool:
    try:
        unseal(blob, KEY, aad=aad)
    except SealingError:
        pass
    else:
        return False
    try:
        unseal_file(io.BytesIO(blob), io.BytesIO(), KEY, aad=aad)
    except SealingError:
        return True
    return False


@SETTINGS
@given(
    size=sizes,
    seed=st.integers(0, 2**32),
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_any_bit_flip_rejected(size: int, seed: int, where: float, bit: int) -> None:
    blob = bytearray(seal(sized_data(size, seed), KEY, chunk_size=CS))
    blob[int(where * len(blob))] ^= 1 << bit
    assert _rejected(bytes(blob))


@SETTINGS
@given(size=sizes, seed=st.integers(0, 2**32), data=st.data())
def test_any_truncation_rejected(size: int, seed: int, data: st.DataObject) -> None:
    blob = seal(sized_data(size, seed), KEY, chunk_size=CS)
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert _rejected(blob[:cut])


@SETTINGS
@given(size=sizes, seed=st.integers(0, 2**32), extra=st.binary(min_size=1, max_size=CS + 40))
def test_any_trailing_data_rejected(size: int, seed: int, extra: bytes) -> None:
    assert _rejected(seal(sized_data(size, seed), KEY, chunk_size=CS) + extra)


@SETTINGS
@given(
    n_chunks=st.integers(2, 5), tail=st.integers(1, CS), seed=st.integers(0, 2**32), data=st.data()
)
def test_any_chunk_permutation_rejected(
    n_chunks: int, tail: int, seed: int, data: st.DataObject
) -> None:
    blob = seal(sized_data((n_chunks - 1) * CS + tail, seed), KEY, chunk_size=CS)
    unit = CS + 16
    body = blob[HEADER_SIZE:]
    parts = [body[i : i + unit] for i in range(0, len(body), unit)]
    assert len(parts) == n_chunks
    order = data.draw(st.permutations(range(n_chunks)))
    drop = data.draw(st.booleans())
    chosen = list(order[:-1]) if drop else list(order)
    if chosen == list(range(n_chunks)):
        chosen = [*chosen, chosen[-1]]  # duplicate the last chunk instead
    assert _rejected(blob[:HEADER_SIZE] + b"".join(parts[i] for i in chosen))


@SETTINGS
@given(aad=st.binary(max_size=32), other=st.binary(max_size=32))
def test_wrong_aad_rejected(aad: bytes, other: bytes) -> None:
    if aad == other:
        other += b"\x00"
    assert _rejected(seal(b"payload", KEY, aad=aad, chunk_size=CS), aad=other)


@SETTINGS
@given(key=st.binary(min_size=32, max_size=32))
def test_wrong_key_rejected(key: bytes) -> None:
    blob = seal(b"payload", KEY, chunk_size=CS)
    if key != KEY:
        try:
            unseal(blob, key)
        except SealingError:
            return
        raise AssertionError("opened with the wrong key")
