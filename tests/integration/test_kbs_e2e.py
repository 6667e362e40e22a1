"""Issue 3 "Done when", end to end over HTTPS, on SQLite and PostgreSQL.

Three parties create keys and sign an agreement with the CLI; the KBS (emulated TEE) starts
on 127.0.0.1; the parties verify it (pin files), submit the agreement and upload grants +
wrapped keys (CLI); an emulated workload with the right measurement attests and gets its
resources and a certificate; another measurement, a replayed nonce, a wrong function claim
and emulated evidence under ``allow_emulated: false`` get nothing; the audit log verifies.

PostgreSQL comes from ``TEEFLOW_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), one fresh schema per test, dropped
afterwards (the approach of tests/storage/test_store_contract.py); skipped with the reason
when no server answers.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml
from cryptography import x509
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from teeflow.attestation.binding import runtime_data_digest
from teeflow.cli import (
    agreement_cmds,
    agreement_submit_cmd,
    kbs_cmds,
    party_cmds,
    resource_cmds,
)
from teeflow.kbs.api.problems import AttestationFailed, PolicyDeny, TokenVerifierError
from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server
from teeflow.kbs.ca.authority import verify_workload_certificate
from teeflow.kbs.client.pinning import (
    Pin,
    pinned_tls_context,
)
from teeflow.kbs.client.sdk import (
    KbsClient,
)
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.enrollment import load_enrollment
from teeflow.kbs.service.audit import AuditChainError, verify_audit_chain
from teeflow.kbs.service.self_attestation import kbs_measurement
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority
from teeflow.sealing.keys import write_key_file
from teeflow.workload.manifest import WorkloadManifest, measurement

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PARTIES = ("alice", "bob", "carol")
PKG = "5a" * 32
ALICE_PATH = "alice/dataset-key/v1"
BOB_PATH = "bob/dataset-key/v1"


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    for module in (party_cmds, agreement_cmds, kbs_cmds, resource_cmds):
        module.register(app)
    agreement_submit_cmd.register(app)  # after agreement_cmds: extends its group
    return app


CLI = _cli()


def run(*args: str | Path) -> str:
    result = CliRunner().invoke(CLI, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


# -- PostgreSQL (same approach as tests/storage/test_store_contract.py) -----------------------


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _pg_schema(base: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = "tf_e2e_" + secrets.token_hex(6)
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kbs.db'}"
        return
    base = os.environ.get("TEEFLOW_TEST_POSTGRES_URL", PG_DEFAULT)
    from sqlalchemy import create_engine

    try:
        engine = create_engine(base, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        pytest.skip(
            f"PostgreSQL not reachable at {_redact(base)} ({type(exc).__name__}); "
            "set TEEFLOW_TEST_POSTGRES_URL to run the KBS end-to-end test on PostgreSQL"
        )
    with _pg_schema(base) as url:
        yield url


# -- helpers --------------------------------------------------------------------------------------


def write_agreement(path: Path, **changes: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_enroll(tmp: Path, pin: Path) -> str:
    """A fresh enrollment of alice's client (CLI); returns the token file path."""
    path = tmp / f"alice-{secrets.token_hex(4)}.jwt"
    run("party", "enroll", "--party", "alice", "--role", "client", "--pin", pin, "-o", path)
    return str(path)


def replay_attempt(pin: Pin, sgx: EmulatedSgx, claims: dict[str, Any]) -> list[httpx.Response]:
    """Attest once correctly, then send the same attestation again: (first, replay)."""
    with httpx.Client(base_url=pin.url, verify=pinned_tls_context(pin.tls_spki_sha256),
                      timeout=10) as http:
        r = http.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "emulated-sgx"})
        sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
        http.cookies.clear()
        jwk = {**ECKey.generate_key("P-256", private=True).as_dict(private=False),
               "alg": "ECDH-ES+A256KW"}
        quote = sgx.quote(runtime_data_digest(tee_pubkey=jwk, nonce=nonce, teeflow=claims))
        body = {"runtime-data": {"nonce": nonce, "tee-pubkey": jwk, "teeflow": claims},
                "tee-evidence": {"primary_evidence": {"quote": base64.b64encode(quote).decode()},
                                 "additional_evidence": ""}}
        cookie = {"Cookie": f"kbs-session-id={sid}"}
        return [http.post("/kbs/v0/attest", json=body, headers=cookie) for _ in range(2)]


