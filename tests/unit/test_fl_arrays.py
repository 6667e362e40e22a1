"""teeflow.fl.arrays: safetensors round trip, canonical digests, bounded hostile headers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from teeflow.errors import FLError, ParseError
from teeflow.fl.arrays import (
    ArrayLimits,
    arrays_digest,
    check_compatible,
    decode_arrays,
    encode_arrays,
    read_header,
)


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "fc1.weight": rng.standard_normal((20, 8)).astype(np.float32),
        "fc1.bias": rng.standard_normal(20).astype(np.float32),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


def forge(header: Any, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


names = st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True)
arrays_st = st.dictionaries(
    names,
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(arrays_st)
def test_round_trip_and_digest(arrays: dict[str, np.ndarray]) -> None:
    data = encode_arrays(arrays)
    back = decode_arrays(data)
    assert list(back) == sorted(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == np.float32 and back[k].shape == v.shape
        assert np.array_equal(back[k], v)
    assert arrays_digest(arrays) == hashlib.sha256(data).digest() == arrays_digest(back)


def test_digest_is_stable_across_order_and_layout() -> None:
    a = model()
    b = {k: np.asfortranarray(a[k]) if a[k].ndim > 1 else a[k] for k in reversed(list(a))}
    c = {k: a[k].astype(">f4") for k in a}  # big-endian input, same values
    transposed = {"w": np.arange(6, dtype=np.float32).reshape(2, 3).T}
    assert arrays_digest(a) == arrays_digest(b) == arrays_digest(c)
    assert np.array_equal(decode_arrays(encode_arrays(transposed))["w"], transposed["w"])
    assert arrays_digest(model()) == arrays_digest(a)  # same values, new objects
    changed = dict(a)
    changed["fc1.bias"] = a["fc1.bias"].copy()
    changed["fc1.bias"][0] = np.nextafter(changed["fc1.bias"][0], np.float32(9))
    assert arrays_digest(changed) != arrays_digest(a)
    assert arrays_digest({}) == hashlib.sha256(encode_arrays({})).digest()


def test_dtypes_float32_only_unless_allowed() -> None:
    with pytest.raises(ParseError, match="dtype"):
        encode_arrays({"x": np.zeros(2, np.float64)})
    with pytest.raises(ParseError, match="dtype"):
        encode_arrays({"x": np.zeros(2, np.int64)})
    lim = ArrayLimits(dtypes=frozenset({"F32", "F64"}))
    data = encode_arrays({"x": np.zeros(2, np.float64)}, limits=lim)
    assert decode_arrays(data, limits=lim)["x"].dtype == np.float64
    with pytest.raises(ParseError, match="not allowed"):
        decode_arrays(data)
    with pytest.raises(ParseError):
        encode_arrays({"x": [1.0, 2.0]})  # type: ignore[dict-item]


@pytest.mark.parametrize("name", ["", "__metadata__", "a b", "é", "x" * 300, "-x", "../x"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ParseError):
        encode_arrays({name: np.zeros(1, np.float32)})


def test_limits_on_encode() -> None:
    with pytest.raises(ParseError, match="exceed"):
        encode_arrays(
            {f"a{i}": np.zeros(1, np.float32) for i in range(3)}, limits=ArrayLimits(max_tensors=2)
        )
    with pytest.raises(ParseError, match="bytes"):
        encode_arrays({"a": np.zeros(100, np.float32)}, limits=ArrayLimits(max_total_bytes=399))
    with pytest.raises(ParseError, match="rank"):
        encode_arrays({"a": np.zeros((1,) * 9, np.float32)})


def entry(begin: int, end: int, shape: list[int], dtype: str = "F32") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


MALICIOUS = {
    "short": b"\x01\x02",
    "header longer than limit": struct.pack("<Q", 2**63) + b"{}",
    "header past the end": struct.pack("<Q", 100) + b"{}",
    "not utf8": forge(None, raw_header=b"\xff\xfe"),
    "not json": forge(None, raw_header=b"{not json"),
    "nan constant": forge(None, raw_header=b'{"a": NaN}'),
    "not an object": forge([1, 2]),
    "duplicate keys": forge(
        None,
        b"\0" * 8,
        raw_header=b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
    ),
    "metadata": forge({"__metadata__": {"k": "v"}}),
    "extra field": forge({"a": {**entry(0, 4, [1]), "x": 1}}, b"\0" * 4),
    "missing field": forge({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
    "dtype not allowed": forge({"a": entry(0, 8, [1], "F64")}, b"\0" * 8),
    "unknown dtype": forge({"a": entry(0, 4, [1], "Q7")}, b"\0" * 4),
    "negative dim": forge({"a": entry(0, 4, [-1])}, b"\0" * 4),
    "bool dim": forge({"a": entry(0, 4, [True])}, b"\0" * 4),
    "float dim": forge({"a": entry(0, 4, [1.0])}, b"\0" * 4),
    "rank too high": forge({"a": entry(0, 4, [1] * 9)}, b"\0" * 4),
    "huge shape": forge({"a": entry(0, 4, [2**40, 2**40])}, b"\0" * 4),
    "offsets vs shape": forge({"a": entry(0, 8, [1])}, b"\0" * 8),
    "reversed offsets": forge({"a": entry(4, 0, [1])}, b"\0" * 4),
    "offsets not a pair": forge({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}),
    "overlap": forge({"a": entry(0, 4, [1]), "b": entry(0, 4, [1])}, b"\0" * 4),
    "gap": forge({"a": entry(4, 8, [1])}, b"\0" * 8),
    "trailing bytes": forge({"a": entry(0, 4, [1])}, b"\0" * 5),
    "truncated data": forge({"a": entry(0, 4, [1])}, b"\0" * 3),
    "bad name": forge({"a b": entry(0, 4, [1])}, b"\0" * 4),
    "deep nesting": forge(None, raw_header=b"[" * 100_000 + b"]" * 100_000),
}


@pytest.mark.parametrize("blob", list(MALICIOUS.values()), ids=list(MALICIOUS))
def test_malicious_headers_are_parse_errors(blob: bytes) -> None:
    with pytest.raises(ParseError):
        decode_arrays(blob)


def test_count_and_size_limits_on_decode() -> None:
    data = encode_arrays({f"a{i}": np.zeros(4, np.float32) for i in range(5)})
    with pytest.raises(ParseError, match="tensors exceed"):
        decode_arrays(data, limits=ArrayLimits(max_tensors=4))
    with pytest.raises(ParseError, match="exceed"):
        decode_arrays(data, limits=ArrayLimits(max_total_bytes=79))
    with pytest.raises(ParseError, match="header"):
        decode_arrays(data, limits=ArrayLimits(max_header_bytes=16))
    assert len(read_header(data)) == 5


def test_non_canonical_bytes_are_refused() -> None:
    arrays = {"a": np.ones(2, np.float32), "b": np.zeros(1, np.float32)}
    good = encode_arrays(arrays)
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    body = good[8 + n :]
    # same tensors, header re-serialised with other spacing / key order / padding
    for text in (
        json.dumps(header, indent=1).encode(),
        json.dumps(dict(reversed(list(header.items())))).encode(),
        good[8 : 8 + n] + b"        ",
    ):
        with pytest.raises(ParseError, match="canonical"):
            decode_arrays(forge(None, body, raw_header=text))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bit_flips_never_escape_as_other_errors(data: st.DataObject) -> None:
    good = encode_arrays(model())
    pos = data.draw(st.integers(0, len(good) - 1))
    bit = data.draw(st.integers(0, 7))
    blob = bytearray(good)
    blob[pos] ^= 1 << bit
    try:
        back = decode_arrays(bytes(blob))
    except ParseError:
        return
    assert arrays_digest(back) == hashlib.sha256(bytes(blob)).digest() != arrays_digest(model())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_is_total(blob: bytes) -> None:
    with contextlib.suppress(ParseError):
        decode_arrays(blob)


def test_check_compatible() -> None:
    ref = model()
    check_compatible(ref, {k: v.copy() for k, v in ref.items()})
    with pytest.raises(FLError, match="names differ"):
        check_compatible(ref, {"x": np.zeros(1, np.float32)})
    bad = dict(ref)
    bad["fc1.bias"] = np.zeros(21, np.float32)
    with pytest.raises(FLError, match="shape"):
        check_compatible(ref, bad)
    bad["fc1.bias"] = np.zeros(20, np.float64)
    with pytest.raises(FLError, match="float32"):
        check_compatible(ref, bad)
    bad["fc1.bias"] = np.full(20, np.nan, np.float32)
    with pytest.raises(FLError, match="NaN"):
        check_compatible(ref, bad)
