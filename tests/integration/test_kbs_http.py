"""The KBS over real HTTPS: a uvicorn server on 127.0.0.1 (ephemeral port, background thread).

Robustness of the HTTP surface: malformed JSON, wrong protocol version, oversized bodies,
missing/foreign/tampered tokens, bad paths and parameters — each a typed RFC 7807 problem
without secrets or stack traces, and nothing acknowledged. Also: TLS pinning, OpenAPI,
counters, certificates, the 500 guard.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey

from teeflow.attestation.binding import runtime_data_digest
from teeflow.errors import KbsError, VerificationError
from teeflow.kbs.api.app import (
    create_app,
)
from teeflow.kbs.api.problems import Conflict, PolicyDeny, TokenVerifierError
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import (
    Pin,
    pinned_tls_context,
)
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    SgxReferenceValues,
    digest,
)
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.request_signing import PartyRequestAuth
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority

KBS_MR = hashlib.sha256(b"teeflow http-test kbs").digest()
CLIENT_MR = hashlib.sha256(b"teeflow http-test client").digest()
AGG_MR = hashlib.sha256(b"teeflow http-test aggregator").digest()
PKG = "c0" * 32
PATH = "alice/dataset-key/v1"
CLAIMS: dict[str, Any] = {
    "party": "alice",
    "package_digest": PKG,
    "function": "train",
    "resources": [PATH],
    "recipients": ["alice"],
}
TEE = "https://github.com/confidential-containers/kbs/errors"
TF = "https://teeflow.dev/kbs/errors"
PROBLEM_KEYS = {"type", "title", "status", "detail"}


@dataclass
class Env:
    url: str
    pin: Pin
    runtime: KbsRuntime
    authority: EmulationAuthority
    data_key: bytes
    parties: dict[str, PartyKeys]

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=pinned_tls_context(self.pin.tls_spki_sha256), timeout=10
        )

    def workload(self, measurement: bytes = CLIENT_MR, *, party: str = "alice",
                 role: str = "client", enrollment: str | None = "auto") -> KbsClient:
        """A workload client; ``party`` enrolls it for ``role`` (``enrollment=None``: none)."""
        if enrollment == "auto":
            enrollment = self.token(party, role)
        return KbsClient(None, self.pin, EmulatedSgx(self.authority, measurement=measurement),
                         enrollment=enrollment)

    def token(self, party: str = "alice", role: str = "client", **kw: Any) -> str:
        """``party``'s signed enrollment of a ``role`` workload."""
        return issue_enrollment(self.parties[party], federation="study", role=role,
                                now=datetime.now(UTC), expires=timedelta(hours=1), **kw)

    def audit_len(self) -> int:
        return len(self.runtime.store.audit_entries(0, 10_000))


def _agreement(parties: dict[str, PartyKeys]) -> SignedAgreement:
    roles = {"alice": ["data-owner"], "bob": ["data-owner"], "carol": ["aggregator-operator"]}
    doc = {
        "federation": "study",
        "version": 1,
        "previous": None,
        "parties": {
            n: {
                "sign_key": parties[n].public().sign_key,
                "recipient_key": parties[n].public().recipient_key,
                "roles": r,
            }
            for n, r in roles.items()
        },
        "workloads": {
            "kbs": {"sgx": {"mrenclave": [KBS_MR.hex()]}},
            "client": {"sgx": {"mrenclave": [CLIENT_MR.hex()]}},
            "aggregator": {"sgx": {"mrenclave": [AGG_MR.hex()]}},
        },
        "packages": {
            "trainer": {"digest": PKG, "entrypoints": ["train", "validate"],
                        "readers": ["alice", "bob"]},
        },
        "outputs": {"model": ["alice", "bob"]},
        "allow_emulated": True,
        "update_quorum": {"k": 2},
    }
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for keys in parties.values():
        signed = signed.signed_by(keys)
    return signed


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with kbs_env(tmp_path_factory.mktemp("kbs-http")) as e:
        yield e