# -- the scenario ---------------------------------------------------------------------------------


def test_done_when(db_url: str, teeflow_home: Path, tmp_path: Path) -> None:
    # 1. three parties, keys and a signed agreement (CLI)
    for p in PARTIES:
        run("party", "keygen", p)
    code = tmp_path / "workload"
    code.mkdir()
    (code / "train.py").write_text("print('training')\n")
    manifest = WorkloadManifest.build(code, ["python", "train.py"], name="trainer")
    client_mr = measurement(manifest).hex()
    kbs_mr = kbs_measurement()
    agreement = tmp_path / "agreement.yaml"
    opts = [x for p in PARTIES
            for x in ("--party", f"{p}={teeflow_home}/parties/{p}/{p}.pub.json")]
    run("agreement", "init", "--federation", "study", *opts, "-o", agreement)
    write_agreement(
        agreement,
        workloads={"kbs": {"sgx": {"mrenclave": [kbs_mr.hex()]}},
                   "client": {"sgx": {"mrenclave": [client_mr]}}},
        packages={"trainer": {"digest": PKG, "entrypoints": ["train", "validate"],
                              "readers": ["alice", "bob"]}},
        allow_emulated=True,
    )
    for p in PARTIES:
        run("agreement", "sign", agreement, "--party", p)
    v1 = FederationAgreement.load(agreement)
    d1 = digest(v1)

    # 2. the KBS (emulated TEE) starts
    runtime = build_kbs(db_url, state_dir=tmp_path / "kbs-state", federation="study",
                        measurement=kbs_mr, purge_interval=None, platform="emulated-sgx",
                        expect_agreement=d1)
    try:
        with BackgroundServer(make_server(runtime, graceful_timeout=2)) as server:
            _scenario(server.url, tmp_path, agreement, d1, client_mr, manifest)
    finally:
        runtime.close()


