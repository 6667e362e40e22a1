"""Real AMD SEV-SNP reports from ../shared/testdata/attestation: fields, verification, appraisal.

Every report must parse to the manifest's fields, verify at the README's fixed time with its
VCEK/VLEK (+ the shipped ASK/ASVK and pinned ARK, or the chain file's own ASK/ARK), and at
the real date (2026-11-21) be accepted or rejected exactly as the README says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from teeflow.attestation.snp import (
    SigningKey,
    SnpPolicy,
    SnpProduct,
    TcbMinimum,
    VerifiedSnpEvidence,
    appraise,
    load_certificates,
    parse_report,
    verify,
)
from teeflow.attestation.trust.amd import amd_ark, amd_ask, amd_asvk
from teeflow.errors import VerificationError

pytestmark = [
    pytest.mark.vectors,
    pytest.mark.filterwarnings("ignore:Parsed a serial number:UserWarning"),
]

REPORTS = [
    "snp/gsg_milan_report_v2.bin",
    "snp/virtee_milan_report_v2.bin",
    "snp/trustee_aws_milan_vlek_report_v3.bin",
    "snp/azure_genoa_report_v3.bin",
    "snp/azure_milan_report_v2.bin",
]
FIXED = datetime(2025, 6, 1, tzinfo=UTC)
REAL_NOW = datetime(2026, 11, 21, tzinfo=UTC)


def _expected(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = manifest["files"][name]["expected"]
    return entry


def _certs(attestation_dir: Path, manifest: dict[str, Any], name: str) -> list[x509.Certificate]:
    path = attestation_dir / _expected(manifest, name)["endorsement_cert_file"]
    return load_certificates(path.read_bytes())


def _verify(
    attestation_dir: Path, manifest: dict[str, Any], name: str, now: datetime
) -> VerifiedSnpEvidence:
    report = parse_report((attestation_dir / name).read_bytes())
    certs = _certs(attestation_dir, manifest, name)
    return verify(report, endorsement_cert=certs[0], intermediates=certs[1:] or None, now=now)


def test_all_snp_reports_listed(manifest: dict[str, Any]) -> None:
    listed = sorted(
        k for k, v in manifest["files"].items() if v["kind"] == "snp_attestation_report"
    )
    assert listed == sorted(REPORTS)


def _tcb_fields(tcb: Any) -> dict[str, Any]:
    return {"raw": f"{tcb.raw:#018x}", **tcb.components()}


@pytest.mark.parametrize("name", REPORTS)
def test_fields_match_manifest(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    data = (attestation_dir / name).read_bytes()
    r = parse_report(data)
    f = _expected(manifest, name)["fields"]
    assert r.to_bytes() == data
    assert (r.version, r.guest_svn, r.vmpl, r.signature_algo) == (
        f["version"], f["guest_svn"], f["vmpl"], f["signature_algo"],
    )  # fmt: skip
    for field in (
        "family_id", "image_id", "report_data", "measurement", "host_data", "id_key_digest",
        "author_key_digest", "report_id", "report_id_ma", "chip_id",
    ):  # fmt: skip
        assert getattr(r, field).hex() == f[field], field
    assert hex(r.policy.raw) == f["policy"]
    decoded = f["policy_decoded"]
    for key, value in decoded.items():
        assert getattr(r.policy, key) == value, key
    assert hex(r.platform_info.raw) == f["platform_info"]
    assert hex(r.signer_info) == f["flags"]
    assert r.signing_key.name == f["signing_key"]
    for tcb in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        assert _tcb_fields(getattr(r, tcb)) == {**f[tcb]}, tcb
    assert str(r.current_version) == f["current_fw"]
    assert str(r.committed_version) == f["committed_fw"]
    assert r.signature_r.to_bytes(48, "big").hex() == f["signature_r_be"]
    assert r.signature_s.to_bytes(48, "big").hex() == f["signature_s_be"]
    if "cpuid" in f:
        assert (hex(r.cpuid_family or 0), hex(r.cpuid_model or 0), r.cpuid_stepping) == (
            f["cpuid"]["family"], f["cpuid"]["model"], f["cpuid"]["stepping"],
        )  # fmt: skip
    else:
        assert r.cpuid_family is None and r.product is None


@pytest.mark.parametrize("name", REPORTS)
def test_verifies_at_fixed_time(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    exp = _expected(manifest, name)
    assert exp["fixed_verification_time"] == "2025-06-01T00:00:00Z"
    assert exp["expected_overall_at_fixed_time"].startswith("VERIFIES")
    v = _verify(attestation_dir, manifest, name, FIXED)
    chain = exp["chain"]
    assert v.product is SnpProduct(chain["product"])
    assert v.signing_key is SigningKey[chain["endorsement_key"]]
    assert v.anchor == amd_ark(v.product)
    assert not v.emulated
    ext = exp["cert"]["amd_extensions"]
    assert v.extensions.product_name == ext["productName"]
    assert (v.extensions.bl_spl, v.extensions.tee_spl) == (ext["blSPL"], ext["teeSPL"])
    assert (v.extensions.snp_spl, v.extensions.ucode_spl) == (ext["snpSPL"], ext["ucodeSPL"])
    if "hwID" in ext:
        assert v.extensions.hw_id is not None and v.extensions.hw_id.hex() == ext["hwID"]
    else:
        assert v.extensions.csp_id == ext["csp_id"]
    assert _tcb_fields(v.reported_tcb) == exp["fields"]["reported_tcb"]


@pytest.mark.parametrize("name", REPORTS)
def test_real_date_outcome(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    outcome = _expected(manifest, name)["expected_at_real_now_2026_11_21"]
    if outcome.startswith("ACCEPT"):
        assert _verify(attestation_dir, manifest, name, REAL_NOW).verified_at == REAL_NOW
    else:
        assert outcome.startswith("REJECT")
        with pytest.raises(VerificationError, match="not valid at"):
            _verify(attestation_dir, manifest, name, REAL_NOW)


def test_vlek_rejected_after_expiry_only(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    name = "snp/trustee_aws_milan_vlek_report_v3.bin"
    _verify(attestation_dir, manifest, name, datetime(2025, 12, 10, 22, 14, 21, tzinfo=UTC))
    with pytest.raises(VerificationError):
        _verify(attestation_dir, manifest, name, datetime(2025, 12, 10, 22, 14, 22, tzinfo=UTC))
    with pytest.raises(VerificationError):
        _verify(attestation_dir, manifest, name, datetime(2024, 12, 10, 22, 14, 20, tzinfo=UTC))


@pytest.mark.parametrize("name", REPORTS)
def test_wrong_product_root(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    report = parse_report((attestation_dir / name).read_bytes())
    cert = _certs(attestation_dir, manifest, name)[0]
    product = SnpProduct(_expected(manifest, name)["chain"]["product"])
    vlek = report.signing_key is SigningKey.VLEK
    intermediate = amd_asvk(product) if vlek else amd_ask(product)
    for other in SnpProduct:
        if other is product:
            continue
        with pytest.raises(VerificationError):  # another product's ARK as anchor
            verify(
                report, endorsement_cert=cert, intermediates=[intermediate],
                anchors=[amd_ark(other)], now=FIXED,
            )  # fmt: skip
        with pytest.raises(VerificationError, match="expected"):  # explicit product
            verify(report, endorsement_cert=cert, product=other, now=FIXED)
        if not vlek and other is not SnpProduct.TURIN:  # another product's ASK
            with pytest.raises(VerificationError):
                verify(report, endorsement_cert=cert, intermediates=[amd_ask(other)], now=FIXED)


def test_vcek_of_another_report_is_rejected(
    attestation_dir: Path, manifest: dict[str, Any]
) -> None:
    report = parse_report((attestation_dir / "snp/virtee_milan_report_v2.bin").read_bytes())
    other = _certs(attestation_dir, manifest, "snp/gsg_milan_report_v2.bin")[0]
    with pytest.raises(VerificationError):
        verify(report, endorsement_cert=other, now=FIXED)


def test_ask_used_for_vlek_and_asvk_for_vcek_fail(
    attestation_dir: Path, manifest: dict[str, Any]
) -> None:
    vlek_name = "snp/trustee_aws_milan_vlek_report_v3.bin"
    report = parse_report((attestation_dir / vlek_name).read_bytes())
    cert = _certs(attestation_dir, manifest, vlek_name)[0]
    with pytest.raises(VerificationError):
        verify(report, endorsement_cert=cert, intermediates=[amd_ask("Milan")], now=FIXED)
    vcek_name = "snp/virtee_milan_report_v2.bin"
    report = parse_report((attestation_dir / vcek_name).read_bytes())
    cert = _certs(attestation_dir, manifest, vcek_name)[0]
    with pytest.raises(VerificationError):
        verify(report, endorsement_cert=cert, intermediates=[amd_asvk("Milan")], now=FIXED)


@pytest.mark.parametrize("name", REPORTS)
def test_appraisal_default_policy(
    attestation_dir: Path, manifest: dict[str, Any], name: str
) -> None:
    v = _verify(attestation_dir, manifest, name, FIXED)
    f = _expected(manifest, name)["fields"]
    policy = SnpPolicy(
        measurements=(f["measurement"],),
        report_data=f["report_data"],
        min_tcb=TcbMinimum(bootloader=2, snp=5),
    )
    result = appraise(v, policy)
    assert result.tee == "snp"
    if f["policy_decoded"]["debug_allowed"]:
        assert result.violations == ("guest policy allows debugging (DEBUG)",)
        assert appraise(v, policy.model_copy(update={"allow_debug": True})).accepted
    else:
        assert result.accepted, result.violations
        assert result.status == "affirming"
        assert result.claims["measurement"] == f["measurement"]
