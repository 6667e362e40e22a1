"""EmulatedTdx: real-format TDX quotes under the emulation root, through tdx.verify/appraise."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from teeflow.attestation import tdx
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import TdReport10, TdReport15
from teeflow.attestation.dcap.quote import parse_quote as parse_dcap_quote
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.sgx import parse_quote as parse_sgx_quote
from teeflow.attestation.tdx.abi import TdAttributes, is_debug, td_attributes
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import CollateralError, ParseError, PlatformError, VerificationError
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority
from teeflow.platform.emulated_tdx import (
    EMULATED_MRSEAM,
    EMULATED_TEE_TCB_SVN,
    EmulatedTdx,
    make_tdx_collateral_files,
)

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)
MRTD = bytes(range(48))
RTMRS = tuple(bytes([i + 1]) * 48 for i in range(4))


@pytest.fixture(scope="module")
def authority() -> EmulationAuthority:
    return EmulationAuthority.generate(NOW - timedelta(days=2))


def _verify(t: EmulatedTdx, raw: bytes, now: datetime = NOW) -> tdx.VerifiedTdxEvidence:
    anchor = t.authority.trust_anchor()
    return tdx.verify(tdx.parse_quote(raw), anchors=[anchor], collateral=t.collateral(now), now=now)


def test_round_trip_v4(authority: EmulationAuthority) -> None:
    t = EmulatedTdx(authority, mrtd=MRTD, rtmrs=RTMRS)
    raw = t.quote(b"nonce")
    q = tdx.parse_quote(raw)
    assert q.version == 4 and q.tee_type == 0x81 and type(q.body) is TdReport10
    assert q.to_bytes() == raw and q.trailing_bytes == 0
    v = _verify(t, raw)
    assert v.emulated and v.collateral_verified
    assert v.tcb_status is TcbStatus.UP_TO_DATE and v.advisory_ids == ()
    assert v.module_identity_id == "TDX_01" and v.module_tcb is not None
    assert v.qe_tcb is not None and v.qe_tcb.status is TcbStatus.UP_TO_DATE
    assert not v.relaunch_advised and v.tee_tcb_svn2 is None
    assert v.report.mr_td == MRTD and v.report.rtmrs == RTMRS
    assert v.report.mr_seam == EMULATED_MRSEAM and v.report.tee_tcb_svn == EMULATED_TEE_TCB_SVN
    assert v.report.report_data == b"nonce".ljust(64, b"\0")
    assert not is_debug(v.report)
    assert td_attributes(v.report) == TdAttributes.SEPT_VE_DISABLE
    # The collateral is cached and still good a week later.
    assert t.collateral(NOW) is t.collateral(NOW + timedelta(days=7))
    assert _verify(t, raw, NOW + timedelta(days=7)).tcb_status is TcbStatus.UP_TO_DATE


def test_round_trip_v5_td15(authority: EmulationAuthority) -> None:
    svn2 = bytes([3, 1]) + bytes(14)
    t = EmulatedTdx(authority, mrtd=MRTD, tee_tcb_svn2=svn2)
    raw = t.quote(b"x" * 64)
    q = tdx.parse_quote(raw)
    assert q.version == 5 and q.body_type == 3 and isinstance(q.body, TdReport15)
    v = _verify(t, raw)
    assert v.tee_tcb_svn2 == svn2 and v.tcb_status is TcbStatus.UP_TO_DATE
    assert not v.relaunch_advised


def test_td_relaunch_advised(authority: EmulationAuthority) -> None:
    """Launched on module ISV SVN 3 (now OutOfDate), running an updated module SVN 5."""
    t = EmulatedTdx(
        authority,
        mrtd=MRTD,
        tee_tcb_svn=bytes([3, 1, 2]) + bytes(13),
        tee_tcb_svn2=bytes([5, 1, 2]) + bytes(13),
        module_levels=((5, "UpToDate"), (3, "OutOfDate")),
    )
    v = _verify(t, t.quote(b""))
    assert v.module_tcb is not None and v.module_tcb.status is TcbStatus.OUT_OF_DATE
    assert v.platform_tcb is not None and v.platform_tcb.status is TcbStatus.UP_TO_DATE
    assert v.tcb_status is TcbStatus.OUT_OF_DATE and v.relaunch_advised
    policy = tdx.TdxPolicy(
        allow_emulated=True,
        mrtds=(MRTD.hex(),),
        accepted_tcb_statuses=frozenset({TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE}),
    )
    result = tdx.appraise(v, policy)
    assert result.accepted and result.claims["relaunch_advised"] is True
    assert any("relaunch" in w for w in result.warnings)
    # The same TD whose module was not updated since launch: no relaunch advice.
    stale = EmulatedTdx(
        authority,
        mrtd=MRTD,
        tee_tcb_svn=bytes([3, 1, 2]) + bytes(13),
        tee_tcb_svn2=bytes([3, 1, 2]) + bytes(13),
        module_levels=((5, "UpToDate"), (3, "OutOfDate")),
    )
    v2 = _verify(stale, stale.quote(b""))
    assert v2.tcb_status is TcbStatus.OUT_OF_DATE and not v2.relaunch_advised
    # A v4 quote (TD report 1.0) never carries the advice.
    v4 = EmulatedTdx(
        authority,
        mrtd=MRTD,
        tee_tcb_svn=bytes([3, 1, 2]) + bytes(13),
        module_levels=((5, "UpToDate"), (3, "OutOfDate")),
    )
    assert not _verify(v4, v4.quote(b"")).relaunch_advised


def test_module_revoked_and_missing(authority: EmulationAuthority) -> None:
    revoked = EmulatedTdx(authority, mrtd=MRTD, module_levels=((3, "Revoked"),))
    assert _verify(revoked, revoked.quote(b"")).tcb_status is TcbStatus.REVOKED
    too_old = EmulatedTdx(authority, mrtd=MRTD, module_levels=((9, "UpToDate"),))
    with pytest.raises(VerificationError, match="no matching TDX module TCB level"):
        _verify(too_old, too_old.quote(b""))
    # Quote from module version 2 against collateral describing only TDX_01.
    t = EmulatedTdx(authority, mrtd=MRTD, tee_tcb_svn=bytes([3, 2]) + bytes(14))
    coll = EmulatedTdx(authority, mrtd=MRTD).collateral(NOW)
    with pytest.raises(VerificationError, match="TDX_02 not in TCB Info"):
        tdx.verify(
            tdx.parse_quote(t.quote(b"")),
            anchors=[authority.trust_anchor()],
            collateral=coll,
            now=NOW,
        )


def test_mrsignerseam_mismatch(authority: EmulationAuthority) -> None:
    t = EmulatedTdx(authority, mrtd=MRTD)
    q = tdx.parse_quote(t.quote(b""))
    assert isinstance(q.body, TdReport10)
    body = replace(q.body, mr_signer_seam=b"\x01" * 48)
    tampered = replace(q, body=body)
    info = t.collateral(NOW).tcb_info
    with pytest.raises(VerificationError, match="MRSIGNERSEAM"):
        tdx.evaluate_tdx_tcb(info, body, _verify(t, t.quote(b"")).pck, None)
    with pytest.raises(VerificationError):  # and the quote signature no longer holds
        tdx.verify(
            tampered, anchors=[authority.trust_anchor()], collateral=t.collateral(NOW), now=NOW
        )


def test_emulated_rejected_by_intel_root_and_default_policy(authority: EmulationAuthority) -> None:
    t = EmulatedTdx(authority, mrtd=MRTD)
    raw = t.quote(b"")
    with pytest.raises(VerificationError):
        tdx.verify(
            tdx.parse_quote(raw),
            anchors=[intel_sgx_root_ca()],
            collateral=None,
            now=NOW,
            signatures_only=True,
        )
    v = _verify(t, raw)
    result = tdx.appraise(v, tdx.TdxPolicy(mrtds=(MRTD.hex(),)))
    assert not result.accepted and result.tee == "emulated-tdx"
    assert "emulated evidence not allowed" in result.violations
    ok = tdx.appraise(v, tdx.TdxPolicy(mrtds=(MRTD.hex(),), allow_emulated=True))
    assert ok.accepted and ok.claims["teeflow.emulated"] is True


def test_sgx_and_tdx_are_kept_apart(authority: EmulationAuthority) -> None:
    t = EmulatedTdx(authority, mrtd=MRTD)
    raw = t.quote(b"")
    with pytest.raises(ParseError, match="not an SGX quote"):
        parse_sgx_quote(raw)
    sgx_raw = EmulatedSgx(authority, measurement=bytes(32)).quote(b"")
    with pytest.raises(ParseError, match="not a TDX quote"):
        tdx.parse_quote(sgx_raw)
    anchor = authority.trust_anchor()
    with pytest.raises(VerificationError, match="not a TDX quote"):
        tdx.verify(
            parse_dcap_quote(sgx_raw),
            anchors=[anchor],
            collateral=None,
            now=NOW,
            signatures_only=True,
        )
    # SGX collateral (id "SGX", QE id "QE") is refused for a TDX quote.
    with pytest.raises(CollateralError, match="not TDX v3"):
        tdx.verify(
            tdx.parse_quote(raw), anchors=[anchor], collateral=authority.collateral(NOW), now=NOW
        )
    # A TD_QE identity paired with an SGX TCB Info is refused too.
    tdx_coll = t.collateral(NOW)
    mixed = replace(tdx_coll, qe_identity=authority.collateral(NOW).qe_identity)
    with pytest.raises(CollateralError, match="TD_QE"):
        tdx.verify(tdx.parse_quote(raw), anchors=[anchor], collateral=mixed, now=NOW)


def test_collateral_expiry(authority: EmulationAuthority) -> None:
    t = EmulatedTdx(authority, mrtd=MRTD)
    coll = t.collateral(NOW)
    raw = t.quote(b"")
    with pytest.raises(CollateralError, match="collateral expired"):
        tdx.verify(
            tdx.parse_quote(raw),
            anchors=[authority.trust_anchor()],
            collateral=coll,
            now=NOW + timedelta(days=31),
        )


def test_collateral_files_are_pcs_shaped(authority: EmulationAuthority) -> None:
    files = make_tdx_collateral_files(authority.keys, NOW)
    coll = IntelCollateral.from_bytes(
        tcb_info=files.files["tcb_info.json"],
        qe_identity=files.files["qe_identity.json"],
        pck_crl=files.files["pck_crl.der"],
        root_ca_crl=files.files["root_ca_crl.der"],
        pck_crl_issuer_chain=files.files["pck_crl_issuer_chain.pem"],
        tcb_info_issuer_chain=files.files["tcb_info_issuer_chain.pem"],
    )
    assert coll.tcb_info.id == "TDX" and coll.tcb_info.version == 3
    assert [i.id for i in coll.tcb_info.tdx_module_identities] == ["TDX_01"]
    assert coll.qe_identity.id == "TD_QE"
    assert files.fresh_at(NOW) and not files.fresh_at(NOW + timedelta(days=30))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mrtd": bytes(47)},
        {"mrtd": MRTD, "rtmrs": (bytes(48),) * 3},
        {"mrtd": MRTD, "rtmrs": (bytes(48),) * 3 + (bytes(47),)},
        {"mrtd": MRTD, "xfam": bytes(7)},
        {"mrtd": MRTD, "tee_tcb_svn2": bytes(15)},
    ],
)
def test_bad_arguments(authority: EmulationAuthority, kwargs: dict[str, object]) -> None:
    with pytest.raises(PlatformError):
        EmulatedTdx(authority, **kwargs)  # type: ignore[arg-type]


def test_report_data_bounds(authority: EmulationAuthority) -> None:
    t = EmulatedTdx(authority, mrtd=MRTD)
    with pytest.raises(PlatformError):
        t.quote(bytes(65))
    with pytest.raises(PlatformError):
        t.quote("text")  # type: ignore[arg-type]
    with pytest.raises(PlatformError):
        t.collateral(datetime(2026, 1, 1))  # naive
