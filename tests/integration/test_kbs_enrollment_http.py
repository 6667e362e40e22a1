"""Enrollment attacks over real HTTPS (adversary P, a party acting alone): the KBS of
test_kbs_http.py (uvicorn on an ephemeral 127.0.0.1 port, SQLite) and workloads using the
client SDK, as ``client run`` does.

Each attack failed before enrollments existed: a workload claiming ``party: bob`` got
``party=bob`` in its EAR and certificate and alice's key, with none of bob's keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from joserfc.jwk import ECKey
from test_kbs_http import AGG_MR, CLAIMS, CLIENT_MR, PATH, TEE, Env, assert_problem, kbs_env

from teeflow.kbs.api.problems import AttestationFailed, InvalidRequest, PolicyDeny
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import digest
from teeflow.kbs.policy.enrollment import issue_enrollment, read_enrollment, sign_revocation
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.platform.emulated import EmulatedSgx

BOB_CLAIMS = {**CLAIMS, "party": "bob"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with kbs_env(tmp_path_factory.mktemp("kbs-enrollment")) as e:
        yield e


def refused(w: KbsClient, claims: dict[str, Any], needle: str, role: str = "client") -> None:
    with pytest.raises(AttestationFailed) as exc:
        w.attest(role, claims)
    assert exc.value.status == 401 and needle in exc.value.detail, exc.value.detail


def test_client_run_party_bob_with_alices_enrollment_is_refused(env: Env) -> None:
    with env.workload(party="alice") as w:
        refused(w, BOB_CLAIMS, "enrollment is by alice, the workload claims party bob")


def test_no_enrollment_no_certificate(env: Env) -> None:
    with env.workload(enrollment=None) as w:
        refused(w, CLAIMS, "no enrollment")
        refused(w, {**CLAIMS, "party": None}, "no enrollment")
    with env.http() as http:  # nothing attested: no certificate, no key
        r = http.post("/v1/certificates", json={"csr": "x"})
        assert_problem(r, 401, f"{TEE}/TokenNotFound")


@pytest.mark.parametrize(("party", "kw", "needle"), [
    ("alice", {"federation": "other"}, "enrollment is for federation other"),
    ("carol", {"role": "aggregator"}, "enrollment is for role aggregator"),
    ("alice", {"session": "s1"}, "enrollment is scoped to session s1"),
])
def test_enrollment_for_another_federation_role_or_session(
        env: Env, party: str, kw: dict[str, Any], needle: str) -> None:
    token = issue_enrollment(env.parties[party], **{
        "federation": "study", "role": "client", "now": datetime.now(UTC),
        "expires": timedelta(hours=1), **kw})
    with env.workload(party=party, enrollment=token) as w:
        refused(w, {**CLAIMS, "party": None, "session": "s2"}, needle)


def test_expired_enrollment(env: Env) -> None:
    token = issue_enrollment(env.parties["alice"], federation="study", role="client",
                             now=datetime.now(UTC) - timedelta(hours=2),
                             expires=timedelta(hours=1))
    with env.workload(enrollment=token) as w:
        refused(w, CLAIMS, "enrollment expired")


def test_uses_exhausted_n_plus_first_refused(env: Env) -> None:
    token = env.token("alice", uses=2)
    for _ in range(2):
        with env.workload(enrollment=token) as w:
            w.attest("client", CLAIMS)
            assert w.get_resource(PATH) == env.data_key
    with env.workload(enrollment=token) as w:
        refused(w, CLAIMS, "enrollment exhausted")


def test_revoked_enrollment_over_http(env: Env) -> None:
    token = env.token("alice")
    jti = read_enrollment(token).jti
    now = datetime.now(UTC)
    with env.workload(enrollment=token) as w:
        w.attest("client", CLAIMS)
    with KbsClient(None, env.pin) as party:
        # bob cannot revoke alice's enrollment: his signature on "alice" does not verify
        head, payload, _ = sign_revocation(env.parties["alice"], federation="study",
                                           enrollment_id=jti, now=now).split(".")
        bob_sig = sign_revocation(env.parties["bob"], federation="study", enrollment_id=jti,
                                  now=now).split(".")[2]
        with pytest.raises(InvalidRequest):
            party.revoke_enrollment(f"{head}.{payload}.{bob_sig}")
        done = party.revoke_enrollment(
            sign_revocation(env.parties["alice"], federation="study", enrollment_id=jti, now=now))
        assert done["party"] == "alice" and done["uses"] == 1
    with env.workload(enrollment=token) as w:
        refused(w, CLAIMS, "enrollment revoked")
    with env.http() as http:
        assert_problem(http.post("/v1/enrollments/revocations", json={"revocation": "x.y.z"}),
                       400, "https://teeflow.dev/kbs/errors/InvalidRequest")


def test_workload_key_bound_token_with_another_key(env: Env) -> None:
    bound = ECKey.generate_key("P-256", private=True)
    token = env.token("alice", workload_key=bound.as_dict(private=False))
    platform = EmulatedSgx(env.authority, measurement=CLIENT_MR)
    with KbsClient(None, env.pin, platform, enrollment=token) as w:  # a fresh key
        refused(w, CLAIMS, "bound to another workload key")
    with KbsClient(None, env.pin, platform, enrollment=token, workload_key=bound) as w:
        w.attest("client", CLAIMS)
        assert w.get_resource(PATH) == env.data_key


def test_resource_granted_only_to_alice_not_released_to_bobs_client(env: Env) -> None:
    path = "alice/restricted-key/v1"
    key = os.urandom(32)
    now = datetime.now(UTC)
    signed = env.runtime.service.current_agreement()
    assert signed is not None
    grant = Grant.from_mapping({
        "id": "grant-" + os.urandom(6).hex(), "resource": path, "owner": "alice",
        "agreement": digest(signed.agreement).hex(), "roles": ["client"],
        "packages": [CLAIMS["package_digest"]], "functions": ["train"],
        "recipients": ["alice", "bob"], "parties": ["alice"],
        "created_at": now - timedelta(minutes=1), "not_after": now + timedelta(days=1),
        "max_releases": 10,
    })
    with KbsClient(None, env.pin) as owner:
        owner.put_resource(path, key, sign_grant(grant, env.parties["alice"]),
                           env.parties["alice"])
    claims = {**CLAIMS, "resources": [path], "recipients": ["bob"]}
    with env.workload(party="bob") as bob:
        bob.attest("client", {**claims, "party": "bob"})
        with pytest.raises(PolicyDeny):
            bob.get_resource(path)
    with env.workload(party="alice") as alice:
        alice.attest("client", {**claims, "party": "alice"})
        assert alice.get_resource(path) == key


def test_real_bob_not_locked_out_after_an_impostor(env: Env) -> None:
    with env.workload(party="alice") as impostor:
        refused(impostor, BOB_CLAIMS, "enrollment is by alice")
    with env.workload(party="bob", enrollment=env.token("bob", uses=1)) as bob:
        bob.attest("client", {**BOB_CLAIMS, "recipients": ["bob"], "resources": []})
        pem, _ = bob.get_certificate()
        ident = bob.check_certificate(x509.load_pem_x509_certificate(pem))
    assert (ident.party, ident.role) == ("bob", "client")


def test_aggregator_enrolled_by_its_operator(env: Env) -> None:
    with env.workload(AGG_MR, party="alice", role="aggregator") as agg:
        refused(agg, {}, "party alice may not enroll a aggregator workload", role="aggregator")
    with env.workload(AGG_MR, party="carol", role="aggregator") as agg:
        agg.attest("aggregator", {})
        pem, _ = agg.get_certificate()
    # a federation-wide workload: its certificate names no party (CN=aggregator:-, the TLS
    # name FL clients check); its operator is in the audit log
    assert agg.check_certificate(x509.load_pem_x509_certificate(pem)).party is None
    [cert] = [e for e in env.runtime.store.audit_entries(0, 10_000)
              if e.kind == "certificate" and e.subject == "certificate:aggregator:carol"]
    assert cert.data["party"] == "carol" and cert.data["certificate_party"] is None
