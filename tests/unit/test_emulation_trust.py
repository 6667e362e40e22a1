"""Issue 14, item 1: several sites under emulation without copying private keys. A site
exports its emulation root certificate and public collateral; another site trusts it by
certificate; evidence signed by the first site's own authority then verifies at the second
(and, without the trust, fails with an error that names the fix)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.attestation.registry import verify_primary
from teeflow.cli.main import app
from teeflow.errors import KbsError, PlatformError, VerificationError
from teeflow.kbs.client.verification import NO_EMULATION_ROOT, verify_kbs
from teeflow.kbs.policy.agreement import SgxReferenceValues
from teeflow.kbs.service.collateral import (
    CompositeCollateralProvider,
    EmulatedCollateralProvider,
    TrustedEmulationCollateralProvider,
)
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority
from teeflow.platform.emulated_tdx import EmulatedTdx
from teeflow.platform.emulated_trust import export_public, trust_public, trusted_roots

NOW = datetime.now(UTC)


@pytest.fixture()
def sites(tmp_path: Path) -> tuple[Path, Path, EmulationAuthority, EmulationAuthority]:
    a, b = tmp_path / "site-a", tmp_path / "site-b"
    return a, b, EmulationAuthority.load_or_create(a, now=NOW), EmulationAuthority.load_or_create(
        b, now=NOW
    )


def _verify_at_b(b: Path, authority_b: EmulationAuthority, primary: bytes, platform: str):  # type: ignore[no-untyped-def]
    roots = trusted_roots(b)
    return verify_primary(
        platform,
        primary,
        anchors=[authority_b.trust_anchor(), *(r.anchor for r in roots)],
        collateral=CompositeCollateralProvider(
            [*(TrustedEmulationCollateralProvider(r) for r in roots),
             EmulatedCollateralProvider(authority_b)]
        ),
        now=NOW,
    )


def test_a_site_trusts_another_sites_root_by_certificate_only(
    sites: tuple[Path, Path, EmulationAuthority, EmulationAuthority], tmp_path: Path
) -> None:
    a, b, auth_a, auth_b = sites
    # two sites' roots share the CN but not the subject (else one imitates the other)
    assert auth_a.root_certificate.subject != auth_b.root_certificate.subject
    sgx_quote = EmulatedSgx(auth_a, measurement=bytes(range(32))).quote(b"\x01" * 64)
    tdx_quote = EmulatedTdx(auth_a, mrtd=bytes(48)).quote(b"\x02" * 64)
    # site B without A's root: refused, and the error names the fix
    with pytest.raises(VerificationError, match="teeflow emulate trust"):
        _verify_at_b(b, auth_b, sgx_quote, "sgx")
    bundle = tmp_path / "bundle-a"
    fingerprint = export_public(bundle, home=a, now=NOW)
    assert not [p for p in bundle.rglob("*") if "key" in p.name]  # public only
    root = trust_public(bundle, home=b, now=NOW)
    assert root.fingerprint == fingerprint == auth_a.fingerprint
    assert root.anchor.emulated and set(root.collateral) == {"sgx", "tdx"}
    assert [r.fingerprint for r in trusted_roots(b)] == [fingerprint]
    assert _verify_at_b(b, auth_b, sgx_quote, "sgx").tee == "emulated-sgx"
    assert _verify_at_b(b, auth_b, tdx_quote, "tdx").tee == "emulated-tdx"
    # B's own evidence still verifies at B (its own provider answers its own chains)
    own = EmulatedSgx(auth_b, measurement=bytes(32)).quote(b"\x03" * 64)
    assert _verify_at_b(b, auth_b, own, "sgx").tee == "emulated-sgx"


def test_trust_refuses_private_keys_forgeries_and_its_own_root(
    sites: tuple[Path, Path, EmulationAuthority, EmulationAuthority], tmp_path: Path
) -> None:
    """Attack: an emulation/ folder (private keys) handed over as a bundle is refused; a
    bundle whose collateral chains to another root, or a root not validly self-signed, is
    refused; a home cannot 'trust' its own root."""
    a, b, _, _ = sites
    with pytest.raises(PlatformError, match="private keys"):
        trust_public(a / "emulation", home=b, now=NOW)
    bundle = tmp_path / "bundle"
    export_public(bundle, home=a, now=NOW)
    with pytest.raises(PlatformError, match="own emulation root"):
        trust_public(bundle, home=a, now=NOW)
    mixed = tmp_path / "mixed"
    shutil.copytree(bundle, mixed)
    other = tmp_path / "bundle-b"
    export_public(other, home=b, now=NOW)
    shutil.copy(other / "root_ca.pem", mixed / "root_ca.pem")  # B's root, A's collateral
    with pytest.raises(PlatformError, match="does not end in the bundle's root"):
        trust_public(mixed, home=tmp_path / "site-c", now=NOW)
    pem = (bundle / "root_ca.pem").read_bytes()
    forged = tmp_path / "forged"
    shutil.copytree(bundle, forged)
    lines = pem.splitlines()
    body = bytearray(b"".join(lines[1:-1]))
    body[-10] = ord("A") if body[-10] != ord("A") else ord("B")  # inside the signature
    (forged / "root_ca.pem").write_bytes(lines[0] + b"\n" + bytes(body) + b"\n" + lines[-1])
    with pytest.raises(PlatformError):
        trust_public(forged, home=tmp_path / "site-d", now=NOW)
    assert trusted_roots(tmp_path / "site-c") == [] and trusted_roots(tmp_path / "site-d") == []


def test_verify_kbs_without_any_emulation_root_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KbsError) as exc:
        verify_kbs("https://127.0.0.1:1", SgxReferenceValues(mrenclave=("00" * 32,)),
                   allow_emulated=True, home=tmp_path / "empty")
    assert str(exc.value) == NO_EMULATION_ROOT
    assert "teeflow emulate export" in NO_EMULATION_ROOT
    assert "teeflow emulate trust" in NO_EMULATION_ROOT


def test_cli_export_and_trust(tmp_path: Path) -> None:
    runner = CliRunner()
    a, b, bundle = tmp_path / "a", tmp_path / "b", tmp_path / "bundle"
    out = runner.invoke(app, ["emulate", "export", str(bundle), "--json"],
                        env={"TEEFLOW_HOME": str(a)})
    assert out.exit_code != 0 and "no emulation authority" in str(out.exception)
    EmulationAuthority.load_or_create(a, now=NOW)
    out = runner.invoke(app, ["emulate", "export", str(bundle), "--json"],
                        env={"TEEFLOW_HOME": str(a)})
    assert out.exit_code == 0, out.output
    fp = json.loads(out.stdout)["root_sha256"]
    out = runner.invoke(app, ["emulate", "trust", str(bundle), "--json"],
                        env={"TEEFLOW_HOME": str(b)})
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["root_sha256"] == fp
    out = runner.invoke(app, ["emulate", "info", "--json"], env={"TEEFLOW_HOME": str(b)})
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["trusted_roots"] == [fp]
