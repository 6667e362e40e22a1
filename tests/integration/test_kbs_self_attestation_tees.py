"""The KBS attests itself on every TEE (issue 9): a real ``teeflow kbs serve --platform
emulated-tdx|emulated-snp`` process over HTTPS is verified and pinned by a party against the
agreement's ``workloads.kbs`` reference values for that TEE, and a workload attests to it.

Attack tests: KBS evidence of one TEE presented as another (tampered on its way to the
party) is refused; a KBS whose measurement the agreement does not name, or whose TEE the
reference values do not cover, is refused by the party (exact errors).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teeflow.errors import ParseError, PolicyViolation, VerificationError
from teeflow.kbs.client.pinning import Pin, http_client, observing_tls_context, send
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.grants import Grant, sign_grant
from teeflow.kbs.policy.kbs_reference import (
    load_reference_values,
    reference_values_for_measurements,
)
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.kbs.service.self_attestation import (
    kbs_measurement,
    kbs_reference_values,
    verify_kbs_evidence,
)
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_snp import emulated_snp_anchor
from teeflow.platform.selection import PlatformOptions, emulated_identity

CLIENT_MR = hashlib.sha256(b"teeflow kbs-tee client").digest()
OTHER = hashlib.sha256(b"not the agreed kbs").digest()
PKG = "d1" * 32
PATH = "alice/dataset-key/v1"
CLAIMS: dict[str, Any] = {"party": "alice", "package_digest": PKG, "function": "train",
                          "resources": [PATH], "recipients": ["alice"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Kbs:
    platform: str
    url: str
    home: Path
    log: Path


@pytest.fixture(scope="module", params=["emulated-tdx", "emulated-snp"])
def kbs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Kbs]:
    """``teeflow kbs serve --platform <param>`` in its own process (bounded start wait)."""
    platform: str = request.param
    base = tmp_path_factory.mktemp(f"kbs-{platform}")
    home, log, port = base / "home", base / "serve.log", _free_port()
    env = {**os.environ, "TEEFLOW_HOME": str(home)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "teeflow", "kbs", "serve", "--db",
             f"sqlite:///{base / 'kbs.db'}", "--listen", f"127.0.0.1:{port}",
             "--state-dir", str(base / "state"), "--federation", "study",
             "--log-level", "warning", "--platform", platform,
             "--insecure-first-agreement"],  # the tests submit several first agreements
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "platform" not in log.read_text() or not _accepts(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "kbs serve did not start: " + log.read_text()
            time.sleep(0.1)
        assert f"platform        {platform} (attester emulated)" in log.read_text()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEEFLOW_HOME", str(home))
            yield Kbs(platform, f"https://127.0.0.1:{port}", home, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _agreement(parties: dict[str, PartyKeys], kbs_spec: dict[str, Any]) -> SignedAgreement:
    doc = {
        "federation": "study", "version": 1, "previous": None,
        "parties": {n: {"sign_key": k.public().sign_key,
                        "recipient_key": k.public().recipient_key,
                        "roles": ["data-owner"]} for n, k in parties.items()},
        "workloads": {"kbs": kbs_spec, "client": {"sgx": {"mrenclave": [CLIENT_MR.hex()]}}},
        "packages": {"trainer": {"digest": PKG, "entrypoints": ["train"], "readers": ["alice"]}},
        "outputs": {"model": ["alice"]},
        "allow_emulated": True,
        "update_quorum": {"k": 1},
    }
    signed = SignedAgreement(agreement=FederationAgreement.from_mapping(doc))
    for keys in parties.values():
        signed = signed.signed_by(keys)
    return signed


def _write(path: Path, signed: SignedAgreement) -> Path:
    path.write_text(json.dumps(signed.agreement.model_dump(mode="json")), encoding="utf-8")
    return path


def _fetch(kbs: Kbs) -> tuple[dict[str, Any], bytes, list[str]]:
    """The KBS's evidence document as received over TLS, the nonce, the TLS keys seen."""
    nonce, observed = os.urandom(32), []
    with http_client(kbs.url, observing_tls_context(observed.append), 10) as http:
        _, body = send(http, "GET", "/v1/kbs/evidence",
                       params={"nonce": base64.urlsafe_b64encode(nonce).decode()})
    doc: dict[str, Any] = json.loads(body)
    return doc, nonce, observed


def _party_check(kbs: Kbs, doc: dict[str, Any], nonce: bytes, observed: list[str],
                 values: Any) -> Any:
    now = datetime.now(UTC)
    authority = EmulationAuthority.load_or_create(kbs.home, now=now)
    return verify_kbs_evidence(
        doc, nonce=nonce, reference_values=values, allow_emulated=True,
        anchors=[authority.trust_anchor(), emulated_snp_anchor(kbs.home, now=now)],
        collateral=EmulatedCollateralProvider(authority), now=now, observed_tls_spki=observed,
    )


