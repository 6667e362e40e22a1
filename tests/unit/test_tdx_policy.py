"""TdxPolicy loading and appraise(): every check, each violation alone and all at once."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from teeflow.attestation.appraisal import EarStatus
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.tdx.policy import EMULATED_WARNING, TdxPolicy, appraise
from teeflow.errors import ParseError, PolicyViolation

NOW = datetime(2025, 11, 1, tzinfo=UTC)
MRTD = bytes.fromhex("21e8dead" * 12)
RTMRS = tuple(bytes([0x10 + i]) * 48 for i in range(4))
MRSEAM = bytes.fromhex("476a2997" * 12)
MRCONFIGID = bytes.fromhex("889abf47" * 12)
TD_ATTRS = bytes.fromhex("0000001000000000")
XFAM = bytes.fromhex("e702060000000000")
SVN = bytes.fromhex("05030200000000000000000000000000")
RD = b"binding".ljust(64, b"\0")
OTHER48 = "ab" * 48


def td_report(**kw: bytes) -> TdReport10:
    fields: dict[str, bytes] = {
        "tee_tcb_svn": SVN,
        "mr_seam": MRSEAM,
        "mr_signer_seam": bytes(48),
        "seam_attributes": bytes(8),
        "td_attributes": TD_ATTRS,
        "xfam": XFAM,
        "mr_td": MRTD,
        "mr_config_id": MRCONFIGID,
        "mr_owner": bytes(48),
        "mr_owner_config": bytes(48),
        "rtmr0": RTMRS[0],
        "rtmr1": RTMRS[1],
        "rtmr2": RTMRS[2],
        "rtmr3": RTMRS[3],
        "report_data": RD,
    }
    fields.update(kw)
    return TdReport10(**fields)


@dataclass(frozen=True)
class FakeEvidence:
    """Stand-in with the attributes of VerifiedTdxEvidence that appraise() reads."""

    report: TdReport10 = field(default_factory=td_report)
    emulated: bool = False
    verified_at: datetime = NOW
    tcb_status: TcbStatus | None = TcbStatus.UP_TO_DATE
    advisory_ids: tuple[str, ...] = ()
    relaunch_advised: bool = False
    collateral_verified: bool = True


def good_policy(**kw: object) -> TdxPolicy:
    base: dict[str, object] = {
        "mrtds": [MRTD.hex()],
        "rtmr0": RTMRS[0].hex(),
        "rtmr1": RTMRS[1].hex(),
        "rtmr2": RTMRS[2].hex(),
        "rtmr3": RTMRS[3].hex(),
        "mrseams": [MRSEAM.hex()],
        "mrconfigid": MRCONFIGID.hex(),
        "mrowner": "00" * 48,
        "mrownerconfig": "00" * 48,
        "td_attributes": TD_ATTRS.hex(),
        "xfam": XFAM.hex(),
        "min_tee_tcb_svn": SVN.hex(),
        "report_data": RD.hex(),
    }
    base.update(kw)
    return TdxPolicy.from_mapping(base)


# ---------------------------------------------------------------- policy documents


def test_defaults_are_strict() -> None:
    p = TdxPolicy()
    assert p.accepted_tcb_statuses == frozenset({TcbStatus.UP_TO_DATE})
    assert not p.allow_emulated and not p.allow_debug and p.require_collateral
    assert p.mrtds == () and p.rtmrs() == (None, None, None, None)
    assert p.accepted_advisories is None


def test_yaml_round_trip(tmp_path: Path) -> None:
    p = good_policy(policy_id="teeflow/tdx/test", accepted_advisories=["intel-sa-00001"])
    path = tmp_path / "p.yaml"
    path.write_text(p.to_yaml())
    q = TdxPolicy.from_file(path)
    assert q == p and q.identifier() == "teeflow/tdx/test"
    assert q.accepted_advisories == frozenset({"INTEL-SA-00001"})
    assert TdxPolicy.from_mapping({"mrtds": [MRTD.hex().upper()]}).mrtds == (MRTD.hex(),)


@pytest.mark.parametrize(
    "doc",
    [
        {"mrtd": MRTD.hex()},  # unknown key (the field is ``mrtds``)
        {"mrtds": ["00" * 47]},
        {"rtmr2": "zz" * 48},
        {"td_attributes": "00" * 9},
        {"xfam": 0},
        {"min_tee_tcb_svn": "00" * 15},
        {"accepted_tcb_statuses": ["Revoked"]},
        {"accepted_tcb_statuses": ["Fine"]},
        {"report_data": "00" * 64, "report_data_prefix": "00"},
        {"accepted_advisories": [""]},
    ],
)
def test_invalid_documents(doc: dict[str, Any]) -> None:
    with pytest.raises(ParseError):
        TdxPolicy.from_mapping(doc)


# ---------------------------------------------------------------- appraisal


def test_good_evidence_is_affirmed() -> None:
    result = appraise(FakeEvidence(), good_policy())
    assert result.accepted and result.violations == () and result.warnings == ()
    assert result.status is EarStatus.AFFIRMING and result.tee == "tdx"
    v = result.trust_vector
    assert (v.executables, v.hardware, v.configuration, v.runtime_opaque) == (2, 2, 2, 2)
    assert v.instance_identity == 2
    c = result.claims
    assert c["mrtd"] == MRTD.hex() and c["rtmrs"] == tuple(r.hex() for r in RTMRS)
    assert c["mrseam"] == MRSEAM.hex() and c["td_attributes"] == TD_ATTRS.hex()
    assert c["xfam"] == XFAM.hex() and c["tcb_status"] == "UpToDate"
    assert c["advisories"] == () and c["report_data"] == RD.hex()
    assert c["debug"] is False and c["relaunch_advised"] is False
    assert "teeflow.emulated" not in c and "tee_tcb_svn2" not in c
    assert result.raise_for_status() is result


def test_td15_claims() -> None:
    base = dataclasses.asdict(td_report())
    r15 = TdReport15(**base, tee_tcb_svn2=SVN, mr_service_td=b"\x07" * 48)
    result = appraise(FakeEvidence(report=r15), good_policy())
    assert result.accepted
    assert result.claims["tee_tcb_svn2"] == SVN.hex()
    assert result.claims["mrservicetd"] == "07" * 48


# (policy override, evidence override, violation text, trust-vector claim, value)
VIOLATIONS: list[tuple[dict[str, Any], dict[str, Any], str, str, int]] = [
    ({"mrtds": [OTHER48]}, {}, f"mrtd {MRTD.hex()} not in allowed list", "executables", 96),
    (
        {"rtmr2": OTHER48},
        {},
        f"rtmr2 {RTMRS[2].hex()} does not match expected {OTHER48}",
        "executables",
        96,
    ),
    ({"mrseams": [OTHER48]}, {}, f"mrseam {MRSEAM.hex()} not in allowed list", "executables", 96),
    (
        {"mrconfigid": OTHER48},
        {},
        f"mrconfigid {MRCONFIGID.hex()} does not match expected {OTHER48}",
        "configuration",
        96,
    ),
    (
        {"mrowner": OTHER48},
        {},
        f"mrowner {'00' * 48} does not match expected {OTHER48}",
        "configuration",
        96,
    ),
    (
        {"mrownerconfig": OTHER48},
        {},
        f"mrownerconfig {'00' * 48} does not match expected {OTHER48}",
        "configuration",
        96,
    ),
    (
        {"td_attributes": "0000000000000000"},
        {},
        "td_attributes 0000001000000000 does not match expected 0000000000000000",
        "configuration",
        96,
    ),
    (
        {"xfam": "e700000000000000"},
        {},
        "xfam e702060000000000 does not match expected e700000000000000",
        "configuration",
        96,
    ),
    ({"td_attributes": None}, {"debug": True}, "debug TD not allowed", "runtime_opaque", 96),
    (
        {"report_data": "11" * 64},
        {},
        "report_data does not match expected value",
        "instance_identity",
        97,
    ),
    (
        {"report_data": None, "report_data_prefix": "ffee"},
        {},
        "report_data does not start with expected prefix",
        "instance_identity",
        97,
    ),
    ({}, {"collateral": False}, "TCB status unknown (no collateral)", "hardware", 97),
    ({}, {"status": TcbStatus.OUT_OF_DATE}, "tcb status OutOfDate not accepted", "hardware", 96),
    (
        {"accepted_advisories": []},
        {"advisories": ("INTEL-SA-01036",)},
        "advisory INTEL-SA-01036 not accepted",
        "hardware",
        96,
    ),
    (
        {"min_tee_tcb_svn": "04040000000000000000000000000000"},
        {},
        f"tee_tcb_svn {SVN.hex()} below minimum 04040000000000000000000000000000",
        "hardware",
        96,
    ),
    ({}, {"emulated": True}, "emulated evidence not allowed", "hardware", 97),
]


def evidence(ev: dict[str, Any]) -> FakeEvidence:
    report = td_report()
    if ev.get("debug"):
        report = dataclasses.replace(report, td_attributes=b"\x01" + TD_ATTRS[1:])
    return FakeEvidence(
        report=report,
        emulated=ev.get("emulated", False),
        tcb_status=ev.get("status", TcbStatus.UP_TO_DATE),
        advisory_ids=ev.get("advisories", ()),
        collateral_verified=ev.get("collateral", True),
    )


@pytest.mark.parametrize(
    ("pol", "ev", "text", "claim", "value"), VIOLATIONS, ids=[v[2][:40] for v in VIOLATIONS]
)
def test_each_violation(
    pol: dict[str, Any], ev: dict[str, Any], text: str, claim: str, value: int
) -> None:
    result = appraise(evidence(ev), good_policy(**pol))
    assert result.violations == (text,)
    assert not result.accepted and result.status is EarStatus.CONTRAINDICATED
    assert getattr(result.trust_vector, claim) == value
    with pytest.raises(PolicyViolation) as exc:
        result.raise_for_status()
    assert exc.value.violations == [text]


def test_all_violations_at_once() -> None:
    pol: dict[str, Any] = {}
    ev: dict[str, Any] = {}
    for p, e, *_ in VIOLATIONS:
        if "report_data_prefix" in p or ("td_attributes" in p and p["td_attributes"] is None):
            continue  # exclusive with report_data / td_attributes rows
        pol.update(p)
        ev.update(e)
    ev["debug"] = True
    result = appraise(evidence(ev), good_policy(**pol))
    debug_attrs = "0100001000000000"
    expected = [
        "emulated evidence not allowed",
        f"mrtd {MRTD.hex()} not in allowed list",
        f"rtmr2 {RTMRS[2].hex()} does not match expected {OTHER48}",
        f"mrseam {MRSEAM.hex()} not in allowed list",
        f"mrconfigid {MRCONFIGID.hex()} does not match expected {OTHER48}",
        f"mrowner {'00' * 48} does not match expected {OTHER48}",
        f"mrownerconfig {'00' * 48} does not match expected {OTHER48}",
        f"td_attributes {debug_attrs} does not match expected 0000000000000000",
        "xfam e702060000000000 does not match expected e700000000000000",
        "debug TD not allowed",
        "report_data does not match expected value",
        "TCB status unknown (no collateral)",
        "advisory INTEL-SA-01036 not accepted",
        f"tee_tcb_svn {SVN.hex()} below minimum 04040000000000000000000000000000",
    ]
    assert list(result.violations) == expected
    assert result.tee == "emulated-tdx" and result.claims["teeflow.emulated"] is True
    v = result.trust_vector
    assert (v.executables, v.configuration, v.runtime_opaque) == (96, 96, 96)
    assert (v.instance_identity, v.hardware) == (97, 97)


def test_status_and_advisories_both_reported() -> None:
    ev = FakeEvidence(tcb_status=TcbStatus.OUT_OF_DATE, advisory_ids=("INTEL-SA-1", "INTEL-SA-2"))
    result = appraise(ev, good_policy(accepted_advisories=["INTEL-SA-1"]))
    assert result.violations == (
        "tcb status OutOfDate not accepted",
        "advisory INTEL-SA-2 not accepted",
    )


def test_lesser_status_and_advisories_accepted_with_warnings() -> None:
    ev = FakeEvidence(
        tcb_status=TcbStatus.OUT_OF_DATE, advisory_ids=("INTEL-SA-1",), relaunch_advised=True
    )
    policy = good_policy(accepted_tcb_statuses=["UpToDate", "OutOfDate"])
    result = appraise(ev, policy)
    assert result.accepted and result.status is EarStatus.WARNING
    assert result.trust_vector.hardware == 32
    assert result.warnings == (
        "tcb status OutOfDate accepted by policy",
        "TD relaunch advised: the TDX module was updated after launch",
        "advisory INTEL-SA-1 accepted by policy",
    )


def test_debug_allowed_is_a_warning() -> None:
    ev = evidence({"debug": True})
    result = appraise(ev, good_policy(td_attributes=None, allow_debug=True))
    assert result.accepted and result.claims["debug"] is True
    assert result.trust_vector.configuration == 32 and result.trust_vector.runtime_opaque == 32
    assert "debug TD accepted by policy (memory readable by the host)" in result.warnings


def test_min_tee_tcb_svn_is_per_component() -> None:
    # 05 03 02 vs minimum 04 04 00: byte 1 is lower although the number would be larger.
    result = appraise(FakeEvidence(), good_policy(min_tee_tcb_svn="04040000" + "00" * 12))
    assert not result.accepted
    ok = appraise(FakeEvidence(), good_policy(min_tee_tcb_svn="05030100" + "00" * 12))
    assert ok.accepted


def test_no_identity_pinned_is_a_warning() -> None:
    result = appraise(FakeEvidence(), TdxPolicy())
    assert result.accepted and result.trust_vector.executables == 33
    assert "policy constrains no TD measurement (any TD accepted)" in result.warnings
    pinned_rtmr = appraise(FakeEvidence(), TdxPolicy(rtmr1=RTMRS[1].hex()))
    assert pinned_rtmr.trust_vector.executables == 2


def test_collateral_optional() -> None:
    ev = FakeEvidence(tcb_status=None, collateral_verified=False)
    result = appraise(ev, good_policy(require_collateral=False))
    assert result.accepted and result.claims["tcb_status"] is None
    assert "TCB status unknown (no collateral); accepted by policy" in result.warnings


def test_emulated_allowed_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = appraise(FakeEvidence(emulated=True), good_policy(allow_emulated=True))
    assert result.accepted and result.status is EarStatus.WARNING
    assert result.trust_vector.hardware == 32 and result.trust_vector.runtime_opaque == 0
    assert EMULATED_WARNING in caplog.text


def test_with_report_data() -> None:
    p = good_policy(report_data=None, report_data_prefix="aa").with_report_data(RD)
    assert p.report_data == RD.hex() and p.report_data_prefix is None
    assert appraise(FakeEvidence(), p).accepted
    with pytest.raises(ValueError):
        p.with_report_data(b"short")
