"""SgxPolicy loading and appraise(): every check, every violation, emulated handling."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from teeflow.attestation.appraisal import EarStatus
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.sgx.policy import EMULATED_WARNING, SgxPolicy, appraise
from teeflow.errors import ParseError, PolicyViolation

# Phala SGX quote facts (../shared/testdata/attestation/README.md).
MRENCLAVE = bytes.fromhex("33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb")
MRSIGNER = bytes.fromhex("815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6")
REPORT_DATA = b"Hello, world!".ljust(64, b"\0")
CPU_SVN = bytes.fromhex("0b0b1a18ffff04000000000000000000")
NOW = datetime(2025, 7, 1, tzinfo=UTC)
OTHER = "ab" * 32


@dataclass(frozen=True)
class FakeReport:
    mr_enclave: bytes = MRENCLAVE
    mr_signer: bytes = MRSIGNER
    isv_prod_id: int = 0
    isv_svn: int = 0
    report_data: bytes = REPORT_DATA
    cpu_svn: bytes = CPU_SVN
    attributes: bytes = bytes.fromhex("0500000000000000e700000000000000")

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True)
class FakeEvidence:
    """Stand-in with the attributes of VerifiedSgxEvidence that appraise() reads."""

    report: FakeReport = field(default_factory=FakeReport)
    emulated: bool = False
    verified_at: datetime = NOW
    tcb_status: TcbStatus | None = TcbStatus.UP_TO_DATE
    advisory_ids: tuple[str, ...] = ()
    collateral_verified: bool = True


def good_policy(**kw: object) -> SgxPolicy:
    base: dict[str, object] = {
        "mrenclaves": [MRENCLAVE.hex()],
        "mrsigner": MRSIGNER.hex(),
        "isv_prod_id": 0,
        "min_isv_svn": 0,
    }
    base.update(kw)
    return SgxPolicy.from_mapping(base)


DEBUG_ATTRS = bytes.fromhex("0700000000000000e700000000000000")


# ---------------------------------------------------------------- policy documents


def test_defaults_are_strict() -> None:
    p = SgxPolicy()
    assert p.accepted_tcb_statuses == frozenset({TcbStatus.UP_TO_DATE})
    assert p.allow_emulated is False
    assert p.allow_debug is False
    assert p.require_collateral is True
    assert p.mrenclaves == ()
    assert p.accepted_advisories is None  # advisories follow the accepted TCB status


def test_yaml_round_trip(tmp_path: Path) -> None:
    text = f"""
policy_id: teeflow/test-aggregator
mrenclaves:
  - {MRENCLAVE.hex().upper()}
  - "0x{OTHER}"
mrsigner: {MRSIGNER.hex()}
isv_prod_id: 0
min_isv_svn: 1
min_cpu_svn: {CPU_SVN.hex()}
allow_debug: false
accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]
accepted_advisories: [intel-sa-00615]
report_data_prefix: "48656c6c6f"
allow_emulated: true
require_collateral: false
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    p = SgxPolicy.from_file(path)
    assert p.mrenclaves == (MRENCLAVE.hex(), OTHER)  # normalised lower case, 0x stripped
    assert p.accepted_tcb_statuses == {TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED}
    assert p.accepted_advisories == {"INTEL-SA-00615"}
    assert p.report_data_prefix == "48656c6c6f"
    assert p.identifier() == "teeflow/test-aggregator"

    out = tmp_path / "out.yaml"
    out.write_text(p.to_yaml())
    assert SgxPolicy.from_file(out) == p
    js = tmp_path / "out.json"
    js.write_text(json.dumps(p.to_mapping()))
    again = SgxPolicy.from_file(js)
    assert again == p
    assert again.digest() == p.digest()


def test_identifier_defaults_to_content_digest() -> None:
    a = good_policy()
    b = good_policy(mrsigner=MRSIGNER.hex().upper())
    assert a.identifier() == b.identifier() == f"sha256:{a.digest()}"
    assert good_policy(min_isv_svn=1).identifier() != a.identifier()


