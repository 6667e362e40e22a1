"""Confidential FL end to end over real sockets (issue 4 "Tests"): emulated TEE, SQLite KBS,
aggregator and clients as separate processes on 127.0.0.1, digits, 2 rounds.

One module-scoped scenario (:func:`runs`) drives the processes and records what happened;
the tests below assert one property each:

1. run 1: ``--rounds 1`` with alice, bob and carol (K = 2); before the clients start, probes
   against the listening aggregator (a certificate for alice that says "bob", a self-signed
   certificate, the Status RPC), and an impostor ``client run --party bob`` holding alice's
   enrollment is refused by the KBS (no certificate) — the real bob then joins (not locked
   out); meanwhile a client with a tampered package and a client with the wrong measurement
   fail;
2. run 2: ``--rounds 2`` resumes from the round-1 checkpoint (a new aggregator instance: new
   attested key, hand-over entry in the provenance log); carol is frozen once connected and
   killed when round 2 starts — the round completes with alice and bob;
3. run 3: ``--rounds 3`` on a copy of the round-1 checkpoint — refused (rollback);
4. the model and provenance of run 2 verify (both aggregator instances' certificates); alice
   opens the model; the checkpoint files hold no private key (opened with the key an attested
   aggregator obtains - the only way to open them).
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fl_helpers import EXAMPLE, TRAIN_CONFIG, Fed, federation, write_manifest
from typer.testing import CliRunner

from teeflow.cli.main import app as cli_app
from teeflow.errors import FLError, VerificationError
from teeflow.fl.arrays import arrays_digest
from teeflow.fl.checkpoint import checkpoint_aad, decode_checkpoint
from teeflow.fl.outputs import open_model, verify_model
from teeflow.fl.package import build_package
from teeflow.fl.provenance import load_provenance
from teeflow.fl.publish import PACKAGE_AAD_PREFIX, package_key_path
from teeflow.fl.session import LocalFederation
from teeflow.fl.transport.client import AggregatorStream, RefusedByAggregator
from teeflow.fl.transport.framing import TransportError
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.generated import checkpoint_key_path
from teeflow.platform.emulated import EmulatedSgx
from teeflow.sealing import seal, unseal
from teeflow.workload.manifest import WorkloadManifest, measurement

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

PARTIES = ("alice", "bob", "carol")
#: PEM labels and the DER prefixes of PKCS#8 / SEC1 EC private keys (RFC 5208, RFC 5915)
PRIVATE_KEY_MARKERS = (
    b"PRIVATE KEY",
    bytes.fromhex("020100301306072a8648ce3d0201"),  # PKCS#8: version 0, id-ecPublicKey
    bytes.fromhex("30770201010420"),  # SEC1 ECPrivateKey for P-256
)
WAIT = 120.0  # bound on every wait (seconds): never reached on a healthy run


@dataclass
class Runs:
    fed: Fed
    run1_rounds: list[dict[str, Any]] = field(default_factory=list)
    run2_rounds: list[dict[str, Any]] = field(default_factory=list)
    run2_done: dict[str, Any] = field(default_factory=dict)
    run2_events: list[dict[str, Any]] = field(default_factory=list)
    run3_error: dict[str, Any] | None = None
    run3_code: int | None = None
    run4_error: dict[str, Any] | None = None
    run4_code: int | None = None
    probes: dict[str, Any] = field(default_factory=dict)
    tampered: dict[str, Any] | None = None
    tampered_code: int | None = None
    wrong_mr: dict[str, Any] | None = None
    wrong_mr_code: int | None = None
    status_modules: list[str] = field(default_factory=list)
    carol_killed_at: int | None = None
    impostor: dict[str, Any] | None = None
    impostor_code: int | None = None


def _client_cert(fed: Fed, party: str) -> tuple[bytes, ec.EllipticCurvePrivateKey, bytes]:
    """Attest in-process as a client of ``party``: (certificate PEM, key, package key)."""
    platform = EmulatedSgx(manifest=WorkloadManifest.load(fed.client_manifest))
    d = fed.published.digest
    with KbsClient(None, fed.pin, platform, enrollment=fed.token(party)) as kbs:
        kbs.attest(
            "client",
            {
                "party": party,
                "package_digest": d,
                "function": "train",
                "resources": [package_key_path(d)],
            },
        )
        cert, key = kbs.get_certificate()
        return cert, key, kbs.get_resource(package_key_path(d))


def _self_signed() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client:alice")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def _stream(
    fed: Fed, address: str, cert: bytes, key: ec.EllipticCurvePrivateKey, party: str
) -> AggregatorStream:
    return AggregatorStream(
        address,
        certificate_pem=cert,
        key=key,
        ca=fed.pin.ca(),
        party=party,
        package_digest=bytes.fromhex(fed.published.digest),
        agreement_digest=fed.agreement_digest,
    )


def _probe(
    fed: Fed, address: str, runs: Runs, alice_cert: bytes, alice_key: ec.EllipticCurvePrivateKey
) -> None:
    # a certificate for alice whose Hello says bob: refused, the party is the certificate's
    with _stream(fed, address, alice_cert, alice_key, "bob") as s:
        try:
            s.open(connect_timeout=30)
            runs.probes["x_as_y"] = None
        except RefusedByAggregator as exc:
            runs.probes["x_as_y"] = exc
        # the same TLS identity may ask for the status (a federation certificate)
        runs.status_modules = list(s.status().modules)
    # a certificate that is not from the federation CA: no TLS connection at all
    cert, key = _self_signed()
    with _stream(fed, address, cert, key, "alice") as s:
        try:
            s.open(connect_timeout=3)
            runs.probes["self_signed"] = None
        except TransportError as exc:
            runs.probes["self_signed"] = exc


def _tampered_package(fed: Fed, package_key: bytes) -> Path:
    """A different archive sealed under the real package key for the agreed digest."""
    src = fed.tmp / "evil-package"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "task.py").write_text((src / "task.py").read_text() + "\nEXFILTRATE = True\n")
    archive, _ = build_package(src)
    out = fed.tmp / "evil.sealed"
    out.write_bytes(
        seal(archive, package_key, aad=PACKAGE_AAD_PREFIX + bytes.fromhex(fed.published.digest))
    )
    return out


def _aggregator(lf: LocalFederation, fed: Fed, rounds: int, name: str, **extra: Any) -> Any:
    return lf.start_aggregator(
        pin=fed.pin_path,
        enrollment=fed.enroll(lf, "alice", "aggregator", session="study-1"),
        session="study-1",
        rounds=rounds,
        min_clients=2,
        name=name,
        wait_clients=3,
        manifest=fed.aggregator_manifest,
        package=fed.published.sealed_path,
        train_config=TRAIN_CONFIG,
        round_timeout=WAIT,
        connect_timeout=WAIT,
        state_dir=fed.tmp / "agg-state",
        timeout=WAIT,
        **extra,
    )


def _clients(lf: LocalFederation, fed: Fed, agg: Any, tag: str) -> dict[str, Any]:
    return {
        p: lf.start_client(
            party=p,
            pin=fed.pin_path,
            enrollment=fed.enroll(lf, p),
            aggregator=agg.address,
            data=fed.data(i),
            manifest=fed.client_manifest,
            threads=1,
            connect_timeout=WAIT,
            name=f"{tag}-{p}",
        )
        for i, p in enumerate(PARTIES)
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("fl-e2e")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(home))
        with federation(home, tmp) as fed, LocalFederation(
            tmp / "procs", platform="emulated-sgx", home=home
        ) as lf:
            r = Runs(fed)
            alice_cert, alice_key, package_key = _client_cert(fed, "alice")
            # -- run 1 -----------------------------------------------------------------
            agg1 = _aggregator(lf, fed, 1, "agg1")
            _probe(fed, agg1.address, r, alice_cert, alice_key)
            # an operator holding alice's enrollment runs "bob's" client: refused by the KBS
            impostor = lf.start_client(
                party="bob",
                pin=fed.pin_path,
                enrollment=fed.enroll(lf, "alice"),
                aggregator=agg1.address,
                data=fed.data(1),
                manifest=fed.client_manifest,
                name="impostor-bob",
            )
            r.impostor_code, r.impostor = impostor.wait(WAIT), impostor.error()
            evil = lf.start_client(
                party="bob",
                pin=fed.pin_path,
                enrollment=fed.enroll(lf, "bob"),
                aggregator=agg1.address,
                data=fed.data(1),
                manifest=fed.client_manifest,
                package_file=_tampered_package(fed, package_key),
                name="tampered",
            )
            other = write_manifest(tmp / "other-workload", "not-agreed", ["python", "x.py"])
            wrong = lf.start_client(
                party="carol",
                pin=fed.pin_path,
                enrollment=fed.enroll(lf, "carol"),
                aggregator=agg1.address,
                data=fed.data(2),
                manifest=other,
                name="wrong-mr",
            )
            clients = _clients(lf, fed, agg1, "run1")
            agg1.wait_done(WAIT)  # round 1 was committed before "done"
            r.run1_rounds = agg1.rounds()
            ckpt = fed.tmp / "agg-state" / "study-1.checkpoint"
            shutil.copy(ckpt, fed.tmp / "round1.checkpoint")
            run1 = [*clients.values(), agg1]
            # -- run 2: resume, carol frozen then killed when round 2 starts ------------------
            agg2 = _aggregator(lf, fed, 2, "agg2")
            clients = _clients(lf, fed, agg2, "run2")
            for proc in run1:  # run 1's processes finish while run 2 starts
                assert proc.wait(WAIT) == 0, proc.log_tail()
            r.tampered_code, r.wrong_mr_code = evil.wait(WAIT), wrong.wait(WAIT)
            r.tampered, r.wrong_mr = evil.error(), wrong.error()
            clients["carol"].wait_event("connected", WAIT)
            clients["carol"].signal(signal.SIGSTOP)
            start = agg2.wait_event("round-start", WAIT, lambda e: e["round"] == 2)
            assert "carol" in start["selected"]
            clients["carol"].kill()
            r.carol_killed_at = 2
            r.run2_done = agg2.wait_done(WAIT)
            r.run2_rounds = agg2.rounds()
            r.run2_events = list(agg2.events)
            # -- run 3: an older checkpoint ------------------------------------------------
            agg3 = _aggregator(
                lf, fed, 3, "agg3", checkpoint=fed.tmp / "round1.checkpoint", wait_listening=False
            )
            for p in ("alice", "bob"):
                assert clients[p].wait(WAIT) == 0, clients[p].log_tail()
            assert agg2.wait(WAIT) == 0
            r.run3_code = agg3.wait(WAIT)
            r.run3_error = agg3.error()
            # -- run 4: the operator asks for another rule than the signed one ----------------
            agg4 = _aggregator(lf, fed, 3, "agg4", strategy="median", wait_listening=False)
            r.run4_code, r.run4_error = agg4.wait(WAIT), agg4.error()
            yield r


def test_accuracy_rises_from_the_initial_model(runs: Runs) -> None:
    r0, r1 = runs.run1_rounds
    assert (r0["round"], r1["round"]) == (0, 1)
    assert r1["eval_accuracy"] > r0["eval_accuracy"] + 0.3
    r2 = runs.run2_rounds[-1]
    assert r2["round"] == 2 and r2["eval_accuracy"] >= r1["eval_accuracy"] - 0.02
    assert r2["eval_num_examples"] > 0


def test_killed_client_does_not_stop_the_round(runs: Runs) -> None:
    r2 = runs.run2_rounds[-1]
    assert r2["clients"] == ["alice", "bob"]  # carol was selected, then killed
    dropped = [
        e for e in runs.run2_events if e["event"] == "client-dropped" and e.get("round") == 2
    ]
    assert any(e["party"] == "carol" for e in dropped)
    assert runs.run2_done["rounds"] == 2


def test_restart_resumes_and_rollback_is_refused(runs: Runs) -> None:
    resumed = [e for e in runs.run2_events if e["event"] == "resumed"]
    assert resumed and resumed[0]["round"] == 1
    assert [e["round"] for e in runs.run2_rounds] == [2]  # round 1 was not run again
    assert runs.run3_code == 1
    assert runs.run3_error is not None
    assert runs.run3_error["type"] == "RollbackError" and runs.run3_error["code"] == "fl-rollback"
    assert "round 1" in runs.run3_error["message"] and "round 2" in runs.run3_error["message"]


def test_provenance_verifies_and_the_model_opens(runs: Runs) -> None:
    done = runs.run2_done
    model, prov = Path(done["model"]), Path(done["provenance"])
    checked = verify_model(
        model, prov, runs.fed.pin.ca(), expected_agreement_digest=runs.fed.agreement_digest.hex()
    )
    assert checked.rounds == 2 and checked.header.arrays_digest == done["digest"]
    entries = load_provenance(prov)
    assert [e.kind for e in entries] == ["session-start", "round", "handover", "round", "final"]
    assert {c.party for c in entries[1].clients} == set(PARTIES)
    assert {c.party for c in entries[3].clients} == {"alice", "bob"}
    assert all(c.measurement == runs.fed.client_measurement for c in entries[3].clients)
    # the restart: a new instance, its own certificate; both certified by the federation CA
    assert checked.handovers == 1 and entries[2].round == 1
    assert entries[2].aggregator_certificate != entries[0].aggregator_certificate
    resumed = [(e["round"], e["entry"]) for e in runs.run2_events if e["event"] == "handover"]
    assert resumed == [(1, 3)]
    arrays = open_model(model, runs.fed.keys["alice"])
    assert arrays_digest(arrays).hex() == done["digest"]
    with pytest.raises(FLError, match="not a recipient"):
        open_model(model, runs.fed.keys["bob"])
    # a provenance log that does not end with the model's digest does not verify
    short = runs.fed.tmp / "short.jsonl"
    short.write_text("".join(line + "\n" for line in prov.read_text().splitlines()[:-1]))
    with pytest.raises(VerificationError):
        verify_model(model, short, runs.fed.pin.ca())


def test_the_signed_rule_is_in_the_header_and_another_rule_is_refused(runs: Runs) -> None:
    """The agreement's training section drove the aggregator (header records it); an
    aggregator started with ``--strategy median`` against the signed FedAvg is refused."""
    entries = load_provenance(Path(runs.run2_done["provenance"]))
    assert entries[0].training is not None
    assert entries[0].training.strategy.name == "fedavg" and entries[0].training.rounds == 10
    assert runs.run2_done["strategy"] == "fedavg"
    done = runs.run2_done
    out = CliRunner().invoke(
        cli_app,
        ["model", "verify", done["model"], done["provenance"], "--ca", str(runs.fed.pin_path),
         "--json"],
    )
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output)
    assert printed["verified"] is True and printed["rounds"] == 2
    assert printed["training"]["strategy"] == {"name": "fedavg", "params": {}}
    assert printed["privacy"] == {} and printed["outliers"] == []
    assert runs.run4_code == 1 and runs.run4_error is not None
    assert runs.run4_error["type"] == "FLError"
    assert "differs from the agreement's rule fedavg" in runs.run4_error["message"]


def test_checkpoints_hold_no_private_key(runs: Runs) -> None:
    """Attack (P/H): a checkpoint used to carry the aggregator's provenance key. Open both
    checkpoint files (round 1 and round 2) with the key an attested aggregator gets and scan
    the plaintext for any private key encoding."""
    fed = runs.fed
    platform = EmulatedSgx(manifest=WorkloadManifest.load(fed.aggregator_manifest))
    path = checkpoint_key_path("study-1")
    with KbsClient(None, fed.pin, platform, enrollment=fed.token("alice", "aggregator")) as kbs:
        kbs.attest(
            "aggregator",
            {"package_digest": fed.published.digest, "resources": [path], "recipients": ["alice"]},
        )
        key = kbs.get_resource(path)
    for name in ("round1.checkpoint", "agg-state/study-1.checkpoint"):
        blob = (fed.tmp / name).read_bytes()
        plain = unseal(blob, key, aad=checkpoint_aad("study-1"))
        ckpt = decode_checkpoint(plain)
        assert ckpt.round in (1, 2)
        for marker in PRIVATE_KEY_MARKERS:
            assert marker not in plain, (name, marker)


def test_kbs_audit_shows_each_workload_attestation(runs: Runs) -> None:
    with KbsClient(None, runs.fed.pin, party=runs.fed.keys["alice"]) as kbs:
        entries = kbs.audit()
    attests = [e for e in entries if e.kind == "attestation" and e.decision == "accept"]
    seen = {(e.data.get("role"), e.data.get("party")) for e in attests}
    assert {("aggregator", "alice"), *(("client", p) for p in PARTIES)} <= seen
    assert any(e.kind == "attestation" and e.decision == "deny" for e in entries)
    counters = [e for e in entries if e.kind == "counter" and e.decision == "accept"]
    assert [e.data["value"] for e in counters] == [1, 2]


def test_impostor_with_another_partys_enrollment_is_refused_and_bob_still_joins(
    runs: Runs,
) -> None:
    assert runs.impostor_code == 1
    assert runs.impostor is not None and runs.impostor["type"] == "AttestationFailed"
    assert "enrollment is by alice, the workload claims party bob" in runs.impostor["message"]
    # the real bob took part in round 1 (run 1) after the impostor's attempt
    assert "bob" in runs.run1_rounds[-1]["clients"]


def test_tampered_package_is_refused_by_digest(runs: Runs) -> None:
    assert runs.tampered_code == 1
    assert runs.tampered is not None and runs.tampered["type"] == "VerificationError"
    assert "digest" in runs.tampered["message"]


def test_wrong_measurement_gets_no_certificate_and_cannot_connect(runs: Runs) -> None:
    assert runs.wrong_mr_code == 1
    assert runs.wrong_mr is not None and runs.wrong_mr["type"] == "AttestationFailed"
    assert isinstance(runs.probes["self_signed"], TransportError)
    assert "cannot connect" in str(runs.probes["self_signed"])


def test_party_comes_from_the_certificate(runs: Runs) -> None:
    refused = runs.probes["x_as_y"]
    assert isinstance(refused, RefusedByAggregator)
    assert refused.status == "PERMISSION_DENIED"
    assert "alice" in str(refused) and "bob" in str(refused)


def test_aggregator_process_never_imports_torch(runs: Runs) -> None:
    assert runs.status_modules and "teeflow" in runs.status_modules
    assert "torch" not in runs.status_modules
    assert runs.run2_done["torch_imported"] is False


def test_progress_lines_are_json(runs: Runs) -> None:
    assert all(json.dumps(e) for e in runs.run2_events)
    assert measurement(WorkloadManifest.load(runs.fed.client_manifest)).hex() == (
        runs.fed.client_measurement
    )
