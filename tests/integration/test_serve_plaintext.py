"""Issue 12: an ONNX model (onnxruntime) behind the same server, in plaintext mode — stock
OIP clients (plain ``httpx`` and ``tritonclient.http``) call it with a per-party API key, and
the teeflow client still gets end-to-end encryption (``require_e2e: false`` allows both)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from teeflow.kbs.policy.serving import api_key_digest
from teeflow.serve.client import Client, tls_context
from teeflow.serve.oip import HEADER_LENGTH, decode_response, encode_request
from teeflow.serve.sandbox import LocalServing, local_serving

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="needs onnxruntime and onnx (pip install 'teeflow[onnx]' onnx)")

W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 10
B = np.array([0.5, -0.5, 0.0], dtype=np.float32)
KEY = "tfk_plaintext-test-key-0000000000000000"


def _onnx_model() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServing]:
    work = tmp_path_factory.mktemp("serve-onnx")
    serving = {"require_e2e": False,
               "callers": {"hospital-b": {"api_keys": [api_key_digest(KEY)]}}}
    with local_serving(work / "fed", None, None, owner="hospital-a", onnx_model=_onnx_model(),
                       parties={"hospital-a": ["model-owner"], "hospital-b": ["data-owner"]},
                       serving=serving, platform="emulated-tdx") as s:
        yield s


def test_stock_httpx_client_json_and_binary(srv: LocalServing) -> None:
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=srv.url, verify=tls_context(srv.pin)) as h:  # stock client
        meta = h.get(f"/v2/models/{srv.workload.name}").json()
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        body = {"inputs": [{"name": "x", "shape": [5, 4], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = h.post(f"/v2/models/{srv.workload.name}/infer", json=body, headers=auth)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["name"] == "y" and out["shape"] == [5, 3]
        np.testing.assert_allclose(np.array(out["data"]).reshape(5, 3), x @ W + B, rtol=1e-5)
        raw, n = encode_request({"x": x}, binary=True)
        r = h.post(f"/v2/models/{srv.workload.name}/infer", content=raw,
                   headers={**auth, HEADER_LENGTH: str(n)})
        resp = decode_response(r.content, r.headers.get(HEADER_LENGTH))
        np.testing.assert_allclose(resp.outputs["y"], x @ W + B, rtol=1e-5)
        r = h.post(f"/v2/models/{srv.workload.name}/infer", json=body)  # no credential
        assert r.status_code == 401 and r.json()["type"].endswith("/Unauthorized")


def test_tritonclient_http(srv: LocalServing) -> None:
    tc = pytest.importorskip("tritonclient.http")
    x = np.ones((2, 4), dtype=np.float32)


    # the chain is verified against the federation CA (the server's certificate is its serve
    # certificate); geventhttpclient's insecure=True only skips the host name match (a
    # workload certificate names a workload, not a host)
    client = tc.InferenceServerClient(srv.url.removeprefix("https://"), ssl=True, insecure=True,
                                      ssl_context_factory=lambda **_: tls_context(srv.pin))
    try:
        assert client.is_server_live() and client.is_model_ready(srv.workload.name)
        inp = tc.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        res = client.infer(srv.workload.name, [inp], headers={"Authorization": f"Bearer {KEY}"})
        np.testing.assert_allclose(res.as_numpy("y"), x @ W + B, rtol=1e-5)
    finally:
        client.close()


def test_teeflow_client_is_end_to_end_with_an_api_key(srv: LocalServing) -> None:
    x = np.full((3, 4), 0.25, dtype=np.float32)
    with Client(srv.url, pin=srv.pin, api_key=KEY) as c:
        identity = c.verify_server()
        assert identity.tee == "emulated-tdx"
        np.testing.assert_allclose(c.infer({"x": x})["y"], x @ W + B, rtol=1e-5)
