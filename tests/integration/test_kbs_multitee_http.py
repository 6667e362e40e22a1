"""Emulated TDX and SEV-SNP workloads through the KBS over real HTTPS (issue 5 "Done when").

A KBS (emulated platform, SQLite) on 127.0.0.1; a party verifies and pins it, submits an
agreement with SGX, TDX and SNP reference values and uploads a granted data key. An
emulated TDX workload (DCAP quote v4) and an emulated SNP workload (report v3 + VCEK chain)
attest with the SDK, get the resource and a workload certificate; a mismatched tee, a
wrong MRTD / MEASUREMENT are typed denials (401
AttestationFailed, as Trustee) with audit entries; the audit chain verifies.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from teeflow.kbs.api.problems import AttestationFailed
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import (
    Pin,
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
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.service.audit import verify_audit_chain
from teeflow.platform.emulated import EmulatedSgx
from teeflow.platform.emulated_snp import EmulatedSnp
from teeflow.platform.emulated_tdx import EmulatedTdx
from teeflow.platform.selection import PlatformOptions, emulated_identity

KBS_MR = hashlib.sha256(b"teeflow multitee kbs").digest()
SGX_MR = hashlib.sha256(b"teeflow multitee sgx client").digest()
MRTD = hashlib.sha384(b"teeflow multitee td").digest()
SNP_MR = hashlib.sha384(b"teeflow multitee snp guest").digest()
WRONG48 = hashlib.sha384(b"not the agreed guest").digest()
#: a role's 32-byte workload measurement (what --platform emulated-tdx/snp reports, padded)
ROLE_MR = hashlib.sha256(b"teeflow multitee role").digest()
PKG = "c0" * 32
PATH = "alice/dataset-key/v1"
PARTIES = {n: PartyKeys.generate(n) for n in ("alice", "bob")}
#: alice's client, enrolled by alice (a workload acts for a party only with its enrollment)
CLAIMS: dict[str, Any] = {
    "party": "alice", "package_digest": PKG, "function": "train", "resources": [PATH],
    "recipients": ["alice"],
    "enrollment": issue_enrollment(PARTIES["alice"], federation="study", role="client",
                                   now=datetime.now(UTC), expires=timedelta(hours=4)),
}


@dataclass
class Env:
    pin: Pin
    runtime: KbsRuntime
    home: Path
    data_key: bytes
    alice: PartyKeys

    def tdx(self, mrtd: bytes = MRTD) -> KbsClient:
        return KbsClient(None, self.pin, EmulatedTdx(self.runtime.authority, mrtd=mrtd))

    def snp(self, measurement: bytes = SNP_MR) -> KbsClient:
        platform = EmulatedSnp.load_or_create(self.home, measurement=measurement)
        return KbsClient(None, self.pin, platform)

    def attestation_denials(self) -> list[Any]:
        return [e for e in self.runtime.store.audit_entries(0, 10_000)
                if e.kind == "attestation" and e.decision == "deny"]


def _agreement(parties: dict[str, PartyKeys]) -> SignedAgreement:
    doc = {
        "federation": "study", "version": 1, "previous": None,
        "parties": {n: {"sign_key": k.public().sign_key,
                        "recipient_key": k.public().recipient_key,
                        "roles": ["data-owner"]} for n, k in parties.items()},
        "workloads": {
            "kbs": {"sgx": {"mrenclave": [KBS_MR.hex()]}},
            "client": {"sgx": {"mrenclave": [SGX_MR.hex()]},
                       "tdx": {"mrtd": [MRTD.hex(), emulated_identity("emulated-tdx",
                                                                      ROLE_MR).hex()]},
                       "snp": {"measurement": [SNP_MR.hex(), emulated_identity(
                           "emulated-snp", ROLE_MR).hex()], "max_vmpl": 0}},
        },
        "packages": {"trainer": {"digest": PKG, "entrypoints": ["train"], "readers": ["alice"]}},
        "outputs": {"model": ["alice"]},
        "allow_emulated": True,
        "update_quorum": {"k": 1},
    }
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for keys in parties.values():
        signed = signed.signed_by(keys)
    return signed


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("kbs-multitee")
    home = base / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(home))
        parties = PARTIES
        signed = _agreement(parties)
        runtime = build_kbs(f"sqlite:///{base / 'kbs.db'}", state_dir=base / "state",
                            federation="study", measurement=KBS_MR, purge_interval=None,
                            platform="emulated-sgx",
                            expect_agreement=digest(signed.agreement))
        server = BackgroundServer(make_server(runtime, graceful_timeout=2)).start()
        try:
            pin = verify_kbs(server.url, SgxReferenceValues(mrenclave=(KBS_MR.hex(),)),
                             allow_emulated=True)
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
            yield Env(pin, runtime, home, data_key, parties["alice"])
        finally:
            server.stop()
            runtime.close()


@pytest.mark.parametrize(("kind", "tee", "measurement"),
                         [("tdx", "emulated-tdx", MRTD), ("snp", "emulated-snp", SNP_MR)])
def test_emulated_workload_gets_resource_and_certificate(
    env: Env, kind: str, tee: str, measurement: bytes
) -> None:
    with getattr(env, kind)() as workload:
        workload.attest("client", CLAIMS)
        assert workload.get_resource(PATH) == env.data_key
        pem, _key = workload.get_certificate()
        identity = workload.check_certificate(x509.load_pem_x509_certificate(pem))
    assert identity.tee == tee and identity.emulated is True
    assert identity.measurement == measurement.hex() and identity.role == "client"
    accepts = [e for e in env.runtime.store.audit_entries(0, 10_000)
               if e.kind == "attestation" and e.decision == "accept"
               and e.data.get("tee") == tee]
    assert accepts and accepts[-1].data["measurement"] == measurement.hex()


@pytest.mark.parametrize("name", ["emulated-tdx", "emulated-snp"])
def test_role_attester_from_platform_option_attests_over_https(env: Env, name: str) -> None:
    # exactly what `aggregator run|client run|compute serve --platform NAME` build
    attester = PlatformOptions(name).attester(ROLE_MR, authority=env.runtime.authority,
                                              home=env.home)
    assert (attester.tee, attester.kind) == (name, "emulated")
    with KbsClient(None, env.pin, attester) as workload:
        workload.attest("client", CLAIMS)
        assert workload.get_resource(PATH) == env.data_key
        pem, _key = workload.get_certificate()
        identity = workload.check_certificate(x509.load_pem_x509_certificate(pem))
    assert identity.tee == name and identity.emulated is True
    assert identity.measurement == emulated_identity(name, ROLE_MR).hex()


def test_kbs_refuses_a_role_claiming_hardware_with_emulated_evidence(env: Env) -> None:
    attester = PlatformOptions("emulated-snp").attester(ROLE_MR, home=env.home)
    before = len(env.attestation_denials())
    with KbsClient(None, env.pin, attester, tee="snp") as workload, pytest.raises(
        AttestationFailed
    ) as exc:
        workload.attest("client", CLAIMS)
    assert exc.value.status == 401
    assert "declared tee snp but the evidence is emulated-snp" in exc.value.detail
    assert len(env.attestation_denials()) == before + 1


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda e: KbsClient(None, e.pin, EmulatedSgx(e.runtime.authority, measurement=SGX_MR),
                             tee="emulated-tdx"),
         "declared tee emulated-tdx but the evidence is SGX evidence"),
        (lambda e: KbsClient(None, e.pin, EmulatedTdx(e.runtime.authority, mrtd=MRTD),
                             tee="emulated-snp"),
         "declared tee emulated-snp but the evidence is TDX evidence"),
        (lambda e: KbsClient(None, e.pin, EmulatedTdx(e.runtime.authority, mrtd=MRTD),
                             tee="tdx"),
         "declared tee tdx but the evidence is emulated-tdx"),
        (lambda e: e.tdx(mrtd=WRONG48), f"mrtd {WRONG48.hex()} not in allowed list"),
        (lambda e: e.snp(measurement=WRONG48), f"measurement {WRONG48.hex()} not in allowed"),
    ],
)
def test_mismatches_and_wrong_measurements_are_denied_and_audited(
    env: Env, make: Any, needle: str
) -> None:
    before = len(env.attestation_denials())
    with make(env) as workload, pytest.raises(AttestationFailed) as exc:
        workload.attest("client", CLAIMS)
    assert exc.value.status == 401 and needle in exc.value.detail  # Trustee: 401
    assert exc.value.to_dict()["type"].endswith("/AttestationError")  # Trustee type URI
    denials = env.attestation_denials()
    assert len(denials) == before + 1
    assert any(needle in r for r in denials[-1].reasons)


def test_audit_chain_verifies(env: Env) -> None:
    # one attestation of this test's own (under xdist the module's other tests may run on
    # another worker, with another KBS)
    with env.tdx() as workload:
        workload.attest("client", CLAIMS)
    with KbsClient(None, env.pin, party=env.alice) as party:
        entries = party.audit()
    verify_audit_chain(entries, env.pin.audit_public())
    tees = {e.data.get("tee") for e in entries if e.kind == "attestation"}
    assert "emulated-tdx" in tees
