"""Issue 12 end to end: an attested OIP server that gets its model key only from the KBS.

One federation per module (KBS on SQLite + serving workload on emulated SGX, real HTTPS on
127.0.0.1): hospital-a owns the model (publishes it for serving, enrolls the server),
hospital-b may call it (signed and with an API key), dave too but at most 6 times, carol
may not.
The model is a numpy linear classifier in a small compute package (no torch in this test).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from teeflow.errors import SealingError
from teeflow.kbs.api.problems import PolicyDeny
from teeflow.kbs.policy.serving import api_key_digest
from teeflow.kbs.service.audit import verify_audit_chain
from teeflow.kbs.service.usage import usage_of
from teeflow.platform.emulated import EmulatedSgx
from teeflow.platform.selection import attester_for
from teeflow.serve.client import Client, ServeRefused, ServerUnverified, tls_context
from teeflow.serve.e2e import envelope_request, seal_request
from teeflow.serve.oip import HEADER_LENGTH, encode_request
from teeflow.serve.sandbox import LocalServing, local_serving
from teeflow.serve.workload import ServeWorkload, serve_measurement

PACKAGE = {
    "teeflow.yaml": (
        "name: linear\nversion: 1.0.0\nentrypoints:\n  predict: model:predict\n"
        "functions:\n  predict_metadata: model:metadata\n"
    ),
    "model.py": (
        "import numpy as np\n"
        "def predict(arrays, inputs, config):\n"
        "    x = np.asarray(inputs['input'], dtype=np.float32)\n"
        "    y = x @ arrays['w'] + arrays['b']\n"
        "    return {'scores': y, 'label': y.argmax(axis=1).astype(np.int64)}\n"
        "def metadata(arrays, config):\n"
        "    return {'inputs': [{'name': 'input', 'datatype': 'FP32', 'shape': [-1, 4]}],\n"
        "            'outputs': [{'name': 'scores', 'datatype': 'FP32', 'shape': [-1, 3]}]}\n"
    ),
}
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([0.5, -0.5, 0.0], dtype=np.float32)
API_KEY = "tfk_test-key-for-hospital-b-000000000000"
QUOTA = 6


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServing]:
    work = tmp_path_factory.mktemp("serve")
    pkg = work / "linear"
    pkg.mkdir()
    for name, text in PACKAGE.items():
        (pkg / name).write_text(text)
    serving = {"require_e2e": True, "usage_batch": 5, "callers": {
        "hospital-b": {"signed": True, "api_keys": [api_key_digest(API_KEY)]},
        "dave": {"signed": True, "max_requests": QUOTA}}}
    with local_serving(work / "fed", pkg, {"w": W, "b": B}, owner="hospital-a",
                       parties={"hospital-a": ["model-owner", "data-owner"],
                                "hospital-b": ["data-owner"], "carol": ["data-owner"],
                                "dave": ["data-owner"]},
                       serving=serving) as s:
        yield s


def _client(srv: LocalServing, party: str | None = "hospital-b", **kw: Any) -> Client:
    keys = srv.keys[party] if party else None
    return Client(srv.url, pin=srv.pin, party=keys, **kw)


def test_encrypted_inference_matches_the_model_and_is_audited(srv: LocalServing) -> None:
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    with _client(srv) as c:
        identity = c.verify_server()
        assert identity.role == "serve" and identity.emulated
        out = c.infer({"input": x})
        out_json = c.infer({"input": x}, binary=False)
    np.testing.assert_allclose(out["scores"], x @ W + B, rtol=1e-6)
    np.testing.assert_array_equal(out["label"], (x @ W + B).argmax(axis=1))
    np.testing.assert_allclose(out_json["scores"], out["scores"])
    with _client(srv, party=None, api_key=API_KEY) as c:
        for _ in range(3):
            c.infer({"input": x})
    with _client(srv, session=False) as c:  # per-request HPKE + RFC 9421 (hpke-v1)
        np.testing.assert_allclose(c.infer({"input": x})["scores"], out["scores"])
        assert c._session is None
    srv.workload.flush_usage()
    entries = srv.audit()
    verify_audit_chain(entries, srv.pin.audit_public())
    usage = [e for e in entries if e.kind == "usage"]
    assert usage and all(e.subject == f"serve:{srv.workload.header.digest}" for e in usage)
    assert sum(usage_of(e.data)[0].get("hospital-b", 0) for e in usage) >= 5
    assert all(e.data["role"] == "serve" for e in usage)


def test_plaintext_refused_under_require_e2e_and_metadata_is_oip(srv: LocalServing) -> None:
    with httpx.Client(base_url=srv.url, verify=tls_context(srv.pin)) as h:
        assert h.get("/v2/health/live").json() == {"live": True}
        assert h.get("/v2/health/ready").status_code == 200
        meta = h.get("/v2/models/linear").json()
        assert meta["inputs"][0]["shape"] == [-1, 4] and meta["parameters"]["require_e2e"]
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": [0.1, 0.2, 0.3, 0.4]}]}
        r = h.post("/v2/models/linear/infer", json=body,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/PlaintextRefused")


@pytest.mark.parametrize("session", [True, False], ids=["session-v1", "hpke-v1"])
def test_tampered_request_and_response_are_detected(srv: LocalServing, session: bool) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    with _client(srv, session=session) as c:
        c.verify_server()
        assert c._server_key is not None
        inner, n = encode_request({"input": x})
        ct, _ = seal_request(inner, n, c._server_key, "linear", api_key=API_KEY)
        bad = bytearray(ct)
        bad[-3] ^= 1
        body, length = envelope_request(bytes(bad))
        with httpx.Client(base_url=srv.url, verify=tls_context(srv.pin)) as h:
            r = h.post("/v2/models/linear/infer", content=body,
                       headers={HEADER_LENGTH: str(length)})
        assert r.status_code == 400 and r.json()["type"].endswith("/BadRequest")
        # a response changed in transit does not open
        real_post = c._post

        def flip(body: bytes, length: int | None) -> httpx.Response:
            resp = real_post(body, length)
            raw = bytearray(resp.content)
            raw[-2] ^= 1
            return httpx.Response(200, content=bytes(raw), headers=resp.headers)

        c._post = flip  # type: ignore[method-assign]
        with pytest.raises(SealingError):
            c.infer({"input": x})


def test_unauthorised_caller_and_exhausted_quota_get_rfc7807(srv: LocalServing) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    with _client(srv, party="carol") as c, pytest.raises(ServeRefused) as refused:
        c.infer({"input": x})
    assert refused.value.status == 403 and refused.value.problem["type"].endswith("/Forbidden")
    with _client(srv, party=None, api_key="tfk_not-a-key") as c, \
            pytest.raises(ServeRefused) as refused:
        c.infer({"input": x})
    assert refused.value.status == 401
    with _client(srv, party="dave") as c:
        for _ in range(QUOTA):
            c.infer({"input": x})
        with pytest.raises(ServeRefused) as refused:
            c.infer({"input": x})
    assert refused.value.status == 429
    assert refused.value.problem["type"].endswith("/QuotaExceeded")
    srv.workload.flush_usage()
    usage = [e for e in srv.audit() if e.kind == "usage"]
    assert sum(usage_of(e.data)[0].get("dave", 0) for e in usage) == QUOTA
    assert sum(usage_of(e.data)[1].get("dave", 0) for e in usage) == 1
    assert sum(usage_of(e.data)[1].get("carol", 0) for e in usage) >= 1


def test_workload_with_another_measurement_gets_no_model_key(srv: LocalServing) -> None:
    rogue_platform = EmulatedSgx(srv.authority, measurement=bytes.fromhex("0c" * 32))
    rogue = ServeWorkload(srv.pin, rogue_platform, srv.serve_file,
                          package=srv.package_archive, enrollment=srv.enrollment)
    from teeflow.kbs.api.problems import AttestationFailed

    with pytest.raises((AttestationFailed, PolicyDeny)):
        rogue.start()
    assert rogue.predictor is None
    rogue.close()


def test_server_with_unverified_certificate_is_refused(srv: LocalServing) -> None:
    with _client(srv, model="other-model") as c, pytest.raises(ServerUnverified):
        c.verify_server()


def test_model_never_on_disk_in_plaintext(srv: LocalServing) -> None:
    needle = W.tobytes()[:16]
    found = []
    for root, _dirs, files in os.walk(srv.home.parent):
        for f in files:
            p = Path(root) / f
            if p.name == "model.model":  # the owner's sealed FL model (ciphertext too)
                continue
            try:
                if needle in p.read_bytes():
                    found.append(p)
            except OSError:
                continue
    assert not found
    raw = srv.serve_file.read_bytes()
    assert needle not in raw


def test_replayed_or_stale_envelope_is_refused(srv: LocalServing) -> None:
    """Attack: a TLS-terminating proxy replays a captured envelope (to spend hospital-b's
    quota) or holds one back; the server accepts each envelope once and only while fresh."""
    import time

    x = np.ones((1, 4), dtype=np.float32)
    with _client(srv) as c:
        c.verify_server()
        assert c._server_key is not None
        inner, n = encode_request({"input": x})
        fresh, _ = seal_request(inner, n, c._server_key, "linear", api_key=API_KEY)
        stale, _ = seal_request(inner, n, c._server_key, "linear", api_key=API_KEY,
                                created=int(time.time()) - 3600)
    with httpx.Client(base_url=srv.url, verify=tls_context(srv.pin)) as h:
        def post(ct: bytes) -> httpx.Response:
            body, length = envelope_request(ct)
            return h.post("/v2/models/linear/infer", content=body,
                          headers={HEADER_LENGTH: str(length)})

        assert post(fresh).status_code == 200
        again = post(fresh)  # replay check comes before the caller's quota
        assert again.status_code == 400 and "replayed" in again.json()["detail"]
        old = post(stale)
        assert old.status_code == 400 and "stale" in old.json()["detail"]


def test_cli_model_publish_serve_then_a_workload_opens_it(srv: LocalServing,
                                                          tmp_path: Path) -> None:
    """``teeflow model publish MODEL --party NAME --serve``: the owner re-seals the FL model it
    holds; a serving workload with the agreed measurement then gets the new key and serves."""
    from typer.testing import CliRunner

    from teeflow.cli.main import app

    keydir = tmp_path / "keys"
    srv.keys["hospital-a"].save(keydir / "hospital-a")
    out = tmp_path / "published.serve"
    model = srv.home.parent / "model.model"
    pin = srv.home.parent / "pin.json"
    result = CliRunner().invoke(app, [
        "model", "publish", str(model), "--party", "hospital-a", "--serve", "--dir",
        str(keydir / "hospital-a"), "--pin", str(pin), "-o", str(out), "--name", "linear",
        "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["serving_model"] == str(out) and doc["resource"].startswith("hospital-a/serve-key/")
    measured = CliRunner().invoke(app, ["serve", "--measurement"])
    assert measured.exit_code == 0 and measured.output.strip() == serve_measurement().hex()
    attester = attester_for("emulated-sgx", measurement=serve_measurement(),
                            authority=srv.authority, home=srv.home)
    second = ServeWorkload(srv.pin, attester, out, package=srv.package_archive,
                           enrollment=srv.enrollment)
    try:
        second.start()
        x = np.ones((2, 4), dtype=np.float32)
        assert second.predictor is not None
        np.testing.assert_allclose(second.predictor.predict({"input": x})["scores"], x @ W + B,
                                   rtol=1e-6)
    finally:
        second.close()
    result = CliRunner().invoke(app, [
        "model", "publish", str(model), "--party", "hospital-a", "--dir",
        str(keydir / "hospital-a"), "--pin", str(pin)])
    assert result.exit_code != 0  # says where to publish: --serve


def test_session_requests_replayed_reordered_or_moved_are_refused(srv: LocalServing) -> None:
    """Attack (session-v1): a TLS-terminating proxy replays a captured session request,
    delivers one late (after a later one), or moves it to another session; each gets a 400
    problem and no prediction. A setup replayed is refused too."""
    x = np.ones((1, 4), dtype=np.float32)
    sent: list[tuple[bytes, int | None]] = []
    with _client(srv) as c, _client(srv) as other, \
            httpx.Client(base_url=srv.url, verify=tls_context(srv.pin)) as h:
        real_post = c._post

        def capture(body: bytes, length: int | None) -> httpx.Response:
            sent.append((body, length))
            return real_post(body, length)

        c._post = capture  # type: ignore[method-assign]
        for _ in range(2):
            c.infer({"input": x})
        other.infer({"input": x})

        def post(body: bytes, length: int | None) -> httpx.Response:
            return h.post("/v2/models/linear/infer", content=body,
                          headers={HEADER_LENGTH: str(length)})

        replayed = post(*sent[1])
        assert replayed.status_code == 400 and "replayed" in replayed.json()["detail"]
        late = post(*sent[0])
        assert late.status_code == 400 and "reordered" in late.json()["detail"]
        # the same ciphertext relabelled with the other client's session id
        body, length = sent[1]
        assert c._session is not None and other._session is not None
        moved = body.replace(c._session[1].encode(), other._session[1].encode())
        assert moved != body
        r = post(moved, length)
        assert r.status_code == 400 and r.json()["type"].endswith("/BadRequest")
        unknown = post(body.replace(c._session[1].encode(), b"A" * len(c._session[1])),
                       length)
        assert unknown.status_code == 400 and unknown.json()["type"].endswith("/UnknownSession")
        assert c.infer({"input": x})["label"].shape == (1,)  # the session goes on

    with _client(srv, party=None, api_key=API_KEY) as c:  # no signature: only the envelope
        c.verify_server()
        assert c._server_key is not None and c.model is not None
        from teeflow.serve.session import seal_setup

        setup, _ = seal_setup(c._server_key, c.model, api_key=API_KEY)
        first = c._http.post("/v2/models/linear/session", content=setup)
        again = c._http.post("/v2/models/linear/session", content=setup)
    assert first.status_code == 200
    assert again.status_code == 400 and "replayed" in again.json()["detail"]


def test_session_is_bound_to_its_caller_and_renewed_when_unknown(srv: LocalServing) -> None:
    """A refused caller gets no session; a session the server no longer knows (restart,
    expiry) is replaced once, transparently, without the request being processed twice."""
    x = np.ones((1, 4), dtype=np.float32)
    with _client(srv, party="carol") as c, pytest.raises(ServeRefused) as refused:
        c.open_session()
    assert refused.value.status == 403 and c._session is None
    with _client(srv) as c:
        first = c.open_session()
        c.infer({"input": x})
        assert c._session is not None
        keys, _, expires = c._session
        c._session = (keys, "B" * 22, expires)  # as if the server had restarted
        c.infer({"input": x})
        assert c._session is not None and c._session[1] not in (first, "B" * 22)
