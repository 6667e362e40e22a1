"""KBS recovery and upgrade on emulated TDX and SEV-SNP (issue 9): the KBS's recovery evidence
is that TEE's (SNP: report + certificate chain in Trustee's shape), parties appraise it
against the agreement's TDX MRTD / SNP MEASUREMENT for the KBS, and the upgraded KBS checks
that the agreement in force names its *attested* identity (the 48-byte MRTD / MEASUREMENT,
not the 32-byte package measurement). With no sealing key (``--sealing recovery-only``, as
on TDX) even a restart of the same code recovers from the shares.

Attack test: a KBS build the agreement does not name gets no share (exact reasons).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from teeflow.errors import PolicyViolation
from teeflow.kbs.api.recovery_runtime import RecoveryRequired
from teeflow.kbs.api.server import BackgroundServer, build_kbs, complete_recovery, make_server
from teeflow.kbs.client.recovery import fetch_share, recover
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement, sign_agreement
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_snp import emulated_snp_anchor
from teeflow.platform.selection import emulated_identity, emulated_workload_spec

M1 = hashlib.sha256(b"kbs tee code v1").digest()
M2 = hashlib.sha256(b"kbs tee code v2").digest()
M_ROGUE = hashlib.sha256(b"kbs tee code nobody agreed to").digest()
NAMES = ("alice", "bob")


def _agreement(platform: str, parties: dict[str, PartyKeys], version: int, mrs: list[bytes],
               prev: bytes | None) -> FederationAgreement:
    specs = [emulated_workload_spec(platform, m) for m in mrs]
    key = "tdx" if platform == "emulated-tdx" else "snp"
    field = "mrtd" if key == "tdx" else "measurement"
    kbs: dict[str, Any] = {key: {**specs[0][key], field: [s[key][field][0] for s in specs]}}
    return FederationAgreement.from_mapping({
        "federation": "fed", "version": version, "previous": None if prev is None else prev.hex(),
        "parties": {n: {"sign_key": k.public().sign_key, "recipient_key": k.public().recipient_key,
                        "roles": ["data-owner"]} for n, k in parties.items()},
        "workloads": {"kbs": kbs}, "allow_emulated": True,
        "update_quorum": {"k": 2}, "recovery": {"k": 2},
    })  # fmt: skip


def _sign(agreement: FederationAgreement, signers: list[PartyKeys]) -> SignedAgreement:
    return SignedAgreement(
        agreement=agreement, signatures={k.name: sign_agreement(agreement, k) for k in signers}
    )


@pytest.mark.parametrize("platform", ["emulated-tdx", "emulated-snp"])
def test_recovery_and_upgrade_on_tee(tmp_path: Path, platform: str) -> None:
    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'kbs.db'}"
    now = datetime.now(UTC)
    parties = {n: PartyKeys.generate(n) for n in NAMES}
    v1 = _agreement(platform, parties, 1, [M1], None)
    common: dict[str, Any] = {"state_dir": tmp_path / "state", "federation": "fed",
                              "home": home, "purge_interval": None, "platform": platform,
                              "sealer": None,  # recovery-only: no sealing key, as TDX
                              "expect_agreement": digest(v1)}
    resume = {k: v for k, v in common.items() if k != "sealer"}  # the runtime's sealer

    runtime = build_kbs(db, measurement=M1, **common)
    authority = EmulationAuthority.load_or_create(home, now=now)
    anchors = [authority.trust_anchor(), emulated_snp_anchor(home, now=now)]
    collateral = EmulatedCollateralProvider(authority)
    hpke = runtime.keys.hpke_public_key()
    with BackgroundServer(make_server(runtime)) as srv:
        pin = verify_kbs(srv.url, v1.workloads["kbs"], True, home=home)
        assert pin.tee == platform and pin.measurement == emulated_identity(platform, M1).hex()
        with KbsClient(None, pin) as client:
            client.submit_agreement(_sign(v1, list(parties.values())))
        shares = {n: fetch_share(pin, k) for n, k in parties.items()}
        v2 = _agreement(platform, parties, 2, [M1, M2], digest(v1))
        with KbsClient(None, pin) as client:
            client.submit_agreement(_sign(v2, list(parties.values())))
    runtime.close()

    def recover_all(rt: Any, agreement: FederationAgreement) -> None:
        with BackgroundServer(make_server(rt, "127.0.0.1", 0)) as srv:
            for name in NAMES:
                recover(srv.url, shares[name], parties[name], agreement, allow_emulated=True,
                        anchors=anchors, collateral=collateral)

    # no sealing key: a restart of the same code recovers from the shares
    with pytest.raises(RecoveryRequired) as same:
        build_kbs(db, measurement=M1, **common)
    recover_all(same.value.runtime, v2)
    again = complete_recovery(same.value.runtime, db, measurement=M1, **resume)
    try:
        assert again.keys.hpke_public_key() == hpke
        assert again.store.audit_entries(0, 1000)[-1].kind == "kbs-recovery"
    finally:
        again.close()

    # attack: a build the agreement does not name gets no share
    with pytest.raises(RecoveryRequired) as rogue:
        build_kbs(db, measurement=M_ROGUE, **common)
    with pytest.raises(PolicyViolation) as exc:
        recover_all(rogue.value.runtime, v2)
    field = "mrtd" if platform == "emulated-tdx" else "measurement"
    rogue_id = emulated_identity(platform, M_ROGUE).hex()
    assert f"{field} {rogue_id} not in allowed list" in exc.value.violations
    assert rogue.value.runtime.coordinator.status()["submitted"] == []

    # the upgrade the quorum named: its attested 48-byte identity is in the agreement
    with pytest.raises(RecoveryRequired) as need:
        build_kbs(db, measurement=M2, **common)
    assert need.value.runtime.identity == emulated_identity(platform, M2)
    recover_all(need.value.runtime, v2)
    upgraded = complete_recovery(need.value.runtime, db, measurement=M2, **resume)
    try:
        assert upgraded.keys.hpke_public_key() == hpke
        last = upgraded.store.audit_entries(0, 1000)[-1]
        assert last.kind == "kbs-upgrade"
        assert (last.data["from_measurement"], last.data["to_measurement"]) == (M1.hex(), M2.hex())
    finally:
        upgraded.close()
