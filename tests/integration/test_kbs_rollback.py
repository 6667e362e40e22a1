"""Attack tests over HTTPS (adversary H, the host with read/write access to the KBS database
and state files): a restored copy of the SQLite file is refused by the KBS at start and,
with the KBS head file restored as well, by the party and the workload that saw the newer
state; a row edited while the KBS runs is refused with 503 and an audit entry while every
other resource keeps being served."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from teeflow.kbs.api.problems import ServiceUnavailable
from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server
from teeflow.kbs.client.heads import StateRollback
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, SgxReferenceValues, digest
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.store.interface import StorageRollback
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority

CLIENT_MR = hashlib.sha256(b"teeflow rollback test client").digest()
PKG = "c1" * 32
PATHS = ["alice/key-a/v1", "alice/key-b/v1"]
CLAIMS: dict[str, Any] = {"party": "alice", "package_digest": PKG, "function": "train",
                          "resources": PATHS, "recipients": ["alice"]}


class Kbs:
    """A KBS on a real loopback socket over ``db`` with state in ``state``."""

    def __init__(self, db: Path, state: Path, home: Path) -> None:
        self.runtime = build_kbs(f"sqlite:///{db}", state_dir=state, federation="rb",
                                 home=home, purge_interval=None, platform="emulated-sgx",
                                 insecure_first_agreement=True)
        self.server = BackgroundServer(make_server(self.runtime)).start()

    def stop(self) -> None:
        self.server.stop()
        self.runtime.close()


def _setup(kbs: Kbs, home: Path) -> tuple[Pin, PartyKeys]:
    mr = kbs.runtime.measurement.hex()
    pin = verify_kbs(kbs.server.url, SgxReferenceValues(mrenclave=(mr,)), allow_emulated=True,
                     home=home)
    alice = PartyKeys.generate("alice")
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping({
        "federation": "rb", "version": 1, "previous": None,
        "parties": {"alice": {"sign_key": alice.public().sign_key,
                              "recipient_key": alice.public().recipient_key,
                              "roles": ["data-owner"]}},
        "workloads": {"kbs": {"sgx": {"mrenclave": [mr]}},
                      "client": {"sgx": {"mrenclave": [CLIENT_MR.hex()]}}},
        "packages": {"trainer": {"digest": PKG, "entrypoints": ["train"], "readers": ["alice"]}},
        "outputs": {"model": ["alice"]}, "allow_emulated": True, "update_quorum": {"k": 1},
    })).signed_by(alice)
    now = datetime.now(UTC)
    with KbsClient(None, pin) as owner:
        owner.submit_agreement(signed)
        for i, path in enumerate(PATHS):
            grant = Grant.from_mapping({
                "id": f"rb-grant-{i}", "resource": path, "owner": "alice",
                "agreement": digest(signed.agreement).hex(), "roles": ["client"],
                "packages": [PKG], "functions": ["train"], "recipients": ["alice"],
                "created_at": now - timedelta(minutes=1), "not_after": now + timedelta(days=1),
                "max_releases": 2,
            })
            owner.put_resource(path, os.urandom(32), sign_grant(grant, alice), alice)
    return pin, alice


def _workload(kbs: Kbs, pin: Pin, home: Path, alice: PartyKeys) -> KbsClient:
    """alice's client, enrolled by alice (a workload acts for a party only with its
    enrollment)."""
    sgx = EmulatedSgx(EmulationAuthority.load_or_create(home), measurement=CLIENT_MR)
    enrollment = issue_enrollment(alice, federation="rb", role="client", now=datetime.now(UTC),
                                  expires=timedelta(hours=1))
    # (a restarted KBS listens on another port)
    return KbsClient(kbs.server.url, pin, sgx, enrollment=enrollment)


def test_restored_database_copy_is_refused(teeflow_home: Path, tmp_path: Path) -> None:
    db, state = tmp_path / "kbs.db", tmp_path / "state"
    kbs = Kbs(db, state, teeflow_home)
    try:
        pin, alice = _setup(kbs, teeflow_home)
        kbs.stop()  # a consistent copy of the file and the KBS head file
        shutil.copy(db, tmp_path / "copy.db")
        shutil.copy(state / "kbs-head", tmp_path / "copy-head")
        kbs = Kbs(db, state, teeflow_home)
        with _workload(kbs, pin, teeflow_home, alice) as workload:  # uses one of the 2 releases
            workload.attest("client", CLAIMS)
            workload.get_resource(PATHS[0])
    finally:
        kbs.stop()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "copy.db", db)  # the host restores the older database
    with pytest.raises(StorageRollback, match="the KBS state was rolled back"):
        Kbs(db, state, teeflow_home)
    shutil.copy(tmp_path / "copy-head", state / "kbs-head")  # ... and the KBS head file
    kbs = Kbs(db, state, teeflow_home)
    try:
        with _workload(kbs, pin, teeflow_home, alice) as workload, pytest.raises(
            StateRollback, match="the KBS state was rolled back"
        ):
            workload.attest("client", CLAIMS)  # the release budget would be open again
        with KbsClient(kbs.server.url, pin) as party, pytest.raises(StateRollback):
            party.current_agreement()
    finally:
        kbs.stop()


def test_row_edited_while_running_is_refused_and_audited(
    teeflow_home: Path, tmp_path: Path
) -> None:
    db, state = tmp_path / "kbs.db", tmp_path / "state"
    kbs = Kbs(db, state, teeflow_home)
    try:
        pin, alice = _setup(kbs, teeflow_home)
        with sqlite3.connect(db) as conn:  # widen one grant's budget behind the KBS's back
            conn.execute("UPDATE kbs_resources SET max_releases = 1000 WHERE path = ?",
                         (PATHS[0],))
        with _workload(kbs, pin, teeflow_home, alice) as workload:
            workload.attest("client", CLAIMS)
            with pytest.raises(ServiceUnavailable, match="integrity"):
                workload.get_resource(PATHS[0])
            assert len(workload.get_resource(PATHS[1])) == 32  # the KBS keeps serving
        with KbsClient(kbs.server.url, pin, party=alice) as party:
            entries = party.audit()
        assert any(e.kind == "store" and e.decision == "deny" and e.subject == "kbs_resources"
                   for e in entries)
    finally:
        kbs.stop()
