"""Issue 6 end to end: authorised compute over sealed inputs on the emulated TEE.

One federation per module (KBS on SQLite + compute worker, real HTTPS on 127.0.0.1): alice,
bob and carol are data owners; the package ``stats`` may read alice's and bob's data; results
may go to all three. Every refusal is checked for its exact type *and* its KBS audit entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from teeflow.cli import compute_cmds
from teeflow.compute import (
    AttestationRefused,
    ComputeWorker,
    InputTampered,
    InvalidJob,
    NotARecipient,
    Party,
    ReleaseRefused,
    ResultRef,
    WorkerUnverified,
)
from teeflow.compute.lineage import lineage_digest
from teeflow.compute.sandbox import LocalFederation, local_federation
from teeflow.errors import VerificationError
from teeflow.kbs.api.problems import AttestationFailed
from teeflow.kbs.client.pinning import pinned_tls_context, send
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.service.audit import verify_audit_chain
from teeflow.platform.emulated import EmulatedSgx

PACKAGE = {
    "teeflow.yaml": (
        "name: stats\nversion: 1.0.0\nfunctions:\n  average: funcs:average\n"
        "  describe: funcs:describe\n  leak: funcs:leak\n"
    ),
    "funcs.py": (
        "import numpy as np\n"
        "def average(x, y):\n    return (x + y) / 2\n"
        "def describe(*xs):\n"
        "    a = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in xs])\n"
        "    return {'mean': float(a.mean()), 'var': float(a.var()), 'n': int(a.size)}\n"
        "def leak(x, y):\n    return x\n"
    ),
}
BOTH = ["alice", "bob"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    work = tmp_path_factory.mktemp("compute")
    pkg = work / "stats"
    pkg.mkdir()
    for name, text in PACKAGE.items():
        (pkg / name).write_text(text)
    with local_federation(
        work / "fed", pkg,
        parties={n: ["data-owner"] for n in ("alice", "bob", "carol")},
        readers=BOTH, recipients=["alice", "bob", "carol"], platform="emulated-sgx",
    ) as federation:
        yield federation


def _audit(fed: LocalFederation) -> list[Any]:
    with KbsClient(None, fed.pin, party=fed.keys["alice"]) as kbs:
        entries = kbs.audit()
    verify_audit_chain(entries, fed.pin.audit_public())
    return entries


def _new_entries(fed: LocalFederation, before: int) -> list[Any]:
    return [e for e in _audit(fed) if e.seq > before]


def _seal_pair(fed: LocalFederation, *, alice_allow: list[str], bob_allow: list[str],
               alice_to: list[str] = BOTH, bob_to: list[str] = BOTH) -> tuple[Any, ...]:
    alice, bob = fed.party("alice"), fed.party("bob")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.full((3, 4), 2.0, dtype=np.float32)
    xi = alice.seal(x, allow=alice_allow, recipients=alice_to, to=alice.teeu(fed.worker_url))
    yi = bob.seal(y, allow=bob_allow, recipients=bob_to, to=bob.teeu(fed.worker_url))
    return alice, bob, x, y, xi, yi


def test_authorised_function_runs_and_both_recipients_open_the_same_value(
    fed: LocalFederation,
) -> None:
    alice, bob, x, y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                          bob_allow=["stats:average"])
    teeu = alice.teeu(fed.worker_url)
    ref = teeu.run("stats:average", xi, yi)
    assert ref.recipients == ("alice", "bob")
    a, b = alice.open(ref), bob.open(ref)
    np.testing.assert_array_equal(a, (x + y) / 2)
    np.testing.assert_array_equal(a, b)
    # the reference survives a round trip through JSON and still opens
    again = ResultRef.from_json(ref.model_dump_json())
    np.testing.assert_array_equal(bob.open(again), a)
    # lineage: the record is in the audit log, both inputs were released to the job's token
    audit = alice.audit_lineage(ref)
    assert [i for i, _ in audit.releases] == [xi.id, yi.id]
    assert audit.grants[xi.id] == ("alice", xi.grant_digest)
    assert audit.grants[yi.id] == ("bob", yi.grant_digest)
    rec = ref.lineage.record
    assert rec.function == "average" and rec.package.name == "stats"
    assert rec.worker.emulated and rec.worker.measurement == fed.worker.info()["measurement"]
    counters = [e for e in _audit(fed) if e.subject == f"counter:compute/{rec.result_id}"]
    assert [e.data["bound_digest"] for e in counters] == [lineage_digest(rec).hex()]


def test_describe_returns_a_json_result(fed: LocalFederation) -> None:
    alice, bob, x, y, xi, yi = _seal_pair(fed, alice_allow=["stats:describe"],
                                          bob_allow=["stats:describe"])
    ref = bob.teeu(fed.worker_url).run("stats:describe", xi, yi)
    got = alice.open(ref)
    both = np.concatenate([x.ravel(), y.ravel()]).astype(np.float64)
    assert got["n"] == 24
    assert got["mean"] == pytest.approx(both.mean())
    assert got["var"] == pytest.approx(both.var())


def test_non_recipient_cannot_open(fed: LocalFederation) -> None:
    alice, _bob, _x, _y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                             bob_allow=["stats:average"])
    ref = alice.teeu(fed.worker_url).run("stats:average", xi, yi)
    carol = fed.party("carol")
    with pytest.raises(NotARecipient):
        carol.open(ref)
    # carol cannot use alice's wrapped key either (HPKE to alice's key)
    rec = ref.lineage.record
    forged = ref.model_copy(update={"lineage": ref.lineage.model_copy(update={
        "record": rec.model_copy(update={"wrapped_keys": {
            **rec.wrapped_keys, "carol": rec.wrapped_keys["alice"]}})})})
    with pytest.raises(VerificationError):  # the signed record was changed
        carol.open(forged)


def test_tampered_lineage_is_refused(fed: LocalFederation) -> None:
    alice, bob, _x, _y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                            bob_allow=["stats:average"])
    ref = alice.teeu(fed.worker_url).run("stats:average", xi, yi)
    rec = ref.lineage.record
    for change in ({"function": "describe"}, {"recipients": ("alice",)}):
        bad = ref.model_copy(update={"lineage": ref.lineage.model_copy(
            update={"record": rec.model_copy(update=change)})})
        with pytest.raises(VerificationError):
            bob.open(bad)
    blob = bytearray(alice.teeu(fed.worker_url).fetch(ref))
    blob[-1] ^= 1
    with pytest.raises(VerificationError):
        alice.open(ref, blob=bytes(blob))


def test_function_not_in_every_grant_is_refused(fed: LocalFederation) -> None:
    alice, _bob, _x, _y, xi, yi = _seal_pair(
        fed, alice_allow=["stats:average", "stats:leak"], bob_allow=["stats:average"])
    before = _audit(fed)[-1].seq
    with pytest.raises(ReleaseRefused):
        alice.teeu(fed.worker_url).run("stats:leak", xi, yi)
    new = _new_entries(fed, before)
    denied = [e for e in new if e.kind == "release" and e.decision == "deny"]
    assert [e.subject for e in denied] == [yi.id]
    assert any("function leak not granted" in r for r in denied[0].reasons)
    assert any(e.kind == "counter" and e.subject.startswith("counter:compute/") for e in new)


def test_recipient_not_approved_by_every_owner_is_refused(fed: LocalFederation) -> None:
    alice, _bob, _x, _y, xi, yi = _seal_pair(
        fed, alice_allow=["stats:average"], bob_allow=["stats:average"],
        alice_to=["alice", "bob", "carol"], bob_to=BOTH)
    before = _audit(fed)[-1].seq
    teeu = alice.teeu(fed.worker_url)
    with pytest.raises(ReleaseRefused):
        teeu.run("stats:average", xi, yi, recipients=["alice", "bob", "carol"])
    denied = [e for e in _new_entries(fed, before) if e.kind == "release" and e.decision == "deny"]
    assert [e.subject for e in denied] == [yi.id]
    assert any("recipient carol not granted" in r for r in denied[0].reasons)
    # the default recipients are the common ones, and that job is allowed
    ref = teeu.run("stats:average", xi, yi)
    assert ref.recipients == ("alice", "bob")


def test_worker_with_another_measurement_is_refused(fed: LocalFederation) -> None:
    before = _audit(fed)[-1].seq
    other = EmulatedSgx(fed.authority, measurement=bytes.fromhex("0b" * 32))
    rogue = ComputeWorker(fed.pin, other, fed.package_archive, enrollment=fed.worker.enrollment)
    try:
        with pytest.raises(AttestationFailed):
            rogue.start()
    finally:
        rogue.close()
    denied = [e for e in _new_entries(fed, before)
              if e.kind == "attestation" and e.decision == "deny"]
    assert denied and denied[-1].data["measurement"] == "0b" * 32
    # a started worker whose code changed afterwards: its job attestation is refused
    alice, _bob, _x, _y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                             bob_allow=["stats:average"])
    good = fed.worker.platform
    fed.worker.platform = other
    before = _audit(fed)[-1].seq
    try:
        with pytest.raises(AttestationRefused):
            alice.teeu(fed.worker_url).run("stats:average", xi, yi)
    finally:
        fed.worker.platform = good
    new = _new_entries(fed, before)
    assert [(e.kind, e.decision) for e in new] == [("attestation", "deny")]
    assert not any(e.kind == "release" for e in new)
    # and a server without a compute certificate of this federation is not a worker
    with pytest.raises(WorkerUnverified):
        alice.teeu(fed.kbs_url)


def test_tampered_input_blob_is_refused(fed: LocalFederation) -> None:
    alice, _bob, _x, _y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                             bob_allow=["stats:average"])
    store = fed.worker._inputs
    blob = bytearray(store[yi.id])
    blob[200] ^= 0x40
    store[yi.id] = bytes(blob)  # the untrusted host flips a bit in the stored ciphertext
    before = _audit(fed)[-1].seq
    with pytest.raises(InputTampered):
        alice.teeu(fed.worker_url).run("stats:average", xi, yi)
    new = _new_entries(fed, before)
    assert next((e.kind, e.decision) for e in new) == ("attestation", "accept")
    assert not any(e.kind == "release" for e in new)  # no key left the KBS
    assert [e.kind for e in new if e.subject.startswith("counter:compute/")] == ["counter"]
    # an upload whose bytes do not match its id is refused at the door
    with pytest.raises(InvalidJob):
        alice.teeu(fed.worker_url).upload(xi.id.replace(xi.id[-4:], "0000"), b"x" * 200)


def test_reused_nonce_is_refused(fed: LocalFederation) -> None:
    alice, _bob, _x, _y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                             bob_allow=["stats:average"])
    seen: list[httpx.Request] = []
    original = fed.worker._client

    def recording_client() -> KbsClient:
        client = original()
        client._http.event_hooks["request"].append(seen.append)
        return client

    fed.worker._client = recording_client  # type: ignore[method-assign]
    try:
        alice.teeu(fed.worker_url).run("stats:average", xi, yi)
    finally:
        fed.worker._client = original  # type: ignore[method-assign]
    attest = next(r for r in seen if r.url.path == "/kbs/v0/attest")
    before = _audit(fed)[-1].seq
    tls = pinned_tls_context(fed.pin.tls_spki_sha256)
    with httpx.Client(base_url=fed.pin.url, timeout=10, verify=tls) as http, \
            pytest.raises(AttestationFailed):  # the same evidence, nonce and session again
        send(http, "POST", "/kbs/v0/attest", content=attest.content,
             headers={"Cookie": attest.headers["cookie"], "Content-Type": "application/json"})
    denied = [e for e in _new_entries(fed, before)
              if e.kind == "attestation" and e.decision == "deny"]
    assert len(denied) == 1 and any("replay" in r for r in denied[0].reasons)


def test_cli_seal_run_open_lineage(fed: LocalFederation, tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    compute_cmds.register(app)
    runner = CliRunner()
    home = fed.home
    pin = str(fed.home.parent / "pin.json")

    def run(*args: str | Path) -> str:
        result = runner.invoke(app, [str(a) for a in args], env={"TEEFLOW_HOME": str(home)})
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    np.save(tmp_path / "a.npy", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    np.save(tmp_path / "b.npy", np.array([3.0, 4.0, 5.0], dtype=np.float32))
    for party, name in (("alice", "a"), ("bob", "b")):
        run("compute", "seal", tmp_path / f"{name}.npy", "--party", party, "--worker",
            fed.worker_url, "--allow", "stats:average", "--recipient", "alice",
            "--recipient", "bob", "--pin", pin, "-o", tmp_path / f"{name}.ref.json")
    run("compute", "run", "stats:average", tmp_path / "a.ref.json", tmp_path / "b.ref.json",
        "--party", "alice", "--pin", pin, "-o", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["format"] == "teeflow-compute-result/1"
    run("compute", "open", tmp_path / "r.json", "--party", "bob", "--pin", pin,
        "-o", tmp_path / "out.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [2.0, 3.0, 4.0])
    assert "lineage verified" in run("compute", "lineage", tmp_path / "r.json", "--party",
                                     "carol", "--pin", pin)
    bad = runner.invoke(app, ["compute", "open", str(tmp_path / "r.json"), "--party", "carol",
                              "--pin", pin, "-o", str(tmp_path / "no.npy")],
                        env={"TEEFLOW_HOME": str(home)})
    assert isinstance(bad.exception, NotARecipient)


def test_compute_measurement_command_is_what_the_worker_attests(
    fed: LocalFederation, tmp_path: Path
) -> None:
    """Issue 14, item 8: one function, one command. ``teeflow compute measurement PKG
    --json`` prints the measurement the running worker attests with (its ``info``) and the
    agreement entries the KBS accepted it under (workloads.compute, packages.stats)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    compute_cmds.register(app)
    archive = tmp_path / "stats.tar"
    archive.write_bytes(fed.package_archive)
    out = CliRunner().invoke(app, ["compute", "measurement", str(archive), "--json"])
    assert out.exit_code == 0, (out.output, out.exception)
    doc = json.loads(out.output)
    assert doc["measurement"] == fed.worker.info()["measurement"]
    compute = fed.agreement.model_dump(mode="json")["workloads"]["compute"]
    assert doc["agreement"]["workloads"]["compute"]["sgx"]["mrenclave"] == (
        compute["sgx"]["mrenclave"]
    )
    pkg = fed.agreement.packages["stats"]
    assert doc["package"]["digest"] == pkg.digest
    assert doc["agreement"]["packages"]["stats"]["functions"] == sorted(pkg.functions)
    text = CliRunner().invoke(app, ["compute", "measurement"])
    assert text.exit_code == 0 and f"measurement {doc['measurement']}" in text.output


