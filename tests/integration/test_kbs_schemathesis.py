"""Schemathesis against the running KBS's ``/openapi.json`` (issue 3 "Robustness"): a bounded
number of generated requests per operation (valid and invalid inputs), zero 5xx responses,
and every error body an RFC 7807 ``application/problem+json`` document.

The KBS runs as in production (emulated platform, SQLite, TLS 1.3 on 127.0.0.1, an agreement
in force); requests go over HTTPS with the KBS's own certificate as the only trusted one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server  # noqa: E402
from teeflow.kbs.client.pinning import Pin  # noqa: E402
from teeflow.kbs.client.sdk import KbsClient  # noqa: E402
from teeflow.kbs.policy.agreement import FederationAgreement  # noqa: E402
from teeflow.kbs.policy.parties import PartyKeys  # noqa: E402
from teeflow.kbs.policy.signing import SignedAgreement  # noqa: E402

pytestmark = pytest.mark.slow

#: Generated requests per API operation (about 20 operations: ~300 requests, well under 60 s).
MAX_EXAMPLES = 15
KBS_MR = bytes(range(32))


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("kbs-schemathesis")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(base / "home"))
        runtime = build_kbs(f"sqlite:///{base / 'kbs.db'}", state_dir=base / "state",
                            federation="study", measurement=KBS_MR, purge_interval=None,
                            platform="emulated-sgx",
                            # the fuzzer also posts agreements: any well-signed first one
                            insecure_first_agreement=True)
        server = BackgroundServer(make_server(runtime, graceful_timeout=2)).start()
        cert = base / "kbs-tls.pem"
        cert.write_bytes(runtime.keys.tls_certificate_pem())
        try:
            alice = PartyKeys.generate("alice")
            signed = SignedAgreement(agreement=FederationAgreement.from_mapping({
                "federation": "study", "version": 1, "previous": None,
                "parties": {"alice": {"sign_key": alice.public().sign_key,
                                      "recipient_key": alice.public().recipient_key,
                                      "roles": ["data-owner"]}},
                "workloads": {"client": {"sgx": {"mrenclave": ["ab" * 32]}}},
                "outputs": {"model": ["alice"]}, "allow_emulated": True,
                "update_quorum": {"k": 1},
            })).signed_by(alice)
            pin = Pin.model_validate({**_pin_fields(runtime), "url": server.url})
            with KbsClient(None, pin) as party:
                party.submit_agreement(signed)
            yield server.url, cert
        finally:
            server.stop()
            runtime.close()


def _pin_fields(runtime: Any) -> dict[str, Any]:
    """A pin for the test's own KBS built from its public bundle (no evidence check needed:
    the test started it)."""
    b = runtime.keys.public_bundle()
    return {"federation": b["federation"], "tls_spki_sha256": b["tls_spki_sha256"],
            "hpke_public_key": b["hpke_public_key"], "ca_certificate": b["ca_certificate"],
            "ear_public_jwk": b["ear_public_jwk"], "audit_public_key": b["audit_public_key"],
            "agreement_digest": None, "measurement": KBS_MR.hex(), "tee": "emulated-sgx",
            "emulated": True, "verified_at": "2025-01-01T00:00:00Z"}


def test_generated_requests_never_get_5xx_and_errors_are_problem_json(
    kbs: tuple[str, Path],
) -> None:
    url, cert = kbs
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", verify=str(cert), timeout=10)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            resp = case.call(base_url=url, verify=str(cert), timeout=10)
            statuses[resp.status_code] += 1
            where = f"{case.method} {case.formatted_path} -> {resp.status_code}"
            if resp.status_code >= 500:
                failures.append(f"{where}: {resp.text[:200]}")
            elif resp.status_code >= 400:
                raw = resp.headers.get("content-type") or [""]  # schemathesis: lists
                ctype = raw[0] if isinstance(raw, list) else raw
                if ctype != "application/problem+json":
                    failures.append(f"{where}: content-type {ctype!r}")
                    return
                body = json.loads(resp.content)
                if not {"type", "title", "status"} <= set(body) or body["status"] != (
                    resp.status_code
                ):
                    failures.append(f"{where}: not a problem document: {resp.text[:200]}")
                if "traceback" in resp.text.lower():
                    failures.append(f"{where}: traceback in body")

        run()

    assert sum(statuses.values()) >= len(operations) * 3
    assert not failures, "\n".join(failures[:20])