def test_set_fields_serialise_sorted() -> None:
    p = SgxPolicy(accepted_tcb_statuses={TcbStatus.SW_HARDENING_NEEDED, TcbStatus.UP_TO_DATE})
    assert p.to_mapping()["accepted_tcb_statuses"] == ["SWHardeningNeeded", "UpToDate"]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"allow_emulate": True}, "allow_emulate"),  # typo: unknown key
        ({"mrenclaves": ["zz" * 32]}, "mrenclaves"),
        ({"mrenclaves": ["ab" * 31]}, "expected 32 bytes"),
        ({"mrsigner": "ab" * 33}, "mrsigner"),
        ({"report_data": "ab" * 32}, "expected 64 bytes"),
        ({"report_data_prefix": "ab" * 65}, "report_data_prefix"),
        ({"report_data": "00" * 64, "report_data_prefix": "00"}, "not both"),
        ({"accepted_tcb_statuses": ["Bogus"]}, "accepted_tcb_statuses"),
        ({"accepted_tcb_statuses": ["Revoked"]}, "Revoked"),
        ({"isv_prod_id": 70000}, "isv_prod_id"),
        ({"min_isv_svn": -1}, "min_isv_svn"),
        ({"min_cpu_svn": "00" * 15}, "min_cpu_svn"),
        ({"accepted_advisories": [""]}, "accepted_advisories"),
    ],
)
def test_invalid_policy_documents(doc: dict[str, object], fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment):
        SgxPolicy.from_mapping(doc)


def test_policy_is_frozen() -> None:
    p = SgxPolicy()
    with pytest.raises(Exception, match="frozen"):
        p.allow_emulated = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("dup.yaml", "allow_emulated: false\nallow_emulated: true\n", "duplicate key"),
        ("dup.json", '{"allow_debug": false, "allow_debug": true}', "duplicate key"),
        ("bad.yaml", "mrenclaves: [unclosed\n", "not valid YAML"),
        ("bad.json", "{nope", "not valid JSON"),
        ("list.yaml", "- a\n- b\n", "must be a mapping"),
        ("obj.yaml", "!!python/object:os.system {}\n", "not valid YAML"),
        ("num.yaml", "report_data_prefix: 4865\n", "quote them in YAML"),
        ("octal.yaml", "mrsigner: 0x" + "00" * 32 + "\n", "quote them in YAML"),
    ],
)
def test_bad_policy_files(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ParseError, match=fragment):
        SgxPolicy.from_file(path)


