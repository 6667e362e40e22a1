"""teeflow.compute.values: encoding round trips, zero-copy decoding, strict parsing."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from teeflow.compute.values import (
    VALUE_HEADER_SIZE,
    ValueLimits,
    decode_value,
    encode_value,
    encoded_kind,
)
from teeflow.errors import ParseError

DTYPES = ["<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "?"]


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=4,
                                                            min_side=0, max_side=5)))
def test_array_round_trip(arr: np.ndarray) -> None:
    data = encode_value(arr)
    assert encoded_kind(data) == "array"
    out = decode_value(data)
    assert out.dtype == arr.dtype.newbyteorder("<") or out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_payload_is_standard_safetensors_and_zero_copy() -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(4, np.int64)}
    data = encode_value(arrays)
    assert encoded_kind(data) == "arrays"
    loaded = safetensors.numpy.load(bytes(data[VALUE_HEADER_SIZE:]))
    assert set(loaded) == {"a", "b"}
    np.testing.assert_array_equal(loaded["b"], arrays["b"])
    out = decode_value(data)
    assert np.shares_memory(out["b"], np.frombuffer(data, np.uint8))
    out["b"][0, 0] = 42  # writable view over the decoded buffer
    assert decode_value(data)["b"][0, 0] == 42


def test_non_contiguous_and_big_endian_arrays() -> None:
    arr = np.arange(20, dtype=">f8").reshape(4, 5)[:, ::2]
    np.testing.assert_array_equal(decode_value(encode_value(arr)), arr)


def test_bytes_json_and_table_round_trips() -> None:
    assert decode_value(encode_value(b"\x00raw")) == b"\x00raw"
    doc = {"mean": np.float32(1.5), "n": np.int64(3), "xs": [1, 2.5, "s", None, True]}
    assert decode_value(encode_value(doc)) == {"mean": 1.5, "n": 3,
                                               "xs": [1, 2.5, "s", None, True]}
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"id": [1, 2, 3], "income": [10.5, 20.0, None], "name": ["a", "b", "c"]})
    out = decode_value(encode_value(table))
    assert encoded_kind(encode_value(table)) == "table"
    assert out.equals(table)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: 2}, object(), {"a": [set()]}])
def test_unencodable_values(bad: object) -> None:
    with pytest.raises(ParseError):
        encode_value(bad)


def test_object_arrays_refused() -> None:
    with pytest.raises(ParseError):
        encode_value(np.array([object()]))


@pytest.mark.parametrize("data", [
    b"", b"TFCV", b"XXXX\x01\x01\x00\x00", b"TFCV\x02\x01\x00\x00", b"TFCV\x01\x09\x00\x00",
    b"TFCV\x01\x01\x00\x01", b"TFCV\x01\x01\x00\x00" + b"\x00" * 3,
    b"TFCV\x01\x01\x00\x00" + struct.pack("<Q", 1 << 40),
    b"TFCV\x01\x05\x00\x00{", b"TFCV\x01\x05\x00\x00NaN", b"TFCV\x01\x05\x00\x00\xff",
    b"TFCV\x01\x03\x00\x00not arrow",
])
def test_malformed_values_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        decode_value(data)


def test_array_kind_needs_exactly_one_tensor_and_limits_apply() -> None:
    two = encode_value({"a": np.ones(2), "b": np.ones(2)})
    forged = bytearray(two)
    forged[5] = 1  # claim kind "array"
    with pytest.raises(ParseError):
        decode_value(forged)
    with pytest.raises(ParseError):
        decode_value(encode_value(np.ones(1000)), limits=ValueLimits(max_bytes=100))
    deep: list[object] = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(ParseError):
        encode_value(deep)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_is_total(data: bytes) -> None:
    for prefix in (b"", b"TFCV\x01\x01\x00\x00", b"TFCV\x01\x02\x00\x00", b"TFCV\x01\x05\x00\x00"):
        with contextlib.suppress(ParseError):
            decode_value(prefix + data)
