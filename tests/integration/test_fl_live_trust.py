"""Live trust end to end over real sockets (issue 11 "Tests"): emulated TEE, SQLite KBS in
this process, aggregator and clients as separate processes on 127.0.0.1, digits.

The module's federation first moves to agreement v2 (k = 2 of 3): ``attestation.max_age:
per_round``, ``training.on_revocation: drop``, and a second client build (carol's) among the
client reference values. Then:

* session 1 (:func:`live`, 3 rounds, at least 1 client): every client re-attests before every
  round after the first (c; the attestation it connected with is fresh for round 1); while
  round 1 runs, alice and bob sign v3, which revokes carol's build — carol is
  dropped before round 2 (a); while round 2 runs, bob revokes his client's enrollment — bob's
  re-attestation is refused and he is dropped before round 3 (b); alice finishes round 3.
  ``teeflow agreement history`` exports the signed history and ``teeflow model verify
  --agreements`` checks every round against it, listing versions and drops (f, the passing
  half; the failing half is in ``tests/unit/test_fl_history.py``);
* session 2 (:func:`outdated`, at least 2 clients): carol's client is killed when round 1
  starts and a new carol client rejoins a later round (e); then a collateral refresh (a TCB
  recovery written by a refresh job into the KBS's collateral directory) makes the emulated
  platform ``OutOfDate``, which the client reference values do not accept: every client is
  dropped at its next re-attestation and the session stops (d).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fl_helpers import PARTIES, TRAIN_CONFIG, Fed, federation, write_manifest
from typer.testing import CliRunner

from teeflow.cli.main import app
from teeflow.fl.provenance import load_provenance
from teeflow.fl.publish import publish_package
from teeflow.fl.session import AggregatorProcess, LocalFederation
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.enrollment import read_enrollment, sign_revocation
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_collateral import (
    make_collateral_files,
    pcs_timestamp,
    sign_pcs_document,
    tcb_info_document,
    write_collateral_files,
)
from teeflow.workload.manifest import WorkloadManifest, measurement

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

WAIT = 120.0  # bound on every wait (seconds): never reached on a healthy run


def _update(
    fed: Fed, current: FederationAgreement, *, publish: bool = False, **changes: Any
) -> FederationAgreement:
    """Sign (alice + bob: k = 2) and submit the successor of ``current`` with ``changes``;
    with ``publish``, alice grants the package again (grants are bound to the agreement)."""
    doc = current.to_document()
    doc.update(version=current.version + 1, previous=digest(current).hex(), **changes)
    new = FederationAgreement.from_mapping(doc)
    signed = SignedAgreement(agreement=new).signed_by(fed.keys["alice"]).signed_by(fed.keys["bob"])
    with KbsClient(None, fed.pin) as kbs:
        kbs.submit_agreement(signed)
        if publish:
            fed.published = publish_package(fed.archive, kbs, fed.keys["alice"])
    return new


def _workloads(current: FederationAgreement, clients: list[str], **agg: Any) -> dict[str, Any]:
    doc = current.to_document()["workloads"]
    doc["client"]["sgx"]["mrenclave"] = clients
    doc["aggregator"]["sgx"].update(agg)
    return dict(doc)


def _aggregator(
    lf: LocalFederation, fed: Fed, session: str, rounds: int, min_clients: int
) -> AggregatorProcess:
    return lf.start_aggregator(
        pin=fed.pin_path,
        enrollment=fed.enroll(lf, "alice", "aggregator", session=session),
        session=session,
        rounds=rounds,
        min_clients=min_clients,
        name=f"agg-{session}",
        wait_clients=3,
        manifest=fed.aggregator_manifest,
        package=fed.published.sealed_path,
        train_config={**TRAIN_CONFIG, "epochs": 1},
        round_timeout=WAIT,
        connect_timeout=WAIT,
        state_dir=fed.tmp / f"state-{session}",
        timeout=WAIT,
    )


def _client(
    lf: LocalFederation, fed: Fed, agg: AggregatorProcess, party: str, manifest: Path, tag: str
) -> tuple[Any, Path]:
    token = fed.enroll(lf, party)
    proc = lf.start_client(
        party=party,
        pin=fed.pin_path,
        enrollment=token,
        aggregator=agg.address,
        data=fed.data(PARTIES.index(party)),
        manifest=manifest,
        threads=1,
        connect_timeout=WAIT,
        name=f"{tag}-{party}",
    )
    return proc, token


def _out_of_date(home: Path, folder: Path) -> None:
    """A refresh job's new collateral set: the emulated platform's TCB level ``OutOfDate``."""
    keys = EmulationAuthority.load_or_create(home).keys
    files = make_collateral_files(keys, datetime.now(UTC))
    tcb = tcb_info_document(
        "SGX",
        files.issue_date,
        files.next_update,
        pcs_timestamp(keys.root_ca.not_valid_before_utc),
        status="OutOfDate",
    )
    files.files["tcb_info.json"] = sign_pcs_document("tcbInfo", tcb, keys.tcb_signing_key)
    write_collateral_files(files, folder, private=False)


class Runs:
    """What the module's two sessions did."""

    def __init__(self, fed: Fed) -> None:
        self.fed = fed
        self.live_rounds: list[dict[str, Any]] = []
        self.live_events: list[dict[str, Any]] = []
        self.live_clients: dict[str, list[dict[str, Any]]] = {}
        self.live_done: dict[str, Any] = {}
        self.history_file = fed.tmp / "history.json"
        self.verify_json: dict[str, Any] = {}
        self.out_events: list[dict[str, Any]] = []
        self.out_error: dict[str, Any] | None = None
        self.out_code = 0
        self.rejoined_round = 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("fl-live")
    home = tmp / "home"
    collateral = tmp / "collateral"
    collateral.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(home))
        with federation(home, tmp, collateral_dirs=(collateral,)) as fed, LocalFederation(
            tmp / "procs", platform="emulated-sgx", home=home
        ) as lf:
            r = Runs(fed)
            build_b = write_manifest(tmp / "client-b", "fl-client-b", ["teeflow", "client"])
            mr_b = measurement(WorkloadManifest.load(build_b)).hex()
            v2 = _update(
                fed,
                fed.agreement,
                workloads=_workloads(fed.agreement, [fed.client_measurement, mr_b]),
                attestation={"max_age": "per_round"},
                training={"on_revocation": "drop"},
                publish=True,
            )
            # -- session 1: revoke carol's build during round 1, bob's enrollment in round 2
            agg = _aggregator(lf, fed, "live-1", 3, 1)
            procs = {}
            tokens = {}
            for p in PARTIES:
                manifest = build_b if p == "carol" else fed.client_manifest
                procs[p], tokens[p] = _client(lf, fed, agg, p, manifest, "live")
            # the aggregator is paused while each change is made, so the round in flight
            # cannot end first: the change is in force exactly from the next round on
            agg.wait_event("round-start", WAIT, lambda e: e["round"] == 1)
            agg.signal(signal.SIGSTOP)
            v3 = _update(fed, v2, workloads=_workloads(v2, [fed.client_measurement]))
            agg.signal(signal.SIGCONT)
            agg.wait_event("round-start", WAIT, lambda e: e["round"] == 2)
            agg.signal(signal.SIGSTOP)
            jti = read_enrollment(tokens["bob"].read_text().strip()).jti
            with KbsClient(None, fed.pin) as kbs:
                kbs.revoke_enrollment(
                    sign_revocation(
                        fed.keys["bob"], federation="study", enrollment_id=jti,
                        now=datetime.now(UTC),
                    )
                )
            agg.signal(signal.SIGCONT)
            r.live_done = agg.wait_done(WAIT)
            r.live_rounds = agg.rounds()
            r.live_events = list(agg.events)
            for p, proc in procs.items():
                proc.wait(WAIT)
                r.live_clients[p] = list(proc.events)
            assert agg.wait(WAIT) == 0, agg.log_tail()
            runner = CliRunner()
            out = runner.invoke(
                app,
                ["agreement", "history", "--pin", str(fed.pin_path), "-o", str(r.history_file)],
            )
            assert out.exit_code == 0, out.output
            out = runner.invoke(
                app,
                [
                    "model", "verify", r.live_done["model"], r.live_done["provenance"],
                    "--ca", str(fed.pin_path), "--agreements", str(r.history_file), "--json",
                ],
            )
            assert out.exit_code == 0, out.output
            r.verify_json = json.loads(out.output)
            # -- session 2: carol killed and rejoins; then the platform turns OutOfDate ------
            _update(
                fed,
                v3,
                workloads=_workloads(
                    v3, [fed.client_measurement], accepted_tcb_statuses=["UpToDate", "OutOfDate"]
                ),
                attestation={"max_age": "per_round"},
                training={"on_revocation": "drop"},
                publish=True,
            )
            # up to 30 rounds: the session stops at the first admission after the refresh
            agg = _aggregator(lf, fed, "live-2", 30, 2)
            procs = {
                p: _client(lf, fed, agg, p, fed.client_manifest, "out")[0] for p in PARTIES
            }
            agg.wait_event("round-start", WAIT, lambda e: e["round"] == 1)
            procs["carol"].signal(signal.SIGKILL)
            procs["carol"].wait(WAIT)
            again, _ = _client(lf, fed, agg, "carol", fed.client_manifest, "rejoin")
            joined = agg.wait_event("round", WAIT, lambda e: "carol" in e["clients"] and
                                    e["round"] >= 2)
            r.rejoined_round = joined["round"]
            agg.wait_event("round-start", WAIT, lambda e: e["round"] > joined["round"])
            agg.signal(signal.SIGSTOP)
            _out_of_date(home, collateral)
            agg.signal(signal.SIGCONT)
            r.out_code = agg.wait(WAIT)
            r.out_error = agg.error()
            r.out_events = list(agg.events)
            for proc in (*procs.values(), again):
                proc.wait(WAIT)
            yield r