def test_missing_and_binary_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot read"):
        SgxPolicy.from_file(tmp_path / "absent.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ParseError, match="not UTF-8"):
        SgxPolicy.from_file(bad)


# ---------------------------------------------------------------- appraisal


def test_all_checks_pass_affirming() -> None:
    result = appraise(FakeEvidence(), good_policy(report_data=REPORT_DATA.hex()))
    assert result.accepted
    assert result.status is EarStatus.AFFIRMING
    assert result.violations == ()
    assert result.warnings == ()
    assert result.tee == "sgx"
    tv = result.trust_vector
    assert (tv.executables, tv.configuration, tv.hardware) == (2, 2, 2)
    assert (tv.runtime_opaque, tv.instance_identity) == (2, 2)
    assert result.claims["mrenclave"] == MRENCLAVE.hex()
    assert result.claims["mrsigner"] == MRSIGNER.hex()
    assert result.claims["report_data"] == REPORT_DATA.hex()
    assert result.claims["tcb_status"] == "UpToDate"
    assert result.claims["debug"] is False
    assert "teeflow.emulated" not in result.claims
    assert result.verified_at == NOW
    assert result.raise_for_status() is result


DEBUG_REPORT = FakeReport(attributes=DEBUG_ATTRS)
NO_COLLATERAL = FakeEvidence(tcb_status=None, collateral_verified=False)
MIN_CPU = "0c" + "00" * 15
INDIVIDUAL_VIOLATIONS = [
    (FakeEvidence(), good_policy(mrenclaves=[OTHER]),
     f"mrenclave {MRENCLAVE.hex()} not in allowed list"),
    (FakeEvidence(), good_policy(mrsigner=OTHER),
     f"mrsigner {MRSIGNER.hex()} does not match expected {OTHER}"),
    (FakeEvidence(), good_policy(isv_prod_id=1), "isv_prod_id 0 does not match expected 1"),
    (FakeEvidence(), good_policy(min_isv_svn=1), "isv_svn 0 below minimum 1"),
    (FakeEvidence(report=DEBUG_REPORT), good_policy(), "debug enclave not allowed"),
    (FakeEvidence(), good_policy(report_data="00" * 64),
     "report_data does not match expected value"),
    (FakeEvidence(), good_policy(report_data_prefix="4865ff"),
     "report_data does not start with expected prefix"),
    (FakeEvidence(emulated=True), good_policy(), "emulated evidence not allowed"),
    (NO_COLLATERAL, good_policy(), "TCB status unknown (no collateral)"),
    (FakeEvidence(tcb_status=TcbStatus.OUT_OF_DATE), good_policy(),
     "tcb status OutOfDate not accepted"),
    (FakeEvidence(advisory_ids=("INTEL-SA-00615",)), good_policy(accepted_advisories=[]),
     "advisory INTEL-SA-00615 not accepted"),
    (FakeEvidence(), good_policy(min_cpu_svn=MIN_CPU),
     f"cpu_svn {CPU_SVN.hex()} below minimum {MIN_CPU}"),
]  # fmt: skip


@pytest.mark.parametrize(("evidence", "policy", "violation"), INDIVIDUAL_VIOLATIONS)
def test_each_violation_individually(
    evidence: FakeEvidence, policy: SgxPolicy, violation: str
) -> None:
    result = appraise(evidence, policy)
    assert result.violations == (violation,)
    assert not result.accepted
    assert result.status is EarStatus.CONTRAINDICATED
    assert result.trust_vector.status is EarStatus.CONTRAINDICATED
    with pytest.raises(PolicyViolation) as info:
        result.raise_for_status()
    assert info.value.violations == [violation]
    assert info.value.code == "policy"


def test_all_violations_at_once() -> None:
    evidence = FakeEvidence(
        report=FakeReport(attributes=DEBUG_ATTRS),
        emulated=True,
        tcb_status=TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        advisory_ids=("INTEL-SA-00289", "INTEL-SA-00615"),
    )
    policy = SgxPolicy(
        mrenclaves=(OTHER,),
        mrsigner=OTHER,
        isv_prod_id=7,
        min_isv_svn=2,
        report_data="00" * 64,
        min_cpu_svn="ff" * 16,
        accepted_advisories=(),
    )
    result = appraise(evidence, policy)
    assert list(result.violations) == [
        "emulated evidence not allowed",
        f"mrenclave {MRENCLAVE.hex()} not in allowed list",
        f"mrsigner {MRSIGNER.hex()} does not match expected {OTHER}",
        "isv_prod_id 0 does not match expected 7",
        "isv_svn 0 below minimum 2",
        "debug enclave not allowed",
        "report_data does not match expected value",
        "tcb status ConfigurationAndSWHardeningNeeded not accepted",
        "advisory INTEL-SA-00289 not accepted",
        "advisory INTEL-SA-00615 not accepted",
        f"cpu_svn {CPU_SVN.hex()} below minimum {'ff' * 16}",
    ]
    assert result.status is EarStatus.CONTRAINDICATED
    assert result.tee == "emulated-sgx"
    tv = result.trust_vector
    assert tv.hardware == 97  # unrecognized: emulation root
    assert tv.executables == 96
    assert tv.configuration == 96
    assert tv.runtime_opaque == 96
    assert tv.instance_identity == 97
    with pytest.raises(PolicyViolation) as info:
        result.raise_for_status()
    assert info.value.violations == list(result.violations)


def test_emulated_denied_by_default_exact_message() -> None:
    result = appraise(FakeEvidence(emulated=True), SgxPolicy(mrenclaves=(MRENCLAVE.hex(),)))
    assert result.violations == ("emulated evidence not allowed",)
    assert result.claims["teeflow.emulated"] is True
    assert result.status is EarStatus.CONTRAINDICATED


def test_emulated_allowed_is_warning_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    policy = good_policy(allow_emulated=True)
    caplog.set_level(logging.WARNING, logger="teeflow")
    for _ in range(2):
        result = appraise(FakeEvidence(emulated=True), policy)
        assert result.accepted
        assert result.status is EarStatus.WARNING
        assert result.claims["teeflow.emulated"] is True
        assert result.emulated
        assert result.tee == "emulated-sgx"
        assert result.trust_vector.hardware == 32
        assert result.trust_vector.runtime_opaque == 0  # no memory protection claimed
        assert "emulated evidence accepted by policy (not hardware)" in result.warnings
    records = [r for r in caplog.records if EMULATED_WARNING in r.getMessage()]
    # logged at once, then throttled (once a minute with a count): each acceptance is
    # still in the result's warnings above and, at the KBS, in the audit log
    assert len(records) == 1
    assert all(r.levelno == logging.WARNING for r in records)


def test_emulated_logs_to_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("kbs.test")
    caplog.set_level(logging.WARNING, logger="kbs.test")
    appraise(FakeEvidence(emulated=True), good_policy(allow_emulated=True), logger=logger)
    assert [r.name for r in caplog.records if EMULATED_WARNING in r.getMessage()] == ["kbs.test"]


def test_accepted_lesser_tcb_and_advisories_is_warning() -> None:
    evidence = FakeEvidence(
        tcb_status=TcbStatus.SW_HARDENING_NEEDED, advisory_ids=("INTEL-SA-00615",)
    )
    policy = good_policy(
        accepted_tcb_statuses=["UpToDate", "SWHardeningNeeded"],
        accepted_advisories=["intel-sa-00615"],
    )
    result = appraise(evidence, policy)
    assert result.accepted
    assert result.status is EarStatus.WARNING
    assert result.trust_vector.hardware == 32
    assert result.warnings == (
        "tcb status SWHardeningNeeded accepted by policy",
        "advisory INTEL-SA-00615 accepted by policy",
    )
    assert result.claims["advisories"] == ("INTEL-SA-00615",)


def test_accepted_tcb_with_one_unaccepted_advisory() -> None:
    evidence = FakeEvidence(
        tcb_status=TcbStatus.SW_HARDENING_NEEDED,
        advisory_ids=("INTEL-SA-00289", "INTEL-SA-00615"),
    )
    policy = good_policy(
        accepted_tcb_statuses=["SWHardeningNeeded"], accepted_advisories=["INTEL-SA-00289"]
    )
    result = appraise(evidence, policy)
    assert result.violations == ("advisory INTEL-SA-00615 not accepted",)
    assert result.trust_vector.hardware == 96


def test_no_collateral_allowed_by_policy() -> None:
    evidence = FakeEvidence(tcb_status=None, collateral_verified=False)
    result = appraise(evidence, good_policy(require_collateral=False))
    assert result.accepted
    assert result.status is EarStatus.WARNING
    assert result.warnings == ("TCB status unknown (no collateral); accepted by policy",)
    assert result.trust_vector.hardware == 0
    assert result.claims["tcb_status"] is None


def test_unverified_collateral_status_is_ignored() -> None:
    # A TCB status not backed by verified collateral counts as unknown.
    evidence = FakeEvidence(tcb_status=TcbStatus.UP_TO_DATE, collateral_verified=False)
    result = appraise(evidence, good_policy())
    assert result.violations == ("TCB status unknown (no collateral)",)


def test_debug_allowed_is_warning() -> None:
    result = appraise(
        FakeEvidence(report=FakeReport(attributes=DEBUG_ATTRS)), good_policy(allow_debug=True)
    )
    assert result.accepted
    assert result.status is EarStatus.WARNING
    assert result.claims["debug"] is True
    assert result.trust_vector.configuration == 32


def test_empty_identity_accepts_any_enclave_with_warning() -> None:
    result = appraise(FakeEvidence(), SgxPolicy())
    assert result.accepted
    assert result.status is EarStatus.WARNING
    assert result.warnings == ("policy constrains no enclave identity (any enclave accepted)",)
    assert result.trust_vector.executables == 33


def test_mrsigner_only_policy_is_affirming() -> None:
    result = appraise(FakeEvidence(), SgxPolicy(mrsigner=MRSIGNER.hex()))
    assert result.status is EarStatus.AFFIRMING
    assert result.trust_vector.executables == 2


def test_report_data_binding_helpers() -> None:
    p = good_policy(report_data_prefix="48656c6c6f")
    assert appraise(FakeEvidence(), p).accepted
    bound = p.with_report_data(REPORT_DATA)
    assert bound.report_data == REPORT_DATA.hex() and bound.report_data_prefix is None
    assert appraise(FakeEvidence(), bound).trust_vector.instance_identity == 2
    other = dataclasses.replace(FakeEvidence().report, report_data=b"\1" * 64)
    assert not appraise(FakeEvidence(report=other), bound).accepted
    with pytest.raises(ValueError, match="64 bytes"):
        p.with_report_data(b"short")


def test_cpu_svn_component_wise() -> None:
    # Equal on every component passes; one lower component fails even if others are higher.
    assert appraise(FakeEvidence(), good_policy(min_cpu_svn=CPU_SVN.hex())).accepted
    minimum = "0a0c" + "00" * 14
    result = appraise(FakeEvidence(), good_policy(min_cpu_svn=minimum))
    assert result.violations == (f"cpu_svn {CPU_SVN.hex()} below minimum {minimum}",)


def test_claims_are_read_only() -> None:
    result = appraise(FakeEvidence(), good_policy())
    with pytest.raises(TypeError):
        result.claims["mrenclave"] = "x"  # type: ignore[index]


# ---------------------------------------------------------------- real evidence (shared vectors)

PHALA_COLLATERAL = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"
PHALA_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")


@pytest.fixture(scope="module")
def phala_verified(attestation_dir: Path) -> Any:
    from teeflow.attestation.dcap.collateral import IntelCollateral
    from teeflow.attestation.sgx import parse_quote, verify
    from teeflow.attestation.trust import intel_sgx_root_ca

    quote = parse_quote((attestation_dir / "sgx/phala_sgx_quote_v3.bin").read_bytes())
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_COLLATERAL)
    return verify(quote, anchors=[intel_sgx_root_ca()], collateral=collateral, now=NOW)


