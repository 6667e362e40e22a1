"""Issue 10 attacks on the KBS over real TLS sockets on 127.0.0.1.

(N) a stranger founding a fresh KBS with its own first agreement; anonymous reads of the audit
log and the counters. (P) a party writing into another party's or a system namespace; an
aggregator stepping another session's counter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teeflow.errors import KbsError
from teeflow.kbs.api.problems import GrantRejected, PolicyDeny
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import Pin, pinned_tls_context
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, SgxReferenceValues, digest
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.request_signing import PartyRequestAuth
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.platform.emulated import EmulatedSgx

KBS_MR = hashlib.sha256(b"teeflow attack-test kbs").digest()
AGG_MR = hashlib.sha256(b"teeflow attack-test aggregator").digest()
PKG, OTHER_PKG = "c1" * 32, "c2" * 32
TF = "https://teeflow.dev/kbs/errors"
TEE = "https://github.com/confidential-containers/kbs/errors"


def _agreement(parties: dict[str, PartyKeys]) -> SignedAgreement:
    doc: dict[str, Any] = {
        "federation": "study", "version": 1, "previous": None,
        "parties": {n: {"sign_key": k.public().sign_key,
                        "recipient_key": k.public().recipient_key,
                        "roles": ["data-owner", "aggregator-operator"] if n == "alice"
                        else ["data-owner"]} for n, k in parties.items()},
        "workloads": {"kbs": {"sgx": {"mrenclave": [KBS_MR.hex()]}},
                      "aggregator": {"sgx": {"mrenclave": [AGG_MR.hex()]}},
                      "client": {"sgx": {"mrenclave": ["0c" * 32]}}},
        "packages": {"trainer": {"digest": PKG, "entrypoints": ["train"],
                                 "readers": ["alice", "bob"]},
                     "other": {"digest": OTHER_PKG, "entrypoints": ["train"],
                               "readers": ["bob"]}},
        "outputs": {"model": ["alice", "bob"]},
        "allow_emulated": True, "update_quorum": {"k": 2},
    }
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for k in parties.values():
        signed = signed.signed_by(k)
    return signed


@dataclass
class Kbs:
    runtime: KbsRuntime
    server: BackgroundServer
    pin: Pin
    parties: dict[str, PartyKeys]
    signed: SignedAgreement

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=10,
                            verify=pinned_tls_context(self.pin.tls_spki_sha256))


def _start(base: Path, signed: SignedAgreement | None, **kw: Any) -> tuple[KbsRuntime,
                                                                          BackgroundServer]:
    runtime = build_kbs(f"sqlite:///{base / 'kbs.db'}", state_dir=base / "state",
                        federation="study", measurement=KBS_MR, purge_interval=None,
                        platform="emulated-sgx",
                        expect_agreement=None if signed is None else digest(signed.agreement),
                        **kw)
    return runtime, BackgroundServer(make_server(runtime, graceful_timeout=2)).start()


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    base = tmp_path_factory.mktemp("kbs-attacks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(base / "home"))
        parties = {n: PartyKeys.generate(n) for n in ("alice", "bob")}
        signed = _agreement(parties)
        runtime, server = _start(base, signed)
        try:
            pin = verify_kbs(server.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)),
                             allow_emulated=True)
            with KbsClient(None, pin) as party:
                party.submit_agreement(signed)
            yield Kbs(runtime, server, pin, parties, signed)
        finally:
            server.stop()
            runtime.close()


def _problem(resp: httpx.Response, status: int, type_uri: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["type"] == type_uri


def test_anonymous_audit_and_counter_reads_are_refused(kbs: Kbs) -> None:
    alice = PartyRequestAuth("alice", kbs.parties["alice"].sign_key)
    stranger = PartyRequestAuth("alice", Ed25519PrivateKey.generate())
    with kbs.http() as http:
        _problem(http.get("/v1/audit"), 401, f"{TF}/RequestUnsigned")
        _problem(http.get("/v1/audit", auth=stranger), 401, f"{TF}/RequestUnsigned")
        _problem(http.get("/v1/counters/session/s1"), 401, f"{TF}/RequestUnsigned")
        ok = http.get("/v1/audit", auth=alice)
        assert ok.status_code == 200 and ok.json()["entries"]
        _problem(http.get("/v1/counters/session/s1", auth=alice), 404, f"{TF}/ResourceNotFound")
    with KbsClient(None, kbs.pin) as anonymous, pytest.raises(KbsError, match="--party"):
        anonymous.audit()
    with KbsClient(None, kbs.pin, party=kbs.parties["bob"]) as bob:
        assert next(e.kind for e in bob.audit()) == "agreement"


def _grant(kbs: Kbs, path: str, owner: str = "alice") -> Any:
    now = datetime.now(UTC)
    return sign_grant(Grant.from_mapping({
        "id": "grant-" + os.urandom(6).hex(), "resource": path, "owner": owner,
        "agreement": digest(kbs.signed.agreement).hex(), "roles": ["client"],
        "packages": [PKG], "functions": ["train"], "recipients": ["alice"],
        "created_at": now - timedelta(minutes=1), "not_after": now + timedelta(days=1),
        "max_releases": 5,
    }), kbs.parties[owner])


def test_party_cannot_write_another_or_a_system_namespace(kbs: Kbs) -> None:
    alice = kbs.parties["alice"]
    refused = ["bob/dataset-key/v1", f"fl/package-key/{OTHER_PKG}",
               f"fl/checkpoint-key/{OTHER_PKG}", "compute/result/x", "nobody/key/v1"]
    with KbsClient(None, kbs.pin, party=alice) as party:
        for path in refused:
            with pytest.raises(GrantRejected):
                party.put_resource(path, os.urandom(32), _grant(kbs, path), alice)
        # her own namespace, and the package key of a package she reads, are hers to write
        for path in ("alice/dataset-key/v1", f"fl/package-key/{PKG}"):
            party.put_resource(path, os.urandom(32), _grant(kbs, path), alice)
        denied = {e.subject: e.reasons for e in party.audit()
                  if e.kind == "resource" and e.decision == "deny"}
    assert set(refused) <= set(denied)
    assert any("belongs to party bob" in r for r in denied["bob/dataset-key/v1"])
    assert any("not a reader" in r for r in denied[f"fl/package-key/{OTHER_PKG}"])
    assert all(kbs.runtime.store.get_resource(p) is None for p in refused)


def test_aggregator_cannot_step_another_sessions_counter(kbs: Kbs) -> None:
    platform = EmulatedSgx(kbs.runtime.authority, measurement=AGG_MR)
    token = issue_enrollment(kbs.parties["alice"], federation="study", role="aggregator",
                             now=datetime.now(UTC), expires=timedelta(hours=1))
    with KbsClient(None, kbs.pin, platform, enrollment=token) as agg:  # alice operates it
        agg.attest("aggregator", {"session": "s2"})
        with pytest.raises(PolicyDeny):
            agg.increment_counter("session/s1", 0, b"\x01" * 32)
        with pytest.raises(PolicyDeny):  # nor read it
            agg.get_counter("session/s1")
        with pytest.raises(PolicyDeny):  # nor step a counter outside every scope
            agg.increment_counter("anything/else", 0, b"\x01" * 32)
        assert agg.increment_counter("session/s2", 0, b"\x02" * 32).value == 1
    assert kbs.runtime.store.get_counter("session/s1") is None


def test_first_agreement_from_a_stranger_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "home"))
    parties = {n: PartyKeys.generate(n) for n in ("alice", "bob")}
    signed = _agreement(parties)
    stranger_keys = {n: PartyKeys.generate(n) for n in parties}  # same names, its own keys
    stranger = _agreement(stranger_keys)
    runtime, server = _start(tmp_path, signed)
    try:
        # before anything is uploaded, the evidence already binds the agreed first agreement
        pin = verify_kbs(server.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)),
                         allow_emulated=True,
                         expected_agreement_digest=digest(signed.agreement))
        assert pin.agreement_digest == digest(signed.agreement).hex()
        with httpx.Client(base_url=server.url, timeout=10,
                          verify=pinned_tls_context(pin.tls_spki_sha256)) as http:
            resp = http.post("/v1/agreement", json=stranger.model_dump(mode="json"))
            _problem(resp, 403, f"{TF}/AgreementRejected")
            assert runtime.service.current_agreement() is None
            ok = http.post("/v1/agreement", json=signed.model_dump(mode="json"))
            assert ok.status_code == 200 and ok.json()["digest"] == pin.agreement_digest
    finally:
        server.stop()
        runtime.close()


def test_empty_kbs_refuses_to_start_without_a_first_agreement_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "home"))
    with pytest.raises(KbsError, match="--expect-agreement"):
        build_kbs(f"sqlite:///{tmp_path / 'kbs.db'}", state_dir=tmp_path / "state",
                  federation="study", measurement=KBS_MR, purge_interval=None,
                  platform="emulated-sgx")
    # the real command, in its own process: exits with the error before listening
    env = {**os.environ, "TEEFLOW_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "teeflow", "kbs", "serve", "--db",
         f"sqlite:///{tmp_path / 'cli.db'}", "--listen", "127.0.0.1:1", "--state-dir",
         str(tmp_path / "cli-state"), "--federation", "study", "--platform", "emulated-sgx"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "--expect-agreement" in done.stderr + done.stdout
    # a store that already holds an agreement needs neither option
    runtime, server = _start(tmp_path / "again", None, insecure_first_agreement=True)
    try:
        with KbsClient(None, verify_kbs(server.url, SgxReferenceValues(
                mrenclave=(KBS_MR.hex(),)), allow_emulated=True)) as party:
            party.submit_agreement(_agreement({n: PartyKeys.generate(n)
                                               for n in ("alice", "bob")}))
    finally:
        server.stop()
        runtime.close()
    again = build_kbs(f"sqlite:///{tmp_path / 'again' / 'kbs.db'}",
                      state_dir=tmp_path / "again" / "state", measurement=KBS_MR,
                      purge_interval=None, platform="emulated-sgx")
    again.close()
