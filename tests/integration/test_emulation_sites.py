"""Issue 14, item 1 over HTTP: a party at another site verifies the operator's emulated KBS
with only the operator's exported public bundle (no emulation/ folder copied); before it
trusts that root the refusal names the fix. The KBS trusts the other site's root too (its
emulated workloads sign with their own authority)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from teeflow.errors import VerificationError
from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import SgxReferenceValues
from teeflow.kbs.service.self_attestation import kbs_measurement
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_trust import export_public, trust_public


def test_party_at_another_site_verifies_the_emulated_kbs_by_certificate(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    operator, hospital = tmp_path / "operator", tmp_path / "hospital"
    EmulationAuthority.load_or_create(hospital, now=now)  # the hospital's own workloads
    # the operator trusts the hospital's root before starting the KBS
    export_public(tmp_path / "hospital-bundle", home=hospital, now=now)
    EmulationAuthority.load_or_create(operator, now=now)
    trust_public(tmp_path / "hospital-bundle", home=operator, now=now)
    mr = kbs_measurement()
    runtime = build_kbs(
        f"sqlite:///{tmp_path / 'kbs.db'}", state_dir=tmp_path / "state", federation="study",
        platform="emulated-sgx", home=operator, measurement=mr, purge_interval=None,
        insecure_first_agreement=True,
    )
    try:
        with BackgroundServer(make_server(runtime, graceful_timeout=2)) as server:
            values = SgxReferenceValues(mrenclave=(mr.hex(),))
            with pytest.raises(VerificationError, match="teeflow emulate trust"):
                verify_kbs(server.url, values, allow_emulated=True, home=hospital)
            export_public(tmp_path / "operator-bundle", home=operator, now=now)
            trust_public(tmp_path / "operator-bundle", home=hospital, now=now)
            pin = verify_kbs(server.url, values, allow_emulated=True, home=hospital)
            assert pin.emulated and pin.measurement == mr.hex()
            assert not (hospital / "emulation" / "root_ca.key.pem").exists() or (
                (hospital / "emulation" / "root_ca.key.pem").read_bytes()
                != (operator / "emulation" / "root_ca.key.pem").read_bytes()
            )
    finally:
        runtime.close()
