"""``kbs serve --platform tdx|sev-snp`` starts through the real configfs-tsm attester.

A fake configfs (the kernel's four file verbs, as in ``test_attesters``) answers each
``inblob`` write with emulated TDX/SNP evidence, so the KBS's start-up and its
``/v1/kbs/evidence`` run the hardware code path:

* ``tdx`` starts without a sealing key (TDX has none): a fresh key set, nothing sealed; the
  state key comes back only through recovery;
* ``sev-snp`` with the platform sealer needs ``/dev/sev-guest``: without it the KBS refuses
  to start (exact message naming ``--sealing recovery-only``) before writing anything, and
  with ``sealer=None`` (``--sealing recovery-only``) it starts;
* attack: evidence from the fake (emulated chains) that the configfs-tsm attester declares as
  hardware ``tdx``/``snp`` is refused by the party: ``declared tee tdx but the evidence is
  emulated-tdx``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from teeflow.errors import KbsError, VerificationError
from teeflow.kbs.api.server import KbsRuntime, build_kbs
from teeflow.kbs.policy.kbs_reference import reference_values_for_measurements
from teeflow.kbs.service.collateral import EmulatedCollateralProvider
from teeflow.kbs.service.identity import KEYS_FILE
from teeflow.kbs.service.self_attestation import verify_kbs_evidence
from teeflow.platform import tsm
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_snp import emulated_snp_anchor
from teeflow.platform.selection import PlatformOptions, attester_for

KBS_MR = hashlib.sha256(b"teeflow kbs on configfs-tsm").digest()


class _FakeTsm(tsm.ConfigFs):
    """configfs-tsm whose provider answers with emulated evidence of ``platform``."""

    platform = "emulated-tdx"
    home: Path | None = None

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)
        provider = "tdx_guest" if self.platform == "emulated-tdx" else "sev_guest"
        (path / "provider").write_text(provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "auxblob").write_bytes(b"")

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        os.rmdir(path)

    def write(self, path: Path, data: bytes) -> int:
        entry = path.parent
        if path.name == "inblob":
            ev = attester_for(self.platform, measurement=KBS_MR, home=self.home).evidence(data)
            (entry / "outblob").write_bytes(ev.primary)
            (entry / "auxblob").write_bytes(ev.certificates or b"")
        gen = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{gen + 1}\n")
        return len(data)


@pytest.fixture()
def fake_tsm(tmp_path: Path, teeflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    monkeypatch.setattr(_FakeTsm, "home", teeflow_home)
    monkeypatch.setattr(tsm, "ConfigFs", _FakeTsm)
    return root


def _build(tmp_path: Path, name: str, root: Path, **kw: Any) -> KbsRuntime:
    return build_kbs(
        f"sqlite:///{tmp_path / 'kbs.db'}", state_dir=tmp_path / "state", federation="study",
        platform=PlatformOptions(name, tsm_root=root), measurement=KBS_MR,
        purge_interval=None, insecure_first_agreement=True, **kw,
    )  # fmt: skip


def _evidence_refused(runtime: KbsRuntime, home: Path, hardware: str) -> None:
    nonce = os.urandom(32)
    with TestClient(runtime.app) as http:
        query = {"nonce": base64.urlsafe_b64encode(nonce).decode()}
        doc = http.get("/v1/kbs/evidence", params=query).json()
    assert (doc["tee"], doc["attester"]) == (hardware, "configfs-tsm")
    now = datetime.now(UTC)
    authority = EmulationAuthority.load_or_create(home, now=now)
    with pytest.raises(VerificationError) as exc:
        verify_kbs_evidence(
            doc, nonce=nonce, allow_emulated=True,
            reference_values=reference_values_for_measurements([(KBS_MR + bytes(16)).hex()]),
            anchors=[authority.trust_anchor(), emulated_snp_anchor(home, now=now)],
            collateral=EmulatedCollateralProvider(authority), now=now,
        )  # fmt: skip
    assert str(exc.value) == f"declared tee {hardware} but the evidence is emulated-{hardware}"


def test_kbs_starts_on_tdx_without_a_sealing_key(
    tmp_path: Path, fake_tsm: Path, teeflow_home: Path
) -> None:
    runtime = _build(tmp_path, "tdx", fake_tsm)
    try:
        assert (runtime.tee, runtime.attester) == ("tdx", "configfs-tsm")
        assert not (tmp_path / "state" / KEYS_FILE).exists()  # nothing sealed: no TDX key
        _evidence_refused(runtime, teeflow_home, "tdx")
    finally:
        runtime.close()


def test_kbs_on_sev_snp_without_sev_guest_refuses_to_start(
    tmp_path: Path, fake_tsm: Path, teeflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_FakeTsm, "platform", "emulated-snp")
    missing = tmp_path / "no-sev-guest"
    with pytest.raises(KbsError) as exc:
        _build(tmp_path, "sev-snp", fake_tsm, sev_guest_dev=missing)
    assert str(exc.value) == (
        f"sev-snp: no SEV-SNP sealing key: {missing} is not the sev-guest device (is this an "
        "SEV-SNP guest with the sev-guest driver?). To run without a sealing key, start with "
        "--sealing recovery-only: the key set is then restored from the parties' recovery "
        "shares at every restart"
    )
    assert not (tmp_path / "state").exists()  # refused before anything was written
    runtime = _build(tmp_path, "sev-snp", fake_tsm, sev_guest_dev=missing, sealer=None)
    try:
        assert (runtime.tee, runtime.attester) == ("snp", "configfs-tsm")
        assert not (tmp_path / "state" / KEYS_FILE).exists()
        _evidence_refused(runtime, teeflow_home, "snp")
    finally:
        runtime.close()
