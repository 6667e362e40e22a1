"""Transport framing: chunking, bounded reassembly with digests, JSON configs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teeflow.errors import ParseError
from teeflow.fl.transport.framing import (
    MAX_CONFIG_BYTES,
    Reassembler,
    TransportError,
    decode_config,
    encode_config,
    iter_chunks,
)


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_chunks_reassemble(data: bytes, size: int) -> None:
    chunks = list(iter_chunks(data, size))
    assert all(0 < len(c) <= size for c in chunks)
    r = Reassembler(len(data), hashlib.sha256(data).digest(), max_bytes=10_000, chunk_size=size)
    for c in chunks:
        r.add(c)
    assert r.complete and r.result() == data


def test_announced_size_is_bounded_before_receiving() -> None:
    with pytest.raises(TransportError, match="exceeds"):
        Reassembler(1001, bytes(32), max_bytes=1000)
    with pytest.raises(TransportError, match="32 bytes"):
        Reassembler(10, b"short", max_bytes=1000)


def test_overflow_digest_and_incomplete_are_refused() -> None:
    data = b"x" * 100
    r = Reassembler(100, hashlib.sha256(data).digest(), max_bytes=1000, chunk_size=60)
    with pytest.raises(TransportError, match="larger than the chunk size"):
        r.add(b"y" * 61)
    with pytest.raises(TransportError, match="empty"):
        r.add(b"")
    r.add(b"x" * 60)
    with pytest.raises(TransportError, match="incomplete"):
        r.result()
    with pytest.raises(TransportError, match="more payload"):
        r.add(b"x" * 41)
    r.add(b"z" * 40)  # right size, wrong content
    with pytest.raises(TransportError, match="SHA-256"):
        r.result()


def test_config_round_trip_and_canonical_text() -> None:
    cfg = {"lr": 0.1, "epochs": 3, "model": "mlp", "normalize": True}
    text = encode_config(cfg)
    assert text == '{"epochs":3,"lr":0.1,"model":"mlp","normalize":true}'
    assert decode_config(text) == cfg
    assert decode_config("") == {}


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',  # duplicate key
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":[1]}',  # not a scalar
        '{"a":{"b":1}}',
        "[1,2]",
        '{"":1}',
        '{"a":' + str(2**60) + "}",
        "not json",
        '{"a":"' + "x" * 5000 + '"}',
        '{"k":1' + ',"k%d":1' * 0 + "",  # truncated
    ],
)
def test_bad_configs_are_parse_errors(text: str) -> None:
    with pytest.raises(ParseError):
        decode_config(text)


def test_config_size_bound() -> None:
    with pytest.raises(ParseError):
        decode_config(" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ParseError):
        encode_config({f"k{i}": "v" * 3000 for i in range(30)})
    with pytest.raises(ParseError):
        encode_config({"x": [1, 2]})
