"""Trustee wire compatibility over real HTTPS (uvicorn on 127.0.0.1).

Requests are shaped as Trustee's guest-components ``kbs_protocol`` client sends them: no
``teeflow`` member in runtime-data, ``additional_evidence`` a JSON map TEE -> evidence (here
NVIDIA GPU evidence from the GPU attester over the emulated NVML stand-in) bound into the
primary evidence through ``additional-evidence``, the GPU nonce being Trustee's device report
data. Checked: ``--default-role`` (plain attester gets a token for that role; without it:
401), semver build metadata in ``version`` (accepted; a pre-release is not), the session
cookie before the body (401 before 400), EAR submodules with one ``teeflow`` map.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from teeflow.attestation.additional_evidence import encode_additional_evidence
from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.nvidia.trustee import gpu_nonce
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import Pin, pinned_tls_context
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, SgxReferenceValues
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.platform.emulated import EmulatedSgx
from teeflow.platform.nvidia import gpu_attester_for

KBS_MR = hashlib.sha256(b"teeflow trustee-test kbs").digest()
CLIENT_MR = hashlib.sha256(b"teeflow trustee-test client").digest()
AGG_MR = hashlib.sha256(b"teeflow trustee-test aggregator").digest()
TF = "https://teeflow.dev/kbs/errors"


@dataclass
class Kbs:
    url: str
    pin: Pin
    runtime: KbsRuntime
    home: Path

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=pinned_tls_context(self.pin.tls_spki_sha256), timeout=10
        )


PARTIES = {n: PartyKeys.generate(n) for n in ("alice", "bob")}


def _agreement(gpu_role: str) -> SignedAgreement:
    parties = PARTIES
    doc = {
        "federation": "study",
        "version": 1,
        "previous": None,
        "parties": {
            n: {"sign_key": k.public().sign_key, "recipient_key": k.public().recipient_key,
                "roles": ["data-owner", "aggregator-operator"] if n == "alice" else ["data-owner"]}
            for n, k in parties.items()
        },
        "workloads": {
            "kbs": {"sgx": {"mrenclave": [KBS_MR.hex()]}},
            "client": {"sgx": {"mrenclave": [CLIENT_MR.hex()]}},
            "aggregator": {"sgx": {"mrenclave": [AGG_MR.hex()]}},
        },
        "packages": {},
        "outputs": {"model": ["alice"]},
        "allow_emulated": True,
        "update_quorum": {"k": 2},
    }  # fmt: skip
    doc["workloads"][gpu_role]["gpu"] = {"architectures": ["HOPPER", "BLACKWELL"]}  # type: ignore[index]
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for keys in parties.values():
        signed = signed.signed_by(keys)
    return signed


def _start(base: Path, name: str, default_role: str | None) -> tuple[BackgroundServer, Kbs]:
    signed = _agreement("aggregator")
    runtime = build_kbs(
        f"sqlite:///{base / (name + '.db')}",
        state_dir=base / name,
        federation="study",
        measurement=KBS_MR,
        purge_interval=None,
        default_role=default_role,
        home=base / "home",
        platform="emulated-sgx",
        expect_agreement=signed.agreement.digest(),
    )
    server = BackgroundServer(make_server(runtime, graceful_timeout=2)).start()
    pin = verify_kbs(
        server.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)), allow_emulated=True
    )
    with KbsClient(None, pin) as owner:
        owner.submit_agreement(signed)
    return server, Kbs(server.url, pin, runtime, base / "home")


@pytest.fixture(scope="module")
def kbs_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kbs, Kbs]]:
    base = tmp_path_factory.mktemp("kbs-trustee")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(base / "home"))
        started = [_start(base, "with-role", "aggregator"), _start(base, "plain", None)]
        try:
            yield started[0][1], started[1][1]
        finally:
            for server, kbs in started:
                server.stop()
                kbs.runtime.close()


def trustee_rcar(kbs: Kbs, http: httpx.Client, *, version: str = "0.4.0", gpu: str = "hopper",
                 measurement: bytes = AGG_MR) -> httpx.Response:  # fmt: skip
    """One Trustee-shaped auth + attest (no teeflow member); returns the attest response."""
    resp = http.post("/kbs/v0/auth", json={"version": version, "tee": "emulated-sgx",
                                            "extra-params": ""})  # fmt: skip
    assert resp.status_code == 200, resp.text
    nonce = resp.json()["nonce"]
    key = ECKey.generate_key("P-256", private=True)
    jwk = {**key.as_dict(private=False), "alg": "ECDH-ES+A256KW"}
    additional = ""
    if gpu != "none":
        attester = gpu_attester_for(f"emulated-{gpu}", home=kbs.home)
        assert attester is not None
        evidence = attester.evidence(gpu_nonce(tee_pubkey=jwk, nonce=nonce))
        additional = encode_additional_evidence({"nvidia": evidence})
    rd = runtime_data_digest(tee_pubkey=jwk, nonce=nonce, additional_evidence=additional)
    authority = kbs.runtime.authority
    quote = EmulatedSgx(authority, measurement=measurement).quote(rd)
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": {"quote": base64.b64encode(quote).decode()},
                         "additional_evidence": additional},
    }  # fmt: skip
    return http.post("/kbs/v0/attest", json=body)


def _payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.mark.parametrize("arch", ["hopper", "blackwell"])
def test_plain_trustee_attester_gets_default_role_token(kbs_pair: tuple[Kbs, Kbs],
                                                        arch: str) -> None:  # fmt: skip
    kbs, _ = kbs_pair
    with kbs.http() as http:
        resp = trustee_rcar(kbs, http, version="0.4.0+guest-components.1", gpu=arch)
        assert resp.status_code == 200, resp.text
        payload = _payload(resp.json()["token"])
    assert payload["teeflow.attested"]["role"] == "aggregator"
    submods = payload["submods"]
    assert set(submods) == {"cpu0", "gpu0"}
    for sub in submods.values():  # draft-ietf-rats-ear: the extension is a map
        assert isinstance(sub["teeflow"], dict) and not any(k.startswith("teeflow.") for k in sub)
    assert submods["gpu0"]["teeflow"]["claims"]["arch"] == arch.upper()


def test_default_role_requiring_gpu_refuses_cpu_only(kbs_pair: tuple[Kbs, Kbs]) -> None:
    kbs, _ = kbs_pair
    with kbs.http() as http:
        resp = trustee_rcar(kbs, http, gpu="none")
    assert resp.status_code == 401
    assert "requires GPU evidence" in resp.json()["detail"]


def test_plain_attester_without_default_role_refused(kbs_pair: tuple[Kbs, Kbs]) -> None:
    _, plain = kbs_pair
    with plain.http() as http:
        resp = trustee_rcar(plain, http)
    assert resp.status_code == 401
    assert "no teeflow role claimed and no default role configured" in resp.json()["detail"]


def test_prerelease_version_refused(kbs_pair: tuple[Kbs, Kbs]) -> None:
    kbs, _ = kbs_pair
    with kbs.http() as http:
        for version in ("0.4.0-rc1", "0.4.1", "v0.4.0", "0.4"):
            resp = http.post("/kbs/v0/auth", json={"version": version, "tee": "emulated-sgx"})
            assert resp.status_code == 401, version
            assert resp.json()["type"] == f"{TF}/ProtocolVersion"


def test_session_cookie_checked_before_body(kbs_pair: tuple[Kbs, Kbs]) -> None:
    kbs, _ = kbs_pair
    with kbs.http() as http:
        no_cookie = http.post("/kbs/v0/attest", content=b"\xff not json")
        assert no_cookie.status_code == 401
        assert no_cookie.json()["type"].endswith("/AttestationError")
        http.cookies.set("kbs-session-id", "abc")
        assert http.post("/kbs/v0/attest", content=b"\xff not json").status_code == 400


def test_unsupported_default_role_refused_at_start(tmp_path: Path) -> None:
    from teeflow.errors import KbsError

    with pytest.raises(KbsError, match="--default-role must be a workload role"):
        build_kbs("memory://", state_dir=tmp_path / "s", federation="study",
                  measurement=KBS_MR, default_role="admin", home=tmp_path / "home",
                  platform="emulated-sgx")  # fmt: skip


def test_kbs_client_sends_gpu_evidence_first(kbs_pair: tuple[Kbs, Kbs]) -> None:
    """teeflow's own client: KbsClient(gpu=...) gets GPU evidence, binds it, sends it."""
    from teeflow.kbs.api.problems import AttestationFailed

    kbs, _ = kbs_pair
    sgx = EmulatedSgx(kbs.runtime.authority, measurement=AGG_MR)
    gpu = gpu_attester_for("emulated-blackwell", home=kbs.home, count=2)
    from datetime import UTC, datetime, timedelta

    from teeflow.kbs.policy.enrollment import issue_enrollment

    enrollment = issue_enrollment(PARTIES["alice"], federation="study", role="aggregator",
                                  now=datetime.now(UTC), expires=timedelta(hours=1))  # fmt: skip
    with KbsClient(None, kbs.pin, sgx, gpu=gpu, enrollment=enrollment) as client:
        payload = _payload(client.attest("aggregator"))
    assert set(payload["submods"]) == {"cpu0", "gpu0", "gpu1"}
    with KbsClient(None, kbs.pin, sgx, enrollment=enrollment) as client, pytest.raises(
        AttestationFailed, match="requires GPU evidence"
    ):
        client.attest("aggregator")