def test_party_load_from_files(fed: LocalFederation) -> None:
    with Party.load("carol", pin=fed.home.parent / "pin.json", home=fed.home) as carol:
        assert carol.teeu(fed.worker_url).info["package"]["name"] == "stats"


def test_worker_without_its_operators_enrollment_is_refused(fed: LocalFederation) -> None:
    """Adversary P: a worker needs the compute operator's enrollment; a data owner cannot
    enroll one, and without an enrollment there is no certificate (no HTTPS identity)."""
    from datetime import UTC, datetime, timedelta

    from teeflow.kbs.policy.enrollment import issue_enrollment

    by_alice = issue_enrollment(fed.keys["alice"], federation="teeu", role="compute",
                                now=datetime.now(UTC), expires=timedelta(hours=1))
    for token, needle in ((None, "no enrollment"), (by_alice, "may not enroll a compute")):
        rogue = ComputeWorker(fed.pin, fed.worker.platform, fed.package_archive,
                              enrollment=token)
        try:
            with pytest.raises(AttestationFailed, match=needle):
                rogue.start()
            assert rogue.certificate is None
        finally:
            rogue.close()


def test_input_released_only_to_a_worker_of_the_named_operator(fed: LocalFederation) -> None:
    """A grant naming the operator (``parties``): the worker enrolled by compute-op runs the
    job; the same grant naming another operator is refused at release."""
    alice, bob = fed.party("alice"), fed.party("bob")
    teeu = alice.teeu(fed.worker_url)
    x = np.ones((2, 2), dtype=np.float32)
    ok = [p.seal(x, allow=["stats:average"], recipients=BOTH, to=p.teeu(fed.worker_url),
                 operators=["compute-op"]) for p in (alice, bob)]
    assert teeu.run("stats:average", *ok).recipients == ("alice", "bob")
    xi = alice.seal(x, allow=["stats:average"], recipients=BOTH, to=teeu, operators=["carol"])
    yi = bob.seal(x, allow=["stats:average"], recipients=BOTH, to=bob.teeu(fed.worker_url))
    with pytest.raises(ReleaseRefused):
        teeu.run("stats:average", xi, yi)