def _drops(events: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """Each party's last drop: ``(round, reason)``."""
    return {
        e["party"]: (e["round"], e["reason"]) for e in events if e["event"] == "client-dropped"
    }


def test_every_client_reattests_before_every_round(runs: Runs) -> None:
    re = [e for e in runs.live_events if e["event"] == "reattested" and e["role"] == "client"]
    by_round = {r: {e["party"] for e in re if e["round"] == r} for r in (1, 2, 3)}
    # they attested after the session started, so round 1 needs no re-attestation — unless
    # a certificate, whose times are whole seconds (RFC 5280), was issued in the very second
    # the session started: then it looks older and the client is asked again (the safe side)
    assert by_round[1] <= {"alice", "bob", "carol"}
    assert by_round[2] == {"alice", "bob"}  # carol was dropped without asking: revoked build
    assert by_round[3] == {"alice"}
    assert [e["round"] for e in runs.live_rounds] == [0, 1, 2, 3]
    ages = [e["attestation_age"] for e in runs.live_rounds[1:]]
    assert all(a is not None and a < 60 for a in ages)


def test_revoked_build_is_dropped_before_the_next_round(runs: Runs) -> None:
    rounds = {e["round"]: e for e in runs.live_rounds}
    assert rounds[1]["clients"] == ["alice", "bob", "carol"]
    assert rounds[1]["agreement_version"] == 2
    assert rounds[2]["agreement_version"] == 3
    assert "carol" not in rounds[2]["clients"]
    rnd, reason = _drops(runs.live_events)["carol"]
    assert rnd == 2 and "revoked build" in reason
    carol = runs.live_clients["carol"]
    bye = [e for e in carol if e["event"] == "done"]
    assert bye and not bye[0]["ok"] and "dropped" in bye[0]["reason"]
    # a dropped client tries to rejoin: the KBS refuses the revoked build, which ends it
    assert any(e["event"] == "rejoining" for e in carol)
    assert carol[-1]["event"] == "error" and carol[-1]["type"] == "AttestationFailed"
    changed = [e for e in runs.live_events if e["event"] == "agreement-changed"]
    assert [e["version"] for e in changed] == [3]


def test_revoked_enrollment_drops_only_its_client(runs: Runs) -> None:
    rounds = {e["round"]: e for e in runs.live_rounds}
    assert rounds[2]["clients"] == ["alice", "bob"]
    assert rounds[3]["clients"] == ["alice"]
    rnd, reason = _drops(runs.live_events)["bob"]
    assert rnd == 3 and "re-attestation failed" in reason
    assert set(_drops(runs.live_events)) == {"bob", "carol"}


def test_provenance_records_versions_ages_and_drops(runs: Runs) -> None:
    entries = [e for e in load_provenance(runs.live_done["provenance"]) if e.kind == "round"]
    assert [e.trust.agreement_version for e in entries if e.trust] == [2, 3, 3]
    assert entries[1].trust is not None and entries[1].trust.dropped[0].party == "carol"
    assert set(entries[0].trust.attestation_age) >= {"alice", "bob", "carol"}  # type: ignore[union-attr]
    checks = runs.verify_json["round_checks"]
    assert runs.verify_json["agreements_checked"] is True
    assert [(c["round"], c["agreement_version"]) for c in checks] == [(1, 2), (2, 3), (3, 3)]
    assert "carol" in checks[1]["dropped"] and "bob" in checks[2]["dropped"]
    history = json.loads(runs.history_file.read_text())
    assert [a["version"] for a in history["agreements"]] == [1, 2, 3]


def test_killed_client_rejoins_a_later_round(runs: Runs) -> None:
    assert runs.rejoined_round >= 2
    first = next(e for e in runs.out_events if e["event"] == "round" and e["round"] == 1)
    assert first["clients"] == ["alice", "bob"]


def test_platform_turned_out_of_date_is_dropped(runs: Runs) -> None:
    drops = [e for e in runs.out_events if e["event"] == "client-dropped"]
    first = next((e["round"] for e in drops if "OutOfDate" in e["reason"]), None)
    assert first is not None, runs.out_events[-5:]
    # from the refresh on (an admission may straddle it), every drop is the TCB status
    later = [e for e in drops if e["round"] >= first]
    assert all("tcb status OutOfDate not accepted" in e["reason"] for e in later), later
    assert runs.out_code != 0 and runs.out_error is not None
    assert "session stopped" in runs.out_error["message"]
