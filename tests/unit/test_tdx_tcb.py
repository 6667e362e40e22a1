"""TDX TCB evaluation rules (teeflow.attestation.tdx.tcb) on hand-built TCB Info objects.

Expected behaviour follows Intel QVL's TcbLevelCheck / TdxModuleCheck / TDRelaunchCheck.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from teeflow.attestation.dcap.pck import PckExtensions, SgxType
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.dcap.tcb_info import (
    SignedTcbInfo,
    TcbLevel,
    TdxModule,
    TdxModuleIdentity,
    TdxModuleTcbLevel,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.attestation.tdx.tcb import (
    check_tdx_module,
    converge_module_status,
    evaluate_tdx_tcb,
    td_relaunch_advised,
)
from teeflow.attestation.tdx.verify import check_tcb_info_platform
from teeflow.errors import CollateralError, VerificationError

S = TcbStatus
DATE = datetime(2024, 3, 13, tzinfo=UTC)
OLD = datetime(2023, 2, 15, tzinfo=UTC)
SIGNER = b"\x00" * 48
SGX = (3, 3, 2, 2, 4, 1, 0, 3) + (0,) * 8
PCK = PckExtensions(
    ppid=bytes(16),
    tcb_components=SGX,
    pcesvn=13,
    cpusvn=bytes(SGX),
    pce_id=b"\0\0",
    fmspc=bytes.fromhex("00806f050000"),
    sgx_type=SgxType.STANDARD,
)


def level(
    tdx: tuple[int, ...],
    status: TcbStatus,
    date: datetime = DATE,
    sa: tuple[str, ...] = (),
    sgx: tuple[int, ...] = SGX,
    pcesvn: int = 13,
) -> TcbLevel:
    return TcbLevel(
        sgx_components=sgx,
        pcesvn=pcesvn,
        tdx_components=tdx + (0,) * (16 - len(tdx)),
        tcb_date=date,
        status=status,
        advisory_ids=sa,
    )


def identity(version: int, levels: list[tuple[int, TcbStatus]]) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=f"TDX_{version:02X}",
        mrsigner=SIGNER,
        attributes=bytes(8),
        attributes_mask=b"\xff" * 8,
        tcb_levels=tuple(
            TdxModuleTcbLevel(
                isvsvn=i,
                tcb_date=DATE,
                status=s,
                advisory_ids=("INTEL-SA-9",) if s is not S.UP_TO_DATE else (),
            )
            for i, s in levels
        ),
    )


def info(
    levels: list[TcbLevel], identities: list[TdxModuleIdentity] | None = None
) -> SignedTcbInfo:
    return SignedTcbInfo(
        id="TDX",
        version=3,
        issue_date=DATE,
        next_update=DATE,
        fmspc=PCK.fmspc,
        pce_id=PCK.pce_id,
        tcb_type=0,
        tcb_evaluation_data_number=17,
        tdx_module=TdxModule(mrsigner=SIGNER, attributes=bytes(8), attributes_mask=b"\xff" * 8),
        tdx_module_identities=tuple(identities or ()),
        tcb_levels=tuple(levels),
        signed_bytes=b"{}",
        signature=bytes(64),
    )


def report(svn: tuple[int, ...], svn2: tuple[int, ...] | None = None, **kw: bytes) -> TdReport10:
    fields: dict[str, bytes] = {
        "tee_tcb_svn": bytes(svn + (0,) * (16 - len(svn))),
        "mr_seam": bytes(48),
        "mr_signer_seam": SIGNER,
        "seam_attributes": bytes(8),
        "td_attributes": bytes(8),
        "xfam": bytes(8),
        "mr_td": bytes(48),
        "mr_config_id": bytes(48),
        "mr_owner": bytes(48),
        "mr_owner_config": bytes(48),
        "rtmr0": bytes(48),
        "rtmr1": bytes(48),
        "rtmr2": bytes(48),
        "rtmr3": bytes(48),
        "report_data": bytes(64),
    }
    fields.update(kw)
    if svn2 is None:
        return TdReport10(**fields)
    return TdReport15(
        **fields, tee_tcb_svn2=bytes(svn2 + (0,) * (16 - len(svn2))), mr_service_td=bytes(48)
    )


def ev(status: TcbStatus, sa: tuple[str, ...] = (), date: datetime = DATE) -> TcbEvaluation:
    return TcbEvaluation(status=status, tcb_date=date, advisory_ids=sa)


# --------------------------------------------------------------------- level selection


def test_index_two_rule_with_module_identity() -> None:
    # Level demands module bytes 0-1 = 9, 9: ignored when TEE_TCB_SVN[1] > 0.
    ti = info([level((9, 9, 2), S.UP_TO_DATE)], [identity(1, [(3, S.UP_TO_DATE)])])
    r = evaluate_tdx_tcb(ti, report((3, 1, 2)), PCK, None)
    assert r.platform.status is S.UP_TO_DATE and r.module_identity_id == "TDX_01"
    assert r.combined.status is S.UP_TO_DATE
    # Component 2 below the level: no match.
    with pytest.raises(VerificationError, match="no matching TCB level"):
        evaluate_tdx_tcb(ti, report((3, 1, 1)), PCK, None)


def test_index_zero_rule_without_module_version() -> None:
    ti = info([level((9, 0, 2), S.UP_TO_DATE), level((3, 0, 2), S.OUT_OF_DATE, OLD)])
    r = evaluate_tdx_tcb(ti, report((3, 0, 2)), PCK, None)
    assert r.platform.status is S.OUT_OF_DATE and r.platform.tcb_date == OLD
    assert r.module is None and r.module_identity_id is None
    with pytest.raises(VerificationError, match="no matching TCB level"):
        evaluate_tdx_tcb(ti, report((2, 0, 2)), PCK, None)


def test_sgx_components_and_pcesvn_gate_every_level() -> None:
    ti = info([level((0,), S.UP_TO_DATE, pcesvn=14), level((0,), S.OUT_OF_DATE, OLD)])
    r = evaluate_tdx_tcb(ti, report((0, 0)), PCK, None)
    assert r.platform.status is S.OUT_OF_DATE and r.sgx_platform.status is S.OUT_OF_DATE
    higher_sgx = (4, *SGX[1:])
    ti2 = info([level((0,), S.UP_TO_DATE, sgx=higher_sgx)])
    with pytest.raises(VerificationError, match="no matching TCB level"):
        evaluate_tdx_tcb(ti2, report((0, 0)), PCK, None)


def test_module_version_needs_identities() -> None:
    ti = info([level((0,), S.UP_TO_DATE)])
    with pytest.raises(VerificationError, match="no tdxModuleIdentities"):
        evaluate_tdx_tcb(ti, report((3, 1)), PCK, None)
    ti = info([level((0,), S.UP_TO_DATE)], [identity(1, [(3, S.UP_TO_DATE)])])
    with pytest.raises(VerificationError, match="TDX_03 not in TCB Info"):
        evaluate_tdx_tcb(ti, report((3, 3)), PCK, None)
    with pytest.raises(VerificationError, match="no matching TDX module TCB level"):
        evaluate_tdx_tcb(ti, report((2, 1)), PCK, None)


def test_module_level_with_platform_only_status_is_rejected() -> None:
    ti = info([level((0,), S.UP_TO_DATE)], [identity(1, [(3, S.SW_HARDENING_NEEDED)])])
    with pytest.raises(VerificationError, match="invalid status"):
        evaluate_tdx_tcb(ti, report((3, 1)), PCK, None)


def test_not_a_tdx_tcb_info() -> None:
    with pytest.raises(CollateralError, match="not TDX v3"):
        evaluate_tdx_tcb(
            replace(info([level((0,), S.UP_TO_DATE)]), id="SGX"), report((0, 0)), PCK, None
        )
    ti = info([level((0,), S.UP_TO_DATE)])
    check_tcb_info_platform(ti, PCK)
    with pytest.raises(CollateralError, match="FMSPC"):
        check_tcb_info_platform(replace(ti, fmspc=bytes(6)), PCK)
    with pytest.raises(CollateralError, match="PCE-ID"):
        check_tcb_info_platform(replace(ti, pce_id=b"\0\1"), PCK)


# --------------------------------------------------------------------- module identity


def test_module_signer_and_attributes() -> None:
    ident = replace(identity(1, [(3, S.UP_TO_DATE)]), attributes_mask=b"\xff" * 7 + b"\x00")
    ti = info([level((0,), S.UP_TO_DATE)], [ident])
    assert check_tdx_module(ti, report((3, 1))) == "TDX_01"
    # The masked-out top byte may differ; any other bit may not.
    assert check_tdx_module(ti, report((3, 1), seam_attributes=bytes(7) + b"\x80")) == "TDX_01"
    with pytest.raises(VerificationError, match="SEAMATTRIBUTES"):
        check_tdx_module(ti, report((3, 1), seam_attributes=b"\x01" + bytes(7)))
    with pytest.raises(VerificationError, match="MRSIGNERSEAM"):
        check_tdx_module(ti, report((3, 1), mr_signer_seam=b"\x01" * 48))
    # Version 0 uses the top-level tdxModule, whose signer is all zero.
    assert check_tdx_module(ti, report((3, 0))) is None
    bad = replace(ti, tdx_module=TdxModule(b"\x02" * 48, bytes(8), b"\xff" * 8))
    with pytest.raises(VerificationError, match="MRSIGNERSEAM"):
        check_tdx_module(bad, report((3, 0)))
    assert check_tdx_module(bad, report((3, 1))) == "TDX_01"  # identity overrides


def test_identity_id_is_case_insensitive() -> None:
    ident = replace(identity(10, [(1, S.UP_TO_DATE)]), id="tdx_0a")
    ti = info([level((0,), S.UP_TO_DATE)], [ident])
    assert check_tdx_module(ti, report((1, 10))) == "tdx_0a"


# --------------------------------------------------------------------- convergence


@pytest.mark.parametrize(
    ("platform", "module", "want"),
    [
        (S.UP_TO_DATE, S.UP_TO_DATE, S.UP_TO_DATE),
        (S.UP_TO_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (
            S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
            S.OUT_OF_DATE,
            S.OUT_OF_DATE_CONFIGURATION_NEEDED,
        ),
        (S.OUT_OF_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.CONFIGURATION_NEEDED, S.UP_TO_DATE, S.CONFIGURATION_NEEDED),
        (S.UP_TO_DATE, S.REVOKED, S.REVOKED),
        (S.REVOKED, S.UP_TO_DATE, S.REVOKED),
    ],
)
def test_converge_module_status(platform: TcbStatus, module: TcbStatus, want: TcbStatus) -> None:
    out = converge_module_status(ev(platform, ("SA-1", "SA-2")), ev(module, ("SA-2", "SA-3"), OLD))
    assert out.status is want
    assert out.advisory_ids == ("SA-1", "SA-2", "SA-3") and out.tcb_date == OLD
    assert converge_module_status(ev(platform), None) == ev(platform)


def test_combined_status_includes_qe() -> None:
    ti = info([level((0,), S.UP_TO_DATE, sa=("INTEL-SA-1",))], [identity(1, [(3, S.UP_TO_DATE)])])
    r = evaluate_tdx_tcb(ti, report((3, 1)), PCK, ev(S.OUT_OF_DATE, ("INTEL-SA-2",)))
    assert r.combined.status is S.OUT_OF_DATE
    assert r.combined.advisory_ids == ("INTEL-SA-1", "INTEL-SA-2")
    r = evaluate_tdx_tcb(ti, report((3, 1)), PCK, ev(S.REVOKED))
    assert r.combined.status is S.REVOKED


# --------------------------------------------------------------------- TD relaunch


def _relaunch_info() -> SignedTcbInfo:
    return info(
        [level((5, 1, 3), S.UP_TO_DATE), level((3, 1, 2), S.OUT_OF_DATE, OLD)],
        [identity(1, [(5, S.UP_TO_DATE), (3, S.OUT_OF_DATE)]), identity(2, [(7, S.UP_TO_DATE)])],
    )


@pytest.mark.parametrize(
    ("svn2", "advised"),
    [
        ((5, 1, 3), True),  # updated to the newest module and platform component 2
        ((6, 1, 4), True),
        ((4, 1, 3), False),  # module SVN still below the newest module level
        ((5, 1, 2), False),  # component 2 below the newest TCB level
        ((3, 1, 2), False),  # not updated since launch
        ((7, 2, 3), True),  # updated to module version 2: TDX_02's newest level is 7
        ((6, 2, 3), False),
        ((5, 0, 3), True),  # svn2[1] == 0: newest level's tdxtcbcomponents[0] (5)
        ((4, 0, 3), False),
    ],
)
def test_td_relaunch_advised(svn2: tuple[int, ...], advised: bool) -> None:
    r = evaluate_tdx_tcb(_relaunch_info(), report((3, 1, 2), svn2), PCK, ev(S.UP_TO_DATE))
    assert r.module is not None and r.module.status is S.OUT_OF_DATE
    assert r.combined.status is S.OUT_OF_DATE  # the status itself is not changed
    assert r.relaunch_advised is advised


def test_relaunch_preconditions() -> None:
    ti = _relaunch_info()
    svn2 = bytes((5, 1, 3)) + bytes(13)
    base: dict[str, Any] = {
        "sgx_status": S.UP_TO_DATE,
        "tdx_status": S.OUT_OF_DATE,
        "module_status": S.OUT_OF_DATE,
        "qe_status": S.UP_TO_DATE,
    }
    assert td_relaunch_advised(ti, svn2, **base)
    assert td_relaunch_advised(ti, svn2, **{**base, "qe_status": None})
    for key, value in [
        ("qe_status", S.OUT_OF_DATE),
        ("qe_status", S.REVOKED),
        ("sgx_status", S.OUT_OF_DATE),
        ("tdx_status", S.UP_TO_DATE),
        ("tdx_status", S.REVOKED),
        ("module_status", S.UP_TO_DATE),
        ("module_status", None),
    ]:
        assert not td_relaunch_advised(ti, svn2, **{**base, key: value})
    assert td_relaunch_advised(
        ti,
        svn2,
        **{
            **base,
            "sgx_status": S.CONFIGURATION_NEEDED,
            "tdx_status": S.OUT_OF_DATE_CONFIGURATION_NEEDED,
        },
    )
    with pytest.raises(VerificationError, match="TDX_09 not in TCB Info"):
        td_relaunch_advised(ti, bytes((5, 9, 3)) + bytes(13), **base)


def test_td10_report_is_never_advised() -> None:
    r = evaluate_tdx_tcb(_relaunch_info(), report((3, 1, 2)), PCK, None)
    assert r.combined.status is S.OUT_OF_DATE and not r.relaunch_advised
