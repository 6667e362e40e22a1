"""Issue 10 attacks on the compute worker's HTTP API, over real TLS sockets on 127.0.0.1.

(N) anyone reaching the worker: unsigned, wrongly-signed, replayed and stale job submissions
are refused with 401 problem+json and burn no release budget; a 4 GiB ``Content-Length``
gets 413 before the worker allocates anything. (P) a party: uploading into another party's
namespace, or submitting a job on inputs it neither owns nor receives, is refused (403).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teeflow.compute.jobs import COMPUTE_PREFIX, JobRequest
from teeflow.compute.party import SealedInput, worker_tls_context
from teeflow.compute.sandbox import LocalFederation, local_federation
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import digest
from teeflow.kbs.policy.request_signing import PartyRequestAuth, sign_request

PACKAGE = {
    "teeflow.yaml": ("name: stats\nversion: 1.0.0\nfunctions:\n  average: funcs:average\n"
                     "  joint: funcs:joint\n"),
    "funcs.py": ("def average(x, y):\n    return (x + y) / 2\n"
                 "def joint(*xs):\n    return [float(x.sum()) for x in xs]\n"),
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    work = tmp_path_factory.mktemp("compute-attacks")
    pkg = work / "stats"
    pkg.mkdir()
    for name, text in PACKAGE.items():
        (pkg / name).write_text(text)
    with local_federation(
        work / "fed", pkg, parties={n: ["data-owner"] for n in ("alice", "bob", "carol")},
        readers=["alice", "bob"], recipients=["alice", "bob", "carol"], platform="emulated-sgx",
    ) as federation:
        yield federation


def _inputs(fed: LocalFederation) -> tuple[SealedInput, SealedInput]:
    alice, bob = fed.party("alice"), fed.party("bob")
    x = np.arange(6, dtype=np.float32)
    xi = alice.seal(x, allow=["stats:average"], recipients=["alice", "bob"],
                    to=alice.teeu(fed.worker_url), max_releases=4)
    yi = bob.seal(x + 1, allow=["stats:average"], recipients=["alice", "bob"],
                  to=bob.teeu(fed.worker_url), max_releases=4)
    return xi, yi


def _releases(fed: LocalFederation, path: str) -> int:
    with KbsClient(None, fed.pin, party=fed.keys["alice"]) as kbs:
        return sum(1 for e in kbs.audit() if e.kind == "release" and e.subject == path)


def _worker(fed: LocalFederation, auth: httpx.Auth | None = None) -> httpx.Client:
    ctx = worker_tls_context(fed.pin, digest(fed.party("alice").agreement).hex())
    return httpx.Client(base_url=fed.worker_url, verify=ctx, timeout=30, trust_env=False,
                        auth=auth)


def _job(xi: SealedInput, yi: SealedInput) -> bytes:
    return JobRequest(function="stats:average", inputs=(xi.id, yi.id),
                      recipients=("alice", "bob")).model_dump_json().encode()


def _problem(resp: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = resp.json()
    assert doc["type"] == f"{COMPUTE_PREFIX}/{name}"
    return doc


def test_unsigned_job_is_refused_and_burns_nothing(fed: LocalFederation) -> None:
    xi, yi = _inputs(fed)
    before = _releases(fed, xi.id)
    with _worker(fed) as http:
        resp = http.post("/v1/compute/jobs", content=_job(xi, yi),
                         headers={"Content-Type": "application/json"})
    _problem(resp, 401, "Unauthenticated")
    assert _releases(fed, xi.id) == before


def test_job_signed_with_a_key_not_in_the_agreement_is_refused(fed: LocalFederation) -> None:
    xi, yi = _inputs(fed)
    before = _releases(fed, xi.id)
    mallory = PartyRequestAuth("alice", Ed25519PrivateKey.generate())  # claims to be alice
    with _worker(fed, mallory) as http:
        resp = http.post("/v1/compute/jobs", content=_job(xi, yi))
    assert "does not verify" in _problem(resp, 401, "Unauthenticated")["detail"]
    stranger = PartyRequestAuth("mallory", Ed25519PrivateKey.generate())
    with _worker(fed, stranger) as http:
        resp = http.post("/v1/compute/jobs", content=_job(xi, yi))
    assert "not a party key" in _problem(resp, 401, "Unauthenticated")["detail"]
    assert _releases(fed, xi.id) == before


def test_replayed_job_is_refused_and_burns_nothing(fed: LocalFederation) -> None:
    xi, yi = _inputs(fed)
    alice = fed.party("alice")
    request = httpx.Request("POST", f"{fed.worker_url}/v1/compute/jobs", content=_job(xi, yi))
    sign_request(request, "alice", alice.keys.sign_key)
    with _worker(fed) as http:
        first = http.send(request)
        assert first.status_code == 200, first.text
        after_first = _releases(fed, xi.id)
        again = httpx.Request("POST", request.url, content=request.content,
                              headers=request.headers)
        resp = http.send(again)  # a captured request sent again, byte for byte
    assert "replayed" in _problem(resp, 401, "Unauthenticated")["detail"]
    assert _releases(fed, xi.id) == after_first


def test_stale_or_tampered_job_is_refused(fed: LocalFederation) -> None:
    xi, yi = _inputs(fed)
    alice = fed.party("alice")
    before = _releases(fed, xi.id)
    stale = httpx.Request("POST", f"{fed.worker_url}/v1/compute/jobs", content=_job(xi, yi))
    sign_request(stale, "alice", alice.keys.sign_key,
                 now=datetime.now(UTC) - timedelta(minutes=10))
    body = _job(xi, yi).replace(b'"bob"]', b'"carol"]')
    swapped = httpx.Request("POST", f"{fed.worker_url}/v1/compute/jobs", content=_job(xi, yi))
    sign_request(swapped, "alice", alice.keys.sign_key)
    swapped = httpx.Request("POST", swapped.url, content=body, headers={
        k: v for k, v in swapped.headers.items() if k != "content-length"})
    with _worker(fed) as http:
        assert "too old" in _problem(http.send(stale), 401, "Unauthenticated")["detail"]
        assert "Content-Digest" in _problem(http.send(swapped), 401, "Unauthenticated")["detail"]
    assert _releases(fed, xi.id) == before


def test_party_that_neither_owns_nor_receives_cannot_submit(fed: LocalFederation) -> None:
    xi, yi = _inputs(fed)
    carol = fed.party("carol")
    before = _releases(fed, xi.id)
    with _worker(fed, PartyRequestAuth("carol", carol.keys.sign_key)) as http:
        resp = http.post("/v1/compute/jobs", content=_job(xi, yi))
    _problem(resp, 403, "NotPermitted")
    assert _releases(fed, xi.id) == before


def test_upload_into_another_partys_namespace_is_refused(fed: LocalFederation) -> None:
    alice = fed.party("alice")
    blob = os.urandom(256)
    import hashlib

    target = f"/v1/compute/inputs/bob/teeu-input/{hashlib.sha256(blob).hexdigest()}"
    with _worker(fed, PartyRequestAuth("alice", alice.keys.sign_key)) as http:
        _problem(http.put(target, content=blob), 403, "NotPermitted")
    with _worker(fed) as http:  # unsigned
        _problem(http.put(target, content=blob), 401, "Unauthenticated")
    assert not any(k.startswith("bob/") and k.endswith(target[-64:])
                   for k in fed.worker._inputs)


def test_unsigned_result_read_is_refused(fed: LocalFederation) -> None:
    xi, yi = _inputs(fed)
    ref = fed.party("alice").teeu(fed.worker_url).run("stats:average", xi, yi)
    with _worker(fed) as http:
        _problem(http.get(f"/v1/compute/results/{ref.result_id}"), 401, "Unauthenticated")


def test_token_in_a_result_ref_is_no_bearer_credential(fed: LocalFederation) -> None:
    """Whoever holds a ResultRef holds the job's EAR; alone (without the worker's session
    cookie) the KBS refuses it, so it cannot burn releases or step counters."""
    from teeflow.kbs.client.pinning import pinned_tls_context

    xi, yi = _inputs(fed)
    ref = fed.party("alice").teeu(fed.worker_url).run("stats:average", xi, yi)
    token = json.loads(ref.model_dump_json())["lineage"]["record"]["attestation_token"]
    before = _releases(fed, xi.id)
    tls = pinned_tls_context(fed.pin.tls_spki_sha256)
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=fed.pin.url, verify=tls, timeout=30) as kbs:
        resp = kbs.get(f"/kbs/v0/resource/{xi.id}", headers=bearer)
        assert resp.status_code == 401, resp.text
        resp = kbs.post(f"/v1/counters/compute/{'0' * 32}", headers=bearer,
                        json={"expected": 0, "digest": "00" * 32})
        assert resp.status_code == 401, resp.text
    assert _releases(fed, xi.id) == before


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw_put(fed: LocalFederation, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send only the request head over TLS (the body never comes) and read the answer."""
    host, port = fed.worker_url.removeprefix("https://").split(":")
    ctx = worker_tls_context(fed.pin, digest(fed.party("alice").agreement).hex())
    head = f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(head.encode("latin-1"))
        data = b""
        for _ in range(64):  # bounded: the head, then its Content-Length of body
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = next((int(line.split(b":")[1]) for line in data[:head_end].split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(data) >= head_end + 4 + length:
                    break
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_4gib_content_length_gets_413_without_allocation(fed: LocalFederation) -> None:
    alice = fed.party("alice")
    digest_hex = "ab" * 32
    path = f"/v1/compute/inputs/alice/teeu-input/{digest_hex}"
    signed = httpx.Request("PUT", f"{fed.worker_url}{path}", content=b"x")
    sign_request(signed, "alice", alice.keys.sign_key)
    headers = {k: v for k, v in signed.headers.items() if k not in ("host", "content-length")}
    rss0 = _rss_kib()  # the worker serves from this process (a background thread)
    status, data = _raw_put(fed, path, {**headers, "Content-Length": str(4 << 30)})
    grown = _rss_kib() - rss0
    assert status == 413, data[:400]
    assert b"PayloadTooLarge" in data
    assert grown < 64 * 1024, f"worker RSS grew {grown} KiB for a refused 4 GiB upload"
    # unsigned: refused (401) before the size is even looked at
    status, data = _raw_put(fed, path, {"Content-Length": str(4 << 30)})
    assert status == 401 and b"Unauthenticated" in data


def test_per_party_upload_quota(fed: LocalFederation, monkeypatch: pytest.MonkeyPatch) -> None:
    from teeflow.compute.jobs import PayloadTooLarge, RequestLimits

    alice = fed.party("alice")
    used = fed.worker._party_bytes.get("alice", 0)
    monkeypatch.setattr(fed.worker, "request_limits",
                        lambda: RequestLimits(max_input_bytes=1 << 20,
                                              max_party_bytes=used + 1500))
    teeu = alice.teeu(fed.worker_url)
    import hashlib

    first = os.urandom(1000)
    teeu.upload(f"alice/teeu-input/{hashlib.sha256(first).hexdigest()}", first)
    second = os.urandom(1000)
    with pytest.raises(PayloadTooLarge):
        teeu.upload(f"alice/teeu-input/{hashlib.sha256(second).hexdigest()}", second)
    assert fed.worker._party_bytes["alice"] == used + 1000


def test_single_owner_run_of_a_joint_function_is_refused(fed: LocalFederation) -> None:
    """Issue 10 (P): bank-b ran the "joint" function on bank-a's input alone and read
    bank-a's statistics. alice's grant names bob as co-owner and 2 distinct owners."""
    from teeflow.compute.jobs import ReleaseRefused

    alice, bob = fed.party("alice"), fed.party("bob")
    x = np.arange(6, dtype=np.float32)
    xi = alice.seal(x, allow=["stats:joint"], recipients=["alice", "bob"],
                    to=alice.teeu(fed.worker_url), co_owners=["bob"], min_owners=2)
    yi = bob.seal(x * 2, allow=["stats:joint"], recipients=["alice", "bob"],
                  to=bob.teeu(fed.worker_url))
    teeu = bob.teeu(fed.worker_url)
    with pytest.raises(ReleaseRefused):
        teeu.run("stats:joint", xi)
    with KbsClient(None, fed.pin, party=fed.keys["alice"]) as kbs:
        denied = [e for e in kbs.audit() if e.kind == "release" and e.subject == xi.id]
    assert [e.decision for e in denied] == ["deny"]
    assert any("co-owner bob" in r for r in denied[0].reasons)
    assert bob.open(teeu.run("stats:joint", xi, yi)) == [15.0, 30.0]
