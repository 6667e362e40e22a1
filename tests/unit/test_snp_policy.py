"""SnpPolicy appraisal: each violation alone, all at once, emulation, loading."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from teeflow.attestation.appraisal import EarStatus
from teeflow.attestation.snp import (
    AttestationReport,
    GuestPolicy,
    PlatformInfo,
    SigningKey,
    SnpPolicy,
    SnpProduct,
    TcbMinimum,
    TcbVersion,
    appraise,
)
from teeflow.attestation.snp.abi import FirmwareVersion
from teeflow.errors import ParseError, PolicyViolation

NOW = datetime(2026, 3, 1, tzinfo=UTC)
TCB = TcbVersion.from_components(SnpProduct.MILAN, bootloader=4, tee=1, snp=24, microcode=219)
MEASUREMENT = "ab" * 48


@dataclass(frozen=True)
class Evidence:
    report: AttestationReport
    product: SnpProduct = SnpProduct.MILAN
    signing_key: SigningKey = SigningKey.VCEK
    emulated: bool = False
    verified_at: datetime = NOW


def make_report(**changes: object) -> AttestationReport:
    base = AttestationReport(
        version=3, guest_svn=5, policy=GuestPolicy.parse(0x30000), family_id=b"\x01" * 16,
        image_id=b"\x02" * 16, vmpl=0, signature_algo=1, current_tcb=TCB,
        platform_info=PlatformInfo(0x1), signer_info=0, report_data=b"\x07" * 64,
        measurement=bytes.fromhex(MEASUREMENT), host_data=b"\x03" * 32,
        id_key_digest=b"\x04" * 48, author_key_digest=b"\x05" * 48, report_id=bytes(32),
        report_id_ma=b"\xff" * 32, reported_tcb=TCB, cpuid_family=0x19, cpuid_model=1,
        cpuid_stepping=1, chip_id=b"\x09" * 64, committed_tcb=TCB,
        current_version=FirmwareVersion(1, 55, 29), committed_version=FirmwareVersion(1, 55, 29),
        launch_tcb=TCB, launch_mit_vector=None, current_mit_vector=None,
        signature=bytes(0x200),
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


STRICT = SnpPolicy(
    policy_id="test/snp",
    measurements=(MEASUREMENT,),
    host_data="03" * 32,
    id_key_digest="04" * 48,
    author_key_digest="05" * 48,
    family_id="01" * 16,
    image_id="02" * 16,
    min_guest_svn=5,
    min_tcb=TcbMinimum(bootloader=4, tee=1, snp=24, microcode=219),
    min_launch_tcb=TcbMinimum(snp=24),
    allow_smt=False,
    vmpl=0,
    allowed_products=frozenset({SnpProduct.MILAN}),
    allow_vlek=False,
    report_data="07" * 64,
)


def test_accepts_matching_evidence() -> None:
    result = appraise(Evidence(make_report(platform_info=PlatformInfo(0))), STRICT)
    assert result.accepted and result.violations == () and result.warnings == ()
    assert result.status is EarStatus.AFFIRMING and result.tee == "snp"
    assert result.policy_id == "test/snp"
    vec = result.trust_vector
    assert (vec.executables, vec.configuration, vec.hardware) == (2, 2, 2)
    assert (vec.runtime_opaque, vec.instance_identity) == (2, 2)
    assert result.claims["reported_tcb"] == TCB.components()
    assert result.claims["product"] == "Milan" and result.claims["signing_key"] == "VCEK"
    result.raise_for_status()


LOW = TcbVersion.from_components(SnpProduct.MILAN, bootloader=3, tee=1, snp=24, microcode=219)

VIOLATIONS: list[tuple[dict[str, object], dict[str, object], str]] = [
    ({"measurement": b"\x00" * 48}, {}, "measurement"),
    ({"host_data": bytes(32)}, {}, "host_data"),
    ({"id_key_digest": bytes(48)}, {}, "id_key_digest"),
    ({"author_key_digest": bytes(48)}, {}, "author_key_digest"),
    ({"family_id": bytes(16)}, {}, "family_id"),
    ({"image_id": bytes(16)}, {}, "image_id"),
    ({"guest_svn": 4}, {}, "guest_svn 4 below minimum 5"),
    ({"reported_tcb": LOW}, {}, "reported_tcb below minimum: bootloader 3 < 4"),
    ({"committed_tcb": LOW}, {}, "committed_tcb below minimum"),
    ({"current_tcb": LOW}, {}, "current_tcb below minimum"),
    ({"launch_tcb": TcbVersion(0)}, {}, "launch_tcb below minimum: snp 0 < 24"),
    ({"policy": GuestPolicy.parse(0xB0000)}, {}, "debugging"),
    ({"policy": GuestPolicy.parse(0x70000)}, {}, "migration agent"),
    ({"platform_info": PlatformInfo(1)}, {}, "SMT is enabled"),
    ({"vmpl": 2}, {}, "vmpl 2 not allowed (need == 0)"),
    ({"report_data": bytes(64)}, {}, "report_data does not match"),
    ({}, {"product": SnpProduct.GENOA}, "product Genoa not allowed"),
    ({}, {"signing_key": SigningKey.VLEK}, "VLEK-signed report not allowed"),
    ({}, {"emulated": True}, "emulated evidence not allowed"),
]


@pytest.mark.parametrize(("report_changes", "evidence_changes", "message"), VIOLATIONS)
def test_each_violation(
    report_changes: dict[str, object], evidence_changes: dict[str, object], message: str
) -> None:
    report = make_report(**{"platform_info": PlatformInfo(0), **report_changes})
    evidence = Evidence(report, **evidence_changes)  # type: ignore[arg-type]
    result = appraise(evidence, STRICT)
    assert not result.accepted
    assert len(result.violations) == 1, result.violations
    assert message in result.violations[0]
    assert result.status is EarStatus.CONTRAINDICATED
    with pytest.raises(PolicyViolation) as exc:
        result.raise_for_status()
    assert exc.value.violations == list(result.violations)


def test_all_violations_at_once() -> None:
    report_changes: dict[str, object] = {}
    evidence_changes: dict[str, object] = {}
    for r, e, _ in VIOLATIONS:
        if "policy" in r and "policy" in report_changes:
            continue
        report_changes.update(r)
        evidence_changes.update(e)
    report_changes["policy"] = GuestPolicy.parse(0xF0000)  # debug + migration agent
    evidence = Evidence(make_report(**report_changes), **evidence_changes)  # type: ignore[arg-type]
    result = appraise(evidence, STRICT)
    for _, _, message in VIOLATIONS:
        assert any(message in v for v in result.violations), message
    assert len(result.violations) == len(VIOLATIONS)


def test_vmpl_max_and_prefix() -> None:
    policy = SnpPolicy(max_vmpl=1, report_data_prefix="0707", min_tcb=TcbMinimum())
    assert appraise(Evidence(make_report(vmpl=1)), policy).accepted
    result = appraise(Evidence(make_report(vmpl=2, report_data=bytes(64))), policy)
    assert result.violations == (
        "vmpl 2 not allowed (need <= 1)",
        "report_data does not start with expected prefix",
    )


def test_permissive_policy_warns() -> None:
    result = appraise(Evidence(make_report()), SnpPolicy())
    assert result.accepted and result.status is EarStatus.WARNING
    assert any("no measurement" in w for w in result.warnings)
    assert any("no minimum TCB" in w for w in result.warnings)


def test_debug_and_migration_agent_allowed_with_warnings() -> None:
    policy = SnpPolicy(allow_debug=True, allow_migration_agent=True, min_tcb=TcbMinimum())
    result = appraise(Evidence(make_report(policy=GuestPolicy.parse(0xF0000))), policy)
    assert result.accepted and result.status is EarStatus.WARNING
    assert result.trust_vector.configuration == 32 and result.trust_vector.runtime_opaque == 32


def test_emulated_accepted_by_policy(caplog: pytest.LogCaptureFixture) -> None:
    policy = SnpPolicy(allow_emulated=True, measurements=(MEASUREMENT,), min_tcb=TcbMinimum())
    with caplog.at_level(logging.WARNING):
        result = appraise(Evidence(make_report(), emulated=True), policy)
    assert result.accepted and result.tee == "emulated-snp" and result.emulated
    assert result.status is EarStatus.WARNING and result.trust_vector.hardware == 32
    assert "EMULATED" in caplog.text


def test_turin_fmc_minimum() -> None:
    tcb = TcbVersion.from_components(
        SnpProduct.TURIN, bootloader=1, tee=1, snp=3, microcode=77, fmc=1
    )
    report = make_report(reported_tcb=tcb, current_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb)
    evidence = Evidence(report, product=SnpProduct.TURIN)
    assert appraise(evidence, SnpPolicy(min_tcb=TcbMinimum(fmc=1))).accepted
    result = appraise(evidence, SnpPolicy(min_tcb=TcbMinimum(fmc=2)))
    assert result.violations[0] == "reported_tcb below minimum: fmc 1 < 2"
    # fmc is ignored for Milan/Genoa layouts
    assert appraise(Evidence(make_report()), SnpPolicy(min_tcb=TcbMinimum(fmc=9))).accepted


def test_policy_loading(tmp_path: Path) -> None:
    path = tmp_path / "snp.yaml"
    path.write_text(STRICT.to_yaml())
    loaded = SnpPolicy.from_file(path)
    assert loaded == STRICT and loaded.digest() == STRICT.digest()
    for bad in (
        {"measurements": ["ab" * 32]},
        {"min_tcb": {"bootloader": 256}},
        {"min_tcb": {"blSPL": 1}},
        {"vmpl": 4},
        {"allowed_products": ["Rome"]},
        {"report_data": "00" * 64, "report_data_prefix": "00"},
        {"allow_debugging": True},
    ):
        with pytest.raises(ParseError):
            SnpPolicy.from_mapping(bad)


def test_with_report_data() -> None:
    policy = SnpPolicy(report_data_prefix="07").with_report_data(b"\x07" * 64)
    assert policy.report_data == "07" * 64 and policy.report_data_prefix is None
    with pytest.raises(ValueError):
        policy.with_report_data(b"short")
