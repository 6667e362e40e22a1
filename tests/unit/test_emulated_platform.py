"""Emulation authority: storage, permissions, reuse, certificates, collateral, quote layout."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from teeflow.attestation.dcap.pck import parse_pck_extensions
from teeflow.attestation.dcap.qe_identity import (
    match_qe_report,
    parse_enclave_identity,
    verify_enclave_identity_signature,
)
from teeflow.attestation.dcap.quote import INTEL_QE_VENDOR_ID, parse_quote
from teeflow.attestation.dcap.tcb_info import (
    parse_tcb_info,
    select_platform_tcb,
    verify_tcb_info_signature,
)
from teeflow.attestation.evidence import TcbStatus
from teeflow.errors import PlatformError, WorkloadError
from teeflow.hazmat.ecdsa import p256_public_key_from_raw, verify_p256_sha256
from teeflow.platform.emulated import (
    WORKLOAD_MANIFEST_ENV,
    EmulatedSgx,
    EmulationAuthority,
)
from teeflow.platform.emulated_authority import (
    EMULATED_FMSPC,
    EMULATED_PCE_ID,
    EMULATED_TCB_COMPONENTS,
    ROOT_CN,
)
from teeflow.platform.emulated_collateral import COLLATERAL_FILES
from teeflow.workload import WorkloadManifest, measurement

NOW = datetime(2025, 6, 20, 12, 0, tzinfo=UTC)
MEAS = hashlib.sha256(b"unit workload").digest()


@pytest.fixture(scope="module")
def authority() -> EmulationAuthority:
    return EmulationAuthority.generate(NOW)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_load_or_create_perms_and_reuse(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = EmulationAuthority.load_or_create(home, now=NOW)
    directory = home / "emulation"
    assert first.directory == directory
    assert _mode(directory) == 0o700
    assert _mode(directory / "collateral") == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"root_ca.pem", "root_ca.key.pem", "signer.key.pem"}
    assert set(COLLATERAL_FILES) <= {p.name for p in (directory / "collateral").iterdir()}
    for p in files:
        assert _mode(p) == 0o600, p
    assert not [p for p in home.iterdir() if p.name.startswith(".emulation")]  # no temp dirs

    second = EmulationAuthority.load_or_create(home, now=NOW + timedelta(hours=1))
    assert second.fingerprint == first.fingerprint
    assert second.mrsigner == first.mrsigner
    anchor = EmulationAuthority.existing_trust_anchor(home)
    assert anchor is not None and anchor.fingerprint == first.fingerprint and anchor.emulated


def test_teeflow_home_env_is_default(teeflow_home: Path) -> None:
    assert EmulationAuthority.existing_trust_anchor() is None
    a = EmulationAuthority.load_or_create(now=NOW)
    assert a.directory == teeflow_home / "emulation"
    anchor = EmulationAuthority.existing_trust_anchor()
    assert anchor is not None and anchor.fingerprint == a.fingerprint


def test_expired_collateral_is_regenerated_keys_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = EmulationAuthority.load_or_create(home, now=NOW)
    tcb_path = home / "emulation" / "collateral" / "tcb_info.json"
    old = json.loads(tcb_path.read_bytes())["tcbInfo"]
    later = NOW + timedelta(days=45)
    again = EmulationAuthority.load_or_create(home, now=later)
    new = json.loads(tcb_path.read_bytes())["tcbInfo"]
    assert again.fingerprint == first.fingerprint
    assert old["nextUpdate"] < later.strftime("%Y-%m-%dT%H:%M:%SZ") < new["nextUpdate"]
    assert _mode(tcb_path) == 0o600
    # Not expired: the same documents are reused.
    EmulationAuthority.load_or_create(home, now=later + timedelta(days=1))
    assert json.loads(tcb_path.read_bytes())["tcbInfo"] == new


def test_collateral_in_memory_refresh(authority: EmulationAuthority) -> None:
    a = authority.collateral_files(NOW)
    assert authority.collateral_files(NOW + timedelta(days=2)) is a
    b = authority.collateral_files(NOW + timedelta(days=40))
    assert b is not a and b.issue_date <= NOW + timedelta(days=40) < b.next_update
    assert authority.collateral(NOW + timedelta(days=40)) is authority.collateral(
        NOW + timedelta(days=40)
    )


def test_corrupt_directory_is_platform_error(tmp_path: Path) -> None:
    directory = tmp_path / "emulation"
    directory.mkdir()
    (directory / "authority.json").write_text('{"layout": 1}')
    with pytest.raises(PlatformError):
        EmulationAuthority.load_or_create(tmp_path, now=NOW)
    (directory / "root_ca.pem").write_text("not a certificate")
    with pytest.raises(PlatformError):
        EmulationAuthority.existing_trust_anchor(tmp_path)


def test_root_and_chain_shape(authority: EmulationAuthority) -> None:
    keys = authority.keys
    root = keys.root_ca
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ROOT_CN
    assert ROOT_CN == "teeflow EMULATED SGX Root CA — not hardware"
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "teeflow emulation"
    )
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    keys.pck_ca.verify_directly_issued_by(root)
    keys.pck.verify_directly_issued_by(keys.pck_ca)
    keys.tcb_signing.verify_directly_issued_by(root)
    assert keys.pck_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not keys.pck.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    anchor = authority.trust_anchor()
    assert anchor.emulated is True and anchor.certificate == root
    assert anchor.fingerprint == authority.fingerprint


def test_pck_extension_parses_with_shared_parser(authority: EmulationAuthority) -> None:
    ext = parse_pck_extensions(authority.keys.pck)
    assert ext.fmspc == EMULATED_FMSPC
    assert ext.pce_id == EMULATED_PCE_ID
    assert ext.tcb_components == EMULATED_TCB_COMPONENTS
    assert ext.cpusvn == bytes(EMULATED_TCB_COMPONENTS)
    assert ext.pcesvn == 13
    assert len(ext.ppid) == 16


def test_collateral_documents_signed_and_matching(authority: EmulationAuthority) -> None:
    files = authority.collateral_files(NOW).files
    info = parse_tcb_info(files["tcb_info.json"])
    verify_tcb_info_signature(info, authority.keys.tcb_signing)
    assert info.fmspc == EMULATED_FMSPC and info.pce_id == EMULATED_PCE_ID
    assert info.version == 3 and info.id == "SGX"
    assert info.next_update - info.issue_date == timedelta(days=30)
    assert select_platform_tcb(info, EMULATED_TCB_COMPONENTS, 13).status is TcbStatus.UP_TO_DATE
    ident = parse_enclave_identity(files["qe_identity.json"])
    verify_enclave_identity_signature(ident, authority.keys.tcb_signing)
    quote = parse_quote(EmulatedSgx(authority, measurement=MEAS).quote(b""))
    assert match_qe_report(ident, quote.qe_report).status is TcbStatus.UP_TO_DATE
    pck_crl = x509.load_der_x509_crl(files["pck_crl.der"])
    root_crl = x509.load_der_x509_crl(files["root_ca_crl.der"])
    assert pck_crl.issuer == authority.keys.pck_ca.subject and len(pck_crl) == 0
    assert root_crl.issuer == authority.keys.root_ca.subject and len(root_crl) == 0
    assert pck_crl.is_signature_valid(authority.keys.pck_ca.public_key())  # type: ignore[arg-type]
    assert root_crl.is_signature_valid(authority.root_certificate.public_key())  # type: ignore[arg-type]


def test_quote_layout(authority: EmulationAuthority) -> None:
    sgx = EmulatedSgx(authority, measurement=MEAS, isv_prod_id=7, isv_svn=3)
    raw = sgx.quote(b"\x01\x02\x03")
    q = parse_quote(raw)
    assert q.to_bytes() == raw and q.trailing_bytes == 0
    h = q.header
    assert (h.version, h.att_key_type, h.tee_type) == (3, 2, 0)
    assert h.qe_vendor_id == INTEL_QE_VENDOR_ID == bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    body = q.body
    assert body.mr_enclave == MEAS
    assert body.mr_signer == authority.mrsigner
    assert body.report_data == b"\x01\x02\x03" + bytes(61)
    assert (body.isv_prod_id, body.isv_svn) == (7, 3)
    assert body.debug is False and body.flags == 0x05 and body.xfrm == 0xE7
    # MRSIGNER = SHA-256(raw x||y of the signer key).
    from teeflow.hazmat.ecdsa import p256_public_key_to_raw

    signer_raw = p256_public_key_to_raw(authority.keys.signer_key.public_key())
    assert authority.mrsigner == hashlib.sha256(signer_raw).digest()
    # Signatures: attestation key over header||body; PCK key over QE report.
    sig = q.signature_data
    att = p256_public_key_from_raw(sig.attestation_key)
    verify_p256_sha256(att, sig.signature, q.signed_bytes, "quote")
    qe = sig.qe_report_certification_data
    verify_p256_sha256(
        authority.keys.pck.public_key(),  # type: ignore[arg-type]
        qe.qe_report_signature,
        qe.qe_report.to_bytes(),
        "qe report",
    )
    assert len(qe.qe_auth_data) == 32
    expected = hashlib.sha256(sig.attestation_key + qe.qe_auth_data).digest() + bytes(32)
    assert qe.qe_report.report_data == expected
    assert (qe.qe_report.isv_prod_id, qe.qe_report.isv_svn) == (1, 8)
    assert q.certification_data.cert_type == 5
    chain = x509.load_pem_x509_certificates(q.pck_chain_pem or b"")
    assert chain == [authority.keys.pck, authority.keys.pck_ca, authority.root_certificate]


def test_report_data_bounds(authority: EmulationAuthority) -> None:
    sgx = EmulatedSgx(authority, measurement=MEAS)
    assert parse_quote(sgx.quote(bytes(range(64)))).report_data == bytes(range(64))
    with pytest.raises(PlatformError):
        sgx.quote(bytes(65))
    with pytest.raises(PlatformError):
        sgx.quote("text")  # type: ignore[arg-type]


def test_measurement_sources(
    authority: EmulationAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORKLOAD_MANIFEST_ENV, raising=False)
    with pytest.raises(PlatformError, match="no workload measurement"):
        EmulatedSgx(authority)
    manifest = WorkloadManifest.loads("name: w\nentrypoint: [run]\n")
    with pytest.raises(PlatformError):
        EmulatedSgx(authority, measurement=MEAS, manifest=manifest)
    with pytest.raises(PlatformError):
        EmulatedSgx(authority, measurement=b"short")
    with pytest.raises(PlatformError):
        EmulatedSgx(authority, measurement=MEAS, isv_svn=70000)
    assert EmulatedSgx(authority, manifest=manifest).measurement == measurement(manifest)
    path = tmp_path / "w.yaml"
    path.write_text(manifest.to_yaml())
    monkeypatch.setenv(WORKLOAD_MANIFEST_ENV, str(path))
    sgx = EmulatedSgx(authority)
    assert parse_quote(sgx.quote(b"")).body.mr_enclave == measurement(manifest)
    monkeypatch.setenv(WORKLOAD_MANIFEST_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(WorkloadError):
        EmulatedSgx(authority)


def test_collateral_outside_certificate_validity(authority: EmulationAuthority) -> None:
    with pytest.raises(PlatformError):
        authority.collateral_files(NOW - timedelta(days=30))
    with pytest.raises(PlatformError):
        authority.collateral_files(datetime(2025, 6, 20))  # naive
