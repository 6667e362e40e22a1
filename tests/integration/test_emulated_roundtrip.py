"""Emulated quotes go through exactly the hardware pipeline: parse -> verify -> appraise."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from teeflow.attestation import sgx
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import CollateralError, VerificationError
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority
from teeflow.testing.evidence import TEST_MEASUREMENT, emulated_authority, make_emulated_quote
from teeflow.workload import WorkloadManifest, measurement

NOW = datetime(2025, 6, 20, 12, 0, tzinfo=UTC)


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def test_emulated_quote_verifies_with_shared_verifier(tmp_path: Path) -> None:
    manifest = WorkloadManifest.loads("name: agg\nentrypoint: [python, -m, agg]\n")
    authority = EmulationAuthority.load_or_create(tmp_path, now=NOW)
    raw = EmulatedSgx(authority, manifest=manifest).quote(b"nonce-binding")
    verified = sgx.verify(
        sgx.parse_quote(raw),
        anchors=[authority.trust_anchor()],
        collateral=authority.collateral(NOW),
        now=NOW,
    )
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.collateral_verified
    assert verified.emulated is True
    assert verified.report.mr_enclave == measurement(manifest)
    assert verified.report.mr_signer == authority.mrsigner
    assert verified.report.debug is False
    assert verified.report.report_data.startswith(b"nonce-binding")


def test_fails_against_intel_anchor_alone() -> None:
    raw, _anchor, collateral = make_emulated_quote(b"x", now=NOW)
    with pytest.raises(VerificationError):
        sgx.verify(
            sgx.parse_quote(raw), anchors=[intel_sgx_root_ca()], collateral=collateral, now=NOW
        )
    with pytest.raises(VerificationError):
        sgx.verify(sgx.parse_quote(raw), anchors=[intel_sgx_root_ca()], collateral=None, now=NOW)
    # Another machine's emulation root does not verify it either.
    other = EmulationAuthority.generate(NOW)
    with pytest.raises(VerificationError):
        sgx.verify(
            sgx.parse_quote(raw), anchors=[other.trust_anchor()], collateral=collateral, now=NOW
        )


@pytest.mark.parametrize(
    ("offset", "what"),
    [(8, "header qe_svn"), (48 + 64, "mr_enclave"), (48 + 320, "report_data"), (436 + 10, "sig")],
)
def test_bit_flips_rejected(offset: int, what: str) -> None:
    raw, anchor, collateral = make_emulated_quote(b"tamper", now=NOW)
    with pytest.raises(VerificationError):
        sgx.verify(
            sgx.parse_quote(_flip(raw, offset)), anchors=[anchor], collateral=collateral, now=NOW
        )


def test_collateral_time_window_enforced() -> None:
    raw, anchor, collateral = make_emulated_quote(b"", now=NOW)
    with pytest.raises(CollateralError):
        sgx.verify(
            sgx.parse_quote(raw),
            anchors=[anchor],
            collateral=collateral,
            now=NOW + timedelta(days=31),
        )
    # A fresh collateral set for the later time verifies the same quote.
    later = NOW + timedelta(days=31)
    fresh = emulated_authority().collateral(later)
    v = sgx.verify(sgx.parse_quote(raw), anchors=[anchor], collateral=fresh, now=later)
    assert v.tcb_status is TcbStatus.UP_TO_DATE


def test_collateral_dir_roundtrip(tmp_path: Path) -> None:
    authority = emulated_authority()
    out = authority.write_collateral_dir(tmp_path / "coll", NOW)
    collateral = IntelCollateral.from_dir(out)
    raw = EmulatedSgx(authority, measurement=TEST_MEASUREMENT).quote(b"dir")
    v = sgx.verify(
        sgx.parse_quote(raw), anchors=[authority.trust_anchor()], collateral=collateral, now=NOW
    )
    assert v.tcb_status is TcbStatus.UP_TO_DATE


def test_testing_kit_defaults() -> None:
    raw, anchor, collateral = make_emulated_quote(b"kit")
    q = sgx.parse_quote(raw)
    assert q.body.mr_enclave == TEST_MEASUREMENT
    assert anchor.emulated
    from teeflow.testing.evidence import DEFAULT_NOW

    v = sgx.verify(q, anchors=[anchor], collateral=collateral, now=DEFAULT_NOW)
    assert v.tcb_status is TcbStatus.UP_TO_DATE
    _raw2, anchor2, _ = make_emulated_quote(b"kit", now=NOW)
    assert anchor2.fingerprint == anchor.fingerprint  # cached per process


def test_appraisal_denies_by_default_and_allow_emulated_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw, anchor, collateral = make_emulated_quote(b"appraise", now=NOW)
    verified = sgx.verify(sgx.parse_quote(raw), anchors=[anchor], collateral=collateral, now=NOW)
    denied = sgx.appraise(verified, sgx.SgxPolicy())
    assert not denied.accepted
    assert "emulated evidence not allowed" in denied.violations
    with caplog.at_level(logging.WARNING):
        allowed = sgx.appraise(
            verified, sgx.SgxPolicy(allow_emulated=True, mrenclaves=(TEST_MEASUREMENT.hex(),))
        )
    assert allowed.accepted
    assert allowed.status.value == "warning"
    assert allowed.claims["teeflow.emulated"] is True
    assert any("EMULATED" in r.getMessage() for r in caplog.records)