@contextmanager
def kbs_env(base: Path) -> Iterator[Env]:
    """A KBS on 127.0.0.1 (SQLite under ``base``) with the agreement and alice's resource."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(base / "home"))
        parties = {n: PartyKeys.generate(n) for n in ("alice", "bob", "carol")}
        signed = _agreement(parties)
        runtime = build_kbs(
            f"sqlite:///{base / 'kbs.db'}",
            state_dir=base / "state",
            federation="study",
            platform="emulated-sgx",
            measurement=KBS_MR,
            purge_interval=None,
            expect_agreement=digest(signed.agreement),
        )
        server = BackgroundServer(make_server(runtime, graceful_timeout=2)).start()
        try:
            pin = verify_kbs(
                server.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)), allow_emulated=True
            )
            data_key = os.urandom(32)
            now = datetime.now(UTC)
            grant = Grant.from_mapping({
                "id": "grant-" + os.urandom(6).hex(), "resource": PATH, "owner": "alice",
                "agreement": digest(signed.agreement).hex(), "roles": ["client"],
                "packages": [PKG], "functions": ["train"], "recipients": ["alice"],
                "created_at": now - timedelta(minutes=1), "not_after": now + timedelta(days=1),
                "max_releases": 100,
            })
            with KbsClient(None, pin) as owner:
                owner.submit_agreement(signed)
                owner.put_resource(PATH, data_key, sign_grant(grant, parties["alice"]),
                                   parties["alice"])
            yield Env(server.url, pin, runtime, runtime.authority, data_key, parties)
        finally:
            server.stop()
            runtime.close()


def assert_problem(resp: httpx.Response, status: int, type_uri: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert set(body) == PROBLEM_KEYS
    assert body["type"] == type_uri and body["status"] == status
    text = resp.text.lower()
    assert "traceback" not in text and 'file "' not in text
    return body


def rcar(env: Env, http: httpx.Client, *, measurement: bytes = CLIENT_MR,
         claims: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """auth + a correct attest body (not sent): (session id, body)."""
    resp = http.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "emulated-sgx"})
    assert resp.status_code == 200
    sid = resp.cookies["kbs-session-id"]
    http.cookies.clear()
    nonce = resp.json()["nonce"]
    key = ECKey.generate_key("P-256", private=True)
    jwk = {**key.as_dict(private=False), "alg": "ECDH-ES+A256KW"}
    teeflow = {"role": "client", **(claims if claims is not None else CLAIMS)}
    teeflow.setdefault("enrollment", env.token())
    rd = runtime_data_digest(tee_pubkey=jwk, nonce=nonce, teeflow=teeflow)
    quote = EmulatedSgx(env.authority, measurement=measurement).quote(rd)
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk, "teeflow": teeflow},
        "tee-evidence": {"primary_evidence": {"quote": base64.b64encode(quote).decode()},
                         "additional_evidence": ""},
    }
    return sid, body


# -- wire robustness ---------------------------------------------------------------------------


def test_malformed_json_and_wrong_version_write_nothing(env: Env) -> None:
    before = env.audit_len()
    with env.http() as http:
        b = assert_problem(http.post("/kbs/v0/auth", content=b"{not json"), 400,
                           f"{TF}/InvalidRequest")
        assert "AuthRequest" in b["detail"]
        assert_problem(http.post("/kbs/v0/auth", json={"version": "0.4.0"}), 400,
                       f"{TF}/InvalidRequest")
        assert_problem(http.post("/kbs/v0/auth", json=[1, 2]), 400, f"{TF}/InvalidRequest")
        assert_problem(
            http.post("/kbs/v0/auth", json={"version": "0.3.0", "tee": "emulated-sgx"}),
            401, f"{TF}/ProtocolVersion")
        assert_problem(http.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "csv"}),
                       401, f"{TF}/UnsupportedTee")
        # as Trustee: the session cookie is checked before the body (401 before 400)
        assert_problem(http.post("/kbs/v0/attest", content=b"\xff\xfe"), 401,
                       f"{TEE}/AttestationError")
        http.cookies.set("kbs-session-id", "x")
        assert_problem(http.post("/kbs/v0/attest", content=b"\xff\xfe"), 400,
                       f"{TF}/InvalidRequest")
        http.cookies.clear()
        assert_problem(http.post("/v1/agreement", content=b"{}"), 400, f"{TF}/InvalidRequest")
        assert_problem(http.post("/v1/resources", content=b'{"path": 1}'), 400,
                       f"{TF}/InvalidRequest")
        alice = PartyRequestAuth("alice", env.parties["alice"].sign_key)
        assert_problem(http.get("/v1/audit", params={"limit": "0"}, auth=alice), 400,
                       f"{TF}/InvalidRequest")
        assert_problem(http.get("/v1/audit", params={"after": "x"}, auth=alice), 400,
                       f"{TF}/InvalidRequest")
        assert_problem(http.get("/v1/kbs/evidence", params={"nonce": "!!"}), 400,
                       f"{TF}/InvalidRequest")
        assert_problem(http.get("/v1/kbs/evidence"), 400, f"{TF}/InvalidRequest")
    assert env.audit_len() == before


def test_oversized_bodies_get_413(env: Env) -> None:
    before = env.audit_len()
    with env.http() as http:
        big = b'{"version": "0.4.0", "tee": "sgx", "extra-params": "' + b"a" * 9000 + b'"}'
        assert_problem(http.post("/kbs/v0/auth", content=big), 413, f"{TF}/PayloadTooLarge")

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut while streaming
            for _ in range(40):
                yield b"x" * 8192

        assert_problem(http.post("/v1/resources", content=chunks()), 413,
                       f"{TF}/PayloadTooLarge")
    # beyond every route's limit: refused from the Content-Length alone, body never sent
    status, headers, raw = raw_request(
        env, b"POST /v1/agreement HTTP/1.1\r\nHost: kbs\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2097152\r\n\r\n")
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(raw)["type"] == f"{TF}/PayloadTooLarge"
    assert env.audit_len() == before


def raw_request(env: Env, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes over pinned TLS; read one response (Content-Length framed)."""
    host, port = env.url.removeprefix("https://").rsplit(":", 1)
    ctx = pinned_tls_context(env.pin.tls_spki_sha256)
    with socket.create_connection((host, int(port)), timeout=10) as sock, \
            ctx.wrap_socket(sock) as tls:
        tls.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            assert chunk, "connection closed before the response head"
            data += chunk
        head_bytes, body = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            chunk = tls.recv(65536)
            assert chunk
            body += chunk
    return int(lines[0].split()[1]), headers, body


