"""Property tests (issue 12): the OIP decoder and the envelope/serving-model openers are total.

Any body gives a decoded request or :class:`~teeflow.serve.oip.OipError` (a ParseError); any
ciphertext gives a request or :class:`~teeflow.errors.SealingError`; any serving-model file a
header or ParseError — never IndexError, struct.error, KeyError... Inputs: random bytes,
random JSON documents shaped like OIP requests, and mutations of valid messages.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.errors import ParseError, SealingError
from teeflow.fl.outputs import read_serving_header, seal_serving_model
from teeflow.serve.e2e import envelope_of, open_request, seal_request
from teeflow.serve.oip import decode_request, encode_request

_SERVER = X25519PrivateKey.generate()
_BODY, _LEN = encode_request({"input": np.arange(6, dtype=np.float32).reshape(2, 3)})
_CT, _ = seal_request(_BODY, _LEN, _SERVER.public_key(), "m")
_MODEL = seal_serving_model(b"\x00" * 8, bytes(32), name="m", kind="onnx", federation="f",
                            agreement_digest="aa" * 32, package_digest=None,
                            key_path="a/serve-key/b")

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=True), st.text(max_size=8))
_JSON = st.recursive(_SCALARS, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=12), c, max_size=4)),
    max_leaves=20)
_TENSOR = st.fixed_dictionaries({
    "name": st.one_of(st.text(max_size=4), _JSON),
    "shape": st.one_of(st.lists(st.integers(-2, 5), max_size=4), _JSON),
    "datatype": st.sampled_from(["FP32", "INT64", "UINT8", "BOOL", "BYTES", "X"]),
}, optional={"data": st.one_of(st.lists(_SCALARS, max_size=8), _JSON),
             "parameters": st.one_of(st.fixed_dictionaries(
                 {"binary_data_size": st.integers(-4, 64)}), _JSON)})
_REQUEST = st.fixed_dictionaries({"inputs": st.one_of(st.lists(_TENSOR, max_size=3), _JSON)},
                                 optional={"parameters": _JSON, "outputs": _JSON, "id": _JSON})


def _decode(body: bytes, length: str | None) -> None:
    with contextlib.suppress(ParseError):  # OipError is a ParseError; nothing else may escape
        envelope_of(decode_request(body, length))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256), st.one_of(st.none(), st.text(max_size=6)))
def test_decoder_is_total_on_bytes(body: bytes, length: str | None) -> None:
    _decode(body, length)


@settings(max_examples=300, deadline=None)
@given(_REQUEST, st.binary(max_size=64), st.booleans())
def test_decoder_is_total_on_oip_shaped_json(doc: dict[str, Any], tail: bytes,
                                             binary: bool) -> None:
    header = json.dumps(doc, allow_nan=True).encode()
    _decode(header + (tail if binary else b""), str(len(header)) if binary else None)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_CT) - 1), st.integers(1, 255), st.integers(0, len(_CT) - 1))
def test_envelope_open_is_total(pos: int, flip: int, cut: int) -> None:
    bad = bytearray(_CT)
    bad[pos] ^= flip
    for data in (bytes(bad), _CT[:cut]):
        try:
            open_request(data, _SERVER, "m")
        except SealingError:
            continue
        raise AssertionError("a changed envelope opened")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_MODEL) - 1), st.integers(1, 255), st.integers(0, len(_MODEL)))
def test_serving_header_parser_is_total(pos: int, flip: int, cut: int) -> None:
    bad = bytearray(_MODEL)
    bad[pos] ^= flip
    for data in (bytes(bad), _MODEL[:cut]):
        with contextlib.suppress(ParseError):
            read_serving_header(data)