def test_worker_serves_prometheus_metrics(fed: LocalFederation) -> None:
    """``GET /metrics`` on the worker's TLS port: jobs and uploads counted by route template;
    no input id, result id or party in any label (ATTACK: the ids are in the request paths)."""
    from prometheus_client.parser import text_string_to_metric_families

    alice, _bob, _x, _y, xi, yi = _seal_pair(fed, alice_allow=["stats:average"],
                                             bob_allow=["stats:average"])
    teeu = alice.teeu(fed.worker_url)
    ref = teeu.run("stats:average", xi, yi)
    teeu.fetch(ref)
    response = teeu._http.get("/metrics")
    assert response.status_code == 200
    samples = [s for f in text_string_to_metric_families(response.text) for s in f.samples]
    jobs = [s for s in samples if s.name == "teeflow_compute_requests_total"
            and s.labels["route"] == "/v1/compute/jobs" and s.labels["status"] == "200"]
    assert jobs and jobs[0].value >= 1
    routes = {s.labels.get("route") for s in samples} - {None}
    assert "/v1/compute/inputs/{owner}/teeu-input/{digest_hex}" in routes
    assert "/v1/compute/results/{result_id}" in routes
    for value in (v for s in samples for v in s.labels.values()):
        assert xi.id not in value and ref.lineage.record.result_id not in value
        assert "alice" not in value and "bob" not in value
