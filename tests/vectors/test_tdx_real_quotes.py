"""Real Intel TDX quotes from ../shared/testdata/attestation: parse, verify, appraise.

Every TDX quote parses (``teeflow.attestation.tdx.parse_quote``) to the manifest's fields;
with each listed collateral set, at the README's fixed time, verification gives exactly the
listed outcome (UpToDate / OutOfDate / "no matching TCB level"), and at the real date
(2026-11-21) the collateral is expired (``CollateralError``). Collateral sets that lack
files are used through the lower-level APIs, as the README describes:

* ``tdx_50806F000000_2023-06-18_gtg`` has no issuer chains: the TCB-signing chain comes
  from ``roots/intel_sgx_tcb_signing_chain_2018-05-21_2025-05-21.pem`` and the PCK CRL's
  issuer chain is the quote's own PCK CA + root (the CRL's issuer);
* ``tdx_00A06D080000_2025-10-27_trustee`` (TCB Info + QE Identity, no CRLs) and
  ``tdx_90C06F000000_2026-02-01_gtg`` (TCB Info only): ``verify(signatures_only=True)``,
  ``verify_tcb_documents`` with the 2025-2032 signing chain, ``evaluate_tdx_tcb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation import tdx
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.qe_identity import match_qe_report, parse_enclave_identity
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.dcap.tcb_info import parse_tcb_info
from teeflow.attestation.dcap.verify_common import decode_pck_chain
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.sgx import parse_quote as parse_sgx_quote
from teeflow.attestation.tdx.abi import is_debug, td_report
from teeflow.attestation.tdx.verify import check_tcb_info_platform
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import CollateralError, ParseError, VerificationError

pytestmark = pytest.mark.vectors

REAL_NOW = datetime(2026, 11, 21, tzinfo=UTC)
QUOTES = [
    "tdx/gtg_tdx_prod_quote_SPR_E4_v4.bin",
    "tdx/oe_tdx_quote_v4.bin",
    "tdx/trustee_tdx_quote_6_v4.bin",
    "tdx/phala_tdx_quote_v4.bin",
    "tdx/gtg_cos113_tdx_quote_v4.bin",
    "tdx/oe_tdx_quote_v5.bin",
    "tdx/gtg_quote_v5_sample.bin",
]
GTG_2023 = "tdx/collateral/tdx_50806F000000_2023-06-18_gtg"
SIGNING_2018 = "roots/intel_sgx_tcb_signing_chain_2018-05-21_2025-05-21.pem"
SIGNING_2025 = "roots/intel_sgx_tcb_signing_chain_2025-05-06_2032-05-06.pem"


@dataclass(frozen=True)
class Case:
    """One README pairing: quote, collateral set, fixed time, expected outcome."""

    quote: str
    collateral: str
    now: str
    status: TcbStatus | None  # None: "no matching TCB level"
    platform: TcbStatus | None
    module: TcbStatus | None  # None: no module identity (TEE_TCB_SVN[1] == 0)
    module_id: str | None
    platform_date: str | None


FULL = [
    Case(
        "tdx/phala_tdx_quote_v4.bin",
        "tdx/collateral/tdx_B0C06F000000_2025-06-19_phala",
        "2025-07-01T00:00:00Z",
        TcbStatus.UP_TO_DATE,
        TcbStatus.UP_TO_DATE,
        TcbStatus.UP_TO_DATE,
        "TDX_01",
        "2024-03-13T00:00:00Z",
    ),
    Case(
        "tdx/gtg_cos113_tdx_quote_v4.bin",
        "tdx/collateral/tdx_00806F050000_2026-06-12_oe_eval21",
        "2026-07-01T00:00:00Z",
        TcbStatus.OUT_OF_DATE,
        TcbStatus.OUT_OF_DATE,
        TcbStatus.OUT_OF_DATE,
        "TDX_01",
        "2024-03-13T00:00:00Z",
    ),
    Case(
        "tdx/oe_tdx_quote_v5.bin",
        "tdx/collateral/tdx_00806F050000_2026-06-12_oe_eval21",
        "2026-07-01T00:00:00Z",
        TcbStatus.OUT_OF_DATE,
        TcbStatus.OUT_OF_DATE,
        TcbStatus.OUT_OF_DATE,
        "TDX_01",
        "2023-08-09T00:00:00Z",
    ),
    Case(
        "tdx/gtg_quote_v5_sample.bin",
        "tdx/collateral/tdx_90C06F000000_2026-02-18_phala",
        "2026-03-01T00:00:00Z",
        TcbStatus.UP_TO_DATE,
        TcbStatus.UP_TO_DATE,
        TcbStatus.UP_TO_DATE,
        "TDX_01",
        "2024-11-13T00:00:00Z",
    ),
]
GTG_2023_CASES = [
    Case(
        "tdx/oe_tdx_quote_v4.bin",
        GTG_2023,
        "2023-07-01T01:00:00Z",
        TcbStatus.UP_TO_DATE,
        TcbStatus.UP_TO_DATE,
        None,
        None,
        "2023-02-15T00:00:00Z",
    ),
    Case(
        "tdx/gtg_tdx_prod_quote_SPR_E4_v4.bin",
        GTG_2023,
        "2023-07-01T01:00:00Z",
        None,
        None,
        None,
        None,
        None,
    ),
]
PARTIAL = [
    # (case, QE identity present)
    (
        Case(
            "tdx/trustee_tdx_quote_6_v4.bin",
            "tdx/collateral/tdx_00A06D080000_2025-10-27_trustee",
            "2025-11-01T00:00:00Z",
            TcbStatus.OUT_OF_DATE,
            TcbStatus.OUT_OF_DATE,
            TcbStatus.UP_TO_DATE,
            "TDX_03",
            "2018-01-04T00:00:00Z",
        ),
        True,
    ),
    (
        Case(
            "tdx/gtg_quote_v5_sample.bin",
            "tdx/collateral/tdx_90C06F000000_2026-02-01_gtg",
            "2026-02-03T01:00:00Z",
            TcbStatus.UP_TO_DATE,
            TcbStatus.UP_TO_DATE,
            TcbStatus.UP_TO_DATE,
            "TDX_01",
            "2024-11-13T00:00:00Z",
        ),
        False,
    ),
]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def quote_of(attestation_dir: Path, name: str) -> Any:
    return tdx.parse_quote((attestation_dir / name).read_bytes())


def gtg_2023_collateral(attestation_dir: Path, quote: Any) -> IntelCollateral:
    d = attestation_dir / GTG_2023
    certs = decode_pck_chain(quote.pck_chain_pem)
    return IntelCollateral.from_bytes(
        tcb_info=(d / "tcb_info.json").read_bytes(),
        qe_identity=(d / "qe_identity.json").read_bytes(),
        pck_crl=(d / "pck_crl.der").read_bytes(),
        root_ca_crl=(d / "root_ca_crl.der").read_bytes(),
        pck_crl_issuer_chain=b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]),
        tcb_info_issuer_chain=(attestation_dir / SIGNING_2018).read_bytes(),
        source=str(d),
    )


def check_result(v: tdx.VerifiedTdxEvidence, case: Case) -> None:
    assert v.tcb_status is case.status
    assert v.platform_tcb is not None and v.platform_tcb.status is case.platform
    assert v.platform_tcb.tcb_date == at(case.platform_date or "")
    if case.module is None:
        assert v.module_tcb is None and v.module_identity_id is None
    else:
        assert v.module_tcb is not None and v.module_tcb.status is case.module
        assert v.module_identity_id == case.module_id
    assert v.qe_tcb is not None and v.qe_tcb.status is TcbStatus.UP_TO_DATE
    assert v.collateral_verified and not v.emulated and not v.relaunch_advised
    assert set(v.platform_tcb.advisory_ids) <= set(v.advisory_ids)


# ------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("name", QUOTES)
def test_fields(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    data = (attestation_dir / name).read_bytes()
    f = manifest["files"][name]["expected"]["fields"]
    q = tdx.parse_quote(data)
    assert q.version == f["quote_version"] and hex(q.tee_type) == f["tee_type"] == "0x81"
    assert q.header.att_key_type == f["att_key_type"]
    assert (q.header.qe_svn, q.header.pce_svn) == (f["qe_svn"], f["pce_svn"])
    assert q.header.qe_vendor_id.hex() == f["qe_vendor_id"]
    assert q.parsed_length == f["quote_length_parsed"]
    assert q.trailing_bytes == f["file_trailing_bytes"]
    assert q.certification_data.cert_type == f["certification_data_type"] == 5
    assert q.signature_data.wrapper_type == 6
    assert q.to_bytes() == data[: q.parsed_length]
    body = td_report(q)
    assert isinstance(body, TdReport15) == (f["body_type"] == "td15")
    b = f["body"]
    assert body.mr_td.hex() == b["mrtd"]
    assert [r.hex() for r in body.rtmrs] == [b[f"rtmr{i}"] for i in range(4)]
    assert body.mr_seam.hex() == b["mrseam"]
    assert body.mr_signer_seam.hex() == b["mrsignerseam"]
    assert body.seam_attributes.hex() == b["seam_attributes"]
    assert body.tee_tcb_svn.hex() == b["tee_tcb_svn"]
    assert body.td_attributes.hex() == b["td_attributes"]
    assert body.xfam.hex() == b["xfam"]
    assert body.mr_config_id.hex() == b["mrconfigid"]
    assert body.mr_owner.hex() == b["mrowner"]
    assert body.mr_owner_config.hex() == b["mrownerconfig"]
    assert body.report_data.hex() == b["report_data"]
    if isinstance(body, TdReport15):
        assert body.tee_tcb_svn2.hex() == b["tee_tcb_svn2"]
        assert body.mr_service_td.hex() == b["mrservicetd"]
    assert not is_debug(body)  # all samples are production TDs
    qe = f["qe_report"]
    assert q.qe_report.mr_signer.hex() == qe["mrsigner"]
    assert (q.qe_report.isv_prod_id, q.qe_report.isv_svn) == (qe["isv_prod_id"], qe["isv_svn"])


@pytest.mark.parametrize("name", QUOTES)
def test_tdx_and_sgx_parsers_refuse_each_other(attestation_dir: Path, name: str) -> None:
    with pytest.raises(ParseError, match="not an SGX quote"):
        parse_sgx_quote((attestation_dir / name).read_bytes())
    sgx_quote = (attestation_dir / "sgx/phala_sgx_quote_v3.bin").read_bytes()
    with pytest.raises(ParseError, match="not a TDX quote"):
        tdx.parse_quote(sgx_quote)


@pytest.mark.parametrize("name", QUOTES)
def test_signatures_only(attestation_dir: Path, manifest: dict[str, Any], name: str) -> None:
    q = quote_of(attestation_dir, name)
    pairing = manifest["files"][name]["expected"]["pairings"][0]
    now = at(pairing["fixed_verification_time"])
    v = tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=None, now=now, signatures_only=True)
    pck = manifest["files"][name]["expected"]["fields"]["pck_cert"]
    assert v.pck.fmspc.hex() == pck["fmspc"] and v.pck.pcesvn == pck["tcb"]["pcesvn"]
    assert v.tcb_status is None and not v.collateral_verified and v.advisory_ids == ()
    with pytest.raises(CollateralError, match="no collateral"):
        tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=None, now=now)


# ------------------------------------------------------------------------ full collateral


@pytest.mark.parametrize("case", FULL, ids=lambda c: c.quote.split("/")[1])
def test_full_collateral_sets(attestation_dir: Path, case: Case) -> None:
    q = quote_of(attestation_dir, case.quote)
    collateral = IntelCollateral.from_dir(attestation_dir / case.collateral)
    v = tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=at(case.now))
    check_result(v, case)
    with pytest.raises(CollateralError, match="collateral expired: tcbInfo nextUpdate"):
        tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=REAL_NOW)


def test_out_of_date_advisories_merge_platform_and_module(attestation_dir: Path) -> None:
    case = FULL[1]
    q = quote_of(attestation_dir, case.quote)
    collateral = IntelCollateral.from_dir(attestation_dir / case.collateral)
    v = tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=at(case.now))
    assert v.platform_tcb is not None and v.module_tcb is not None
    platform = v.platform_tcb.advisory_ids
    assert platform[0] == "INTEL-SA-01010" and platform[-1] == "INTEL-SA-01313"
    assert len(platform) == 11
    assert v.advisory_ids == tuple(dict.fromkeys((*platform, *v.module_tcb.advisory_ids)))


@pytest.mark.parametrize("case", GTG_2023_CASES, ids=lambda c: c.quote.split("/")[1])
def test_gtg_2023_collateral(attestation_dir: Path, case: Case) -> None:
    q = quote_of(attestation_dir, case.quote)
    collateral = gtg_2023_collateral(attestation_dir, q)
    now = at(case.now)
    if case.status is None:
        with pytest.raises(VerificationError, match="no matching TCB level") as exc:
            tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=now)
        assert type(exc.value) is VerificationError
        # Quote signatures and PCK chain are valid on their own.
        tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=None, now=now, signatures_only=True)
    else:
        v = tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=now)
        check_result(v, case)
    with pytest.raises(CollateralError, match="collateral expired"):
        tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=collateral, now=REAL_NOW)


@pytest.mark.parametrize(
    ("quote", "collateral"),
    [
        ("tdx/phala_tdx_quote_v4.bin", "tdx/collateral/tdx_00806F050000_2026-06-12_oe_eval21"),
        ("tdx/oe_tdx_quote_v5.bin", "tdx/collateral/tdx_90C06F000000_2026-02-18_phala"),
    ],
)
def test_collateral_for_another_platform(
    attestation_dir: Path, quote: str, collateral: str
) -> None:
    q = quote_of(attestation_dir, quote)
    coll = IntelCollateral.from_dir(attestation_dir / collateral)
    now = coll.tcb_info.issue_date.replace(hour=23, minute=0)
    with pytest.raises(CollateralError, match="FMSPC"):
        tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=coll, now=now)


def test_sgx_collateral_is_refused(attestation_dir: Path) -> None:
    q = quote_of(attestation_dir, "tdx/phala_tdx_quote_v4.bin")
    coll = IntelCollateral.from_dir(
        attestation_dir / "sgx/collateral/sgx_00A067110000_2025-06-19_phala"
    )
    with pytest.raises(CollateralError, match=r"not TDX v3"):
        tdx.verify(
            q, anchors=[intel_sgx_root_ca()], collateral=coll, now=at("2025-07-01T00:00:00Z")
        )


# ------------------------------------------------------------------------ partial collateral


@pytest.mark.parametrize(("case", "with_qe"), PARTIAL, ids=lambda c: getattr(c, "collateral", ""))
def test_partial_collateral_sets(attestation_dir: Path, case: Case, with_qe: bool) -> None:
    q = quote_of(attestation_dir, case.quote)
    now = at(case.now)
    anchors = [intel_sgx_root_ca()]
    v = tdx.verify(q, anchors=anchors, collateral=None, now=now, signatures_only=True)
    d = attestation_dir / case.collateral
    info = parse_tcb_info((d / "tcb_info.json").read_bytes())
    ident = parse_enclave_identity((d / "qe_identity.json").read_bytes()) if with_qe else None
    chain = x509.load_pem_x509_certificates((attestation_dir / SIGNING_2025).read_bytes())
    anchor = tdx.verify_tcb_documents(
        tcb_info=info, qe_identity=ident, signing_chain=chain, anchors=anchors, now=now
    )
    assert anchor is anchors[0]
    check_tcb_info_platform(info, v.pck)
    qe_tcb = match_qe_report(ident, q.qe_report) if ident is not None else None
    result = tdx.evaluate_tdx_tcb(info, v.report, v.pck, qe_tcb)
    assert result.combined.status is case.status
    assert result.platform.status is case.platform
    assert result.platform.tcb_date == at(case.platform_date or "")
    assert result.module is not None and result.module.status is case.module
    assert result.module_identity_id == case.module_id
    if with_qe:
        assert result.qe is not None and result.qe.status is TcbStatus.UP_TO_DATE
    assert not result.relaunch_advised
    with pytest.raises(CollateralError, match="collateral expired: tcbInfo nextUpdate"):
        tdx.verify_tcb_documents(
            tcb_info=info, qe_identity=ident, signing_chain=chain, anchors=anchors, now=REAL_NOW
        )


def test_partial_set_with_tampered_signature(attestation_dir: Path) -> None:
    case, _ = PARTIAL[1]
    body = (attestation_dir / case.collateral / "tcb_info.json").read_bytes()
    sig_at = body.rindex(b'"signature":"') + len(b'"signature":"')
    flipped = (
        body[:sig_at] + (b"0" if body[sig_at : sig_at + 1] != b"0" else b"1") + body[sig_at + 1 :]
    )
    info = parse_tcb_info(flipped)
    chain = x509.load_pem_x509_certificates((attestation_dir / SIGNING_2025).read_bytes())
    with pytest.raises(CollateralError):
        tdx.verify_tcb_documents(
            tcb_info=info, signing_chain=chain, anchors=[intel_sgx_root_ca()], now=at(case.now)
        )


# ------------------------------------------------------------------------ appraisal


def test_appraise_real_quotes(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    up, out = FULL[0], FULL[1]
    for case, accepted in ((up, True), (out, False)):
        q = quote_of(attestation_dir, case.quote)
        coll = IntelCollateral.from_dir(attestation_dir / case.collateral)
        v = tdx.verify(q, anchors=[intel_sgx_root_ca()], collateral=coll, now=at(case.now))
        body = manifest["files"][case.quote]["expected"]["fields"]["body"]
        policy = tdx.TdxPolicy(
            mrtds=(body["mrtd"],),
            rtmr0=body["rtmr0"],
            mrseams=(body["mrseam"],),
            report_data=body["report_data"],
            td_attributes=body["td_attributes"],
            xfam=body["xfam"],
            min_tee_tcb_svn=body["tee_tcb_svn"],
        )
        result = tdx.appraise(v, policy)
        assert result.tee == "tdx" and result.accepted is accepted
        assert result.claims["mrtd"] == body["mrtd"]
        assert result.claims["tcb_status"] == str(case.status)
        if not accepted:
            assert result.violations[0] == "tcb status OutOfDate not accepted"
            assert all(x.startswith(("tcb status", "advisory")) for x in result.violations)
            lenient = policy.model_copy(
                update={"accepted_tcb_statuses": frozenset(TcbStatus) - {TcbStatus.REVOKED}}
            )
            assert tdx.appraise(v, lenient).accepted


def test_report_types_are_td_reports(attestation_dir: Path) -> None:
    for name in QUOTES:
        assert isinstance(quote_of(attestation_dir, name).body, TdReport10)