def _scenario(url: str, tmp: Path, agreement: Path, d1: bytes, client_mr: str,
              manifest: WorkloadManifest) -> None:
    # 3. every party verifies the KBS (reference values: the agreement's workloads.kbs)
    pins = {}
    for p in PARTIES:
        pins[p] = tmp / f"pin-{p}.json"
        out = run("kbs", "verify", url, "--reference-values", agreement, "--allow-emulated",
                  "-o", pins[p])
        assert "EMULATED" in out
    pin = Pin.load(pins["alice"])
    # before the first agreement the evidence binds the one the KBS was started to accept
    assert pin.agreement_digest == d1.hex() and pin.emulated
    assert Pin.load(pins["bob"]).tls_spki_sha256 == pin.tls_spki_sha256

    # 4. submit the agreement; owners upload grants + wrapped keys (CLI)
    assert d1.hex() in run("agreement", "submit", agreement, "--pin", pins["carol"])
    keys = {}
    for owner, path in (("alice", ALICE_PATH), ("bob", BOB_PATH)):
        keys[owner] = os.urandom(32)
        write_key_file(tmp / f"{owner}.key", keys[owner])
        grant = tmp / f"{owner}-grant.yaml"
        grant.write_text(yaml.safe_dump({
            "roles": ["client"], "mrenclave": [client_mr], "packages": [PKG],
            "functions": ["train"], "recipients": ["alice"],
            "not_after": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "max_releases": 5,
        }))
        out = run("resource", "put", "--name", path, "--file", tmp / f"{owner}.key",
                  "--grant", grant, "--party", owner, "--pin", pins[owner],
                  "--agreement", agreement)
        assert f"resource {path} stored" in out

    authority = EmulationAuthority.load_or_create()
    good = EmulatedSgx(authority, manifest=manifest)
    # alice enrolls the client (CLI): the token says alice, client, study, 20 uses
    token_file = tmp / "alice-client.jwt"
    out = run("party", "enroll", "--party", "alice", "--role", "client", "--uses", "20",
              "--expires", "2h", "--pin", pins["alice"], "-o", token_file, "--json")
    enrolled = json.loads(out)
    assert (enrolled["party"], enrolled["role"], enrolled["uses"]) == ("alice", "client", 20)
    assert token_file.stat().st_mode & 0o077 == 0
    token = load_enrollment(token_file)
    claims = {"party": "alice", "package_digest": PKG, "function": "train",
              "resources": [ALICE_PATH, BOB_PATH], "recipients": ["alice"]}

    # 5. the right workload attests, gets both resources and a certificate
    with KbsClient(None, pin, good, enrollment=token) as w:
        w.attest("client", claims)
        assert w.get_resource(ALICE_PATH) == keys["alice"]
        assert w.get_resource(BOB_PATH) == keys["bob"]
        cert_pem, _key = w.get_certificate()
        ident = verify_workload_certificate(
            x509.load_pem_x509_certificate(cert_pem), pin.ca(), now=datetime.now(UTC),
            expected_agreement_digest=d1.hex(), required_role="client")
        assert (ident.role, ident.party, ident.measurement) == ("client", "alice", client_mr)
        assert ident.emulated and ident.agreement_digest == d1.hex()
        good_client_token = w.token

        # 6a. another measurement: attestation refused
        other = EmulatedSgx(authority, measurement=bytes.fromhex("0b" * 32))
        with KbsClient(None, pin, other, enrollment=token) as bad, \
                pytest.raises(AttestationFailed):
            bad.attest("client", claims)

        # 6b. a replayed nonce
        first, replay = replay_attempt(pin, good,
                                       {"role": "client", **claims, "enrollment": token})
        assert first.status_code == 200
        assert replay.status_code == 401
        assert replay.json()["type"].endswith("/AttestationError")
        assert "replay" in replay.json()["detail"]

        # 6c. a wrong function claim: not in the package -> no token; in the package but
        #     not granted -> token, but no resource
        with KbsClient(None, pin, good, enrollment=token) as wf, \
                pytest.raises(AttestationFailed):
            wf.attest("client", {**claims, "function": "evaluate"})
        with KbsClient(None, pin, good, enrollment=token) as wf:
            wf.attest("client", {**claims, "function": "validate"})
            with pytest.raises(PolicyDeny):
                wf.get_resource(ALICE_PATH)
            with pytest.raises(PolicyDeny):
                wf.get_resource(BOB_PATH)

        # 6d. alice revokes the enrollment (CLI): the next attestation with it is refused
        revoked = tmp / "revocation.jws"
        out = run("party", "revoke-enrollment", "--party", "alice", "--token", token_file,
                  "--pin", pins["alice"], "-o", revoked)
        assert f"enrollment {enrolled['id']} of alice revoked" in out
        with KbsClient(None, pin, good, enrollment=token) as gone, \
                pytest.raises(AttestationFailed, match="enrollment revoked"):
            gone.attest("client", claims)
        token = load_enrollment(Path(run_enroll(tmp, pins["alice"])))

        # 6e. allow_emulated: false (agreement v2, 2-of-3): emulated evidence gets nothing,
        #     and the token issued under v1 is revoked
        v2 = tmp / "agreement-v2.yaml"
        v2.write_text(agreement.read_text())
        write_agreement(v2, version=2, previous=d1.hex(), allow_emulated=False)
        for p in ("alice", "bob"):
            run("agreement", "sign", v2, "--party", p)
        assert "version 2" in run("agreement", "submit", v2, "--pin", pins["alice"])
        with KbsClient(None, pin, good, enrollment=token) as late, \
                pytest.raises(AttestationFailed) as refused:
            late.attest("client", claims)
        assert "emulat" in str(refused.value).lower()
        with pytest.raises(TokenVerifierError):
            w.get_resource(ALICE_PATH)
        assert good_client_token is not None

    # 7. the audit log verifies (SDK and CLI), and records every decision
    from teeflow.kbs.policy.parties import PartyKeys

    with KbsClient(None, pin, party=PartyKeys.load("alice")) as party:
        entries = party.audit()
    verify_audit_chain(entries, pin.audit_public())
    decisions = [(e.kind, e.decision) for e in entries]
    assert decisions.count(("agreement", "accept")) == 2
    assert decisions.count(("resource", "accept")) == 2
    assert decisions.count(("release", "accept")) == 2
    assert decisions.count(("certificate", "accept")) == 1
    assert decisions.count(("enrollment", "accept")) == 1  # the revocation
    assert decisions.count(("attestation", "deny")) >= 4
    assert decisions.count(("release", "deny")) == 2
    out = run("kbs", "audit", "verify", "--party", "bob", "--pin", pins["bob"],
              "--expect-head", entries[-1].hash.hex())
    assert f"{len(entries)} entries" in out

    # 8. ``kbs audit show`` prints the verified log (every reason of every denial) and
    # ``/metrics`` counts what the log records (this KBS process wrote every entry)
    shown = run("kbs", "audit", "show", "--party", "bob", "--pin", pins["bob"], "--json")
    assert [json.loads(x)["seq"] for x in shown.splitlines()] == [e.seq for e in entries]
    denials = run("kbs", "audit", "show", "--party", "carol", "--pin", pins["carol"], "--denied")
    lines = [x for x in denials.splitlines() if not x.startswith("#")]  # "#": the stderr header
    assert len(lines) == sum(e.decision == "deny" for e in entries)
    assert "emulat" in denials.lower()
    tail = run("kbs", "audit", "show", "--party", "bob", "--pin", pins["bob"], "--tail", "1")
    assert tail.splitlines()[-1].split()[0] == str(entries[-1].seq)
    with KbsClient(None, pin, party=PartyKeys.load("alice")) as party, \
            pytest.raises(AuditChainError):
        forged = dataclasses.replace(entries[-2], hash=bytes(32))
        party.audit(after=forged)  # ATTACK: a page that does not link to what was shown
    _check_kbs_metrics(url, pin, entries)
    _follow_shows_new_entries(url, pin, pins["bob"], len(entries))