def test_unknown_route_and_method(env: Env) -> None:
    with env.http() as http:
        assert_problem(http.get("/nope"), 404, f"{TEE}/InvalidRequestPath")
        resp = http.delete("/v1/agreement")
        assert_problem(resp, 405, f"{TF}/MethodNotAllowed")
        assert resp.headers.get("allow")


def test_openapi_documents_every_route(env: Env) -> None:
    with env.http() as http:
        spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/resource/{path}", "/v1/agreement",
              "/v1/agreement/history", "/v1/resources", "/v1/certificates", "/v1/ca",
              "/v1/counters/{name}", "/v1/audit", "/v1/kbs/evidence"):
        assert p in paths, p
    attest = paths["/kbs/v0/attest"]["post"]
    schema_ref = attest["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("/AttestRequest")
    assert "AttestRequest" in spec["components"]["schemas"]
    assert all("422" not in op.get("responses", {})
               for item in paths.values() for op in item.values())


# -- tokens and sessions ---------------------------------------------------------------------------


def test_attest_without_session_and_replayed_nonce(env: Env) -> None:
    with env.http() as http:
        sid, body = rcar(env, http)
        assert_problem(http.post("/kbs/v0/attest", json=body), 401, f"{TEE}/AttestationError")
        cookie = {"Cookie": f"kbs-session-id={sid}"}
        ok = http.post("/kbs/v0/attest", json=body, headers=cookie)
        assert ok.status_code == 200 and set(ok.json()) == {"token"}
        replay = http.post("/kbs/v0/attest", json=body, headers=cookie)
        assert_problem(replay, 401, f"{TEE}/AttestationError")
        assert "replay" in replay.json()["detail"]
        # the same evidence into a fresh session: bound to another nonce
        sid2, _ = rcar(env, http)
        other = http.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid2}"})
        assert_problem(other, 401, f"{TEE}/AttestationError")