def test_kbs_on_platform_is_verified_pinned_and_serves_a_workload(
    kbs: Kbs, tmp_path: Path
) -> None:
    identity = emulated_identity(kbs.platform, kbs_measurement()).hex()
    spec = kbs_reference_values(kbs.platform)  # what `teeflow kbs measurement --platform` prints
    parties = {"alice": PartyKeys.generate("alice")}
    signed = _agreement(parties, spec)
    path = _write(tmp_path / "agreement.json", signed)

    pin = verify_kbs(kbs.url, load_reference_values(path), allow_emulated=True, home=kbs.home)
    assert (pin.tee, pin.measurement, pin.emulated) == (kbs.platform, identity, True)
    saved = Pin.load(pin.save(tmp_path / "pin.json"))  # the pin file records the tee
    assert (saved.tee, saved.measurement) == (kbs.platform, identity)

    data_key = os.urandom(32)
    now = datetime.now(UTC)
    grant = Grant.from_mapping({
        "id": "grant-" + os.urandom(6).hex(), "resource": PATH, "owner": "alice",
        "agreement": digest(signed.agreement).hex(), "roles": ["client"],
        "packages": [PKG], "functions": ["train"], "recipients": ["alice"],
        "created_at": now - timedelta(minutes=1), "not_after": now + timedelta(days=1),
        "max_releases": 10,
    })
    with KbsClient(None, saved) as owner:
        owner.submit_agreement(signed)
        owner.put_resource(PATH, data_key, sign_grant(grant, parties["alice"]), parties["alice"])
    # after the agreement: the KBS's evidence binds it, and --expect-measurement pins it too
    again = verify_kbs(kbs.url, reference_values_for_measurements([identity]),
                       allow_emulated=True, home=kbs.home,
                       expected_agreement_digest=digest(signed.agreement))
    assert again.agreement_digest == digest(signed.agreement).hex()

    attester = PlatformOptions("emulated-sgx").attester(CLIENT_MR, home=kbs.home)
    enrollment = issue_enrollment(parties["alice"], federation="study", role="client",
                                  now=datetime.now(UTC), expires=timedelta(minutes=10))
    with KbsClient(None, again, attester, enrollment=enrollment) as workload:
        workload.attest("client", CLAIMS)
        assert workload.get_resource(PATH) == data_key


def test_cli_measurement_prints_the_platform_reference_values(kbs: Kbs) -> None:
    from teeflow.cli.main import app

    out = CliRunner().invoke(app, ["kbs", "measurement", "--platform", kbs.platform, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"kbs": kbs_reference_values(kbs.platform)}
    hardware = {"emulated-tdx": "tdx", "emulated-snp": "sev-snp"}[kbs.platform]
    refused = CliRunner().invoke(app, ["kbs", "measurement", "--platform", hardware])
    assert refused.exit_code != 0
    assert "come from its image" in str(refused.output) + str(refused.exception)


def _other_tee(doc: dict[str, Any]) -> str:
    return {"emulated-tdx": "emulated-snp", "emulated-snp": "emulated-tdx"}[doc["tee"]]


def test_attack_kbs_evidence_of_one_tee_declared_as_another_is_refused(kbs: Kbs) -> None:
    spec = reference_values_for_measurements(
        [emulated_identity(kbs.platform, kbs_measurement()).hex(), kbs_measurement().hex()]
    )
    doc, nonce, observed = _fetch(kbs)
    assert _party_check(kbs, doc, nonce, observed, spec).tee == kbs.platform  # untampered
    label = {"emulated-tdx": "TDX", "emulated-snp": "SNP"}
    other = _other_tee(doc)
    swapped = {**doc, "tee": other}
    if other == "emulated-tdx":  # a TDX claim must not carry an SNP certificate table
        swapped["certificates"] = None
    with pytest.raises(ParseError) as exc:
        _party_check(kbs, swapped, nonce, observed, spec)
    assert str(exc.value) == (
        f"{label[other]} evidence expected but this is {label[kbs.platform]}"
    )
    with pytest.raises(ParseError, match="SGX evidence expected but this is"):
        _party_check(kbs, {**doc, "tee": "emulated-sgx", "certificates": None}, nonce,
                     observed, spec)
    hardware = kbs.platform.removeprefix("emulated-")
    with pytest.raises(VerificationError) as vexc:
        _party_check(kbs, {**doc, "tee": hardware}, nonce, observed, spec)
    assert str(vexc.value) == f"declared tee {hardware} but the evidence is {kbs.platform}"


def test_attack_kbs_measurement_not_named_by_the_agreement_is_refused(
    kbs: Kbs, tmp_path: Path
) -> None:
    wrong = emulated_identity(kbs.platform, OTHER).hex()
    signed = _agreement({"alice": PartyKeys.generate("alice")},
                        reference_values_for_measurements([wrong]).model_dump(
                            mode="json", exclude_none=True))
    values = load_reference_values(_write(tmp_path / "agreement.json", signed))
    actual = emulated_identity(kbs.platform, kbs_measurement()).hex()
    field = {"emulated-tdx": "mrtd", "emulated-snp": "measurement"}[kbs.platform]
    with pytest.raises(PolicyViolation) as exc:
        verify_kbs(kbs.url, values, allow_emulated=True, home=kbs.home)
    assert str(exc.value).startswith("KBS evidence rejected: ")
    assert f"{field} {actual} not in allowed list" in exc.value.violations


def test_attack_kbs_on_a_tee_the_reference_values_do_not_cover_is_refused(kbs: Kbs) -> None:
    sgx_only = reference_values_for_measurements([kbs_measurement().hex()])
    with pytest.raises(PolicyViolation) as exc:
        verify_kbs(kbs.url, sgx_only, allow_emulated=True, home=kbs.home)
    assert str(exc.value) == (
        f"KBS evidence rejected: the KBS runs on {kbs.platform} but its reference values "
        "name only SGX KBS measurements"
    )
    with pytest.raises(PolicyViolation, match="emulation is not allowed"):
        verify_kbs(kbs.url, sgx_only,
                   allow_emulated=False, home=kbs.home)
