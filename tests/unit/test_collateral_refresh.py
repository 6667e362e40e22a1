"""The KBS's collateral directories refresh (issue 11): a set past its ``nextUpdate`` or
replaced on disk by a refresh job (a TCB recovery) is re-read on the next request, so a
platform the new TCB Info calls ``OutOfDate`` is appraised as such at its next attestation."""

from __future__ import annotations

from pathlib import Path

from teeflow.attestation.dcap.quote import parse_quote
from teeflow.kbs.service.collateral import DirectoryCollateralProvider
from teeflow.platform.emulated_collateral import (
    make_collateral_files,
    pcs_timestamp,
    sign_pcs_document,
    tcb_info_document,
    write_collateral_files,
)
from teeflow.testing.evidence import DEFAULT_NOW, emulated_authority, make_emulated_quote


def _write(folder: Path, status: str, *, shift: int) -> None:
    keys = emulated_authority().keys
    from datetime import timedelta

    files = make_collateral_files(keys, DEFAULT_NOW + timedelta(seconds=shift))
    tcb = tcb_info_document(
        "SGX", files.issue_date, files.next_update,
        pcs_timestamp(keys.root_ca.not_valid_before_utc), status=status,
    )
    files.files["tcb_info.json"] = sign_pcs_document("tcbInfo", tcb, keys.tcb_signing_key)
    write_collateral_files(files, folder, private=False)


def test_a_refresh_job_turning_the_platform_out_of_date_is_seen(tmp_path: Path) -> None:
    quote = parse_quote(make_emulated_quote(b"x", now=DEFAULT_NOW)[0])
    _write(tmp_path / "set", "UpToDate", shift=0)
    provider = DirectoryCollateralProvider([tmp_path])
    first = provider.for_quote(quote, now=DEFAULT_NOW)
    assert first is not None and first.tcb_info.tcb_levels[0].status.value == "UpToDate"
    _write(tmp_path / "set", "OutOfDate", shift=60)  # the job replaces the set
    provider._checked = 0.0  # as if a second passed (directories are looked at ≤ 1/s)
    second = provider.for_quote(quote, now=DEFAULT_NOW)
    assert second is not None and second.tcb_info.tcb_levels[0].status.value == "OutOfDate"


def test_a_set_past_next_update_is_reread(tmp_path: Path) -> None:
    from datetime import timedelta

    quote = parse_quote(make_emulated_quote(b"x", now=DEFAULT_NOW)[0])
    _write(tmp_path / "set", "UpToDate", shift=0)
    provider = DirectoryCollateralProvider([tmp_path])
    held = provider.for_quote(quote, now=DEFAULT_NOW)
    assert held is not None
    later = held.tcb_info.next_update + timedelta(seconds=1)
    reloads: list[int] = []
    original = provider.reload
    provider.reload = lambda: (reloads.append(1), original())[1]  # type: ignore[method-assign]
    provider._checked = 0.0  # as if a second passed
    provider.for_quote(quote, now=later)
    assert reloads == [1]
