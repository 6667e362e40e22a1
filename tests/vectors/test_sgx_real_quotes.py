"""Real Intel DCAP quotes from ../shared/testdata/attestation: parse fields and verify.

Expected values come from ``manifest.json`` (see the README there); every SGX quote is
checked field by field, and the TDX v4/v5 quotes prove the v4/v5 framing (type 6 -> 5).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import (
    EnclaveReport,
    TdReport10,
    TdReport15,
    parse_quote,
)
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.sgx import VerifiedSgxEvidence, verify
from teeflow.attestation.sgx import parse_quote as parse_sgx_quote
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import CollateralError, ParseError, VerificationError

pytestmark = pytest.mark.vectors

SGX_QUOTES = [
    "sgx/phala_sgx_quote_v3.bin",
    "sgx/mobilecoin_hw_quote_v3.bin",
    "sgx/trustee_occlum_quote_v3.bin",
    "sgx/oe_qve_thread_test_sgx_quote_v3.bin",
]
TDX_QUOTES = [
    "tdx/gtg_tdx_prod_quote_SPR_E4_v4.bin",
    "tdx/oe_tdx_quote_v4.bin",
    "tdx/trustee_tdx_quote_6_v4.bin",
    "tdx/phala_tdx_quote_v4.bin",
    "tdx/gtg_cos113_tdx_quote_v4.bin",
    "tdx/oe_tdx_quote_v5.bin",
    "tdx/gtg_quote_v5_sample.bin",
]
# README "fixed time for signature/chain checks" of quotes without time-consistent collateral.
SIGNATURE_TIMES = {
    "sgx/phala_sgx_quote_v3.bin": "2025-07-01T00:00:00Z",
    "sgx/mobilecoin_hw_quote_v3.bin": "2023-05-01T00:00:00Z",
    "sgx/trustee_occlum_quote_v3.bin": "2025-06-01T00:00:00Z",
    "sgx/oe_qve_thread_test_sgx_quote_v3.bin": "2025-06-01T00:00:00Z",
}
PHALA_COLLATERAL = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def crls_for(attestation_dir: Path, name: str) -> list[x509.CertificateRevocationList]:
    if "mobilecoin" not in name:
        return []
    return [
        x509.load_der_x509_crl((attestation_dir / f"sgx/mobilecoin_{n}_crl.der").read_bytes())
        for n in ("processor_ca", "root_ca")
    ]


def _check_report(report: EnclaveReport, want: dict[str, Any]) -> None:
    assert report.cpu_svn.hex() == want["cpusvn"]
    assert report.misc_select == want["miscselect"]
    assert report.attributes.hex() == want["attributes"]
    assert report.mr_enclave.hex() == want["mrenclave"]
    assert report.mr_signer.hex() == want["mrsigner"]
    assert report.isv_prod_id == want["isv_prod_id"]
    assert report.isv_svn == want["isv_svn"]
    assert report.report_data.hex() == want["report_data"]
    for key, attr in (
        ("isv_ext_prod_id", "isv_ext_prod_id"),
        ("config_id", "config_id"),
        ("isv_family_id", "isv_family_id"),
    ):
        if key in want:
            assert getattr(report, attr).hex() == want[key]
    if "config_svn" in want:
        assert report.config_svn == want["config_svn"]


def _check_common(q: Any, f: dict[str, Any], data: bytes) -> None:
    assert q.version == f["quote_version"]
    assert q.header.att_key_type == f["att_key_type"]
    assert hex(q.tee_type) == f["tee_type"]
    assert (q.header.qe_svn, q.header.pce_svn) == (f["qe_svn"], f["pce_svn"])
    assert q.header.qe_vendor_id.hex() == f["qe_vendor_id"]
    assert q.header.user_data.hex() == f["user_data"]
    assert q.parsed_length == f["quote_length_parsed"]
    assert q.trailing_bytes == f["file_trailing_bytes"]
    assert len(q.signature_data.to_bytes()) == f["signature_data_len"]
    assert q.certification_data.cert_type == f["certification_data_type"]
    assert q.signature_data.attestation_key.hex() == f["attestation_public_key_xy"]
    qed = q.signature_data.qe_report_certification_data
    assert qed.qe_auth_data.hex() == f["qe_auth_data"]
    _check_report(q.qe_report, f["qe_report"])
    assert q.to_bytes() == data[: q.parsed_length]
    assert q.pck_chain_pem is not None and q.pck_chain_pem.startswith(b"-----BEGIN CERT")


@pytest.mark.parametrize("name", SGX_QUOTES)
def test_sgx_quote_fields(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    data = (attestation_dir / name).read_bytes()
    f = manifest["files"][name]["expected"]["fields"]
    q = parse_sgx_quote(data)
    assert f["body_type"] == "sgx" and isinstance(q.body, EnclaveReport)
    _check_common(q, f, data)
    _check_report(q.body, f["body"])
    assert q.signature_data.wrapper_type is None
    assert q.signed_bytes == data[:432]


@pytest.mark.parametrize("name", TDX_QUOTES)
def test_tdx_quote_framing(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    data = (attestation_dir / name).read_bytes()
    f = manifest["files"][name]["expected"]["fields"]
    q = parse_quote(data)
    _check_common(q, f, data)
    assert q.signature_data.wrapper_type == 6  # type 6 wrapping type 5
    body = q.body
    assert isinstance(body, TdReport10)
    assert isinstance(body, TdReport15) == (f["body_type"] == "td15")
    b = f["body"]
    for key, attr in [
        ("tee_tcb_svn", "tee_tcb_svn"),
        ("mrseam", "mr_seam"),
        ("mrsignerseam", "mr_signer_seam"),
        ("seam_attributes", "seam_attributes"),
        ("td_attributes", "td_attributes"),
        ("xfam", "xfam"),
        ("mrtd", "mr_td"),
        ("mrconfigid", "mr_config_id"),
        ("mrowner", "mr_owner"),
        ("mrownerconfig", "mr_owner_config"),
        ("rtmr0", "rtmr0"),
        ("rtmr1", "rtmr1"),
        ("rtmr2", "rtmr2"),
        ("rtmr3", "rtmr3"),
        ("report_data", "report_data"),
        ("tee_tcb_svn2", "tee_tcb_svn2"),
        ("mrservicetd", "mr_service_td"),
    ]:
        if key in b:
            assert getattr(body, attr).hex() == b[key], key
    if q.version == 5:
        assert q.body_type == f["v5_body_type"]
    with pytest.raises(ParseError, match="not an SGX quote"):
        parse_sgx_quote(data)


def test_phala_with_collateral(attestation_dir: Path) -> None:
    q = parse_sgx_quote((attestation_dir / SGX_QUOTES[0]).read_bytes())
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_COLLATERAL)
    v = verify(
        q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=at("2025-07-01T00:00:00Z")
    )
    assert isinstance(v, VerifiedSgxEvidence)
    assert v.tcb_status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert v.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert v.platform_tcb is not None and v.platform_tcb.tcb_date == at("2024-03-13T00:00:00Z")
    assert v.qe_tcb is not None and v.qe_tcb.status is TcbStatus.UP_TO_DATE
    assert v.collateral_verified and not v.emulated
    assert v.pck.fmspc.hex() == "00a067110000"
    assert v.report.mr_enclave.hex().startswith("33d8736d")
    # Again (cached paths), then at the real date: collateral expired.
    assert (
        verify(
            q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=at("2025-07-02T00:00:00Z")
        ).tcb_status
        == v.tcb_status
    )
    with pytest.raises(CollateralError):
        verify(
            q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=at("2026-11-21T00:00:00Z")
        )


@pytest.mark.parametrize("name", SGX_QUOTES[1:])
def test_collateral_for_another_fmspc_is_rejected(attestation_dir: Path, name: str) -> None:
    q = parse_sgx_quote((attestation_dir / name).read_bytes())
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_COLLATERAL)
    with pytest.raises(CollateralError, match=r"FMSPC|PCK CRL issuer"):
        verify(
            q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=at("2025-07-01T00:00:00Z")
        )


@pytest.mark.parametrize("name", SGX_QUOTES)
def test_signatures_only(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    q = parse_sgx_quote((attestation_dir / name).read_bytes())
    now = at(SIGNATURE_TIMES[name])
    crls = crls_for(attestation_dir, name)
    v = verify(
        q, anchors=[intel_sgx_root_ca()], collateral=None, now=now, crls=crls, signatures_only=True
    )
    pck = manifest["files"][name]["expected"]["fields"]["pck_cert"]
    assert f"{v.pck_certificate.serial_number:#x}" == pck["serial"]
    assert v.pck_certificate.not_valid_after_utc == at(pck["not_after"])
    assert (v.tcb_status, v.platform_tcb, v.qe_tcb, v.advisory_ids) == (None, None, None, ())
    assert not v.collateral_verified and v.anchor == intel_sgx_root_ca()
    with pytest.raises(CollateralError, match="no collateral"):
        verify(q, anchors=[intel_sgx_root_ca()], collateral=None, now=now)
    expired = at(pck["not_after"]).replace(year=at(pck["not_after"]).year + 1)
    with pytest.raises(VerificationError) as exc:
        verify(q, anchors=[intel_sgx_root_ca()], collateral=None, now=expired, signatures_only=True)
    assert type(exc.value) is VerificationError


def test_mobilecoin_crls_outside_their_window(attestation_dir: Path) -> None:
    name = "sgx/mobilecoin_hw_quote_v3.bin"
    q = parse_sgx_quote((attestation_dir / name).read_bytes())
    with pytest.raises(CollateralError):
        verify(
            q,
            anchors=[intel_sgx_root_ca()],
            collateral=None,
            now=at("2023-07-01T00:00:00Z"),
            crls=crls_for(attestation_dir, name),
            signatures_only=True,
        )
    # Without the CRLs the chain itself is fine at that time.
    verify(
        q,
        anchors=[intel_sgx_root_ca()],
        collateral=None,
        now=at("2023-07-01T00:00:00Z"),
        signatures_only=True,
    )


def test_now_must_be_aware(attestation_dir: Path) -> None:
    q = parse_sgx_quote((attestation_dir / SGX_QUOTES[0]).read_bytes())
    with pytest.raises(VerificationError):
        verify(
            q,
            anchors=[intel_sgx_root_ca()],
            collateral=None,
            now=datetime(2025, 7, 1),
            signatures_only=True,
        )
    v = verify(
        q,
        anchors=[intel_sgx_root_ca()],
        collateral=None,
        now=datetime(2025, 7, 1, tzinfo=UTC),
        signatures_only=True,
    )
    assert v.verified_at.tzinfo is UTC