@pytest.mark.vectors
def test_real_phala_quote_default_policy_rejects(phala_verified: Any) -> None:
    result = appraise(phala_verified, SgxPolicy(mrenclaves=(MRENCLAVE.hex(),)))
    assert result.violations == ("tcb status ConfigurationAndSWHardeningNeeded not accepted",)
    explicit = appraise(
        phala_verified, SgxPolicy(mrenclaves=(MRENCLAVE.hex(),), accepted_advisories=())
    )
    assert explicit.violations == (
        "tcb status ConfigurationAndSWHardeningNeeded not accepted",
        "advisory INTEL-SA-00289 not accepted",
        "advisory INTEL-SA-00615 not accepted",
    )
    assert result.status is EarStatus.CONTRAINDICATED
    assert result.tee == "sgx"
    assert result.trust_vector.hardware == 96
    assert result.claims["mrenclave"] == MRENCLAVE.hex()
    assert result.claims["mrsigner"] == MRSIGNER.hex()
    assert result.claims["report_data"] == REPORT_DATA.hex()
    assert result.claims["advisories"] == PHALA_ADVISORIES
    assert result.verified_at == NOW
    with pytest.raises(PolicyViolation):
        result.raise_for_status()


@pytest.mark.vectors
def test_real_phala_quote_accepting_policy_warns(phala_verified: Any) -> None:
    policy = SgxPolicy.from_mapping(
        {
            "mrenclaves": [MRENCLAVE.hex()],
            "mrsigner": MRSIGNER.hex(),
            "isv_prod_id": 0,
            "report_data_prefix": b"Hello, world!".hex(),
            "accepted_tcb_statuses": ["UpToDate", "ConfigurationAndSWHardeningNeeded"],
            "accepted_advisories": list(PHALA_ADVISORIES),
        }
    )
    result = appraise(phala_verified, policy)
    assert result.accepted
    assert result.violations == ()
    assert result.status is EarStatus.WARNING  # accepted, but the TCB is not UpToDate
    assert result.warnings == (
        "tcb status ConfigurationAndSWHardeningNeeded accepted by policy",
        "advisory INTEL-SA-00289 accepted by policy",
        "advisory INTEL-SA-00615 accepted by policy",
    )
    tv = result.trust_vector
    assert (tv.hardware, tv.executables, tv.configuration) == (32, 2, 2)
    assert (tv.runtime_opaque, tv.instance_identity) == (2, 2)
    assert result.claims["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert "teeflow.emulated" not in result.claims

    # End to end: the result travels as an EAR and verifies with the same status.
    from teeflow.attestation.ear import generate_ear_signing_key, issue_ear, verify_ear

    key = generate_ear_signing_key()
    token = issue_ear(result, signing_key=key, now=NOW, nonce=REPORT_DATA[:32])
    ear = verify_ear(token, key, now=NOW, nonce=REPORT_DATA[:32])
    assert ear.submods["cpu0"].status is EarStatus.WARNING
    assert ear.submods["cpu0"].claims["mrenclave"] == MRENCLAVE.hex()
    assert ear.submods["cpu0"].policy_id == policy.identifier()


def test_default_advisories_follow_the_accepted_tcb_status() -> None:
    evidence = FakeEvidence(
        tcb_status=TcbStatus.SW_HARDENING_NEEDED,
        advisory_ids=("INTEL-SA-00289", "INTEL-SA-00615"),
    )
    result = appraise(evidence, good_policy(accepted_tcb_statuses=["SWHardeningNeeded"]))
    assert result.accepted
    assert result.status is EarStatus.WARNING
    assert "advisory INTEL-SA-00289 accepted by policy" in result.warnings
    assert "advisory INTEL-SA-00615 accepted by policy" in result.warnings


def test_emulated_warning_throttled_with_count(caplog: pytest.LogCaptureFixture) -> None:
    """Under load the same acceptance is logged once, then once a minute with a count (the
    audit log keeps every acceptance); another subject is logged at once."""
    from teeflow.attestation.appraise_common import _ThrottledWarning

    log = logging.getLogger("kbs.throttle")
    caplog.set_level(logging.WARNING, logger="kbs.throttle")
    throttle = _ThrottledWarning(interval=3600.0)
    for _ in range(5):
        throttle.warn(log, EMULATED_WARNING, ("mrenclave", "aa"))
    throttle.warn(log, EMULATED_WARNING, ("mrenclave", "bb"))
    assert [r.getMessage().split("(")[1] for r in caplog.records] == ["mrenclave aa)",
                                                                      "mrenclave bb)"]
    expired = _ThrottledWarning(interval=0.0)
    expired.warn(log, EMULATED_WARNING, ("mrenclave", "cc"))
    expired.warn(log, EMULATED_WARNING, ("mrenclave", "cc"))
    assert caplog.records[-1].getMessage().endswith("mrenclave cc)")