def test_token_from_another_session_and_tampered_tokens(env: Env) -> None:
    with env.workload() as a, env.workload() as b:
        token_a = a.attest("client", CLAIMS)
        b.attest("client", CLAIMS)
        assert a.get_resource(PATH) == env.data_key
        with env.http() as http:
            url = f"/kbs/v0/resource/{PATH}"
            mixed = http.get(url, headers={"Authorization": f"Bearer {token_a}",
                                           "Cookie": f"kbs-session-id={b.session_id}"})
            body = assert_problem(mixed, 401, f"{TEE}/TokenVerifierError")
            assert token_a not in mixed.text and b.session_id not in mixed.text
            head, payload, sig = token_a.split(".")
            flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
            for bad in (f"{head}.{payload}.{flipped}", f"{head}.{payload[::-1]}.{sig}", "x.y.z",
                        "not-a-jwt"):
                r = http.get(url, headers={"Authorization": f"Bearer {bad}",
                                           "Cookie": f"kbs-session-id={a.session_id}"})
                assert_problem(r, 401, f"{TEE}/TokenVerifierError")
                assert bad not in r.text
            # issue 10: the token alone (as it travels in compute lineage) is no credential
            alone = http.get(url, headers={"Authorization": f"Bearer {token_a}"})
            assert_problem(alone, 401, f"{TEE}/TokenNotFound")
            assert_problem(http.get(url), 401, f"{TEE}/TokenNotFound")
            assert_problem(http.get(url, headers={"Cookie": "kbs-session-id=unknown"}), 401,
                           f"{TEE}/TokenNotFound")
            assert_problem(http.get(url, headers={"Authorization": "Basic abc"}), 401,
                           f"{TEE}/TokenVerifierError")
            assert "secret" not in body["detail"].lower()


def test_resource_paths_and_existence_not_revealed(env: Env) -> None:
    with env.workload() as w:
        w.attest("client", CLAIMS)
        headers = {"Authorization": f"Bearer {w.token}",
                   "Cookie": f"kbs-session-id={w.session_id}"}
        with env.http() as http:
            assert_problem(http.get("/kbs/v0/resource/only/two", headers=headers), 404,
                           f"{TEE}/InvalidRequestPath")
            missing = http.get("/kbs/v0/resource/alice/dataset-key/v9", headers=headers)
            forbidden = http.get("/kbs/v0/resource/bob/dataset-key/v1", headers=headers)
        assert_problem(missing, 403, f"{TEE}/PolicyDeny")
        assert missing.json() == forbidden.json()


def test_pin_mismatch_sends_nothing(env: Env) -> None:
    wrong = env.pin.model_copy(update={"tls_spki_sha256": "00" * 32})
    before = env.audit_len()
    with KbsClient(None, wrong) as client, pytest.raises(VerificationError, match="pin"):
        client.submit_agreement(_agreement(env.parties))
    assert env.audit_len() == before
    with pytest.raises(KbsError):
        KbsClient("http://127.0.0.1:1", env.pin)


def test_verify_kbs_refuses_wrong_reference_values_and_emulation(env: Env) -> None:
    from teeflow.errors import PolicyViolation

    with pytest.raises(PolicyViolation):
        verify_kbs(env.url, SgxReferenceValues(mrenclave=(CLIENT_MR.hex(),)), allow_emulated=True)
    with pytest.raises(PolicyViolation):
        verify_kbs(env.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)), allow_emulated=False)
    # the evidence now binds the submitted agreement
    current = env.runtime.service.current_agreement()
    assert current is not None
    pin = verify_kbs(env.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)), allow_emulated=True,
                     expected_agreement_digest=current.agreement.digest())
    assert pin.tls_spki_sha256 == env.pin.tls_spki_sha256 and pin.agreement_digest is not None
    with pytest.raises(VerificationError):
        verify_kbs(env.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)), allow_emulated=True,
                   expected_agreement_digest=b"\x01" * 32)


