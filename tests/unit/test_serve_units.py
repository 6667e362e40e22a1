"""Issue 12 pure parts: serving terms, OIP codec bounds, HPKE envelopes, access control and
the serving model file (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_kbs_service import agreement_doc

from teeflow.errors import ParseError, SealingError
from teeflow.fl.arrays import encode_arrays
from teeflow.fl.outputs import (
    open_serving_model,
    read_serving_header,
    seal_for_serving,
    seal_serving_model,
    serving_resources,
)
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.serving import ServingTerms, api_key_digest, new_api_key
from teeflow.sealing import generate_key
from teeflow.serve.access import AccessControl, Forbidden, QuotaExceeded, Unauthorized
from teeflow.serve.e2e import (
    E2E_PARAMETER,
    envelope_of,
    envelope_request,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from teeflow.serve.oip import (
    HEADER_LENGTH,
    InferResponse,
    OipError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

X = np.arange(12, dtype=np.float32).reshape(3, 4)


# -- agreement ------------------------------------------------------------------------------

def test_serving_terms_are_validated_in_the_agreement() -> None:
    key = new_api_key()
    doc = agreement_doc(serving={"require_e2e": True, "callers": {
        "bob": {"api_keys": [api_key_digest(key)], "max_requests": 3, "rate": 2.0}}})
    a = FederationAgreement.from_mapping(doc)
    assert a.serving is not None and a.serving.callers["bob"].max_requests == 3
    bad = [
        {"serving": {"callers": {"mallory": {}}}},  # not a party
        {"serving": {"callers": {"bob": {"signed": False}}}},  # no way in
        {"serving": {"callers": {"bob": {"api_keys": [key]}}}},  # a key, not its digest
        {"outputs": {"serve": ["alice"]}},  # no workloads.serve
    ]
    for change in bad:
        with pytest.raises(ParseError):
            FederationAgreement.from_mapping(agreement_doc(**change))


# -- OIP --------------------------------------------------------------------------------------

def test_oip_round_trips_json_and_binary() -> None:
    for binary in (False, True):
        body, n = encode_request({"input": X}, binary=binary, id="r1")
        req = decode_request(body, None if n is None else str(n))
        np.testing.assert_array_equal(req.inputs["input"], X)
        assert req.id == "r1" and req.binary_outputs == binary
        rbody, rn = encode_response(InferResponse("m", {"y": X.astype(np.int64)}), binary=binary)
        resp = decode_response(rbody, None if rn is None else str(rn))
        assert resp.outputs["y"].dtype == np.int64
    stock = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32",
                         "data": [[1, 2], [3, 4]]}]}
    assert decode_request(json.dumps(stock).encode()).inputs["input"].shape == (2, 2)


@pytest.mark.parametrize("doc, length, tail", [
    ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, False, b""),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]}]},
     False, b""),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                  "parameters": {"binary_data_size": 4}}]}, True, b"\0" * 4),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                  "parameters": {"binary_data_size": 8}}]}, True, b"\0" * 4),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                  "parameters": {"binary_data_size": 4}}]}, True, b"\0" * 8),
    ({"inputs": [{"name": "a", "shape": [1 << 40], "datatype": "FP32", "data": []}]},
     False, b""),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}] * 2},
     False, b""),
    ({"inputs": []}, False, b""),
])
def test_oip_refuses_malformed_requests(doc: dict[str, Any], length: bool, tail: bytes) -> None:
    header = json.dumps(doc).encode()
    with pytest.raises(OipError):
        decode_request(header + tail, str(len(header)) if length else None)
    with pytest.raises(OipError):
        decode_request(b"{}", "99")  # header length past the body


# -- HPKE envelopes ---------------------------------------------------------------------------

def test_envelopes_round_trip_and_bind_model_and_request() -> None:
    server = X25519PrivateKey.generate()
    body, n = encode_request({"input": X})
    ct, client = seal_request(body, n, server.public_key(), "mnist", api_key="k")
    opened = open_request(ct, server, "mnist")
    assert opened.api_key == "k" and opened.header_length == str(n)
    np.testing.assert_array_equal(decode_request(opened.body, opened.header_length)
                                  .inputs["input"], X)
    sealed = seal_response(b"answer", None, opened.client_key, ct)
    assert open_response(sealed, client, ct) == (b"answer", None)
    outer, ln = envelope_request(ct)
    assert envelope_of(decode_request(outer, str(ln))) == ct
    # attacks: another model name, a flipped bit, a response moved to another request
    with pytest.raises(SealingError):
        open_request(ct, server, "other")
    flipped = bytearray(ct)
    flipped[40] ^= 1
    with pytest.raises(SealingError):
        open_request(bytes(flipped), server, "mnist")
    ct2, _ = seal_request(body, n, server.public_key(), "mnist")
    with pytest.raises(SealingError):
        open_response(sealed, client, ct2)


def test_malformed_envelopes_are_refused() -> None:
    body, n = encode_request({"input": X, "teeflow_hpke": np.zeros(4, np.uint8)},
                             parameters={E2E_PARAMETER: "hpke-v1"})
    with pytest.raises(OipError):  # more than the one ciphertext tensor
        envelope_of(decode_request(body, str(n)))
    body, n = encode_request({"teeflow_hpke": np.zeros(4, np.uint8)},
                             parameters={E2E_PARAMETER: "rot13"})
    with pytest.raises(OipError):
        envelope_of(decode_request(body, str(n)))
    assert HEADER_LENGTH == "Inference-Header-Content-Length"


# -- access control ---------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_access_control_callers_quotas_and_counts() -> None:
    key = new_api_key()
    terms = ServingTerms.model_validate({"callers": {
        "bob": {"signed": True, "api_keys": [api_key_digest(key)], "max_requests": 5,
                "rate": 1.0, "burst": 2},
        "carol": {"signed": False, "api_keys": [api_key_digest(new_api_key())]}}})
    clock = FakeClock()
    ac = AccessControl(terms, ["alice", "bob", "carol"], clock=clock)
    assert ac.identify(signed_party="bob", api_key=None) == "bob"
    assert ac.identify(signed_party=None, api_key=key) == "bob"
    for who, cred, err in (("alice", None, Forbidden), ("carol", None, Forbidden),
                           (None, "nope", Unauthorized), (None, None, Unauthorized)):
        with pytest.raises(err):
            ac.identify(signed_party=who, api_key=cred)
    ac.admit("bob")
    ac.admit("bob")
    with pytest.raises(QuotaExceeded):  # burst of 2 used up at t=0
        ac.admit("bob")
    for _ in range(3):
        clock.t += 1.0
        ac.admit("bob")
    clock.t += 10.0
    with pytest.raises(QuotaExceeded):  # 5 requests in all
        ac.admit("bob")
    ac.answered("bob")
    assert ac.take_batch() == ({"bob": 1}, {"alice": 1, "carol": 1, "bob": 2})
    assert ac.take_batch() is None


# -- serving model file -----------------------------------------------------------------------

def test_serving_model_file_binds_header_and_key(tmp_path: Any) -> None:
    arrays = encode_arrays({"w": X})
    key = generate_key()
    blob = seal_serving_model(arrays, key, name="m", kind="arrays", federation="f",
                              agreement_digest="aa" * 32, package_digest="bb" * 32,
                              key_path="alice/serve-key/x")
    header, payload = open_serving_model(blob, key)
    assert payload == arrays and header.package_digest == "bb" * 32
    with pytest.raises(SealingError):
        open_serving_model(blob, generate_key())
    tampered = blob.replace(b'"name":"m"', b'"name":"n"')
    assert read_serving_header(tampered).name == "n"
    with pytest.raises(SealingError):  # the header is the ciphertext's associated data
        open_serving_model(tampered, key)
    with pytest.raises(ParseError):
        read_serving_header(b"TFMODEL\0\1" + blob[9:])


def test_aggregator_hook_seals_for_serving_only_under_outputs_serve(tmp_path: Any) -> None:
    plain = FederationAgreement.from_mapping(agreement_doc())
    assert serving_resources(plain, "s1") == []
    fetched: list[str] = []
    assert seal_for_serving(b"", plain, session="s1", package_digest="cc" * 32,
                            fetch_key=lambda p: fetched.append(p) or b"", out_dir=tmp_path) is None
    doc = agreement_doc(outputs={"model": ["alice"], "serve": ["alice"]})
    doc["workloads"]["serve"] = {"sgx": {"mrenclave": ["5e" * 32]}}
    agreement = FederationAgreement.from_mapping(doc)
    key = generate_key()
    arrays = encode_arrays({"w": X})
    out = seal_for_serving(arrays, agreement, session="s1", package_digest="cc" * 32,
                           fetch_key=lambda p: fetched.append(p) or key, out_dir=tmp_path)
    assert out is not None and fetched == ["fl/serve-key/s1"]
    header, payload = open_serving_model(out.read_bytes(), key)
    assert payload == arrays and header.key_path == "fl/serve-key/s1" and header.name == "s1"
