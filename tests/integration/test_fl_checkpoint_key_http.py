"""The FL checkpoint key over real HTTPS (127.0.0.1): only attested aggregators get it (P).

A KBS (SQLite, emulated TEE) serves in this process. The publishing party (alice, who also
runs a client) tries every path to the key of session ``study-1``: uploading its own key,
asking without attestation, asking as its attested client, attesting as an aggregator with
a measurement the agreement does not name. Each is refused with the exact problem; an
attested aggregator with the agreed measurement gets the key the KBS generated, the same on
every request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from test_kbs_http import AGG_MR, CLIENT_MR, KBS_MR, PKG, _agreement, assert_problem

from teeflow.kbs.api.problems import AttestationFailed, GrantRejected, PolicyDeny
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import Pin, pinned_tls_context
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import SgxReferenceValues, digest
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.generated import checkpoint_key_path, is_kbs_owner
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.platform.emulated import EmulatedSgx

CKPT = checkpoint_key_path("study-1")
TEE = "https://github.com/confidential-containers/kbs/errors"


@dataclass
class Env:
    url: str
    pin: Pin
    runtime: KbsRuntime
    parties: dict[str, PartyKeys]
    agreement_digest: str

    def workload(self, measurement: bytes, role: str = "aggregator") -> KbsClient:
        """A workload enrolled for ``role`` by its party (the aggregator by carol, its
        operator; a client by alice)."""
        authority = self.runtime.authority
        party = "carol" if role == "aggregator" else "alice"
        token = issue_enrollment(self.parties[party], federation="study", role=role,
                                 now=datetime.now(UTC), expires=timedelta(hours=1))
        return KbsClient(None, self.pin, EmulatedSgx(authority, measurement=measurement),
                         enrollment=token)

    def http(self) -> httpx.Client:
        ctx = pinned_tls_context(self.pin.tls_spki_sha256)
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("kbs-ckpt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(base / "home"))
        parties = {n: PartyKeys.generate(n) for n in ("alice", "bob", "carol")}
        signed = _agreement(parties)
        runtime = build_kbs(
            f"sqlite:///{base / 'kbs.db'}",
            state_dir=base / "state",
            federation="study",
            measurement=KBS_MR,
            purge_interval=None,
            platform="emulated-sgx",
            expect_agreement=digest(signed.agreement),
        )
        server = BackgroundServer(make_server(runtime, graceful_timeout=2)).start()
        try:
            pin = verify_kbs(
                server.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)), allow_emulated=True
            )
            with KbsClient(None, pin) as owner:
                owner.submit_agreement(signed)
            yield Env(server.url, pin, runtime, parties, digest(signed.agreement).hex())
        finally:
            server.stop()
            runtime.close()


AGG_CLAIMS = {"package_digest": PKG, "resources": [CKPT], "recipients": ["alice", "bob"]}


def aggregator_key(env: Env) -> bytes:
    with env.workload(AGG_MR) as agg:
        agg.attest("aggregator", AGG_CLAIMS)
        return agg.get_resource(CKPT)


def test_publisher_cannot_obtain_the_checkpoint_key_by_any_path(env: Env) -> None:
    alice = env.parties["alice"]
    now = datetime.now(UTC)
    grant = Grant.from_mapping({
        "id": "grant-" + os.urandom(6).hex(), "resource": CKPT, "owner": "alice",
        "agreement": env.agreement_digest, "roles": ["aggregator"], "packages": [PKG],
        "functions": [], "recipients": ["alice", "bob"],
        "created_at": now - timedelta(minutes=1), "not_after": now + timedelta(days=1),
        "max_releases": 100,
    })
    mine = os.urandom(32)
    # 1. upload its own checkpoint key (it would read every checkpoint): 403 GrantRejected
    with KbsClient(None, env.pin) as owner, pytest.raises(GrantRejected) as up:
        owner.put_resource(CKPT, mine, sign_grant(grant, alice), alice)
    assert up.value.status == 403
    # 2. ask without attestation: 401
    with env.http() as http:
        assert_problem(http.get(f"/kbs/v0/resource/{CKPT}"), 401, f"{TEE}/TokenNotFound")
    # 3. ask as its own attested client (role client): 403, constant body
    with env.workload(CLIENT_MR, role="client") as client:
        client.attest("client", {"package_digest": PKG, "function": "train",
                                 "resources": [CKPT]})
        with pytest.raises(PolicyDeny) as deny:
            client.get_resource(CKPT)
    assert deny.value.status == 403
    # 4. attest as an aggregator running code the agreement does not name: no token at all
    with env.workload(os.urandom(32)) as fake, pytest.raises(AttestationFailed) as att:
        fake.attest("aggregator", AGG_CLAIMS)
    assert att.value.status == 401
    # the attested aggregator gets the KBS-generated key - never the publisher's
    key = aggregator_key(env)
    assert len(key) == 32 and key != mine
    assert aggregator_key(env) == key  # a restarted aggregator gets the same key
    # 5. after creation the upload is still refused; the public facts name the KBS as owner
    with KbsClient(None, env.pin) as owner, pytest.raises(GrantRejected):
        owner.put_resource(CKPT, mine, sign_grant(grant, alice), alice)
    info = env.runtime.store.get_resource(CKPT)
    assert info is not None and is_kbs_owner(info.owner) and info.generation == 1
    assert key not in info.wrapped_key and key not in info.grant
    assert aggregator_key(env) == key