def _audit_reads(url: str, pin: Pin) -> float:
    """``GET /v1/audit`` requests the KBS has served (its ``/metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    from teeflow.kbs.client.pinning import http_client, pinned_tls_context

    with http_client(url, pinned_tls_context(pin.tls_spki_sha256), 10.0) as http:
        text = http.get("/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "teeflow_kbs_requests_total" and s.labels["route"] == "/v1/audit")


def _follow_shows_new_entries(url: str, pin: Pin, bob_pin: Path, known: int) -> None:
    """``audit show --follow`` prints an entry appended after it started (an attestation on
    an unknown session, denied and audited), then stops (``--stop-after``)."""
    before = _audit_reads(url, pin)
    out: list[str] = []
    follow = threading.Thread(target=lambda: out.append(run(
        "kbs", "audit", "show", "--party", "bob", "--pin", bob_pin, "--json", "--follow",
        "--interval", "0.2", "--stop-after", str(known + 1))), daemon=True)
    follow.start()
    for _ in range(300):  # bounded: until the follower made its first read
        if _audit_reads(url, pin) > before:
            break
        time.sleep(0.05)
    jwk = {**ECKey.generate_key("P-256", private=True).as_dict(private=False),
           "alg": "ECDH-ES+A256KW"}
    body = {"runtime-data": {"nonce": "AAAA", "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": {"quote": "AAAA"}, "additional_evidence": ""}}
    with httpx.Client(base_url=url, verify=pinned_tls_context(pin.tls_spki_sha256),
                      timeout=10) as http:
        denied = http.post("/kbs/v0/attest", json=body,
                           headers={"Cookie": "kbs-session-id=not-a-session"})
    assert denied.status_code == 401
    follow.join(60)
    assert not follow.is_alive() and out
    shown = [json.loads(x) for x in out[0].splitlines()]
    assert len(shown) == known + 1
    assert (shown[-1]["kind"], shown[-1]["decision"]) == ("attestation", "deny")
    assert shown[-1]["reasons"] == ["unknown session"]


def _check_kbs_metrics(url: str, pin: Pin, entries: list[Any]) -> None:
    """``GET /metrics`` over the pinned TLS connection, parsed with prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    from teeflow.kbs.client.pinning import http_client, pinned_tls_context

    with http_client(url, pinned_tls_context(pin.tls_spki_sha256), 10.0) as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    samples = [s for f in text_string_to_metric_families(response.text) for s in f.samples]

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    attest = [e for e in entries if e.kind == "attestation"]
    assert total("teeflow_kbs_attestations_total", result="deny") == sum(
        e.decision == "deny" for e in attest)
    assert total("teeflow_kbs_attestations_total", tee="emulated-sgx", result="accept") == sum(
        e.decision == "accept" for e in attest)
    assert total("teeflow_kbs_key_releases_total") == sum(
        e.kind == "release" and e.decision == "accept" for e in entries)
    assert total("teeflow_kbs_denials_total") == sum(e.decision == "deny" for e in entries)
    for kind in {e.kind for e in entries} - {"recovery-shares"}:  # written as the KBS starts
        assert total("teeflow_kbs_audit_entries_total", kind=kind) == sum(
            e.kind == kind for e in entries), (kind, [(e.kind, e.decision) for e in entries])
    assert total("teeflow_kbs_requests_total", route="/kbs/v0/attest", method="POST") >= len(
        attest)
    for s in samples:  # no session digest, resource path or measurement in any label
        for value in s.labels.values():
            assert "/" not in value or value.startswith("/"), value
            assert len(value) < 40 and not any(e.subject == value for e in entries), value


