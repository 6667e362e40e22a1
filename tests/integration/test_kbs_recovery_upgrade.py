"""End to end on the emulated platform, over TLS on 127.0.0.1: a KBS with an agreement in
force makes a 2-of-3 recovery share set; the parties save their shares; a quorum-signed
update names a new KBS measurement; the KBS code is "upgraded" (new measurement: its sealed
state no longer unseals) and starts in recovery mode; the parties verify it and submit
their shares; the upgraded KBS resumes with the same key set, and the agreement, a grant
(resource whose data key is sealed to the KBS key), a counter and the audit chain survive,
with the upgrade in the audit log.

Attacks: a KBS whose measurement the agreement does not name gets no share (the party
refuses: PolicyViolation); a share sealed to another key is refused (403); one share of a
2-of-3 set does not unlock (the KBS stays in recovery mode, every other route 503); a
submission with a bad signature is refused (403).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from teeflow.errors import KbsError, PolicyViolation
from teeflow.kbs.api.problems import Conflict
from teeflow.kbs.api.recovery_runtime import RecoveryRequired, RecoveryRuntime
from teeflow.kbs.api.server import BackgroundServer, build_kbs, complete_recovery, make_server
from teeflow.kbs.client.recovery import ShareFile, fetch_share, recover
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.kbs_reference import load_reference_values
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement, sign_agreement
from teeflow.kbs.service.audit import verify_audit_chain
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.kbs.service.recovery import sign_submission
from teeflow.platform.emulated import EmulationAuthority
from teeflow.sealing.hpke import unwrap_key, wrap_key

M1 = hashlib.sha256(b"kbs code v1").digest()
M2 = hashlib.sha256(b"kbs code v2").digest()
M_ROGUE = hashlib.sha256(b"kbs code nobody agreed to").digest()
NAMES = ("alice", "bob", "carol")
INFO = b"test/grant-key"


def _agreement(parties: dict[str, PartyKeys], version: int, mrs: list[bytes], prev: bytes | None):
    doc = {
        "federation": "fed",
        "version": version,
        "previous": None if prev is None else prev.hex(),
        "parties": {
            n: {
                "sign_key": k.public().sign_key,
                "recipient_key": k.public().recipient_key,
                "roles": ["data-owner"],
            }
            for n, k in parties.items()
        },
        "workloads": {"kbs": {"sgx": {"mrenclave": [m.hex() for m in mrs]}}},
        "allow_emulated": True,
        "update_quorum": {"k": 2},
        "recovery": {"k": 2},
    }
    return FederationAgreement.from_mapping(doc)


def _sign(agreement: FederationAgreement, signers: list[PartyKeys]) -> SignedAgreement:
    return SignedAgreement(
        agreement=agreement, signatures={k.name: sign_agreement(agreement, k) for k in signers}
    )


def _recovery_server(rt: RecoveryRuntime) -> BackgroundServer:
    return BackgroundServer(make_server(rt, "127.0.0.1", 0))


def test_upgrade_and_recovery_keep_state(tmp_path: Path) -> None:
    home = tmp_path / "home"
    state = tmp_path / "state"
    db = f"sqlite:///{tmp_path / 'kbs.db'}"
    now = datetime.now(UTC)
    parties = {n: PartyKeys.generate(n) for n in NAMES}
    v1 = _agreement(parties, 1, [M1], None)
    common = {"state_dir": state, "federation": "fed", "home": home, "purge_interval": None,
              "platform": "emulated-sgx"}

    # -- KBS v1: agreement, grant, counter; parties save their shares ---------------------
    runtime = build_kbs(db, measurement=M1, expect_agreement=digest(v1), **common)
    authority = EmulationAuthority.load_or_create(home, now=now)
    anchors = [authority.trust_anchor()]
    collateral = EmulatedCollateralProvider(authority)
    data_key = os.urandom(32)
    before_hpke = runtime.keys.hpke_public_key()
    with BackgroundServer(make_server(runtime)) as srv:
        values_file = tmp_path / "agreement-v1.yaml"
        values_file.write_text(v1.to_yaml())
        pin = verify_kbs(srv.url, load_reference_values(values_file), True, home=home)
        with KbsClient(None, pin) as client:
            client.submit_agreement(_sign(v1, list(parties.values())))
        shares = {n: fetch_share(pin, k) for n, k in parties.items()}
        for n, share in shares.items():
            path = share.save(tmp_path / "parties" / n / "share.json")
            assert path.stat().st_mode & 0o777 == 0o600
            assert path.parent.stat().st_mode & 0o777 == 0o700
        # a grant: data key sealed to the KBS key; a counter
        wrapped = wrap_key(data_key, runtime.keys.hpke.public_key(), info=INFO)
        runtime.store.put_resource(
            "fed/data/x",
            "alice",
            wrapped_key=wrapped,
            grant=b'{"grant": "signed by alice"}',
            grant_digest=hashlib.sha256(b"grant").digest(),
            not_after=None,
            max_releases=3,
            created_at=now,
        )
        runtime.store.compare_and_increment("session/round", 0, hashlib.sha256(b"r1").digest())
        # the quorum names the new KBS measurement before the upgrade
        v2 = _agreement(parties, 2, [M1, M2], digest(v1))
        with KbsClient(None, pin) as client:
            client.submit_agreement(_sign(v2, [parties["alice"], parties["bob"]]))
        head_before = runtime.store.last_audit()
    runtime.close()
    assert head_before is not None
    assert (state / "kbs-recovery.json").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    assert {s.recovery_id for s in shares.values()} == {
        ShareFile.load(tmp_path / "parties" / "alice" / "share.json").recovery_id
    }

    # -- a KBS build the agreement does not name: the party refuses -----------------------
    with pytest.raises(RecoveryRequired) as rogue:
        build_kbs(db, measurement=M_ROGUE, **common)
    with _recovery_server(rogue.value.runtime) as srv:
        with pytest.raises(PolicyViolation):
            recover(
                srv.url,
                shares["alice"],
                parties["alice"],
                v2,
                allow_emulated=True,
                anchors=anchors,
                collateral=collateral,
            )
        assert rogue.value.runtime.coordinator.status()["submitted"] == []

    # -- the upgraded KBS (M2) starts in recovery mode ---------------------------------------
    with pytest.raises(RecoveryRequired) as need:
        build_kbs(db, measurement=M2, **common)
    rt = need.value.runtime
    with _recovery_server(rt) as srv:
        # nothing but evidence and /v1/recovery is served
        with httpx.Client(verify=False) as http:
            assert http.get(f"{srv.url}/v1/agreement").status_code == 503
            status = http.get(f"{srv.url}/v1/recovery").json()
            assert status["mode"] == "recovery" and status["k"] == 2
            own = rt.coordinator.public_bundle()
            # a share sealed to another key does not work
            other = X25519PrivateKey.generate().public_key()
            share_bytes = _own_share(shares["bob"], parties["bob"])
            bad = sign_submission(
                parties["bob"].sign_key,
                party="bob",
                recovery_id=own["recovery_id"],
                recipient=other,
                share=share_bytes,
            )
            answer = http.post(f"{srv.url}/v1/recovery/shares", content=bad.model_dump_json())
            assert answer.status_code == 403
            # a signature by another party's key
            forged = sign_submission(
                parties["carol"].sign_key,
                party="bob",
                recovery_id=own["recovery_id"],
                recipient=rt.coordinator.recovery_public_key(),
                share=share_bytes,
            )
            answer = http.post(f"{srv.url}/v1/recovery/shares", content=forged.model_dump_json())
            assert answer.status_code == 403
        # fewer than k shares do not unlock
        first = recover(
            srv.url,
            shares["alice"],
            parties["alice"],
            v2,
            allow_emulated=True,
            anchors=anchors,
            collateral=collateral,
        )
        assert first["mode"] == "recovery" and first["submitted"] == ["alice"]
        assert not rt.coordinator.done.is_set()
        with httpx.Client(verify=False) as http:
            assert http.get(f"{srv.url}/kbs/v0/resource/fed/data/x").status_code == 503
        second = recover(
            srv.url,
            shares["carol"],
            parties["carol"],
            v2,
            allow_emulated=True,
            anchors=anchors,
            collateral=collateral,
        )
        assert second["mode"] == "recovered"
        assert rt.coordinator.done.is_set()
        # a late submission after recovery
        with pytest.raises(Conflict):
            recover(
                srv.url,
                shares["bob"],
                parties["bob"],
                v2,
                allow_emulated=True,
                anchors=anchors,
                collateral=collateral,
            )

    upgraded = complete_recovery(rt, db, measurement=M2, **common)
    try:
        assert upgraded.keys.hpke_public_key() == before_hpke
        assert upgraded.service.current_agreement().agreement.version == 2  # type: ignore[union-attr]
        record = upgraded.store.get_resource("fed/data/x")
        assert record is not None and record.max_releases == 3
        assert unwrap_key(record.wrapped_key, upgraded.keys.hpke, info=INFO) == data_key
        assert upgraded.store.get_counter("session/round") is not None
        assert upgraded.store.get_counter("session/round")[0] == 1  # type: ignore[index]
        entries = upgraded.store.audit_entries(0, 1000)
        verify_audit_chain(entries, upgraded.keys.audit.public_key())
        assert entries[head_before.seq - 1].hash == head_before.hash
        last = entries[-1]
        assert last.kind == "kbs-upgrade"
        assert last.data["from_measurement"] == M1.hex()
        assert last.data["to_measurement"] == M2.hex()
        assert last.data["parties"] == ["alice", "carol"]
    finally:
        upgraded.close()

    # the upgraded KBS now restarts without the parties (resealed to M2)
    again = build_kbs(db, measurement=M2, **common)
    try:
        assert again.keys.hpke_public_key() == before_hpke
    finally:
        again.close()


def _own_share(share: ShareFile, keys: PartyKeys) -> bytes:
    from teeflow.kbs.service.recovery import open_party_share

    return open_party_share(share.parsed_record(), keys.name, keys.recipient_key)


def test_without_sealing_key_every_restart_recovers(tmp_path: Path) -> None:
    """As on TDX (no sealing key): nothing unsealable is written; each restart starts in
    recovery mode, n-of-n by default; the share set is in the audit log."""
    home = tmp_path / "home"
    state = tmp_path / "state"
    db = f"sqlite:///{tmp_path / 'kbs.db'}"
    now = datetime.now(UTC)
    parties = {n: PartyKeys.generate(n) for n in ("alice", "bob")}
    doc = _agreement(parties, 1, [M1], None).to_document()
    doc["recovery"] = None
    doc["update_quorum"] = {"k": 1}
    v1 = FederationAgreement.from_mapping(doc)
    common = {
        "state_dir": state, "federation": "fed", "home": home, "purge_interval": None,
        "measurement": M1, "sealer": None, "platform": "emulated-sgx",
    }
    runtime = build_kbs(db, expect_agreement=digest(v1), **common)
    authority = EmulationAuthority.load_or_create(home, now=now)
    anchors = [authority.trust_anchor()]
    collateral = EmulatedCollateralProvider(authority)
    audit_key = runtime.keys.audit.public_key().public_bytes_raw()
    with BackgroundServer(make_server(runtime)) as srv:
        values_file = tmp_path / "agreement.yaml"
        values_file.write_text(v1.to_yaml())
        pin = verify_kbs(srv.url, load_reference_values(values_file), True, home=home)
        with KbsClient(None, pin, party=parties["alice"]) as client:
            client.submit_agreement(_sign(v1, list(parties.values())))
            entries = client.audit()
        shares = {n: fetch_share(pin, k) for n, k in parties.items()}
    runtime.close()
    assert not (state / "kbs-keys.sealed").exists()
    made = [e for e in entries if e.kind == "recovery-shares"]
    assert [e.data["recovery_id"] for e in made] == [shares["alice"].recovery_id]
    assert made[0].data["k"] == 2

    for _ in range(2):
        with pytest.raises(RecoveryRequired) as need:
            build_kbs(db, **common)
        rt = need.value.runtime
        assert rt.coordinator.status()["reason"] == "no platform sealing key"
        with _recovery_server(rt) as srv:
            first = recover(
                srv.url, shares["bob"], parties["bob"], v1,
                allow_emulated=True, anchors=anchors, collateral=collateral,
            )
            assert first["mode"] == "recovery"  # 1 of 2: still locked
            recover(
                srv.url, shares["alice"], parties["alice"], v1,
                allow_emulated=True, anchors=anchors, collateral=collateral,
            )
        args = {k: v for k, v in common.items() if k != "sealer"}
        back = complete_recovery(rt, db, **args)
        try:
            assert back.keys.audit.public_key().public_bytes_raw() == audit_key
            last = back.store.last_audit()
            assert last is not None and last.kind == "kbs-recovery"
            assert last.data["upgrade"] is False
        finally:
            back.close()
        assert not (state / "kbs-keys.sealed").exists()


def test_kbs_refuses_to_resume_as_an_unnamed_upgrade(tmp_path: Path) -> None:
    """Even with every share (parties that skipped the evidence check), a KBS whose
    measurement the agreement in force does not name refuses to resume and changes nothing
    on disk: the named KBS still starts from its sealed state."""
    home = tmp_path / "home"
    state = tmp_path / "state"
    db = f"sqlite:///{tmp_path / 'kbs.db'}"
    parties = {n: PartyKeys.generate(n) for n in ("alice", "bob")}
    doc = _agreement(parties, 1, [M1], None).to_document()
    doc["recovery"] = None
    v1 = FederationAgreement.from_mapping(doc)
    common = {"state_dir": state, "federation": "fed", "home": home, "purge_interval": None,
              "platform": "emulated-sgx"}
    runtime = build_kbs(db, measurement=M1, expect_agreement=digest(v1), **common)
    before = runtime.keys.hpke_public_key()
    with BackgroundServer(make_server(runtime)) as srv:
        values_file = tmp_path / "agreement.yaml"
        values_file.write_text(v1.to_yaml())
        pin = verify_kbs(srv.url, load_reference_values(values_file), True, home=home)
        with KbsClient(None, pin) as client:
            client.submit_agreement(_sign(v1, list(parties.values())))
        shares = {n: fetch_share(pin, k) for n, k in parties.items()}
    runtime.close()
    files = {p.name: p.read_bytes() for p in state.iterdir()}

    with pytest.raises(RecoveryRequired) as need:
        build_kbs(db, measurement=M_ROGUE, **common)
    rt = need.value.runtime
    for n, keys in parties.items():
        sub = sign_submission(
            keys.sign_key, party=n, recovery_id=shares[n].recovery_id,
            recipient=rt.coordinator.recovery_public_key(), share=_own_share(shares[n], keys),
        )
        rt.coordinator.submit(sub.model_dump_json().encode())
    assert rt.coordinator.done.is_set()
    with pytest.raises(KbsError, match="does not name KBS measurement"):
        complete_recovery(rt, db, measurement=M_ROGUE, **common)
    assert {p.name: p.read_bytes() for p in state.iterdir()} == files
    again = build_kbs(db, measurement=M1, **common)
    try:
        assert again.keys.hpke_public_key() == before
    finally:
        again.close()