# -- certificates, counters, CA -----------------------------------------------------------------


def test_certificate_json_and_pem_and_wrong_key(env: Env) -> None:
    with env.workload() as w:
        w.attest("client", CLAIMS)
        cert_pem, key = w.get_certificate()
        cert = x509.load_pem_x509_certificate(cert_pem)
        assert cert.public_key() == key.public_key()
        ident = w.check_certificate(cert)
        assert ident.role == "client" and ident.measurement == CLIENT_MR.hex()
        other = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
               .sign(other, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        with env.http() as http:
            r = http.post("/v1/certificates", content=csr,
                          headers={"Authorization": f"Bearer {w.token}",
                                   "Cookie": f"kbs-session-id={w.session_id}",
                                   "Content-Type": "application/x-pem-file"})
            assert_problem(r, 403, f"{TEE}/PolicyDeny")
            assert_problem(http.post("/v1/certificates", json={"csr": "x"}), 401,
                           f"{TEE}/TokenNotFound")
        assert w.ca_certificate().public_key() == env.pin.ca().public_key()


def test_counters_over_http(env: Env) -> None:
    name = "client/alice/" + os.urandom(4).hex()  # the client acting for alice's scope
    with env.workload() as w:
        w.attest("client", CLAIMS)
        assert w.get_counter(name) is None
        st = w.increment_counter(name, 0, b"\x11" * 32)
        assert (st.value, st.digest) == (1, "11" * 32)
        with pytest.raises(Conflict):
            w.increment_counter(name, 0, b"\x22" * 32)
        assert w.get_counter(name).value == 1  # type: ignore[union-attr]
        with pytest.raises(PolicyDeny):
            w.increment_counter("session/x/round", 0, b"\x33" * 32)
        with pytest.raises(PolicyDeny):  # issue 10: outside its role/party scope
            w.increment_counter("shared/" + os.urandom(4).hex(), 0, b"\x33" * 32)
    with env.workload(AGG_MR, party="carol", role="aggregator") as agg:
        agg.attest("aggregator", {"session": "s1"})
        assert agg.increment_counter("session/s1/round", 0, b"\x44" * 32).value == 1
        assert agg.get_counter("session/s1/round").value == 1  # type: ignore[union-attr]


def test_token_revoked_by_agreement_update(env: Env) -> None:
    # Runs last in this module: changes the agreement.
    with env.workload() as w:
        w.attest("client", CLAIMS)
        old = env.runtime.service.current_agreement()
        assert old is not None
        doc = old.agreement.to_document()
        doc.update(version=2, previous=old.agreement.digest().hex())
        new = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
        with KbsClient(None, env.pin, party=env.parties["alice"]) as party:
            with pytest.raises(KbsError):  # one signature is below the 2-of-3 quorum
                party.submit_agreement(new.signed_by(env.parties["alice"]))
            result = party.submit_agreement(
                new.signed_by(env.parties["alice"]).signed_by(env.parties["bob"]))
            assert result["version"] == 2
            assert len(party.audit()) == env.audit_len()
        with pytest.raises(TokenVerifierError):
            w.get_resource(PATH)


# -- the 500 guard (no server needed) -----------------------------------------------------------


class _Exploding:
    def auth(self, request: Any) -> Any:
        raise RuntimeError("secret-value-1234 leaked?")


class _Ca:
    ca = None


def test_unexpected_exception_is_a_generic_500(caplog: pytest.LogCaptureFixture) -> None:
    # metrics=False: the exploding stand-in has no audit head recorder to feed them
    app = create_app(_Exploding(), _Ca(), purge_interval=None, metrics=False)  # type: ignore[arg-type]

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://kbs") as client:
            return await client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sgx"})

    with caplog.at_level(logging.ERROR, logger="teeflow.kbs.api"):
        resp = asyncio.run(call())
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json() == {"type": f"{TF}/InternalError", "title": "Internal server error",
                           "status": 500, "detail": "internal server error"}
    assert "secret-value-1234" not in resp.text
    assert any("secret-value-1234" in (r.exc_text or "") for r in caplog.records)
    assert json.loads(resp.text)["status"] == 500