def test_kbs_measurement_cli_matches_manifest() -> None:
    shown = WorkloadManifest.loads(run("kbs", "measurement", "--manifest"))
    assert shown.name == "teeflow-kbs" and shown.entrypoint == ("teeflow", "kbs", "serve")
    paths = {f.path for f in shown.trusted_files}
    expected = {"kbs/api/server.py", "kbs/service/self_attestation.py",
                "attestation/trust/intel_sgx_root_ca.pem"}
    assert expected <= paths
    assert not any("__pycache__" in p for p in paths)
    assert run("kbs", "measurement").strip() == measurement(shown).hex()


_SERVE_SCRIPT = """
import sys, typer
from teeflow.cli import kbs_cmds
app = typer.Typer()
@app.callback()
def _root() -> None:
    pass
kbs_cmds.register(app)
app(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve_subprocess(home: Path, tmp: Path, db: str, log: Path) -> Iterator[tuple[
        subprocess.Popen[bytes], int, str]]:
    """``kbs serve`` in a child process; yields (process, port, measurement) once it accepts
    connections (bounded wait); kills it on exit if still running."""
    port = _free_port()
    env = {**os.environ, "TEEFLOW_HOME": str(home)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_SCRIPT, "kbs", "serve", "--db", db,
             "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / "state"),
             "--federation", "study", "--log-level", "warning", "--platform", "emulated-sgx",
             # the agreement is written after the start (it names the measurement served)
             "--insecure-first-agreement"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 30
        mr = None
        while mr is None or not _accepts(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "kbs serve did not start: " + log.read_text()
            lines = [ln.split() for ln in log.read_text().splitlines()]
            mr = next((ln[1] for ln in reversed(lines) if ln[:1] == ["measurement"]), None)
            time.sleep(0.1)
        yield proc, port, mr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_sigkill_during_upload_burst_keeps_acknowledged_writes(
    teeflow_home: Path, tmp_path: Path
) -> None:
    """``teeflow kbs serve`` in its own process; a party verifies it (``teeflow kbs verify``);
    SIGKILL during a burst of resource uploads; after a restart every acknowledged upload is
    present and the audit chain is intact (DESIGN invariant 5); SIGTERM then stops it
    gracefully (exit status 0)."""
    from teeflow.errors import KbsError
    from teeflow.kbs.policy.grants import Grant, sign_grant
    from teeflow.kbs.policy.parties import PartyKeys
    from teeflow.kbs.policy.signing import (
        SignedAgreement,
    )
    db = f"sqlite:///{tmp_path / 'kbs.db'}"
    log = tmp_path / "serve.log"
    alice = PartyKeys.generate("alice")
    acked: list[str] = []
    with serve_subprocess(teeflow_home, tmp_path, db, log) as (proc, port, mr):
        values = tmp_path / "kbs-reference-values.yaml"
        values.write_text(yaml.safe_dump({"mrenclave": [mr]}))
        out = run("kbs", "verify", f"https://127.0.0.1:{port}", "--reference-values", values,
                  "--allow-emulated", "-o", tmp_path / "pin.json")
        assert "verified" in out and "EMULATED" in out
        pin = Pin.load(tmp_path / "pin.json")
        assert pin.measurement == mr
        signed = SignedAgreement(agreement=FederationAgreement.from_mapping({
            "federation": "study", "version": 1, "previous": None,
            "parties": {"alice": {"sign_key": alice.public().sign_key,
                                  "recipient_key": alice.public().recipient_key,
                                  "roles": ["data-owner"]}},
            "workloads": {"client": {"sgx": {"mrenclave": ["ab" * 32]}}},
            "packages": {}, "outputs": {"model": ["alice"]}, "allow_emulated": True,
            "update_quorum": {"k": 1},
        })).signed_by(alice)
        now = datetime.now(UTC)
        d = digest(signed.agreement).hex()
        stop = threading.Event()

        def uploader(worker: int) -> None:
            with KbsClient(None, pin, timeout=5) as owner:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    path = f"alice/key-{worker}-{i}/v1"
                    grant = Grant.from_mapping({
                        "id": f"g{worker}x{i}x" + secrets.token_hex(4), "resource": path,
                        "owner": "alice", "agreement": d, "roles": ["client"],
                        "created_at": now - timedelta(minutes=1),
                        "not_after": now + timedelta(days=1), "max_releases": 1})
                    try:
                        owner.put_resource(path, os.urandom(32), sign_grant(grant, alice), alice)
                    except KbsError:
                        return  # the server died mid-request: not acknowledged
                    acked.append(path)

        with KbsClient(None, pin) as party:
            party.submit_agreement(signed)
        threads = [threading.Thread(target=uploader, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # SIGKILL, mid-burst
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert len(acked) >= 20, log.read_text()
    # The store's rows are authenticated under the KBS's sealed storage key, so the test
    # no longer reads them directly: the restart below runs the store's state check (every
    # resource row the audit log wrote must be present and authentic, else the KBS does not
    # start), and every acknowledged upload must have its audit entry (same transaction).
    # restart on the same state (same sealed keys, same TLS key: the pin still holds)
    with serve_subprocess(teeflow_home, tmp_path, db, log) as (proc, port, mr2):
        assert mr2 == mr
        with KbsClient(f"https://127.0.0.1:{port}", pin, party=alice) as party:
            entries = party.audit()  # chain and signatures verified with the pinned key
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    assert "Traceback" not in log.read_text().split("measurement")[-1]
    uploaded = {e.subject for e in entries if e.kind == "resource" and e.decision == "accept"}
    assert set(acked) <= uploaded


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
